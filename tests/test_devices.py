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
    with pytest.raises(ValueError, match=r"devices=99: pass 1 to 1, the devices visible"):
        with utils.data_parallel(99):
            pass


def test_use_all_devices_changes_nothing_on_one_device(capsys):
    parallel = utils.use_all_devices()
    assert parallel.num_replicas == 1
    assert "1 device" in capsys.readouterr().out
    assert aerialkd.devices.data_parallel_size() == 1


def test_precision_follows_the_device_and_is_exact_on_a_cpu():
    assert utils.mixed_precision_policy() == "float32"  # CI and this machine have no GPU


def _pretend_gpu(monkeypatch, capability):
    """Make the backend report one GPU of this compute capability (None: a TPU)."""
    if keras.backend.backend() == "jax":
        import types

        import jax

        device = types.SimpleNamespace(
            platform="tpu" if capability is None else "gpu",
            device_kind="TPU v2" if capability is None else "NVIDIA GPU",
            compute_capability=None if capability is None else f"{capability[0]}.{capability[1]}")
        monkeypatch.setattr(jax, "devices", lambda *args: [device])
    else:
        import types

        import tensorflow as tf

        tpu = types.SimpleNamespace(name="/device:TPU:0")
        monkeypatch.setattr(tf.config, "list_logical_devices",
                            lambda kind=None: [tpu] if capability is None else [])
        monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["GPU:0"])
        monkeypatch.setattr(tf.config.experimental, "get_device_details",
                            lambda device: {"compute_capability": capability})


@pytest.mark.parametrize("capability, policy", [
    ((7, 5), "mixed_float16"),  # Colab's T4: float16 tensor cores, no bfloat16
    ((8, 0), "mixed_bfloat16"),  # A100
    ((9, 0), "mixed_bfloat16"),  # H100, H200
    ((6, 0), "float32"),  # P100: half precision is no faster
    (None, "mixed_bfloat16"),  # a TPU
])
def test_precision_follows_the_gpu_that_the_backend_reports(monkeypatch, capability, policy):
    _pretend_gpu(monkeypatch, capability)
    assert utils.mixed_precision_policy() == policy


def test_a_tpu_is_named_in_the_run_record(monkeypatch):
    _pretend_gpu(monkeypatch, None)  # TensorFlow reported a CPU: the TPU went unrecorded
    assert utils.mixed_precision_policy() == "mixed_bfloat16"
    assert "TPU" in utils.run_info()["device"]
