"""Scores of predicted labels and logits: IoU, precision and recall, calibration."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops
from numpy.typing import ArrayLike

from .checks import check_count
from .classes import IGNORE_INDEX, class_names_for


@keras.saving.register_keras_serializable(package="utils")
class AnnotatedPixelAccuracy(keras.metrics.SparseCategoricalAccuracy):
    """Pixel accuracy over annotated pixels only (labels != `IGNORE_INDEX`).

    `keras.metrics.SparseCategoricalAccuracy` with the pixels labelled
    `IGNORE_INDEX` weighted 0, so they count neither as right nor as wrong;
    the "pixel_acc" of `compile_segmentation`'s metrics.

    Args:
        name: the metric's name in the history and the logs.
        **kwargs: `dtype` as for `keras.metrics.SparseCategoricalAccuracy`.

    Example:

    >>> metric = AnnotatedPixelAccuracy()
    >>> labels = np.array([[0, 1, IGNORE_INDEX]])
    >>> logits = np.array([[[2.0, 0.0], [2.0, 0.0], [0.0, 2.0]]])  # predict 0, 0, 1
    >>> metric.update_state(labels, logits)
    >>> float(metric.result())  # right on 1 of the 2 annotated pixels
    0.5
    """

    def __init__(self, name: str = "pixel_acc", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true: ArrayLike, y_pred: ArrayLike,
                     sample_weight: ArrayLike | None = None) -> None:
        valid = ops.cast(ops.not_equal(ops.cast(y_true, "int32"), IGNORE_INDEX), "float32")
        if sample_weight is not None:  # per image (N,) or per pixel: on the leading axes
            weight = ops.cast(sample_weight, "float32")
            for _ in range(len(valid.shape) - len(weight.shape)):
                weight = ops.expand_dims(weight, -1)
            valid = valid * weight
        return super().update_state(y_true, y_pred, sample_weight=valid)


def miou_name(labelled_classes: Sequence[int]) -> str:
    """Name of the mean IoU over `labelled_classes`: "miou5" for five classes.

    Example:

    >>> miou_name(data.labelled_classes)  # all but Unlabeled
    'miou5'
    """
    return f"miou{len(labelled_classes)}"


def check_labelled_classes(labelled_classes, n_classes):
    """`labelled_classes` as a tuple of ints, checked; every class if `None`."""
    if labelled_classes is None:
        return tuple(range(n_classes))
    labelled = tuple(int(c) for c in labelled_classes)
    if not labelled or len(set(labelled)) != len(labelled) or any(
            not 0 <= c < n_classes for c in labelled):
        raise ValueError(
            f"labelled_classes must be distinct class indices in [0, {n_classes}) "
            f"(the model predicts {n_classes} classes), got {labelled_classes!r}: "
            f"pass your dataset's `labelled_classes`."
        )
    return labelled


def iou_scores(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    *,
    n_classes: int,
    labelled_classes: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Confusion matrix, IoUs and pixel accuracy of predicted labels.

    Pixels labelled `IGNORE_INDEX` are left out. The confusion matrix is
    scikit-learn's; IoU of a class is TP / (TP + FP + FN) from it; a class
    absent from both truth and prediction has IoU NaN and is left out of the
    means (a mean is NaN when none of its classes is present). The cheap part of `segmentation_metrics`, for when only these
    scores are needed.

    Args:
        y_true: labels, any shape (`(N, H, W)` or `(N, H, W, 1)`), with at
            least one annotated pixel.
        y_pred: predicted labels, the same shape.
        n_classes: number of classes (a model's outputs, or a dataset's
            `n_classes`).
        labelled_classes: classes of the headline mean IoU (a dataset's
            `labelled_classes`); every class if `None`.

    Returns:
        A dict with `confusion_matrix` (rows: truth, columns: prediction),
        `per_class_iou`, `miou<n_classes>` (every class, `miou6` on Dubai),
        `miou<K>` (the K labelled classes, `miou5` on Dubai) and `pixel_acc`.

    Example:

    >>> iou_scores(np.array([0, 1, 1]), np.array([0, 1, 0]), n_classes=2)["per_class_iou"]
    [0.5, 0.5]
    """
    from sklearn import metrics

    labelled = check_labelled_classes(labelled_classes, n_classes)
    y_true, y_pred = _label_array(y_true), _label_array(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred must have the same shape, got {y_true.shape} "
                         f"and {y_pred.shape}.")
    valid = y_true != IGNORE_INDEX
    if not valid.any():
        raise ValueError(f"y_true has no annotated pixel (every label is {IGNORE_INDEX}): "
                         f"there is nothing to score; leave such images out.")
    y_true, y_pred = y_true[valid].astype(np.int64), y_pred[valid].astype(np.int64)
    for name, labels in (("y_true", y_true), ("y_pred", y_pred)):
        if labels.min() < 0 or labels.max() >= n_classes:
            outside = [int(v) for v in np.unique(labels[(labels < 0) | (labels >= n_classes)])]
            raise ValueError(f"{name} holds labels outside [0, {n_classes}) on annotated "
                             f"pixels: {outside[:5]} ({IGNORE_INDEX} is allowed in y_true "
                             f"alone, for unannotated pixels).")
    cm = metrics.confusion_matrix(y_true, y_pred, labels=np.arange(n_classes))
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    return {
        "confusion_matrix": cm,
        "per_class_iou": iou.tolist(),
        f"miou{n_classes}": _mean_of_present(iou),
        miou_name(labelled): _mean_of_present(iou[list(labelled)]),
        "pixel_acc": float(tp.sum() / cm.sum()),
    }


