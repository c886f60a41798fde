"""Class names, mask palettes and the mapping between mask colours and labels."""

from __future__ import annotations

import colorsys
import json
import os
import pathlib
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from .checks import check_count


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


def generic_classes(n_classes):
    """Names and mask colours for `n_classes` classes that have none of their own.

    What the scoring and plotting functions use when they are given a class
    count (from a model's output) but no class names: "class 0", "class 1",
    ..., and distinct colours (hues spread by the golden ratio).

    Args:
        n_classes: number of classes, >= 1.

    Returns:
        `(names, palette)`: a tuple of names and a uint8 array `(n_classes, 3)`.

    Example:

    >>> names, palette = generic_classes(3)
    >>> names, palette.shape
    (('class 0', 'class 1', 'class 2'), (3, 3))
    """
    n_classes = check_count("n_classes", n_classes)
    names = tuple(f"class {i}" for i in range(n_classes))
    hues = (np.arange(n_classes) * 0.618033988749895) % 1.0
    palette = np.array([colorsys.hsv_to_rgb(h, 0.65, 0.9) for h in hues]) * 255
    return names, np.round(palette).astype(np.uint8)


def check_palette(palette, n_classes: int | None = None) -> np.ndarray:
    """Checks class colours and returns them as a uint8 array `(n_classes, 3)`.

    Every function that takes a `palette` checks it here, so a palette that
    uint8 would wrap (300 -> 44) or truncate (0.5 -> 0) is refused, not drawn.

    Args:
        palette: one `(r, g, b)` row a class, whole numbers 0 to 255.
        n_classes: the number of classes it must colour; any number >= 1 if
            `None`.

    Returns:
        The colours as a uint8 array.

    Raises:
        ValueError: naming the shape, the count or the values that are wrong.

    Example:

    >>> check_palette([[0, 0, 0], [255, 128, 0]], n_classes=2).dtype
    dtype('uint8')
    >>> check_palette([[0, 0, 300]])
    Traceback (most recent call last):
    ...
    ValueError: palette must be 8-bit colours, whole numbers 0 to 255, got int64 values from 0 to 300.
    """
    colours = np.asarray(palette)
    if colours.ndim != 2 or colours.shape[1] != 3 or not len(colours):
        raise ValueError(f"palette must be ({'n_classes' if n_classes is None else n_classes}"
                         f", 3) colours, one row a class, got shape {colours.shape}.")
    if n_classes is not None and len(colours) != n_classes:
        raise ValueError(f"palette has {len(colours)} colours for {n_classes} classes: "
                         f"give one colour per class.")
    if (not np.issubdtype(colours.dtype, np.integer) or colours.min() < 0
            or colours.max() > 255):
        raise ValueError(f"palette must be 8-bit colours, whole numbers 0 to 255, got "
                         f"{colours.dtype} values from {colours.min()} to {colours.max()}.")
    return colours.astype(np.uint8)


def class_names_for(n_classes, class_names=None):
    """`class_names` as a tuple, checked against `n_classes`; generic names if `None`.

    Example:

    >>> class_names_for(2)
    ('class 0', 'class 1')
    """
    if class_names is None:
        return generic_classes(n_classes)[0]
    names = tuple(str(name) for name in class_names)
    if len(names) != n_classes:
        raise ValueError(f"class_names must name the {n_classes} classes (the model's "
                         f"outputs), got {len(names)}: {list(names)}. Pass your "
                         f"dataset's `classes`.")
    return names


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    """Converts a mask colour "#RRGGBB" to a tuple of three ints.

    The leading "#" is optional and the hex digits may be in either case;
    anything else raises `ValueError`.

    Args:
        color: a colour like "#3C1098".

    Returns:
        `(red, green, blue)`, each an int in 0..255.

    Example:

    >>> hex_to_rgb("#3C1098")  # Building
    (60, 16, 152)
    """
    text = str(color).lstrip("#")
    if len(text) != 6 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise ValueError(f"Expected a colour like '#3C1098', got {color!r}.")
    return tuple(int(text[i : i + 2], 16) for i in (0, 2, 4))


