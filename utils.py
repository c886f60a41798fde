"""Shared logic for the aerial-segmentation distillation notebooks.

Every notebook of the series imports this one module: it loads the Dubai
aerial dataset (or writes a tiny synthetic one in the same layout), builds the
U-Net teacher and its half-width student, trains them, distils the teacher
into the student with `Distiller`, evaluates segmentations and draws the
figures. It is written against `keras.ops`, so it runs on the TensorFlow and
the JAX backends alike.

Sections:

1. Data: classes and palettes, layouts, loading, splitting, batches (in
   memory or streamed from the files), the tiny and the custom datasets.
2. Models: the U-Net with on-device augmentation, its size and FLOPs.
3. Losses and distillation: segmentation loss, KD losses, `Distiller`.
4. Training: `fit_segmentation` with checkpoints and resumption.
5. Evaluation: metrics, PR curves, calibration, whole-image prediction,
   whole scenes from raster files (GeoTIFF in, label GeoTIFF and GeoJSON out).
6. Plotting.
7. Notebook runs: profiles, artifacts, the Colab setup.
"""

import collections
import concurrent.futures
import contextlib
import csv
import dataclasses
import functools
import itertools
import json
import math
import os
import pathlib
import platform
import re
import sys
import threading
import time
import warnings
import zipfile

import keras
import numpy as np
from keras import layers
from keras import ops
from PIL import Image

# =============================================================================
# 1. Data
# =============================================================================

CLASSES = ("Building", "Land", "Road", "Vegetation", "Water", "Unlabeled")
"""Class names of the Dubai dataset, in the order of the label indices."""

PALETTE = np.array(
    [
        [0x3C, 0x10, 0x98],  # Building   #3C1098
        [0x84, 0x29, 0xF6],  # Land       #8429F6
        [0x6E, 0xC1, 0xE4],  # Road       #6EC1E4
        [0xFE, 0xDD, 0x3A],  # Vegetation #FEDD3A
        [0xE2, 0xA9, 0x29],  # Water      #E2A929
        [0x9B, 0x9B, 0x9B],  # Unlabeled  #9B9B9B
    ],
    dtype=np.uint8,
)
"""The mask colours really used by the Dubai masks, one row per class.

The dataset's own `classes.json` lists other colours, which no mask uses.
"""

LABELLED_CLASSES = tuple(i for i, name in enumerate(CLASSES) if name != "Unlabeled")
"""Classes the headline mean IoU averages over: all but Unlabeled (`miou5`)."""

IGNORE_INDEX = 255
"""Label of pixels that carry no class.

They count in no label loss (`SegmentationLoss`) and no metric. The KD term of
`Distiller` does use them: there the teacher's prediction is the only target.
"""

IGNORE_COLORS = ("#000000",)
"""Default mask colours that mean "not annotated": they become `IGNORE_INDEX`.

The real masks hold one colour outside `PALETTE`, black (#000000): 552,156
pixels (0.56 %) in 9 of the 72 masks, 545,723 of them in
`Tile 8/image_part_003` and the rest in thin strips along image borders. The
image under them shows ordinary ground: they are regions the annotators never
painted. They are therefore not "Unlabeled" (#9B9B9B, a class the annotators
did paint) but *unannotated*, and map to `IGNORE_INDEX`. Any other colour
outside the classes raises an error naming the file. The loaders take
`ignore_colors=()` to make black an error too; a class whose colour is black
keeps it (the default leaves class colours alone).
"""

EXTRA_COLORS = {"#000000": IGNORE_INDEX}
"""Deprecated: the `extra_colors` policy, replaced by `ignore_colors`."""

DATASET_DIRNAME = "Semantic segmentation dataset"
KAGGLE_HANDLE = "humansintheloop/semantic-segmentation-of-aerial-imagery"
TEST_PARTS = ("image_part_008", "image_part_009")
"""Images held out for testing in every tile (the project's fixed test set)."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
"""File extensions of images and masks the loaders read, in any case."""

FLAT_LAYOUTS = (("images", "masks"), ("image", "mask"))
"""Folder pairs of a flat dataset: images and masks paired by file stem."""


def hex_to_rgb(color):
    """Converts "#RRGGBB" to a tuple of three ints."""
    text = str(color).lstrip("#")
    if len(text) != 6 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise ValueError(f"Expected a colour like '#3C1098', got {color!r}.")
    return tuple(int(text[i : i + 2], 16) for i in (0, 2, 4))


def rgb_to_hex(rgb):
    """Converts three ints to "#RRGGBB"."""
    return "#{:02X}{:02X}{:02X}".format(*(int(c) for c in rgb))


def read_classes(classes=None):
    """Class names and palette of a dataset, from a dict or a `classes.json`.

    The label of a class is its position: the first class is label 0. Each
    class has one mask colour, and no two classes share one.

    Args:
        classes: `None` for the Dubai classes (`CLASSES`, `PALETTE`); a dict
            `{name: "#rrggbb"}` in label order; or the path of a
            Supervisely-style `classes.json`,
            `{"classes": [{"title": name, "color": "#rrggbb"}, ...]}`.

    Returns:
        `(names, palette)`: a tuple of class names and a uint8 array
        `(n_classes, 3)`.

    Example:

    >>> names, palette = read_classes({"Field": "#C8A050", "Water": "#1E64C8"})
    >>> names, palette[1].tolist()
    (('Field', 'Water'), [30, 100, 200])
    """
    if classes is None:
        return CLASSES, PALETTE.copy()
    source = "classes"
    if isinstance(classes, (str, os.PathLike)):
        source = str(classes)
        classes = _read_classes_json(pathlib.Path(classes))
    if not isinstance(classes, dict) or not classes:
        raise ValueError(
            f"classes must be None (the Dubai classes), a non-empty dict "
            f"{{name: '#rrggbb'}} in label order, or the path of a classes.json; "
            f"got {classes!r}."
        )
    if len(classes) >= IGNORE_INDEX:
        raise ValueError(f"{source}: {len(classes)} classes; at most "
                         f"{IGNORE_INDEX - 1} fit in uint8 labels next to IGNORE_INDEX.")
    names, rows, seen = [], [], {}
    for name, color in classes.items():
        try:
            rgb = hex_to_rgb(color)
        except ValueError:
            raise ValueError(f"{source}: class {name!r} has colour {color!r}; expected "
                             f"a colour like '#3C1098'.") from None
        code = rgb_to_hex(rgb)
        if code in seen:
            raise ValueError(f"{source}: classes {seen[code]!r} and {name!r} share the "
                             f"colour {code}; each class needs its own mask colour.")
        seen[code] = name
        names.append(str(name))
        rows.append(rgb)
    return tuple(names), np.array(rows, dtype=np.uint8)


def _read_classes_json(path):
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"classes file {path} does not exist; pass the path of a "
                                f"classes.json or a dict {{name: '#rrggbb'}}.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}.") from None
    entries = content.get("classes") if isinstance(content, dict) else None
    if not isinstance(entries, list) or not all(
            isinstance(e, dict) and "title" in e and "color" in e for e in entries):
        raise ValueError(
            f"{path}: expected the Supervisely layout "
            f"{{\"classes\": [{{\"title\": name, \"color\": \"#rrggbb\"}}, ...]}}.")
    classes = {}
    for entry in entries:
        if entry["title"] in classes:
            raise ValueError(f"{path}: class {entry['title']!r} is listed twice.")
        classes[entry["title"]] = entry["color"]
    return classes


def mask_to_labels(mask, palette=None, ignore_colors=None, source="mask", *,
                   extra_colors=None):
    """Maps an RGB mask to integer labels through a palette.

    Every pixel must carry a colour of `palette` or of `ignore_colors`;
    anything else raises, so no colour is ever silently relabelled.

    Args:
        mask: uint8 array of shape `(H, W, 3)`.
        palette: uint8 array `(n_classes, 3)`, one colour per label
            (`PALETTE` if `None`).
        ignore_colors: colours ("#RRGGBB") that become `IGNORE_INDEX`;
            `None` for `IGNORE_COLORS` less any colour of `palette`.
        source: name of the mask, used in error messages.
        extra_colors: deprecated; a dict "#RRGGBB" -> class index or
            `IGNORE_INDEX`, used in place of `ignore_colors`.

    Returns:
        uint8 array of shape `(H, W)`: class indices, or `IGNORE_INDEX`.

    Example:

    >>> labels = mask_to_labels(np.array([[[0x3C, 0x10, 0x98]]], np.uint8))
    >>> int(labels[0, 0])  # Building
    0
    """
    mask = np.asarray(mask)
    if mask.ndim != 3 or mask.shape[-1] != 3:
        raise ValueError(
            f"{source}: expected an RGB mask of shape (H, W, 3), "
            f"got shape {mask.shape}."
        )
    if extra_colors is not None:
        _warn_extra_colors()
    return _ColorTable(palette, ignore_colors, extra_colors).labels(mask, source)


class _ColorTable:
    """Colour -> label lookup of one palette and ignore policy, vectorised."""

    def __init__(self, palette=None, ignore_colors=None, extra_colors=None):
        palette = PALETTE if palette is None else np.asarray(palette, dtype=np.uint8)
        if palette.ndim != 2 or palette.shape[1] != 3 or not len(palette):
            raise ValueError(f"palette must be a uint8 array (n_classes, 3), got shape "
                             f"{palette.shape}.")
        self.palette = palette
        class_colors = [rgb_to_hex(c) for c in palette]
        lookup = {color: i for i, color in enumerate(class_colors)}
        if extra_colors is not None:  # deprecated; the public functions warn
            for color, label in extra_colors.items():
                if label != IGNORE_INDEX and not 0 <= label < len(palette):
                    raise ValueError(
                        f"extra_colors maps {color} to {label}; labels must be class "
                        f"indices 0..{len(palette) - 1} or IGNORE_INDEX ({IGNORE_INDEX}).")
                lookup[rgb_to_hex(hex_to_rgb(color))] = label
            self.ignore_colors = tuple(c for c, label in lookup.items()
                                       if label == IGNORE_INDEX)
        else:
            if ignore_colors is None:
                ignore_colors = [c for c in IGNORE_COLORS if c not in lookup]
            elif isinstance(ignore_colors, str):
                ignore_colors = (ignore_colors,)
            for color in ignore_colors:
                color = rgb_to_hex(hex_to_rgb(color))
                if color in lookup and lookup[color] != IGNORE_INDEX:
                    raise ValueError(
                        f"ignore_colors lists {color}, the colour of class "
                        f"{lookup[color]}; drop it from ignore_colors or give the class "
                        f"another colour.")
                lookup[color] = IGNORE_INDEX
            self.ignore_colors = tuple(rgb_to_hex(hex_to_rgb(c)) for c in ignore_colors)
        self.lookup = lookup
        codes = np.array([_rgb_code(np.array(hex_to_rgb(c))) for c in lookup], np.int64)
        order = np.argsort(codes)
        self._codes = codes[order]
        self._labels = np.array(list(lookup.values()), np.uint8)[order]

    def labels(self, mask, source):
        code = _rgb_code(mask)
        index = np.minimum(np.searchsorted(self._codes, code), len(self._codes) - 1)
        known = self._codes[index] == code
        if not known.all():
            values, counts = np.unique(code[~known], return_counts=True)
            unknown = {_code_to_hex(v): int(n) for v, n in list(zip(values, counts))[:5]}
            raise ValueError(
                f"{source}: colours outside the classes: {unknown} (colour: pixel "
                f"count). Known colours are the class colours "
                f"{[rgb_to_hex(c) for c in self.palette]} and ignore_colors "
                f"{list(self.ignore_colors)}. Add the colour to `classes` if it is a "
                f"class, to `ignore_colors` if it means 'not annotated', or fix the mask."
            )
        return self._labels[index]


def _rgb_code(rgb):
    rgb = np.asarray(rgb, dtype=np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _code_to_hex(code):
    code = int(code)
    return rgb_to_hex(((code >> 16) & 255, (code >> 8) & 255, code & 255))


def labels_to_rgb(labels, palette=None):
    """Colours a label map with a palette (ignored pixels black).

    Args:
        labels: integer array of shape `(..., H, W)`.
        palette: uint8 array `(n_classes, 3)`; `PALETTE` if `None`.

    Returns:
        uint8 array of shape `(..., H, W, 3)`.

    Example:

    >>> labels_to_rgb(np.array([[1]]))[0, 0].tolist()
    [132, 41, 246]
    """
    palette = PALETTE if palette is None else np.asarray(palette, dtype=np.uint8)
    labels = np.asarray(labels)
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = palette
    return table[labels.astype(np.uint8)]


def find_dataset_root(path):
    """Finds the folder of a dataset at or below `path`.

    Two layouts are recognised: the Kaggle tiles (`Tile N/images`,
    `Tile N/masks`, under `Semantic segmentation dataset`) and flat folders
    (`images/` with `masks/`, or `image/` with `mask/`; see `FLAT_LAYOUTS`).

    Args:
        path: the dataset folder itself, or any folder above it (as
            `kagglehub` or an unpacked zip leave it).

    Returns:
        `pathlib.Path` of the folder that holds the `Tile N` folders, or the
        image and mask folders.
    """
    return _dataset_layout(path)[0]


def _dataset_layout(path):
    """`(root, folders)`: folders is `None` for the tiles, else `(images, masks)`."""
    path = pathlib.Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"Dataset folder {str(path)!r} does not exist. Download the "
            f"dataset with `utils.download_dataset()` or pass the folder "
            f"that holds '{DATASET_DIRNAME}/Tile 1/images', or your own folder "
            f"holding 'images/' and 'masks/'."
        )
    if not path.is_dir():
        raise NotADirectoryError(
            f"{str(path)!r} is a file, not a folder. For a zip archive use "
            f"`utils.download_dataset(source=...)`, which unpacks it."
        )
    if any(path.glob("Tile */images")):
        return path, None
    for folders in FLAT_LAYOUTS:
        if all((path / f).is_dir() for f in folders):
            return path, folders
    candidates = sorted(
        p.parent.parent for p in path.glob("**/Tile */images") if p.is_dir()
    )
    if candidates:
        return candidates[0], None
    for folders in FLAT_LAYOUTS:
        below = sorted(p for p in path.iterdir()
                       if p.is_dir() and all((p / f).is_dir() for f in folders))
        if below:
            return below[0], folders
    found = sorted(p.name for p in path.iterdir())[:10]
    raise FileNotFoundError(
        f"No dataset found in {str(path)!r}: expected the Kaggle layout "
        f"'{DATASET_DIRNAME}/Tile N/images/*.jpg' and "
        f"'{DATASET_DIRNAME}/Tile N/masks/*.png', or a flat layout "
        f"'images/' + 'masks/' (or 'image/' + 'mask/') with files paired by "
        f"name; found {found if found else 'an empty folder'}."
    )


def find_pairs(root):
    """Lists the (image, mask) file pairs of a dataset, paired by file stem.

    Images and masks may be `.jpg`, `.jpeg`, `.png`, `.tif` or `.tiff`, in
    any case (`IMAGE_SUFFIXES`); other files are skipped. An image without a
    mask, or a mask without an image, is an error naming it.

    Args:
        root: dataset folder (see `find_dataset_root`).

    Returns:
        List of `(name, image_path, mask_path)`. In the Kaggle layout names
        look like "Tile 1/image_part_001", sorted by tile number and name; in
        a flat layout a name is the file stem, and the list is sorted by it.

    Example:

    >>> [name for name, _, _ in find_pairs("my_data")][:2]  # my_data/images, my_data/masks
    ['field_001', 'field_002']
    """
    root, folders = _dataset_layout(root)
    if folders is not None:
        pairs = [(stem, image, mask) for stem, image, mask in
                 _pair_by_stem(root / folders[0], root / folders[1], root.name)]
        if not pairs:
            raise FileNotFoundError(
                f"{root / folders[0]} holds no images: expected files ending in "
                f"{', '.join(IMAGE_SUFFIXES)} (any case), with masks of the same "
                f"names in {root / folders[1]}.")
        return pairs
    pairs = []
    tiles = sorted(
        (p for p in root.glob("Tile *") if p.is_dir()), key=_tile_number
    )
    for tile in tiles:
        for stem, image, mask in _pair_by_stem(tile / "images", tile / "masks", tile.name):
            pairs.append((f"{tile.name}/{stem}", image, mask))
    if not pairs:
        raise FileNotFoundError(
            f"{root} holds 'Tile N' folders but no image/mask pairs: expected "
            f"'Tile N/images/*.jpg' with matching 'Tile N/masks/*.png'."
        )
    return pairs


def _pair_by_stem(image_dir, mask_dir, where):
    images, masks = _files_by_stem(image_dir), _files_by_stem(mask_dir)
    missing_masks = sorted(set(images) - set(masks))
    missing_images = sorted(set(masks) - set(images))
    if missing_masks:
        raise FileNotFoundError(
            f"{images[missing_masks[0]]} has no mask: expected a file named "
            f"'{missing_masks[0]}' with one of the extensions {IMAGE_SUFFIXES} in "
            f"{mask_dir} ({len(missing_masks)} image(s) without a mask in {where}). "
            f"Add the mask or remove the image."
        )
    if missing_images:
        raise FileNotFoundError(
            f"{masks[missing_images[0]]} has no image: expected a file named "
            f"'{missing_images[0]}' with one of the extensions {IMAGE_SUFFIXES} in "
            f"{image_dir} ({len(missing_images)} mask(s) without an image in {where}). "
            f"Add the image or remove the mask."
        )
    return [(stem, images[stem], masks[stem]) for stem in sorted(images)]


def _files_by_stem(folder):
    files = {}
    if not folder.is_dir():
        return files
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if path.stem in files:
            raise ValueError(
                f"{files[path.stem]} and {path} have the same name; images and masks "
                f"are paired by name, so keep one of them."
            )
        files[path.stem] = path
    return files


def _tile_number(path):
    digits = "".join(c for c in path.name if c.isdigit())
    return (int(digits) if digits else 0, path.name)


def read_pair(image_path, mask_path, palette=None, ignore_colors=None, *,
              resize_masks=False, extra_colors=None):
    """Reads one image and its mask as arrays, checking that they agree.

    Palette ("P") and opaque RGBA masks are converted to RGB; greyscale and
    semi-transparent masks are refused, since their colours can't be trusted
    to be the palette's.

    Args:
        image_path: path of the image.
        mask_path: path of the mask.
        palette: class colours, see `mask_to_labels`.
        ignore_colors: colours that become `IGNORE_INDEX`, see
            `mask_to_labels`.
        resize_masks: rescale a mask whose size differs from its image's to
            the image, with nearest-neighbour sampling (no new colours);
            otherwise such a pair is an error.
        extra_colors: deprecated, see `mask_to_labels`.

    Returns:
        `(image, labels)`: uint8 `(H, W, 3)` and uint8 `(H, W)`.

    Example:

    >>> image, labels = read_pair(*data.files["test"][0])
    """
    if extra_colors is not None:
        _warn_extra_colors()
    table = _ColorTable(palette, ignore_colors, extra_colors)
    return _read_pair(image_path, mask_path, table, resize_masks)


def _warn_extra_colors():
    warnings.warn("extra_colors is deprecated: pass ignore_colors (the colours that "
                  "become IGNORE_INDEX), and give every class its colour in classes.",
                  DeprecationWarning, stacklevel=3)


def _read_pair(image_path, mask_path, table, resize_masks=False):
    image = _read_image(image_path).convert("RGB")
    mask = _read_image(mask_path)
    if mask.mode in ("L", "LA", "I", "I;16", "F", "1"):
        raise ValueError(
            f"{mask_path}: mask is greyscale (mode {mask.mode}); masks must be "
            f"RGB images in the dataset palette. Re-export it in colour."
        )
    if mask.mode in ("RGBA", "PA") or "transparency" in mask.info:
        rgba = np.asarray(mask.convert("RGBA"))
        if (rgba[..., 3] != 255).any():
            raise ValueError(
                f"{mask_path}: mask has transparent pixels "
                f"({int((rgba[..., 3] != 255).sum())} of them); masks must be "
                f"opaque. Flatten it onto the right class colours."
            )
    mask = mask.convert("RGB")
    if image.size != mask.size:
        if not resize_masks:
            raise _size_mismatch(image_path, image.size, mask_path, mask.size)
        mask = mask.resize(image.size, Image.NEAREST)
    return np.asarray(image), table.labels(np.asarray(mask), str(mask_path))


def _size_mismatch(image_path, image_size, mask_path, mask_size):
    return ValueError(
        f"Image {image_path} is {image_size[0]}x{image_size[1]} but its mask "
        f"{mask_path} is {mask_size[0]}x{mask_size[1]} (width x height). They must "
        f"match pixel for pixel; pass resize_masks=True to rescale such masks to "
        f"their images (nearest neighbour, no new colours)."
    )


def _read_image(path):
    try:
        image = Image.open(path)
        image.load()
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(
            f"Cannot read {path}: {error}. The file is truncated or not an "
            f"image; download the dataset again or remove this pair."
        ) from error
    return image


def _image_sizes(pairs, patch_size, resize_masks):
    """Heights and widths of the images from their headers; checks the masks' sizes."""
    sizes, resized = [], 0
    for _, image_path, mask_path in pairs:
        try:
            with Image.open(image_path) as image, Image.open(mask_path) as mask:
                image_size, mask_size = image.size, mask.size
        except (OSError, SyntaxError, ValueError):
            _read_image(image_path)  # raises, naming the file
            _read_image(mask_path)
            raise
        if image_size != mask_size:
            if not resize_masks:
                raise _size_mismatch(image_path, image_size, mask_path, mask_size)
            resized += 1
        if min(image_size) < patch_size:
            raise ValueError(
                f"{image_path} is {image_size[0]}x{image_size[1]}, smaller "
                f"than one {patch_size}x{patch_size} patch. Use a smaller "
                f"patch_size or remove this image."
            )
        sizes.append((image_size[1], image_size[0]))
    return sizes, resized


