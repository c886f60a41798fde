"""Tests of `aerialkd.scene_outputs`: cloud-optimized label rasters, STAC sidecars, VRT mosaics."""

import json
import pathlib
import shutil

import keras
import numpy as np
import pytest

import aerialkd
import utils
from helpers import CRS, TILE, statuses, utm_transform, write_raster

rasterio = pytest.importorskip("rasterio")

# One xdist worker runs all the test_scene_*.py modules: their shared fixtures
# (tests/conftest.py, a Dask run among them) run once.
pytestmark = pytest.mark.xdist_group("scene_batch")


# -- label rasters: cloud-optimized GeoTIFFs --------------------------------


def test_segment_scenes_writes_cloud_optimized_geotiffs(batch, scenes):
    _, dst, _ = batch
    for scene in scenes[:3]:
        with rasterio.open(scene) as src:
            transform = src.transform
        with rasterio.open(dst / f"{scene.stem}_labels.tif") as cog:
            assert cog.driver == "GTiff"
            assert cog.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            assert cog.profile["tiled"] and cog.block_shapes == [(TILE, TILE)]
            assert cog.overviews(1) == [2, 4]  # halved until it fits one block
            assert cog.crs.to_epsg() == 32640 and cog.transform == transform
            assert cog.nodata == 255 and cog.dtypes == ("uint8",)
            assert json.loads(cog.tags()["CLASS_NAMES"]) == [f"class {i}" for i in range(6)]
            assert cog.colormap(1)[255] == (0, 0, 0, 0)


def test_cog_false_writes_plain_tiled_geotiffs_and_redoes_the_cogs(tmp_path, models,
                                                                    scenes, expected):
    utils.segment_scenes(models[0], scenes[:1], tmp_path, tile_size=TILE, progress=False)
    (record,) = utils.segment_scenes(models[0], scenes[:1], tmp_path, tile_size=TILE,
                                     cog=False, progress=False)
    assert record["status"] == "ok"  # another option, another key: redone
    with rasterio.open(record["labels"]) as plain:
        assert plain.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") != "COG"
        assert plain.overviews(1) == [] and plain.block_shapes == [(TILE, TILE)]
        np.testing.assert_array_equal(plain.read(1), expected["scene_0.tif"])