def rgb_to_hex(rgb: Sequence[int]) -> str:
    """Converts three ints to a mask colour "#RRGGBB" (upper-case hex digits).

    The inverse of `hex_to_rgb`.

    Args:
        rgb: three ints in 0..255, e.g. a row of `PALETTE`.

    Returns:
        The colour as a string, like "#3C1098".

    Example:

    >>> rgb_to_hex(PALETTE[2])  # Road
    '#6EC1E4'
    """
    return "#{:02X}{:02X}{:02X}".format(*(int(c) for c in rgb))


def read_classes(
    classes: Mapping[str, str] | os.PathLike | str | None = None,
) -> tuple[tuple[str, ...], np.ndarray]:
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


def mask_to_labels(
    mask: np.ndarray,
    palette: np.ndarray | None = None,
    ignore_colors: str | Sequence[str] | None = None,
    source: str = "mask",
    *,
    extra_colors: Mapping[str, int] | None = None,
) -> np.ndarray:
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
    if not np.issubdtype(mask.dtype, np.integer) or mask.size and (
            mask.min() < 0 or mask.max() > 255):
        raise ValueError(
            f"{source}: expected 8-bit colours (0..255), got {mask.dtype} values"
            f"{f' from {mask.min()} to {mask.max()}' if mask.size else ''}. A mask read "
            f"with matplotlib's imread is in [0, 1]: read it with "
            f"np.asarray(PIL.Image.open(path).convert('RGB')).")
    if extra_colors is not None:
        warn_extra_colors()
    return ColorTable(palette, ignore_colors, extra_colors).labels(mask, source)


class ColorTable:
    """Colour -> label lookup of one palette and ignore policy, vectorised."""

    def __init__(self, palette=None, ignore_colors=None, extra_colors=None):
        palette = PALETTE if palette is None else check_palette(palette)
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
        codes = np.array([rgb_code(np.array(hex_to_rgb(c))) for c in lookup], np.uint32)
        order = np.argsort(codes)
        self._codes = codes[order]
        self._labels = np.array(list(lookup.values()), np.uint8)[order]

    def labels(self, mask, source):
        code = rgb_code(mask)
        index = np.minimum(np.searchsorted(self._codes, code), len(self._codes) - 1)
        known = self._codes[index] == code
        if not known.all():
            values, counts = np.unique(code[~known], return_counts=True)
            order = np.argsort(-counts, kind="stable")[:5]  # the most frequent first
            unknown = {code_to_hex(values[i]): int(counts[i]) for i in order}
            share = counts.sum() / code.size
            # many colours, each rare: the mask's edges were blended or compressed
            lossy = (" So many colours suggest a mask saved with lossy compression "
                     "(JPEG) or resized with blending (anti-aliased edges): save masks "
                     "as PNG and resize them with nearest-neighbour sampling."
                     if len(values) > 20 else "")
            colours = f"{len(values)} colour{'s' * (len(values) > 1)}"
            raise ValueError(
                f"{source}: {colours} outside the classes, on {int(counts.sum())} of "
                f"its {code.size} pixels ({share:.1%}); the most frequent: {unknown} (colour: pixel count). "
                f"Known colours are the class colours "
                f"{[rgb_to_hex(c) for c in self.palette]} and ignore_colors "
                f"{list(self.ignore_colors)}. Add the colour to `classes` if it is a "
                f"class, to `ignore_colors` if it means 'not annotated', or fix the "
                f"mask.{lossy}"
            )
        return self._labels[index]


def rgb_code(rgb):
    """Each colour of `rgb` (..., 3), 8-bit values, as one uint32 0xRRGGBB.

    Built in place, so a mask's codes take 4 bytes a pixel and one temporary
    of the same size (int64 arithmetic took 40 bytes a pixel at its peak).
    """
    rgb = np.asarray(rgb)
    code = rgb[..., 0].astype(np.uint32)
    for channel in (1, 2):
        code <<= 8
        code |= rgb[..., channel].astype(np.uint32)
    return code


def code_to_hex(code):
    code = int(code)
    return rgb_to_hex(((code >> 16) & 255, (code >> 8) & 255, code & 255))


def labels_to_rgb(labels: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
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
    palette = PALETTE if palette is None else check_palette(palette)
    labels = np.asarray(labels)
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = palette
    return table[labels.astype(np.uint8)]


def warn_extra_colors():
    warnings.warn("extra_colors is deprecated: pass ignore_colors (the colours that "
                  "become IGNORE_INDEX), and give every class its colour in classes.",
                  DeprecationWarning, stacklevel=3)
