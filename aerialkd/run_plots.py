"""Figures of training runs and their comparison: histories, paired differences over
seeds, settings sweeps, the trade-off of score against size or speed, and each
model's scores over its seeds."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .tables import LABELS
from .plots import closes_figures_on_error, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@closes_figures_on_error
def plot_history(
    histories: Mapping[str, Mapping[str, Sequence[float]]],
    keys: Sequence[str] = ("loss",),
    path: os.PathLike | str | None = None,
    *,
    ylim: tuple[float, float] | Mapping[str, tuple[float, float]] | None = None,
) -> Figure:
    """Draws training and validation curves of one or more runs.

    Args:
        histories: dict mapping a run name to a history dict (as returned by
            `fit_segmentation`).
        keys: metrics to draw, one panel each; `val_<key>` is drawn dashed
            where present.
        path: optional file to save the figure to.
        ylim: `(low, high)` of every panel's y-axis, or a dict mapping a
            key to its `(low, high)`, to zoom on where the curves differ
            (the first epochs span a far wider range); "tail" fits each
            panel to the values after the first fifth of the epochs;
            Matplotlib's limits where `None`.

    Returns:
        The matplotlib `Figure`.

    Example:

    >>> _, history, _ = load_run(COMMITTED_MODELS / "teacher.keras")
    >>> fig = plot_history({"teacher": history}, keys=("loss", "miou5"))
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), squeeze=False,
                             figsize=(4.5 * len(keys), 3.4))
    for ax, key in zip(axes[0], keys):
        for i, (run, history) in enumerate(histories.items()):
            color = f"C{i}"
            epochs = np.arange(1, len(history.get(key, [])) + 1)
            if key in history:  # a validation key asked for itself is drawn solid
                split = "val" if key.startswith("val_") else "train"
                ax.plot(epochs, history[key], color=color, label=f"{run} {split}")
            if f"val_{key}" in history:
                ax.plot(epochs, history[f"val_{key}"], "--", color=color,
                        label=f"{run} val")
        ax.set_title(LABELS.get(key, key))
        limits = ylim.get(key) if isinstance(ylim, dict) else ylim
        if isinstance(limits, str):
            if limits != "tail":
                raise ValueError(f"ylim must be (low, high), a dict or 'tail', got {limits!r}.")
            late = [v for history in histories.values() for k in (key, f"val_{key}")
                    for v in history.get(k, [])[len(history.get(k, [])) // 5:]
                    if np.isfinite(v)]
            if not late:
                raise ValueError(f"ylim='tail' fits the panel of {key!r} to its values, and "
                                 f"no history has a finite one.")
            low, high = min(late), max(late)
            limits = (low - 0.05 * (high - low + 1e-9), high + 0.05 * (high - low + 1e-9))
        if limits is not None:
            ax.set_ylim(*limits)
        _epoch_axis(ax)
    fig.tight_layout()
    return save_figure(fig, path)


@closes_figures_on_error
def plot_paired_difference(
    baseline: Mapping[Any, Mapping[str, Sequence[float]]],
    others: Mapping[str, Mapping[Any, Mapping[str, Sequence[float]]]],
    key: str = "val_miou5",
    path: os.PathLike | str | None = None,
    *,
    baseline_name: str = "scratch",
) -> Figure:
    """Draws, epoch by epoch, how far runs lie above their baseline of the same seed.

    A comparison of students lives in a band of a few hundredths that a plot
    of the raw curves (which start near 0) flattens. This draws the
    difference itself: for each group of `others`, `history[key]` minus the
    baseline's of the same seed, each seed thin and their mean thick, around
    a zero line.

    Args:
        baseline: dict mapping a seed to the history of the baseline run.
        others: dict mapping a group name (e.g. "distilled") to a dict
            mapping a seed to a history; seeds the baseline lacks are left
            out.
        key: the history's metric, e.g. "val_miou5".
        path: optional file to save the figure to.
        baseline_name: what the baseline is called in the labels.

    Returns:
        The matplotlib `Figure`.

    Example:

    >>> scratch = {0: {"val_miou5": [0.5, 0.6]}, 1: {"val_miou5": [0.4, 0.6]}}
    >>> kd = {0: {"val_miou5": [0.6, 0.6]}, 1: {"val_miou5": [0.5, 0.7]}}
    >>> fig = plot_paired_difference(scratch, {"distilled": kd})
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.axhline(0.0, color="black", linewidth=1)
    for i, (group, runs) in enumerate(others.items()):
        seeds = [seed for seed in runs if seed in baseline]
        if not seeds:
            raise ValueError(f"{group!r} shares no seed with the baseline "
                             f"(seeds {sorted(baseline)}).")
        epochs = min(min(len(runs[s][key]), len(baseline[s][key])) for s in seeds)
        differences = np.array([np.asarray(runs[s][key][:epochs])
                                - np.asarray(baseline[s][key][:epochs]) for s in seeds])
        x = np.arange(1, epochs + 1)
        for seed, row in zip(seeds, differences):
            ax.plot(x, row, color=f"C{i}", linewidth=0.7, alpha=0.45)
        ax.plot(x, differences.mean(0), color=f"C{i}", linewidth=2.2,
                label=f"{group} minus {baseline_name}, mean of {len(seeds)} seed(s)")
    name = LABELS.get(key.removeprefix("val_"), key)
    ax.set_title(f"{'Validation ' if key.startswith('val_') else ''}{name}: "
                 f"difference to {baseline_name} (thin: each seed)")
    _epoch_axis(ax)
    fig.tight_layout()
    return save_figure(fig, path)


def _epoch_axis(ax):
    """Whole epochs on the x axis, a light grid and a small legend."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


@closes_figures_on_error
def plot_sweep(
    rows: Sequence[Mapping[str, Any]], metric: str = "val_miou5", path: os.PathLike | str | None = None
) -> Figure:
    """Draws a heatmap of `metric` over alpha x temperature, one per KD kind.

    A row of kind "none" (the scratch student `sweep_distillation` trains as
    the reference) is not a cell: its score goes in the title, and each cell
    shows its difference to it under its own value.

    Args:
        rows: list of dicts with `kind`, `alpha`, `temperature` and `metric`
            (as returned by `sweep_distillation`).
        metric: the value to colour by.
        path: optional file to save the figure to.

    Returns:
        The matplotlib `Figure`.

    Example:

    >>> rows = [{"kind": "none", "val_miou5": 0.60},  # the scratch student
    ...         {"kind": "pixel", "alpha": 0.5, "temperature": 2.0, "val_miou5": 0.62}]
    >>> fig = plot_sweep(rows)
    >>> fig.axes[0].get_title(), fig.axes[0].texts[0].get_text().split()
    ('pixel KD', ['0.620', '(+0.020)'])
    """
    import matplotlib.pyplot as plt

    reference = next((r[metric] for r in rows if r["kind"] == "none"), None)
    rows = [r for r in rows if r["kind"] != "none"]
    if not rows:
        raise ValueError("plot_sweep needs at least one distilled setting in `rows`.")
    kinds = sorted({r["kind"] for r in rows})
    alphas = sorted({r["alpha"] for r in rows})
    temps = sorted({r["temperature"] for r in rows})
    values = np.array([r[metric] for r in rows])
    fig, axes = plt.subplots(1, len(kinds), squeeze=False, layout="constrained",
                             figsize=(1.1 * len(temps) * len(kinds) + 3.5,
                                      0.6 * len(alphas) + 1.8))
    for ax, kind in zip(axes[0], kinds):
        grid = np.full((len(alphas), len(temps)), np.nan)
        for r in rows:
            if r["kind"] == kind:
                grid[alphas.index(r["alpha"]), temps.index(r["temperature"])] = r[metric]
        if reference is None:
            image = ax.imshow(grid, cmap="viridis", vmin=values.min(),
                              vmax=values.max(), aspect="auto")
        else:  # red: worse than the scratch student, blue: better, white: level
            span = max(np.abs(values - reference).max(), 1e-6)
            image = ax.imshow(grid - reference, cmap="RdBu", vmin=-span, vmax=span,
                              aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):  # a setting the grid did not train stays blank
                text = f"{v:.3f}" if reference is None else f"{v:.3f}\n({v - reference:+.3f})"
                shade = image.norm(v if reference is None else v - reference)
                dark_cell = shade < 0.5 if reference is None else abs(shade - 0.5) > 0.35
                ax.text(j, i, text, ha="center", va="center", color="w" if dark_cell else "k")
        ax.set_xticks(range(len(temps)), [f"T={t:g}" for t in temps])
        ax.set_yticks(range(len(alphas)),
                      [f"alpha={a:g}" for a in alphas] if ax is axes[0, 0] else [])
        ax.set_title(f"{kind} KD")
    split, key = {"val": ("Validation", metric[4:]), "test": ("Test", metric[5:])}.get(
        metric.split("_")[0], ("Training", metric))
    title = f"{split} {LABELS.get(key, key)} over alpha x temperature"
    if reference is not None:
        title += f"\n(colour and brackets: minus the scratch student's {reference:.3f})"
    fig.suptitle(title)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8,
                 label=None if reference is None else "minus scratch")
    return save_figure(fig, path)


