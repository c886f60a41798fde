"""`utils.data_parallel`: training on two devices equals training on one.

The devices are simulated on the CPU (two logical TensorFlow devices, two XLA host
devices for JAX), which must happen before the backend starts: each backend's
checks run once, in a fresh process, in `distributed_check.py`, and the tests
below read its results.
"""

import functools
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest


CHECK = pathlib.Path(__file__).with_name("distributed_check.py")
# The tests reading one backend's results run on one pytest-xdist worker, which runs
# its subprocess once; the two backends' can run side by side.
BACKENDS = [
    pytest.param("tensorflow", marks=pytest.mark.xdist_group("two_devices_tensorflow")),
    pytest.param("jax", marks=[pytest.mark.xdist_group("two_devices_jax"), pytest.mark.skipif(
        importlib.util.find_spec("jax") is None,
        reason="JAX is not installed (pip install -r requirements.txt installs it)")])]
TOLERANCE = 1e-5  # float32 sums in another order; training moves weights by ~4e-2
pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def run_check():
    """`distributed_check.py`'s results for a backend, run once per session.

    A parametrized fixture holds one backend's results at a time, and a worker
    may run the two backends' tests in turn: the cache keeps each one's.
    """

    @functools.cache
    def run(backend):
        env = {**os.environ, "KERAS_BACKEND": backend}
        done = subprocess.run([sys.executable, str(CHECK), backend, "2"], env=env,
                              capture_output=True, text=True, timeout=1200)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULTS ")]
        assert done.returncode == 0 and lines, done.stderr[-3000:]
        return json.loads(lines[-1][len("RESULTS "):])

    return run


@pytest.fixture(params=BACKENDS)
def two_devices(request, run_check):
    """The results of `distributed_check.py` on two simulated devices."""
    return run_check(request.param)


def test_data_parallel_uses_every_simulated_device(two_devices):
    assert two_devices["replicas"] == 2


@pytest.mark.parametrize("kind", ["plain", "cached", "live"],
                         ids=["plain-model", "distiller-cached-logits", "distiller-live-teacher"])
def test_two_devices_train_to_the_weights_of_one(two_devices, kind):
    result = two_devices[kind]
    assert result["moved"] > 1e-2  # training did change the weights
    assert result["weights"] < TOLERANCE


@pytest.mark.parametrize("kind", ["plain", "cached", "live"],
                         ids=["plain-model", "distiller-cached-logits", "distiller-live-teacher"])
def test_two_devices_report_the_losses_and_metrics_of_one(two_devices, kind):
    # a Distiller's student_loss, distillation_loss and total_loss included
    history = two_devices[kind]["history"]
    assert max(history.values()) < TOLERANCE, history


@pytest.mark.parametrize("kind", ["augmented", "augmented_uneven"])
def test_augmentation_and_dropout_on_two_devices_draw_as_one(two_devices, kind):
    # RandomSymmetry and DeviceInvariantDropout: on TensorFlow every replica
    # draws for the whole batch and keeps its rows, also when the replicas'
    # shares of a batch differ.
    if kind not in two_devices:
        pytest.skip("JAX cannot split a batch the devices do not divide "
                    "(fit_segmentation drops it)")
    result = two_devices[kind]
    assert result["moved"] > 1e-2
    assert result["weights"] < TOLERANCE


def test_evaluation_of_a_split_the_devices_do_not_divide_counts_every_patch_once(
        two_devices):
    result = two_devices["evaluation"]
    assert result["patches"] == 7
    assert result["counted"] == result["annotated"]  # each annotated pixel once
    assert result["confusion"] == 0 and result["miou"] == 0


def test_interrupted_fit_segmentation_resumes_under_data_parallel(two_devices):
    result = two_devices["resumed_fit"]
    assert result["interrupted"]  # the backup was there to resume from
    assert result["epochs"] == [0, 1]


def test_fit_segmentation_on_two_devices_saves_the_model_of_one(two_devices):
    result = two_devices["resumed_fit"]
    assert result["weights"] < TOLERANCE
    assert result["val_miou"] == 0  # the padded validation split scores the same


def test_several_steps_a_call_train_on_two_devices_as_on_one(two_devices):
    # TensorFlow's strategy fails with several (keras-team/keras#19246): one, with a warning
    result = two_devices["steps_per_execution"]
    assert result["weights"] < TOLERANCE
    assert result["warned"] == (two_devices["backend"] == "tensorflow")


def test_use_all_devices_trains_every_model_built_after_it_data_parallel(two_devices):
    # The notebooks' call: session-wide, no `with` block around the cells.
    result = two_devices["use_all_devices"]
    assert result["replicas"] == result["model_replicas"] == 2
    assert result["inside"] == "1 device" if two_devices["backend"] == "jax" else (
        result["inside"].startswith("A tf.distribute strategy over 2 device(s) is in use "
                                    "already (use_all_devices()"))  # was TF's "Mixing ..."
    assert result["weights"] < TOLERANCE
    assert result["logits"] < TOLERANCE