def cut_patches(array, patch_size):
    """Crops to multiples of `patch_size` and cuts non-overlapping patches.

    The crop keeps the top-left corner.

    Args:
        array: array of shape `(H, W, ...)`.
        patch_size: side of the square patches.

    Returns:
        Array of shape `(N, patch_size, patch_size, ...)`, rows first.
    """
    rows, cols = array.shape[0] // patch_size, array.shape[1] // patch_size
    cropped = array[: rows * patch_size, : cols * patch_size]
    patches = cropped.reshape(
        rows, patch_size, cols, patch_size, *array.shape[2:]
    ).swapaxes(1, 2)
    return patches.reshape(rows * cols, patch_size, patch_size, *array.shape[2:])


SPLITS = ("train", "val", "test")


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
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    sources: dict
    files: dict
    patch_size: int
    color_counts: dict
    extra_color_sources: dict
    classes: tuple = CLASSES
    palette: np.ndarray = dataclasses.field(default_factory=PALETTE.copy)
    labelled_classes: tuple = (0, 1, 2, 3, 4)
    ignore_colors: tuple = IGNORE_COLORS
    image_sizes: dict = dataclasses.field(default_factory=dict)
    resize_masks: bool = False
    resized_masks: int = 0
    extra_colors: dict = None

    @property
    def n_classes(self):
        """Number of classes (the models' output channels)."""
        return len(self.classes)

    @property
    def in_memory(self):
        """Whether the patches are held as arrays (`x_train`, ...)."""
        return self.x_train is not None

    def patch_count(self, split):
        """Number of patches of `split` ("train", "val" or "test")."""
        _check_split(split, self.files)
        if split in self.image_sizes:
            p = self.patch_size
            return sum((h // p) * (w // p) for h, w in self.image_sizes[split])
        return len(getattr(self, f"x_{split}"))

    def whole_images(self, split="train"):
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
        _check_split(split, self.files)
        table = self._color_table()
        pairs = [_read_pair(image, mask, table, self.resize_masks)
                 for image, mask in self.files[split]]
        return [image for image, _ in pairs], [labels for _, labels in pairs]

    def stream(self, split="train", batch_size=16, *, shuffle=None, seed=0, cache_size=16,
               **kwargs):
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

        >>> model.fit(data.stream("train"), validation_data=data.stream("val"))
        """
        _check_split(split, self.files)
        if not self.files[split]:
            raise ValueError(f"The {split} split holds no images; change the split "
                             f"arguments of load_dataset.")
        return PatchStream(
            self.files[split], self.patch_size, batch_size, palette=self.palette,
            ignore_colors=self.ignore_colors, resize_masks=self.resize_masks,
            shuffle=split == "train" if shuffle is None else shuffle, seed=seed,
            cache_size=cache_size, extra_colors=self.extra_colors, **kwargs)

    def summary(self):
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
        return _ColorTable(self.palette, self.ignore_colors, self.extra_colors)


AerialDataset = SegmentationDataset
"""The former name of `SegmentationDataset`."""


def _check_split(split, files):
    if split not in files:
        raise ValueError(f"split must be one of {sorted(files)}, got {split!r}.")


def dataset_overview(data):
    """Rows describing each tile: images per split, image sizes, patches.

    Args:
        data: a `SegmentationDataset`. A flat layout has one row, "images".

    Returns:
        List of dicts, one per tile, for `markdown_table`.
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


def class_shares(labels, n_classes=len(CLASSES)):
    """Share of each class among the annotated pixels of `labels`."""
    counts = np.bincount(np.asarray(labels).ravel(), minlength=256)[:n_classes]
    return counts / max(counts.sum(), 1)


def load_dataset(
    root,
    patch_size=256,
    *,
    classes=None,
    ignore_colors=None,
    unlabeled="Unlabeled",
    resize_masks=False,
    test_parts=None,
    val_per_tile=None,
    test_images=None,
    val_fraction=None,
    test_fraction=None,
    seed=0,
    in_memory=True,
    extra_colors=None,
):
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
      gives 1305 patches, 290 of them in the default test set.
    - Flat folders: the images named in `test_images` (or a `test_fraction`
      of all images, drawn with `seed`) go to test, then a `val_fraction` of
      all images, drawn with `seed` from the rest, to validation.

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
            sizes.
        test_parts: Kaggle layout: image names (without extension) held out
            for testing in every tile; `TEST_PARTS` by default.
        val_per_tile: Kaggle layout: validation images drawn in every tile;
            1 by default.
        test_images: flat layout: stems of the images held out for testing.
        val_fraction: flat layout: share of the images drawn for
            validation; 0.1 by default (at least one image if > 0).
        test_fraction: flat layout: share of the images drawn for testing
            when `test_images` is not given; 0.1 by default.
        seed: seed of the validation (and test fraction) draw.
        in_memory: hold every patch as arrays (`x_train`, ...); `False` to
            read batches from the files (`SegmentationDataset.stream`).
        extra_colors: deprecated; a dict "#RRGGBB" -> label, see
            `mask_to_labels`.

    Returns:
        A `SegmentationDataset`.

    Example:

    >>> data = load_dataset(make_tiny_dataset("/tmp/tiny"), patch_size=64)
    >>> data.x_train.dtype, data.y_train.shape[1:], data.n_classes
    (dtype('uint8'), (64, 64), 6)
    >>> mine = load_dataset("my_data", 256, classes={"Field": "#C8A050",
    ...                     "Water": "#1E64C8"}, test_fraction=0.2)
    """
    if not isinstance(patch_size, int) or patch_size < 16 or patch_size % 16:
        raise ValueError(
            f"patch_size must be a multiple of 16 (the U-Net halves it four "
            f"times), at least 16; got {patch_size!r}."
        )
    names, palette = read_classes(classes)
    if extra_colors is not None:
        _warn_extra_colors()
    table = _ColorTable(palette, ignore_colors, extra_colors)
    labelled = _labelled_classes(names, unlabeled)
    root, folders = _dataset_layout(root)
    pairs = find_pairs(root)
    stems = [name for name, _, _ in pairs]
    if folders is None:
        split_of = _split_tiles(root, stems, test_parts, val_per_tile, test_images,
                                val_fraction, test_fraction, seed)
    else:
        split_of = _split_flat(root, stems, test_parts, val_per_tile, test_images,
                               val_fraction, test_fraction, seed)
    sizes, resized = _image_sizes(pairs, patch_size, resize_masks)
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
    extra_codes = {_rgb_code(np.array(hex_to_rgb(c))): c for c in table.lookup
                   if c not in palette_colors}
    for name, image_path, mask_path in pairs:
        image, labels = _read_pair(image_path, mask_path, table, resize_masks)
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


def _split_tiles(root, names, test_parts, val_per_tile, test_images, val_fraction,
                 test_fraction, seed):
    given = {k: v for k, v in (("test_images", test_images), ("val_fraction", val_fraction),
                               ("test_fraction", test_fraction)) if v is not None}
    if given:
        raise ValueError(
            f"{root} is in the Kaggle tile layout, split by test_parts and "
            f"val_per_tile; {sorted(given)} apply to flat layouts (images/ + masks/). "
            f"Leave them out, or pass test_parts=... and val_per_tile=... instead.")
    test_parts = TEST_PARTS if test_parts is None else test_parts
    val_per_tile = 1 if val_per_tile is None else val_per_tile
    if val_per_tile < 0:
        raise ValueError(f"val_per_tile must be >= 0, got {val_per_tile}.")
    return _split_by_source(names, test_parts, val_per_tile, seed)


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
                test_fraction, seed):
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
    if test_images is not None:
        test_images = [test_images] if isinstance(test_images, str) else list(test_images)
        unknown = sorted(set(test_images) - set(names))
        if unknown:
            raise ValueError(
                f"test_images names {unknown[:5]}, not images of {root} (the stems "
                f"there are like {names[:3]}); give file names without extension.")
        test = set(test_images)
    else:
        test = set(rng.permutation(names)[: _fraction_count(test_fraction, len(names))])
    rest = [n for n in names if n not in test]
    n_val = _fraction_count(val_fraction, len(names))
    if len(rest) - n_val < 1:
        raise ValueError(
            f"{root} holds {len(names)} images: {len(test)} for test and {n_val} for "
            f"validation leave none for training. Lower test_fraction or val_fraction.")
    val = set(rng.permutation(rest)[:n_val]) if n_val else set()
    return {n: "test" if n in test else "val" if n in val else "train" for n in names}


def _fraction_count(fraction, n):
    return 0 if fraction == 0 else max(1, int(round(fraction * n)))


def _count_colors(mask_path, name, extra_codes, color_counts, extra_sources):
    mask = np.asarray(Image.open(mask_path).convert("RGB"))
    codes, counts = np.unique(_rgb_code(mask), return_counts=True)
    for code, count in zip(codes, counts):
        color = _code_to_hex(code)
        color_counts[color] = color_counts.get(color, 0) + int(count)
        if int(code) in extra_codes:
            extra_sources.setdefault(color, {})[name] = int(count)


def download_dataset(destination="data", source=None):
    """Gets the dataset and returns its root folder.

    With no `source`, downloads it from Kaggle through `kagglehub` (the
    dataset is public; kagglehub reads credentials, where needed, from
    Colab secrets or the `KAGGLE_USERNAME` / `KAGGLE_KEY` environment
    variables, never from this repository). With `source`, uses a folder or
    unpacks a zip archive into `destination`. Nothing touches the network
    before this function is called.

    Args:
        destination: folder that a zip `source` is unpacked into.
        source: optional path of a folder or zip holding the dataset.

    Returns:
        `pathlib.Path` of the dataset root, ready for `load_dataset`.

    Example:

    >>> root = download_dataset(source="/content/drive/MyDrive/aerial.zip")
    """
    if source is None:
        import kagglehub  # Imported here: only this path needs the network.

        return find_dataset_root(kagglehub.dataset_download(KAGGLE_HANDLE))
    source = pathlib.Path(source).expanduser()
    if source.is_file() and zipfile.is_zipfile(source):
        destination = pathlib.Path(destination)
        destination.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(source) as archive:
            archive.extractall(destination)
        return find_dataset_root(destination)
    if source.is_file():
        raise ValueError(
            f"{source} is neither a folder nor a zip archive. Pass the "
            f"dataset folder or the zip downloaded from Kaggle."
        )
    return find_dataset_root(source)


class PatchSequence(keras.utils.PyDataset):
    """Batches of patches in a new order every epoch, drawn from the seed.

    The order of epoch `e` depends on `(seed, e)` alone, so a resumed run
    replays it. Augmentation happens in the model (`RandomSymmetry`), on the
    device, so a batch is a plain slice of the arrays.

    Args:
        x: uint8 images `(N, P, P, 3)`.
        y: labels `(N, P, P)`.
        batch_size: patches per batch.
        seed: seed of the order.
        teacher_logits: optional `(N, P, P, C)` logits of a frozen teacher
            for the same patches; batches are then `((x, logits), y)`, which
            `Distiller` uses instead of running the teacher.
        drop_remainder: whether to leave out the epoch's last batch when it
            is partial (the patches left out change with the order), so that
            every batch has `batch_size` patches, as `data_parallel` needs.
    """

    def __init__(self, x, y, batch_size=16, seed=0, teacher_logits=None,
                 drop_remainder=False, **kwargs):
        super().__init__(**kwargs)
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(
                f"x and y must hold the same, non-zero number of patches; "
                f"got {len(x)} and {len(y)}."
            )
        if teacher_logits is not None and tuple(teacher_logits.shape[:3]) != tuple(x.shape[:3]):
            raise ValueError(
                f"teacher_logits must be (N, P, P, C) logits of the patches x "
                f"{tuple(x.shape)}, got shape {tuple(teacher_logits.shape)}."
            )
        self.x, self.y = x, y
        self.teacher_logits = teacher_logits
        self.batch_size = batch_size
        self.seed = seed
        self.drop_remainder = drop_remainder
        if drop_remainder and len(x) < batch_size:
            raise ValueError(f"drop_remainder=True leaves no batch: {len(x)} patches are "
                             f"fewer than batch_size={batch_size}.")
        self.set_epoch(0)

    def __len__(self):
        if self.drop_remainder:
            return len(self.x) // self.batch_size
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, index):
        rows = np.sort(
            self._order[index * self.batch_size : (index + 1) * self.batch_size]
        )
        if self.teacher_logits is None:
            return self.x[rows], self.y[rows]
        return (self.x[rows], self.teacher_logits[rows]), self.y[rows]

    def set_epoch(self, epoch):
        """Draws the order of `epoch`: the same for a seed, whatever came before."""
        self.epoch = epoch
        self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.x))

    def on_epoch_end(self):
        self.set_epoch(self.epoch + 1)


class RandomCropSequence(keras.utils.PyDataset):
    """Batches of square crops from anywhere in whole images, new every epoch.

    A fixed grid of patches (`load_dataset`) shows the network the same
    `n` windows every epoch and drops the images' right and bottom margins
    (14 % of the real training pixels at 256). This draws `n_patches` crops
    per epoch instead: a crop position uniformly among all positions of all
    images (an image is drawn in proportion to the positions it holds),
    from `(seed, epoch)` alone, so a resumed run replays it. With
    `n_patches = len(data.x_train)` an epoch has as many steps as on the
    grid: the same budget, more distinct inputs.

    Args:
        images: list of uint8 images `(H, W, 3)` (`AerialDataset.whole_images`).
        labels: list of labels `(H, W)`, the same sizes.
        patch_size: side of the crops.
        n_patches: crops per epoch.
        batch_size: crops per batch.
        seed: seed of the crops.

    Example:

    >>> images, labels = data.whole_images("train")
    >>> sequence = RandomCropSequence(images, labels, 256, len(data.x_train))
    """

    def __init__(self, images, labels, patch_size, n_patches, batch_size=16, seed=0,
                 **kwargs):
        super().__init__(**kwargs)
        _check_crop_sources(images, labels, patch_size)
        if n_patches < 1 or batch_size < 1:
            raise ValueError(f"n_patches and batch_size must be >= 1, got {n_patches} and "
                             f"{batch_size}.")
        self.images, self.labels = images, labels
        self.patch_size, self.n_patches = patch_size, n_patches
        self.batch_size, self.seed = batch_size, seed
        self._room = np.array([(h - patch_size + 1, w - patch_size + 1)
                               for h, w in (image.shape[:2] for image in images)])
        positions = self._room.prod(1).astype(np.float64)
        self._weights = positions / positions.sum()
        self.set_epoch(0)

    def __len__(self):
        return math.ceil(self.n_patches / self.batch_size)

    def __getitem__(self, index):
        rows = range(index * self.batch_size, min((index + 1) * self.batch_size, self.n_patches))
        p = self.patch_size
        crops = [(self.images[i][r : r + p, c : c + p], self.labels[i][r : r + p, c : c + p])
                 for i, r, c in (self._crops[k] for k in rows)]
        return np.stack([x for x, _ in crops]), np.stack([y for _, y in crops])

    def set_epoch(self, epoch):
        """Draws the crops of `epoch`: the same for a seed, whatever came before."""
        self.epoch = epoch
        rng = np.random.default_rng([self.seed, epoch])
        which = rng.choice(len(self.images), self.n_patches, p=self._weights)
        corners = np.floor(rng.uniform(size=(self.n_patches, 2)) * self._room[which])
        self._crops = np.column_stack([which, corners.astype(np.int64)])

    def on_epoch_end(self):
        self.set_epoch(self.epoch + 1)


class PatchStream(keras.utils.PyDataset):
    """Batches of patches read from the image files as they are needed.

    The streaming twin of `PatchSequence`, for datasets larger than memory:
    it holds the list of patches (file, row, column) and decodes an image
    only when a batch needs one of its patches, keeping the last
    `cache_size` decoded images (an LRU cache). Memory stays bounded by the
    cache and the batch, whatever the size of the dataset. Batches are
    `(images uint8 (B, P, P, 3), labels uint8 (B, P, P))`, for
    `model.fit`, `model.evaluate` and `Distiller` (which then runs its
    teacher on every batch).

    Without `shuffle`, patches come in the order of `load_dataset`'s arrays
    (image by image, rows first). With it, each epoch draws a new image
    order from `(seed, epoch)` and shuffles the patches within windows of
    `cache_size` images, so an image is decoded about once per epoch.

    Args:
        files: list of `(image_path, mask_path)` pairs
            (`SegmentationDataset.files[split]`).
        patch_size: side of the patches; images are cropped to multiples of
            it, as in `load_dataset`.
        batch_size: patches per batch.
        palette: class colours, uint8 `(n_classes, 3)` (`PALETTE` if
            `None`).
        ignore_colors: colours read as `IGNORE_INDEX` (see
            `mask_to_labels`).
        resize_masks: rescale masks to their images (nearest neighbour).
        shuffle: draw a new order every epoch.
        seed: seed of the order.
        cache_size: decoded images kept, >= 1.
        extra_colors: deprecated, see `mask_to_labels`.
        **kwargs: passed to `keras.utils.PyDataset` (`workers`, ...).

    Example:

    >>> data = load_dataset("my_data", 256, classes="my_data/classes.json",
    ...                     in_memory=False)
    >>> model.fit(data.stream("train", 16), validation_data=data.stream("val", 16))
    """

    def __init__(self, files, patch_size, batch_size=16, *, palette=None, ignore_colors=None,
                 resize_masks=False, shuffle=False, seed=0, cache_size=16, extra_colors=None,
                 **kwargs):
        super().__init__(**kwargs)
        files = [(pathlib.Path(image), pathlib.Path(mask)) for image, mask in files]
        if not files:
            raise ValueError("files must list at least one (image_path, mask_path) pair.")
        for label, value in (("patch_size", patch_size), ("batch_size", batch_size),
                             ("cache_size", cache_size)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{label} must be an int >= 1, got {value!r}.")
        self.files = files
        self.patch_size, self.batch_size = int(patch_size), int(batch_size)
        self.shuffle, self.seed, self.cache_size = bool(shuffle), seed, int(cache_size)
        self.resize_masks = bool(resize_masks)
        self._table = _ColorTable(palette, ignore_colors, extra_colors)
        sizes, _ = _image_sizes([(str(i), i, m) for i, m in files], self.patch_size,
                                self.resize_masks)
        p = self.patch_size
        grid = [(i, r, c) for i, (h, w) in enumerate(sizes)
                for r in range(h // p) for c in range(w // p)]
        self._patches = np.array(grid, dtype=np.int64).reshape(-1, 3)
        self._cache = collections.OrderedDict()
        self._lock = threading.Lock()
        self.set_epoch(0)

    def __len__(self):
        return math.ceil(len(self._patches) / self.batch_size)

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"Batch {index} of a PatchStream of {len(self)} batches.")
        rows = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        p = self.patch_size
        x = np.empty((len(rows), p, p, 3), np.uint8)
        y = np.empty((len(rows), p, p), np.uint8)
        for k, (i, r, c) in enumerate(self._patches[rows]):
            image, labels = self._load(int(i))
            x[k] = image[r * p : (r + 1) * p, c * p : (c + 1) * p]
            y[k] = labels[r * p : (r + 1) * p, c * p : (c + 1) * p]
        return x, y

    @property
    def num_patches(self):
        """Number of patches in one epoch."""
        return len(self._patches)

    def set_epoch(self, epoch):
        """Draws the order of `epoch`: the same for a seed, whatever came before."""
        self.epoch = epoch
        if not self.shuffle:
            self._order = np.arange(len(self._patches))
            return
        rng = np.random.default_rng([self.seed, epoch])
        images = rng.permutation(len(self.files))
        of_image = self._patches[:, 0]
        order = []
        for start in range(0, len(images), self.cache_size):
            window = np.flatnonzero(np.isin(of_image, images[start : start + self.cache_size]))
            order.append(rng.permutation(window))
        self._order = np.concatenate(order)

    def on_epoch_end(self):
        self.set_epoch(self.epoch + 1)

    def _load(self, i):
        with self._lock:
            if i in self._cache:
                self._cache.move_to_end(i)
                return self._cache[i]
        pair = _read_pair(*self.files[i], self._table, self.resize_masks)
        with self._lock:
            self._cache[i] = pair
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return pair

    def __getstate__(self):  # for worker processes: no lock, an empty cache
        state = dict(self.__dict__)
        state["_lock"], state["_cache"] = None, collections.OrderedDict()
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()


MIXES = ("cutmix", "mixup")
"""The batch mixes `ConsistentCropSequence` can apply."""


class ConsistentCropSequence(keras.utils.PyDataset):
    """Strongly augmented crops for consistent teaching: teacher and student see one batch.

    "Knowledge distillation: a good teacher is patient and consistent" (Beyer
    et al., CVPR 2022): distillation pays when the teacher predicts on
    exactly the augmented image the student sees, with aggressive
    augmentation and long training. This draws `n_patches` crops per epoch
    from anywhere in the whole images, each at a random scale `s`
    (log-uniform in `scale`): a window of side `round(patch_size * s)`
    (capped at the image's smaller side) resized to `patch_size`, images
    bilinear, labels nearest (so labels stay class indices or
    `IGNORE_INDEX`); then one of the 8 symmetries of the square; then, with
    probability `mix_probability`, mixes each crop with another crop of its
    batch:

    - "cutmix": a box of the other crop (area a uniform fraction of the
      crop) is pasted in, its labels with it;
    - "mixup": `w * this + (1 - w) * other`, `w` uniform in [0, 1], rounded
      to uint8; the labels are those of the crop with the larger weight
      (a hard-label approximation: the teacher's soft targets carry the
      mix, the label loss sees the dominant image).

    Every draw comes from `(seed, epoch)` alone (as in `RandomCropSequence`),
    so a resumed run replays it. Augmentation happens here, on the host:
    train with a student built with `build_unet(augment=False)` and a
    teacher that runs live on each batch (a `Distiller` fed plain images,
    no cached logits), as `fit_segmentation(sampling="consistent")` does.
    Batches are `(uint8 images (B, P, P, 3), labels (B, P, P))`.

    Args:
        images: list of uint8 images `(H, W, 3)` (`AerialDataset.whole_images`).
        labels: list of labels `(H, W)`, the same sizes.
        patch_size: side of the crops.
        n_patches: crops per epoch.
        batch_size: crops per batch.
        seed: seed of the draws.
        scale: `(low, high)` range of the window side over `patch_size`.
        symmetry: apply a random symmetry of the square to each crop.
        mix: "cutmix", "mixup" or `None`.
        mix_probability: probability that a crop is mixed.

    Example:

    >>> images, labels = data.whole_images("train")
    >>> sequence = ConsistentCropSequence(images, labels, 256, len(data.x_train),
    ...                                   mix="cutmix")
    """

    def __init__(self, images, labels, patch_size, n_patches, batch_size=16, seed=0,
                 scale=(0.5, 2.0), symmetry=True, mix="cutmix", mix_probability=0.5,
                 **kwargs):
        super().__init__(**kwargs)
        _check_crop_sources(images, labels, patch_size)
        if n_patches < 1 or batch_size < 1:
            raise ValueError(f"n_patches and batch_size must be >= 1, got {n_patches} and "
                             f"{batch_size}.")
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {scale!r}.")
        if mix not in (*MIXES, None):
            raise ValueError(f"mix must be one of {MIXES} or None, got {mix!r}.")
        if not 0 <= mix_probability <= 1:
            raise ValueError(f"mix_probability must be in [0, 1], got {mix_probability!r}.")
        self.images, self.labels = images, labels
        self.patch_size, self.n_patches = patch_size, n_patches
        self.batch_size, self.seed = batch_size, seed
        self.scale, self.symmetry = (float(scale[0]), float(scale[1])), bool(symmetry)
        self.mix, self.mix_probability = mix, float(mix_probability)
        self._sizes = np.array([image.shape[:2] for image in images])
        positions = (self._sizes - patch_size + 1).prod(1).astype(np.float64)
        self._weights = positions / positions.sum()
        self.set_epoch(0)

    def __len__(self):
        return math.ceil(self.n_patches / self.batch_size)

    def __getitem__(self, index):
        rows = range(index * self.batch_size, min((index + 1) * self.batch_size, self.n_patches))
        crops = [self._crop(k) for k in rows]
        x = np.stack([c for c, _ in crops])
        y = np.stack([c for _, c in crops])
        if self.mix is None or len(rows) < 2:
            return x, y
        x_mixed, y_mixed = x.copy(), y.copy()
        p = self.patch_size
        for j, k in enumerate(rows):
            if not self._mixed[k]:
                continue
            other = (j + 1 + self._partner[k] % (len(rows) - 1)) % len(rows)
            weight = self._weight[k]
            if self.mix == "cutmix":  # a box of area (1 - weight) from the other crop
                side = int(round(p * math.sqrt(1.0 - weight)))
                top, left = np.floor(self._box[k] * (p - side + 1)).astype(int)
                box = (slice(top, top + side), slice(left, left + side))
                x_mixed[j][box], y_mixed[j][box] = x[other][box], y[other][box]
            else:
                blend = weight * x[j].astype(np.float32) + (1 - weight) * x[other]
                x_mixed[j] = np.clip(np.round(blend), 0, 255).astype(x.dtype)
                y_mixed[j] = y[j] if weight >= 0.5 else y[other]
        return x_mixed, y_mixed

    def _crop(self, k):
        i, row, col, side, code = self.crops[k]
        p = self.patch_size
        image = self.images[i][row : row + side, col : col + side]
        label = self.labels[i][row : row + side, col : col + side]
        if side != p:
            image = np.asarray(Image.fromarray(image).resize((p, p), Image.BILINEAR))
            nearest = np.minimum(((np.arange(p) + 0.5) * side / p).astype(int), side - 1)
            label = label[nearest][:, nearest]
        if code & 1:
            image, label = image.transpose(1, 0, 2), label.T
        if code & 2:
            image, label = image[::-1], label[::-1]
        if code & 4:
            image, label = image[:, ::-1], label[:, ::-1]
        return np.ascontiguousarray(image), np.ascontiguousarray(label)

    def set_epoch(self, epoch):
        """Draws the crops and mixes of `epoch`: the same for a seed, whatever came before.

        Sets `crops`, one row `(image, row, column, side, symmetry code)` per crop.
        """
        self.epoch = epoch
        n, rng = self.n_patches, np.random.default_rng([self.seed, epoch])
        which = rng.choice(len(self.images), n, p=self._weights)
        s = np.exp(rng.uniform(np.log(self.scale[0]), np.log(self.scale[1]), n))
        sides = np.minimum(np.round(self.patch_size * s).astype(np.int64),
                           self._sizes[which].min(1))
        corners = np.floor(rng.uniform(size=(n, 2)) * (self._sizes[which] - sides[:, None] + 1))
        codes = rng.integers(0, 8, n) if self.symmetry else np.zeros(n, np.int64)
        self.crops = np.column_stack([which, corners.astype(np.int64), sides, codes])
        self._mixed = rng.uniform(size=n) < (self.mix_probability if self.mix else 0.0)
        self._partner = rng.integers(0, 2**31, n)
        self._weight = rng.uniform(size=n)
        self._box = rng.uniform(size=(n, 2))

    def on_epoch_end(self):
        self.set_epoch(self.epoch + 1)


def _check_crop_sources(images, labels, patch_size):
    if len(images) != len(labels) or not images:
        raise ValueError(
            f"images and labels must be non-empty lists of the same length; got "
            f"{len(images)} and {len(labels)}."
        )
    for i, (image, label) in enumerate(zip(images, labels)):
        if image.shape[:2] != label.shape[:2]:
            raise ValueError(f"Image {i} is {image.shape[:2]} but its labels are "
                             f"{label.shape[:2]}; they must match pixel for pixel.")
        if min(image.shape[:2]) < patch_size:
            raise ValueError(f"Image {i} is {image.shape[:2]}, smaller than one "
                             f"{patch_size}x{patch_size} crop.")


def make_tiny_dataset(
    path,
    tile_sizes=((150, 136), (200, 170), (136, 200)),
    images_per_tile=9,
    seed=0,
):
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

    >>> root = make_tiny_dataset("/tmp/tiny")
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
    path,
    classes=None,
    n_images=12,
    size=(256, 192),
    mask_scale=0.5,
    folders=("images", "masks"),
    image_suffix=".JPG",
    mask_suffix=".PNG",
    seed=0,
):
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

    >>> root = make_custom_dataset("/tmp/mine")
    >>> data = load_dataset(root, 64, classes=root / "classes.json", resize_masks=True)
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


# =============================================================================
# 2. Models
# =============================================================================

TEACHER_FILTERS = 16
STUDENT_FILTERS = 8


def build_unet(
    base_filters=16,
    n_classes=len(CLASSES),
    input_shape=(None, None, 3),
    dropout=(0.1, 0.1, 0.2, 0.2, 0.3),
    augment=True,
    seed=None,
    name=None,
):
    """Builds the classic 4-level U-Net that outputs logits.

    Four levels down and four up, two 3x3 ReLU convolutions per level with
    dropout between them, max pooling down, 2x2 transposed convolutions up,
    skip connections by concatenation, filters doubling from `base_filters`
    to `16 * base_filters` at the bottleneck. Inputs are uint8-range RGB
    images, rescaled inside the model; the last layer is a 1x1 convolution
    with no activation, so the model returns **logits** (distillation needs
    them; apply softmax for probabilities).

    With `augment=True`, training draws one of the 8 symmetries of the square
    per image (`RandomSymmetry`) and maps the logits back (`UndoSymmetry`),
    on the device and inside the compiled step: the labels are untouched,
    and since the losses sum over pixels, this is training on transformed
    images and labels. At inference both layers pass their input through.

    Args:
        base_filters: filters of the first level (16 for the teacher, 8 for
            the student).
        n_classes: number of output classes.
        input_shape: `(H, W, 3)`; H and W may be `None` (any size divisible
            by 16).
        dropout: dropout rates of the five depths, top to bottleneck.
        augment: whether training applies random flips and rotations.
        seed: seed of the augmentation draws.
        name: model name.

    Returns:
        A functional `keras.Model` mapping `(N, H, W, 3)` to logits
        `(N, H, W, n_classes)`.

    Example:

    >>> model = build_unet(8)
    >>> model(np.zeros((1, 64, 64, 3))).shape
    (1, 64, 64, 6)
    """
    if not isinstance(base_filters, int) or base_filters < 1:
        raise ValueError(f"base_filters must be a positive int, got {base_filters!r}.")
    if not isinstance(n_classes, int) or n_classes < 2:
        raise ValueError(f"n_classes must be an int >= 2, got {n_classes!r}.")
    if len(dropout) != 5:
        raise ValueError(f"dropout needs 5 rates, one per depth; got {dropout!r}.")
    for size in input_shape[:2]:
        if size is not None and size % 16:
            raise ValueError(
                f"Input height and width must be divisible by 16, got "
                f"input_shape={input_shape}."
            )
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    if augment:
        x, symmetry = RandomSymmetry(seed=seed, name="augment")(x)
    x = layers.Rescaling(1.0 / 255, name="rescale")(x)
    skips = []
    for depth in range(4):
        x = _conv_block(x, base_filters * 2**depth, dropout[depth], f"down{depth}")
        skips.append(x)
        x = layers.MaxPooling2D(name=f"down{depth}_pool")(x)
    x = _conv_block(x, base_filters * 16, dropout[4], "bottleneck")
    for depth in reversed(range(4)):
        filters = base_filters * 2**depth
        x = layers.Conv2DTranspose(
            filters, 2, strides=2, padding="same", name=f"up{depth}_upsample"
        )(x)
        x = layers.Concatenate(name=f"up{depth}_skip")([x, skips[depth]])
        x = _conv_block(x, filters, dropout[depth], f"up{depth}")
    logits = layers.Conv2D(n_classes, 1, dtype="float32", name="logits")(x)
    if augment:
        logits = UndoSymmetry(name="augment_undo")([logits, symmetry])
    return keras.Model(inputs, logits, name=name or f"unet{base_filters}")


def _conv_block(x, filters, rate, name):
    x = layers.Conv2D(filters, 3, padding="same", activation="relu",
                      kernel_initializer="he_normal", name=f"{name}_conv1")(x)
    x = DeviceInvariantDropout(rate, name=f"{name}_dropout")(x)
    return layers.Conv2D(filters, 3, padding="same", activation="relu",
                         kernel_initializer="he_normal", name=f"{name}_conv2")(x)


@keras.saving.register_keras_serializable(package="utils")
class DeviceInvariantDropout(layers.Dropout):
    """`keras.layers.Dropout` whose draws do not depend on how many devices share a batch.

    On one device it is `keras.layers.Dropout`, draw for draw. Under a
    `tf.distribute` strategy with several replicas (`data_parallel` on
    TensorFlow), Keras' `Dropout` draws every replica's mask from the same
    seed state, so the replicas repeat each other's draws and training does
    not follow one device's. This layer draws the mask of the whole batch
    on every replica and keeps the replica's own rows, so N devices drop the
    units one device drops (on JAX one program draws for the whole batch
    already). `noise_shape` is not supported.

    Args:
        rate: fraction of the units to drop, in `[0, 1)`.
        **kwargs: `seed`, `name`, ... as for `keras.layers.Dropout`.

    Example:

    >>> layer = DeviceInvariantDropout(0.3, seed=0)
    >>> layer(np.ones((2, 4)), training=True).shape
    (2, 4)
    """

    def __init__(self, rate, **kwargs):
        if kwargs.get("noise_shape") is not None:
            raise ValueError("DeviceInvariantDropout does not support noise_shape; "
                             "use keras.layers.Dropout for it.")
        super().__init__(rate, **kwargs)

    def call(self, inputs, training=False):
        if not training or self.rate == 0 or _replicas_in_sync() == 1:
            return super().call(inputs, training=training)
        # tf.nn.experimental.stateless_dropout's arithmetic, as Keras' Dropout
        # runs it on TensorFlow, over this replica's rows of the batch's draw.
        draws = _replica_rows(lambda shape: keras.random.uniform(
            shape, dtype=inputs.dtype, seed=self.seed_generator), ops.shape(inputs))
        kept = inputs * ops.cast(1 / (1 - self.rate), inputs.dtype)
        return ops.where(draws >= ops.cast(self.rate, inputs.dtype), kept,
                         ops.zeros_like(inputs))


@keras.saving.register_keras_serializable(package="utils")
class RandomSymmetry(layers.Layer):
    """Applies one random symmetry of the square to each image, in training.

    Draws, per image, whether to transpose, flip vertically and flip
    horizontally (the 8 symmetries of the square: 4 rotations by 90 degrees,
    each with or without a mirror). Returns the images and the `(N, 3)`
    draws, which `UndoSymmetry` uses to map the predictions back. Outside
    training it returns the images unchanged and zero draws. Runs in the
    compiled step, on the device; the draws come from a Keras `SeedGenerator`,
    and are those of one device however many share the batch (see
    `DeviceInvariantDropout`).

    Args:
        seed: seed of the draws.

    Example:

    >>> images, symmetry = RandomSymmetry(seed=0)(x, training=True)
    >>> logits = UndoSymmetry()([model(images), symmetry])
    """

    def __init__(self, seed=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        batch = ops.shape(images)[0]
        if not training:
            return images, ops.zeros((batch, 3), "int32")
        height, width = images.shape[1:3]
        if height is not None and width is not None and height != width:
            raise ValueError(
                f"Random flips and rotations need square training patches, "
                f"got {height}x{width}."
            )
        symmetry = _replica_rows(lambda shape: keras.random.randint(
            shape, 0, 2, seed=self.seed_generator), (batch, 3))
        return apply_symmetry(images, symmetry), symmetry

    def compute_output_spec(self, images, training=None):
        return (keras.KerasTensor(images.shape, self.compute_dtype),
                keras.KerasTensor((images.shape[0], 3), "int32"))

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package="utils")
class UndoSymmetry(layers.Layer):
    """Maps predictions of symmetry-transformed images back; see `RandomSymmetry`."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, inputs, training=None):
        outputs, symmetry = inputs
        if not training:
            return outputs
        return apply_symmetry(outputs, symmetry, inverse=True)

    def compute_output_spec(self, inputs, training=None):
        return keras.KerasTensor(inputs[0].shape, self.compute_dtype)


def apply_symmetry(images, symmetry, inverse=False):
    """Transposes and flips each image as its row of `symmetry` says.

    Args:
        images: `(N, S, S, C)` tensor (square).
        symmetry: `(N, 3)` 0/1 tensor: transpose, flip rows, flip columns.
        inverse: undo the transform instead (the steps in reverse order).

    Returns:
        The transformed images, same shape.
    """
    for column, transform in reversed(_SYMMETRY_STEPS) if inverse else _SYMMETRY_STEPS:
        chosen = ops.reshape(ops.cast(symmetry[:, column], "bool"), (-1, 1, 1, 1))
        images = ops.where(chosen, transform(images), images)
    return images


_SYMMETRY_STEPS = (  # (column of the draws, transform); all 8 symmetries compose from them
    (0, lambda x: ops.transpose(x, (0, 2, 1, 3))),
    (1, lambda x: ops.flip(x, axis=1)),
    (2, lambda x: ops.flip(x, axis=2)),
)


def symmetry_ensemble(model):
    """Wraps a model to average its logits over the 8 symmetries of the square.

    Each image is transposed and flipped in all 8 ways, the model predicts
    each, the predictions are mapped back and their logits averaged: test-time
    augmentation, and a stronger, smoother teacher for distillation (8x the
    forward passes). The wrapper shares the model's weights.

    Args:
        model: a model mapping square images `(N, S, S, 3)` to logits.

    Returns:
        A functional model with the same input and output shapes.

    Example:

    >>> teacher8 = symmetry_ensemble(teacher)
    >>> Distiller(teacher=teacher8, student=build_student())
    """
    inputs = keras.Input(model.input.shape[1:], name="image")
    logits = _SymmetryAverage(model, name="symmetry_average")(inputs)
    return keras.Model(inputs, logits, name=f"{model.name}_x8")


@keras.saving.register_keras_serializable(package="utils")
class _SymmetryAverage(layers.Layer):
    """The layer of `symmetry_ensemble`: the model's logits averaged over the 8 symmetries."""

    def __init__(self, model, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.model = model

    def call(self, images):
        height, width = images.shape[1:3]
        if height is not None and width is not None and height != width:
            raise ValueError(f"symmetry_ensemble needs square images, got {height}x{width}.")
        ones = ops.ones_like(images[:, :1, 0, 0], dtype="int32")  # (N, 1)
        total = 0.0
        for code in itertools.product((0, 1), repeat=3):
            symmetry = ones * ops.convert_to_tensor([code], "int32")
            logits = self.model(apply_symmetry(images, symmetry), training=False)
            total = total + ops.cast(apply_symmetry(logits, symmetry, inverse=True), "float32")
        return total / 8.0

    def compute_output_spec(self, images):
        return keras.KerasTensor((*images.shape[:3], self.model.output.shape[-1]), "float32")

    def get_config(self):
        return {**super().get_config(),
                "model": keras.saving.serialize_keras_object(self.model)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(config["model"])
        return cls(**config)


def build_teacher(**kwargs):
    """The teacher: `build_unet(16)`, about 1.94 M parameters."""
    kwargs.setdefault("name", "teacher")
    return build_unet(TEACHER_FILTERS, **kwargs)


def build_student(**kwargs):
    """The student: half width, `build_unet(8)`, about 0.49 M parameters."""
    kwargs.setdefault("name", "student")
    return build_unet(STUDENT_FILTERS, **kwargs)


def count_flops(model, input_size=256):
    """Counts the floating-point operations of one forward pass.

    Counts multiply-adds of convolutions and transposed convolutions as two
    operations each (the convention behind "GFLOPs" in papers); pooling,
    activations and dropout are negligible and left out.

    Args:
        model: a model from `build_unet` (or any stack of 2D convolutions).
        input_size: side of the square input.

    Returns:
        FLOPs as an int.

    Example:

    >>> count_flops(build_teacher()) / 1e9  # about 6.1
    """
    shapes = _layer_output_shapes(model, input_size)
    flops = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2DTranspose):
            h, w = shapes[layer.name][1:3]
            c_in = layer.input.shape[-1]
            k = np.prod(layer.kernel_size)
            flops += 2 * k * c_in * layer.filters * (h // layer.strides[0]) * (
                w // layer.strides[1])
        elif isinstance(layer, layers.Conv2D):
            h, w = shapes[layer.name][1:3]
            k = np.prod(layer.kernel_size)
            flops += 2 * k * layer.input.shape[-1] * layer.filters * h * w
    return int(flops)


def _layer_output_shapes(model, input_size):
    shapes, size = {}, input_size
    for layer in model.layers:
        if isinstance(layer, layers.MaxPooling2D):
            size //= 2
        elif isinstance(layer, layers.Conv2DTranspose):
            size *= layer.strides[0]
        shapes[layer.name] = (None, size, size)
    return shapes


def model_summary(model, path=None, input_size=256):
    """Returns parameters, FLOPs and (if `path` is given) file size in MB."""
    info = {
        "parameters": int(model.count_params()),
        "gflops": count_flops(model, input_size) / 1e9,
    }
    if path is not None:
        info["size_mb"] = os.path.getsize(path) / 1e6
    return info


# =============================================================================
# 3. Losses and distillation
# =============================================================================


@keras.saving.register_keras_serializable(package="utils")
class SegmentationLoss(keras.losses.Loss):
    """Dice plus (focal) cross-entropy on logits, ignoring unannotated pixels.

    The sum of a cross-entropy term, computed with Keras'
    `categorical_crossentropy` or `categorical_focal_crossentropy` from
    logits, and a soft multi-class Dice term, computed with Keras' `dice`
    per class over the whole batch and averaged over classes. Pixels
    labelled `IGNORE_INDEX` count in neither.

    Args:
        kind: "cross_entropy" or "focal".
        dice_weight: weight of the Dice term (0 disables it).
        class_weights: optional sequence of one weight per class, applied to
            the cross-entropy per pixel and to the Dice average per class.
        gamma: focusing parameter of the focal loss.
        n_classes: number of classes.

    Example:

    >>> loss = SegmentationLoss()
    >>> loss(np.zeros((1, 4, 4)), np.zeros((1, 4, 4, 6)))
    """

    def __init__(self, kind="cross_entropy", dice_weight=1.0,
                 class_weights=None, gamma=2.0, n_classes=len(CLASSES),
                 name="segmentation_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        if kind not in ("cross_entropy", "focal"):
            raise ValueError(
                f"kind must be 'cross_entropy' or 'focal', got {kind!r}."
            )
        if class_weights is not None and len(class_weights) != n_classes:
            raise ValueError(
                f"class_weights needs {n_classes} weights, one per class; "
                f"got {len(class_weights)}."
            )
        self.kind = kind
        self.dice_weight = float(dice_weight)
        self.class_weights = (None if class_weights is None
                              else [float(w) for w in class_weights])
        self.gamma = float(gamma)
        self.n_classes = n_classes

    def call(self, y_true, y_pred):
        logits = ops.cast(y_pred, "float32")
        labels = ops.cast(y_true, "int32")
        valid = ops.cast(ops.not_equal(labels, IGNORE_INDEX), "float32")
        onehot = ops.one_hot(ops.where(labels == IGNORE_INDEX, 0, labels),
                             self.n_classes) * valid[..., None]
        weights = (ops.ones((self.n_classes,)) if self.class_weights is None
                   else ops.convert_to_tensor(self.class_weights, "float32"))
        if self.kind == "focal":
            ce = keras.losses.categorical_focal_crossentropy(
                onehot, logits, alpha=1.0, gamma=self.gamma, from_logits=True)
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
        sums = _sum_over_replicas(ops.concatenate(sums))
        loss = sums[0] / ops.maximum(sums[1], 1.0)
        if self.dice_weight:
            intersection = sums[2 : 2 + self.n_classes]
            total = sums[2 + self.n_classes :]
            per_class = 1.0 - 2.0 * intersection / (total + keras.backend.epsilon())
            loss += self.dice_weight * ops.sum(per_class * weights) / ops.sum(weights)
        # Keras reduces per-sample losses; a batch-wide scalar is broadcast.
        return ops.ones_like(logits[:, 0, 0, 0]) * loss

    def get_config(self):
        return {**super().get_config(), "kind": self.kind,
                "dice_weight": self.dice_weight,
                "class_weights": self.class_weights, "gamma": self.gamma,
                "n_classes": self.n_classes}


KD_KINDS = ("pixel", "channel", "dist")
"""The kinds of `distillation_loss`."""

_EPSILON = 1e-7


def distillation_loss(teacher_logits, student_logits, temperature=4.0,
                      kind="pixel", standardize=False):
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
      classes. The loss is `T^2 * (inter + intra)` (DIST's beta and gamma
      fixed at 1). It asks the student to match the teacher's *relations*,
      not its exact probabilities: it is 0 for a student whose
      probabilities are a positive affine map of the teacher's.

    The T^2 factor keeps the gradients' scale independent of T. All take
    logits: applying them to probabilities (as the seed project did) gives a
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

    >>> t = np.random.randn(2, 8, 8, 6)
    >>> float(distillation_loss(t, t))  # identical logits
    0.0
    >>> float(distillation_loss(t, 2 * t + 1, kind="pixel", standardize=True))
    0.0
    """
    _check_kd_arguments(temperature, kind)
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


@keras.saving.register_keras_serializable(package="utils")
class SegmentationKD(keras.distillation.DistillationLoss):
    """`keras.distillation` loss wrapping `distillation_loss`.

    For users of Keras' own `keras.distillation.Distiller`; this module's
    `Distiller` uses `distillation_loss` directly. Keras' own
    `LogitsDistillation` is unfit here: with its default
    `loss="kl_divergence"` it applies neither the softmax nor T^2.

    Args:
        temperature: softening temperature.
        kind: "pixel", "channel" or "dist".
        standardize: standardize each pixel's logits first (Sun et al.).

    Example:

    >>> kd = keras.distillation.Distiller(teacher, student, SegmentationKD(2.0))
    """

    def __init__(self, temperature=4.0, kind="pixel", standardize=False):
        _check_kd_arguments(temperature, kind)
        self.temperature = float(temperature)
        self.kind = kind
        self.standardize = bool(standardize)
        self.teacher_layer_name = self.student_layer_name = None

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        return distillation_loss(teacher_outputs, student_outputs,
                                 self.temperature, self.kind, self.standardize)

    def validate_outputs(self, teacher_outputs, student_outputs):
        pass  # `distillation_loss` checks the shapes

    def get_config(self):
        return {"temperature": self.temperature, "kind": self.kind,
                "standardize": self.standardize}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


BOTTLENECK_LAYER = "bottleneck_conv2"
"""Name of the deepest layer of `build_unet`, whose output the feature term matches."""


@keras.saving.register_keras_serializable(package="utils")
class Distiller(keras.Model):
    """Trains a student on labels and on a frozen teacher's soft predictions.

    The student is trained on `alpha * student_loss + (1 - alpha) * KD`,
    where `student_loss` is the loss given to `compile` (e.g.
    `SegmentationLoss()`, which ignores unannotated pixels) and KD is
    `distillation_loss` (pixel-wise, channel-wise or DIST) over **every**
    pixel: where the annotators painted nothing the teacher's prediction is
    the only target there is, so the KD term teaches there too. The teacher
    is frozen and runs in inference mode. The history records
    `student_loss`, `distillation_loss` and `total_loss` (the same as
    `loss`), `feature_loss` when the feature term is on, and their `val_`
    twins, next to the compiled metrics.

    `alpha` is held in a non-trainable `keras.Variable`, read inside the
    compiled step, so a callback may change it between epochs
    (`KDWeightSchedule`); `distiller.alpha` reads and sets it as a float.

    With `feature_weight > 0` a bottleneck term (FitNets, Romero et al.
    2015) is added: `feature_weight * MSE(adapter(f_s), f_t)`, where `f_s`
    and `f_t` are the outputs of the student's and the teacher's
    `BOTTLENECK_LAYER` ("bottleneck_conv2" of `build_unet`) and the adapter
    is a trainable 1x1 convolution owned by the distiller, from the
    student's channels to the teacher's. The student's features are mapped
    back through its augmentation (`UndoSymmetry`) so they line up with
    the teacher's. This term needs the teacher to run at every step:
    cached teacher logits are then used for nothing (`fit_segmentation`
    does not cache them). The student's logits of the loss come from the
    same forward pass as its features.

    It is the design of `keras.distillation.Distiller` reduced to one logits
    term, with two additions: it serializes whole (`get_config`,
    `keras.saving`, a compiled one resumes training after a reload), and it
    takes inputs `(images, teacher_logits)` as well as plain images, to use
    logits computed once instead of running the teacher at every step (see
    `PatchSequence` and `fit_segmentation(cache_teacher=True)`). A student
    built with `augment=True` maps its logits back to the image as given,
    so they compare with the teacher's logits of the same image. After
    training, use and save `distiller.student` on its own.

    Args:
        teacher: trained model returning logits `(N, H, W, C)`, e.g. from
            `build_teacher`, `symmetry_ensemble` or `ensemble_teacher`.
        student: model with the same input and output shapes.
        alpha: weight in [0, 1] of the student's own loss.
        temperature: KD temperature, > 0.
        kind: "pixel" (Hinton), "channel" (Shu et al.) or "dist" (Huang et al.).
        standardize: standardize each pixel's logits before the softmax
            (Sun et al., see `distillation_loss`).
        feature_weight: weight >= 0 of the bottleneck feature term; 0 (the
            default) turns it off.

    Example:

    >>> distiller = Distiller(teacher=teacher, student=build_student())
    >>> distiller.compile(optimizer="adam", loss=SegmentationLoss())
    >>> distiller.fit(x, y, epochs=1)
    >>> distiller.student.save("student.keras")
    """

    def __init__(self, teacher, student, alpha=0.5, temperature=4.0,
                 kind="pixel", standardize=False, feature_weight=0.0,
                 name="distiller", **kwargs):
        _check_alpha(alpha)
        _check_kd_arguments(temperature, kind)
        if not isinstance(standardize, bool):
            raise ValueError(f"standardize must be True or False, got {standardize!r}.")
        if isinstance(feature_weight, bool) or not isinstance(feature_weight, (int, float)) \
                or not feature_weight >= 0:
            raise ValueError(f"feature_weight must be a number >= 0 (0 turns the feature "
                             f"term off), got {feature_weight!r}.")
        _check_teacher_and_student(teacher, student)
        super().__init__(name=name, **kwargs)
        self.teacher = teacher
        self.student = student
        self.teacher.trainable = False
        self._alpha = keras.Variable(float(alpha), trainable=False, dtype="float32",
                                     name="alpha")
        self.temperature = float(temperature)
        self.kind = kind
        self.standardize = standardize
        self.feature_weight = float(feature_weight)
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(name="distillation_loss")
        self.total_loss_tracker = keras.metrics.Mean(name="total_loss")
        if self.feature_weight:
            self._teacher_features = _features_model(teacher, "teacher")
            self._student_features = _features_model(student, "student")
            self.feature_adapter = layers.Conv2D(
                self._teacher_features.output[0].shape[-1], 1, dtype="float32",
                name="feature_adapter")
            # built now, so a reloaded distiller's optimizer finds its weights
            self.feature_adapter.build(self._student_features.output[0].shape)
            self.feature_loss_tracker = keras.metrics.Mean(name="feature_loss")

    @property
    def alpha(self):
        """The weight of the student's own loss, a float (held in a float32 variable)."""
        # the shortest decimal of the float32: 0.3, not 0.30000001192092896
        return float(str(np.float32(ops.convert_to_numpy(self._alpha))))

    @alpha.setter
    def alpha(self, value):
        _check_alpha(value)
        self._alpha.assign(float(value))

    def call(self, inputs, training=None):
        images = inputs[0] if isinstance(inputs, (tuple, list)) else inputs
        return self.student(images, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                     training=True):
        images = x[0] if isinstance(x, (tuple, list)) else x
        if self.feature_weight:  # one pass of each model gives features and logits
            student_features, y_pred = self._student_features(images, training=training)
            teacher_features, teacher_logits = self._teacher_features(images, training=False)
            adapted = self.feature_adapter(ops.cast(student_features, "float32"))
            feature_loss = ops.mean(ops.square(
                adapted - ops.cast(teacher_features, "float32")))
        else:
            if y_pred is None:
                y_pred = self(x, training=training)
            if isinstance(x, (tuple, list)):  # (images, the teacher's logits)
                teacher_logits = x[1]
            else:
                teacher_logits = self.teacher(x, training=False)
        student_loss = super().compute_loss(x, y, y_pred, sample_weight,
                                            training=training)
        kd = distillation_loss(teacher_logits, y_pred, self.temperature, self.kind,
                               self.standardize)
        # Under tf.distribute, Keras divides a compiled loss by the number of
        # replicas (their gradients are summed); divide the KD and feature terms
        # alike, and track the undivided values. 1 on one device and on JAX.
        replicas = _replicas_in_sync()
        alpha = ops.cast(self._alpha, "float32")
        total = alpha * ops.cast(student_loss, "float32") + (1.0 - alpha) * kd / replicas
        if self.feature_weight:
            total = total + self.feature_weight * feature_loss / replicas
            self.feature_loss_tracker.update_state(feature_loss)
        self.student_loss_tracker.update_state(student_loss * replicas)
        self.distillation_loss_tracker.update_state(kd)
        self.total_loss_tracker.update_state(total * replicas)
        return total

    def get_config(self):
        return {
            **super().get_config(),
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "student": keras.saving.serialize_keras_object(self.student),
            "alpha": self.alpha,
            "temperature": self.temperature,
            "kind": self.kind,
            "standardize": self.standardize,
            "feature_weight": self.feature_weight,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for role in ("teacher", "student"):
            config[role] = keras.saving.deserialize_keras_object(config[role])
        return cls(**config)


def _check_alpha(alpha):
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)) \
            or not 0 <= alpha <= 1:
        raise ValueError(
            f"alpha is the weight of the student's own loss and must be "
            f"in [0, 1], got {alpha!r}."
        )


def _features_model(model, role):
    """`model`'s bottleneck features and logits in one pass, features undone of augmentation."""
    names = [layer.name for layer in model.layers]
    if BOTTLENECK_LAYER not in names:
        raise ValueError(
            f"The feature term matches the outputs of the layers named "
            f"{BOTTLENECK_LAYER!r} (the U-Net bottleneck of build_unet), but the "
            f"{role} {model.name!r} has none. Use a build_unet model as {role}, or "
            f"feature_weight=0 (an ensemble teacher has no single bottleneck).")
    features = model.get_layer(BOTTLENECK_LAYER).output
    if "augment" in names:  # map the features back, as UndoSymmetry does the logits
        symmetry = model.get_layer("augment").output[1]
        features = UndoSymmetry(name=f"{role}_features_undo")([features, symmetry])
    return keras.Model(model.input, [features, model.output], name=f"{role}_features")


class KDWeightSchedule(keras.callbacks.Callback):
    """Sets a `Distiller`'s `alpha` at the start of every epoch from a schedule.

    `alpha` weighs the student's own (label) loss; `1 - alpha` the KD term.
    The distiller holds it in a variable read inside the compiled step, so
    the change takes effect from the epoch's first batch. The alpha of each
    epoch is also written to the logs (`alpha`), hence to the history.

    Args:
        schedule: function of the epoch (0-based) returning alpha in [0, 1].

    Example:

    >>> schedule = KDWeightSchedule(KDWeightSchedule.warmup(5, 0.1))
    >>> distiller.fit(x, y, epochs=50, callbacks=[schedule])
    """

    def __init__(self, schedule):
        super().__init__()
        if not callable(schedule):
            raise TypeError(f"schedule must map an epoch to alpha, got {schedule!r}.")
        self.schedule = schedule

    @staticmethod
    def warmup(epochs, alpha):
        """Labels first, then mostly KD: alpha 1 for `epochs` epochs, then `alpha`."""
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"warmup epochs must be an int >= 0, got {epochs!r}.")
        _check_alpha(alpha)
        return lambda epoch: 1.0 if epoch < epochs else float(alpha)

    @staticmethod
    def parse(text):
        """The schedule of a flag "warmup:K:ALPHA" (see `warmup`)."""
        parts = str(text).split(":")
        try:
            if parts[0] != "warmup" or len(parts) != 3:
                raise ValueError
            return KDWeightSchedule.warmup(int(parts[1]), float(parts[2]))
        except ValueError:
            raise ValueError(f"A KD schedule reads 'warmup:K:ALPHA' (alpha 1 for K epochs, "
                             f"then ALPHA), e.g. 'warmup:5:0.1'; got {text!r}.") from None

    def on_epoch_begin(self, epoch, logs=None):
        if not isinstance(self.model, Distiller):
            raise TypeError(f"KDWeightSchedule sets a Distiller's alpha, but the model "
                            f"trained is a {type(self.model).__name__}.")
        self.model.alpha = self.schedule(epoch)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["alpha"] = self.model.alpha


def ensemble_teacher(models, name="teacher_ensemble"):
    """A teacher that averages the logits of several models.

    Teachers of different seeds err in different places; their mean logits
    are a stronger, better calibrated target than any one of them. The
    result is a functional model (the members inside it, under the names
    `member0`, `member1`, ...) that saves and loads with `keras.saving`
    and serves wherever a teacher does (`Distiller`, `predict_logits`).
    It runs every member at every step.

    Args:
        models: non-empty sequence of models with the same input and output
            shapes, returning logits.
        name: name of the ensemble model.

    Returns:
        A functional `keras.Model` mapping images to the members' mean logits.

    Example:

    >>> teacher = ensemble_teacher([teacher_s0, teacher_s1, teacher_s2])
    >>> Distiller(teacher=teacher, student=build_student())
    """
    models = list(models)
    if not models:
        raise ValueError("ensemble_teacher needs at least one model, got none.")
    for i, model in enumerate(models):
        if not isinstance(model, keras.Model):
            raise TypeError(f"Member {i} must be a keras.Model, got {type(model)}.")
        for what in ("input", "output"):
            first, this = tuple(getattr(models[0], what).shape), tuple(getattr(model, what).shape)
            if this != first:
                raise ValueError(
                    f"All members must have the same {what} shape: member 0 has {first}, "
                    f"member {i} has {this}. Ensemble models of one architecture and "
                    f"class count.")
    inputs = keras.Input(models[0].input.shape[1:], name="image")
    outputs = [keras.Model(m.input, m.output, name=f"member{i}")(inputs)
               for i, m in enumerate(models)]
    if len(outputs) == 1:
        logits = layers.Identity(name="mean_logits")(outputs[0])
    else:
        logits = layers.Average(name="mean_logits", dtype="float32")(outputs)
    return keras.Model(inputs, logits, name=name)


def _check_kd_arguments(temperature, kind):
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}.")
    if kind not in KD_KINDS:
        raise ValueError(f"kind must be one of {KD_KINDS}, got {kind!r}.")


def _check_teacher_and_student(teacher, student):
    for role, model in (("teacher", teacher), ("student", student)):
        if not isinstance(model, keras.Model):
            raise TypeError(f"{role} must be a keras.Model, got {type(model)}.")
    t_shape, s_shape = tuple(teacher.output.shape), tuple(student.output.shape)
    if t_shape[-1] != s_shape[-1]:
        raise ValueError(
            f"Teacher predicts {t_shape[-1]} classes but student predicts "
            f"{s_shape[-1]}: build both with the same n_classes."
        )
    if len(t_shape) != len(s_shape) or any(
        a is not None and b is not None and a != b for a, b in zip(t_shape, s_shape)
    ):
        raise ValueError(
            f"Teacher output shape {t_shape} differs from student output "
            f"shape {s_shape}: both must map the same image to logits of the "
            f"same shape."
        )
    # Structural check, then a numeric one for softmax hidden in a custom layer.
    last = teacher.layers[-1]
    activation = getattr(getattr(last, "activation", None), "__name__", "")
    side = [d if d is not None else 32 for d in teacher.input.shape[1:3]]
    probe = np.random.default_rng(0).uniform(0, 255, (1, *side, 3)).astype("float32")
    outputs = ops.convert_to_numpy(teacher(probe, training=False))
    sums_to_one = outputs.min() >= 0 and np.allclose(outputs.sum(-1), 1.0, atol=1e-3)
    if isinstance(last, layers.Softmax) or activation == "softmax" or sums_to_one:
        raise ValueError(
            f"The teacher's outputs are probabilities (its last layer "
            f"'{last.name}' applies softmax), but distillation needs logits. "
            f"Rebuild it without the softmax (build_unet returns logits), or "
            f"pass `keras.Model(teacher.input, teacher.layers[-1].input)` if "
            f"the softmax is a separate last layer."
        )


# =============================================================================
# 4. Training
# =============================================================================


@keras.saving.register_keras_serializable(package="utils")
class AnnotatedPixelAccuracy(keras.metrics.SparseCategoricalAccuracy):
    """Pixel accuracy over annotated pixels only (labels != `IGNORE_INDEX`)."""

    def __init__(self, name="pixel_acc", **kwargs):
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        valid = ops.cast(ops.not_equal(ops.cast(y_true, "int32"), IGNORE_INDEX), "float32")
        if sample_weight is not None:
            valid = valid * ops.cast(sample_weight, "float32")
        return super().update_state(y_true, y_pred, sample_weight=valid)


def compile_segmentation(model, learning_rate=1e-3, loss=None, steps_per_execution=1,
                         labelled_classes=LABELLED_CLASSES):
    """Compiles a model (or `Distiller`) with Adam, the loss and mIoU metrics.

    Metrics: `miou<K>`, the mean IoU over the K `labelled_classes` (on the
    Dubai data `miou5`, without Unlabeled: what model selection monitors),
    and `pixel_acc`; both ignore unannotated pixels. The number of classes is
    the model's (its last axis).

    Args:
        model: a model from `build_unet`, or a `Distiller`.
        learning_rate: Adam's learning rate, a float or a
            `keras.optimizers.schedules.LearningRateSchedule`.
        loss: student loss; `SegmentationLoss(n_classes=...)` if `None`.
        steps_per_execution: training steps per call from Python.
        labelled_classes: class indices the mean IoU averages over, e.g. a
            dataset's `labelled_classes`.

    Returns:
        The model, compiled.

    Example:

    >>> model = compile_segmentation(build_student(n_classes=3),
    ...                              labelled_classes=(0, 1, 2))
    """
    n_classes = _output_classes(model)
    labelled = _check_labelled_classes(labelled_classes, n_classes)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=loss or SegmentationLoss(n_classes=n_classes),
        metrics=[
            keras.metrics.IoU(n_classes, target_class_ids=list(labelled),
                              sparse_y_pred=False, ignore_class=IGNORE_INDEX,
                              name=miou_name(labelled)),
            AnnotatedPixelAccuracy(),
        ],
        steps_per_execution=steps_per_execution,
    )
    return model


def miou_name(labelled_classes):
    """Name of the mean IoU over `labelled_classes`: "miou5" for five classes."""
    return f"miou{len(labelled_classes)}"


def _output_classes(model):
    return int(getattr(model, "student", model).output.shape[-1])


def _check_labelled_classes(labelled_classes, n_classes):
    labelled = tuple(int(c) for c in labelled_classes)
    if not labelled or len(set(labelled)) != len(labelled) or any(
            not 0 <= c < n_classes for c in labelled):
        raise ValueError(
            f"labelled_classes must be distinct class indices in [0, {n_classes}) "
            f"(the model predicts {n_classes} classes), got {labelled_classes!r}: "
            f"pass your dataset's `labelled_classes`."
        )
    return labelled


SAMPLINGS = ("grid", "random", "consistent")
"""Training inputs `fit_segmentation` can draw: the fixed patches, random crops, or
scaled, flipped and mixed crops for consistent teaching (`ConsistentCropSequence`)."""


def _check_sampling(sampling):
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r} (from the "
                         f"profile's profile.json or a --sampling flag?).")


def fit_segmentation(
    model,
    data,
    *,
    epochs,
    output_dir,
    name,
    batch_size=16,
    seed=0,
    verbose="auto",
    callbacks=(),
    cache_teacher=True,
    sampling="grid",
    mix="cutmix",
    mix_probability=0.5,
):
    """Trains a compiled model or `Distiller`, checkpointing every epoch.

    - `BackupAndRestore` under `output_dir/backup_<name>`: rerun after an
      interruption (a Colab disconnect), training resumes from the last
      finished epoch;
    - the best model by the validation mean IoU (`miou5` on Dubai) is saved to
      `output_dir/<name>.keras` (for a `Distiller`, the student alone);
    - the history is appended to `output_dir/<name>_history.csv` and written
      to `output_dir/<name>_history.json`;
    - a NaN or infinite loss stops training and raises `FloatingPointError`
      saying which checkpoint was kept (the broken weights never replace it).

    A run resumed after an interruption sees the same batches, augmentation
    and dropout draws as an uninterrupted one, so it ends with the same
    weights (on a deterministic backend and device). Augmentation is part of
    the model (`build_unet(augment=True)`).

    Args:
        model: compiled model (see `compile_segmentation`) or `Distiller`.
        data: an `AerialDataset` (train and val splits are used).
        epochs: total number of epochs.
        output_dir: folder for checkpoints and histories.
        name: file stem of the saved model and history.
        batch_size: patches per batch.
        seed: seed of the batch order.
        verbose: passed to `fit`.
        callbacks: extra Keras callbacks.
        cache_teacher: for a `Distiller`, run its teacher once over the
            training and validation patches before training and feed those
            logits with the images, instead of running the teacher at every
            step. The targets are the same (the teacher is frozen and sees the
            images unaugmented); the host holds them (`N * P * P * C` float32).
            With `sampling="random"` or `"consistent"` only the validation
            logits are cached: the training crops are new every epoch, so the
            teacher runs at every step. With the `Distiller`'s feature term
            on, nothing is cached (a warning says so): the teacher's features
            are needed at every step.
        sampling: "grid" trains on the fixed patches `data.x_train`;
            "random" on `len(data.x_train)` crops per epoch drawn anywhere
            in the whole images of `data.files["train"]`
            (`RandomCropSequence`); "consistent" on as many crops at random
            scales, symmetries and mixes (`ConsistentCropSequence`), for
            consistent teaching: the teacher (if any) runs on exactly the
            batch the student sees, so the model's own augmentation must be
            off (`build_unet(augment=False)`; an error says so otherwise).
            Validation always uses the fixed patches.
        mix, mix_probability: the batch mix of `sampling="consistent"`
            ("cutmix", "mixup" or `None`) and its probability per crop.

    Returns:
        The history as a dict of lists, over all epochs including resumed
        ones.
    """
    if not model.compiled:
        raise ValueError(
            "Compile the model before training it, e.g. "
            "`compile_segmentation(model)`."
        )
    if getattr(data, "x_train", None) is None:
        raise ValueError(
            "fit_segmentation trains on a dataset held in memory, and this one is "
            "streamed (load_dataset(..., in_memory=False)): train with "
            "`model.fit(data.stream('train'), validation_data=data.stream('val'))`, "
            "or load it with in_memory=True."
        )
    if len(data.x_val) == 0:
        raise ValueError("The dataset has no validation patches: set "
                         "val_per_tile >= 1 in load_dataset.")
    _check_sampling(sampling)
    if sampling == "consistent":
        _check_no_model_augmentation(model)
    if cache_teacher and getattr(model, "feature_weight", 0):
        warnings.warn("cache_teacher=True is ignored: the Distiller's feature term needs "
                      "the teacher's bottleneck features, so the teacher runs at every step.")
        cache_teacher = False
    replicas = _check_replica_batch(model, batch_size, len(data.x_train))
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    train_logits, val_x = None, data.x_val
    if cache_teacher and isinstance(model, Distiller):
        val_x = (data.x_val, predict_logits(model.teacher, data.x_val, batch_size))
        if sampling == "grid":
            train_logits = predict_logits(model.teacher, data.x_train, batch_size)
    n_crops = len(data.x_train)  # for random and consistent crops
    if replicas > 1:  # whole batches only
        n_crops -= n_crops % batch_size
    if sampling == "random":
        train = RandomCropSequence(*data.whole_images("train"), data.patch_size,
                                   n_crops, batch_size, seed)
    elif sampling == "consistent":
        train = ConsistentCropSequence(*data.whole_images("train"), data.patch_size,
                                       n_crops, batch_size, seed, mix=mix,
                                       mix_probability=mix_probability)
    else:
        train = PatchSequence(data.x_train, data.y_train, batch_size, seed,
                              teacher_logits=train_logits, drop_remainder=replicas > 1)
    val_x, val_y = _pad_to_replicas(val_x, data.y_val, replicas)
    csv_path = output_dir / f"{name}_history.csv"
    backup_dir = output_dir / f"backup_{name}"
    resuming = backup_dir.exists()
    if not resuming:  # a fresh run: forget what an older run of this name left
        for stale in (csv_path, output_dir / f"{name}.best.json"):
            stale.unlink(missing_ok=True)
    # Build model, metrics and optimizer on one validation patch now: fit would
    # otherwise pull a training batch to do it, which shifts the batch order of
    # the first epoch of a resumed run. BackupAndRestore needs them built too.
    # (one patch per device: a device given none breaks the summed loss)
    model.test_on_batch(*_pad_to_replicas(data.x_val[:1], data.y_val[:1], replicas))
    # Keras prefetches batches before the callbacks' on_epoch_begin, so the
    # sequence must know a resumed run's epoch before fit starts: our own
    # record of finished epochs, kept in the backup folder beside Keras' backup
    # (and deleted with it when training ends).
    epochs_done = _EpochRecord(backup_dir / "epochs_done.json")
    train.set_epoch(epochs_done.read())
    monitor = _monitored_miou(model)
    best = _BestModelCheckpoint(output_dir / f"{name}.keras", monitor=monitor)
    stop_on_nan = _StopOnNaN()
    model.fit(
        train,
        # The sequence shuffles itself, seeded per epoch. Keras' own shuffle
        # would reorder its batches again from Python's global `random`, which
        # a resumed run cannot replay.
        shuffle=False,
        validation_data=(val_x, val_y),
        validation_batch_size=batch_size,
        epochs=epochs,
        callbacks=[
            _SyncEpoch(train),
            keras.callbacks.BackupAndRestore(str(backup_dir)),
            epochs_done,
            stop_on_nan,
            best,
            keras.callbacks.CSVLogger(str(csv_path), append=True),
            *callbacks,
        ],
        verbose=verbose,
    )
    history = read_history(csv_path)
    with open(output_dir / f"{name}_history.json", "w") as f:
        json.dump(history, f, indent=1)
    if stop_on_nan.stopped:
        epoch, loss = stop_on_nan.stopped
        kept = (f"the best checkpoint so far ({best.monitor} {best.best:.4f}) is kept "
                f"at {best.path}" if best.path.exists() else
                "no checkpoint had been saved yet")
        raise FloatingPointError(
            f"Training stopped: the loss became {loss} in epoch {epoch}; {kept}. "
            f"Lower the learning rate or check the data for bad values.")
    return history


def _check_no_model_augmentation(model):
    trained = getattr(model, "student", model)
    if any(isinstance(layer, RandomSymmetry) for layer in trained.layers):
        raise ValueError(
            f"sampling='consistent' augments the batch on the host, so that a teacher "
            f"sees exactly what the student sees, but the model {trained.name!r} also "
            f"augments inside itself (RandomSymmetry). Build it with "
            f"build_unet(augment=False) (build_student(augment=False)).")


def _check_replica_batch(model, batch_size, n_train):
    """The number of devices `model` trains on; checks they divide `batch_size`."""
    replicas = _data_parallel_size(model)
    if replicas > 1 and (batch_size % replicas or batch_size > n_train):
        raise ValueError(
            f"Under data_parallel on {replicas} devices, batch_size must be a multiple "
            f"of {replicas} and at most the {n_train} training patches (every batch is "
            f"split evenly), got batch_size={batch_size}: pass e.g. "
            f"batch_size={max(replicas, batch_size - batch_size % replicas)}.")
    return replicas


def _pad_to_replicas(x, y, replicas):
    """Pads validation patches to a multiple of `replicas`: black, unannotated.

    The padding's labels are `IGNORE_INDEX`, so the metrics and
    `SegmentationLoss` leave it out (a padded batch still counts as a full one
    in the mean loss, and a `Distiller`'s KD term sees the padding).
    """
    extra = -len(y) % replicas
    if not extra:
        return x, y
    pad = lambda a, value=0: np.concatenate(  # noqa: E731
        [a, np.full((extra, *a.shape[1:]), value, a.dtype)])
    x = tuple(pad(a) for a in x) if isinstance(x, tuple) else pad(x)
    return x, pad(y, IGNORE_INDEX)


class _SyncEpoch(keras.callbacks.Callback):
    """Makes each epoch's randomness a function of the epoch number alone.

    Sets the training sequence's epoch (batch order, crops) and moves every seed
    generator (augmentation, dropout) to its initial state plus `[epoch, 0]`, so a run
    resumed by `BackupAndRestore` (which restores weights and optimizer, not
    seed states) draws exactly what an uninterrupted run draws. Must come
    before `BackupAndRestore` to record the states before any restore.
    """

    def __init__(self, sequence):
        super().__init__()
        self.sequence = sequence
        self._initial = {}

    def _seed_states(self):
        return [v for v in self.model.non_trainable_variables
                if v.path.endswith("seed_generator_state")]

    def on_train_begin(self, logs=None):
        self._initial = {v.path: ops.convert_to_numpy(v) for v in self._seed_states()}

    def on_epoch_begin(self, epoch, logs=None):
        self.sequence.set_epoch(epoch)
        for v in self._seed_states():
            start = self._initial[v.path]
            v.assign(start + np.array([epoch, 0], dtype=start.dtype))


def _monitored_miou(model):
    names = [n for n in model.get_metrics_result() if re.fullmatch(r"miou\d+", n)]
    if len(names) != 1:
        raise ValueError(
            f"fit_segmentation selects the best epoch by the validation mean IoU "
            f"(a metric named like 'miou5'), but the model's metrics are "
            f"{sorted(model.get_metrics_result())}: compile it with "
            f"compile_segmentation.")
    return f"val_{names[0]}"


class _EpochRecord(keras.callbacks.Callback):
    """Records how many epochs have finished, for a resumed run's first batches."""

    def __init__(self, path):
        super().__init__()
        self.path = pathlib.Path(path)

    def read(self):
        return json.loads(self.path.read_text())["epochs_done"] if self.path.exists() else 0

    def on_epoch_end(self, epoch, logs=None):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"epochs_done": epoch + 1}))


