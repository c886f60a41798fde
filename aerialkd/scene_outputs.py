"""What a batch of scenes leaves beside its label rasters: STAC sidecars and a VRT mosaic.

Each scene's sidecar is a STAC Item of its labels (`label_item`), written
whole or not at all (`write_into_place`) and read back to tell a finished scene
(`read_label_item`); `write_mosaics` joins the label rasters of a folder into
one VRT per CRS.
"""

from __future__ import annotations

import collections
import datetime
import json
import os
import pathlib
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any

from .classes import IGNORE_INDEX
from .run_files import write_into_place

LABEL_EXTENSION = "https://stac-extensions.github.io/label/v1.0.1/schema.json"
CLASSIFICATION_EXTENSION = ("https://stac-extensions.github.io/classification/v2.0.0/"
                            "schema.json")


def label_item(
    record: dict[str, Any],
    *,
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]],
    key: str,
    key_parts: dict[str, Any],
    model_path: os.PathLike | str,
    started: float,
    labels_path: os.PathLike | str,
    nodata_pixels: int | None = None,
    polygons_path: os.PathLike | str | None = None,
    cog: bool = True,
    source_item: dict | None = None,
    source_item_path: os.PathLike | str | None = None,
) -> dict[str, Any]:
    """A scene's sidecar: a STAC Item of its label raster (label extension, raster).

    The Item follows the STAC label extension (`label:type` "raster",
    `label:classes` naming the class of each index, `label:overviews` with
    the pixels of each class, a `source` link to the scene or the Item it came
    from) and the classification extension on its `labels` asset (index,
    name and colour of each class). Its `aerialkd:` properties keep the
    books: `status`, `error`, `seconds`, and `key` with the `key_parts` it
    was made from. Its time is the source Item's, else `started`; `created`
    is `started`. A failed scene's Item has no assets and no geometry.

    Args:
        record: the scene's record, as `segment_scenes` returns it.
        class_names: the name of each class index.
        palette: `(classes, 3)` colours of the classes.
        key: the scene's key: what makes its outputs the same.
        key_parts: what the key was made from.
        model_path: the model that labelled the scene.
        started: when the scene started, seconds since the epoch.
        labels_path: the label raster (its name is the Item's id).
        nodata_pixels: pixels left out as nodata.
        polygons_path: the scene's GeoJSON polygons, if written.
        cog: whether the label raster is a cloud-optimized GeoTIFF.
        source_item: the STAC Item of the scene, if it came from one.
        source_item_path: the file of `source_item`, if any.

    Returns:
        The Item, a dict ready for `json.dumps`.

    Example:

    >>> record = {"source": "scene.tif", "labels": None, "status": "failed",
    ...           "error": "ValueError: not a raster", "seconds": 0.1, "class_pixels": None}
    >>> item = label_item(record, class_names=["a", "b"], palette=[[0, 0, 0], [9, 9, 9]],
    ...                   key="k", key_parts={}, model_path="m.keras", started=0,
    ...                   labels_path="scene_labels.tif")
    >>> item["id"], item["properties"]["label:type"], item["properties"]["aerialkd:status"]
    ('scene_labels', 'raster', 'failed')
    """
    labels = pathlib.Path(labels_path)
    names = list(class_names)
    created = datetime.datetime.fromtimestamp(started, datetime.timezone.utc)
    created = created.isoformat(timespec="seconds").replace("+00:00", "Z")
    source_properties = (source_item or {}).get("properties", {})
    times = {k: source_properties[k] for k in ("datetime", "start_datetime", "end_datetime")
             if k in source_properties} or {"datetime": created}
    properties = {
        **times,
        "created": created,
        "label:description": f"The class of each pixel, predicted by "
                             f"{pathlib.Path(model_path).name}",
        "label:type": "raster",
        "label:properties": None,
        "label:classes": [{"name": None, "classes": names}],
        "label:tasks": ["segmentation"],
        "label:methods": ["automated"],
        "aerialkd:status": record["status"],
        "aerialkd:error": record["error"],
        "aerialkd:seconds": round(record["seconds"], 3),
        "aerialkd:key": key,
        "aerialkd:key_parts": key_parts,
    }
    geometry, bbox, assets = None, None, {}
    if record["status"] == "ok":
        counts = [{"name": name, "count": count}
                  for name, count in record["class_pixels"].items()]
        properties["label:overviews"] = [{"property_key": None, "counts": counts}]
        properties["aerialkd:nodata_pixels"] = nodata_pixels
        geometry, bbox = _footprint(labels)
        profile = "; profile=cloud-optimized" if cog else ""
        assets["labels"] = {
            "href": f"./{labels.name}", "type": f"image/tiff; application=geotiff{profile}",
            "title": "class index of each pixel (nodata 255)",
            "roles": ["labels", "labels-raster"],
            "classification:classes": [
                {"value": i, "name": name, "color_hint": "%02X%02X%02X" % tuple(palette[i])}
                for i, name in enumerate(names)]}
        if polygons_path:
            assets["polygons"] = {"href": f"./{pathlib.Path(polygons_path).name}",
                                  "type": "application/geo+json",
                                  "roles": ["labels", "labels-vector"]}
    source = source_item_path or record["source"]
    item = {"type": "Feature", "stac_version": "1.0.0",
            "stac_extensions": [LABEL_EXTENSION, CLASSIFICATION_EXTENSION],
            "id": labels.stem, "geometry": geometry}
    if bbox is not None:
        item["bbox"] = bbox
    item.update(properties=properties, assets=assets, links=[{
        "rel": "source", "href": pathlib.Path(source).resolve().as_uri(),
        "type": "application/geo+json" if source_item_path else "image/tiff"}])
    return item


