"""Tables of the notebooks and scripts: readable column names, history rows, seeds, Markdown."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .callbacks import best_epoch
from .checks import check_count

LABELS = {
    "model": "model", "loss": "loss", "miou5": "mIoU, 5 labelled classes",
    "miou6": "mIoU, 6 classes", "pixel_acc": "pixel accuracy",
    "student_loss": "label loss (Dice + cross-entropy)",
    "distillation_loss": "KD term", "total_loss": "total loss",
    "parameters": "parameters", "gflops": "GFLOPs (256x256)", "size_mb": "file size (MB)",
    "latency_ms": "latency (ms, batch 1)", "val_loss": "validation loss",
    "val_miou5": "validation mIoU5", "epoch": "epoch",
}
"""Readable names of the metrics and table columns, for figures and tables."""


def history_rows(
    history: Mapping[str, Sequence[float]],
    every: int = 10,
    keys: Sequence[str] = ("loss", "val_loss", "val_miou5"),
) -> list[dict[str, Any]]:
    """A training history as table rows, one every `every` epochs, and the best epoch.

    A compact form of the log Keras prints while fitting, for a run that was
    loaded rather than trained (`markdown_table` formats it). The last epoch
    and the epoch of the best validation mean IoU (the one a checkpoint of
    `fit_segmentation` keeps) are always shown, the latter marked "best".

    Args:
        history: a history dict, as `fit_segmentation` returns or `load_run` reads.
        every: the interval between the epochs shown.
        keys: the history's columns to show, where present.

    Returns:
        A list of dicts with `epoch` and the `keys`.

    Example:

    >>> history = {"loss": [1.0, 0.8, 0.7], "val_miou5": [0.2, 0.5, 0.4]}
    >>> [row["epoch"] for row in history_rows(history, every=2)]
    [1, '2 (best)', 3]
    """
    every = check_count("every", every)
    epochs = len(next(iter(history.values()), []))
    monitor = next((k for k in history if k.startswith("val_miou")), None)
    best = best_epoch(history, monitor) if monitor else None
    shown = sorted({1, epochs, *range(every, epochs + 1, every)} | ({best} if best else set()))
    return [{"epoch": f"{epoch} (best)" if epoch == best else epoch,
             **{key: float(history[key][epoch - 1]) for key in keys if key in history}}
            for epoch in shown if epoch >= 1]


def scores_by_seed(
    entries: Sequence[Mapping[str, Any]], key: str = "miou5"
) -> dict[str, dict[int, float]]:
    """Each model's score by seed: `{model: {seed: score}}`, models in order of appearance.

    Args:
        entries: dicts with `model`, `seed` and `key`, one per run (as in
            `results/metrics.json`).
        key: the score.

    Returns:
        A dict of dicts.

    Raises:
        ValueError: two entries of one model have the same seed (a run
            scored twice, or two recipes under one name).

    Example:

    >>> scores_by_seed([{"model": "teacher", "seed": 0, "miou5": 0.7}])
    {'teacher': {0: 0.7}}
    """
    scores: dict[str, dict[int, float]] = {}
    for entry in entries:
        seeds = scores.setdefault(entry["model"], {})
        if entry["seed"] in seeds:
            raise ValueError(f"{entry['model']!r} has two entries for seed {entry['seed']}: "
                             f"keep one run per model and seed (a metrics file should hold "
                             f"each run once).")
        seeds[entry["seed"]] = float(entry[key])
    return scores


def paired_differences(
    entries: Sequence[Mapping[str, Any]], model: str, baseline: str, key: str = "miou5"
) -> dict[int, float]:
    """`model` minus `baseline` seed by seed, over the seeds both have.

    A seed fixes a run's batch order and, on one backend, its initial weights
    and augmentation, so two models of the same seed differ by their recipe
    alone; pairing them removes the seed-to-seed spread both means carry.

    Args:
        entries: dicts with `model`, `seed` and `key`, one per run.
        model: the model whose change is measured.
        baseline: the model it is compared with.
        key: the score.

    Returns:
        `{seed: difference}` in seed order; empty when the two share no seed.

    Example:

    >>> runs = [{"model": "scratch", "seed": 0, "miou5": 0.60},
    ...         {"model": "scratch", "seed": 1, "miou5": 0.64},
    ...         {"model": "distilled", "seed": 1, "miou5": 0.66}]
    >>> changes = paired_differences(runs, "distilled", "scratch")
    >>> {seed: round(change, 3) for seed, change in changes.items()}
    {1: 0.02}
    """
    scores = scores_by_seed(entries, key)
    mine, reference = scores.get(model, {}), scores.get(baseline, {})
    return {seed: mine[seed] - reference[seed] for seed in sorted(mine) if seed in reference}


def format_number(value: float, digits: int = 3, signed: bool = False) -> str:
    """A number as the tables show it: `digits` decimals, never "-0.000".

    A change that rounds to zero has no sign to show (float rounding of two
    equal scores gives -1e-9 as often as +1e-9).

    Args:
        value: the number.
        digits: decimals.
        signed: whether to show its sign (for a change).

    Example:

    >>> format_number(-0.00004, signed=True), format_number(1234.5678, digits=1)
    ('+0.000', '1,234.6')
    """
    return f"{round(float(value), digits) + 0.0:{'+' if signed else ''},.{digits}f}"


def format_mean_sd(values: Sequence[float], digits: int = 3, signed: bool = False) -> str:
    """Scores over seeds as text: their mean ± their sample standard deviation.

    Args:
        values: one score per seed.
        digits: decimals.
        signed: whether to show the mean's sign (for a change).

    Returns:
        `"0.662 ± 0.001"`; the value alone for one value (it has no spread);
        `""` for none.

    Example:

    >>> format_mean_sd([0.60, 0.64])
    '0.620 ± 0.028'
    >>> format_mean_sd([0.03], signed=True)
    '+0.030'
    """
    values = [float(v) for v in values]
    if not values:
        return ""
    mean = format_number(np.mean(values), digits, signed)
    return mean if len(values) == 1 else f"{mean} ± {np.std(values, ddof=1):.{digits}f}"


def seed_summary(
    entries: Sequence[Mapping[str, Any]],
    models: Sequence[str] | None = None,
    baseline: str | None = None,
    key: str = "miou5",
) -> list[dict[str, Any]]:
    """Each model's score over its seeds, and its change against a baseline paired by seed.

    Two runs of the same recipe differ by a few hundredths of mean IoU, so a
    comparison of models is made seed by seed (`paired_differences`): each
    model minus the baseline run of the same seed, then the mean and the
    sample standard deviation of those differences.

    Args:
        entries: dicts with `model`, `seed` and `key`, one per run (as in
            `results/metrics.json`).
        models: the models to show, in this order; every model of `entries`
            in order of appearance by default. A model without entries is
            left out.
        baseline: the model to pair the others with; none by default.
        key: the score.

    Returns:
        One dict per model, for `markdown_table`: `model`, `seeds`, `mean`,
        `sd` (sample, `None` for one seed) and, with a baseline, `change`
        (mean of the paired differences, over `paired seeds`) and its
        `change sd`.

    Raises:
        ValueError: two entries of one model have the same seed.

    Example:

    >>> runs = [{"model": "scratch", "seed": 0, "miou5": 0.60},
    ...         {"model": "scratch", "seed": 1, "miou5": 0.64},
    ...         {"model": "distilled", "seed": 0, "miou5": 0.63},
    ...         {"model": "distilled", "seed": 1, "miou5": 0.66}]
    >>> print(markdown_table(seed_summary(runs, baseline="scratch")))
    | model | seeds | mean | sd | change | change sd | paired seeds |
    |---|---|---|---|---|---|---|
    | scratch | 2 | 0.620 | 0.028 | — | — | — |
    | distilled | 2 | 0.645 | 0.021 | 0.025 | 0.007 | 2 |
    """
    by_model = scores_by_seed(entries, key)
    rows = []
    for model in (by_model if models is None else models):
        scores = list(by_model.get(model, {}).values())
        if not scores:
            continue
        row = {"model": model, "seeds": len(scores), "mean": float(np.mean(scores)),
               "sd": float(np.std(scores, ddof=1)) if len(scores) > 1 else None}
        if baseline is not None:
            changes = (list(paired_differences(entries, model, baseline, key).values())
                       if model != baseline else [])
            row.update({"change": float(np.mean(changes)) if changes else None,
                        "change sd": float(np.std(changes, ddof=1))
                        if len(changes) > 1 else None,
                        "paired seeds": len(changes) if changes else None})
        rows.append(row)
    return rows


def paired_t_test(row: Mapping[str, Any]) -> float | None:
    """The two-sided p-value of a `seed_summary` row's paired change.

    `t = change / (sd / sqrt(n))` over the `n` paired seeds, with `n - 1`
    degrees of freedom: the chance of a change at least this large, in
    either direction, if the model made no difference.

    Args:
        row: a row of `seed_summary(..., baseline=...)`.

    Returns:
        The p-value; `None` without a change or with one paired seed (no
        spread to test against).

    Example:

    >>> round(paired_t_test({"change": 0.04, "change sd": 0.01, "paired seeds": 3}), 4)
    0.0202
    """
    from scipy import stats

    change, sd, seeds = row.get("change"), row.get("change sd"), row.get("paired seeds")
    if change is None or sd is None:
        return None
    if sd == 0:  # every seed changed by the same amount
        return 0.0 if change else 1.0
    return float(2 * stats.t.sf(abs(change) / (sd / np.sqrt(seeds)), seeds - 1))


def describe_change(row: Mapping[str, Any], digits: int = 3, level: float = 0.05) -> str:
    """A `seed_summary` row's paired change in words, with a paired t-test over its seeds.

    The change is called real when the two-sided paired t-test
    (`paired_t_test`) rejects "no change" at `level`. With three seeds that
    takes a change of over 4.3 standard errors; with one paired seed there is
    no test, and nothing is called.

    Args:
        row: a row of `seed_summary(..., baseline=...)`.
        digits: decimals.
        level: the test's significance level.

    Returns:
        E.g. `"+0.040 ± 0.010 over 3 seeds, real (paired t-test, p = 0.020)"`,
        `"+0.050 (one seed)"`, `"no paired run"`, or `"undefined (a score is
        NaN)"`.

    Example:

    >>> describe_change({"change": 0.04, "change sd": 0.01, "paired seeds": 3})
    '+0.040 ± 0.010 over 3 seeds, real (paired t-test, p = 0.020)'
    >>> describe_change({"change": 0.005, "change sd": 0.010, "paired seeds": 3})
    '+0.005 ± 0.010 over 3 seeds, within the spread of the seeds (paired t-test, p = 0.478)'
    """
    change, sd, seeds = row.get("change"), row.get("change sd"), row.get("paired seeds")
    if change is None:
        return "no paired run"
    if not np.isfinite(change):  # a score of a seed is NaN: no class to score was present
        return "undefined (a score is NaN)"
    shown = format_number(change, digits, signed=True)
    p = paired_t_test(row)
    if p is None:
        return f"{shown} (one seed)"
    verdict = "real" if p < level else "within the spread of the seeds"
    return (f"{shown} ± {sd:.{digits}f} over {seeds} seeds, {verdict} (paired t-test, "
            f"{format_p_value(p)})")


def format_p_value(p: float) -> str:
    """A p-value as the pages give it: "p = 0.020", or "p < 0.001" (never "p = 0.000").

    Example:

    >>> format_p_value(0.0202), format_p_value(0.00004)
    ('p = 0.020', 'p < 0.001')
    """
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def markdown_table(
    rows: Sequence[Mapping[str, Any]], digits: int = 3, headers: Mapping[str, str] = LABELS
) -> str:
    """Formats a list of dicts as a Markdown table.

    Args:
        rows: list of dicts, one per row; the columns are their keys.
        digits: decimals of floats.
        headers: readable names of columns (`LABELS` by default); a key
            without one is shown as it is.

    Returns:
        The table as text; a cell is "—" where a row lacks a key or has `None`.

    Example:

    >>> print(markdown_table([{"model": "teacher", "miou5": 0.71234}]))
    | model | mIoU, 5 labelled classes |
    |---|---|
    | teacher | 0.712 |
    """
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(headers.get(c, c) for c in columns) + " |",
             "|" + "---|" * len(columns)]
    for row in rows:
        values = [row.get(column, "—") for column in columns]
        cells = [str(v) if isinstance(v, (bool, np.bool_)) else
                 f"{v:,}" if isinstance(v, numbers.Integral) else
                 format_number(v, digits) if isinstance(v, numbers.Real) else
                 "—" if v is None else str(v)
                 for v in values]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