class _StopOnNaN(keras.callbacks.Callback):
    """Stops training on a non-finite epoch loss, and says where.

    Checks once per epoch, not per batch like `keras.callbacks.TerminateOnNaN`:
    reading a batch's loss would make the host wait for the device at every
    step. One NaN batch makes the epoch's mean loss NaN. `_BestModelCheckpoint`
    refuses an epoch with a non-finite loss by itself, so the order of the two
    callbacks does not matter.
    """

    def __init__(self):
        super().__init__()
        self.stopped = None  # (epoch, loss) once stopped

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if self.stopped is None and loss is not None and not np.isfinite(loss):
            self.model.stop_training = True
            self.stopped = (epoch + 1, loss)


class _BestModelCheckpoint(keras.callbacks.Callback):
    """Saves the best model by a monitored metric: a Distiller's student alone.

    `keras.callbacks.ModelCheckpoint(save_best_only=True, mode="max")` would
    save the whole model it trains, which for a `Distiller` is the teacher,
    the student and the optimizer; this saves the student, float32, without
    optimizer (`save_model`), keeps the best score in `<path>.best.json` so a
    resumed run goes on comparing with it, and never saves an epoch whose
    loss is not finite.
    """

    def __init__(self, path, monitor):
        super().__init__()
        self.path, self.monitor = pathlib.Path(path), monitor
        self.best = -np.inf

    def on_train_begin(self, logs=None):
        state = self.path.with_suffix(".best.json")
        if state.exists() and self.path.exists():  # resuming this run
            self.best = json.loads(state.read_text())["best"]

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value, loss = logs.get(self.monitor), logs.get("loss", 0.0)
        if (value is None or not np.isfinite(value) or not np.isfinite(loss)
                or value <= self.best):
            return
        self.best = float(value)
        save_model(getattr(self.model, "student", self.model), self.path)
        self.path.with_suffix(".best.json").write_text(
            json.dumps({"best": self.best, "epoch": epoch + 1,
                        "monitor": self.monitor}))