def _footprint(labels):
    """The raster's outline and bounds in WGS 84; `None`, `None` without a CRS or in
    a local (engineering) one, such as a site grid, which has no way to WGS 84."""
    import rasterio
    import rasterio.warp
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(labels) as src:
            crs, (left, bottom, right, top) = src.crs, src.bounds
    if crs is None or not (crs.is_geographic or crs.is_projected):
        return None, None
    outline = {"type": "Polygon", "coordinates": [[(left, bottom), (right, bottom),
                                                   (right, top), (left, top),
                                                   (left, bottom)]]}
    geometry = rasterio.warp.transform_geom(crs, "EPSG:4326", outline)
    bbox = rasterio.warp.transform_bounds(crs, "EPSG:4326", left, bottom, right, top)
    return json.loads(json.dumps(geometry)), [round(v, 9) for v in bbox]


def read_label_item(path: os.PathLike | str) -> dict[str, Any] | None:
    """Status, key, source, classes and class pixels of a `label_item` sidecar; `None` if unreadable.

    The source is the resolved path of the scene its `key_parts` name (`None`
    if they name none); the classes are the names of its label values, in
    order, and the colours their "RRGGBB" colours (`None` if it names none).

    Example:

    >>> read_label_item("nothing.json") is None
    True
    """
    try:
        item = json.loads(pathlib.Path(path).read_text())
        properties = item["properties"]
        counts = (properties.get("label:overviews") or [{"counts": []}])[0]["counts"]
        classes = (properties.get("label:classes") or [{"classes": None}])[0]["classes"]
        described = item.get("assets", {}).get("labels", {}).get("classification:classes")
        return {"status": properties["aerialkd:status"], "key": properties["aerialkd:key"],
                "source": (properties.get("aerialkd:key_parts") or {}).get("source"),
                "classes": classes,
                "colours": [c["color_hint"] for c in described] if described else None,
                "class_pixels": {count["name"]: count["count"] for count in counts}}
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def classes_differ(first: str, other: str, dst_dir: os.PathLike | str,
                   names: tuple[Any, Any], colours: tuple[Any, Any]) -> ValueError:
    """The error for two label outputs of one folder with other classes or colours.

    One folder's mosaic takes one colour map and one set of class names, so
    `segment_scenes` refuses a batch into a folder of another model's scenes
    and `write_mosaics` rasters that disagree; both say it with this message.

    Args:
        first, other: how the message names the two outputs.
        dst_dir: their folder.
        names: their class names.
        colours: their class colours, lists of "RRGGBB" a label value (`None`
            for an output without).

    Returns:
        The `ValueError` to raise.

    Example:

    >>> print(classes_differ("a.tif", "b.tif", "out", (["x"], ["x"]),
    ...                      (["3C1098"], ["9B9B9B"])))  # doctest: +ELLIPSIS
    a.tif and b.tif in out colour their classes differently (label 0: 3C1098 and 9B9B9B): ...
    """
    if names[0] != names[1]:
        differ = f"name their classes differently ({names[0]} and {names[1]})"
    elif None in colours:
        differ = "colour their classes differently (one of them has no colour map)"
    else:
        pairs = [f"label {i}: {a} and {b}" for i, (a, b) in enumerate(zip(*colours)) if a != b]
        differ = f"colour their classes differently ({', '.join(pairs)})"
    return ValueError(
        f"{first} and {other} in {dst_dir} {differ}: one mosaic would show the labels of "
        f"one under the classes of the other. Keep the outputs of each model (or set of "
        f"classes) in a folder of their own, or delete the older rasters with their "
        f"sidecars (*_labels.json).")


