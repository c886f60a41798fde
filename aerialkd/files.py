"""Dataset files: the Kaggle and flat layouts, image/mask pairs, reading and cutting them."""

from __future__ import annotations

import os
import pathlib
import zipfile
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from .classes import ColorTable, warn_extra_colors


DATASET_DIRNAME = "Semantic segmentation dataset"


KAGGLE_HANDLE = "humansintheloop/semantic-segmentation-of-aerial-imagery"


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
"""File extensions of images and masks the loaders read, in any case."""


FLAT_LAYOUTS = (("images", "masks"), ("image", "mask"))
"""Folder pairs of a flat dataset: images and masks paired by file stem."""


def find_dataset_root(path: os.PathLike | str) -> pathlib.Path:
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

    Example:

    >>> find_dataset_root(make_tiny_dataset("tiny").parent).as_posix()
    'tiny/Semantic segmentation dataset'
    """
    return dataset_layout(path)[0]


def dataset_layout(path):
    """`(root, folders)`: folders is `None` for the tiles, else `(images, masks)`."""
    path = pathlib.Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"Dataset folder {str(path)!r} does not exist. Download the "
            f"dataset with `download_dataset()` or pass the folder "
            f"that holds '{DATASET_DIRNAME}/Tile 1/images', or your own folder "
            f"holding 'images/' and 'masks/'."
        )
    if not path.is_dir():
        raise NotADirectoryError(
            f"{str(path)!r} is a file, not a folder. For a zip archive use "
            f"`download_dataset(source=...)`, which unpacks it."
        )
    if any(path.glob("Tile */images")):
        return path, None
    for folders in FLAT_LAYOUTS:
        if all((path / f).is_dir() for f in folders):
            return path, folders
    candidates = sorted({  # not in hidden folders, nor a Mac zip's __MACOSX/
        p.parent.parent for p in path.glob("**/Tile */images") if p.is_dir()
        and not any(part[:1] in "._" for part in p.relative_to(path).parts)
    })
    if candidates:
        return _only(candidates, path), None
    for folders in FLAT_LAYOUTS:
        below = sorted(p for p in path.iterdir()
                       if p.is_dir() and all((p / f).is_dir() for f in folders))
        if below:
            return _only(below, path), folders
    found = sorted(p.name for p in path.iterdir())[:10]
    raise FileNotFoundError(
        f"No dataset found in {str(path)!r}: expected the Kaggle layout "
        f"'{DATASET_DIRNAME}/Tile N/images/*.jpg' and "
        f"'{DATASET_DIRNAME}/Tile N/masks/*.png', or a flat layout "
        f"'images/' + 'masks/' (or 'image/' + 'mask/') with files paired by "
        f"name; found {found if found else 'an empty folder'}."
    )


def find_pairs(root: os.PathLike | str) -> list[tuple[str, pathlib.Path, pathlib.Path]]:
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

    >>> root = make_custom_dataset("my_data")  # my_data/images, my_data/masks
    >>> [name for name, _, _ in find_pairs(root)][:2]
    ['scene_001', 'scene_002']
    """
    root, folders = dataset_layout(root)
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


def _only(roots, path):
    """The one dataset found below `path`; several are an error naming them."""
    if len(roots) > 1:
        names = [str(root.relative_to(path)) for root in roots]
        raise ValueError(f"{str(path)!r} holds {len(roots)} datasets, {names[:5]}: pass the "
                         f"folder of one of them (e.g. {str(roots[0])!r}).")
    return roots[0]


def _files_by_stem(folder):
    files = {}
    if not folder.is_dir():
        return files
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name[:1] not in "._"):
        if any(f.suffix.lower() in IMAGE_SUFFIXES for f in sub.rglob("*")):
            raise ValueError(
                f"{sub} holds images, and {folder} is read without its sub-folders: move "
                f"them into {folder} (each name once), or load that folder on its own.")
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


