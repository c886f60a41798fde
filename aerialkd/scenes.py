"""Raster scenes of any size: a georeferenced label GeoTIFF, and its polygons."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pathlib
import time
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .classes import IGNORE_INDEX, check_palette, class_names_for, generic_classes
from .run_files import partial_path, write_into_place
from .tiling import blend_tiles, check_tiling

if TYPE_CHECKING:
    import keras


def segment_scene(
    model: keras.Model | Callable[[np.ndarray], np.ndarray],
    src_path: os.PathLike | str,
    dst_path: os.PathLike | str,
    *,
    tile_size: int = 256,
    overlap: int | None = None,
    batch_size: int = 8,
    bands: Sequence[int] = (1, 2, 3),
    rescale: tuple[float, float] | None = None,
    class_names: Sequence[str] | None = None,
    palette: np.ndarray | None = None,
    cog: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Segments a raster scene of any size into a georeferenced label GeoTIFF.

    The scene is read band by band (rows of tiles) and blended exactly as
    `predict_image` does, so the labels are identical to `predict_image` on
    the same pixels, but memory depends on the width, `tile_size` and
    `batch_size`, never on the height: a few times `tile_size * width * 4 *
    classes` bytes (the blended rows under one row of tiles) besides the
    model, with GDAL's block cache held to the blocks under two rows of
    tiles (for tiled or striped sources). The output is a single-band uint8
    GeoTIFF of class indices with the source's size and georeference (its
    CRS and transform, or its ground control points, and its RPCs if any),
    tiled and deflate-compressed, with `palette` as its colour map and the
    class names in its tags (`CLASS_NAMES`, a JSON list, and `CLASS_<i>`).
    Source pixels that are nodata (the nodata value in every chosen band, an
    internal mask or an alpha band) are written as 255, the output's nodata.
    JPEG and PNG images work too; their output has no CRS. The raster is
    written under a hidden temporary name of its own beside `dst_path`
    (`.<name>.<random>.partial`) and moved into place when finished, so
    `dst_path` never holds a partial raster.

    Args:
        model: model returning logits of at most 255 classes; must accept
            `tile_size` inputs. Or the function `make_predict_function` makes
            of it.
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
            clipped. A uint8 scene is read as it is either way.
        class_names: one name per model output class (a dataset's
            `classes`); "class 0", ... if `None`.
        palette: `(classes, 3)` uint8 colours for the colour map (a
            dataset's `palette`); distinct generic colours if `None`.
        cog: write a cloud-optimized GeoTIFF (GDAL's COG driver: tiles of
            `tile_size`, overviews resampled by mode) instead of the plain
            tiled GeoTIFF; one more pass over the labels.
        progress: optional `callable(rows_done, height)`, called after each
            band is written (from the worker thread that writes them).

    Returns:
        dict with `path` (the label raster), `height`, `width`,
        `class_pixels` (name -> pixel count), `nodata_pixels` and `seconds`.

    Example:

    >>> scene, _ = data.files["test"][0]  # a JPEG; a GeoTIFF's CRS would carry over
    >>> result = segment_scene(student, scene, "labels.tif", class_names=data.classes)
    >>> result["height"], result["width"], sum(result["class_pixels"].values())
    (136, 150, 20400)
    """
    rasterio = _import_rasterio()
    from rasterio.enums import MaskFlags
    from rasterio.errors import NotGeoreferencedWarning

    started = time.perf_counter()
    src_path, dst_path = pathlib.Path(src_path), pathlib.Path(dst_path)
    tile_size, overlap, batch_size = check_tiling(tile_size, overlap, batch_size)
    if src_path.is_dir():
        raise IsADirectoryError(f"src_path {src_path} is a folder; pass the path of one "
                                f"scene in it, or segment them all with segment_scenes "
                                f"and a pattern such as {str(src_path / '*.tif')!r}.")
    if not src_path.is_file():
        raise FileNotFoundError(f"src_path {src_path} does not exist; pass the path "
                                f"of a GeoTIFF, JPEG or PNG scene.")
    if dst_path.resolve() == src_path.resolve():
        raise ValueError(f"dst_path must differ from src_path, got {dst_path} for both.")
    if dst_path.is_dir():  # found before the scene is segmented, not at the final rename
        raise IsADirectoryError(f"dst_path {dst_path} is a folder; pass the file to write "
                                f"in it, e.g. {str(dst_path / (src_path.stem + '_labels.tif'))!r}.")
    n_classes = getattr(model, "model", model).output_shape[-1]
    check_class_count(n_classes, "model")
    class_names = class_names_for(n_classes, class_names)
    palette = (generic_classes(n_classes)[1] if palette is None
               else check_palette(palette, n_classes))
    with warnings.catch_warnings():  # JPEG and PNG scenes have no georeference
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            src = rasterio.open(src_path)
        except rasterio.errors.RasterioIOError as error:
            raise ValueError(f"{src_path} is not a raster rasterio can read: "
                             f"{error}") from error
        with src:
            bands, rescale = _check_bands(src, src_path, bands, rescale)
            height, width = src.height, src.width
            counts = np.zeros(256, np.int64)
            dst_path.parent.mkdir(parents=True, exist_ok=True)
            with rasterio.Env(GDAL_CACHEMAX=_cache_bytes(src, tile_size)), \
                    _moved_into_place(dst_path, cog, tile_size) as partial, \
                    rasterio.open(partial, "w", **_label_profile(src, tile_size)) as dst:
                dst.write_colormap(1, {**{i: (*map(int, c), 255)
                                          for i, c in enumerate(palette)},
                                       IGNORE_INDEX: (0, 0, 0, 0)})
                dst.update_tags(CLASS_NAMES=json.dumps(list(class_names)),
                                **{f"CLASS_{i}": name for i, name in enumerate(class_names)})
                dst.set_band_description(1, "class index")
                def consume(top, logits):  # in blend_tiles' worker thread
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
                    blend_tiles(model, functools.partial(_read_window, src, bands, rescale),
                                 height, width, tile_size, overlap, batch_size, consume)
    return {"path": str(dst_path), "height": height, "width": width,
            "class_pixels": {name: int(counts[i]) for i, name in enumerate(class_names)},
            "nodata_pixels": int(counts[IGNORE_INDEX]),
            "seconds": time.perf_counter() - started}