def save_model(model, path):
    """Saves a model for inference: float32, architecture and weights, no optimizer.

    A `.keras` file of a compiled model also holds the optimizer's state
    (Adam: two more copies of the weights); this one does not, so it is about
    3x smaller. A model trained in mixed precision is saved with float32
    layers, to run anywhere (bfloat16 is slow on most CPUs). It loads with
    `keras.models.load_model` once `utils` is imported (which registers the
    augmentation layers, identities at inference).

    Args:
        model: a functional Keras model.
        path: the `.keras` file to write.
    """
    if any(layer.dtype_policy.name != "float32" for layer in model.layers):
        model = with_dtype_policy(model, "float32")
    keras.Model(model.input, model.output, name=model.name).save(path)


def with_dtype_policy(model, policy):
    """A copy of a functional model whose layers all use dtype `policy`.

    Args:
        model: a functional Keras model.
        policy: a Keras dtype policy name, e.g. "float32" or "mixed_bfloat16".

    Returns:
        A new model with the same architecture and (float32) weights, not
        compiled; with "mixed_float16", `compile` wraps its optimizer in
        Keras' `LossScaleOptimizer`.
    """
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] != "InputLayer":
            # the logits and the symmetry layers stay float32 in mixed precision
            keep = layer["config"]["name"] in ("logits", "augment", "augment_undo",
                                               "mean_logits")
            layer["config"]["dtype"] = "float32" if keep else policy
    copy = keras.Model.from_config(config)
    copy.set_weights(model.get_weights())
    copy.dtype_policy = policy  # compile adds loss scaling for "mixed_float16"
    return copy


