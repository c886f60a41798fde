"""`Distiller`: a Keras model that trains a student on labels and a teacher's logits."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import layers
from keras import ops
from numpy.typing import ArrayLike

from .checks import check_count
from .devices import replicas_in_sync
from .layers import UndoSymmetry
from .losses import check_kd_arguments, distillation_loss


BOTTLENECK_LAYER = "bottleneck_conv2"
"""Name of the deepest layer of `build_unet`, whose output the feature term matches."""


@keras.saving.register_keras_serializable(package="utils")
class Distiller(keras.Model):
    """Trains a student on labels and on a frozen teacher's soft predictions.

    The student is trained on `alpha * student_loss + (1 - alpha) * KD`,
    where `student_loss` is the loss given to `compile` (e.g.
    `SegmentationLoss()`, which ignores unannotated pixels) and KD is
    `distillation_loss` (pixel-wise, channel-wise or DIST) over **every**
    pixel: where the annotators painted nothing the teacher's prediction is
    the only target there is, so the KD term teaches there too. The teacher
    is frozen and runs in inference mode. The history records
    `student_loss`, `distillation_loss` and `total_loss` (the same as
    `loss`), `feature_loss` when the feature term is on, and their `val_`
    twins, next to the compiled metrics.

    The two terms average over different pixels: the label loss over the
    batch's annotated pixels, the KD term over all of them. In a batch with
    few annotated pixels (a dataset of `unlabelled_elsewhere`, where a batch
    of 16 patches may hold none or eight labelled ones) each of them weighs
    more against the KD term than in a fully annotated batch; `alpha` sets
    the balance of the two averages, not of a pixel's two targets.

    `alpha` is held in a non-trainable `keras.Variable`, read inside the
    compiled step, so a callback may change it between epochs
    (`KDWeightSchedule`); `distiller.alpha` reads and sets it as a float.

    With `feature_weight > 0` a bottleneck term (FitNets, Romero et al.
    2015) is added: `feature_weight * MSE(adapter(f_s), f_t)`, where `f_s`
    and `f_t` are the outputs of the student's and the teacher's
    `BOTTLENECK_LAYER` ("bottleneck_conv2" of `build_unet`) and the adapter
    is a trainable 1x1 convolution owned by the distiller, from the
    student's channels to the teacher's. The student's features are mapped
    back through its augmentation (`UndoSymmetry`) so they line up with
    the teacher's. This term needs the teacher to run at every step:
    cached teacher logits are then used for nothing (`fit_segmentation`
    does not cache them). The student's logits of the loss come from the
    same forward pass as its features; Keras' `train_step` runs the student
    once more for the training metrics (with its own augmentation draw), so
    a step costs a second student pass.

    It is the design of `keras.distillation.Distiller` reduced to one logits
    term, with two additions: it serializes whole (`get_config`,
    `keras.saving`, a compiled one resumes training after a reload), and it
    takes inputs `(images, teacher_logits)` as well as plain images, to use
    logits computed once instead of running the teacher at every step (see
    `PatchSequence` and `fit_segmentation(cache_teacher=True)`). A student
    built with `augment=True` maps its logits back to the image as given,
    so they compare with the teacher's logits of the same image. After
    training, use and save `distiller.student` on its own.

    Args:
        teacher: trained model returning logits `(N, H, W, C)`, e.g. from
            `build_teacher`, `symmetry_ensemble` or `ensemble_teacher`.
        student: model with the same input and output shapes.
        alpha: weight in [0, 1] of the student's own loss.
        temperature: KD temperature, > 0.
        kind: "pixel" (Hinton), "channel" (Shu et al.) or "dist" (Huang et al.).
        standardize: standardize each pixel's logits before the softmax
            (Sun et al., see `distillation_loss`).
        feature_weight: weight >= 0 of the bottleneck feature term; 0 (the
            default) turns it off.

    Example:

    >>> distiller = Distiller(teacher=teacher, student=build_student(), alpha=0.1)
    >>> distiller.compile(optimizer="adam", loss=SegmentationLoss())
    >>> history = distiller.fit(data.x_train[:16], data.y_train[:16], epochs=1, verbose=0)
    >>> sorted(history.history)
    ['distillation_loss', 'loss', 'student_loss', 'total_loss']

    `fit_segmentation` trains it as it trains any model, and `save_model`
    saves `distiller.student`.
    """

    def __init__(
        self,
        teacher: keras.Model,
        student: keras.Model,
        alpha: float = 0.5,
        temperature: float = 4.0,
        kind: str = "pixel",
        standardize: bool = False,
        feature_weight: float = 0.0,
        name: str = "distiller",
        **kwargs: Any,
    ) -> None:
        _check_alpha(alpha)
        check_kd_arguments(temperature, kind)
        if not isinstance(standardize, bool):
            raise ValueError(f"standardize must be True or False, got {standardize!r}.")
        if isinstance(feature_weight, (bool, np.bool_)) \
                or not isinstance(feature_weight, numbers.Real) or not feature_weight >= 0:
            raise ValueError(f"feature_weight must be a number >= 0 (0 turns the feature "
                             f"term off), got {feature_weight!r}.")
        _check_teacher_and_student(teacher, student)
        super().__init__(name=name, **kwargs)
        self.teacher = teacher
        self.student = student
        self.teacher.trainable = False
        self._alpha = keras.Variable(float(alpha), trainable=False, dtype="float32",
                                     name="alpha")
        self.temperature = float(temperature)
        self.kind = kind
        self.standardize = standardize
        self.feature_weight = float(feature_weight)
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(name="distillation_loss")
        self.total_loss_tracker = keras.metrics.Mean(name="total_loss")
        if self.feature_weight:
            self._teacher_features = _features_model(teacher, "teacher")
            self._student_features = _features_model(student, "student")
            self.feature_adapter = layers.Conv2D(
                self._teacher_features.output[0].shape[-1], 1, dtype="float32",
                name="feature_adapter")
            # built now, so a reloaded distiller's optimizer finds its weights
            self.feature_adapter.build(self._student_features.output[0].shape)
            self.feature_loss_tracker = keras.metrics.Mean(name="feature_loss")

    @property
    def alpha(self) -> float:
        """The weight of the student's own loss, a float (held in a float32 variable)."""
        # the shortest decimal of the float32: 0.3, not 0.30000001192092896
        return float(str(np.float32(ops.convert_to_numpy(self._alpha))))

    @alpha.setter
    def alpha(self, value: float) -> None:
        _check_alpha(value)
        self._alpha.assign(float(value))

    def compile(self, optimizer: str | keras.optimizers.Optimizer = "rmsprop",
                **kwargs: Any) -> None:
        """Configures training as `keras.Model.compile`, with loss scaling for float16.

        Keras wraps the optimizer of a model whose dtype policy is
        "mixed_float16" in a `keras.optimizers.LossScaleOptimizer`, so that
        small float16 gradients do not flush to zero. The Distiller's own
        policy stays float32 (it only routes its inputs), so it looks at the
        student's: a student trained in float16 gets the same wrapping, unless
        `auto_scale_loss=False`, as for any Keras model. `loss` (the
        student's loss on the labels) is required.
        """
        if kwargs.get("loss") is None:
            # TensorFlow refuses a model without a loss; JAX counts it as 0, which
            # would train on the KD term alone whatever alpha says
            raise ValueError("Distiller.compile needs loss, the student's own loss on the "
                             "labels, e.g. loss=SegmentationLoss() (alpha=0 turns it off).")
        if _trains_in_float16(self.student) and kwargs.get("auto_scale_loss", True):
            optimizer = keras.optimizers.get(optimizer)
            if not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        super().compile(optimizer=optimizer, **kwargs)

    def compile_from_config(self, config: dict) -> None:
        """Compiles a reloaded Distiller as it was saved (Keras skips a custom `compile`)."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:  # the optimizer's variables, for its saved state to load into
            self.optimizer.build(self.trainable_variables)

    def call(self, inputs: ArrayLike | tuple[ArrayLike, ArrayLike],
             training: bool | None = None) -> ArrayLike:
        images = inputs[0] if isinstance(inputs, (tuple, list)) else inputs
        return self.student(images, training=training)

    def compute_loss(
        self,
        x: ArrayLike | tuple[ArrayLike, ArrayLike] | None = None,
        y: ArrayLike | None = None,
        y_pred: ArrayLike | None = None,
        sample_weight: ArrayLike | None = None,
        training: bool = True,
    ) -> ArrayLike:
        if sample_weight is not None:
            raise ValueError(
                "Distiller does not take sample weights (or class_weight): they would "
                "weigh the student's loss and not the KD term. Give pixels no weight by "
                "labelling them IGNORE_INDEX, and classes weights with "
                "SegmentationLoss(class_weights=...).")
        images = x[0] if isinstance(x, (tuple, list)) else x
        if self.feature_weight:  # one pass of each model gives features and logits
            student_features, y_pred = self._student_features(images, training=training)
            teacher_features, teacher_logits = self._teacher_features(images, training=False)
            adapted = self.feature_adapter(ops.cast(student_features, "float32"))
            feature_loss = ops.mean(ops.square(
                adapted - ops.cast(teacher_features, "float32")))
        else:
            if y_pred is None:
                y_pred = self(x, training=training)
            if isinstance(x, (tuple, list)):  # (images, the teacher's logits)
                teacher_logits = x[1]
            else:
                teacher_logits = self.teacher(x, training=False)
        student_loss = super().compute_loss(x, y, y_pred, sample_weight,
                                            training=training)
        kd = distillation_loss(teacher_logits, y_pred, self.temperature, self.kind,
                               self.standardize)
        # Under tf.distribute, Keras divides a compiled loss by the number of
        # replicas (their gradients are summed); divide the KD and feature terms
        # alike, and track the undivided values. 1 on one device and on JAX.
        replicas = replicas_in_sync()
        alpha = ops.cast(self._alpha, "float32")
        total = alpha * ops.cast(student_loss, "float32") + (1.0 - alpha) * kd / replicas
        # weighted by the batch's size, as Keras weighs `loss` (a short last batch)
        size = ops.cast(ops.shape(images)[0], "float32")
        if self.feature_weight:
            total = total + self.feature_weight * feature_loss / replicas
            self.feature_loss_tracker.update_state(feature_loss, sample_weight=size)
        self.student_loss_tracker.update_state(student_loss * replicas, sample_weight=size)
        self.distillation_loss_tracker.update_state(kd, sample_weight=size)
        self.total_loss_tracker.update_state(total * replicas, sample_weight=size)
        return total

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "student": keras.saving.serialize_keras_object(self.student),
            "alpha": self.alpha,
            "temperature": self.temperature,
            "kind": self.kind,
            "standardize": self.standardize,
            "feature_weight": self.feature_weight,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Distiller:
        config = dict(config)
        for role in ("teacher", "student"):
            config[role] = keras.saving.deserialize_keras_object(config[role])
        return cls(**config)


def distillation_settings(model: keras.Model) -> dict[str, Any]:
    """What a model learns from besides its labels, as a run record keeps it.

    Args:
        model: a `Distiller`, or a model trained on its labels alone.

    Returns:
        `{"kind": "none"}` for a model alone; for a `Distiller` its `kind`,
        `alpha` and `temperature`, and `standardize` and `feature_weight`
        where they are on.

    Example:

    >>> distillation_settings(Distiller(teacher=teacher, student=build_student(), alpha=0.1))
    {'kind': 'pixel', 'alpha': 0.1, 'temperature': 4.0}
    """
    if not isinstance(model, Distiller):
        return {"kind": "none"}
    settings = {"kind": model.kind, "alpha": model.alpha, "temperature": model.temperature}
    settings.update({k: v for k, v in (("standardize", model.standardize),
                                       ("feature_weight", model.feature_weight)) if v})
    return settings


def _trains_in_float16(model):
    """Whether `model` (or any of its layers) computes in float16."""
    return any(policy.name == "mixed_float16" for policy in
               (model.dtype_policy, *(layer.dtype_policy for layer in model.layers)))


def _check_alpha(alpha):
    if isinstance(alpha, (bool, np.bool_)) or not isinstance(alpha, numbers.Real) \
            or not 0 <= alpha <= 1:
        raise ValueError(
            f"alpha is the weight of the student's own loss and must be "
            f"in [0, 1], got {alpha!r}."
        )


def _features_model(model, role):
    """`model`'s bottleneck features and logits in one pass, features undone of augmentation."""
    names = [layer.name for layer in model.layers]
    if BOTTLENECK_LAYER not in names:
        raise ValueError(
            f"The feature term matches the outputs of the layers named "
            f"{BOTTLENECK_LAYER!r} (the U-Net bottleneck of build_unet), but the "
            f"{role} {model.name!r} has none. Use a build_unet model as {role}, or "
            f"feature_weight=0 (an ensemble teacher has no single bottleneck).")
    features = model.get_layer(BOTTLENECK_LAYER).output
    if "augment" in names:  # map the features back, as UndoSymmetry does the logits
        symmetry = model.get_layer("augment").output[1]
        features = UndoSymmetry(name=f"{role}_features_undo")([features, symmetry])
    return keras.Model(model.input, [features, model.output], name=f"{role}_features")


