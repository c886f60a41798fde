"""Mixed precision as a T4 runs it: float16 with loss scaling, for every way the series trains.

Colab's T4 has float16 tensor cores and no bfloat16, so the notebooks train in
"mixed_float16" there (`mixed_precision_policy`). Small float16 gradients flush to
zero unless the loss is scaled: every model compiled under that policy, the plain
U-Net and the `Distiller` with a cached or a live teacher, must get Keras'
`LossScaleOptimizer`, on TensorFlow and on JAX (the last test reruns this file there).
"""

import dataclasses
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import utils


@pytest.fixture
def few_patches(tiny_data):
    return dataclasses.replace(tiny_data, x_train=tiny_data.x_train[:16],
                               y_train=tiny_data.y_train[:16])


def _float16_unet(seed):
    keras.utils.set_random_seed(seed)
    return utils.with_dtype_policy(utils.build_unet(2), "mixed_float16")


def _trains_finite_and_moves(model, trained, data, tmp_path, **fit_options):
    before = [w.copy() for w in trained.get_weights()]
    utils.fit_segmentation(model, data, epochs=1, output_dir=tmp_path, name="m",
                           batch_size=8, verbose=0, **fit_options)
    after = trained.get_weights()
    assert all(np.isfinite(w).all() for w in after)
    assert max(float(np.abs(b - a).max()) for b, a in zip(before, after)) > 1e-4


def test_a_float16_unet_trains_with_loss_scaling(few_patches, tmp_path):
    model = utils.compile_segmentation(_float16_unet(0), learning_rate=1e-2)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    _trains_finite_and_moves(model, model, few_patches, tmp_path)


@pytest.mark.parametrize("cache_teacher", [True, False], ids=["cached", "live"])
def test_a_float16_distiller_trains_with_loss_scaling(few_patches, tmp_path, cache_teacher):
    student = _float16_unet(1)
    distiller = utils.compile_segmentation(
        utils.Distiller(teacher=_float16_unet(0), student=student), learning_rate=1e-2)
    assert isinstance(distiller.optimizer, keras.optimizers.LossScaleOptimizer)
    _trains_finite_and_moves(distiller, student, few_patches, tmp_path,
                             cache_teacher=cache_teacher)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_students_without_float16_get_a_plain_optimizer(policy):
    keras.utils.set_random_seed(0)
    student = utils.with_dtype_policy(utils.build_unet(2), policy)
    distiller = utils.compile_segmentation(
        utils.Distiller(teacher=utils.build_unet(2), student=student))
    assert isinstance(distiller.optimizer, keras.optimizers.Adam)


def test_a_float16_distiller_keeps_a_plain_optimizer_with_auto_scale_loss_off():
    distiller = utils.Distiller(teacher=_float16_unet(0), student=_float16_unet(1))
    distiller.compile(optimizer="adam", loss=utils.SegmentationLoss(), auto_scale_loss=False)
    assert isinstance(distiller.optimizer, keras.optimizers.Adam)  # as Keras does for a model


def test_a_distiller_keeps_a_loss_scale_optimizer_it_is_given():
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam())
    distiller = utils.Distiller(teacher=_float16_unet(0), student=_float16_unet(1))
    distiller.compile(optimizer=optimizer, loss=utils.SegmentationLoss())
    assert distiller.optimizer is optimizer


@pytest.mark.integration
@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="reruns this file on JAX from the TensorFlow run")
def test_the_same_holds_on_jax(tmp_path):
    # One process without workers of its own (-n 0), XLA compiling without LLVM's
    # optimisations: compiling is most of the time, and what is checked (loss
    # scaling, finite weights that move) does not depend on it.
    env = dict(os.environ, KERAS_BACKEND="jax",
               XLA_FLAGS="--xla_backend_optimization_level=0")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", __file__,
         "-k", "not on_jax", f"--basetemp={tmp_path}"],
        env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "passed" in result.stdout and "failed" not in result.stdout


def test_a_saved_float16_distiller_reloads_with_its_loss_scaling(tmp_path):
    distiller = utils.compile_segmentation(
        utils.Distiller(teacher=_float16_unet(0), student=_float16_unet(1)))
    x, y = np.zeros((2, 32, 32, 3), "uint8"), np.zeros((2, 32, 32), "uint8")
    distiller.fit(x, y, epochs=1, verbose=0)
    distiller.save(tmp_path / "distiller.keras")
    reloaded = keras.saving.load_model(tmp_path / "distiller.keras")
    assert isinstance(reloaded.optimizer, keras.optimizers.LossScaleOptimizer)
    assert int(reloaded.optimizer.iterations) == 1