@closes_figures_on_error
def plot_tradeoff(
    rows: Sequence[Mapping[str, Any]],
    costs: Mapping[str, str],
    score_label: str = "test mIoU5",
    path: os.PathLike | str | None = None,
) -> Figure:
    """Draws scores against costs (FLOPs, latency), a panel per cost, with each seed.

    For a size-accuracy curve such as students of several widths, from scratch
    and distilled, next to their teacher: each group's models are joined in
    order of cost, each at the mean of its seeds, with a bar of one standard
    deviation where it has more than one, and every seed as a small dot. The
    cost axes are logarithmic.

    Args:
        rows: one dict per model: `group` (e.g. "distilled"), a value for each
            key of `costs`, and `scores`, the score of each seed.
        costs: dict mapping a key of the rows to its axis label, e.g.
            `{"gflops": "GFLOPs at 256x256"}`.
        score_label: the label of the score axis.
        path: optional file to save the figure to.

    Returns:
        The matplotlib `Figure`.

    Example:

    >>> rows = [{"group": "scratch", "gflops": 1.5, "scores": [0.65, 0.66]},
    ...         {"group": "scratch", "gflops": 0.4, "scores": [0.60, 0.62]},
    ...         {"group": "teacher", "gflops": 6.1, "scores": [0.69]}]
    >>> fig = plot_tradeoff(rows, {"gflops": "GFLOPs"})
    >>> fig.axes[0].get_legend_handles_labels()[1]
    ['scratch', 'teacher']
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if not rows or not costs:
        raise ValueError("plot_tradeoff needs at least one row and one cost.")
    missing = [key for key in ("group", "scores", *costs) if any(key not in r for r in rows)]
    if missing or any(len(r["scores"]) == 0 for r in rows):
        raise ValueError(f"Every row needs a group, its scores (at least one) and each cost "
                         f"{sorted(costs)}; missing: {missing or 'scores'}.")
    groups = list(dict.fromkeys(r["group"] for r in rows))
    fig, axes = plt.subplots(1, len(costs), squeeze=False, sharey=True,
                             figsize=(4.6 * len(costs), 3.8), layout="constrained")
    for ax, (key, label) in zip(axes[0], costs.items()):
        for i, group in enumerate(groups):
            mine = sorted((r for r in rows if r["group"] == group), key=lambda r: r[key])
            x = np.array([r[key] for r in mine], dtype=float)
            means = np.array([np.mean(r["scores"]) for r in mine])
            sds = np.array([np.std(r["scores"], ddof=1) if len(r["scores"]) > 1 else 0.0
                            for r in mine])
            ax.errorbar(x, means, yerr=sds, color=f"C{i}", marker="o", capsize=3,
                        label=group)
            for r in mine:
                ax.scatter(np.full(len(r["scores"]), r[key]), r["scores"], color=f"C{i}",
                           s=10, alpha=0.5, zorder=3)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(label)
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].set_ylabel(score_label)
    axes[0, 0].legend(fontsize=8)
    return save_figure(fig, path)


@closes_figures_on_error
def plot_seed_scores(
    scores: Mapping[str, Sequence[float]],
    score_label: str = "test mIoU5",
    path: os.PathLike | str | None = None,
    *,
    baseline: str | None = None,
) -> Figure:
    """Draws each model's score over its seeds: every seed a dot, the mean with one sd.

    For the arms of one experiment, which differ by a few hundredths: a table
    of means hides how far the seeds of each spread, and whether two arms
    overlap. A row per model, top to bottom in the order of `scores`; with
    `baseline`, a dashed line at that model's mean across the others.

    Args:
        scores: dict mapping a model's label to the score of each of its
            seeds (one or more).
        score_label: the label of the score axis.
        path: optional file to save the figure to.
        baseline: the label of the model whose mean is drawn as a line.

    Returns:
        The matplotlib `Figure`.

    Example:

    >>> fig = plot_seed_scores({"scratch": [0.55, 0.58, 0.61], "distilled": [0.66, 0.67]},
    ...                        baseline="scratch")
    >>> [label.get_text() for label in fig.axes[0].get_yticklabels()]
    ['scratch', 'distilled']
    """
    import matplotlib.pyplot as plt

    values = {label: np.asarray(seeds, dtype=float) for label, seeds in scores.items()}
    empty = [label for label, seeds in values.items() if seeds.size == 0]
    if not values or empty:
        raise ValueError(f"plot_seed_scores needs at least one model and a score for each; "
                         f"{'none given' if not values else f'no score for {empty}'}.")
    not_finite = [label for label, seeds in values.items() if not np.isfinite(seeds).all()]
    if not_finite:
        raise ValueError(f"Scores must be finite numbers; {not_finite} have NaN or inf.")
    if baseline is not None and baseline not in values:
        raise ValueError(f"baseline {baseline!r} is not among the models {list(values)}.")
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.45 * len(values)), layout="constrained")
    for i, seeds in enumerate(values.values()):
        sd = np.std(seeds, ddof=1) if seeds.size > 1 else 0.0
        ax.errorbar(seeds.mean(), i, xerr=sd, color=f"C{i}", marker="|", markersize=16,
                    capsize=4)
        ax.scatter(seeds, np.full(seeds.size, i + 0.2), color=f"C{i}", s=20, alpha=0.55,
                   zorder=3)  # just under the bar, which they would hide
    if baseline is not None:
        ax.axvline(values[baseline].mean(), color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(values)), list(values))
    ax.set_ylim(len(values) - 0.5, -0.5)  # the first model on top
    ax.set_xlabel(f"{score_label} (dots: seeds; bar: mean ± one sd)")
    ax.grid(alpha=0.3, axis="x")
    return save_figure(fig, path)