class KDWeightSchedule(keras.callbacks.Callback):
    """Sets a `Distiller`'s `alpha` at the start of every epoch from a schedule.

    `alpha` weighs the student's own (label) loss; `1 - alpha` the KD term.
    The distiller holds it in a variable read inside the compiled step, so
    the change takes effect from the epoch's first batch. The alpha of each
    epoch is also written to the logs (`alpha`), hence to the history.

    Args:
        schedule: function of the epoch (0-based) returning alpha in [0, 1].

    Example:

    Pass it to `fit_segmentation(distiller, ..., callbacks=[schedule])`.

    >>> schedule = KDWeightSchedule(KDWeightSchedule.warmup(5, 0.1))
    >>> [schedule.schedule(epoch) for epoch in range(3, 7)]  # labels only for 5 epochs
    [1.0, 1.0, 0.1, 0.1]
    """

    def __init__(self, schedule: Callable[[int], float]) -> None:
        super().__init__()
        if not callable(schedule):
            raise TypeError(f"schedule must map an epoch to alpha, got {schedule!r}.")
        self.schedule = schedule

    @staticmethod
    def warmup(epochs: int, alpha: float) -> Callable[[int], float]:
        """Labels first, then mostly KD: alpha 1 for `epochs` epochs, then `alpha`."""
        epochs = check_count("warmup epochs", epochs, minimum=0)
        _check_alpha(alpha)
        return lambda epoch: 1.0 if epoch < epochs else float(alpha)

    @staticmethod
    def parse(text: str) -> Callable[[int], float]:
        """The schedule of a flag "warmup:K:ALPHA" (see `warmup`).

        Example:

        >>> [KDWeightSchedule.parse("warmup:2:0.1")(epoch) for epoch in range(4)]
        [1.0, 1.0, 0.1, 0.1]
        """
        parts = str(text).split(":")
        try:
            if parts[0] != "warmup" or len(parts) != 3:
                raise ValueError
            return KDWeightSchedule.warmup(int(parts[1]), float(parts[2]))
        except ValueError:
            raise ValueError(f"A KD schedule reads 'warmup:K:ALPHA' (alpha 1 for K epochs, "
                             f"then ALPHA), e.g. 'warmup:5:0.1'; got {text!r}.") from None

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if not isinstance(self.model, Distiller):
            raise TypeError(f"KDWeightSchedule sets a Distiller's alpha, but the model "
                            f"trained is a {type(self.model).__name__}.")
        self.model.alpha = self.schedule(epoch)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None:
            logs["alpha"] = self.model.alpha


