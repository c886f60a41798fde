"""Shared fixtures: the tiny synthetic dataset and small models."""

import os
import pathlib
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Notebooks under test (pytest --nbmake) write to a fresh folder, never into the
# outputs/ of a run the user made with the README's main command.
os.environ.setdefault("SSSI_OUTPUT", tempfile.mkdtemp(prefix="sssi-test-outputs-"))

import keras
import numpy as np
import pytest

import utils

REAL_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "aerial-dubai"


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    return utils.make_tiny_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_data(tiny_root):
    return utils.load_dataset(tiny_root, patch_size=32)


@pytest.fixture(scope="session")
def real_root():
    if not REAL_DATA.exists():
        pytest.skip(f"real dataset not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture
def small_unet():
    keras.utils.set_random_seed(0)
    return utils.build_unet(2, name="small")


def random_logits(shape, seed=0, scale=3.0):
    return np.random.default_rng(seed).normal(0, scale, shape).astype("float32")
