"""The U-Net teacher and student, ensembles of them, their size, FLOPs and precision."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable, Sequence
from typing import Any

import keras
import numpy as np
from keras import layers

from .checks import check_count
from .classes import CLASSES
from .layers import DeviceInvariantDropout, RandomSymmetry, SymmetryAverage, UndoSymmetry


TEACHER_FILTERS = 16


STUDENT_FILTERS = 8


def build_unet(
    base_filters: int = 16,
    n_classes: int = len(CLASSES),
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
    dropout: Sequence[float] = (0.1, 0.1, 0.2, 0.2, 0.3),
    augment: bool = True,
    seed: int | None = None,
    name: str | None = None,
) -> keras.Model:
    """Builds the classic 4-level U-Net that outputs logits.

    Four levels down and four up, two 3x3 ReLU convolutions per level with
    dropout between them, max pooling down, 2x2 transposed convolutions up,
    skip connections by concatenation, filters doubling from `base_filters`
    to `16 * base_filters` at the bottleneck. Inputs are uint8-range RGB
    images, rescaled inside the model; the last layer is a 1x1 convolution
    with no activation, so the model returns **logits** (distillation needs
    them; apply softmax for probabilities).

    With `augment=True`, training draws one of the 8 symmetries of the square
    per image (`RandomSymmetry`) and maps the logits back (`UndoSymmetry`),
    on the device and inside the compiled step: the labels are untouched,
    and since the losses sum over pixels, this is training on transformed
    images and labels. At inference both layers pass their input through.

    Args:
        base_filters: filters of the first level (16 for the teacher, 8 for
            the student). Below 4, the top level's few ReLU channels can
            all be dead at initialization (negative on almost every pixel,
            so they get no gradient) and the model barely learns: on the
            Dubai validation patches, 2 of 10 seeds at width 2 on TensorFlow,
            none at 4 or 8 (`scripts/dead_units.py`).
        n_classes: number of output classes.
        input_shape: `(H, W, 3)`; H and W may be `None` (any size divisible
            by 16).
        dropout: dropout rates of the five depths, top to bottleneck.
        augment: whether training applies random flips and rotations.
        seed: seed of the augmentation draws.
        name: model name.

    Returns:
        A functional `keras.Model` mapping `(N, H, W, 3)` to logits
        `(N, H, W, n_classes)`.

    Example:

    >>> model = build_unet(8, n_classes=3)
    >>> model.output_shape, model.count_params()  # logits of any size divisible by 16
    ((None, None, None, 3), 485835)
    """
    base_filters = check_count("base_filters", base_filters)
    n_classes = check_count("n_classes", n_classes, minimum=2)
    if len(dropout) != 5:
        raise ValueError(f"dropout needs 5 rates, one per depth; got {dropout!r}.")
    for size in input_shape[:2]:
        if size is not None and size % 16:
            raise ValueError(
                f"Input height and width must be divisible by 16, got "
                f"input_shape={input_shape}."
            )
    if augment and None not in input_shape[:2] and input_shape[0] != input_shape[1]:
        raise ValueError(f"augment=True rotates by quarter turns, so the images must be "
                         f"square; got input_shape={input_shape}. Pass augment=False, or "
                         f"a square shape (or None for any size).")
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    if augment:
        x, symmetry = RandomSymmetry(seed=seed, name="augment")(x)
    x = layers.Rescaling(1.0 / 255, name="rescale")(x)
    skips = []
    for depth in range(4):
        x = _conv_block(x, base_filters * 2**depth, dropout[depth], f"down{depth}")
        skips.append(x)
        x = layers.MaxPooling2D(name=f"down{depth}_pool")(x)
    x = _conv_block(x, base_filters * 16, dropout[4], "bottleneck")
    for depth in reversed(range(4)):
        filters = base_filters * 2**depth
        x = layers.Conv2DTranspose(
            filters, 2, strides=2, padding="same", name=f"up{depth}_upsample"
        )(x)
        x = layers.Concatenate(name=f"up{depth}_skip")([x, skips[depth]])
        x = _conv_block(x, filters, dropout[depth], f"up{depth}")
    logits = layers.Conv2D(n_classes, 1, dtype="float32", name="logits")(x)
    if augment:
        logits = UndoSymmetry(name="augment_undo")([logits, symmetry])
    return keras.Model(inputs, logits, name=name or f"unet{base_filters}")


def _conv_block(x, filters, rate, name):
    x = layers.Conv2D(filters, 3, padding="same", activation="relu",
                      kernel_initializer="he_normal", name=f"{name}_conv1")(x)
    x = DeviceInvariantDropout(rate, name=f"{name}_dropout")(x)
    return layers.Conv2D(filters, 3, padding="same", activation="relu",
                         kernel_initializer="he_normal", name=f"{name}_conv2")(x)


def symmetry_ensemble(model: keras.Model) -> keras.Model:
    """Wraps a model to average its logits over the 8 symmetries of the square.

    Each image is transposed and flipped in all 8 ways, the model predicts
    each, the predictions are mapped back and their logits averaged: test-time
    augmentation, and a stronger, smoother teacher for distillation (8x the
    forward passes). The wrapper shares the model's weights.

    Args:
        model: a model mapping square images `(N, S, S, 3)` to logits.

    Returns:
        A functional model with the same input and output shapes.

    Example:

    >>> teacher8 = symmetry_ensemble(teacher)
    >>> distiller = Distiller(teacher=teacher8, student=build_student())
    >>> teacher8.name, teacher8.output_shape
    ('teacher_x8', (None, None, None, 6))
    """
    height, width = model.input.shape[1:3]
    if None not in (height, width) and height != width:
        raise ValueError(f"symmetry_ensemble rotates by quarter turns, so the images must be "
                         f"square; {model.name!r} takes {height}x{width}.")
    inputs = keras.Input(model.input.shape[1:], name="image")
    logits = SymmetryAverage(model, name="symmetry_average")(inputs)
    return keras.Model(inputs, logits, name=f"{model.name}_x8")


def build_teacher(**kwargs: Any) -> keras.Model:
    """The teacher: `build_unet(16)`, about 1.94 M parameters.

    Args:
        **kwargs: arguments of `build_unet` (`n_classes`, `augment`, ...);
            the name is "teacher" unless one is given.

    Returns:
        A `keras.Model` returning logits.

    Example:

    >>> build_teacher().count_params()
    1941190
    """
    kwargs.setdefault("name", "teacher")
    return build_unet(TEACHER_FILTERS, **kwargs)


def build_student(**kwargs: Any) -> keras.Model:
    """The student: half width, `build_unet(8)`, about 0.49 M parameters.

    Args:
        **kwargs: arguments of `build_unet` (`n_classes`, `augment`, ...);
            the name is "student" unless one is given.

    Returns:
        A `keras.Model` returning logits.

    Example:

    >>> build_student(n_classes=3).count_params()
    485835
    """
    kwargs.setdefault("name", "student")
    return build_unet(STUDENT_FILTERS, **kwargs)


def size_multiple(model: keras.Model) -> int:
    """The number that an image's height and width must be a multiple of for `model`.

    The product of the strides of its pooling layers, in the deepest of its
    nested models: a U-Net halves its input four times and joins each level
    to the one above, so 16; the sizes in between would not meet.

    Example:

    >>> size_multiple(build_unet(8)), size_multiple(symmetry_ensemble(build_unet(8)))
    (16, 16)
    """
    own, nested = 1, 1
    for layer in model.layers:
        inner = layer if isinstance(layer, keras.Model) else getattr(layer, "model", None)
        if isinstance(inner, keras.Model):  # a member of an ensemble, a SymmetryAverage's
            nested = max(nested, size_multiple(inner))
        elif isinstance(layer, (layers.MaxPooling2D, layers.AveragePooling2D)):
            own *= max(layer.strides)  # (2, 2): halves each side
    return max(own, nested)


def count_flops(model: keras.Model, input_size: int = 256) -> int:
    """Counts the floating-point operations of one forward pass.

    Counts multiply-adds of convolutions and transposed convolutions as two
    operations each (the convention behind "GFLOPs" in papers); pooling,
    activations and dropout are negligible and left out.

    Args:
        model: a model from `build_unet`, or a `symmetry_ensemble` or
            `ensemble_teacher` of such models (8 passes of the model, one
            pass of each member). Other layouts are refused: the count
            follows the sizes through `build_unet`'s layers (same-padded,
            unstrided convolutions, 2x2 pooling, strided transposed ones).
        input_size: side of the square input.

    Returns:
        FLOPs as an int.

    Example:

    >>> round(count_flops(build_teacher()) / 1e9, 2)  # GFLOPs at 256x256
    6.08
    """
    shapes = _layer_output_shapes(model, input_size)
    flops = 0
    for layer in model.layers:
        if (isinstance(layer, (layers.UpSampling2D, layers.SeparableConv2D,
                               layers.DepthwiseConv2D))
                or isinstance(layer, layers.Conv2D) and not isinstance(
                    layer, layers.Conv2DTranspose) and (
                    tuple(layer.strides) != (1, 1)
                    or layer.padding != "same" and tuple(layer.kernel_size) != (1, 1))):
            raise ValueError(
                f"count_flops counts build_unet's layers, and {model.name!r} has "
                f"{layer.name!r} ({type(layer).__name__}, padding "
                f"{getattr(layer, 'padding', None)!r}, strides "
                f"{getattr(layer, 'strides', None)}), whose sizes or operations it does "
                f"not follow: count this model with a profiler instead.")
        if isinstance(layer, SymmetryAverage):
            flops += 8 * count_flops(layer.model, input_size)
        elif isinstance(layer, keras.Model):  # a member of an ensemble
            flops += count_flops(layer, input_size)
        elif isinstance(layer, layers.Conv2DTranspose):
            h, w = shapes[layer.name][1:3]
            c_in = layer.input.shape[-1]
            k = np.prod(layer.kernel_size)
            flops += 2 * k * c_in * layer.filters * (h // layer.strides[0]) * (
                w // layer.strides[1])
        elif isinstance(layer, layers.Conv2D):
            h, w = shapes[layer.name][1:3]
            k = np.prod(layer.kernel_size)
            flops += 2 * k * layer.input.shape[-1] * layer.filters * h * w
    return int(flops)


def _layer_output_shapes(model, input_size):
    shapes, size = {}, input_size
    for layer in model.layers:
        if isinstance(layer, layers.MaxPooling2D):
            size //= 2
        elif isinstance(layer, layers.Conv2DTranspose):
            size *= layer.strides[0]
        shapes[layer.name] = (None, size, size)
    return shapes


def model_summary(
    model: keras.Model, path: os.PathLike | str | None = None, input_size: int = 256
) -> dict[str, float]:
    """Returns parameters, FLOPs and (if `path` is given) file size in MB.

    Args:
        model: a model from `build_unet` (see `count_flops`).
        path: the model's saved file, for its size.
        input_size: side of the square input of the FLOPs.

    Returns:
        A dict with `parameters` (an int), `gflops` and, with `path`, `size_mb`.

    Example:

    >>> model_summary(student)["parameters"]
    485862
    """
    info = {
        "parameters": int(model.count_params()),
        "gflops": count_flops(model, input_size) / 1e9,
    }
    if path is not None:
        info["size_mb"] = os.path.getsize(path) / 1e6
    return info


def ensemble_teacher(
    models: Iterable[keras.Model], name: str = "teacher_ensemble"
) -> keras.Model:
    """A teacher that averages the logits of several models.

    Teachers of different seeds err in different places; their mean logits
    are a stronger, better calibrated target than any one of them. The
    result is a functional model (the members inside it, under the names
    `member0`, `member1`, ...) that saves and loads with `keras.saving`
    and serves wherever a teacher does (`Distiller`, `predict_logits`).
    It runs every member at every step.

    Args:
        models: non-empty sequence of models with the same input and output
            shapes, returning logits.
        name: name of the ensemble model.

    Returns:
        A functional `keras.Model` mapping images to the members' mean logits.

    Example:

    Three teachers of different seeds (here small untrained stand-ins):

    >>> members = [build_unet(2, name=f"teacher_s{seed}") for seed in range(3)]
    >>> teacher = ensemble_teacher(members)
    >>> distiller = Distiller(teacher=teacher, student=build_student())
    """
    models = list(models)
    if not models:
        raise ValueError("ensemble_teacher needs at least one model, got none.")
    for i, model in enumerate(models):
        if not isinstance(model, keras.Model):
            raise TypeError(f"Member {i} must be a keras.Model, got {type(model)}.")
        for what in ("input", "output"):
            first, this = tuple(getattr(models[0], what).shape), tuple(getattr(model, what).shape)
            if this != first:
                raise ValueError(
                    f"All members must have the same {what} shape: member 0 has {first}, "
                    f"member {i} has {this}. Ensemble models of one architecture and "
                    f"class count.")
    inputs = keras.Input(models[0].input.shape[1:], name="image")
    outputs = [keras.Model(m.input, m.output, name=f"member{i}")(inputs)
               for i, m in enumerate(models)]
    if len(outputs) == 1:
        logits = layers.Identity(name="mean_logits", dtype="float32")(outputs[0])
    else:
        logits = layers.Average(name="mean_logits", dtype="float32")(outputs)
    return keras.Model(inputs, logits, name=name)


def save_model(model: keras.Model, path: os.PathLike | str) -> None:
    """Saves a model for inference: float32, architecture and weights, no optimizer.

    A `.keras` file of a compiled model also holds the optimizer's state
    (Adam: two more copies of the weights); this one does not, so it is about
    3x smaller. A model trained in mixed precision is saved with float32
    layers, to run anywhere (bfloat16 is slow on most CPUs). It loads with
    `keras.models.load_model` once `aerialkd` (or `utils`) is imported (which registers the
    augmentation layers, identities at inference).

    Args:
        model: a functional Keras model.
        path: the `.keras` file to write; it is written whole or not at all
            (to a temporary file first, then renamed).

    Example:

    >>> save_model(with_dtype_policy(student, "mixed_float16"), "student.keras")
    >>> model = keras.models.load_model("student.keras")
    >>> model.count_params(), model.get_layer("down0_conv1").dtype_policy.name
    (485862, 'float32')
    """
    if any(policy != "float32" for policy in _layer_policies(model)):
        model = with_dtype_policy(model, "float32")
    path = pathlib.Path(path)
    partial = path.with_name(f".{path.stem}.partial.keras")  # Keras wants the suffix
    keras.Model(model.input, model.output, name=model.name).save(partial)
    partial.replace(path)  # a reader never finds a half-written file


def with_dtype_policy(model: keras.Model, policy: str) -> keras.Model:
    """A copy of a functional model whose layers all use dtype `policy`.

    The layers of nested models too (the members of an `ensemble_teacher`,
    the model a `symmetry_ensemble` wraps); the logits and the symmetry
    layers stay float32 in mixed precision.

    Args:
        model: a functional Keras model.
        policy: a Keras dtype policy name, e.g. "float32" or "mixed_bfloat16".

    Returns:
        A new model with the same architecture and (float32) weights, not
        compiled; with "mixed_float16", `compile` wraps its optimizer in
        Keras' `LossScaleOptimizer`. Building the copy draws from Keras'
        global random state (its weights are then replaced), so after
        `keras.utils.set_random_seed`, build the model that seed is for first.

    Example:

    >>> mixed = with_dtype_policy(student, "mixed_bfloat16")
    >>> mixed.get_layer("down0_conv1").dtype_policy.name, mixed.get_layer("logits").dtype
    ('mixed_bfloat16', 'float32')
    """
    config = model.get_config()
    _set_dtype_policy(config, policy)
    copy = keras.Model.from_config(config)
    copy.set_weights(model.get_weights())
    copy.dtype_policy = policy  # compile adds loss scaling for "mixed_float16"
    return copy


_FLOAT32_LAYERS = ("logits", "augment", "augment_undo", "mean_logits", "symmetry_average")


def _set_dtype_policy(config, policy):
    for layer in config["layers"]:
        inner = layer["config"]
        if "layers" in inner:  # a nested model (an ensemble's member)
            _set_dtype_policy(inner, policy)
            continue
        if isinstance(inner.get("model"), dict):  # a wrapped one (symmetry_ensemble's)
            _set_dtype_policy(inner["model"]["config"], policy)
        if layer["class_name"] != "InputLayer":
            inner["dtype"] = "float32" if inner["name"] in _FLOAT32_LAYERS else policy


def _layer_policies(model):
    for layer in model.layers:
        yield layer.dtype_policy.name
        inner = layer if isinstance(layer, keras.Model) else getattr(layer, "model", None)
        if isinstance(inner, keras.Model):
            yield from _layer_policies(inner)