def finished_labels(dst_dir: os.PathLike | str) -> list[pathlib.Path]:
    """The label rasters in `dst_dir` whose `label_item` sidecar says "ok", by name.

    Example:

    >>> finished_labels(".")  # no sidecars here
    []
    """
    finished = []
    for sidecar in sorted(pathlib.Path(dst_dir).glob("*_labels.json")):
        labels, item = sidecar.with_suffix(".tif"), read_label_item(sidecar)
        if item is not None and item["status"] == "ok" and labels.is_file():
            finished.append(labels)
    return finished


def write_mosaics(dst_dir: os.PathLike | str,
                  label_paths: Sequence[os.PathLike | str]) -> list[pathlib.Path]:
    """Writes a VRT mosaic of the label rasters in `dst_dir`, one for each CRS.

    GDAL reads a VRT as one raster: a GIS opens the mosaic of thousands of
    scenes as one layer, with their colour map, class names and nodata 255 (a
    scene's nodata never hides a neighbour's labels). The rasters must be in
    `dst_dir`; those of one CRS go into `labels.vrt`, or, if they have several
    CRSs, into one `labels_EPSG_<code>.vrt` each (`labels_crs_<i>.vrt` for a
    CRS without an EPSG code, or one of several CRSs with the same code). The
    mosaic has the finest resolution among them; rasters without a CRS, or not
    north-up, are left out. The VRTs an earlier call wrote are replaced.
    Rasters of one CRS whose class names or colour maps differ (the outputs
    of two models in one folder) are an error: one mosaic would show the
    labels of one under the classes of the other.

    Args:
        dst_dir: the folder of the label rasters, where the VRTs go.
        label_paths: the label rasters, e.g. written by `segment_scene`.

    Returns:
        The paths of the VRTs written.

    Example:

    >>> import rasterio
    >>> from affine import Affine
    >>> for i, x in enumerate([500_000, 500_060]):  # two 50 x 80 m scenes, 10 m apart
    ...     with rasterio.open(f"labels_{i}.tif", "w", driver="GTiff", width=100, height=80,
    ...                        count=1, dtype="uint8", nodata=255, crs="EPSG:32640",
    ...                        transform=Affine(0.5, 0, x, 0, -1, 2_800_000)) as labels:
    ...         labels.write(np.full((1, 80, 100), i, np.uint8))
    >>> (vrt,) = write_mosaics(".", ["labels_0.tif", "labels_1.tif"])
    >>> with rasterio.open(vrt) as mosaic:
    ...     mosaic.shape, np.unique(mosaic.read(1)).tolist()
    ((80, 220), [0, 1, 255])
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    groups, styles = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        for path in label_paths:
            with rasterio.open(path) as src:
                t = src.transform
                if src.crs is None or t.b or t.d or t.a <= 0 or t.e >= 0:
                    continue
                groups.setdefault(src.crs, []).append(
                    (pathlib.Path(path), src.width, src.height, t, src.block_shapes[0]))
                styles.setdefault(src.crs, {}).setdefault(_style(src), pathlib.Path(path))
    dst_dir = pathlib.Path(dst_dir)
    for by_style in styles.values():
        if len(by_style) > 1:
            (names, colours), (other_names, other_colours) = list(by_style)[:2]
            first, other = list(by_style.values())[:2]
            raise classes_differ(f"The label rasters {first.name}", other.name, dst_dir,
                                 (names, other_names), (colours, other_colours))
    for old in [*dst_dir.glob("labels.vrt"), *dst_dir.glob("labels_*.vrt")]:
        old.unlink()
    written = []
    # named by EPSG code where one group has it: GDAL tells apart CRSs that one code
    # stands for (EPSG:32640 and "+proj=utm +zone=40 +ellps=WGS84"), whose mosaics
    # would otherwise replace each other
    codes = collections.Counter(crs.to_epsg() for crs in groups)
    for i, (crs, members) in enumerate(groups.items()):
        code = crs.to_epsg()
        name = "labels.vrt" if len(groups) == 1 else \
            f"labels_{f'EPSG_{code}' if code and codes[code] == 1 else f'crs_{i}'}.vrt"
        write_into_place(dst_dir / name, _vrt_xml(crs, members))
        written.append(dst_dir / name)
    return written


def _style(src):
    """A label raster's class names (its `CLASS_NAMES` tag) and colour map."""
    try:
        colours = tuple("%02X%02X%02X" % tuple(rgba[:3])
                        for value, rgba in sorted(src.colormap(1).items())
                        if value != IGNORE_INDEX)
    except ValueError:  # no colour map
        colours = None
    return src.tags().get("CLASS_NAMES"), colours


