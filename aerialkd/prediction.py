"""Running a model over batches of images: logits, a fast predict function, latency."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import keras
import numpy as np
from keras import ops

from .checks import check_count
from .hosts import process_count
from .devices import data_parallel_size
from .models import size_multiple


def predict_logits(
    model: keras.Model | Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    batch_size: int = 16,
) -> np.ndarray:
    """Runs `model` on uint8 images in batches; returns float32 logits.

    A Keras model runs through its own `predict_on_batch`, which Keras
    compiles once per model and keeps.

    Args:
        model: a Keras model returning logits, or a function from a batch to
            logits such as `make_predict_function`'s.
        images: images `(N, H, W, 3)`, uint8 or float in [0, 255] (the
            models rescale by 1/255 themselves).
        batch_size: images per forward pass.

    Returns:
        float32 numpy logits `(N, H, W, C)`.

    Example:

    >>> predict_logits(student, data.x_test).shape  # 140 patches of 32x32, 6 classes
    (140, 32, 32, 6)
    """
    check_count("batch_size", batch_size)
    images = np.asarray(images)
    if not len(images):
        raise ValueError(f"images holds no image (shape {images.shape}): nothing to predict.")
    if isinstance(model, keras.Model) and images.ndim == 4:
        multiple = size_multiple(model)
        if images.shape[1] % multiple or images.shape[2] % multiple:
            raise ValueError(
                f"The images are {images.shape[1]}x{images.shape[2]} pixels, and "
                f"{model.name!r} needs a height and width that are multiples of {multiple} "
                f"(it pools them down by {multiple} and joins each level to the one above). "
                f"Crop or pad them, or segment a scene of any size with "
                f"segment_scene, which cuts it into tiles.")
    predict = batch_predictor(model)
    return np.concatenate([predict(images[i : i + batch_size])
                           for i in range(0, len(images), batch_size)])


def _replicated_predictor(model, replicas):
    """`model`'s prediction of a batch split over `replicas` devices.

    Under `tf.distribute`, `predict_on_batch` gives every replica the whole
    batch and returns their outputs end to end (N times the batch), and on JAX
    `predict` raises on a batch the devices do not divide; so the batch is
    padded with black images to a multiple of `replicas`, split by `predict`,
    and the padding's outputs are dropped.
    """

    def predict(batch):
        batch = np.asarray(batch, "float32")
        extra = -len(batch) % replicas
        padded = np.concatenate([batch, np.zeros((extra, *batch.shape[1:]), "float32")])
        logits = model.predict(padded, batch_size=len(padded), verbose=0)
        return np.asarray(logits, "float32")[: len(batch)]

    return predict


def batch_predictor(model):
    """A function from a batch to float32 logits: `model` itself, or its `predict_on_batch`."""
    if _is_predict_function(model):
        return lambda batch: np.asarray(model(batch), "float32")
    if process_count() > 1:
        raise RuntimeError(
            "predict_logits runs on one process's devices, and this model is under a "
            "data_parallel spanning several processes: predict after the data_parallel "
            "block, e.g. with the saved model, keras.models.load_model(path).")
    replicas = data_parallel_size(model)
    if replicas > 1:
        return _replicated_predictor(model, replicas)
    return lambda batch: np.asarray(model.predict_on_batch(np.asarray(batch, "float32")),
                                    dtype=np.float32)


def make_predict_function(model: keras.Model) -> Callable[[np.ndarray], np.ndarray]:
    """A fast function from a batch of images to the logits of `model`.

    The inference path of `measure_latency`: a `tf.function` on TensorFlow,
    a `jax.jit` of the model's stateless call on JAX (weights passed in, so
    later weight changes are seen), and `predict_on_batch` elsewhere. It
    skips the per-call work of `predict_on_batch` (data adapters,
    callbacks), which dominates for a small model at batch 1. Make it once
    and call it for every batch: each new function compiles again. The
    other prediction functions accept it in place of the model.

    Args:
        model: a Keras model returning logits.

    Returns:
        A function from images `(N, H, W, 3)` (uint8 or float) to float32
        numpy logits `(N, H, W, C)`.

    Example:

    >>> predict = make_predict_function(student)
    >>> predict(data.x_test[:8]).shape
    (8, 32, 32, 6)
    """
    function = _compile_inference(model)

    def predict(batch):
        batch = np.asarray(batch, dtype="float32")
        return np.asarray(ops.convert_to_numpy(function(batch)), dtype=np.float32)

    predict.model = model
    return predict


def _is_predict_function(model):
    """A function from a batch to logits (`make_predict_function`'s, `load_litert`'s, ...)."""
    return callable(model) and not isinstance(model, keras.Model)


def _compile_inference(model):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        def forward(x):
            return model(x, training=False)

        # No AutoGraph: the call has no Python control flow to convert.
        return tf.function(forward, reduce_retracing=True, autograph=False)
    if backend == "jax":
        import jax

        @jax.jit
        def forward(trainable, non_trainable, x):
            return model.stateless_call(trainable, non_trainable, x, training=False)[0]

        return lambda x: forward([v.value for v in model.trainable_variables],
                                 [v.value for v in model.non_trainable_variables], x)
    return model.predict_on_batch


def measure_latency(
    models: Mapping[str, keras.Model | Callable[[np.ndarray], np.ndarray]],
    input_size: int = 256,
    batch_size: int = 1,
    repeats: int = 20,
    warmup: int = 3,
) -> dict[str, float]:
    """Median wall-clock seconds of one forward pass, models interleaved.

    Each repeat runs every model once in turn, so background load on a noisy
    machine hits all of them alike; compare the results as ratios.

    Args:
        models: dict mapping a name to a Keras model (run through
            `make_predict_function`) or to any function from images to logits (e.g.
            `load_litert`'s).
        input_size: side of the square random input.
        batch_size: images per forward pass.
        repeats: timed passes per model.
        warmup: untimed passes per model first (compilation, caches).

    Returns:
        dict mapping each name to the median seconds per pass.

    Raises:
        ValueError: a size or count below 1 (`warmup` below 0).

    Example:

    A `load_litert` function times the exported file next to the model.

    >>> measure_latency({"teacher": teacher, "student": student})  # doctest: +ELLIPSIS
    {'teacher': ..., 'student': ...}
    """
    for label, value in (("input_size", input_size), ("batch_size", batch_size),
                         ("repeats", repeats)):
        check_count(label, value)
    check_count("warmup", warmup, minimum=0)
    x = np.random.default_rng(0).integers(
        0, 256, (batch_size, input_size, input_size, 3)).astype("float32")
    predictors = {name: make_predict_function(model)
                  if isinstance(model, keras.Model) else model
                  for name, model in models.items()}
    for predict in predictors.values():
        for _ in range(warmup):
            predict(x)
    times = {name: [] for name in predictors}
    for _ in range(repeats):
        for name, predict in predictors.items():
            start = time.perf_counter()
            predict(x)
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}
