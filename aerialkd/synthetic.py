"""Small synthetic datasets: the tiny Kaggle-layout one CI trains on, and a flat one
with its own classes, as a user's own data may look."""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from .classes import labels_to_rgb, read_classes, rgb_to_hex
from .files import DATASET_DIRNAME, FLAT_LAYOUTS


def make_tiny_dataset(
    path: os.PathLike | str,
    tile_sizes: Sequence[tuple[int, int]] = ((150, 136), (200, 170), (136, 200)),
    images_per_tile: int = 9,
    seed: int = 0,
) -> pathlib.Path:
    """Writes a small synthetic dataset in the Kaggle layout and palette.

    Each scene is land with roads (strips), buildings (blocks), water and
    vegetation (blobs), a little Unlabeled ground, and in the first tile a
    thin black unannotated strip, as in the real masks. Image colours depend
    on the class plus noise, so a model can learn the task in a few epochs.
    The output is deterministic for a seed.

    Args:
        path: folder to write; `Semantic segmentation dataset` is created
            inside it.
        tile_sizes: `(width, height)` of the images of each tile.
        images_per_tile: images per tile, named `image_part_001.jpg`, ...
        seed: random seed.

    Returns:
        `pathlib.Path` of the dataset root.

    Example:

    >>> root = make_tiny_dataset("tiny")
    >>> len(find_pairs(root))
    27
    """
    if images_per_tile < 1 or not tile_sizes:
        raise ValueError("Need at least one tile and one image per tile.")
    root = pathlib.Path(path) / DATASET_DIRNAME
    rng = np.random.default_rng(seed)
    shades = np.array(
        [[170, 90, 80], [200, 170, 120], [60, 60, 65], [40, 110, 45],
         [30, 80, 150], [150, 150, 150]], dtype=np.float64
    )
    for t, (width, height) in enumerate(tile_sizes, start=1):
        for folder in ("images", "masks"):
            (root / f"Tile {t}" / folder).mkdir(parents=True, exist_ok=True)
        for i in range(1, images_per_tile + 1):
            labels = _tiny_scene(height, width, rng)
            image = shades[labels] + rng.normal(0, 12, (height, width, 3))
            image = np.clip(image, 0, 255).astype(np.uint8)
            mask = labels_to_rgb(labels)
            if t == 1 and i == 1:
                mask[0, : width // 3] = 0  # an unannotated strip, as in real
            stem = f"image_part_{i:03d}"
            Image.fromarray(image).save(
                root / f"Tile {t}" / "images" / f"{stem}.jpg", quality=92
            )
            Image.fromarray(mask).save(root / f"Tile {t}" / "masks" / f"{stem}.png")
    return root


def _tiny_scene(height, width, rng):
    labels = np.full((height, width), 1, dtype=np.uint8)  # Land
    yy, xx = np.mgrid[:height, :width]
    for label, count, scale in ((4, 1, 0.22), (3, 3, 0.12)):  # Water, Veg.
        for _ in range(count):
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            ry, rx = rng.uniform(0.5, 1.0, 2) * scale * min(height, width)
            labels[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = label
    for _ in range(int(rng.integers(4, 8))):  # Buildings
        h, w = rng.integers(8, 24, 2)
        y, x = rng.integers(0, height - h), rng.integers(0, width - w)
        labels[y : y + h, x : x + w] = 0
    for axis in (0, 1):  # Roads
        for _ in range(int(rng.integers(1, 3))):
            size = (height, width)[axis]
            start, thick = int(rng.integers(0, size - 8)), int(rng.integers(5, 9))
            if axis == 0:
                labels[start : start + thick, :] = 2
            else:
                labels[:, start : start + thick] = 2
    y, x = rng.integers(0, height - 6), rng.integers(0, width - 6)
    labels[y : y + 6, x : x + 6] = 5  # Unlabeled
    return labels


def make_custom_dataset(
    path: os.PathLike | str,
    classes: Mapping[str, str] | None = None,
    n_images: int = 12,
    size: tuple[int, int] = (256, 192),
    mask_scale: float = 0.5,
    folders: tuple[str, str] = ("images", "masks"),
    image_suffix: str = ".JPG",
    mask_suffix: str = ".PNG",
    seed: int = 0,
) -> pathlib.Path:
    """Writes a small synthetic dataset in a flat layout, as your own data might be.

    Unlike `make_tiny_dataset` (the Kaggle layout and palette), this one is
    what a dataset of your own may look like: a flat layout with its own
    classes and palette, a `classes.json` in the Supervisely format,
    upper-case extensions, and masks drawn at a smaller scale than their
    images (read them with `resize_masks=True`). Each scene is the first
    class with rectangles of the others; image colours depend on the class
    plus noise, so a model learns it in a few epochs. The output is
    deterministic for a seed.

    Args:
        path: folder to write; it gets `classes.json` and the two folders.
        classes: dict `{name: "#rrggbb"}`; by default three classes,
            "Field", "Forest" and "Water".
        n_images: number of image/mask pairs, named `scene_001`, ...
        size: `(width, height)` of the images.
        mask_scale: scale of the masks, in (0, 1]; the image size times it
            must be whole pixels.
        folders: the image and mask folder names (see `FLAT_LAYOUTS`).
        image_suffix: extension of the JPEG images.
        mask_suffix: extension of the PNG masks.
        seed: random seed.

    Returns:
        `pathlib.Path` of the dataset folder (`path`).

    Example:

    >>> root = make_custom_dataset("mine")
    >>> data = load_dataset(root, 64, classes=root / "classes.json", resize_masks=True)
    resize_masks: rescaled 12 of 12 masks to the size of their images (nearest neighbour).
    >>> data.classes, data.n_classes
    (('Field', 'Forest', 'Water'), 3)
    """
    classes = {"Field": "#C8B464", "Forest": "#1E7832", "Water": "#1E64C8"} \
        if classes is None else classes
    names, palette = read_classes(classes)
    width, height = size
    small = (width * mask_scale, height * mask_scale)
    if not 0 < mask_scale <= 1 or any(s != int(s) or s < 4 for s in small):
        raise ValueError(f"mask_scale must be in (0, 1] and give whole masks of >= 4 "
                         f"pixels; {size} x {mask_scale} gives {small}.")
    if tuple(folders) not in FLAT_LAYOUTS:
        raise ValueError(f"folders must be one of {FLAT_LAYOUTS}, got {folders!r}.")
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}.")
    root = pathlib.Path(path)
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "classes.json").write_text(json.dumps(
        {"classes": [{"title": n, "color": rgb_to_hex(c)} for n, c in zip(names, palette)]},
        indent=1))
    rng = np.random.default_rng(seed)
    shades = palette * 0.6 + 50.0  # each class a duller shade of its mask colour
    mw, mh = int(small[0]), int(small[1])
    for i in range(1, n_images + 1):
        labels = np.zeros((mh, mw), np.uint8)
        for _ in range(int(rng.integers(3, 7))):
            h, w = rng.integers(max(1, mh // 8), max(2, mh // 2)), \
                rng.integers(max(1, mw // 8), max(2, mw // 2))
            y, x = rng.integers(0, mh - h + 1), rng.integers(0, mw - w + 1)
            labels[y : y + h, x : x + w] = rng.integers(1, len(names)) if len(names) > 1 else 0
        full = np.asarray(Image.fromarray(labels).resize((width, height), Image.NEAREST))
        image = np.clip(shades[full] + rng.normal(0, 12, (height, width, 3)), 0, 255)
        stem = f"scene_{i:03d}"
        Image.fromarray(image.astype(np.uint8)).save(
            root / folders[0] / f"{stem}{image_suffix}", format="JPEG", quality=92)
        Image.fromarray(labels_to_rgb(labels, palette)).save(
            root / folders[1] / f"{stem}{mask_suffix}", format="PNG")
    return root
