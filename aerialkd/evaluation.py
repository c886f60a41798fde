"""Evaluating models on patches, and comparing their size, speed and scores."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .models import model_summary
from .metrics import segmentation_metrics
from .prediction import measure_latency, predict_logits

if TYPE_CHECKING:
    import keras
    import numpy as np


def evaluate_segmentation(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int = 16,
    max_pr_pixels: int = 2_000_000,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    labelled_classes: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Evaluates a segmentation model on patches.

    Predicts the logits of `x` and scores them with `segmentation_metrics`:
    IoU per class and their means, pixel accuracy, precision, recall, F1 and
    precision-recall curves. Unannotated pixels (`IGNORE_INDEX`) are left
    out. The number of classes is the model's; name them and choose the
    classes of the headline mean IoU with a dataset's `classes` and
    `labelled_classes` (on the Dubai data, `miou5` leaves Unlabeled out).

    Args:
        model: Keras model returning logits.
        x: uint8 images `(N, H, W, 3)`.
        y: labels `(N, H, W)`.
        batch_size: prediction batch size.
        max_pr_pixels: pixel sample size for PR curves and AP.
        seed: seed of the pixel sample.
        class_names: names of the model's classes, in label order;
            "class 0", ... if `None`.
        labelled_classes: classes of the headline mean IoU; every class if
            `None`.

    Returns:
        The dict of `segmentation_metrics`.

    Example:

    >>> results = evaluate_segmentation(student, data.x_test, data.y_test,
    ...                                 class_names=data.classes,
    ...                                 labelled_classes=data.labelled_classes)
    >>> sorted(k for k in results if k.startswith("miou"))
    ['miou5', 'miou6']
    """
    logits = predict_logits(model, x, batch_size)
    return segmentation_metrics(y, logits, max_pr_pixels=max_pr_pixels, seed=seed,
                                class_names=class_names,
                                labelled_classes=labelled_classes)


def compare_models(
    models: Mapping[str, keras.Model],
    results: Mapping[str, Mapping[str, Any]] | None = None,
    paths: Mapping[str, os.PathLike | str] | None = None,
) -> list[dict[str, Any]]:
    """Rows of a comparison table: size, FLOPs, accuracy and latency.

    Latency is the median of batch-1 forward passes at 256x256 on this
    machine's default device, models interleaved (`measure_latency`).

    Args:
        models: dict name -> model.
        results: optional dict name -> `evaluate_segmentation` output, to
            add its mean IoUs and pixel accuracy.
        paths: optional dict name -> the model's `.keras` file, to add its
            size.

    Returns:
        List of dicts, one per model, for `markdown_table`.

    Example:

    >>> rows = compare_models({"teacher": teacher, "student": student})
    >>> print(markdown_table(rows))  # doctest: +ELLIPSIS
    | model | parameters | GFLOPs (256x256) | latency (ms, batch 1) |
    |---|---|---|---|
    | teacher | 1,941,190 | 6.075 | ... |
    | student | 485,862 | 1.536 | ... |
    """
    latency = measure_latency(models, input_size=256)
    rows = []
    for name, model in models.items():
        scores = {k: v for k, v in (results or {}).get(name, {}).items()
                  if k.startswith("miou") or k == "pixel_acc"}
        rows.append({"model": name, **model_summary(model, (paths or {}).get(name)),
                     **scores, "latency_ms": 1000 * latency[name]})
    return rows