def read_history(path):
    """Reads a history CSV (from `fit_segmentation`) into a dict of lists."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    return {key: [float(r[key]) for r in rows] for key in rows[0]}


# -----------------------------------------------------------------------------
# Data-parallel training
# -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """What `data_parallel` trains on: the backend, the devices, their number."""

    backend: str
    devices: tuple
    num_replicas: int
    strategy: object = dataclasses.field(repr=False, compare=False)


@contextlib.contextmanager
def data_parallel(devices=None):
    """Trains the models built, compiled and fitted inside it on several devices.

    Each batch is split evenly over the devices, each device runs the model on
    its share, and the gradients are summed, so a step on N devices with a
    batch of B patches is the step one device takes with the same B patches:
    the losses of this module (`SegmentationLoss`, `Distiller`) give the same
    value and gradient, to float rounding, on any number of devices. Under
    it, `fit_segmentation` drops an epoch's last, partial training batch (so
    use a `batch_size` the devices divide), and `predict_logits` (and so
    `evaluate_segmentation`) pads a batch the devices do not divide and drops
    the padding's outputs, so every patch counts exactly once.

    Random draws are the same too: on JAX one program draws for the whole
    batch, and on TensorFlow the U-Net's `RandomSymmetry` and
    `DeviceInvariantDropout` draw the whole batch's values on every replica
    and keep the replica's rows (Keras' own `Dropout` and random layers
    would repeat one replica's draws on the others). Validation pads
    its split with unannotated black patches: the metrics (and the best
    checkpoint) are exact, the mean `val_loss` counts a padded batch as a
    full one, and a `Distiller`'s KD term sees the padding.

    On TensorFlow it enters a `tf.distribute.MirroredStrategy` scope (a
    `TPUStrategy` on a TPU); on JAX it sets a `keras.distribution.DataParallel`
    with `keras.distribution.set_distribution`, and puts back the previous
    distribution on exit. Build, compile and fit the model inside the block.

    Args:
        devices: `None` for every visible accelerator (GPUs or TPU cores; on a
            machine without any, every visible CPU device); an int for the
            first that many of them; or a list of device names as the backend
            spells them ("/gpu:0" on TensorFlow, "gpu:0" on JAX).

    Returns:
        A context manager yielding a `DataParallel`: `.num_replicas` (the
        number of devices), `.devices`, `.backend`, and `.strategy` (the
        `tf.distribute` strategy or the `keras.distribution` object).

    Example:

    >>> with data_parallel() as parallel:
    ...     model = compile_segmentation(build_teacher())
    ...     fit_segmentation(model, data, epochs=40, output_dir="runs", name="teacher",
    ...                      batch_size=16 * parallel.num_replicas)
    """
    parallel = _make_data_parallel(devices)
    if parallel.backend == "tensorflow":
        with parallel.strategy.scope():
            yield parallel
    else:
        previous = keras.distribution.distribution()
        keras.distribution.set_distribution(parallel.strategy)
        try:
            yield parallel
        finally:
            keras.distribution.set_distribution(previous)


def use_all_devices():
    """Makes the models built from here on train on every visible accelerator.

    The notebooks' one call for several devices: where the runtime has more
    than one GPU (Kaggle's "GPU T4 x2", a multi-GPU machine) or a TPU (or,
    without accelerators, more than one CPU device, as the tests make), it
    sets what `data_parallel()` enters for the rest of the session
    (`tf.distribute.experimental_set_strategy` on TensorFlow,
    `keras.distribution.set_distribution` on JAX), so the cells below build,
    compile, fit and predict as usual, each batch split evenly over the
    devices (see `data_parallel` for what equals one device's training).
    With one device, or none, it changes nothing. Either way it prints what
    it found.

    Returns:
        A `DataParallel`: `.num_replicas` is 1 when nothing changed.

    Example:

    >>> parallel = use_all_devices()
    1 device (/device:CPU:0): training runs on it as usual.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        visible = [d.name for d in gpus or tf.config.list_logical_devices("CPU")]
        several = len(visible) > 1 or (not gpus and _connect_tpu() is not None)
    else:
        visible = [str(d) for d in keras.distribution.list_devices()]
        several = len(visible) > 1
    if not several:
        print(f"1 device ({visible[0] if visible else backend}): training runs on it "
              f"as usual.")
        return DataParallel(backend, tuple(visible[:1]), 1, None)
    parallel = _make_data_parallel(None)
    if backend == "tensorflow":
        tf.distribute.experimental_set_strategy(parallel.strategy)
    else:
        keras.distribution.set_distribution(parallel.strategy)
    print(f"{parallel.num_replicas} devices ({', '.join(parallel.devices)}): the models "
          f"built from here on train data-parallel, each batch split evenly over them.")
    return parallel


def _make_data_parallel(devices):
    """The `DataParallel` of `devices` on this backend, not yet in use."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tensorflow_data_parallel(devices)
    if backend == "jax":
        names = _pick_devices(devices, keras.distribution.list_devices())
        distribution = keras.distribution.DataParallel(devices=names)
        return DataParallel("jax", tuple(names), len(names), distribution)
    raise ValueError(
        f"data_parallel supports the TensorFlow and JAX backends, and Keras runs "
        f"on {backend!r}: set KERAS_BACKEND=tensorflow or KERAS_BACKEND=jax "
        f"before importing keras.")


def _tensorflow_data_parallel(devices):
    import tensorflow as tf

    if devices is None or isinstance(devices, int):
        tpu = _connect_tpu() if not tf.config.list_logical_devices("GPU") else None
        if tpu is not None:
            strategy = tf.distribute.TPUStrategy(tpu)
            names = [d.name for d in tf.config.list_logical_devices("TPU")]
            if devices is not None and devices != len(names):
                raise ValueError(f"On a TPU, data_parallel trains on all {len(names)} "
                                 f"cores; got devices={devices}. Pass devices=None.")
            return DataParallel("tensorflow", tuple(names), strategy.num_replicas_in_sync,
                                strategy)
        visible = (tf.config.list_logical_devices("GPU")
                   or tf.config.list_logical_devices("CPU"))
        names = _pick_devices(devices, [d.name for d in visible])
    else:
        names = _pick_devices(devices, None)
    strategy = _mirrored_strategy(tuple(names))
    return DataParallel("tensorflow", tuple(names), strategy.num_replicas_in_sync, strategy)


@functools.lru_cache(maxsize=None)
def _mirrored_strategy(names):
    """One `MirroredStrategy` per set of devices for the whole process.

    A second strategy over the same devices numbers its all-reduces from the
    same start as the first, and a model trained under it after one trained
    under the first aborts with "Shape mismatch in the collective instance".
    """
    import tensorflow as tf

    return tf.distribute.MirroredStrategy(list(names))


@functools.lru_cache(maxsize=None)
def _connect_tpu():
    """The TPU's cluster resolver when this machine has one, else `None` (once a process)."""
    if not (os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR")
            or os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio/0")):
        return None
    import tensorflow as tf

    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError):
        return None
    return resolver


def _pick_devices(devices, visible):
    if devices is None:
        return list(visible)
    if isinstance(devices, bool) or not isinstance(devices, (int, list, tuple)):
        raise TypeError(f"devices must be None, an int or a list of device names, "
                        f"got {devices!r}.")
    if isinstance(devices, int):
        if visible is None or not 1 <= devices <= len(visible):
            raise ValueError(f"devices={devices} asks for more devices than the "
                             f"{len(visible or [])} visible ({visible}): pass at most "
                             f"{len(visible or [])}, or None for all.")
        return list(visible[:devices])
    if not devices:
        raise ValueError("devices is an empty list: pass None for every visible device.")
    return [str(d) for d in devices]


def _replicas_in_sync():
    """How many `tf.distribute` replicas each compute a share of the loss (else 1).

    On JAX a `keras.distribution` step is one program over the whole batch, so
    the loss is already the global one and this is 1.
    """
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def _replica_rows(draw, shape):
    """`draw(shape)` for a batch, as one device would draw it, whatever the replicas.

    `draw(shape)` must draw from a seed state every replica holds alike (a
    Keras `SeedGenerator`). Under `tf.distribute` with several replicas it is
    called with the whole batch's shape on each replica, and the replica's
    own rows are returned: the draws one device takes for the same batch.
    Elsewhere it is `draw(shape)`.
    """
    if keras.backend.backend() != "tensorflow":
        return draw(shape)
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return draw(shape)
    replicas, replica = context.num_replicas_in_sync, context.replica_id_in_sync_group
    rows = tf.cast(shape[0], tf.int32)
    # Every replica's row count, by summing one-hot vectors (replicas may differ
    # by one in the last, uneven batch of plain `fit`).
    sizes = tf.cast(context.all_reduce(
        tf.distribute.ReduceOp.SUM,
        tf.one_hot(replica, replicas) * tf.cast(rows, tf.float32)), tf.int32)
    offset = tf.reduce_sum(tf.where(tf.range(replicas) < replica, sizes, 0))
    batch = tf.stack([tf.reduce_sum(sizes), *[tf.cast(d, tf.int32) for d in shape[1:]]])
    return draw(batch)[offset : offset + rows]


def _sum_over_replicas(value):
    """`value` summed over the `tf.distribute` replicas (itself elsewhere).

    Differentiable: the gradient of an all-reduced sum is the all-reduced sum of
    the replicas' gradients, so a loss built from it is the global loss on
    every replica.
    """
    if keras.backend.backend() != "tensorflow":
        return value
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def _data_parallel_size(model=None):
    """The number of devices a batch is split over when `model` trains now."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        strategy = (model.distribute_strategy if model is not None
                    else tf.distribute.get_strategy())
        return strategy.num_replicas_in_sync
    distribution = keras.distribution.distribution() if keras.backend.backend() == "jax" else None
    if isinstance(distribution, keras.distribution.DataParallel):
        return int(np.prod(distribution.device_mesh.shape))
    return 1


# =============================================================================
# 5. Evaluation
# =============================================================================


def predict_logits(model, images, batch_size=16):
    """Runs `model` on uint8 images in batches; returns float32 logits.

    A Keras model runs through its own `predict_on_batch`, which Keras
    compiles once per model and keeps.

    Args:
        model: a Keras model returning logits, or a function from a batch to
            logits such as `make_predict_function`'s.
        images: images `(N, H, W, 3)`, uint8 or float.
        batch_size: images per forward pass.

    Returns:
        float32 numpy logits `(N, H, W, C)`.

    Example:

    >>> predict_logits(student, data.x_test).shape
    (290, 256, 256, 6)
    """
    predict = _batch_predictor(model)
    images = np.asarray(images)
    return np.concatenate([predict(images[i : i + batch_size])
                           for i in range(0, len(images), batch_size)])


def _replicated_predictor(model, replicas):
    """`model`'s prediction of a batch split over `replicas` devices.

    Under `tf.distribute`, `predict_on_batch` gives every replica the whole
    batch and returns their outputs end to end (N times the batch), and on JAX
    `predict` raises on a batch the devices do not divide; so the batch is
    padded with black images to a multiple of `replicas`, split by `predict`,
    and the padding's outputs are dropped.
    """

    def predict(batch):
        batch = np.asarray(batch, "float32")
        extra = -len(batch) % replicas
        padded = np.concatenate([batch, np.zeros((extra, *batch.shape[1:]), "float32")])
        logits = model.predict(padded, batch_size=len(padded), verbose=0)
        return np.asarray(logits, "float32")[: len(batch)]

    return predict


def _batch_predictor(model):
    """A function from a batch to float32 logits: `model` itself, or its `predict_on_batch`."""
    if _is_predict_function(model):
        return model
    replicas = _data_parallel_size(model)
    if replicas > 1:
        return _replicated_predictor(model, replicas)
    return lambda batch: np.asarray(model.predict_on_batch(np.asarray(batch, "float32")),
                                    dtype=np.float32)


def make_predict_function(model):
    """A fast function from a batch of images to the logits of `model`.

    The inference path of `measure_latency`: a `tf.function` on TensorFlow,
    a `jax.jit` of the model's stateless call on JAX (weights passed in, so
    later weight changes are seen), and `predict_on_batch` elsewhere. It
    skips the per-call work of `predict_on_batch` (data adapters,
    callbacks), which dominates for a small model at batch 1. Make it once
    and call it for every batch: each new function compiles again. The
    other prediction functions accept it in place of the model.

    Args:
        model: a Keras model returning logits.

    Returns:
        A function from images `(N, H, W, 3)` (uint8 or float) to float32
        numpy logits `(N, H, W, C)`.

    Example:

    >>> predict = make_predict_function(student)
    >>> predict(data.x_test[:8]).shape
    (8, 256, 256, 6)
    """
    function = _compile_inference(model)

    def predict(batch):
        batch = np.asarray(batch, dtype="float32")
        return np.asarray(ops.convert_to_numpy(function(batch)), dtype=np.float32)

    predict.model = model
    return predict


def _is_predict_function(model):
    return callable(model) and not isinstance(model, keras.Model) and hasattr(model, "model")


def _compile_inference(model):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        def forward(x):
            return model(x, training=False)

        # No AutoGraph: the call has no Python control flow to convert.
        return tf.function(forward, reduce_retracing=True, autograph=False)
    if backend == "jax":
        import jax

        @jax.jit
        def forward(trainable, non_trainable, x):
            return model.stateless_call(trainable, non_trainable, x, training=False)[0]

        return lambda x: forward([v.value for v in model.trainable_variables],
                                 [v.value for v in model.non_trainable_variables], x)
    return model.predict_on_batch


def export_litert(model, path, input_size=256, quantize=None, calibration_images=None):
    """Exports a model to LiteRT (`.tflite`), to run without Keras.

    The export fixes the image size (LiteRT prefers static shapes); the batch
    size stays free. Needs the TensorFlow backend. Quantization goes through
    Keras' own LiteRT exporter (TFLite converter settings); inputs and
    outputs stay float32 either way.

    Args:
        model: a Keras model returning logits.
        path: the `.tflite` file to write.
        input_size: side of the square input images.
        quantize: `None` (float32), "float16" (weights in float16: half the
            file) or "int8" (weights and activations in int8, calibrated on
            `calibration_images`: a quarter of the file).
        calibration_images: uint8 or float images `(N, S, S, 3)` for "int8",
            e.g. a few dozen training patches.

    Returns:
        `pathlib.Path` of the file.

    Example:

    >>> export_litert(student, "student.tflite")
    >>> export_litert(student, "student_int8.tflite", quantize="int8",
    ...               calibration_images=data.x_train[:64])
    >>> predict = load_litert("student.tflite")
    """
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            f"LiteRT export needs the TensorFlow backend, this is "
            f"{keras.backend.backend()!r}: rerun with KERAS_BACKEND=tensorflow."
        )
    import tensorflow as tf

    options = {}
    if quantize == "float16":
        options = {"optimizations": [tf.lite.Optimize.DEFAULT],
                   "target_spec": {"supported_types": [tf.float16]}}
    elif quantize == "int8":
        if calibration_images is None or len(calibration_images) == 0:
            raise ValueError("quantize='int8' needs calibration_images, e.g. "
                             "data.x_train[:64], to choose the activation ranges.")
        images = np.asarray(calibration_images, dtype="float32")
        options = {"optimizations": [tf.lite.Optimize.DEFAULT],
                   "representative_dataset": lambda: ([image[None]] for image in images)}
    elif quantize is not None:
        raise ValueError(f"quantize must be None, 'float16' or 'int8', got {quantize!r}.")
    inputs = keras.Input((input_size, input_size, 3), name="image")
    fixed = keras.Model(inputs, model(inputs, training=False), name=model.name)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fixed.export(str(path), format="litert", **options)
    return path


def load_litert(path, num_threads=None):
    """Loads a `.tflite` model; returns a function from images to logits.

    Uses the `ai_edge_litert` interpreter when installed, else TensorFlow's.

    Args:
        path: the `.tflite` file.
        num_threads: CPU threads for the interpreter; all cores if `None`
            (the interpreter's own default is one).
    """
    import warnings

    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # TensorFlow's copy, deprecated but still shipped
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        interpreter = Interpreter(model_path=str(path),
                                  num_threads=num_threads or os.cpu_count())
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]
    target = interpreter.get_output_details()[0]

    def predict(images):
        images = np.asarray(images, dtype=np.float32)
        if tuple(interpreter.get_input_details()[0]["shape"]) != images.shape:
            interpreter.resize_tensor_input(source["index"], images.shape)
            interpreter.allocate_tensors()
        interpreter.set_tensor(source["index"], images)
        interpreter.invoke()
        return interpreter.get_tensor(target["index"])

    return predict


def evaluate_segmentation(model, x, y, *, batch_size=16, max_pr_pixels=2_000_000,
                          seed=0, class_names=CLASSES, labelled_classes=LABELLED_CLASSES):
    """Evaluates a segmentation model on patches.

    Predicts the logits of `x` and scores them with `segmentation_metrics`:
    IoU per class and their means, pixel accuracy, precision, recall, F1 and
    precision-recall curves. Unannotated pixels (`IGNORE_INDEX`) are left
    out.

    Args:
        model: Keras model returning logits.
        x: uint8 images `(N, H, W, 3)`.
        y: labels `(N, H, W)`.
        batch_size: prediction batch size.
        max_pr_pixels: pixel sample size for PR curves and AP.
        seed: seed of the pixel sample.
        class_names: names of the classes, in label order.
        labelled_classes: classes of the headline mean IoU.

    Returns:
        The dict of `segmentation_metrics`.

    Example:

    >>> results = evaluate_segmentation(student, data.x_test, data.y_test)
    >>> results["miou5"]
    """
    logits = predict_logits(model, x, batch_size)
    return segmentation_metrics(y, logits, max_pr_pixels=max_pr_pixels, seed=seed,
                                class_names=class_names,
                                labelled_classes=labelled_classes)


def iou_scores(y_true, y_pred, *, n_classes=len(CLASSES),
               labelled_classes=LABELLED_CLASSES):
    """Confusion matrix, IoUs and pixel accuracy of predicted labels.

    Pixels labelled `IGNORE_INDEX` are left out. The confusion matrix is
    scikit-learn's; IoU of a class is TP / (TP + FP + FN) from it; a class
    absent from both truth and prediction has IoU NaN and is left out of the
    means. The cheap part of `segmentation_metrics`, for when only these
    scores are needed.

    Args:
        y_true: labels, any shape.
        y_pred: predicted labels, the same shape.
        n_classes: number of classes.
        labelled_classes: classes of the headline mean IoU.

    Returns:
        A dict with `confusion_matrix` (rows: truth, columns: prediction),
        `per_class_iou`, `miou<n_classes>` (every class, `miou6` on Dubai),
        `miou<K>` (the K labelled classes, `miou5` on Dubai) and `pixel_acc`.

    Example:

    >>> iou_scores(np.array([0, 1, 1]), np.array([0, 1, 0]))["per_class_iou"][:2]
    [0.5, 0.5]
    """
    from sklearn import metrics

    labelled = _check_labelled_classes(labelled_classes, n_classes)
    y_true, y_pred = np.asarray(y_true).reshape(-1), np.asarray(y_pred).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}.")
    valid = y_true != IGNORE_INDEX
    y_true, y_pred = y_true[valid].astype(np.int64), y_pred[valid].astype(np.int64)
    if y_true.size and (y_true.max() >= n_classes or y_pred.min() < 0
                        or y_pred.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}) or be {IGNORE_INDEX}.")
    cm = metrics.confusion_matrix(y_true, y_pred, labels=np.arange(n_classes))
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    return {
        "confusion_matrix": cm,
        "per_class_iou": iou.tolist(),
        f"miou{n_classes}": float(np.nanmean(iou)),
        miou_name(labelled): float(np.nanmean(iou[list(labelled)])),
        "pixel_acc": float(tp.sum() / max(cm.sum(), 1)),
    }


def _pixel_sample(n, max_pixels, seed):
    """Indices of a uniform sample of at most `max_pixels` of `n` pixels."""
    if n <= max_pixels:
        return np.arange(n)
    return np.random.default_rng(seed).choice(n, max_pixels, replace=False)


def segmentation_metrics(y_true, logits, *, max_pr_pixels=2_000_000, seed=0,
                         class_names=CLASSES, labelled_classes=LABELLED_CLASSES):
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
        logits: logits `(..., C)`, C = `len(class_names)`.
        max_pr_pixels: pixel sample size for PR curves and AP.
        seed: seed of the pixel sample.
        class_names: names of the classes, in label order.
        labelled_classes: classes of the headline mean IoU.

    Returns:
        The dict of `iou_scores` plus `precision`, `recall`, `f1`, `support`,
        `average_precision` (lists in class order), `pr_curves` ({class:
        (precision, recall)}) and `report` (scikit-learn's classification
        report as text).

    Example:

    >>> results = segmentation_metrics(data.y_test, predict_logits(student, data.x_test))
    >>> results["miou5"], results["average_precision"]
    """
    from scipy.special import softmax
    from sklearn import metrics

    y_true = np.asarray(y_true).reshape(-1)
    logits = np.asarray(logits)
    n_classes = len(class_names)
    if logits.shape[-1] != n_classes or logits.size // n_classes != y_true.size:
        raise ValueError(
            f"logits of shape {logits.shape} don't match {y_true.size} labels "
            f"and {n_classes} classes."
        )
    logits = logits.reshape(-1, n_classes)
    valid = y_true != IGNORE_INDEX
    y_true, logits = y_true[valid], logits[valid]
    y_pred = logits.argmax(-1)
    labels = list(range(n_classes))
    scores = iou_scores(y_true, y_pred, n_classes=n_classes,
                        labelled_classes=labelled_classes)
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    sample = _pixel_sample(len(y_true), max_pr_pixels, seed)
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


def calibration(logits, y_true, temperatures=(1.0,), *, n_bins=15,
                max_pixels=2_000_000, seed=0):
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
    >>> min(rows, key=lambda row: row["nll"])["temperature"]
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


def error_overlap(y_true, pred_a, pred_b, by_class=False, class_names=CLASSES):
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
        class_names: names of the classes, in label order, for `by_class`.

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
        result["by_class"] = {name: shares(truth == c) for c, name in enumerate(class_names)
                              if np.any(truth == c)}
    return result


def predict_image(model, image, *, tile_size=256, overlap=None, batch_size=8,
                  return_logits=False):
    """Segments a whole image of any size with overlapping tiles.

    The image is padded by reflection to cover a grid of `tile_size` tiles
    with stride `tile_size - overlap`; the logits of overlapping tiles are
    blended with weights that fall off towards tile borders (where a U-Net
    sees the least context), and the padding is cropped away. For a scene
    too large for memory, `segment_scene` runs the same blending band by
    band from a raster file.

    Args:
        model: model returning logits; must accept `tile_size` inputs.
        image: uint8 array `(H, W, 3)`, any H and W.
        tile_size: tile side, a multiple of 16.
        overlap: pixels shared by neighbouring tiles, `0 <= overlap <
            tile_size`; `tile_size // 4` if `None`.
        batch_size: tiles per forward pass.
        return_logits: also return the blended logits `(H, W, C)`.

    Returns:
        Labels `(H, W)`, or `(labels, logits)` with `return_logits=True`.

    Example:

    >>> labels = predict_image(student, np.zeros((325, 410, 3), np.uint8))
    >>> labels.shape
    (325, 410)
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {image.shape}.")
    overlap = _check_tiling(tile_size, overlap)
    height, width = image.shape[:2]
    labels = np.empty((height, width), np.uint8)
    logits = []

    def consume(top, band):
        labels[top : top + len(band)] = band.argmax(-1)
        if return_logits:
            if not logits:
                logits.append(np.empty((height, width, band.shape[-1]), np.float32))
            logits[0][top : top + len(band)] = band

    _blend_tiles(model, lambda start, stop: image[start:stop], height, width,
                 tile_size, overlap, batch_size, consume)
    return (labels, logits[0]) if return_logits else labels


def _check_tiling(tile_size, overlap):
    """Validates `tile_size` and `overlap`; returns the overlap to use."""
    if tile_size % 16 or tile_size < 16:
        raise ValueError(f"tile_size must be a multiple of 16, got {tile_size}.")
    overlap = tile_size // 4 if overlap is None else overlap
    if not 0 <= overlap < tile_size:
        raise ValueError(
            f"overlap must be in [0, tile_size={tile_size}), got {overlap}."
        )
    return overlap


def _blend_tiles(model, read_rows, height, width, tile_size, overlap, batch_size,
                 consume):
    """Blends overlapping tiles; calls `consume(top, logits)` for each band, top to bottom.

    The one tiling of `predict_image` and `segment_scene`. `read_rows(start,
    stop)` returns the image rows `[start, stop)`, all columns, `(rows,
    width, 3)`; it is asked for at most `tile_size` rows at a time. The
    padded image is never built: each row of tiles reads its strip, padded by
    reflection (`np.pad(..., mode="symmetric")`, rows mapped through the
    same padding of their indices). Tiles run in the same row-major batches
    and their weighted logits are summed in the same order as over a whole
    padded array, so the bands are bit-identical to it; only the `tile_size`
    rows under the current row of tiles are held.

    The model runs in the calling thread (so its device, distribution and
    dtype scopes apply); the blending and `consume` run in one worker
    thread, in order, at most two batches behind, so they overlap with the
    model's next batches (numpy, TensorFlow, JAX and GDAL release the GIL).
    An error in either thread is raised here.
    """
    stride = tile_size - overlap
    padded_h = tile_size + max(0, math.ceil((height - tile_size) / stride)) * stride
    padded_w = tile_size + max(0, math.ceil((width - tile_size) / stride)) * stride
    source_rows = np.pad(np.arange(height), (0, padded_h - height), mode="symmetric")
    corners = [(y, x) for y in range(0, padded_h - tile_size + 1, stride)
               for x in range(0, padded_w - tile_size + 1, stride)]
    ramp = np.minimum(np.arange(tile_size) + 1, np.arange(tile_size)[::-1] + 1)
    window = np.minimum(ramp, max(overlap, 1)).astype(np.float32)
    weight = np.outer(window, window)[..., None]
    predict = _batch_predictor(model)
    strips = {}

    def strip(y):  # padded rows [y, y + tile_size), all padded columns
        if y not in strips:
            rows = source_rows[y : y + tile_size]
            first = int(rows.min())
            pixels = read_rows(first, int(rows.max()) + 1)[rows - first]
            strips[y] = np.pad(pixels, ((0, 0), (0, padded_w - width), (0, 0)),
                               mode="symmetric")
        return strips[y]

    blend = _TileBlender(tile_size, stride, padded_w, height, width, weight, consume)
    failed = threading.Event()

    def run(step, *args):  # in the worker; after an error, nothing more runs
        if failed.is_set():
            return
        try:
            step(*args)
        except BaseException:
            failed.set()
            raise

    with concurrent.futures.ThreadPoolExecutor(1, "blend_tiles") as worker:
        pending = collections.deque()
        try:
            for start in range(0, len(corners), batch_size):
                batch = corners[start : start + batch_size]
                for y in list(strips):
                    if y < batch[0][0]:
                        del strips[y]
                tiles = np.stack([strip(y)[:, x : x + tile_size] for y, x in batch])
                pending.append(worker.submit(run, blend.add, batch, predict(tiles)))
                while len(pending) > 2 or (pending and failed.is_set()):
                    pending.popleft().result()
            pending.append(worker.submit(run, blend.finish))
            while pending:
                pending.popleft().result()
        except BaseException:
            failed.set()  # an error here (or Ctrl+C): the worker stops too
            raise


class _TileBlender:
    """The running sums of `_blend_tiles` over the `tile_size` rows of one row of tiles."""

    def __init__(self, tile_size, stride, padded_w, height, width, weight, consume):
        self.tile_size, self.stride = tile_size, stride
        self.height, self.width = height, width
        self.weight, self.consume = weight, consume
        self.total = None
        self.norm = np.zeros((tile_size, padded_w, 1), np.float32)
        self.top = 0  # padded row of total[0]: the top of the current row of tiles

    def add(self, corners, logits):
        if self.total is None:
            self.total = np.zeros((*self.norm.shape[:2], logits.shape[-1]), np.float32)
        size = self.tile_size
        for (y, x), tile_logits in zip(corners, logits):
            if y > self.top:  # a new row of tiles: rows above it get nothing more
                self._emit(y - self.top)
                for array in (self.total, self.norm):
                    array[: size - self.stride] = array[self.stride :].copy()
                    array[size - self.stride :] = 0
                self.top = y
            top = y - self.top
            self.total[top : top + size, x : x + size] += tile_logits * self.weight
            self.norm[top : top + size, x : x + size] += self.weight

    def finish(self):
        self._emit(self.tile_size)

    def _emit(self, rows):  # the blended rows [top, top + rows) inside the image
        rows = min(rows, self.height - self.top)
        if rows > 0:
            self.consume(self.top, self.total[:rows, : self.width]
                         / self.norm[:rows, : self.width])


def segment_scene(model, src_path, dst_path, *, tile_size=256, overlap=None,
                  batch_size=8, bands=(1, 2, 3), rescale=None, class_names=CLASSES,
                  palette=PALETTE, progress=None):
    """Segments a raster scene of any size into a georeferenced label GeoTIFF.

    The scene is read band by band (rows of tiles) and blended exactly as
    `predict_image` does, so the labels are identical to `predict_image` on
    the same pixels, but memory depends on the width, `tile_size` and
    `batch_size`, never on the height: a few times `tile_size * width * 4 *
    classes` bytes (the blended rows under one row of tiles) besides the
    model, with GDAL's block cache held to the blocks under two rows of
    tiles (for tiled or striped sources). The output is a single-band uint8
    GeoTIFF of class indices with the source's CRS, transform and size,
    tiled and deflate-compressed, with `palette` as its colour map and the
    class names in its tags (`CLASS_NAMES`, a JSON list, and `CLASS_<i>`).
    Source pixels that are nodata (the nodata value in every chosen band, an
    internal mask or an alpha band) are written as 255, the output's nodata.
    JPEG and PNG images work too; their output has no CRS.

    Args:
        model: model returning logits; must accept `tile_size` inputs. Or
            the function `make_predict_function` makes of it.
        src_path: the scene, any raster rasterio reads (GeoTIFF, JPEG, PNG).
        dst_path: the label GeoTIFF to write (folders are created).
        tile_size: tile side, a multiple of 16.
        overlap: pixels shared by neighbouring tiles; `tile_size // 4` if
            `None`.
        batch_size: tiles per forward pass.
        bands: the three 1-based band indices to read as R, G, B, e.g.
            `(1, 2, 3)` of an RGBN raster.
        rescale: `None` for uint8 scenes; `(low, high)` maps other dtypes
            (e.g. uint16) linearly, `low` to 0 and `high` to 255, rounded and
            clipped.
        class_names: one name per model output class.
        palette: `(classes, 3)` uint8 colours for the colour map.
        progress: optional `callable(rows_done, height)`, called after each
            band is written (from the worker thread that writes them).

    Returns:
        dict with `path` (the label raster), `height`, `width`,
        `class_pixels` (name -> pixel count), `nodata_pixels` and `seconds`.

    Example:

    >>> result = segment_scene(student, "scene.tif", "labels.tif")
    >>> result["class_pixels"]["Building"]
    """
    rasterio = _import_rasterio()
    from rasterio.enums import MaskFlags
    from rasterio.errors import NotGeoreferencedWarning

    started = time.perf_counter()
    src_path, dst_path = pathlib.Path(src_path), pathlib.Path(dst_path)
    overlap = _check_tiling(tile_size, overlap)
    if not src_path.is_file():
        raise FileNotFoundError(f"src_path {src_path} does not exist; pass the path "
                                f"of a GeoTIFF, JPEG or PNG scene.")
    if dst_path.resolve() == src_path.resolve():
        raise ValueError(f"dst_path must differ from src_path, got {dst_path} for both.")
    n_classes = getattr(model, "model", model).output_shape[-1]
    if len(class_names) != n_classes:
        raise ValueError(f"class_names must name the model's {n_classes} classes, "
                         f"got {len(class_names)}: {list(class_names)}.")
    palette = np.asarray(palette, np.uint8)
    if palette.shape != (n_classes, 3):
        raise ValueError(f"palette must be ({n_classes}, 3) colours, got shape "
                         f"{palette.shape}.")
    with warnings.catch_warnings():  # JPEG and PNG scenes have no georeference
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            src = rasterio.open(src_path)
        except rasterio.errors.RasterioIOError as error:
            raise ValueError(f"{src_path} is not a raster rasterio can read: "
                             f"{error}") from error
        with src:
            bands = _check_bands(src, src_path, bands, rescale)
            height, width = src.height, src.width
            counts = np.zeros(256, np.int64)
            dst_path.parent.mkdir(parents=True, exist_ok=True)
            with rasterio.Env(GDAL_CACHEMAX=_cache_bytes(src, tile_size)), \
                    rasterio.open(dst_path, "w", **_label_profile(src, tile_size)) as dst:
                dst.write_colormap(1, {**{i: (*map(int, c), 255)
                                          for i, c in enumerate(palette)},
                                       IGNORE_INDEX: (0, 0, 0, 0)})
                dst.update_tags(CLASS_NAMES=json.dumps(list(class_names)),
                                **{f"CLASS_{i}": name for i, name in enumerate(class_names)})
                dst.set_band_description(1, "class index")
                def consume(top, logits):  # in _blend_tiles' worker thread
                    labels = logits.argmax(-1).astype(np.uint8)
                    if not all_valid:
                        valid = _read_valid(masks, bands, top, top + len(labels))
                        labels[~valid] = IGNORE_INDEX
                    window = rasterio.windows.Window(0, top, width, len(labels))
                    dst.write(labels, 1, window=window)
                    counts[:] += np.bincount(labels.ravel(), minlength=256)
                    if progress is not None:
                        progress(top + len(labels), height)

                # GDAL's all_valid flag: no nodata value, mask or alpha band.
                all_valid = all(src.mask_flag_enums[b - 1] == [MaskFlags.all_valid]
                                for b in bands)
                # A second handle for the masks: the worker thread reads them
                # while this one reads the pixels (a GDAL handle is not shared).
                with rasterio.open(src_path) as masks:
                    _blend_tiles(model, functools.partial(_read_window, src, bands, rescale),
                                 height, width, tile_size, overlap, batch_size, consume)
    return {"path": str(dst_path), "height": height, "width": width,
            "class_pixels": {name: int(counts[i]) for i, name in enumerate(class_names)},
            "nodata_pixels": int(counts[IGNORE_INDEX]),
            "seconds": time.perf_counter() - started}


def _import_rasterio():
    try:
        import rasterio
        import rasterio.features
        import rasterio.windows
    except ImportError as error:
        raise ImportError("Whole scenes need rasterio: `pip install rasterio` "
                          "(or `pip install -r requirements.txt`).") from error
    return rasterio


def _check_bands(src, src_path, bands, rescale):
    """Validates `bands` and `rescale` against the open raster; returns bands."""
    bands = tuple(int(b) for b in bands)
    if len(bands) != 3:
        raise ValueError(f"bands must be three band indices (R, G, B), got {bands}.")
    if not all(1 <= b <= src.count for b in bands):
        raise ValueError(
            f"{src_path} has {src.count} band(s); bands={bands} asks for "
            f"{'a band it lacks' if src.count >= 3 else 'three'}. Pass 1-based "
            f"indices of its red, green and blue bands, e.g. bands=(1, 2, 3)."
        )
    dtypes = {src.dtypes[b - 1] for b in bands}
    if rescale is None and dtypes != {"uint8"}:
        raise ValueError(
            f"{src_path} has {'/'.join(sorted(dtypes))} pixels; the model takes "
            f"uint8. Pass rescale=(low, high) to map low..high linearly to 0..255."
        )
    if rescale is not None:
        low, high = rescale
        if not high > low:
            raise ValueError(f"rescale must be (low, high) with high > low, got {rescale}.")
    return bands


def _cache_bytes(src, tile_size):
    """GDAL's block cache for a scene: the blocks under two rows of tiles, >= 64 MiB.

    GDAL's default, 5% of the machine's memory, keeps every block read until
    it is full, so a process's memory would grow with the scene's area.
    """
    block_rows = max(rows for rows, _ in src.block_shapes)
    return max(64 * 2**20, 2 * (tile_size + block_rows) * src.width * (src.count + 1))


def _read_window(src, bands, rescale, start, stop):
    """Rows `[start, stop)` of `bands`, all columns, as uint8 `(rows, width, 3)`."""
    from rasterio.windows import Window

    pixels = src.read(list(bands), window=Window(0, start, src.width, stop - start))
    if rescale is not None:
        low, high = rescale
        pixels = (pixels.astype(np.float32) - low) * np.float32(255 / (high - low))
        pixels = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return np.moveaxis(pixels, 0, -1)


def _read_valid(src, bands, start, stop):
    """True where any of `bands` holds data in rows `[start, stop)` (GDAL's masks)."""
    from rasterio.windows import Window

    masks = src.read_masks(list(bands), window=Window(0, start, src.width, stop - start))
    return masks.any(axis=0)


def _label_profile(src, tile_size):
    profile = {"driver": "GTiff", "dtype": "uint8", "count": 1,
               "height": src.height, "width": src.width, "nodata": IGNORE_INDEX,
               "compress": "deflate"}
    if src.crs is not None:
        profile.update(crs=src.crs, transform=src.transform)
    elif not src.transform.is_identity:
        profile.update(transform=src.transform)
    if src.height >= tile_size and src.width >= tile_size:
        profile.update(tiled=True, blockxsize=tile_size, blockysize=tile_size)
    return profile


def polygonize(label_path, dst_path, *, min_area=0, connectivity=4,
               class_names=CLASSES):
    """Writes the class regions of a label raster as GeoJSON polygons.

    Each connected region of one class becomes a feature with its `class`
    index and `name`, in the raster's CRS (coordinates through its
    transform, the CRS named in the file's `crs` member as
    `urn:ogc:def:crs:EPSG::<code>`). Nodata pixels (the raster's nodata,
    255 if it sets none) are left out. Regions smaller than `min_area`
    pixels are first merged into their largest neighbour
    (`rasterio.features.sieve`). The raster is read whole (uint8, one byte a
    pixel).

    Args:
        label_path: a label raster, e.g. written by `segment_scene`.
        dst_path: the GeoJSON file to write (folders are created).
        min_area: smallest region kept, in pixels (multiply by the pixel
            area for map units); 0 keeps every region.
        connectivity: 4 or 8, the pixel neighbourhood of a region.
        class_names: names of the class indices.

    Returns:
        dict with `path` and `features` (name -> number of polygons).

    Example:

    >>> polygonize("labels.tif", "labels.geojson", min_area=16)["features"]
    """
    rasterio = _import_rasterio()
    from rasterio.errors import NotGeoreferencedWarning

    label_path, dst_path = pathlib.Path(label_path), pathlib.Path(dst_path)
    if not label_path.is_file():
        raise FileNotFoundError(f"label_path {label_path} does not exist; pass a "
                                f"label raster written by segment_scene.")
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}.")
    if min_area < 0:
        raise ValueError(f"min_area must be >= 0 pixels, got {min_area}.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(label_path) as src:
            if src.count != 1 or src.dtypes[0] != "uint8":
                raise ValueError(f"{label_path} must be one uint8 band of class "
                                 f"indices, got {src.count} {src.dtypes[0]} band(s).")
            labels, crs, transform = src.read(1), src.crs, src.transform
            nodata = IGNORE_INDEX if src.nodata is None else int(src.nodata)
    valid = labels != nodata
    unknown = np.unique(labels[valid & (labels >= len(class_names))])
    if unknown.size:
        raise ValueError(f"{label_path} has class indices {unknown.tolist()} beyond "
                         f"the {len(class_names)} class_names {list(class_names)}.")
    if min_area > 1:
        labels = rasterio.features.sieve(labels, size=int(min_area), mask=valid,
                                         connectivity=connectivity)
    features = [{"type": "Feature",
                 "properties": {"class": int(value), "name": class_names[int(value)]},
                 "geometry": geometry}
                for geometry, value in rasterio.features.shapes(
                    labels, mask=valid, connectivity=connectivity, transform=transform)]
    collection = {"type": "FeatureCollection", "name": dst_path.stem}
    if crs is not None:
        collection["crs"] = {"type": "name", "properties": {"name": _crs_name(crs)}}
    collection["features"] = features
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    dst_path.write_text(json.dumps(collection))
    by_class = [f["properties"]["name"] for f in features]
    return {"path": str(dst_path),
            "features": {name: by_class.count(name) for name in class_names}}


def _crs_name(crs):
    epsg = crs.to_epsg()
    return f"urn:ogc:def:crs:EPSG::{epsg}" if epsg is not None else crs.to_wkt()


def measure_latency(models, input_size=256, batch_size=1, repeats=20, warmup=3):
    """Median wall-clock seconds of one forward pass, models interleaved.

    Each repeat runs every model once in turn, so background load on a noisy
    machine hits all of them alike; compare the results as ratios.

    Args:
        models: dict mapping a name to a Keras model (run through
            `make_predict_function`) or to any function from images to logits (e.g.
            `load_litert`'s).
        input_size: side of the square random input.
        batch_size: images per forward pass.
        repeats: timed passes per model.
        warmup: untimed passes per model first (compilation, caches).

    Returns:
        dict mapping each name to the median seconds per pass.

    Example:

    >>> measure_latency({"teacher": teacher, "student": student})
    >>> measure_latency({"keras": student, "litert": load_litert("student.tflite")})
    """
    x = np.random.default_rng(0).integers(
        0, 256, (batch_size, input_size, input_size, 3)).astype("float32")
    predictors = {name: make_predict_function(model)
                  if isinstance(model, keras.Model) else model
                  for name, model in models.items()}
    for predict in predictors.values():
        for _ in range(warmup):
            predict(x)
    times = {name: [] for name in predictors}
    for _ in range(repeats):
        for name, predict in predictors.items():
            start = time.perf_counter()
            predict(x)
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def compare_models(models, results=None, paths=None):
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

    >>> print(markdown_table(compare_models({"teacher": teacher, "student": student})))
    """
    latency = measure_latency(models, input_size=256)
    rows = []
    for name, model in models.items():
        scores = {k: v for k, v in (results or {}).get(name, {}).items()
                  if k.startswith("miou") or k == "pixel_acc"}
        rows.append({"model": name, **model_summary(model, (paths or {}).get(name)),
                     **scores, "latency_ms": 1000 * latency[name]})
    return rows


# =============================================================================
# 6. Plotting
# =============================================================================


def save_figure(fig, path):
    """Saves `fig` to `path` (creating folders) at 120 dpi; returns `fig`."""
    if path is not None:
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def _legend_handles(class_names=CLASSES, palette=PALETTE):
    from matplotlib.patches import Patch

    return [Patch(color=np.asarray(palette)[i] / 255, label=name)
            for i, name in enumerate(class_names)]


def plot_segmentations(images, truths, predictions, path=None, *, class_names=None,
                       palette=None):
    """Draws rows of image / ground truth / one column per model.

    Args:
        images: uint8 images `(N, H, W, 3)`.
        truths: labels `(N, H, W)`.
        predictions: dict mapping a column title (e.g. "Teacher") to labels
            `(N, H, W)`.
        path: optional file to save the figure to.
        class_names: names of the legend; `CLASSES` if `None`.
        palette: uint8 `(n_classes, 3)` colours of the labels; `PALETTE` if
            `None`.

    Returns:
        The matplotlib `Figure`.

    Example:

    >>> fig = plot_segmentations(x[:3], y[:3], {"Teacher": teacher_labels})
    """
    import matplotlib.pyplot as plt

    columns = {"Image": None, "Ground truth": truths, **predictions}
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
    class_names = CLASSES if class_names is None else class_names
    fig.legend(handles=_legend_handles(class_names, PALETTE if palette is None else palette),
               loc="lower center", ncol=len(class_names), frameon=False)
    fig.tight_layout(rect=(0, legend_inches / fig.get_figheight(), 1, 1))
    return save_figure(fig, path)


LABELS = {
    "model": "model", "loss": "loss", "miou5": "mIoU, 5 labelled classes",
    "miou6": "mIoU, 6 classes", "pixel_acc": "pixel accuracy",
    "student_loss": "label loss (Dice + cross-entropy)",
    "distillation_loss": "KD term", "total_loss": "total loss",
    "parameters": "parameters", "gflops": "GFLOPs (256x256)", "size_mb": "file size (MB)",
    "latency_ms": "latency (ms, batch 1)",
}
"""Readable names of the metrics and table columns, for figures and tables."""


def plot_history(histories, keys=("loss",), path=None):
    """Draws training and validation curves of one or more runs.

    Args:
        histories: dict mapping a run name to a history dict (as returned by
            `fit_segmentation`).
        keys: metrics to draw, one panel each; `val_<key>` is drawn dashed
            where present.
        path: optional file to save the figure to.

    Returns:
        The matplotlib `Figure`.

    Example:

    >>> plot_history({"teacher": history}, keys=("loss", "miou5"))
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(keys), squeeze=False,
                             figsize=(4.5 * len(keys), 3.4))
    for ax, key in zip(axes[0], keys):
        for i, (run, history) in enumerate(histories.items()):
            color = f"C{i}"
            epochs = np.arange(1, len(history.get(key, [])) + 1)
            if key in history:
                ax.plot(epochs, history[key], color=color, label=f"{run} train")
            if f"val_{key}" in history:
                ax.plot(epochs, history[f"val_{key}"], "--", color=color,
                        label=f"{run} val")
        ax.set_title(LABELS.get(key, key))
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_pr_curves(results, path=None, class_names=CLASSES):
    """Draws per-class precision-recall curves, one panel per class.

    Args:
        results: dict mapping a model name to the output of
            `evaluate_segmentation`.
        path: optional file to save the figure to.
        class_names: names of the classes, in label order.

    Returns:
        The matplotlib `Figure`.
    """
    import matplotlib.pyplot as plt

    columns = min(3, len(class_names))
    rows = math.ceil(len(class_names) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(13 * columns / 3, 4 * rows),
                             squeeze=False)
    for ax in axes.flat[len(class_names):]:
        ax.set_visible(False)
    for c, (ax, name) in enumerate(zip(axes.flat, class_names)):
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


def plot_confusion_matrix(confusion_matrix, title="", path=None, class_names=CLASSES):
    """Draws a confusion matrix normalised by row (recall per true class).

    Args:
        confusion_matrix: counts, rows = truth, columns = prediction.
        title: figure title.
        path: optional file to save the figure to.
        class_names: names of the classes, in label order.

    Returns:
        The matplotlib `Figure`.
    """
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    cm = np.asarray(confusion_matrix, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalized = np.nan_to_num(cm / cm.sum(1, keepdims=True))
    fig, ax = plt.subplots(figsize=(6, 5.2))
    ConfusionMatrixDisplay(normalized, display_labels=list(class_names)).plot(
        ax=ax, values_format=".2f", cmap="Blues", colorbar=False,
        xticks_rotation=45)
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_class_shares(data, path=None):
    """Bar chart of class shares of annotated pixels in each split.

    Bars in the data's own class colours, named by its classes.

    Args:
        data: a dataset from `load_dataset`, held in memory.
        path: optional file to save the figure to.

    Returns:
        The matplotlib `Figure`.
    """
    import matplotlib.pyplot as plt

    names = tuple(getattr(data, "classes", CLASSES))
    palette = np.asarray(getattr(data, "palette", PALETTE))
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(names)), 3.4))
    width = 0.27
    for i, split in enumerate(("train", "val", "test")):
        shares = class_shares(getattr(data, f"y_{split}"), n_classes=len(names))
        ax.bar(np.arange(len(names)) + (i - 1) * width, shares, width,
               label=split, color=palette / 255, edgecolor="black",
               hatch=("", "//", "..")[i])
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("share of annotated pixels")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_sweep(rows, metric="val_miou5", path=None):
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
    name = LABELS.get(metric.removeprefix("val_"), metric)
    title = f"Validation {name} over alpha x temperature"
    if reference is not None:
        title += f"\n(colour and brackets: minus the scratch student's {reference:.3f})"
    fig.suptitle(title)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8,
                 label=None if reference is None else "minus scratch")
    return save_figure(fig, path)