def read_pair(
    image_path: os.PathLike | str,
    mask_path: os.PathLike | str,
    palette: np.ndarray | None = None,
    ignore_colors: str | Sequence[str] | None = None,
    *,
    resize_masks: bool = False,
    extra_colors: Mapping[str, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
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
            otherwise such a pair is an error. A mask of another aspect
            (beyond rounding) is an error either way.
        extra_colors: deprecated, see `mask_to_labels`.

    Returns:
        `(image, labels)`: uint8 `(H, W, 3)` and uint8 `(H, W)`.

    Example:

    >>> image, labels = read_pair(*data.files["test"][0])
    >>> image.shape, labels.shape
    ((136, 150, 3), (136, 150))
    """
    if extra_colors is not None:
        warn_extra_colors()
    table = ColorTable(palette, ignore_colors, extra_colors)
    return decode_pair(image_path, mask_path, table, resize_masks)


def decode_pair(image_path, mask_path, table, resize_masks=False):
    image = _read_image(image_path, "image").convert("RGB")
    mask = _read_image(mask_path, "mask")
    if mask.mode in ("RGBA", "PA") or "transparency" in mask.info:
        rgba = np.asarray(mask.convert("RGBA"))
        if (rgba[..., 3] != 255).any():
            raise ValueError(
                f"{mask_path}: mask has transparent pixels "
                f"({int((rgba[..., 3] != 255).sum())} of them); masks must be "
                f"opaque. Flatten it onto the right class colours."
            )
    mask = mask.convert("RGB")
    if _needs_resize(image_path, image.size, mask_path, mask.size, resize_masks):
        mask = mask.resize(image.size, Image.NEAREST)
    return np.asarray(image), table.labels(np.asarray(mask), str(mask_path))


def _needs_resize(image_path, image_size, mask_path, mask_size, resize_masks):
    """Whether a mask must be rescaled to its image; refuses one that may not be."""
    if image_size == mask_size:
        return False
    if not resize_masks:
        raise ValueError(
            f"Image {image_path} is {image_size[0]}x{image_size[1]} but its mask "
            f"{mask_path} is {mask_size[0]}x{mask_size[1]} (width x height). They must "
            f"match pixel for pixel; pass resize_masks=True to rescale such masks to "
            f"their images (nearest neighbour, no new colours)."
        )
    _check_same_aspect(image_path, image_size, mask_path, mask_size)
    return True


def _read_image(path, what="image"):
    """Opens and loads the image or mask at `path`, refusing what it can't read as 8-bit."""
    try:
        image = Image.open(path)
        depth = _wide_samples(image)  # read before load() forgets the file's own mode
        image.load()
    except Image.DecompressionBombError as error:
        raise ValueError(
            f"{path} has more pixels than Pillow opens by default ({error}). If the file "
            f"is yours and trusted, raise the limit: PIL.Image.MAX_IMAGE_PIXELS = None; "
            f"for a whole scene, segment_scene reads it window by window.") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(
            f"Cannot read {path}: {error}. The file is truncated or not an "
            f"image; download the dataset again or remove this pair."
        ) from error
    if what == "mask" and image.mode in ("L", "LA", "I", "I;16", "F", "1"):
        raise ValueError(
            f"{path}: mask is greyscale (mode {image.mode}); masks must be "
            f"RGB images in the dataset palette. Re-export it in colour.")
    if depth:
        raise ValueError(
            f"{path}: {what} is {depth}; images and masks must be 8-bit. Rescale it to "
            f"0..255 and save it as 8-bit first (for whole GeoTIFF scenes, "
            f"segment_scene(..., rescale=(low, high)) does that).")
    return image


def _wide_samples(image):
    """What an opened image of more than 8 bits a sample is, with what reading it as
    8-bit would do; `None` for an 8-bit image.

    Pillow converts "I;16", "I" and "F" images to RGB by clipping every value above
    255, and reads 16-bit RGB PNGs and TIFFs as 8-bit "RGB", keeping each value's high
    byte (only the file's own mode, in `image.tile` before `load()`, tells them apart).
    """
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        depth = "floating-point" if image.mode == "F" else "16- or 32-bit"
        return (f"{depth} (mode {image.mode}), and converting it would clip every value "
                f"above 255 to white")
    for tile in image.tile if image.mode in ("RGB", "RGBA") else ():
        mode = tile[3] if isinstance(tile[3], str) else (tile[3] or ("",))[0]
        if isinstance(mode, str) and (";16" in mode or ";32" in mode):
            return (f"{image.mode} of more than 8 bits a colour (mode {mode}), which "
                    f"Pillow reads as 8-bit by keeping the high byte of each value")
    return None


def read_image_sizes(pairs, patch_size, resize_masks):
    """Heights and widths of the images from their headers; checks the masks' sizes."""
    sizes, resized = [], 0
    for _, image_path, mask_path in pairs:
        try:
            with Image.open(image_path) as image, Image.open(mask_path) as mask:
                image_size, mask_size = image.size, mask.size
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            _read_image(image_path)  # raises, naming the file
            _read_image(mask_path, "mask")
            raise
        resized += _needs_resize(image_path, image_size, mask_path, mask_size, resize_masks)
        if min(image_size) < patch_size:
            raise ValueError(
                f"{image_path} is {image_size[0]}x{image_size[1]}, smaller "
                f"than one {patch_size}x{patch_size} patch. Use a smaller "
                f"patch_size or remove this image."
            )
        sizes.append((image_size[1], image_size[0]))
    return sizes, resized


def _check_same_aspect(image_path, image_size, mask_path, mask_size):
    """Refuses a mask that is not its image at another scale (to within rounding)."""
    (image_w, image_h), (mask_w, mask_h) = image_size, mask_size
    # a mask saved at scale s is round(image_w * s) x round(image_h * s): the cross
    # product below is then at most half a pixel of each side, scaled
    if abs(mask_h * image_w - image_h * mask_w) > (image_w + image_h) / 2:
        raise ValueError(
            f"Mask {mask_path} is {mask_w}x{mask_h} (width x height) and its image "
            f"{image_path} {image_w}x{image_h}: not the image at another scale, so "
            f"resize_masks would stretch it ({mask_w / mask_h:.3f} against "
            f"{image_w / image_h:.3f} wide to high) and move every class boundary. "
            f"Check that it is this image's mask; if it is a crop, pad or crop the "
            f"pair to the same area first.")


def cut_patches(array: np.ndarray, patch_size: int) -> np.ndarray:
    """Crops to multiples of `patch_size` and cuts non-overlapping patches.

    The crop keeps the top-left corner.

    Args:
        array: array of shape `(H, W, ...)`.
        patch_size: side of the square patches.

    Returns:
        Array of shape `(N, patch_size, patch_size, ...)`, rows first.

    Example:

    >>> cut_patches(np.zeros((70, 100, 3)), 32).shape  # 2 rows of 3; margins cropped
    (6, 32, 32, 3)
    """
    rows, cols = array.shape[0] // patch_size, array.shape[1] // patch_size
    cropped = array[: rows * patch_size, : cols * patch_size]
    patches = cropped.reshape(
        rows, patch_size, cols, patch_size, *array.shape[2:]
    ).swapaxes(1, 2)
    return patches.reshape(rows * cols, patch_size, patch_size, *array.shape[2:])


def download_dataset(
    destination: os.PathLike | str = "data",
    source: os.PathLike | str | None = None,
) -> pathlib.Path:
    """Gets the dataset and returns its root folder.

    With no `source`, downloads it from Kaggle through `kagglehub` (the
    dataset is public; kagglehub reads credentials, where needed, from
    Colab secrets or the `KAGGLE_USERNAME` / `KAGGLE_KEY` environment
    variables, never from this repository). With `source`, uses a folder or
    unpacks a zip archive into `destination`. Nothing touches the network
    before this function is called.

    Args:
        destination: folder that a zip `source` is unpacked into; it must be
            empty unless the archive holds a single folder.
        source: optional path of a folder or zip holding the dataset.

    Returns:
        `pathlib.Path` of the dataset root, ready for `load_dataset`.

    Example:

    With no `source` it downloads from Kaggle (not run here: it needs the
    network):

    >>> root = download_dataset()  # doctest: +SKIP

    A zip of the dataset, as Kaggle's download button or Google Drive gives it:

    >>> import shutil
    >>> archive = shutil.make_archive("aerial", "zip", make_tiny_dataset("tiny").parent)
    >>> print(download_dataset("data", source=archive))
    data/Semantic segmentation dataset
    """
    if source is None:
        import kagglehub  # Imported here: only this path needs the network.

        try:
            path = kagglehub.dataset_download(KAGGLE_HANDLE)
        except Exception as error:  # network, API or credentials: kagglehub's many kinds
            raise RuntimeError(
                f"Downloading the dataset {KAGGLE_HANDLE} from Kaggle failed ({error}). "
                f"Check the connection (on Kaggle, turn the notebook's Internet on), or "
                f"download it yourself from https://www.kaggle.com/datasets/"
                f"{KAGGLE_HANDLE} and pass the zip or folder: download_dataset("
                f"source=...), or set SSSI_DATA to the unpacked folder.") from error
        return find_dataset_root(path)
    source = pathlib.Path(source).expanduser()
    if source.is_file() and zipfile.is_zipfile(source):
        destination = pathlib.Path(destination)
        destination.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(source) as archive:
            tops = {pathlib.PurePosixPath(n).parts[0] for n in archive.namelist()
                    if n.strip("/")} - {"__MACOSX"}
            if len(tops) != 1 and any(destination.iterdir()):
                raise ValueError(
                    f"{source} unpacks {len(tops)} entries side by side, which {destination} "
                    f"already holds files beside: the dataset found there could be an "
                    f"older one. Pass an empty (or new) folder as destination.")
            archive.extractall(destination)
        # search only what this archive unpacked, not what the folder held before
        top = destination / tops.pop() if len(tops) == 1 else destination
        return find_dataset_root(top if top.is_dir() else destination)
    if source.is_file():
        raise ValueError(
            f"{source} is neither a folder nor a zip archive. Pass the "
            f"dataset folder or the zip downloaded from Kaggle."
        )
    return find_dataset_root(source)
