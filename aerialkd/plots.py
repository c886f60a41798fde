"""Figures of images and classes: segmentations, precision-recall curves, confusion, class shares.

The figures of training runs and their comparison are in `run_plots`.
"""

from __future__ import annotations

import functools
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .classes import (IGNORE_INDEX, check_palette, class_names_for, generic_classes,
                      labels_to_rgb)
from .datasets import class_shares

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .datasets import SegmentationDataset


def save_figure(fig: Figure, path: os.PathLike | str | None) -> Figure:
    """Saves `fig` to `path` (creating folders) at 120 dpi; returns `fig`.

    Args:
        fig: a matplotlib `Figure`.
        path: the file, its format from its suffix; `None` saves nothing.

    Returns:
        `fig`.

    Example:

    >>> import matplotlib.pyplot as plt, os
    >>> fig = save_figure(plt.figure(), "figures/blank.png")
    >>> os.listdir("figures")
    ['blank.png']
    """
    if path is not None:
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def closes_figures_on_error(function):
    """Makes a plotting function close the figures it opened when it raises.

    A half-drawn figure left open would show under the traceback in a
    notebook, and stay in memory.
    """
    @functools.wraps(function)
    def plot(*args, **kwargs):
        import matplotlib.pyplot as plt

        before = set(plt.get_fignums())
        try:
            return function(*args, **kwargs)
        except BaseException:
            for number in set(plt.get_fignums()) - before:
                plt.close(number)
            raise

    return plot


def _legend_handles(class_names, palette):
    from matplotlib.patches import Patch

    return [Patch(color=np.asarray(palette)[i] / 255, label=name)
            for i, name in enumerate(class_names)]


def _names_and_palette(label_maps, class_names, palette):
    """Class names and colours: those given, else generic ones for the labels' classes."""
    if class_names is None and palette is None:
        found = [int(np.max(np.where(m == IGNORE_INDEX, 0, m))) for m in label_maps]
        n_classes = max(found, default=0) + 1
    else:
        n_classes = len(class_names if class_names is not None else palette)
    names, colours = generic_classes(n_classes)
    palette = colours if palette is None else check_palette(palette, n_classes)
    return class_names_for(n_classes, class_names), palette


@closes_figures_on_error
def plot_segmentations(
    images: np.ndarray,
    truths: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    path: os.PathLike | str | None = None,
    *,
    class_names: Sequence[str] | None = None,
    palette: np.ndarray | None = None,
) -> Figure:
    """Draws rows of image / ground truth / one column per model.

    Args:
        images: uint8 images `(N, H, W, 3)`.
        truths: labels `(N, H, W)`, or `None` for images without any (then
            the column is left out).
        predictions: dict mapping a column title (e.g. "Teacher") to labels
            `(N, H, W)`.
        path: optional file to save the figure to.
        class_names: names of the classes (a dataset's `classes`); "class 0",
            ... if `None`.
        palette: uint8 `(n_classes, 3)` colours of the labels (a dataset's
            `palette`); distinct generic colours if `None`.

    Returns:
        The matplotlib `Figure`.

    Example:

    >>> teacher_labels = predict_logits(teacher, data.x_test[:3]).argmax(-1)
    >>> fig = plot_segmentations(data.x_test[:3], data.y_test[:3], {"Teacher": teacher_labels},
    ...                          class_names=data.classes, palette=data.palette)
    """
    import matplotlib.pyplot as plt

    columns = {"Image": None, **({} if truths is None else {"Ground truth": truths}),
               **predictions}
    class_names, palette = _names_and_palette(
        [np.asarray(v) for v in columns.values() if v is not None], class_names, palette)
    n = len(images)
    legend_inches = 0.45
    fig, axes = plt.subplots(n, len(columns), squeeze=False,
                             figsize=(2.6 * len(columns), 2.6 * n + legend_inches))
    for row in range(n):
        for col, (title, labels) in enumerate(columns.items()):
            ax = axes[row, col]
            ax.imshow(images[row] if labels is None else labels_to_rgb(labels[row], palette))
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title)
    fig.legend(handles=_legend_handles(class_names, palette),
               loc="lower center", ncol=len(class_names), frameon=False)
    fig.tight_layout(rect=(0, legend_inches / fig.get_figheight(), 1, 1))
    return save_figure(fig, path)