# =============================================================================
# 7. Notebook setup: profiles, device, saved runs
# =============================================================================

GITHUB_REPOSITORY = "sssi-project/aerial-distillation"
"""`owner/name` of the repository on GitHub (Colab badges and clone)."""

REPO_ROOT = pathlib.Path(__file__).resolve().parent
COMMITTED_MODELS = REPO_ROOT / "results" / "models"
"""The models of the rendered notebooks, committed with the repository."""
DRIVE_ROOT = pathlib.Path("/content/drive")

PROFILES = {
    "tiny": dict(patch_size=64, epochs=3, batch_size=4, learning_rate=5e-3,
                 sweep_alphas=(0.5,), sweep_temperatures=(2.0,),
                 sweep_kinds=("pixel", "channel"), sweep_epochs=1),
    "full": dict(patch_size=256, epochs=100, batch_size=16, learning_rate=1e-3,
                 steps_per_execution=8, sweep_alphas=(0.1, 0.5),
                 sweep_temperatures=(1.5, 4.0), sweep_kinds=("pixel",), sweep_epochs=20),
}
"""The recipe of the notebook series: `tiny` (synthetic data, seconds, for
CI) and `full` (the real data, for a GPU; the committed models were trained
with it, in mixed precision)."""


@dataclasses.dataclass(frozen=True)
class Profile:
    """The recipe and folders of one run of the notebook series.

    Attributes:
        name: "tiny" or "full".
        patch_size, epochs, batch_size, learning_rate: training budget, the
            same for the teacher, the scratch student and the distilled one.
        seed: seed of weights, shuffling and augmentation.
        schedule: learning rate over training, "constant" or "cosine"
            (cosine decay to 0 over all epochs).
        steps_per_execution: training steps per call from Python (fewer
            host round trips on a GPU; results do not change).
        sampling: training inputs, "grid" (the fixed patches) or "random"
            (as many crops per epoch from anywhere in the training images;
            see `fit_segmentation`).
        sweep_alphas, sweep_temperatures, sweep_kinds, sweep_epochs: the
            grid of `06_sweep`.
        output_dir: where models, histories and results go.
        pictures_dir: where figures go (`pictures/` for the full profile).
    """

    name: str
    patch_size: int
    epochs: int
    batch_size: int
    learning_rate: float
    sweep_alphas: tuple
    sweep_temperatures: tuple
    sweep_kinds: tuple
    sweep_epochs: int
    output_dir: pathlib.Path
    pictures_dir: pathlib.Path
    seed: int = 0
    schedule: str = "cosine"
    steps_per_execution: int = 1
    sampling: str = "grid"

    @property
    def models_dir(self):
        return self.output_dir / "models"

    def learning_rate_schedule(self, epochs=None, steps_per_epoch=1):
        """Adam's learning rate: the constant, or Keras' cosine decay to 0 over `epochs`."""
        if self.schedule == "constant":
            return self.learning_rate
        if self.schedule == "cosine":
            return keras.optimizers.schedules.CosineDecay(
                self.learning_rate, (epochs or self.epochs) * steps_per_epoch)
        raise ValueError(f"Unknown schedule {self.schedule!r}: use 'constant' or 'cosine'.")


