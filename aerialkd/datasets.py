"""`load_dataset` and `SegmentationDataset`: a dataset's patches, split by source image."""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from .classes import (
    CLASSES, ColorTable, IGNORE_COLORS, PALETTE, code_to_hex, hex_to_rgb, read_classes, rgb_code,
    rgb_to_hex, warn_extra_colors)
from .files import cut_patches, dataset_layout, decode_pair, find_pairs, read_image_sizes
from .splits import SPLITS, assign_splits
from .batches import PatchStream


@dataclasses.dataclass
class SegmentationDataset:
    """Patches of a segmentation dataset, split by source image.

    Attributes:
        x_train, x_val, x_test: uint8 images, `(N, P, P, 3)`; `None` for a
            dataset loaded with `in_memory=False` (read it with `stream`).
        y_train, y_val, y_test: uint8 labels, `(N, P, P)`, with
            `IGNORE_INDEX` for unannotated pixels; `None` likewise.
        sources: dict mapping "train", "val", "test" to the source images
            (names like "Tile 1/image_part_001", or file stems) of that split.
        files: dict mapping the same keys to `(image_path, mask_path)`
            pairs, to read whole images (e.g. for `predict_image`).
        patch_size: side of the patches.
        color_counts: dict "#RRGGBB" -> pixel count over all loaded masks
            (empty when not in memory: the masks are read batch by batch).
        extra_color_sources: dict "#RRGGBB" -> {source: pixel count} for
            colours outside the classes (those of `ignore_colors`).
        classes: class names, in label order.
        palette: uint8 array `(n_classes, 3)`, the classes' mask colours.
        labelled_classes: indices of the classes the mean IoU scores (all but
            an "Unlabeled"-like class).
        ignore_colors: the mask colours read as `IGNORE_INDEX`.
        image_sizes: dict split -> list of `(height, width)` of its images.
        resize_masks: whether masks of another size than their image are
            rescaled to it.
        resized_masks: how many masks were rescaled.
        extra_colors: the deprecated `extra_colors` policy, if one was given.
        relabelled: the splits whose labels in memory are not their masks on
            disk (`unlabelled_elsewhere`, `pseudo_labelled`): `whole_images`
            and `stream` refuse them, as the files would bring the masks back.

    Example:

    `load_dataset` makes one; `data` is the tiny dataset at 32 px.

    >>> data.x_train.shape, data.y_train.shape, data.n_classes
    ((420, 32, 32, 3), (420, 32, 32), 6)
    >>> data.classes[:2], data.labelled_classes, data.patch_count("val")
    (('Building', 'Land'), (0, 1, 2, 3, 4), 70)
    >>> data.sources["val"]  # whole source images: no patch of them in another split
    ['Tile 1/image_part_006', 'Tile 2/image_part_005', 'Tile 3/image_part_004']
    """

    x_train: np.ndarray | None
    y_train: np.ndarray | None
    x_val: np.ndarray | None
    y_val: np.ndarray | None
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    sources: dict[str, list[str]]
    files: dict[str, list[tuple[pathlib.Path, pathlib.Path]]]
    patch_size: int
    color_counts: dict[str, int]
    extra_color_sources: dict[str, dict[str, int]]
    classes: tuple[str, ...] = CLASSES
    palette: np.ndarray = dataclasses.field(default_factory=PALETTE.copy)
    labelled_classes: tuple[int, ...] = (0, 1, 2, 3, 4)
    ignore_colors: tuple[str, ...] = IGNORE_COLORS
    image_sizes: dict[str, list[tuple[int, int]]] = dataclasses.field(default_factory=dict)
    resize_masks: bool = False
    resized_masks: int = 0
    extra_colors: dict[str, int] | None = None
    relabelled: tuple[str, ...] = ()

    @property
    def n_classes(self) -> int:
        """Number of classes (the models' output channels)."""
        return len(self.classes)

    @property
    def in_memory(self) -> bool:
        """Whether the patches are held as arrays (`x_train`, ...)."""
        return self.x_train is not None

    def patch_count(self, split: str) -> int:
        """Number of patches of `split` ("train", "val" or "test").

        Those held in memory (`x_<split>`, which a user may have cut down with
        `dataclasses.replace`), else those its images' sizes give (streamed).
        """
        _check_split(split, self.files)
        patches = getattr(self, f"x_{split}")
        if patches is not None or split not in self.image_sizes:
            return len(patches)
        p = self.patch_size
        return sum((h // p) * (w // p) for h, w in self.image_sizes[split])

    def _check_on_disk(self, split):
        """Refuses to read `split` from its files if its labels were changed in memory."""
        _check_split(split, self.files)
        if split in self.relabelled:
            raise ValueError(
                f"The {split} labels of this dataset were changed in memory "
                f"(unlabelled_elsewhere or pseudo_labelled), and its files hold every "
                f"original mask: reading them would bring back the labels it hides or "
                f"replaces. Train on its patches in memory (data.x_{split}, "
                f"data.y_{split}; fit_segmentation with sampling='grid').")

    def whole_images(self, split: str = "train") -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Reads the split's whole images and labels again, for `RandomCropSequence`.

        The files are `files[split]`, read with the same classes and
        `ignore_colors`, so unannotated pixels are `IGNORE_INDEX` as in the
        patches.

        Args:
            split: "train", "val" or "test".

        Returns:
            `(images, labels)`: lists of uint8 `(H, W, 3)` and `(H, W)`
            arrays, in the order of `sources[split]`.

        Example:

        >>> images, labels = data.whole_images("train")
        >>> images[0].shape[:2] == labels[0].shape
        True
        """
        self._check_on_disk(split)
        table = self._color_table()
        pairs = [decode_pair(image, mask, table, self.resize_masks)
                 for image, mask in self.files[split]]
        return [image for image, _ in pairs], [labels for _, labels in pairs]

    def stream(
        self,
        split: str = "train",
        batch_size: int = 16,
        *,
        shuffle: bool | None = None,
        seed: int = 0,
        cache_size: int = 16,
        **kwargs: Any,
    ) -> PatchStream:
        """A `PatchStream` of the split: batches read from the files as needed.

        Args:
            split: "train", "val" or "test".
            batch_size: patches per batch.
            shuffle: a new order every epoch; by default for "train" only.
            seed: seed of the order.
            cache_size: decoded images kept in memory.
            **kwargs: passed to `keras.utils.PyDataset` (`workers`, ...).

        Returns:
            A `PatchStream` yielding `(images, labels)` batches.

        Example:

        Train with `model.fit(data.stream("train"),
        validation_data=data.stream("val"))`; on shuffling, see `PatchStream`.

        >>> images, labels = data.stream("train", batch_size=8)[0]
        >>> images.shape, labels.shape
        ((8, 32, 32, 3), (8, 32, 32))
        """
        self._check_on_disk(split)
        if not self.files[split]:
            raise ValueError(f"The {split} split holds no images; change the split "
                             f"arguments of load_dataset.")
        return PatchStream(
            self.files[split], self.patch_size, batch_size, palette=self.palette,
            ignore_colors=self.ignore_colors, resize_masks=self.resize_masks,
            shuffle=split == "train" if shuffle is None else shuffle, seed=seed,
            cache_size=cache_size, extra_colors=self.extra_colors, **kwargs)

    def summary(self) -> str:
        """Returns a short text: patches and source images per split."""
        lines = [f"Patches of {self.patch_size}x{self.patch_size}"
                 f"{'' if self.in_memory else ' (streamed from the files)'}:"]
        for split in SPLITS:
            lines.append(
                f"  {split:5s} {self.patch_count(split):5d} patches from "
                f"{len(self.sources[split])} source images"
            )
        return "\n".join(lines)

    def _color_table(self):
        return ColorTable(self.palette, self.ignore_colors, self.extra_colors)


def _check_split(split, files):
    if split not in files:
        raise ValueError(f"split must be one of {sorted(files)}, got {split!r}.")


def dataset_overview(data: SegmentationDataset) -> list[dict[str, Any]]:
    """Rows describing each tile: images per split, image sizes, patches.

    Args:
        data: a `SegmentationDataset`. A flat layout has one row, "images".

    Returns:
        List of dicts, one per tile, for `markdown_table`.

    Example:

    >>> print(markdown_table(dataset_overview(data)))
    | tile | train | val | test | sizes | patches |
    |---|---|---|---|---|---|
    | Tile 1 | 6 | 1 | 2 | 150x136 | 144 |
    | Tile 2 | 6 | 1 | 2 | 200x170 | 270 |
    | Tile 3 | 6 | 1 | 2 | 136x200 | 216 |
    """
    rows = {}
    for split in SPLITS:
        for name, (image_path, _) in zip(data.sources[split], data.files[split]):
            tile = name.split("/")[0] if "/" in name else "images"
            with Image.open(image_path) as image:
                width, height = image.size
            row = rows.setdefault(tile, {"tile": tile, "train": 0, "val": 0, "test": 0,
                                         "sizes": set(), "patches": 0})
            row[split] += 1
            row["sizes"].add(f"{width}x{height}")
            row["patches"] += (width // data.patch_size) * (height // data.patch_size)
    return [{**r, "sizes": ", ".join(sorted(r["sizes"]))} for r in rows.values()]


def class_shares(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Share of each of `n_classes` classes among the annotated pixels of `labels`.

    Example:

    >>> class_shares(np.array([0, 1, 1, 255]), n_classes=3).tolist()  # 255: unannotated
    [0.3333333333333333, 0.6666666666666666, 0.0]
    """
    counts = np.bincount(np.asarray(labels).ravel(), minlength=256)[:n_classes]
    return counts / max(counts.sum(), 1)


def load_dataset(
    root: os.PathLike | str,
    patch_size: int = 256,
    *,
    classes: Mapping[str, str] | os.PathLike | str | None = None,
    ignore_colors: str | Sequence[str] | None = None,
    unlabeled: str | None = "Unlabeled",
    resize_masks: bool = False,
    test_parts: Sequence[str] | None = None,
    val_per_tile: int | None = None,
    test_images: str | Sequence[str] | None = None,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
    group: str | None = None,
    seed: int = 0,
    in_memory: bool = True,
    extra_colors: Mapping[str, int] | None = None,
) -> SegmentationDataset:
    """Loads a segmentation dataset as patches, split by source image.

    Reads the Kaggle tile layout of the Dubai dataset or a flat one
    (`images/` + `masks/`, or `image/` + `mask/`), images and masks paired
    by file stem (see `find_pairs`). Masks are RGB images whose colours are
    the classes' (`classes`); a colour that is neither a class colour nor in
    `ignore_colors` is an error naming the file and the colour. Each image
    is cropped to multiples of `patch_size` (top-left corner kept) and cut
    into non-overlapping patches. The split is by *source image*, never by
    patch, so no test patch shares an image with a training patch:

    - Kaggle tiles: in every tile, the images named in `test_parts` go to
      test, then `val_per_tile` of the remaining images, drawn with `seed`,
      go to validation, the rest to training. On the real data at 256 this
      gives 1305 patches, 290 of them in the default test set. A tile's
      nine images are a 3x3 mosaic of one area, so its test images meet
      training images edge to edge (see `TEST_PARTS`): the test split is
      ground beside the training ground, not new places.
    - Flat folders: the images named in `test_images` (or a `test_fraction`
      of all images, drawn with `seed`) go to test, then a `val_fraction` of
      all images, drawn with `seed` from the rest, to validation. Images
      cut from one larger scene (`scene7_r0_c0.png`, `scene7_r0_c1.png`,
      ...) would put neighbouring ground in training and test: `group`
      keeps each scene's images in one split, and the fractions count
      scenes.

    With `in_memory=False` no pixel is read now (only the files' headers):
    `data.stream(split)` reads batches from the files as training asks for
    them, so the dataset may be larger than memory.

    Args:
        root: dataset folder (see `find_dataset_root`).
        patch_size: side of the square patches, a multiple of 16.
        classes: `None` for the Dubai classes and palette; a dict
            `{name: "#rrggbb"}` in label order; or the path of a
            Supervisely-style `classes.json` (see `read_classes`).
        ignore_colors: mask colours that mean "not annotated" and become
            `IGNORE_INDEX`; `None` for `IGNORE_COLORS` (black) unless black
            is a class colour; `()` to make every unknown colour an error.
        unlabeled: name of a class the mean IoU leaves out, as the Dubai
            "Unlabeled" (any case); `None`, or a name no class has, to score
            every class. Gives `labelled_classes`.
        resize_masks: rescale masks of another size than their image to it,
            with nearest-neighbour sampling (never a blended colour), and
            print how many; otherwise such a pair is an error naming both
            sizes. A mask that is not its image at another scale (another
            aspect, beyond rounding) is an error either way: stretched, it
            would move every class boundary.
        test_parts: Kaggle layout: image names (without extension) held out
            for testing in every tile; `TEST_PARTS` by default, `()` for no
            test split. A name that no tile holds is an error.
        val_per_tile: Kaggle layout: validation images drawn in every tile;
            1 by default.
        test_images: flat layout: stems of the images held out for testing.
        val_fraction: flat layout: share of the images drawn for
            validation; 0.1 by default (at least one image if > 0).
        test_fraction: flat layout: share of the images drawn for testing
            when `test_images` is not given; 0.1 by default.
        group: flat layout: a regular expression that finds an image's
            scene in its stem (its first group, else its whole match, e.g.
            `r"^(.+)_r\d+_c\d+$"` or `r"^[^_]+"`): images of one scene go
            to one split, `test_images` takes their whole scenes, and
            `val_fraction` and `test_fraction` are shares of the scenes. A
            stem it does not match is an error. `None`: every image is its
            own scene.
        seed: seed of the validation (and test fraction) draw.
        in_memory: hold every patch as arrays (`x_train`, ...); `False` to
            read batches from the files (`SegmentationDataset.stream`).
        extra_colors: deprecated; a dict "#RRGGBB" -> label, see
            `mask_to_labels`.

    Returns:
        A `SegmentationDataset`.

    Example:

    >>> data = load_dataset(make_tiny_dataset("tiny"), patch_size=64)
    >>> data.x_train.dtype, data.y_train.shape[1:], data.n_classes
    (dtype('uint8'), (64, 64), 6)
    >>> print(data.summary())
    Patches of 64x64:
      train    96 patches from 18 source images
      val      16 patches from 3 source images
      test     32 patches from 6 source images

    `make_custom_dataset` shows a flat folder with classes of its own.
    """
    if not isinstance(patch_size, int) or patch_size < 16 or patch_size % 16:
        raise ValueError(
            f"patch_size must be a multiple of 16 (the U-Net halves it four "
            f"times), at least 16; got {patch_size!r}."
        )
    names, palette = read_classes(classes)
    if extra_colors is not None:
        warn_extra_colors()
    table = ColorTable(palette, ignore_colors, extra_colors)
    labelled = _labelled_classes(names, unlabeled)
    root, folders = dataset_layout(root)
    pairs = find_pairs(root)
    stems = [name for name, _, _ in pairs]
    split_of = assign_splits(root, stems, flat=folders is not None, test_parts=test_parts,
                             val_per_tile=val_per_tile, test_images=test_images,
                             val_fraction=val_fraction, test_fraction=test_fraction,
                             group=group, seed=seed)
    sizes, resized = read_image_sizes(pairs, patch_size, resize_masks)
    if resized:
        print(f"resize_masks: rescaled {resized} of {len(pairs)} masks to the size of "
              f"their images (nearest neighbour).")
    sources = {s: [] for s in SPLITS}
    files = {s: [] for s in SPLITS}
    image_sizes = {s: [] for s in SPLITS}
    for (name, image_path, mask_path), size in zip(pairs, sizes):
        split = split_of[name]
        sources[split].append(name)
        files[split].append((image_path, mask_path))
        image_sizes[split].append(size)
    stacked = {f"{a}_{s}": None for s in SPLITS for a in "xy"}
    color_counts, extra_sources = {}, {}
    if in_memory:
        stacked = _read_patches(pairs, split_of, patch_size, table, resize_masks,
                                color_counts, extra_sources)
    return SegmentationDataset(
        **stacked,
        sources=sources,
        files=files,
        patch_size=patch_size,
        color_counts=dict(sorted(color_counts.items())),
        extra_color_sources=extra_sources,
        classes=names,
        palette=palette,
        labelled_classes=labelled,
        ignore_colors=table.ignore_colors,
        image_sizes=image_sizes,
        resize_masks=bool(resize_masks),
        resized_masks=resized,
        extra_colors=None if extra_colors is None else dict(extra_colors),
    )


def _labelled_classes(names, unlabeled):
    if unlabeled is None:
        return tuple(range(len(names)))
    labelled = tuple(i for i, name in enumerate(names)
                     if name.lower() != str(unlabeled).lower())
    if not labelled:
        raise ValueError(f"unlabeled={unlabeled!r} leaves no class to score in "
                         f"{names}; pass unlabeled=None.")
    return labelled


def _read_patches(pairs, split_of, patch_size, table, resize_masks, color_counts,
                  extra_sources):
    arrays = {s: ([], []) for s in SPLITS}
    palette_colors = {rgb_to_hex(c) for c in table.palette}
    extra_codes = {int(rgb_code(hex_to_rgb(c))): c for c in table.lookup
                   if c not in palette_colors}
    for name, image_path, mask_path in pairs:
        image, labels = decode_pair(image_path, mask_path, table, resize_masks)
        _count_colors(mask_path, name, extra_codes, color_counts, extra_sources)
        split = split_of[name]
        arrays[split][0].append(cut_patches(image, patch_size))
        arrays[split][1].append(cut_patches(labels, patch_size))
    stacked = {}
    for split, (xs, ys) in arrays.items():
        empty_x = np.zeros((0, patch_size, patch_size, 3), np.uint8)
        empty_y = np.zeros((0, patch_size, patch_size), np.uint8)
        stacked[f"x_{split}"] = np.concatenate(xs) if xs else empty_x
        stacked[f"y_{split}"] = np.concatenate(ys) if ys else empty_y
    return stacked


def _count_colors(mask_path, name, extra_codes, color_counts, extra_sources):
    mask = np.asarray(Image.open(mask_path).convert("RGB"))
    codes, counts = np.unique(rgb_code(mask), return_counts=True)
    for code, count in zip(codes, counts):
        color = code_to_hex(code)
        color_counts[color] = color_counts.get(color, 0) + int(count)
        if int(code) in extra_codes:
            extra_sources.setdefault(color, {})[name] = int(count)