@closes_figures_on_error
def plot_pr_curves(
    results: Mapping[str, Mapping[str, Any]],
    path: os.PathLike | str | None = None,
    class_names: Sequence[str] | None = None,
    labelled_classes: Sequence[int] | None = None,
) -> Figure:
    """Draws per-class precision-recall curves, one panel per class.

    Args:
        results: dict mapping a model name to the output of
            `evaluate_segmentation`.
        path: optional file to save the figure to.
        class_names: names of the classes, in label order; those the results
            name if `None`.
        labelled_classes: indices of the classes to draw (a dataset's
            `labelled_classes`, which leaves out a class such as Dubai's
            rare "Unlabeled", whose curve is noise); every class if `None`.

    Returns:
        The matplotlib `Figure`.

    Example:

    >>> results = evaluate_segmentation(student, data.x_test[:8], data.y_test[:8],
    ...                                 class_names=data.classes)
    >>> fig = plot_pr_curves({"student": results}, labelled_classes=data.labelled_classes)
    >>> [ax.get_title() for ax in fig.axes if ax.get_visible()]
    ['Building', 'Land', 'Road', 'Vegetation', 'Water']
    """
    import matplotlib.pyplot as plt

    first = next(iter(results.values()))
    n_classes = len(first["average_precision"])
    class_names = class_names_for(n_classes, class_names or first.get("class_names"))
    drawn = list(range(n_classes) if labelled_classes is None else labelled_classes)
    columns = min(3, len(drawn))
    rows = math.ceil(len(drawn) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(13 * columns / 3, 4 * rows),
                             squeeze=False)
    for ax in axes.flat[len(drawn):]:
        ax.set_visible(False)
    for model_name, res in results.items():
        if not any(class_names[c] in res["pr_curves"] for c in drawn):
            plt.close(fig)
            raise ValueError(
                f"The curves of {model_name!r} are of the classes "
                f"{sorted(res['pr_curves'])}, none of {[class_names[c] for c in drawn]}: "
                f"pass the class_names its segmentation_metrics were computed with.")
    for c, ax in zip(drawn, axes.flat):
        name = class_names[c]
        for model_name, res in results.items():
            if name in res["pr_curves"]:
                precision, recall = res["pr_curves"][name]
                ax.plot(recall, precision,
                        label=f"{model_name} (AP {res['average_precision'][c]:.3f})")
        ax.set_title(name)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return save_figure(fig, path)


@closes_figures_on_error
def plot_confusion_matrix(
    confusion_matrix: np.ndarray | Mapping[str, np.ndarray],
    title: str = "",
    path: os.PathLike | str | None = None,
    class_names: Sequence[str] | None = None,
) -> Figure:
    """Draws confusion matrices normalised by row (recall per true class), side by side.

    Several models' matrices share one colour scale (0 to 1), so a cell
    reads the same in every panel.

    Args:
        confusion_matrix: counts, rows = truth, columns = prediction; or a
            dict mapping a model name to such a matrix, one panel each.
        title: figure title.
        path: optional file to save the figure to.
        class_names: names of the classes, in label order; "class 0", ...
            if `None`.

    Returns:
        The matplotlib `Figure`.

    Example:

    >>> matrices = {"teacher": [[8, 2], [1, 9]], "student": [[6, 4], [0, 5]]}
    >>> fig = plot_confusion_matrix(matrices, title="Test", class_names=["Land", "Water"])
    >>> [ax.get_title() for ax in fig.axes[:2]], fig.axes[1].texts[1].get_text()  # 4 / 10
    (['teacher', 'student'], '0.40')
    """
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    matrices = confusion_matrix if isinstance(confusion_matrix, dict) else {
        "": confusion_matrix}
    fig, axes = plt.subplots(1, len(matrices), squeeze=False, layout="constrained",
                             figsize=(5.2 * len(matrices) + 0.8, 5.2))
    for ax, (name, matrix) in zip(axes[0], matrices.items()):
        cm = np.asarray(matrix, dtype=np.float64)
        names = class_names_for(len(cm), class_names)
        with np.errstate(invalid="ignore", divide="ignore"):
            normalized = np.nan_to_num(cm / cm.sum(1, keepdims=True))
        display = ConfusionMatrixDisplay(normalized, display_labels=list(names))
        display.plot(ax=ax, values_format=".2f", cmap="Blues", colorbar=False,
                     xticks_rotation=45, im_kw={"vmin": 0.0, "vmax": 1.0})
        for row in np.flatnonzero(cm.sum(1) == 0):  # a class absent from the truth has no
            for text in display.text_[row]:  # shares: its 0.00 would read as no recall
                text.set_text("—")
        ax.set_title(name)
        if ax is not axes[0, 0]:
            ax.set_ylabel("")
    fig.colorbar(display.im_, ax=axes[0].tolist(), shrink=0.8,
                 label="share of the true class's pixels")
    fig.suptitle(title)
    return save_figure(fig, path)


@closes_figures_on_error
def plot_class_shares(data: SegmentationDataset, path: os.PathLike | str | None = None) -> Figure:
    """Bar chart of class shares of annotated pixels in each split.

    Bars in the data's own class colours, named by its classes.

    Args:
        data: a dataset from `load_dataset`, held in memory.
        path: optional file to save the figure to.

    Returns:
        The matplotlib `Figure`.

    Example:

    >>> [label.get_text() for label in plot_class_shares(data).axes[0].get_xticklabels()]
    ['Building', 'Land', 'Road', 'Vegetation', 'Water', 'Unlabeled']
    """
    import matplotlib.pyplot as plt

    from matplotlib.patches import Patch

    if not data.in_memory:
        raise ValueError("plot_class_shares counts the labels of every split, which a "
                         "streamed dataset has not read: load it with "
                         "load_dataset(..., in_memory=True).")
    names, palette = tuple(data.classes), np.asarray(data.palette)
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(names)), 3.4))
    width = 0.27
    for i, split in enumerate(("train", "val", "test")):
        shares = class_shares(getattr(data, f"y_{split}"), n_classes=len(names))
        ax.bar(np.arange(len(names)) + (i - 1) * width, shares, width,
               color=palette / 255, edgecolor="black", hatch=("", "//", "..")[i])
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("share of annotated pixels")
    # the bars take their class's colour; the legend tells the splits by hatch
    ax.legend(handles=[Patch(facecolor="white", edgecolor="black", hatch=hatch, label=split)
                       for split, hatch in zip(("train", "val", "test"), ("", "//", ".."))])
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
