"""Tests of `aerialkd.devices` on this process's one device; two devices: test_distributed.py."""

import keras
import pytest

import aerialkd
import utils


def test_data_parallel_names_the_backends_it_supports(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    with pytest.raises(ValueError, match="supports the TensorFlow and JAX backends.*'torch'"):
        with utils.data_parallel():
            pass


def test_data_parallel_refuses_more_devices_than_are_visible():
    if keras.backend.backend() not in ("tensorflow", "jax"):
        pytest.skip("data_parallel runs on TensorFlow and JAX")
    with pytest.raises(ValueError, match="devices=99 asks for more devices"):
        with utils.data_parallel(99):
            pass


def test_use_all_devices_changes_nothing_on_one_device(capsys):
    parallel = utils.use_all_devices()
    assert parallel.num_replicas == 1
    assert "1 device" in capsys.readouterr().out
    assert aerialkd.devices.data_parallel_size() == 1


def test_precision_follows_the_device_and_is_exact_on_a_cpu():
    assert utils.mixed_precision_policy() == "float32"  # CI and this machine have no GPU
