"""Training with labels for a few images: which images keep them, and the datasets of that.

Masks are expensive and aerial images are plentiful. A teacher's soft targets can
teach a student on images nobody annotated (Hinton et al., 2015), so the few-labels
experiments keep the labels of a subset of the training images:

- `label_subset` picks that subset, spread over the tiles, fixed by a seed;
- `only_labelled` is the dataset of those images alone (a model trained from
  scratch on them);
- `unlabelled_elsewhere` keeps every training image but marks the others' pixels
  unannotated (`IGNORE_INDEX`), which the label loss and the metrics already
  leave out: a `Distiller` still learns from the teacher on them;
- `pseudo_labelled` gives the others a model's hard labels instead
  ("pseudo-labels"), the simpler alternative that distillation is measured against;
- `matched_epochs` gives a run on fewer patches the optimizer steps of a run on
  more, so both train for the same number of steps.
"""

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from .checks import check_count
from .classes import IGNORE_INDEX
from .datasets import SegmentationDataset


def _patches_per_image(data: SegmentationDataset) -> list[int]:
    p = data.patch_size
    return [(h // p) * (w // p) for h, w in data.image_sizes["train"]]


def _check_chosen(data: SegmentationDataset, chosen: Sequence[str]) -> None:
    if isinstance(chosen, str):
        raise TypeError(f"chosen must be a list of training image names, got the string "
                        f"{chosen!r}; pass [{chosen!r}] for that image alone.")
    unknown = sorted(set(chosen) - set(data.sources["train"]))
    if unknown:
        raise ValueError(f"chosen names images that are not training images of the dataset: "
                         f"{unknown[:5]}; pick them from data.sources['train'] (e.g. with "
                         f"label_subset).")
    if not chosen:
        raise ValueError("chosen is empty: at least one training image must keep its labels.")


def label_subset(data: SegmentationDataset, n_images: int | None = None,
                 seed: int = 0) -> list[str]:
    """The training images that keep their labels: one or two per tile.

    In a tiled layout (sources like "Tile 1/image_part_001") every tile gives one
    image, and the tiles that give a second are those whose patches bring the
    total closest to a quarter of the training patches; which images of a tile is
    drawn with `seed`. With fewer images than tiles, one from each of the first
    tiles. In a flat layout, `n_images` images drawn with `seed`.

    Args:
        data: a `SegmentationDataset`.
        n_images: how many images keep their labels; a quarter of the training
            images (at least one) by default.
        seed: seed of the draw within each tile.

    Returns:
        The chosen source names, in the order of `data.sources["train"]`.

    Example:

    >>> chosen = label_subset(data)  # the tiny dataset: 18 images in 3 tiles
    >>> len(chosen), sorted({name.split("/")[0] for name in chosen})
    (4, ['Tile 1', 'Tile 2', 'Tile 3'])
    """
    sources = list(data.sources["train"])
    n_images = (max(1, round(len(sources) / 4)) if n_images is None
                else check_count("n_images", n_images))
    if n_images > len(sources):
        raise ValueError(f"n_images must be between 1 and the {len(sources)} training images; "
                         f"got {n_images}.")
    counts = dict(zip(sources, _patches_per_image(data)))
    rng = np.random.default_rng(seed)
    tiles: dict[str, list[str]] = {}
    for name in sources:
        tiles.setdefault(name.split("/")[0] if "/" in name else "", []).append(name)
    order = {tile: [names[i] for i in rng.permutation(len(names))]
             for tile, names in tiles.items()}
    if len(tiles) == 1:
        chosen = order[next(iter(tiles))][:n_images]
    elif n_images < len(tiles):
        chosen = [order[tile][0] for tile in list(tiles)[:n_images]]
    else:
        base = [order[tile][0] for tile in tiles]
        extra, target = n_images - len(tiles), sum(counts.values()) / 4
        seconds = [tile for tile in tiles if len(order[tile]) > 1]
        if extra > len(seconds):
            raise ValueError(f"n_images={n_images}: the tiled rule takes one or two images per "
                             f"tile, at most {len(tiles) + len(seconds)} here; ask for fewer.")
        best = _first_closest([counts[order[tile][1]] for tile in seconds], extra,
                              target - sum(counts[name] for name in base))
        chosen = base + [order[seconds[i]][1] for i in best]
    return [name for name in sources if name in chosen]


def _first_closest(values, k, target):
    """The first `k` indices, in `itertools.combinations`' order, whose values sum closest to
    `target`: what `min` over the combinations gives, from a table of the reachable sums."""
    n = len(values)
    reach = [[{0}] + [set() for _ in range(k)] for _ in range(n + 1)]  # j of values[i:]
    for i in range(n - 1, -1, -1):
        for j in range(1, k + 1):
            reach[i][j] = reach[i + 1][j] | {values[i] + s for s in reach[i + 1][j - 1]}
    gap = min(abs(s - target) for s in reach[0][k])
    goals = {s for s in reach[0][k] if abs(s - target) == gap}
    pick, i, total = [], 0, 0
    for j in range(k, 0, -1):  # the earliest value from which a goal is still reached
        while not any(g - total - values[i] in reach[i + 1][j - 1] for g in goals):
            i += 1
        pick.append(i)
        total += values[i]
        i += 1
    return pick


def labelled_patches(data: SegmentationDataset, chosen: Sequence[str]) -> np.ndarray:
    """Whether each training patch comes from an image in `chosen`.

    Args:
        data: a `SegmentationDataset` loaded in memory.
        chosen: names of training images, e.g. from `label_subset`.

    Returns:
        A boolean array, one entry per patch of `data.x_train`.

    Example:

    >>> labelled_patches(data, label_subset(data)).sum(), len(data.x_train)
    (np.int64(100), 420)
    """
    _check_chosen(data, chosen)
    if data.x_train is None:
        raise ValueError("The dataset was loaded with in_memory=False; the few-labels datasets "
                         "need its patches in memory: load_dataset(..., in_memory=True).")
    counts = _patches_per_image(data)
    if sum(counts) != len(data.x_train):
        raise ValueError(f"The {len(data.x_train)} training patches do not match the training "
                         f"images' {sum(counts)}; was the dataset changed after loading?")
    keep = np.array([name in chosen for name in data.sources["train"]])
    return np.repeat(keep, counts)


def only_labelled(data: SegmentationDataset, chosen: Sequence[str]) -> SegmentationDataset:
    """The dataset with the training images in `chosen` alone.

    Validation and test splits are unchanged.

    Args:
        data: a `SegmentationDataset` loaded in memory.
        chosen: names of training images, e.g. from `label_subset`.

    Returns:
        A new `SegmentationDataset`; `data` is not changed.

    Example:

    >>> few = only_labelled(data, label_subset(data))
    >>> len(few.sources["train"]), len(few.x_train), len(few.x_test) == len(data.x_test)
    (4, 100, True)
    """
    keep = labelled_patches(data, chosen)
    mine = [name in chosen for name in data.sources["train"]]
    pick = lambda values: [v for v, m in zip(values, mine) if m]  # noqa: E731
    return dataclasses.replace(
        data, x_train=data.x_train[keep], y_train=data.y_train[keep],
        sources={**data.sources, "train": pick(data.sources["train"])},
        files={**data.files, "train": pick(data.files["train"])},
        image_sizes={**data.image_sizes, "train": pick(data.image_sizes["train"])})


def unlabelled_elsewhere(data: SegmentationDataset,
                         chosen: Sequence[str]) -> SegmentationDataset:
    """The dataset with every training image, unannotated outside `chosen`.

    The masks of the other training images become `IGNORE_INDEX`, which the
    label loss and the metrics leave out: a model trained on it learns from
    labels on `chosen` only, and a `Distiller` from its teacher on every image.
    Batches then hold more or fewer labelled patches by chance; the label loss
    averages over the annotated pixels of each, so how much a labelled pixel
    weighs against the KD term varies from batch to batch (see `Distiller`).

    Args:
        data: a `SegmentationDataset` loaded in memory.
        chosen: names of training images, e.g. from `label_subset`.

    Returns:
        A new `SegmentationDataset` sharing `data`'s images; `data` is not changed.

    Example:

    >>> chosen = label_subset(data)
    >>> masked = unlabelled_elsewhere(data, chosen)
    >>> bool((masked.y_train[~labelled_patches(data, chosen)] == IGNORE_INDEX).all())
    True
    """
    keep = labelled_patches(data, chosen)  # first: it says what is wrong with data
    y = data.y_train.copy()
    y[~keep] = IGNORE_INDEX
    return dataclasses.replace(data, y_train=y, relabelled=_with_train(data.relabelled))


def pseudo_labelled(data: SegmentationDataset, chosen: Sequence[str],
                    labels: np.ndarray) -> SegmentationDataset:
    """The dataset with every training image, labelled by a model outside `chosen`.

    The images without masks get `labels`, typically a teacher's predicted class
    per pixel, and a model trained on the dataset learns from them as from
    annotations: the teacher's hard labels ("pseudo-labels"), against which its
    soft targets (`unlabelled_elsewhere` with a `Distiller`) can be compared.
    The masks of `chosen` are kept.

    Args:
        data: a `SegmentationDataset` loaded in memory.
        chosen: names of training images that keep their masks, e.g. from
            `label_subset`.
        labels: class indices `(N, H, W)`, one map per training patch of
            `data.x_train` (those of `chosen`'s patches are not used), e.g.
            `predict_logits(teacher, data.x_train).argmax(-1)`; `IGNORE_INDEX`
            marks pixels to leave unannotated.

    Returns:
        A new `SegmentationDataset` sharing `data`'s images; `data` is not changed.

    Example:

    >>> chosen = label_subset(data)
    >>> predicted = predict_logits(student, data.x_train).argmax(-1)
    >>> pseudo = pseudo_labelled(data, chosen, predicted)
    >>> keep = labelled_patches(data, chosen)
    >>> bool((pseudo.y_train[~keep] == predicted[~keep]).all()
    ...      and (pseudo.y_train[keep] == data.y_train[keep]).all())
    True
    """
    keep = labelled_patches(data, chosen)
    labels = np.asarray(labels)
    if labels.shape != data.y_train.shape:
        raise ValueError(f"labels has shape {labels.shape}; it needs one class map per "
                         f"training patch, {data.y_train.shape}, e.g. "
                         f"predict_logits(teacher, data.x_train).argmax(-1).")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels are {labels.dtype}; they must be class indices (integers), "
                         f"e.g. logits.argmax(-1), not logits or probabilities.")
    wrong = labels[~keep][(labels[~keep] >= data.n_classes) & (labels[~keep] != IGNORE_INDEX)]
    if wrong.size or (labels[~keep] < 0).any():
        raise ValueError(f"labels hold values outside the {data.n_classes} classes (e.g. "
                         f"{int(wrong[0]) if wrong.size else int(labels[~keep].min())}); "
                         f"use 0..{data.n_classes - 1}, or IGNORE_INDEX ({IGNORE_INDEX}) "
                         f"for pixels to leave out.")
    y = data.y_train.copy()
    y[~keep] = labels[~keep].astype(y.dtype)
    return dataclasses.replace(data, y_train=y, relabelled=_with_train(data.relabelled))


def _with_train(relabelled):
    """`relabelled` (a dataset's splits relabelled in memory) and "train"."""
    return tuple(dict.fromkeys((*relabelled, "train")))


def matched_epochs(epochs: int, n_train: int, n_reference: int, batch_size: int) -> int:
    """Epochs on `n_train` patches that take the optimizer steps of `epochs` on `n_reference`.

    Args:
        epochs: epochs of the reference run.
        n_train: training patches of this run.
        n_reference: training patches of the reference run.
        batch_size: batch size of both.

    Returns:
        The number of epochs, rounded to the nearest, at least 1.

    Example:

    >>> matched_epochs(100, n_train=218, n_reference=870, batch_size=16)  # 100 * 55 / 14
    393
    """
    for label, value in (("epochs", epochs), ("n_train", n_train),
                         ("n_reference", n_reference), ("batch_size", batch_size)):
        check_count(label, value)
    steps = lambda n: math.ceil(n / batch_size)  # noqa: E731
    return max(1, round(epochs * steps(n_reference) / steps(n_train)))
