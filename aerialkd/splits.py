"""Which image goes to which split: by tile and image name, by share, by scene."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np

from .checks import check_count


TEST_PARTS = ("image_part_008", "image_part_009")
"""Images held out for testing in every tile (the project's fixed test set).

The nine images of a Dubai tile are a 3x3 mosaic of one area (`image_part_001`
to `_003` its top row), so these two, at the bottom right, meet training or
validation images edge to edge: the test split shares no pixel with training,
but it is ground beside the training ground, not new places.
"""


SPLITS = ("train", "val", "test")


def assign_splits(
    root: os.PathLike | str,
    stems: Sequence[str],
    *,
    flat: bool,
    test_parts: Sequence[str] | None = None,
    val_per_tile: int | None = None,
    test_images: str | Sequence[str] | None = None,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
    group: str | None = None,
    seed: int = 0,
) -> dict[str, str]:
    """The split ("train", "val" or "test") of each image of a dataset, by source image.

    The rules of `load_dataset`, which documents the arguments: in the
    Kaggle tile layout (`flat=False`, stems like "Tile 1/image_part_001")
    by `test_parts` and `val_per_tile`; in a flat one by `test_images`,
    `test_fraction` and `val_fraction`, over whole scenes with `group`. An
    argument of the other layout, or a split that leaves no image for
    training, is an error naming `root`.

    Args:
        root: the dataset's folder, for the messages.
        stems: the images' names, as `find_pairs` gives them.
        flat: whether the layout is flat (else Kaggle tiles).

    Returns:
        A dict from each stem to its split.

    Example:

    >>> stems = [f"Tile {t}/image_part_00{i}" for t in (1, 2) for i in range(1, 4)]
    >>> splits = assign_splits("tiles", stems, flat=False, test_parts=["image_part_003"])
    >>> [splits[s] for s in stems]
    ['train', 'val', 'test', 'train', 'val', 'test']
    >>> splits = assign_splits("flat", [f"scene{i}_r0_c{c}" for i in range(5) for c in (0, 1)],
    ...                        flat=True, group=r"^scene\d+", val_fraction=0.2, test_fraction=0.2)
    >>> sorted(splits.values()).count("test")  # one scene of five: both its images
    2
    """
    try:
        check_count("seed", seed, minimum=0)
    except ValueError as error:
        raise ValueError(f"{error} It fixes which images go to validation (and to test in a "
                         f"flat layout), and a split drawn afresh at each load would test a "
                         f"model on images it trained on.") from None
    if not flat:
        if group is not None:
            raise ValueError(f"{root} is in the Kaggle tile layout, split by image name "
                             f"within each tile (test_parts, val_per_tile); group applies "
                             f"to flat layouts. Leave it out.")
        return _split_tiles(root, stems, test_parts, val_per_tile, test_images,
                            val_fraction, test_fraction, seed)
    return _split_flat(root, stems, test_parts, val_per_tile, test_images,
                       val_fraction, test_fraction, seed, group)


def _split_tiles(root, names, test_parts, val_per_tile, test_images, val_fraction,
                 test_fraction, seed):
    given = {k: v for k, v in (("test_images", test_images), ("val_fraction", val_fraction),
                               ("test_fraction", test_fraction)) if v is not None}
    if given:
        raise ValueError(
            f"{root} is in the Kaggle tile layout, split by test_parts and "
            f"val_per_tile; {sorted(given)} apply to flat layouts (images/ + masks/). "
            f"Leave them out, or pass test_parts=... and val_per_tile=... instead.")
    test_parts = TEST_PARTS if test_parts is None else (
        (test_parts,) if isinstance(test_parts, str) else tuple(test_parts))
    parts = sorted({name.split("/")[1] for name in names})
    unknown = sorted(set(test_parts) - set(parts))
    if unknown:
        raise ValueError(
            f"test_parts names {unknown[:5]}, which no tile of {root} holds (its "
            f"images are named like {parts[:3]}); give image names without extension "
            f"or folder, or test_parts=() for no test split.")
    val_per_tile = 1 if val_per_tile is None else val_per_tile
    val_per_tile = check_count("val_per_tile", val_per_tile, minimum=0)
    split_of = _split_by_source(names, test_parts, val_per_tile, seed)
    if "train" not in split_of.values():
        raise ValueError(
            f"{root} holds {len(names)} images: test_parts={list(test_parts)} and "
            f"val_per_tile={val_per_tile} leave none for training. Lower val_per_tile "
            f"or hold out fewer test_parts.")
    return split_of


def _split_by_source(names, test_parts, val_per_tile, seed):
    rng = np.random.default_rng(seed)
    split_of = {}
    by_tile = {}
    for name in names:
        by_tile.setdefault(name.split("/")[0], []).append(name)
    for tile, members in by_tile.items():
        rest = [n for n in members if n.split("/")[1] not in test_parts]
        for n in members:
            if n not in rest:
                split_of[n] = "test"
        chosen = set(rng.choice(rest, size=min(val_per_tile, len(rest)),
                                replace=False)) if rest else set()
        for n in rest:
            split_of[n] = "val" if n in chosen else "train"
    return split_of


def _split_flat(root, names, test_parts, val_per_tile, test_images, val_fraction,
                test_fraction, seed, group=None):
    given = {k: v for k, v in (("test_parts", test_parts), ("val_per_tile", val_per_tile))
             if v is not None}
    if given:
        raise ValueError(
            f"{root} is a flat layout (no 'Tile N' folders); {sorted(given)} apply to "
            f"the Kaggle tiles. Use test_images=[stems], test_fraction=... and "
            f"val_fraction=... instead.")
    if test_images is not None and test_fraction is not None:
        raise ValueError("Pass test_images (the test stems) or test_fraction, not both.")
    val_fraction = 0.1 if val_fraction is None else val_fraction
    test_fraction = (0.0 if test_images is not None else
                     0.1 if test_fraction is None else test_fraction)
    for label, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
            raise ValueError(f"{label} must be a number in [0, 1), got {fraction!r}.")
    rng = np.random.default_rng(seed)
    scene_of = _scenes(root, names, group)
    scenes = list(dict.fromkeys(scene_of[n] for n in names))  # in the images' order
    what = "scenes" if group is not None else "images"
    if test_images is not None:
        test_images = [test_images] if isinstance(test_images, str) else list(test_images)
        unknown = sorted(set(test_images) - set(names))
        if unknown:
            raise ValueError(
                f"test_images names {unknown[:5]}, not images of {root} (the stems "
                f"there are like {names[:3]}); give file names without extension.")
        test = {scene_of[n] for n in test_images}
    else:
        test = set(rng.permutation(scenes)[: _fraction_count(test_fraction, len(scenes))])
    rest = [n for n in scenes if n not in test]
    n_val = _fraction_count(val_fraction, len(scenes))
    if len(rest) - n_val < 1:
        raise ValueError(
            f"{root} holds {len(scenes)} {what}: {len(test)} for test and {n_val} for "
            f"validation leave none for training. Lower test_fraction or val_fraction.")
    val = set(rng.permutation(rest)[:n_val]) if n_val else set()
    return {n: "test" if scene_of[n] in test else "val" if scene_of[n] in val else "train"
            for n in names}


def _scenes(root, names, group):
    """Each image's scene: `group`'s first group (or whole match) in its stem, or itself."""
    if group is None:
        return {n: n for n in names}
    try:
        pattern = re.compile(group)
    except (re.error, TypeError) as error:
        raise ValueError(f"group must be a regular expression, got {group!r}: "
                         f"{error}.") from error
    scene_of, unmatched = {}, []
    for name in names:
        found = pattern.search(name)
        if found is None:
            unmatched.append(name)
        else:
            scene_of[name] = found.group(1) if pattern.groups else found.group(0)
    if unmatched:
        raise ValueError(f"group {group!r} finds no scene in the stems {unmatched[:5]} "
                         f"of {root}: change the pattern to match every image's name.")
    return scene_of


def _fraction_count(fraction, n):
    return 0 if fraction == 0 else max(1, int(round(fraction * n)))