def _vrt_xml(crs, members):
    """A VRT mosaic of label rasters in `crs`, at the finest resolution among them."""
    import rasterio

    res_x = min(t.a for _, _, _, t, _ in members)
    res_y = min(-t.e for _, _, _, t, _ in members)
    left = min(t.c for _, _, _, t, _ in members)
    top = max(t.f for _, _, _, t, _ in members)
    right = max(t.c + w * t.a for _, w, _, t, _ in members)
    bottom = min(t.f + h * t.e for _, _, h, t, _ in members)
    with rasterio.open(members[0][0]) as first:  # colours and class names are shared
        tags = first.tags()
        try:
            colormap = first.colormap(1)
        except ValueError:  # no colour map: a grey band
            colormap = None
    root = ET.Element("VRTDataset", rasterXSize=str(round((right - left) / res_x)),
                      rasterYSize=str(round((top - bottom) / res_y)))
    ET.SubElement(root, "SRS").text = crs.to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(
        repr(float(v)) for v in (left, res_x, 0, top, 0, -res_y))
    metadata = ET.SubElement(root, "Metadata")
    for key, value in tags.items():
        ET.SubElement(metadata, "MDI", key=key).text = value
    band = ET.SubElement(root, "VRTRasterBand", dataType="Byte", band="1")
    ET.SubElement(band, "NoDataValue").text = str(IGNORE_INDEX)
    ET.SubElement(band, "ColorInterp").text = "Gray" if colormap is None else "Palette"
    if colormap is not None:
        table = ET.SubElement(band, "ColorTable")
        for value in range(256):
            colour = colormap.get(value, (0, 0, 0, 0))
            ET.SubElement(table, "Entry",
                          **{f"c{i + 1}": str(c) for i, c in enumerate(colour)})
    for path, width, height, t, (block_rows, block_cols) in members:
        source = ET.SubElement(band, "ComplexSource")
        ET.SubElement(source, "SourceFilename", relativeToVRT="1").text = path.name
        ET.SubElement(source, "SourceBand").text = "1"
        ET.SubElement(source, "SourceProperties", RasterXSize=str(width),
                      RasterYSize=str(height), DataType="Byte",
                      BlockXSize=str(block_cols), BlockYSize=str(block_rows))
        ET.SubElement(source, "SrcRect", xOff="0", yOff="0", xSize=str(width),
                      ySize=str(height))
        ET.SubElement(source, "DstRect", xOff=repr((t.c - left) / res_x),
                      yOff=repr((top - t.f) / res_y), xSize=repr(width * t.a / res_x),
                      ySize=repr(height * -t.e / res_y))
        ET.SubElement(source, "NODATA").text = str(IGNORE_INDEX)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"