def in_colab():
    """Whether this runs in Google Colab."""
    return "google.colab" in sys.modules


def load_profile(name=None, output_dir=None):
    """Returns the `Profile` chosen by `name` or the environment.

    The profile is `name`, else `$SSSI_PROFILE`, else "full" in Colab and
    "tiny" elsewhere. The output folder is `output_dir`, else
    `$SSSI_OUTPUT`, else `outputs/<profile>` in the repository. The recipe is
    `PROFILES[name]`, nothing else: change it there or with
    `dataclasses.replace`, in view.

    Example:

    >>> load_profile("tiny").epochs
    3
    """
    name = name or os.environ.get("SSSI_PROFILE") or ("full" if in_colab() else "tiny")
    if name not in PROFILES:
        raise ValueError(
            f"Unknown profile {name!r} (from SSSI_PROFILE?): choose one of "
            f"{sorted(PROFILES)}."
        )
    output_dir = pathlib.Path(
        output_dir or os.environ.get("SSSI_OUTPUT") or REPO_ROOT / "outputs" / name
    )
    pictures_dir = REPO_ROOT / "pictures" if name == "full" else output_dir / "pictures"
    return Profile(name=name, output_dir=output_dir, pictures_dir=pictures_dir,
                   **PROFILES[name])


def setup_notebook(profile=None, mount_drive=False):
    """Prepares a notebook: profile, optional Google Drive, device report.

    In Colab with `mount_drive=True`, outputs go to Google Drive
    (`MyDrive/sssi/<profile>`), so models and checkpoints survive a
    disconnect. Prints the profile, backend, devices and output folder.

    Args:
        profile: profile name, or `None` for `load_profile`'s choice.
        mount_drive: in Colab, keep outputs on Google Drive.

    Returns:
        The `Profile`.
    """
    output_dir = None
    if mount_drive and in_colab():
        from google.colab import drive

        drive.mount(str(DRIVE_ROOT))
        output_dir = DRIVE_ROOT / "MyDrive" / "sssi" / (
            profile or load_profile().name)
    profile = load_profile(profile, output_dir)
    profile.models_dir.mkdir(parents=True, exist_ok=True)
    info = run_info(profile)
    print(f"Profile {profile.name!r}: {profile.epochs} epochs, batch "
          f"{profile.batch_size}, patches {profile.patch_size}px, {profile.schedule} "
          f"learning rate from {profile.learning_rate:g}, seed {profile.seed}")
    print(f"Keras {info['keras']} on {info['backend']}; device: {info['device']}; "
          f"training precision: {mixed_precision_policy()}")
    print(f"Outputs: {profile.output_dir}")
    return profile


