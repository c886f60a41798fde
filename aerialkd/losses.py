"""The segmentation loss and the knowledge-distillation losses, from logits."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops
from numpy.typing import ArrayLike

from .checks import check_count
from .classes import IGNORE_INDEX
from .devices import sum_over_replicas


@keras.saving.register_keras_serializable(package="utils")
class SegmentationLoss(keras.losses.Loss):
    """Dice plus (focal) cross-entropy on logits, ignoring unannotated pixels.

    The sum of a cross-entropy term, computed with Keras'
    `categorical_crossentropy` from logits, or a focal one (Lin et al., 2017:
    `-(1 - p)^gamma log p` of the true class, from the log-softmax, so a
    confidently wrong pixel keeps its gradient, which Keras'
    `categorical_focal_crossentropy` clips away), and a soft multi-class
    Dice term, computed as Keras' `dice` per class over the whole batch and
    averaged over classes. Pixels labelled `IGNORE_INDEX` count in neither;
    a batch with none annotated has loss 0. Labels may carry a trailing
    axis of 1, as Keras' sparse losses allow.

    Args:
        kind: "cross_entropy" or "focal".
        dice_weight: weight of the Dice term (0 disables it).
        class_weights: optional sequence of one weight per class, applied to
            the cross-entropy per pixel and to the Dice average per class.
        gamma: focusing parameter of the focal loss.
        n_classes: number of classes; `None` takes it from the logits' last
            axis.

    Example:

    >>> loss = SegmentationLoss()
    >>> round(float(loss(np.zeros((1, 4, 4)), np.zeros((1, 4, 4, 3)))), 4)  # ln 3 + 5/6
    1.9319
    """

    def __init__(
        self,
        kind: str = "cross_entropy",
        dice_weight: float = 1.0,
        class_weights: Sequence[float] | None = None,
        gamma: float = 2.0,
        n_classes: int | None = None,
        name: str = "segmentation_loss",
        **kwargs: Any,
    ) -> None:
        reduction = kwargs.get("reduction", "sum_over_batch_size")
        if reduction not in ("sum_over_batch_size", "mean", "mean_with_sample_weight"):
            raise ValueError(
                f"SegmentationLoss is one number for the whole batch (ratios of sums over "
                f"its pixels), so its reduction must average: 'sum_over_batch_size' (the "
                f"default) or 'mean'; got reduction={reduction!r}, which would multiply it "
                f"by the batch size or repeat it as per-sample values.")
        super().__init__(name=name, **kwargs)
        if kind not in ("cross_entropy", "focal"):
            raise ValueError(
                f"kind must be 'cross_entropy' or 'focal', got {kind!r}."
            )
        n_classes = None if n_classes is None else check_count("n_classes", n_classes)
        if class_weights is not None and n_classes is not None \
                and len(class_weights) != n_classes:
            raise ValueError(
                f"class_weights needs {n_classes} weights, one per class; "
                f"got {len(class_weights)}."
            )
        if isinstance(dice_weight, bool) or not isinstance(dice_weight, numbers.Real) \
                or not 0 <= dice_weight < math.inf:
            raise ValueError(f"dice_weight must be a number >= 0 (0 turns the Dice term "
                             f"off), got {dice_weight!r}.")
        if class_weights is not None:
            weights = np.asarray(class_weights, dtype=float)
            if weights.ndim != 1 or not np.isfinite(weights).all() or (weights < 0).any() \
                    or not weights.sum() > 0:
                raise ValueError(f"class_weights must be one finite weight >= 0 per class, "
                                 f"not all 0; got {list(class_weights)}.")
        self.kind = kind
        self.dice_weight = float(dice_weight)
        self.class_weights = (None if class_weights is None
                              else [float(w) for w in class_weights])
        if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or gamma < 0:
            raise ValueError(f"gamma must be a number >= 0, got {gamma!r}.")
        self.gamma = float(gamma)
        self.n_classes = n_classes

    def call(self, y_true: ArrayLike, y_pred: ArrayLike) -> ArrayLike:
        logits = ops.cast(y_pred, "float32")
        labels = ops.cast(y_true, "int32")
        if len(labels.shape) == len(logits.shape) and labels.shape[-1] == 1:
            labels = ops.squeeze(labels, axis=-1)  # (N, H, W, 1), as Keras' sparse losses take
        n_classes = self.n_classes or logits.shape[-1]
        if logits.shape[-1] is not None and logits.shape[-1] != n_classes:
            raise ValueError(f"SegmentationLoss(n_classes={n_classes}) got logits of "
                             f"{logits.shape[-1]} classes; pass n_classes=None to take "
                             f"the number from the logits.")
        if self.class_weights is not None and len(self.class_weights) != n_classes:
            raise ValueError(f"class_weights needs {n_classes} weights, one per class; "
                             f"got {len(self.class_weights)}.")
        valid = ops.cast(ops.not_equal(labels, IGNORE_INDEX), "float32")
        onehot = ops.one_hot(ops.where(labels == IGNORE_INDEX, 0, labels),
                             n_classes) * valid[..., None]
        weights = (ops.ones((n_classes,)) if self.class_weights is None
                   else ops.convert_to_tensor(self.class_weights, "float32"))
        if self.kind == "focal":
            log_p = ops.log_softmax(logits, axis=-1)
            # 1 - p floored: at a saturated pixel it is 0, where x ** gamma has an
            # infinite slope for gamma < 1 (0 * inf would make the batch's gradient NaN)
            focus = ops.maximum(1.0 - ops.exp(log_p), 1e-12) ** self.gamma
            ce = -ops.sum(onehot * focus * log_p, axis=-1)
        else:
            ce = keras.losses.categorical_crossentropy(
                onehot, logits, from_logits=True)
        pixel_weight = ops.sum(onehot * weights, axis=-1)
        # Every term is a ratio of sums over the whole batch. Under
        # `data_parallel` on TensorFlow each replica holds a share of the batch:
        # summing the sums over the replicas, in one all-reduce (the replicas
        # must run their collectives in the same order), makes every replica's
        # loss the whole batch's. On JAX the step sees the whole batch.
        sums = [ops.sum(ce * pixel_weight)[None], ops.sum(valid)[None]]
        if self.dice_weight:
            # Keras' `dice(axis=0)` over the pixels, from summed parts
            probs = ops.softmax(logits, axis=-1) * valid[..., None]
            pixel_axes = tuple(range(len(probs.shape) - 1))
            sums += [ops.sum(onehot * probs, axis=pixel_axes),
                     ops.sum(onehot, axis=pixel_axes) + ops.sum(probs, axis=pixel_axes)]
        sums = sum_over_replicas(ops.concatenate(sums))
        loss = sums[0] / ops.maximum(sums[1], 1.0)
        if self.dice_weight:
            intersection = sums[2 : 2 + n_classes]
            total = sums[2 + n_classes :]
            per_class = 1.0 - 2.0 * intersection / (total + keras.backend.epsilon())
            # (a batch with no annotated pixel would count 1 for each class)
            annotated = ops.cast(sums[1] > 0, "float32")
            loss += (self.dice_weight * annotated * ops.sum(per_class * weights)
                     / ops.sum(weights))
        # Keras reduces per-sample losses; a batch-wide scalar is broadcast.
        return ops.ones_like(logits[:, 0, 0, 0]) * loss

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "kind": self.kind,
                "dice_weight": self.dice_weight,
                "class_weights": self.class_weights, "gamma": self.gamma,
                "n_classes": self.n_classes}


KD_KINDS = ("pixel", "channel", "dist")
"""The kinds of `distillation_loss`."""


_EPSILON = 1e-7


def distillation_loss(
    teacher_logits: ArrayLike,
    student_logits: ArrayLike,
    temperature: float = 4.0,
    kind: str = "pixel",
    standardize: bool = False,
) -> ArrayLike:
    """Knowledge-distillation loss for dense prediction, from logits.

    - `kind="pixel"` (Hinton et al., 2015, at every pixel): softmax of
      `logits / T` over the **class axis (last)**, KL(teacher || student)
      per pixel, averaged over pixels, times T^2.
    - `kind="channel"` (Shu et al., ICCV 2021, channel-wise distillation):
      for each class channel, softmax of `logits / T` over the **spatial
      positions**, KL(teacher || student) per channel summed over
      positions, averaged over channels and images, times T^2.
    - `kind="dist"` (Huang et al., NeurIPS 2022, DIST, for segmentation):
      every pixel (annotated or not) is a sample with probabilities
      `p = softmax(logits / T)` over the classes. The inter-class term is
      1 - Pearson correlation of teacher and student `p` over the classes
      of a pixel, averaged over pixels; the intra-class term is 1 - Pearson
      correlation over all `N * H * W` pixels of a class, averaged over
      classes (under `data_parallel` on TensorFlow, over each device's share
      of the batch, so the term differs a little from one device's). The loss is `T^2 * (inter + intra)` (DIST's beta and gamma
      fixed at 1). It asks the student to match the teacher's *relations*,
      not its exact probabilities: it is 0 for a student whose
      probabilities are a positive affine map of the teacher's.

    The T^2 factor keeps the gradients' scale independent of T. All take
    logits: applying them to probabilities (as the notebooks this series started from did) gives a
    near-zero loss that teaches nothing.

    With `standardize=True` (Sun et al., CVPR 2024, "Logit Standardization
    in Knowledge Distillation"), each pixel's logit vector `z` of either
    model is first replaced by `(z - mean(z)) / sqrt(var(z) + 1e-7)` over
    the classes (population variance), then divided by T as usual: the student
    matches the teacher's ranking and relative gaps, not the logits'
    offset or scale, which a smaller network cannot always reach.

    Args:
        teacher_logits: `(N, H, W, C)` teacher logits.
        student_logits: `(N, H, W, C)` student logits.
        temperature: softening temperature T > 0.
        kind: "pixel", "channel" or "dist".
        standardize: standardize each pixel's logits over the classes first.

    Returns:
        Scalar loss.

    Example:

    >>> t = np.random.default_rng(0).normal(size=(2, 8, 8, 6))
    >>> float(distillation_loss(t, t))  # identical logits
    0.0
    >>> abs(float(distillation_loss(t, 2 * t + 1, standardize=True))) < 1e-6
    True
    """
    check_kd_arguments(temperature, kind)
    if not isinstance(standardize, bool):
        raise ValueError(f"standardize must be True or False, got {standardize!r}.")
    t = ops.cast(teacher_logits, "float32")
    s = ops.cast(student_logits, "float32")
    if len(t.shape) != 4 or tuple(t.shape) != tuple(s.shape):
        raise ValueError(
            f"teacher and student logits must have the same (N, H, W, C) "
            f"shape, got {tuple(t.shape)} and {tuple(s.shape)}."
        )
    if standardize:
        t, s = _standardize(t), _standardize(s)
    t, s = t / temperature, s / temperature
    if kind == "dist":
        p_t = ops.reshape(ops.softmax(t, axis=-1), (-1, t.shape[-1]))
        p_s = ops.reshape(ops.softmax(s, axis=-1), (-1, s.shape[-1]))
        inter = 1.0 - ops.mean(_pearson(p_t, p_s, axis=1))
        intra = 1.0 - ops.mean(_pearson(p_t, p_s, axis=0))
        return (inter + intra) * temperature**2
    axis = (1, 2) if kind == "channel" else -1  # positions, or classes
    log_p_t = t - ops.logsumexp(t, axis=axis, keepdims=True)
    log_p_s = s - ops.logsumexp(s, axis=axis, keepdims=True)
    kl = ops.sum(ops.exp(log_p_t) * (log_p_t - log_p_s), axis=axis)
    return ops.mean(kl) * temperature**2


def _standardize(logits):
    mean = ops.mean(logits, axis=-1, keepdims=True)
    # sqrt(var + eps), not std + eps: the gradient stays finite where all logits are equal
    return (logits - mean) / ops.sqrt(ops.var(logits, axis=-1, keepdims=True) + _EPSILON)


def _pearson(a, b, axis):
    a = a - ops.mean(a, axis=axis, keepdims=True)
    b = b - ops.mean(b, axis=axis, keepdims=True)
    norms = ops.sqrt(ops.sum(a * a, axis=axis) * ops.sum(b * b, axis=axis) + 1e-20)
    return ops.sum(a * b, axis=axis) / norms


# Keras' own distillation API (Keras >= 3.12). Without it the package still imports,
# and only SegmentationKD, which serves that API, says what to install.
_KERAS_DISTILLATION_LOSS = getattr(getattr(keras, "distillation", None), "DistillationLoss",
                                   object)


@keras.saving.register_keras_serializable(package="utils")
class SegmentationKD(_KERAS_DISTILLATION_LOSS):
    """`keras.distillation` loss wrapping `distillation_loss`.

    For users of Keras' own `keras.distillation.Distiller`; this package's
    `Distiller` uses `distillation_loss` directly. Keras' own
    `LogitsDistillation` is unfit here: with its default
    `loss="kl_divergence"` it applies neither the softmax nor T^2.

    Args:
        temperature: softening temperature.
        kind: "pixel", "channel" or "dist".
        standardize: standardize each pixel's logits first (Sun et al.).

    Example:

    >>> kd = keras.distillation.Distiller(teacher=teacher, student=student,
    ...                                   distillation_losses=SegmentationKD(2.0))
    >>> kd.compile(optimizer="adam", loss=SegmentationLoss())
    """

    def __init__(self, temperature: float = 4.0, kind: str = "pixel",
                 standardize: bool = False) -> None:
        if _KERAS_DISTILLATION_LOSS is object:
            raise ImportError(f"SegmentationKD serves keras.distillation, which Keras "
                              f"{keras.__version__} lacks: pip install 'keras>=3.12'.")
        check_kd_arguments(temperature, kind)
        self.temperature = float(temperature)
        self.kind = kind
        self.standardize = bool(standardize)
        self.teacher_layer_name = self.student_layer_name = None

    def compute_loss(self, teacher_outputs: ArrayLike, student_outputs: ArrayLike,
                     **kwargs: Any) -> ArrayLike:
        return distillation_loss(teacher_outputs, student_outputs,
                                 self.temperature, self.kind, self.standardize)

    def validate_outputs(self, teacher_outputs: ArrayLike, student_outputs: ArrayLike) -> None:
        pass  # `distillation_loss` checks the shapes

    def get_config(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "kind": self.kind,
                "standardize": self.standardize}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SegmentationKD:
        return cls(**config)


def check_kd_arguments(temperature: float, kind: str) -> None:
    """Raises a `ValueError` unless `temperature` is a number > 0 and `kind` one of `KD_KINDS`."""
    if isinstance(temperature, (bool, np.bool_)) \
            or not isinstance(temperature, numbers.Real) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}.")
    if kind not in KD_KINDS:
        raise ValueError(f"kind must be one of {KD_KINDS}, got {kind!r}.")
