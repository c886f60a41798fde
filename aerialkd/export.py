"""Exporting a model to LiteRT (`.tflite`) and running the exported file."""

from __future__ import annotations

import os
import pathlib
import warnings
from collections.abc import Callable

import keras
import numpy as np


def export_litert(
    model: keras.Model,
    path: os.PathLike | str,
    input_size: int = 256,
    quantize: str | None = None,
    calibration_images: np.ndarray | None = None,
) -> pathlib.Path:
    """Exports a model to LiteRT (`.tflite`), to run without Keras.

    The export fixes the image size (LiteRT prefers static shapes); the batch
    size stays free. Needs the TensorFlow backend. Quantization goes through
    Keras' own LiteRT exporter (TFLite converter settings); inputs and
    outputs stay float32 either way.

    Args:
        model: a Keras model returning logits.
        path: the `.tflite` file to write.
        input_size: side of the square input images.
        quantize: `None` (float32), "float16" (weights in float16: half the
            file) or "int8" (weights and activations in int8, calibrated on
            `calibration_images`: a quarter of the file).
        calibration_images: uint8 or float images `(N, S, S, 3)` for "int8",
            e.g. a few dozen training patches.

    Returns:
        `pathlib.Path` of the file.

    Example:

    For int8, add `quantize="int8", calibration_images=data.x_train[:64]`.

    >>> path = export_litert(student, "student.tflite", input_size=data.patch_size)
    >>> path.name
    'student.tflite'
    >>> load_litert(path)(data.x_test[:2]).shape
    (2, 32, 32, 6)
    """
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            f"LiteRT export needs the TensorFlow backend, this is "
            f"{keras.backend.backend()!r}: rerun with KERAS_BACKEND=tensorflow."
        )
    import tensorflow as tf

    options = {}
    if quantize == "float16":
        options = {"optimizations": [tf.lite.Optimize.DEFAULT],
                   "target_spec": {"supported_types": [tf.float16]}}
    elif quantize == "int8":
        if calibration_images is None or len(calibration_images) == 0:
            raise ValueError("quantize='int8' needs calibration_images, e.g. "
                             "data.x_train[:64], to choose the activation ranges.")
        images = np.asarray(calibration_images, dtype="float32")
        if images.shape[1:] != (input_size, input_size, 3):  # TFLite's words: "mutating"
            raise ValueError(f"calibration_images are {images.shape[1:]}, and the export "
                             f"takes ({input_size}, {input_size}, 3) images: crop them to "
                             f"input_size, or export at their size.")
        options = {"optimizations": [tf.lite.Optimize.DEFAULT],
                   "representative_dataset": lambda: ([image[None]] for image in images)}
    elif quantize is not None:
        raise ValueError(f"quantize must be None, 'float16' or 'int8', got {quantize!r}.")
    inputs = keras.Input((input_size, input_size, 3), name="image")
    fixed = keras.Model(inputs, model(inputs, training=False), name=model.name)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = tf.get_logger()  # TensorFlow logs the temporary SavedModel it converts
    level = logger.level
    logger.setLevel("ERROR")
    try:
        fixed.export(str(path), format="litert", verbose=False, **options)
    finally:
        logger.setLevel(level)
    return path


def load_litert(
    path: os.PathLike | str, num_threads: int | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """Loads a `.tflite` model; returns a function from images to logits.

    Uses the `ai_edge_litert` interpreter when installed, else TensorFlow's.

    Args:
        path: the `.tflite` file.
        num_threads: CPU threads for the interpreter; all cores if `None`
            (the interpreter's own default is one).

    Returns:
        A function from images `(N, S, S, 3)` (uint8 or float) to float32
        logits `(N, S, S, C)`, for `measure_latency` among others.

    Example:

    >>> path = export_litert(student, "student.tflite", input_size=data.patch_size)
    >>> predict = load_litert(path, num_threads=1)
    >>> logits = predict(data.x_test[:2])
    >>> logits.shape, logits.dtype
    ((2, 32, 32, 6), dtype('float32'))
    >>> np.allclose(logits, predict_logits(student, data.x_test[:2]), atol=1e-4)
    True
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # TensorFlow's copy, deprecated but still shipped
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        interpreter = Interpreter(model_path=str(path),
                                  num_threads=num_threads or os.cpu_count())
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]
    target = interpreter.get_output_details()[0]

    def predict(images):
        images = np.asarray(images, dtype=np.float32)
        if tuple(interpreter.get_input_details()[0]["shape"]) != images.shape:
            interpreter.resize_tensor_input(source["index"], images.shape)
            interpreter.allocate_tensors()
        interpreter.set_tensor(source["index"], images)
        interpreter.invoke()
        return interpreter.get_tensor(target["index"])

    return predict
