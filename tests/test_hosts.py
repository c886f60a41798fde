"""Tests of `aerialkd.hosts`: `data_parallel` on two JAX processes trains as one process does.

Two JAX processes on localhost, each with one CPU device, join through Keras'
`KERAS_DISTRIBUTION_*` variables and train a tiny U-Net with `fit_segmentation`
on a global batch of 4 (2 rows each); one process alone trains the same. Each
runs `multihost_check.py`, at the same time (about three minutes on two busy
cores, most of it XLA compiling: the processes share a compilation cache, and
compile without LLVM's optimisations, the same for both runs).
"""

import importlib.util
import json
import os
import pathlib
import re
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

import utils

CHECK = pathlib.Path(__file__).with_name("multihost_check.py")
TOLERANCE = 1e-5  # float32 sums in another order; training moves weights by ~1e-1
# What a JAX without multi-process CPU collectives (gloo) says when asked for them
NO_CPU_COLLECTIVES = re.compile(
    r".*(multi-?process\w* .*(not|n't) (implemented|supported)|collectives.*(unavailable|"
    r"(not|n't) (implemented|supported|available))|gloo.*(unavailable|not (found|available))).*",
    re.IGNORECASE)
pytestmark = [
    pytest.mark.integration,
    pytest.mark.xdist_group("multihost"),  # one worker runs the processes, once
    pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                       reason="JAX is not installed (pip install -r requirements.txt)"),
]


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def runs(tiny_root, tmp_path_factory):
    """The results of `multihost_check.py`: {"one": ..., "two": [process 0, process 1]}.

    Session-scoped, so that the processes run once even when the worker runs
    other modules' tests between these.
    """
    folder = tmp_path_factory.mktemp("multihost")
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("KERAS_DISTRIBUTION_")}
    env.update(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               XLA_FLAGS="--xla_backend_optimization_level=0",
               JAX_COMPILATION_CACHE_DIR=str(folder / "xla-cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    two = {"KERAS_DISTRIBUTION_JOB_ADDRESSES": f"localhost:{_free_port()}",
           "KERAS_DISTRIBUTION_NUM_PROCESSES": "2"}
    commands = {  # the reference run of one process need not resume
        "one": ({}, folder / "one", ["straight"]),
        "two0": ({**two, "KERAS_DISTRIBUTION_PROCESS_ID": "0"}, folder / "two", []),
        "two1": ({**two, "KERAS_DISTRIBUTION_PROCESS_ID": "1"}, folder / "two", []),
    }
    processes = {
        name: subprocess.Popen([sys.executable, str(CHECK), str(tiny_root), str(out), *how],
                               env={**env, **extra}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        for name, (extra, out, how) in commands.items()}
    outputs = {}
    try:
        for name, process in processes.items():
            outputs[name] = (*process.communicate(timeout=1500), process.returncode)
    finally:
        for process in processes.values():  # one that failed can leave the other waiting
            if process.poll() is None:
                process.kill()
                process.communicate()
    results = {}
    for name, (stdout, stderr, returncode) in outputs.items():
        lines = [line for line in stdout.splitlines() if line.startswith("RESULTS ")]
        missing = NO_CPU_COLLECTIVES.search(stderr)
        if name != "one" and not lines and missing:
            pytest.skip(f"this JAX cannot run multi-process CPU collectives: "
                        f"{missing.group(0).strip()}")
        assert returncode == 0 and lines, f"{name}: {stderr[-3000:]}"
        results[name] = json.loads(lines[-1][len("RESULTS "):])
        results[name]["weights"] = np.load(commands[name][1] / "report" /
                                           f"process_{results[name]['process_id']}.npz")
    return {"one": results["one"], "two": [results["two0"], results["two1"]],
            "folder": folder}


def _weights(result, which):
    """The initial, straight-through ("straight") or resumed weights of a run."""
    n = result["n_weights"]
    start = {"initial": 0, "straight": n, "resumed": 2 * n}[which]
    return [result["weights"][f"arr_{i}"] for i in range(start, start + n)]


def _max_difference(a, b):
    return float(max(np.abs(u - v).max() for u, v in zip(a, b)))


def test_two_processes_join_and_train_on_the_devices_of_both(runs):
    assert [r["process_id"] for r in runs["two"]] == [0, 1]
    assert all(r["num_processes"] == 2 and r["replicas"] == 2 for r in runs["two"])
    assert runs["one"]["num_processes"] == runs["one"]["replicas"] == 1


@pytest.mark.parametrize("process", [0, 1])
def test_two_processes_train_to_the_weights_of_one(runs, process):
    one = _weights(runs["one"], "straight")
    assert _max_difference(_weights(runs["one"], "initial"), one) > 1e-2  # it trained
    assert _max_difference(_weights(runs["two"][process], "straight"), one) < TOLERANCE


@pytest.mark.parametrize("process", [0, 1])
def test_two_processes_log_the_losses_and_global_metrics_of_one(runs, process):
    # val_miou5 and val_pixel_acc over the whole validation split, whose last
    # batch (2 patches) is split 1 + 1
    one, two = runs["one"]["history"], runs["two"][process]["history"]
    assert set(two) == set(one)
    for key in one:
        assert two[key] == pytest.approx(one[key], rel=TOLERANCE), key


def test_only_process_zero_writes_the_run_files(runs):
    writer, other = runs["two"]
    assert other["writes"] == []
    assert any(path.endswith("m.best.json") for _, path in writer["writes"])
    for run in ("straight", "resumed"):  # the files of one process's run, no more
        folder = runs["folder"] / "two" / "runs" / run
        assert sorted(p.name for p in folder.iterdir()) == [
            "m.best.json", "m.keras", "m_history.csv", "m_history.json"]


@pytest.mark.parametrize("process", [0, 1])
def test_an_interrupted_two_process_run_resumes_to_the_weights_of_one(runs, process):
    result = runs["two"][process]
    assert result["interrupted"]  # the backup was there to resume from
    assert result["resumed_history"]["epoch"] == [0, 1]
    resumed = _weights(result, "resumed")
    assert _max_difference(resumed, _weights(runs["one"], "straight")) < TOLERANCE


def test_the_saved_model_predicts_after_the_data_parallel_block(runs):
    assert all(r["logits_shape"] == [2, 32, 32, len(utils.CLASSES)] for r in runs["two"])
    one = runs["one"]["weights"]["logits"]
    for result in runs["two"]:  # each process's saved model predicts as the one of one
        np.testing.assert_allclose(result["weights"]["logits"], one, atol=1e-4)


def test_tensorflow_with_several_processes_says_to_use_jax(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "tensorflow")
    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "2")
    with pytest.raises(RuntimeError, match=r"needs the JAX backend.*MultiWorkerMirrored"
                                           r"Strategy.*keras/issues/20585.*KERAS_BACKEND=jax"):
        with utils.data_parallel():
            pass


def test_a_process_id_outside_the_run_is_named(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(ValueError, match="process_id must be 0 to 1 .* got 2"):
        utils.initialize_processes("localhost:12355", num_processes=2, process_id=2)
    with pytest.raises(ValueError, match="num_processes must be an int >= 1, got -1"):
        utils.initialize_processes("localhost:12355", num_processes=-1, process_id=0)