def _check_teacher_and_student(teacher, student):
    for role, model in (("teacher", teacher), ("student", student)):
        if not isinstance(model, keras.Model):
            raise TypeError(f"{role} must be a keras.Model, got {type(model)}.")
    t_shape, s_shape = tuple(teacher.output.shape), tuple(student.output.shape)
    if t_shape[-1] != s_shape[-1]:
        raise ValueError(
            f"Teacher predicts {t_shape[-1]} classes but student predicts "
            f"{s_shape[-1]}: build both with the same n_classes."
        )
    if len(t_shape) != len(s_shape) or any(
        a is not None and b is not None and a != b for a, b in zip(t_shape, s_shape)
    ):
        raise ValueError(
            f"Teacher output shape {t_shape} differs from student output "
            f"shape {s_shape}: both must map the same image to logits of the "
            f"same shape."
        )
    # Structural check, then a numeric one for softmax hidden in a custom layer.
    last = teacher.layers[-1]
    activation = getattr(getattr(last, "activation", None), "__name__", "")
    side = [d if d is not None else 32 for d in teacher.input.shape[1:3]]
    probe = np.random.default_rng(0).uniform(0, 255, (1, *side, 3)).astype("float32")
    outputs = ops.convert_to_numpy(teacher(probe, training=False))
    sums_to_one = outputs.min() >= 0 and np.allclose(outputs.sum(-1), 1.0, atol=1e-3)
    if isinstance(last, layers.Softmax) or activation == "softmax" or sums_to_one:
        raise ValueError(
            f"The teacher's outputs are probabilities (its last layer "
            f"'{last.name}' applies softmax), but distillation needs logits. "
            f"Rebuild it without the softmax (build_unet returns logits), or "
            f"pass `keras.Model(teacher.input, teacher.layers[-1].input)` if "
            f"the softmax is a separate last layer."
        )