def test_cog_overviews_keep_the_commonest_class_of_each_block(tmp_path):
    # Labels are the brightest of R, G, B (a 1x1 identity convolution). Each 2x2
    # block holds three Green pixels and one Blue one, the Blue one at a different
    # corner from block to block: by mode every overview pixel is Green (1),
    # where nearest-neighbour sampling would pick some Blue ones.
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1, use_bias=False)(inputs))
    model.layers[-1].set_weights([np.eye(3, dtype="float32")[None, None]])
    model.save(tmp_path / "brightest.keras")
    pixels = np.zeros((3, 128, 128), np.uint8)
    pixels[1] = 200
    corners = np.random.default_rng(0).integers(0, 4, (64, 64))
    for corner, (dy, dx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        rows, cols = np.nonzero(corners == corner)
        pixels[2, 2 * rows + dy, 2 * cols + dx] = 250
    scene = write_raster(tmp_path / "blocks.tif", pixels, utm_transform(0))
    (record,) = utils.segment_scenes(tmp_path / "brightest.keras", scene, tmp_path / "out",
                                     tile_size=TILE, progress=False)
    assert record["class_pixels"] == {"class 0": 0, "class 1": 3 * 64 * 64,
                                      "class 2": 64 * 64}
    with rasterio.open(record["labels"], overview_level=0) as overview:
        assert overview.shape == (64, 64)
        assert np.all(overview.read(1) == 1)


# -- STAC sidecars ----------------------------------------------------------


def test_segment_scenes_writes_a_stac_label_item_beside_each_scene(batch, scenes):
    _, dst, records = batch
    item = json.loads((dst / "scene_2_labels.json").read_text())
    properties = item["properties"]
    assert item["type"] == "Feature" and item["id"] == "scene_2_labels"
    assert any("/label/" in url for url in item["stac_extensions"])
    assert properties["label:type"] == "raster" and properties["label:properties"] is None
    assert properties["label:classes"] == [{"name": None, "classes": [
        f"class {i}" for i in range(6)]}]
    assert properties["aerialkd:status"] == "ok" and len(properties["aerialkd:key"]) == 64
    counts = {c["name"]: c["count"] for c in properties["label:overviews"][0]["counts"]}
    assert counts == records[2]["class_pixels"]
    assert properties["aerialkd:nodata_pixels"] == 80 * 12  # the margin
    assert item["assets"]["labels"]["href"] == "./scene_2_labels.tif"
    assert item["links"][0]["rel"] == "source"
    assert item["links"][0]["href"] == scenes[2].resolve().as_uri()
    west, south, east, north = item["bbox"]  # 57° E: UTM zone 40's central meridian
    assert 56.9 < west < east < 57.1 and 25.2 < south < north < 25.4


def test_a_scene_in_a_local_grid_is_labelled_with_a_sidecar_of_no_footprint(tmp_path, models):
    # a site grid (an engineering CRS) has no transformation to WGS 84
    site = rasterio.crs.CRS.from_wkt('LOCAL_CS["Site grid",UNIT["metre",1],'
                                     'AXIS["Easting",EAST],AXIS["Northing",NORTH]]')
    with rasterio.open(tmp_path / "site.tif", "w", driver="GTiff", width=40, height=40,
                       count=3, dtype="uint8", crs=site, transform=utm_transform(0)) as dst:
        dst.write(np.random.default_rng(0).integers(0, 256, (3, 40, 40), dtype=np.uint8))
    records = utils.segment_scenes(models[0], [tmp_path / "site.tif"], tmp_path / "out",
                                   tile_size=TILE, progress=False)
    assert statuses(records) == ["ok"], records[0]["error"]
    item = json.loads((tmp_path / "out" / "site_labels.json").read_text())
    assert item["geometry"] is None and "bbox" not in item


# -- mosaics ----------------------------------------------------------------


def test_segment_scenes_writes_a_vrt_mosaic_of_the_scenes(batch, scenes, expected):
    _, dst, _ = batch
    with rasterio.open(dst / "labels.vrt") as mosaic:
        assert mosaic.crs.to_epsg() == 32640 and mosaic.nodata == 255
        assert mosaic.colormap(1)[255] == (0, 0, 0, 0)
        _assert_mosaic_of(mosaic, scenes[:3], expected)
        assert np.all(mosaic.read(1)[:, 90:100] == 255)  # the gap between two scenes


def _assert_mosaic_of(mosaic, scenes, expected):
    """The mosaic spans the three scenes and holds each one's labels where it lies."""
    assert (mosaic.width, mosaic.height) == (90 + 10 + 64 + 10 + 80, 100)
    for scene in scenes:
        with rasterio.open(scene) as src:
            window = mosaic.window(*src.bounds)
        np.testing.assert_array_equal(mosaic.read(1, window=window), expected[scene.name])


def test_the_mosaic_holds_every_finished_scene_of_the_folder(tmp_path, models, scenes,
                                                             expected):
    sources = [pathlib.Path(shutil.copy(scene, tmp_path)) for scene in scenes[:3]]
    out = tmp_path / "out"
    utils.segment_scenes(models[0], sources[:2], out, tile_size=TILE, progress=False)
    utils.segment_scenes(models[0], sources[2:], out, tile_size=TILE, progress=False)
    for source in sources:
        source.unlink()
    failed = utils.segment_scenes(models[0], sources, out, tile_size=TILE, progress=False)
    assert statuses(failed) == ["failed"] * 3  # the sources are gone, the labels not
    with rasterio.open(out / "labels.vrt") as mosaic:
        _assert_mosaic_of(mosaic, scenes[:3], expected)


def test_a_mosaic_of_rasters_with_other_classes_is_refused(tmp_path):
    for name, classes in (("a", ["Building", "Road"]), ("b", ["Water", "Sand"])):
        with rasterio.open(tmp_path / f"{name}.tif", "w", driver="GTiff", width=8, height=8,
                           count=1, dtype="uint8", crs=CRS, transform=utm_transform(0)) as dst:
            dst.write(np.zeros((1, 8, 8), np.uint8))
            dst.update_tags(CLASS_NAMES=json.dumps(classes))
    with pytest.raises(ValueError, match=r"a.tif and b.tif in .* name their classes "
                                         r"differently \(\["):
        aerialkd.scene_outputs.write_mosaics(tmp_path, [tmp_path / "a.tif", tmp_path / "b.tif"])
    assert not list(tmp_path.glob("*.vrt"))


def test_a_mosaic_of_rasters_with_other_colours_is_refused_naming_the_labels(tmp_path):
    for name, colour in (("a", (200, 0, 0, 255)), ("b", (0, 0, 200, 255))):
        with rasterio.open(tmp_path / f"{name}.tif", "w", driver="GTiff", width=8, height=8,
                           count=1, dtype="uint8", crs=CRS, transform=utm_transform(0)) as dst:
            dst.write(np.zeros((1, 8, 8), np.uint8))
            dst.update_tags(CLASS_NAMES=json.dumps(["Building", "Road"]))
            dst.write_colormap(1, {0: (10, 10, 10, 255), 1: colour})
    with pytest.raises(ValueError, match=r"a.tif and b.tif in .* colour their classes "
                                         r"differently \(label 1: C80000 and 0000C8\): "):
        aerialkd.scene_outputs.write_mosaics(tmp_path, [tmp_path / "a.tif", tmp_path / "b.tif"])
    assert not list(tmp_path.glob("*.vrt"))


def test_rasters_of_several_crss_get_a_mosaic_each_even_under_one_epsg_code(tmp_path):
    crss = {"a": "EPSG:32640", "b": "+proj=utm +zone=40 +ellps=WGS84 +units=m",  # ~32640
            "c": "EPSG:32639"}
    for i, (name, crs) in enumerate(crss.items()):
        with rasterio.open(tmp_path / f"{name}.tif", "w", driver="GTiff", width=8, height=8,
                           count=1, dtype="uint8", nodata=255, crs=crs,
                           transform=utm_transform(0)) as dst:
            dst.write(np.full((1, 8, 8), i, np.uint8))
    written = aerialkd.scene_outputs.write_mosaics(
        tmp_path, [tmp_path / f"{name}.tif" for name in crss])
    assert sorted(path.name for path in written) == [
        "labels_EPSG_32639.vrt", "labels_crs_0.vrt", "labels_crs_1.vrt"]
    values = []
    for path in written:
        with rasterio.open(path) as mosaic:
            values.append(np.unique(mosaic.read(1)).tolist())
    assert sorted(values) == [[0], [1], [2]]  # each raster in a mosaic of its own