def mixed_precision_policy():
    """The Keras dtype policy for training on this machine's accelerator.

    "mixed_bfloat16" where the hardware computes in bfloat16 (NVIDIA
    Ampere or newer, compute capability >= 8, and TPUs); "mixed_float16"
    on GPUs with float16 tensor cores only (Colab's T4, V100: compute
    capability 7), where Keras' `compile` adds loss scaling; "float32"
    on older GPUs and CPUs, where half precision is slower, not faster.
    Models are saved in float32 either way (`save_model`).

    Returns:
        A dtype policy name, for `with_dtype_policy`.

    Example:

    >>> model = with_dtype_policy(build_student(), mixed_precision_policy())
    """
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            device = jax.devices()[0]
            if device.platform == "tpu":
                return "mixed_bfloat16"
            capability = getattr(device, "compute_capability", None) if device.platform == "gpu" else None
            major = int(str(capability).split(".")[0]) if capability else 0
        elif backend == "tensorflow":
            import tensorflow as tf

            if tf.config.list_logical_devices("TPU"):
                return "mixed_bfloat16"
            gpus = tf.config.list_physical_devices("GPU")
            details = tf.config.experimental.get_device_details(gpus[0]) if gpus else {}
            major = (details.get("compute_capability") or (0, 0))[0]
        else:
            major = 0
    except Exception:  # a backend that can't describe its devices: stay exact
        major = 0
    return "mixed_bfloat16" if major >= 8 else "mixed_float16" if major == 7 else "float32"


def _accelerator_names():
    """Names of the accelerators Keras trains on, e.g. ["NVIDIA H200"]; [] on a CPU."""
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            return [d.device_kind for d in jax.devices() if d.platform != "cpu"]
        if backend == "tensorflow":
            import tensorflow as tf

            return [tf.config.experimental.get_device_details(d).get("device_name", d.name)
                    for d in tf.config.list_physical_devices("GPU")]
        return [d for d in keras.distribution.list_devices() if "cpu" not in d.lower()]
    except Exception:  # a backend that can't list its devices: report the CPU
        return []


def run_info(profile=None):
    """Where a number comes from: backend, versions, device, date, budget."""
    devices = _accelerator_names()
    info = {
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "device": ", ".join(devices) if devices else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "date": time.strftime("%Y-%m-%d"),
    }
    if profile is not None:
        info.update(profile=profile.name, epochs=profile.epochs,
                    batch_size=profile.batch_size, patch_size=profile.patch_size,
                    seed=profile.seed, schedule=profile.schedule,
                    sampling=profile.sampling)
    return info


def profile_dataset(profile):
    """Loads the dataset of a profile.

    `tiny` writes the synthetic dataset into the output folder (once).
    `full` reads `$SSSI_DATA` if set, else `data/` in the repository, else
    downloads from Kaggle into it.
    """
    if profile.name == "tiny":
        root = profile.output_dir / "data" / DATASET_DIRNAME
        if not root.exists():
            make_tiny_dataset(profile.output_dir / "data")
    else:
        candidates = [os.environ.get("SSSI_DATA"), REPO_ROOT / "data"]
        root = next((c for c in candidates if c and pathlib.Path(c).exists()), None)
        root = download_dataset(REPO_ROOT / "data") if root is None else root
    return load_dataset(root, patch_size=profile.patch_size)


def saved_model_path(profile, name):
    """Where the finished model `name` is saved, or `None`.

    This run's models folder first (`profile.models_dir/<name>.keras`), then,
    for the full profile, the models committed with the repository
    (`COMMITTED_MODELS`, the ones the rendered notebooks show), so that a
    notebook opened alone in a fresh Colab runtime can go on from them.

    Args:
        profile: the `Profile`.
        name: the model's file stem, e.g. "teacher" or "student_scratch_s0".

    Returns:
        A `pathlib.Path`, or `None` when neither folder has it.

    Example:

    >>> saved_model_path(load_profile("full"), "teacher")
    PosixPath('.../results/models/teacher.keras')
    """
    folders = [profile.models_dir] + ([COMMITTED_MODELS] if profile.name == "full" else [])
    return next((f / f"{name}.keras" for f in folders if (f / f"{name}.keras").exists()), None)


def load_run(path):
    """Loads a saved model with its training history and run record.

    Args:
        path: a `.keras` file saved by `fit_segmentation`; its history is
            `<stem>_history.json` beside it and its record (where, when and
            how it was trained) `<stem>_run.json`.

    Returns:
        `(model, history, record)`; the history and record are `{}` where
        their file is missing.

    Example:

    >>> teacher, history, record = load_run(saved_model_path(profile, "teacher"))
    >>> record["device"], max(history["val_miou5"])
    """
    path = pathlib.Path(path)
    extras = [path.with_name(f"{path.stem}_{kind}.json") for kind in ("history", "run")]
    history, record = (json.loads(p.read_text()) if p.exists() else {} for p in extras)
    return keras.models.load_model(path), history, record


def saved_history(profile, name):
    """The training history of the run `name`, where `saved_model_path` would look.

    For runs whose history is kept without their model (the sweep's).

    Returns:
        The history dict, or `None` when no `<name>_history.json` is found.
    """
    folders = [profile.models_dir] + ([COMMITTED_MODELS] if profile.name == "full" else [])
    path = next((f / f"{name}_history.json" for f in folders
                 if (f / f"{name}_history.json").exists()), None)
    return None if path is None else json.loads(path.read_text())


def describe_run(path, record):
    """One line on a saved model: which file, and where, when and how it was trained.

    Example:

    >>> print(describe_run(path, record))
    teacher.keras (committed in results/models): 100 epochs, jax on NVIDIA H200, 2026-11-28, mixed_bfloat16
    """
    path = pathlib.Path(path)
    where = ("committed in results/models" if path.parent == COMMITTED_MODELS
             else f"in {path.parent}")
    how = ", ".join(str(record[k]) for k in ("backend", "device", "date", "precision")
                    if k in record)
    epochs = f"{record['epochs']} epochs, " if "epochs" in record else ""
    return f"{path.name} ({where}): {epochs}{how}"


def write_run_record(profile, name, **settings):
    """Writes `<name>_run.json` beside the model: where, when and how it was trained.

    The record holds `run_info(profile)` (backend, Keras, device, date,
    budget) and the `settings` given, e.g. `precision`, `train_seconds` or
    the distillation's `alpha` and `temperature`.

    Returns:
        The path written.
    """
    path = profile.models_dir / f"{name}_run.json"
    path.write_text(json.dumps({**run_info(profile), **settings}, indent=1))
    return path


def train_model(model, data, profile, *, name, teacher=None, alpha=0.5, temperature=4.0,
                kind="pixel", standardize=False, feature_weight=0.0, kd_schedule=None,
                sampling=None, mix="cutmix", mix_probability=0.5, epochs=None, seed=None,
                precision=None, callbacks=(), verbose="auto"):
    """Compiles and trains one model of the series, the way the notebooks do.

    Casts `model` to `precision`, wraps it in a `Distiller` when a `teacher`
    is given, compiles it (`compile_segmentation`, Adam with the profile's
    learning-rate schedule) and fits it (`fit_segmentation`: best checkpoint
    by validation mean IoU, resumption after an interruption) under
    `profile.models_dir`, then writes `<name>_run.json` (`write_run_record`).
    Build `model` after `keras.utils.set_random_seed(seed)` for a
    reproducible run.

    Args:
        model: a model from `build_teacher` or `build_student`.
        data: the `AerialDataset`.
        profile: the `Profile` (budget and folders).
        name: file stem of the saved model, history and record.
        teacher: trained teacher, to distil `model` from it (e.g. an
            `ensemble_teacher`).
        alpha, temperature, kind, standardize, feature_weight: the
            `Distiller`'s settings.
        kd_schedule: `None`, or "warmup:K:ALPHA": alpha 1 for the first K
            epochs, then ALPHA (`KDWeightSchedule`), replacing `alpha`.
        sampling: overrides `profile.sampling`; with "consistent" build
            `model` with `augment=False` (see `fit_segmentation`).
        mix, mix_probability: the batch mix of `sampling="consistent"`.
        epochs: overrides `profile.epochs`.
        seed: seed of the batch order; `profile.seed` if `None`.
        precision: Keras dtype policy; `mixed_precision_policy()` if `None`.
        callbacks: extra Keras callbacks.
        verbose: passed to `fit`.

    Returns:
        `(model, history, record)` of the best epoch, as `load_run` gives.

    Example:

    >>> keras.utils.set_random_seed(0)
    >>> student, history, record = train_model(build_student(), data, profile,
    ...                                        name="student_scratch_s0")
    """
    epochs = profile.epochs if epochs is None else epochs
    seed = profile.seed if seed is None else seed
    precision = precision or mixed_precision_policy()
    model = with_dtype_policy(model, precision)
    sampling = profile.sampling if sampling is None else sampling
    settings = {"kind": "none"}
    callbacks = list(callbacks)
    if teacher is not None:
        model = Distiller(teacher=with_dtype_policy(teacher, precision), student=model,
                          alpha=alpha, temperature=temperature, kind=kind,
                          standardize=standardize, feature_weight=feature_weight)
        settings = {"kind": kind, "alpha": alpha, "temperature": temperature}
        settings.update({k: v for k, v in (("standardize", standardize),
                                           ("feature_weight", feature_weight),
                                           ("kd_schedule", kd_schedule)) if v})
        if kd_schedule is not None:
            callbacks.append(KDWeightSchedule(KDWeightSchedule.parse(kd_schedule)))
    elif kd_schedule is not None:
        raise ValueError(f"kd_schedule={kd_schedule!r} weighs a distillation, but no "
                         f"teacher was given.")
    steps = math.ceil(len(data.x_train) / profile.batch_size)
    compile_segmentation(model, profile.learning_rate_schedule(epochs, steps),
                         steps_per_execution=profile.steps_per_execution)
    start = time.perf_counter()
    fit_segmentation(model, data, epochs=epochs, output_dir=profile.models_dir, name=name,
                     batch_size=profile.batch_size, seed=seed, verbose=verbose,
                     sampling=sampling, mix=mix, mix_probability=mix_probability,
                     callbacks=callbacks, cache_teacher=not feature_weight)
    inputs = {"sampling": sampling}
    if sampling == "consistent":
        inputs.update(mix=mix, mix_probability=mix_probability)
    write_run_record(profile, name, epochs=epochs, seed=seed, precision=precision,
                     distillation=settings, learning_rate=profile.learning_rate,
                     train_seconds=time.perf_counter() - start, **inputs)
    return load_run(profile.models_dir / f"{name}.keras")


def load_or_train(profile, data, name, build, *, teacher=None, **settings):
    """The finished model `name` if one is saved, else one trained here.

    For a notebook opened alone: it looks where `saved_model_path` does (this
    run's folder, then for the full profile the committed models), and
    trains the model with `train_model` only where neither has it. It says
    which it did.

    Args:
        profile: the `Profile`.
        data: the `AerialDataset`.
        name: the model's file stem, e.g. "teacher".
        build: function returning the untrained model, e.g. `build_teacher`.
        teacher: for a distilled student, its teacher.
        **settings: the `Distiller`'s settings, for `train_model`.

    Returns:
        `(model, history, record)`.

    Example:

    >>> teacher, history, record = load_or_train(profile, data, "teacher", build_teacher)
    """
    path = saved_model_path(profile, name)
    if path is not None:
        model, history, record = load_run(path)
        print(f"Loaded {describe_run(path, record)}")
        return model, history, record
    print(f"No saved {name} in {profile.models_dir}: training it here, {profile.epochs} epochs.")
    keras.utils.set_random_seed(profile.seed)
    return train_model(build(), data, profile, name=name, teacher=teacher, verbose=0,
                       **settings)


def markdown_table(rows, digits=3, headers=LABELS):
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
        cells = [f"{v:,.{digits}f}" if isinstance(v, float) else
                 f"{v:,}" if isinstance(v, int) else "—" if v is None else str(v)
                 for v in values]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