def check_class_count(n_classes: int, model: str) -> None:
    """Raises unless a label raster can hold `n_classes`: uint8, 255 being nodata."""
    if n_classes > IGNORE_INDEX:
        raise ValueError(f"{model} has {n_classes} output classes; a label raster holds "
                         f"at most {IGNORE_INDEX} (uint8 class indices 0-"
                         f"{IGNORE_INDEX - 1}, {IGNORE_INDEX} being nodata). Segment with "
                         f"a model of at most {IGNORE_INDEX} classes.")


@contextlib.contextmanager
def _moved_into_place(dst_path, cog, tile_size):
    """Yields a hidden temporary path beside `dst_path`; moves the raster there when done.

    On leaving without an error, the raster (as a COG if `cog`) is renamed to
    `dst_path` (atomic on one file system); on an error it is removed. The
    temporary names, `.<name>.<random>.partial` and `.<name>.<random>.cog.partial`
    (and GDAL's `.ovr.tmp` beside the latter), are this writer's own, as
    `write_into_place`'s are: two writers of one `dst_path` never write into
    one file. A killed process leaves them;
    `segment_scenes` removes a scene's before running it again.
    """
    import rasterio.shutil

    partial, cog_partial = partial_path(dst_path), partial_path(dst_path, ".cog")
    try:
        yield partial
        if cog:  # overviews by mode: the commonest class, never a blend
            rasterio.shutil.copy(partial, cog_partial, driver="COG", COMPRESS="DEFLATE",
                                 BLOCKSIZE=tile_size, RESAMPLING="MODE")
            os.replace(cog_partial, dst_path)
        else:
            os.replace(partial, dst_path)
    finally:
        for leftover in (partial, cog_partial, cog_partial.with_name(
                f"{cog_partial.name}.ovr.tmp")):
            leftover.unlink(missing_ok=True)


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
    """Validates `bands` and `rescale` against the open raster; returns them.

    The rescale returned is `None` for uint8 bands: the documented "other
    dtypes" alone are mapped (a batch may mix 8- and 16-bit scenes).
    """
    bands, rescale = check_read_options(bands, rescale)
    if not all(1 <= b <= src.count for b in bands):
        from rasterio.enums import ColorInterp

        advice = ("Pass 1-based indices of its red, green and blue bands, e.g. "
                  "bands=(1, 2, 3)" if src.count >= 3 else
                  "Its band holds indices into a colour table, not colours: expand it to "
                  "RGB first, e.g. gdal_translate -expand rgb"
                  if src.colorinterp[0] == ColorInterp.palette else
                  "The model was trained on colour (RGB) images; a single band can be "
                  "repeated, bands=(1, 1, 1), but expect labels no better than a "
                  "greyscale image gives")
        raise ValueError(f"{src_path} has {src.count} band(s); bands={bands} asks for "
                         f"{'a band it lacks' if src.count >= 3 else 'three'}. {advice}.")
    dtypes = {src.dtypes[b - 1] for b in bands}
    if rescale is None and dtypes != {"uint8"}:
        raise ValueError(
            f"{src_path} has {'/'.join(sorted(dtypes))} pixels; the model takes "
            f"uint8. Pass rescale=(low, high) to map low..high linearly to 0..255."
        )
    return bands, (None if dtypes == {"uint8"} else rescale)


