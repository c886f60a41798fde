"""Trains tiny models on one device and under `utils.data_parallel`, in a fresh process.

`test_distributed.py` runs it once per backend: the simulated devices (TensorFlow's
logical CPUs, XLA's host platform devices) must be set before the backend starts,
so they cannot be made inside the pytest process. It prints one JSON object: for
each check, the largest difference between the one-device and the data-parallel
results, and how far training moved the weights (so a match is not a no-op).

    python tests/distributed_check.py tensorflow 2
    python tests/distributed_check.py jax 2
"""

import json
import os
import pathlib
import sys
import tempfile
import types
import warnings

BACKEND, DEVICES = sys.argv[1], int(sys.argv[2])
os.environ["KERAS_BACKEND"] = BACKEND
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if BACKEND == "jax":
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES}"
else:
    import tensorflow as tf

    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * DEVICES)


import keras
import numpy as np

import aerialkd
import utils

CLASSES = (0, 1, 2)
BATCH = 4


def tiny_data(n, seed):
    """`n` 16x16 patches; the first ones half unannotated, so the replicas' shares
    of a batch hold different numbers of annotated pixels."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 16, 16, 3)).astype("uint8")
    y = rng.integers(0, 3, (n, 16, 16)).astype("uint8")
    y[: n // 2, :8] = utils.IGNORE_INDEX
    return x, y


def unet(seed):
    """A two-layer segmenter (a U-Net's first and last layers): quick to compile."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    return keras.Model(inputs, keras.layers.Conv2D(3, 1, name="logits")(x))


def augmented(seed):
    """The segmenter with the U-Net's random draws: symmetries and dropout."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16, 16, 3))
    x, symmetry = utils.RandomSymmetry(name="augment")(inputs)
    x = keras.layers.Rescaling(1 / 255)(x)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    x = utils.DeviceInvariantDropout(0.3)(x)
    logits = keras.layers.Conv2D(3, 1, name="logits")(x)
    return keras.Model(inputs, utils.UndoSymmetry()([logits, symmetry]))


def build(kind):
    model = augmented(1) if kind == "augmented" else unet(1)
    if kind in ("cached", "live"):
        model = utils.Distiller(unet(2), model, alpha=0.3, temperature=2.0)
    return utils.compile_segmentation(model, learning_rate=1e-2, labelled_classes=CLASSES)


def train(kind, x, y):
    model = build(kind)
    start = [w.copy() for w in model.get_weights()]
    inputs = (x, utils.predict_logits(model.teacher, x, BATCH)) if kind == "cached" else x
    history = model.fit(inputs, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    return start, model.get_weights(), history.history


def max_diff(a, b):
    return float(max(np.abs(np.asarray(u) - np.asarray(v)).max() for u, v in zip(a, b)))


def compare_training(kind, x, y):
    start, one, one_history = train(kind, x, y)
    with utils.data_parallel():
        _, many, many_history = train(kind, x, y)
    return {"weights": max_diff(one, many), "moved": max_diff(start, one),
            "history": {k: abs(one_history[k][-1] - many_history[k][-1])
                        for k in one_history}}


def compare_evaluation(x, y):
    model = unet(3)
    one = utils.evaluate_segmentation(model, x, y, batch_size=BATCH, class_names=("a", "b", "c"),
                                      labelled_classes=CLASSES)
    with utils.data_parallel():
        model = unet(3)
        many = utils.evaluate_segmentation(model, x, y, batch_size=BATCH,
                                           class_names=("a", "b", "c"), labelled_classes=CLASSES)
        logits = utils.predict_logits(model, x, BATCH)
    return {"patches": len(logits), "miou": abs(one["miou3"] - many["miou3"]),
            "counted": int(np.asarray(many["confusion_matrix"]).sum()),
            "annotated": int((y != utils.IGNORE_INDEX).sum()),
            "confusion": float(np.abs(np.asarray(one["confusion_matrix"])
                                      - np.asarray(many["confusion_matrix"])).max())}


class Disconnect(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("runtime disconnected")


def compare_resumed_fit(data, folder):
    kwargs = dict(epochs=2, name="m", batch_size=BATCH, verbose=0)
    one = utils.fit_segmentation(build("plain"), data, output_dir=folder / "one", **kwargs)
    with utils.data_parallel():
        try:
            utils.fit_segmentation(build("plain"), data, output_dir=folder / "many",
                                   callbacks=[Disconnect()], **kwargs)
        except KeyboardInterrupt:
            pass
        interrupted = (folder / "many" / "backup_m").exists()
        many = utils.fit_segmentation(build("plain"), data, output_dir=folder / "many",
                                      **kwargs)
    weights = [keras.models.load_model(folder / run / "m.keras").get_weights()
               for run in ("one", "many")]
    return {"interrupted": interrupted, "epochs": many["epoch"],
            "weights": max_diff(*weights),
            "val_miou": max(abs(a - b) for a, b in zip(one["val_miou3"], many["val_miou3"]))}


def compare_steps_per_execution(data, folder):
    """fit_segmentation of a model compiled with 2 steps a call, on two devices and one."""
    kwargs = dict(epochs=2, name="m", batch_size=BATCH, verbose=0)
    compiled = lambda steps: utils.compile_segmentation(  # noqa: E731
        unet(1), learning_rate=1e-2, labelled_classes=CLASSES, steps_per_execution=steps)
    utils.fit_segmentation(compiled(1), data, output_dir=folder / "one", **kwargs)
    with utils.data_parallel(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        utils.fit_segmentation(compiled(2), data, output_dir=folder / "many", **kwargs)
    weights = [keras.models.load_model(folder / run / "m.keras").get_weights()
               for run in ("one", "many")]
    return {"weights": max_diff(*weights),
            "warned": any("keras-team/keras#19246" in str(w.message) for w in caught)}


def compare_use_all_devices(x, y):
    """`use_all_devices` (session-wide, as the notebooks call it) against one device."""
    _, one, _ = train("plain", x, y)
    one_logits = utils.predict_logits(unet(3), x, BATCH)
    parallel = utils.use_all_devices()
    try:
        _, many, _ = train("plain", x, y)
        many_logits = utils.predict_logits(unet(3), x, BATCH)
        replicas = aerialkd.devices.data_parallel_size(build("plain"))
        try:  # one device inside the session's two: JAX swaps, TensorFlow refuses
            with utils.data_parallel(1) as inner:
                inside = f"{inner.num_replicas} device"
        except ValueError as error:
            inside = str(error)
    finally:  # back to one device for anything after this check
        if BACKEND == "tensorflow":
            tf.distribute.experimental_set_strategy(None)
        else:
            keras.distribution.set_distribution(None)
    return {"replicas": parallel.num_replicas, "model_replicas": replicas, "inside": inside,
            "weights": max_diff(one, many), "logits": max_diff([one_logits], [many_logits])}


def main():
    with utils.data_parallel() as parallel:
        replicas = parallel.num_replicas
    x, y = tiny_data(8, 0)
    x_val, y_val = tiny_data(7, 1)  # a split the devices do not divide
    data = types.SimpleNamespace(x_train=x, y_train=y, x_val=x_val, y_val=y_val)
    results = {"replicas": replicas, "backend": keras.backend.backend()}
    for kind in ("plain", "cached", "live", "augmented"):
        print(kind, file=sys.stderr)
        results[kind] = compare_training(kind, x, y)
    if BACKEND == "tensorflow":  # plain fit splits a last batch of 3 as 2 + 1
        print("augmented, uneven last batch", file=sys.stderr)
        results["augmented_uneven"] = compare_training("augmented", x[:7], y[:7])
    print("evaluation", file=sys.stderr)
    results["evaluation"] = compare_evaluation(x_val, y_val)
    print("resumed_fit", file=sys.stderr)
    with tempfile.TemporaryDirectory() as folder:
        results["resumed_fit"] = compare_resumed_fit(data, pathlib.Path(folder))
    print("steps_per_execution", file=sys.stderr)
    with tempfile.TemporaryDirectory() as folder:
        results["steps_per_execution"] = compare_steps_per_execution(data, pathlib.Path(folder))
    print("use_all_devices", file=sys.stderr)
    results["use_all_devices"] = compare_use_all_devices(x, y)
    print("RESULTS " + json.dumps(results))


if __name__ == "__main__":
    main()