def _label_array(labels):
    """`labels` as an array, a trailing axis of one label dropped (`(N, H, W, 1)`)."""
    labels = np.asarray(labels)
    return labels[..., 0] if labels.ndim > 1 and labels.shape[-1] == 1 else labels


def _mean_of_present(iou):
    """The mean IoU of the classes present; NaN, without a warning, when none is."""
    present = iou[~np.isnan(iou)]
    return float(present.mean()) if present.size else float("nan")


def _pixel_sample(n, max_pixels, seed, label="max_pixels"):
    """Indices of a uniform sample of at most `max_pixels` of `n` pixels."""
    check_count(label, max_pixels)
    if n <= max_pixels:
        return np.arange(n)
    return np.random.default_rng(seed).choice(n, max_pixels, replace=False)


def segmentation_metrics(
    y_true: np.ndarray,
    logits: np.ndarray,
    *,
    max_pr_pixels: int = 2_000_000,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    labelled_classes: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Scores logits against labels: IoU, precision, recall, PR curves.

    Unannotated pixels (`IGNORE_INDEX`) are left out. IoUs come from
    `iou_scores`; precision, recall and F1 from scikit-learn
    (`zero_division=0`). Precision-recall curves and average precision are
    one-vs-rest, from the softmax **probabilities** (not hard labels),
    computed in float64: in float32 a top probability rounds to 1.0 once its
    logit leads by about 17, and distinct scores would merge. They use a
    uniform random sample of at most `max_pr_pixels` annotated pixels (drawn
    with `seed`) to keep scikit-learn's sort affordable.

    Args:
        y_true: labels `(...)`.
        logits: logits `(..., C)`: C classes.
        max_pr_pixels: pixel sample size for PR curves and AP.
        seed: seed of the pixel sample.
        class_names: names of the C classes, in label order (a dataset's
            `classes`); "class 0", ... if `None`.
        labelled_classes: classes of the headline mean IoU (a dataset's
            `labelled_classes`); every class if `None`.

    Returns:
        The dict of `iou_scores` plus `class_names`, `precision`, `recall`,
        `f1`, `support`,
        `average_precision` (lists in class order), `pr_curves` ({class:
        (precision, recall)}) and `report` (scikit-learn's classification
        report as text).

    Example:

    >>> results = segmentation_metrics(data.y_test, predict_logits(student, data.x_test),
    ...                                class_names=data.classes,
    ...                                labelled_classes=data.labelled_classes)
    >>> results["class_names"][:2], len(results["average_precision"]), "miou5" in results
    (['Building', 'Land'], 6, True)
    """
    from scipy.special import softmax
    from sklearn import metrics

    y_true = np.asarray(y_true).reshape(-1)
    logits = np.asarray(logits)
    n_classes = logits.shape[-1] if logits.ndim else 0
    class_names = class_names_for(n_classes, class_names)
    if logits.size // max(n_classes, 1) != y_true.size:
        raise ValueError(
            f"logits of shape {logits.shape} don't match {y_true.size} labels "
            f"and {n_classes} classes."
        )
    logits = logits.reshape(-1, n_classes)
    valid = y_true != IGNORE_INDEX
    y_true, logits = y_true[valid], logits[valid]
    if not np.isfinite(logits).all():  # scikit-learn's "Input contains NaN" names nothing
        raise ValueError(f"logits hold {np.count_nonzero(~np.isfinite(logits))} values that "
                         f"are NaN or infinite: the model diverged, or was fed bad images.")
    y_pred = logits.argmax(-1)
    labels = list(range(n_classes))
    scores = iou_scores(y_true, y_pred, n_classes=n_classes,
                        labelled_classes=labelled_classes)
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    sample = _pixel_sample(len(y_true), max_pr_pixels, seed, label="max_pr_pixels")
    probs = softmax(logits[sample].astype(np.float64), axis=-1)
    curves, ap = {}, []
    for c, name in enumerate(class_names):
        positive = y_true[sample] == c
        if positive.any():
            p, r, _ = metrics.precision_recall_curve(positive, probs[:, c])
            curves[name] = (p, r)
            ap.append(float(metrics.average_precision_score(positive, probs[:, c])))
        else:
            ap.append(float("nan"))
    return {
        **scores,
        "class_names": list(class_names),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": support.tolist(),
        "average_precision": ap,
        "pr_curves": curves,
        "report": metrics.classification_report(
            y_true, y_pred, labels=labels, target_names=list(class_names),
            zero_division=0, digits=3),
    }


def calibration(
    logits: np.ndarray,
    y_true: np.ndarray,
    temperatures: Sequence[float] = (1.0,),
    *,
    n_bins: int = 15,
    max_pixels: int = 2_000_000,
    seed: int = 0,
) -> list[dict[str, float]]:
    """How honestly `softmax(logits / T)` states its own accuracy, per T.

    Temperature scaling (Guo et al., ICML 2017) divides the logits by T
    before the softmax; the T with the lowest negative log-likelihood on
    held-out pixels makes the probabilities calibrated. Pixel-wise KD
    trains the student on the teacher's `softmax(logits / T)`, so this
    shows how much a KD temperature flattens the teacher's knowledge
    beyond what its accuracy supports. The expected calibration error
    (ECE) bins pixels by confidence (their top probability) into `n_bins`
    equal-width bins and averages |accuracy - confidence| over the bins,
    weighted by their pixels. The negative log-likelihood is scikit-learn's
    `log_loss`. Unannotated pixels are left out; at most `max_pixels`
    annotated pixels are used, drawn uniformly with `seed`.

    Args:
        logits: `(..., C)` logits, e.g. `predict_logits(model, x_val)`.
        y_true: labels of the same leading shape.
        temperatures: temperatures to score, each > 0.
        n_bins: confidence bins of the ECE.
        max_pixels: pixel sample size.
        seed: seed of the pixel sample.

    Returns:
        A list with one dict per temperature: `temperature`, `nll`, `ece`,
        `confidence` (mean top probability), `accuracy` (of the argmax,
        the same at every T) and `entropy` (mean, in nats).

    Example:

    >>> rows = calibration(predict_logits(teacher, data.x_val), data.y_val,
    ...                    temperatures=(1, 2, 4))
    >>> [row["temperature"] for row in rows], sorted(rows[0])
    ([1.0, 2.0, 4.0], ['accuracy', 'confidence', 'ece', 'entropy', 'nll', 'temperature'])

    The best temperature is `min(rows, key=lambda row: row["nll"])["temperature"]`.
    """
    from scipy.special import softmax
    from sklearn import metrics

    y_true = np.asarray(y_true).reshape(-1)
    logits = np.asarray(logits)
    n_classes = logits.shape[-1]
    if logits.size // max(n_classes, 1) != y_true.size:
        raise ValueError(
            f"logits of shape {logits.shape} don't match {y_true.size} labels."
        )
    if len(temperatures) == 0 or any(not t > 0 for t in temperatures):
        raise ValueError(f"temperatures must all be > 0, got {tuple(temperatures)}.")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}.")
    logits = logits.reshape(-1, n_classes)
    valid = np.flatnonzero(y_true != IGNORE_INDEX)
    valid = valid[_pixel_sample(len(valid), max_pixels, seed)]
    if len(valid) == 0:
        raise ValueError("y_true has no annotated pixels (all are IGNORE_INDEX).")
    y_true, logits = y_true[valid].astype(np.int64), logits[valid].astype(np.float64)
    rows = []
    for t in temperatures:
        probs = softmax(logits / t, axis=-1)
        confidence = probs.max(-1)
        correct = probs.argmax(-1) == y_true
        bins = np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)
        gap = np.abs(np.bincount(bins, correct, n_bins) - np.bincount(bins, confidence, n_bins))
        with np.errstate(divide="ignore", invalid="ignore"):
            entropy = -np.sum(probs * np.log(probs), axis=-1, where=probs > 0)
        rows.append({
            "temperature": float(t),
            "nll": float(metrics.log_loss(y_true, probs, labels=range(n_classes))),
            "ece": float(gap.sum() / len(y_true)),
            "confidence": float(confidence.mean()),
            "accuracy": float(correct.mean()),
            "entropy": float(entropy.mean()),
        })
    return rows


def error_overlap(
    y_true: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    by_class: bool = False,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Where two models are right and wrong, as shares of annotated pixels.

    What a teacher can teach a student shows here: `only_a_right` (a = the
    teacher) is the most a student b could gain by imitating it, pixel for
    pixel; `both_wrong` no imitation fixes. Shares of all pixels favour the
    large classes; `by_class=True` gives them within each true class, as
    the mean IoU weighs classes alike.

    Args:
        y_true: labels, any shape.
        pred_a: predicted labels of model a, the same shape.
        pred_b: predicted labels of model b, the same shape.
        by_class: also give the shares among the pixels of each class.
        class_names: names of the classes, in label order, for `by_class`
            (a dataset's `classes`); "class 0", ... if `None`.

    Returns:
        A dict with the shares `both_right`, `only_a_right`,
        `only_b_right` and `both_wrong` (they sum to 1); with
        `by_class=True` also `by_class`, a dict mapping each class of
        `class_names` present in `y_true` to such a dict.

    Example:

    >>> error_overlap(np.array([0, 1, 2, 3]), np.array([0, 1, 0, 0]),
    ...               np.array([0, 0, 2, 0]))["only_a_right"]
    0.25
    """
    y_true, pred_a, pred_b = (np.asarray(a) for a in (y_true, pred_a, pred_b))
    if not y_true.shape == pred_a.shape == pred_b.shape:
        raise ValueError(
            f"y_true, pred_a and pred_b must have the same shape; got "
            f"{y_true.shape}, {pred_a.shape} and {pred_b.shape}."
        )
    valid = y_true != IGNORE_INDEX
    if not valid.any():
        raise ValueError("y_true has no annotated pixels (all are IGNORE_INDEX).")
    truth = y_true[valid]
    a, b = pred_a[valid] == truth, pred_b[valid] == truth

    def shares(pixels):
        n = int(pixels.sum())
        return {"both_right": float(np.sum(a & b & pixels) / n),
                "only_a_right": float(np.sum(a & ~b & pixels) / n),
                "only_b_right": float(np.sum(~a & b & pixels) / n),
                "both_wrong": float(np.sum(~a & ~b & pixels) / n)}

    result = shares(np.ones_like(a))
    if by_class:
        present = np.unique(truth)
        n_classes = int(present.max()) + 1 if class_names is None else len(class_names)
        if present.max() >= n_classes:  # its pixels were left out of by_class
            raise ValueError(f"y_true holds class {int(present.max())}, and class_names "
                             f"names {n_classes} classes: name every class.")
        names = class_names_for(n_classes, class_names)
        result["by_class"] = {names[c]: shares(truth == c) for c in present
                              if c < n_classes}
    return result