def check_read_options(bands, rescale):
    """`bands` as three ints and `rescale` as `(low, high)` floats with high > low, or None.

    What can be checked before a scene is opened (`segment_scenes` checks a
    whole batch's options at once).

    Example:

    >>> check_read_options([3, 2, 1], (0, 4095))
    ((3, 2, 1), (0.0, 4095.0))
    """
    bands = tuple(int(b) for b in bands)
    if len(bands) != 3:
        raise ValueError(f"bands must be three band indices (R, G, B), got {bands}.")
    if rescale is not None:
        rescale = tuple(float(v) for v in rescale)
        if len(rescale) != 2 or not rescale[1] > rescale[0]:
            raise ValueError(f"rescale must be (low, high) with high > low, got {rescale}.")
    return bands, rescale


def _cache_bytes(src, tile_size):
    """GDAL's block cache for a scene: the blocks under two rows of tiles, >= 64 MiB.

    GDAL's default, 5% of the machine's memory, keeps every block read until
    it is full, so a process's memory would grow with the scene's area.
    """
    block_rows = max(rows for rows, _ in src.block_shapes)
    pixel_bytes = sum(np.dtype(dtype).itemsize for dtype in src.dtypes) + 1  # + the labels
    return max(64 * 2**20, 2 * (tile_size + block_rows) * src.width * pixel_bytes)


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
    gcps, gcp_crs = src.gcps
    if gcps and "transform" not in profile:  # georeferenced by ground control points
        profile.update(gcps=gcps, **({"crs": gcp_crs} if gcp_crs is not None else {}))
    if src.rpcs is not None:
        profile.update(rpcs=src.rpcs)
    if src.height >= tile_size and src.width >= tile_size:
        profile.update(tiled=True, blockxsize=tile_size, blockysize=tile_size)
    return profile


def polygonize(
    label_path: os.PathLike | str,
    dst_path: os.PathLike | str,
    *,
    min_area: int = 0,
    connectivity: int = 4,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Writes the class regions of a label raster as GeoJSON polygons.

    Each connected region of one class becomes a feature with its `class`
    index and `name`, in the raster's CRS (coordinates through its
    transform, the CRS named in the file's `crs` member as
    `urn:ogc:def:crs:EPSG::<code>`). A raster without a CRS (a plain image,
    or one georeferenced by ground control points or RPCs alone, as
    `segment_scene` keeps them: a warning says so) gives pixel coordinates
    (column, row) and no `crs` member. Nodata pixels (the raster's nodata,
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
        class_names: names of the class indices; if `None`, those the
            raster's tags hold (`segment_scene` writes them), else "class 0",
            ....

    Returns:
        dict with `path` and `features` (name -> number of polygons).

    Example:

    >>> scene, _ = data.files["test"][0]
    >>> _ = segment_scene(student, scene, "labels.tif", class_names=data.classes)
    >>> list(polygonize("labels.tif", "labels.geojson", min_area=16)["features"])
    ['Building', 'Land', 'Road', 'Vegetation', 'Water', 'Unlabeled']
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
            tagged = src.tags().get("CLASS_NAMES")
            by_points = crs is None and (src.gcps[0] or src.rpcs)
    if by_points:
        warnings.warn(
            f"{label_path} is georeferenced by ground control points or RPCs alone, not "
            f"a transform: the polygons in {dst_path} are in pixel coordinates (column, "
            f"row). For polygons on a map, warp the label raster first (gdalwarp, "
            f"nearest-neighbour resampling) and polygonize the result.", stacklevel=2)
    valid = labels != nodata
    if class_names is None:
        class_names = json.loads(tagged) if tagged else class_names_for(
            int(labels[valid].max()) + 1 if valid.any() else 1)
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
    write_into_place(dst_path, json.dumps(collection))
    by_class = [f["properties"]["name"] for f in features]
    return {"path": str(dst_path),
            "features": {name: by_class.count(name) for name in class_names}}


def _crs_name(crs):
    epsg = crs.to_epsg()
    return f"urn:ogc:def:crs:EPSG::{epsg}" if epsg is not None else crs.to_wkt()
