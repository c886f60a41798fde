"""Tests of many scenes: `segment_scenes` on small GeoTIFFs, in this process and on Dask."""

import json
import os
import pathlib
import re
import shutil
import sys
import threading

import keras
import numpy as np
import pytest

import aerialkd
import utils

rasterio = pytest.importorskip("rasterio")
from affine import Affine  # noqa: E402

# One xdist worker runs them all: the module's fixtures (a Dask run among them) run once.
pytestmark = pytest.mark.xdist_group("scene_batch")

CRS = "EPSG:32640"  # WGS 84 / UTM zone 40N, Dubai's
TILE = 32


def _transform(x):
    """0.5 m pixels, the top left corner `x` metres east of 500,000 E, 2,800,000 N."""
    return Affine(0.5, 0.0, 500_000.0 + x, 0.0, -0.5, 2_800_000.0)


def _write_raster(path, pixels, transform, **profile):
    count, height, width = pixels.shape
    with rasterio.open(path, "w", driver="GTiff", height=height, width=width, count=count,
                       dtype=pixels.dtype, crs=CRS, transform=transform, **profile) as dst:
        dst.write(pixels)
    return path


def _save_conv_model(path, seed):
    """A 3x3 convolution to six classes: tiny, sees its neighbours, differs by seed."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    keras.Model(inputs, keras.layers.Conv2D(6, 3, padding="same")(x)).save(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return [_save_conv_model(folder / f"conv_{seed}.keras", seed) for seed in (0, 1)]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Three scenes side by side, 5 m apart (the last with a 12-column nodata margin), and
    a file that is no raster."""
    folder = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(0)
    paths, x = [], 0.0
    for i, (height, width) in enumerate([(70, 90), (100, 64), (80, 80)]):
        pixels = rng.integers(1, 256, (3, height, width), dtype=np.uint8)
        profile = {}
        if i == 2:
            pixels[:, :, :12] = 0
            profile["nodata"] = 0
        paths.append(_write_raster(folder / f"scene_{i}.tif", pixels, _transform(x),
                                   **profile))
        x += width * 0.5 + 5
    (folder / "broken.tif").write_text("not a raster")
    return paths + [folder / "broken.tif"]


@pytest.fixture(scope="module")
def expected(tmp_path_factory, models, scenes):
    """Each good scene's labels as `segment_scene` writes them, one at a time."""
    folder = tmp_path_factory.mktemp("expected")
    model = keras.saving.load_model(models[0])
    labels = {}
    for scene in scenes[:3]:
        utils.segment_scene(model, scene, folder / scene.name, tile_size=TILE)
        labels[scene.name] = _read(folder / scene.name)
    return labels


def _read(path):
    with rasterio.open(path) as src:
        return src.read(1)


def _statuses(records):
    return [record["status"] for record in records]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, models, scenes):
    """The four scenes through an engine, once per engine whatever the tests' order."""
    done = {}

    def run(engine):
        if engine not in done:
            dst = tmp_path_factory.mktemp(f"batch_{engine}")
            workers = 2 if engine == "dask" else None
            done[engine] = dst, utils.segment_scenes(models[0], scenes, dst, engine=engine,
                                                     workers=workers, tile_size=TILE,
                                                     progress=False)
        return done[engine]

    return run


@pytest.fixture(params=["local", "dask"])
def batch(request, runs):
    """(engine, dst_dir, records) of one engine's run."""
    if request.param == "dask":
        pytest.importorskip("distributed")
    return (request.param, *runs(request.param))


# -- one run, on each engine ------------------------------------------------


def test_segment_scenes_labels_equal_segment_scene_for_each_scene(batch, scenes, expected):
    _, dst, records = batch
    for scene, record in zip(scenes[:3], records):
        assert record["source"] == str(scene)
        assert record["labels"] == str(dst / f"{scene.stem}_labels.tif")
        labels = _read(record["labels"])
        np.testing.assert_array_equal(labels, expected[scene.name])
        assert record["class_pixels"] == {
            name: int(np.sum(labels == i)) for i, name in enumerate(
                aerialkd.classes.generic_classes(6)[0])}


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


def test_segment_scenes_fails_only_the_broken_scene_with_its_message(batch, scenes):
    _, dst, records = batch
    assert _statuses(records) == ["ok", "ok", "ok", "failed"]
    broken = records[3]
    assert broken["source"] == str(scenes[3]) and broken["labels"] is None
    assert broken["error"].startswith("ValueError: ")
    assert "broken.tif is not a raster rasterio can read" in broken["error"]
    assert not (dst / "broken_labels.tif").exists()
    sidecar = json.loads((dst / "broken_labels.json").read_text())
    assert sidecar["properties"]["aerialkd:status"] == "failed"
    assert sidecar["properties"]["aerialkd:error"] == broken["error"]


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


def test_segment_scenes_writes_one_manifest_line_per_scene(batch, scenes):
    _, dst, records = batch
    lines = [json.loads(line) for line in (dst / "manifest.jsonl").read_text().splitlines()]
    by_source = {line["source"]: line for line in lines}
    assert len(lines) == 4 and by_source == {r["source"]: r for r in records}


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
    assert _statuses(failed) == ["failed"] * 3  # the sources are gone, the labels not
    with rasterio.open(out / "labels.vrt") as mosaic:
        _assert_mosaic_of(mosaic, scenes[:3], expected)


def test_a_folder_of_scenes_with_other_classes_is_refused_before_anything_runs(
        tmp_path, models, scenes):
    out = tmp_path / "out"
    utils.segment_scenes(models[0], scenes[:1], out, tile_size=TILE, progress=False)
    before = sorted(p.name for p in out.iterdir())
    renamed = [f"other {i}" for i in range(6)]
    with pytest.raises(ValueError, match=r"scene_0_labels.json records a finished scene with "
                                         r"the classes \['class 0'.*this batch labels "
                                         r"\['other 0'"):
        utils.segment_scenes(models[0], scenes[1:2], out, tile_size=TILE, class_names=renamed,
                             progress=False)
    assert sorted(p.name for p in out.iterdir()) == before
    records = utils.segment_scenes(models[0], scenes[:1], out, tile_size=TILE,
                                   class_names=renamed, overwrite=True, progress=False)
    assert _statuses(records) == ["ok"]  # the folder's own scene, relabelled on purpose


def test_a_mosaic_of_rasters_with_other_classes_is_refused(tmp_path):
    for name, classes in (("a", ["Building", "Road"]), ("b", ["Water", "Sand"])):
        with rasterio.open(tmp_path / f"{name}.tif", "w", driver="GTiff", width=8, height=8,
                           count=1, dtype="uint8", crs=CRS, transform=_transform(0)) as dst:
            dst.write(np.zeros((1, 8, 8), np.uint8))
            dst.update_tags(CLASS_NAMES=json.dumps(classes))
    with pytest.raises(ValueError, match=r"a.tif and b.tif in .* name or colour their classes "
                                         r"differently"):
        aerialkd.scene_outputs.write_mosaics(tmp_path, [tmp_path / "a.tif", tmp_path / "b.tif"])
    assert not list(tmp_path.glob("*.vrt"))


def test_segment_scenes_leaves_no_temporary_files(batch):
    _, dst, _ = batch
    assert sorted(p.name for p in dst.iterdir() if p.name.startswith(".")) == []


# -- resume -----------------------------------------------------------------


def test_a_rerun_skips_finished_scenes_and_starts_no_engine(tmp_path, models, scenes,
                                                           monkeypatch):
    distributed = pytest.importorskip("distributed")
    first = utils.segment_scenes(models[0], scenes[:3], tmp_path, tile_size=TILE,
                                 progress=False)

    def no_cluster(*args, **kwargs):
        raise AssertionError("a rerun with nothing to do started a cluster")

    monkeypatch.setattr(distributed, "LocalCluster", no_cluster)
    again = utils.segment_scenes(models[0], scenes[:3], tmp_path, engine="dask",
                                 workers=2, tile_size=TILE, progress=False)
    assert _statuses(again) == ["skipped"] * 3
    assert [r["class_pixels"] for r in again] == [r["class_pixels"] for r in first]
    lines = (tmp_path / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["skipped"] * 3


def test_a_rerun_runs_only_the_failed_scenes_again(tmp_path, models, scenes, monkeypatch):
    utils.segment_scenes(models[0], scenes, tmp_path, tile_size=TILE, progress=False)
    ran = []
    segment_scene = aerialkd.scene_tasks.segment_scene
    monkeypatch.setattr(aerialkd.scene_tasks, "segment_scene",
                        lambda model, src, *args, **kwargs: ran.append(src) or
                        segment_scene(model, src, *args, **kwargs))
    again = utils.segment_scenes(models[0], scenes, tmp_path, tile_size=TILE,
                                 progress=False)
    assert _statuses(again) == ["skipped"] * 3 + ["failed"]
    assert ran == [str(scenes[3])]


def test_another_model_file_or_parameter_redoes_finished_scenes(tmp_path, models, scenes):
    utils.segment_scenes(models[0], scenes[:3], tmp_path / "out", tile_size=TILE,
                         progress=False)
    copy = shutil.copy(models[0], tmp_path / "same_bytes.keras")  # same hash: same key
    assert _statuses(utils.segment_scenes(copy, scenes[:3], tmp_path / "out",
                                          tile_size=TILE, progress=False)) == ["skipped"] * 3
    other = utils.segment_scenes(models[1], scenes[:3], tmp_path / "out", tile_size=TILE,
                                 progress=False)
    assert _statuses(other) == ["ok"] * 3
    expected = keras.saving.load_model(models[1])
    utils.segment_scene(expected, scenes[0], tmp_path / "expected.tif", tile_size=TILE)
    np.testing.assert_array_equal(_read(other[0]["labels"]),
                                  _read(tmp_path / "expected.tif"))
    assert _statuses(utils.segment_scenes(models[1], scenes[:3], tmp_path / "out",
                                          tile_size=TILE, overlap=0,
                                          progress=False)) == ["ok"] * 3


def test_a_touched_source_or_overwrite_redoes_a_scene(tmp_path, models, scenes):
    sources = [shutil.copy(scene, tmp_path) for scene in scenes[:2]]
    utils.segment_scenes(models[0], sources, tmp_path / "out", tile_size=TILE,
                         progress=False)
    pathlib.Path(sources[1]).touch()  # a new modification time: a new key
    touched = utils.segment_scenes(models[0], sources, tmp_path / "out", tile_size=TILE,
                                   progress=False)
    assert _statuses(touched) == ["skipped", "ok"]
    assert _statuses(utils.segment_scenes(models[0], sources, tmp_path / "out",
                                          tile_size=TILE, overwrite=True,
                                          progress=False)) == ["ok", "ok"]


def test_a_scene_stopped_halfway_keeps_no_sidecar_of_its_earlier_run(
        tmp_path, models, scenes, expected, monkeypatch):
    out = tmp_path / "out"
    utils.segment_scenes(models[0], scenes[:1], out, tile_size=TILE, progress=False)

    def interrupt(*args, **kwargs):  # after the new labels are in place
        raise KeyboardInterrupt("stopped while polygonizing")

    monkeypatch.setattr(aerialkd.scene_tasks, "polygonize", interrupt)
    with pytest.raises(KeyboardInterrupt):
        utils.segment_scenes(models[0], scenes[:1], out, tile_size=TILE, overlap=0,
                             polygons=True, progress=False)
    monkeypatch.undo()
    assert not (out / "scene_0_labels.json").exists()  # nothing vouches for overlap=0's
    (record,) = utils.segment_scenes(models[0], scenes[:1], out, tile_size=TILE,
                                     progress=False)
    assert record["status"] == "ok"  # run again, not skipped on the first run's sidecar
    np.testing.assert_array_equal(_read(record["labels"]), expected["scene_0.tif"])


def test_a_scene_stopped_before_its_labels_leaves_none_of_its_earlier_run(
        tmp_path, models, scenes, monkeypatch):
    out = tmp_path / "out"
    utils.segment_scenes(models[0], scenes[:2], out, tile_size=TILE, polygons=True,
                         progress=False)

    def interrupt(*args, **kwargs):  # before the new labels are written
        raise KeyboardInterrupt("stopped")

    monkeypatch.setattr(aerialkd.scene_tasks, "segment_scene", interrupt)
    with pytest.raises(KeyboardInterrupt):
        utils.segment_scenes(models[0], scenes[:1], out, tile_size=TILE, overlap=0,
                             progress=False)
    # no labels.tif, sidecar or polygons of scene_0's first run, and a mosaic of scene_1 alone
    assert sorted(p.name for p in out.iterdir() if "scene_1" not in p.name) == [
        "labels.vrt", "manifest.jsonl"]
    with rasterio.open(out / "labels.vrt") as mosaic:
        assert [pathlib.Path(f).name for f in mosaic.files[1:]] == ["scene_1_labels.tif"]


def test_a_rerun_without_polygons_leaves_no_polygons_of_an_earlier_run(
        tmp_path, models, scenes):
    utils.segment_scenes(models[0], scenes[:1], tmp_path, tile_size=TILE, polygons=True,
                         progress=False)
    assert (tmp_path / "scene_0_labels.geojson").is_file()
    (record,) = utils.segment_scenes(models[0], scenes[:1], tmp_path, tile_size=TILE,
                                     progress=False)
    assert record["status"] == "ok"
    assert not (tmp_path / "scene_0_labels.geojson").exists()


def test_a_scene_run_again_removes_what_a_killed_attempt_left(tmp_path, models, scenes):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".scene_0_labels.tif.0badc0de.partial").write_text("half a raster")
    (out / ".scene_0_labels.tif.0badc0de.cog.partial").write_text("half a COG")
    (out / ".scene_0_labels.geojson.k1lled").mkdir()  # polygonize's folder
    (out / ".scene_0_labels.geojson.k1lled" / "scene_0_labels.geojson").write_text("{")
    (out / ".scene_1_labels.tif.0badc0de.partial").write_text("another scene's")
    (record,) = utils.segment_scenes(models[0], scenes[:1], out, tile_size=TILE,
                                     polygons=True, progress=False)
    assert record["status"] == "ok"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [
        ".scene_1_labels.tif.0badc0de.partial"]  # not this run's scene: left alone


def test_a_scene_of_the_same_name_from_another_folder_is_refused_unless_overwrite(
        tmp_path, models, scenes):
    # 2023/a.tif and 2024/a.tif: one output name, the same size and time, other pixels.
    with rasterio.open(scenes[0]) as src:
        pixels, transform = src.read(), src.transform
    for year, flip in (("2023", False), ("2024", True)):
        (tmp_path / year).mkdir()
        _write_raster(tmp_path / year / "a.tif", pixels[:, ::-1] if flip else pixels,
                      transform)
        os.utime(tmp_path / year / "a.tif", ns=(1_700_000_000 * 10**9,) * 2)
    utils.segment_scenes(models[0], str(tmp_path / "2023" / "*.tif"), tmp_path / "out",
                         tile_size=TILE, progress=False)
    labels_2023 = _read(tmp_path / "out" / "a_labels.tif")
    with pytest.raises(ValueError, match=re.escape(
            f"{tmp_path / 'out' / 'a_labels.json'} records the scene "
            f"{(tmp_path / '2023' / 'a.tif').resolve()}, not "
            f"{(tmp_path / '2024' / 'a.tif').resolve()}: both would be a_labels.tif")):
        utils.segment_scenes(models[0], str(tmp_path / "2024" / "*.tif"), tmp_path / "out",
                             tile_size=TILE, progress=False)
    np.testing.assert_array_equal(_read(tmp_path / "out" / "a_labels.tif"), labels_2023)
    (record,) = utils.segment_scenes(models[0], str(tmp_path / "2024" / "*.tif"),
                                     tmp_path / "out", tile_size=TILE, overwrite=True,
                                     progress=False)
    assert record["status"] == "ok"
    utils.segment_scene(keras.saving.load_model(models[0]), tmp_path / "2024" / "a.tif",
                        tmp_path / "expected.tif", tile_size=TILE)
    np.testing.assert_array_equal(_read(record["labels"]), _read(tmp_path / "expected.tif"))


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


# -- sources ----------------------------------------------------------------


def _item(item_id, href, roles=("data",), key="image"):
    return {"type": "Feature", "stac_version": "1.0.0", "id": item_id,
            "geometry": None, "properties": {"datetime": "2024-05-01T07:00:00Z"},
            "links": [], "assets": {"thumbnail": {"href": "thumb.png"},
                                    key: {"href": href, "roles": list(roles)}}}


def test_segment_scenes_reads_globs_list_files_and_stac_items(tmp_path, models, scenes):
    folder = tmp_path / "in"
    shutil.copytree(scenes[0].parent, folder)
    (folder / "list.txt").write_text("# two scenes\nscene_0.tif\n\nscene_1.tif  # north\n")
    (folder / "item.json").write_text(json.dumps(_item("tile-7", "./scene_2.tif",
                                                       key="visual")))
    collection = {"type": "FeatureCollection",
                  "features": [_item("tile-8", str(folder / "scene_0.tif"), key="B04")]}
    (folder / "items.json").write_text(json.dumps(collection))
    records = utils.segment_scenes(
        models[0], [folder / "list.txt", str(folder / "scene_1*.tif"),
                    folder / "item.json", folder / "items.json",
                    _item("tile-9", str(folder / "scene_2.tif"), key="B08")],
        tmp_path / "out", tile_size=TILE, progress=False)
    # scene_1 twice (the list and the glob), scene_2 by two Items: each path once.
    assert [r["source"] for r in records] == [str(folder / f"scene_{i}.tif")
                                             for i in (0, 1, 2)]
    assert _statuses(records) == ["ok"] * 3
    item = json.loads((tmp_path / "out" / "tile-7_labels.json").read_text())
    assert item["properties"]["datetime"] == "2024-05-01T07:00:00Z"
    assert item["links"][0]["href"] == (folder / "item.json").resolve().as_uri()


def test_a_folder_is_no_scene_but_a_pattern_of_its_files_is(tmp_path, models, scenes):
    (tmp_path / "tiles" / "2024").mkdir(parents=True)
    shutil.copy(scenes[0], tmp_path / "tiles")
    with pytest.raises(IsADirectoryError, match=re.escape(
            f"{tmp_path / 'tiles'} is a folder, not a scene; pass a pattern of its "
            f"scenes, e.g. '{tmp_path / 'tiles' / '*.tif'}'")):
        utils.segment_scenes(models[0], tmp_path / "tiles", tmp_path / "out",
                             tile_size=TILE, progress=False)
    assert not (tmp_path / "out").exists()
    # "tiles/*" matches the subfolder 2024 too: left out, not a failed scene.
    found = aerialkd.scene_sources.find_scenes(str(tmp_path / "tiles" / "*"))
    assert [scene.path.name for scene in found] == ["scene_0.tif"]


def test_scenes_of_one_name_in_different_folders_take_their_folder_names(
        tmp_path, models, scenes):
    for tile in ("Tile 1", "Tile 2"):
        (tmp_path / tile / "images").mkdir(parents=True)
        shutil.copy(scenes[0], tmp_path / tile / "images" / "part_1.tif")
    shutil.copy(scenes[1], tmp_path / "Tile 2" / "images" / "part_2.tif")
    records = utils.segment_scenes(models[0], str(tmp_path / "**" / "*.tif"),
                                   tmp_path / "out", tile_size=TILE, progress=False)
    assert [pathlib.Path(r["labels"]).name for r in records] == [
        "Tile_1_images_part_1_labels.tif", "Tile_2_images_part_1_labels.tif",
        "part_2_labels.tif"]


def test_a_scene_keeps_the_name_an_earlier_batch_gave_it(tmp_path, models, scenes):
    for year, scene in (("2023", scenes[0]), ("2024", scenes[1])):
        (tmp_path / year).mkdir()
        shutil.copy(scene, tmp_path / year / "a.tif")
    out = tmp_path / "out"
    utils.segment_scenes(models[0], tmp_path / "2023" / "a.tif", out, tile_size=TILE,
                         progress=False)  # alone in its batch: "a"
    records = utils.segment_scenes(models[0], str(tmp_path / "*" / "a.tif"), out,
                                   tile_size=TILE, progress=False)  # "2023_a" in this one
    assert _statuses(records) == ["skipped", "ok"]  # found, not labelled twice
    assert [pathlib.Path(r["labels"]).name for r in records] == [
        "a_labels.tif", "2024_a_labels.tif"]
    assert sorted(p.name for p in out.glob("*.tif")) == ["2024_a_labels.tif", "a_labels.tif"]


def test_segment_scenes_rejects_bad_arguments_naming_them(tmp_path, models, scenes):
    segment = utils.segment_scenes
    with pytest.raises(FileNotFoundError, match="model .*missing.keras does not exist"):
        segment(tmp_path / "missing.keras", scenes, tmp_path)
    with pytest.raises(ValueError, match="engine must be one of .*got 'spark'"):
        segment(models[0], scenes, tmp_path, engine="spark")
    with pytest.raises(ValueError, match="engine='local' runs the scenes one after another"):
        segment(models[0], scenes, tmp_path, workers=2)
    with pytest.raises(ValueError, match="retries must be an int >= 0, got -1"):
        segment(models[0], scenes, tmp_path, retries=-1)
    with pytest.raises(ValueError, match="matches no files"):
        segment(models[0], str(tmp_path / "*.tif"), tmp_path)
    with pytest.raises(ValueError, match="would all write tile-1_labels.tif"):
        segment(models[0], [_item("tile-1", str(scene)) for scene in scenes[:2]], tmp_path)
    two_data = _item("s2", "b02.tif", key="B02")
    two_data["assets"]["B03"] = {"href": "b03.tif", "roles": ["data"]}
    with pytest.raises(ValueError, match="'s2' has 2 assets with the role 'data'"):
        segment(models[0], [two_data], tmp_path)
    with pytest.raises(ValueError, match="is at https://example.com/a.tif, not a local file"):
        segment(models[0], [_item("remote", "https://example.com/a.tif")], tmp_path)
    no_href = _item("bare", "a.tif")
    del no_href["assets"]["image"]["href"]
    with pytest.raises(ValueError, match="'bare'.*its asset 'image' has no 'href'"):
        segment(models[0], [no_href], tmp_path)
    items = tmp_path / "items"
    items.mkdir()
    for name, text, message in (("cut.json", '{"type": "Feat', r"cut.json is not a JSON file"),
                                ("list.json", "[]", r"list.json holds a JSON list, not a STAC"),
                                ("odd.json", '{"type": "FeatureCollection", "features": [1]}',
                                 r"odd.json holds a feature that is a JSON int")):
        (items / name).write_text(text)
        with pytest.raises(ValueError, match=message):
            segment(models[0], str(items / name), tmp_path)
    with pytest.raises(ValueError, match="class_names must name the 6 classes"):
        segment(models[0], scenes, tmp_path, class_names=["a", "b"])
    inputs = keras.Input((None, None, 3))
    keras.Model(inputs, keras.layers.Conv2D(256, 1)(inputs)).save(tmp_path / "wide.keras")
    with pytest.raises(ValueError, match="wide.keras has 256 output classes; a label "
                                         "raster holds at most 255"):
        segment(tmp_path / "wide.keras", scenes, tmp_path)


def test_a_missing_scene_fails_and_the_others_go_on(tmp_path, models, scenes):
    records = utils.segment_scenes(models[0], [tmp_path / "gone.tif", scenes[0]], tmp_path,
                                   tile_size=TILE, progress=False)
    assert _statuses(records) == ["failed", "ok"]
    assert records[0]["error"].startswith("FileNotFoundError: ")


# -- engines ----------------------------------------------------------------


def test_an_existing_dask_cluster_by_client_or_address(tmp_path, models, scenes, expected):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        by_client = utils.segment_scenes(models[0], scenes[:2], tmp_path / "a",
                                         engine=client, tile_size=TILE, progress=False)
        by_address = utils.segment_scenes(models[0], scenes[:2], tmp_path / "b",
                                          engine=cluster.scheduler_address,
                                          tile_size=TILE, progress=False)
        with pytest.raises(ValueError, match="an existing cluster .* has its own"):
            utils.segment_scenes(models[0], scenes, tmp_path, engine=client, workers=2)
    assert _statuses(by_client) == _statuses(by_address) == ["ok", "ok"]
    for record in by_client + by_address:
        name = pathlib.Path(record["source"]).name
        np.testing.assert_array_equal(_read(record["labels"]), expected[name])


_KILLER = '''
"""Dask worker preload: SIGKILLs this worker mid-scene on the first `kills` attempts."""
import os
import pathlib
import re
import signal

import aerialkd.scene_tasks as batch

MARKERS = pathlib.Path({markers!r})
KILLS = {kills!r}
# Preloads may run more than once in a worker: wrap the originals only.
segment_scene = batch.__dict__.setdefault("_unkilled_segment_scene", batch.segment_scene)
remove_leftovers = batch.__dict__.setdefault("_unkilled_remove_leftovers",
                                             batch._remove_leftovers)


def recording_remove_leftovers(labels):
    # What earlier attempts left of this scene, seen by this one before it cleans up.
    name = labels.name.removesuffix("_labels.tif")
    batch._left = sorted(p.name for p in labels.parent.iterdir() if name in p.name)
    remove_leftovers(labels)


def killing_segment_scene(model, src_path, dst_path, **kwargs):
    name = pathlib.Path(src_path).stem
    attempt = len(list(MARKERS.glob(name + ".*")))
    (MARKERS / f"{{name}}.{{attempt}}").write_text("\\n".join(batch._left))

    def progress(rows, height):  # after the first band is written
        if attempt < KILLS.get(name, 0):
            os.kill(os.getpid(), signal.SIGKILL)

    return segment_scene(model, src_path, dst_path, progress=progress, **kwargs)


batch.segment_scene = killing_segment_scene
batch._remove_leftovers = recording_remove_leftovers
'''


def _killing_preload(folder, kills):
    markers = folder / "markers"
    markers.mkdir()
    script = folder / "kill_worker.py"
    script.write_text(_KILLER.format(markers=str(markers), kills=kills))
    return script, markers


def test_a_worker_killed_mid_scene_leaves_no_finished_file_and_the_retry_completes(
        tmp_path, models, scenes, expected):
    dask = pytest.importorskip("dask")
    pytest.importorskip("distributed")
    script, markers = _killing_preload(tmp_path, {"scene_1": 1})
    with dask.config.set({"distributed.worker.preload": [str(script)]}):
        records = utils.segment_scenes(models[0], scenes[:3], tmp_path / "out",
                                       engine="dask", workers=2, retries=1,
                                       tile_size=TILE, progress=False)
    assert _statuses(records) == ["ok"] * 3
    assert sorted(p.name for p in markers.iterdir() if "scene_1" in p.name) == [
        "scene_1.0", "scene_1.1"]  # killed once, run again
    # The retry found only the killed attempt's temporary raster, nothing finished,
    # and removed it.
    (left,) = (markers / "scene_1.1").read_text().split()
    assert re.fullmatch(r"\.scene_1_labels\.tif\.[0-9a-f]{8}\.partial", left)
    np.testing.assert_array_equal(_read(records[1]["labels"]), expected["scene_1.tif"])
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_a_scene_whose_workers_keep_dying_fails_and_leaves_no_finished_file(
        tmp_path, models, scenes):
    dask = pytest.importorskip("dask")
    pytest.importorskip("distributed")
    script, _ = _killing_preload(tmp_path, {"scene_0": 99})
    with dask.config.set({"distributed.worker.preload": [str(script)]}):
        (record,) = utils.segment_scenes(models[0], scenes[:1], tmp_path / "out",
                                         engine="dask", workers=1, retries=0,
                                         tile_size=TILE, progress=False)
    assert record["status"] == "failed" and record["error"].startswith("KilledWorker: ")
    partial, manifest = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert re.fullmatch(r"\.scene_0_labels\.tif\.[0-9a-f]{8}\.partial", partial)
    assert manifest == "manifest.jsonl"


@pytest.mark.parametrize("engine, hint", [
    ("ray", "engine='ray' needs ray: `pip install ray`, or use engine='dask'"),
    ("dask", "engine='dask' needs 'dask[distributed]': `pip install 'dask[distributed]'`")])
def test_a_missing_engine_says_how_to_install_it(tmp_path, models, scenes, monkeypatch,
                                                 engine, hint):
    # A None entry in sys.modules makes `import` raise ImportError, as on a machine
    # without the package, whether or not it is installed here.
    monkeypatch.setitem(sys.modules, "ray" if engine == "ray" else "distributed", None)
    with pytest.raises(ImportError, match=re.escape(hint)):
        utils.segment_scenes(models[0], scenes[:1], tmp_path, engine=engine, workers=1,
                             tile_size=TILE, progress=False)
    assert not any(tmp_path.iterdir())


def test_ray_started_by_segment_scenes_labels_every_scene_and_is_shut_down(
        tmp_path, models, scenes, expected):
    ray = pytest.importorskip("ray")
    records = utils.segment_scenes(models[0], scenes[:2], tmp_path, engine="ray",
                                   workers=2, tile_size=TILE, progress=False)
    assert _statuses(records) == ["ok", "ok"] and not ray.is_initialized()
    for record in records:
        name = pathlib.Path(record["source"]).name
        np.testing.assert_array_equal(_read(record["labels"]), expected[name])


def _fail_each_sidecar_once():
    """Ray's worker setup hook (pickled by value): writing a sidecar fails once a scene."""
    import pathlib

    import aerialkd.scene_tasks

    write = aerialkd.scene_tasks.write_into_place

    def flaky(path, data):
        marker = pathlib.Path(f"{path}.failed-once")
        if not marker.exists():
            marker.touch()
            raise OSError(f"a flaky file system dropped {path}")
        return write(path, data)

    aerialkd.scene_tasks.write_into_place = flaky


def test_ray_retries_an_error_outside_the_scene_as_the_other_engines_do(
        tmp_path, models, scenes):
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=1, include_dashboard=False,
             runtime_env={"worker_process_setup_hook": _fail_each_sidecar_once})
    try:
        records = utils.segment_scenes(models[0], scenes[:2], tmp_path, engine="ray",
                                       workers=1, retries=1, tile_size=TILE, progress=False)
    finally:
        ray.shutdown()
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert sorted(p.name for p in tmp_path.glob("*.failed-once")) == [
        "scene_0_labels.json.failed-once", "scene_1_labels.json.failed-once"]
    assert _statuses(records) == ["ok", "ok"]


def test_ray_actors_label_every_scene_even_with_more_workers_than_cpus(
        tmp_path, models, scenes, expected):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False)  # two actors, one CPU: both must run
    try:
        done = {}

        def run():  # in a thread: an actor never placed would make it wait forever
            try:
                done["records"] = utils.segment_scenes(
                    models[0], scenes[:3], tmp_path, engine="ray", workers=2,
                    tile_size=TILE, progress=False)
            except BaseException as error:
                done["error"] = error

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(timeout=300)
        assert not thread.is_alive(), "segment_scenes still waits for an actor"
        assert "error" not in done, done.get("error")
        assert ray.is_initialized()  # not shut down: segment_scenes did not start it
    finally:
        ray.shutdown()
    assert _statuses(done["records"]) == ["ok"] * 3
    for record in done["records"]:
        name = pathlib.Path(record["source"]).name
        np.testing.assert_array_equal(_read(record["labels"]), expected[name])


# -- overviews --------------------------------------------------------------


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
    scene = _write_raster(tmp_path / "blocks.tif", pixels, _transform(0))
    (record,) = utils.segment_scenes(tmp_path / "brightest.keras", scene, tmp_path / "out",
                                     tile_size=TILE, progress=False)
    assert record["class_pixels"] == {"class 0": 0, "class 1": 3 * 64 * 64,
                                      "class 2": 64 * 64}
    with rasterio.open(record["labels"], overview_level=0) as overview:
        assert overview.shape == (64, 64)
        assert np.all(overview.read(1) == 1)


# -- scripts/segment.py -----------------------------------------------------


@pytest.fixture
def segment_script(monkeypatch):
    monkeypatch.syspath_prepend(str(utils.REPO_ROOT / "scripts"))
    import segment

    return segment


def test_segment_script_segments_many_scenes_and_exits_non_zero_if_one_failed(
        tmp_path, models, scenes, segment_script, capsys):
    with pytest.raises(SystemExit) as exit:
        segment_script.main([str(models[0]), str(scenes[0].parent / "scene_*.tif"),
                             str(scenes[3]), str(tmp_path / "out"), "--tile-size",
                             str(TILE), "--quiet"])
    assert exit.value.code == 1
    printed = capsys.readouterr().out
    assert "3 ok, 0 skipped, 1 failed of 4 scenes" in printed
    assert "broken.tif: ValueError:" in printed
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tif")) == [
        f"scene_{i}_labels.tif" for i in range(3)]
    segment_script.main([str(models[0]), str(scenes[0].parent / "scene_*.tif"),
                         str(tmp_path / "out"), "--tile-size", str(TILE), "--quiet"])
    assert "0 ok, 3 skipped, 0 failed of 3 scenes" in capsys.readouterr().out


def test_segment_script_writes_one_scene_to_the_output_file_it_names(
        tmp_path, models, scenes, segment_script):
    segment_script.main([str(models[0]), str(scenes[0]), str(tmp_path / "a.tif"),
                         "--tile-size", str(TILE), "--quiet"])
    segment_script.main([str(models[0]), str(scenes[0]), str(tmp_path / "b.tif"),
                         "--tile-size", str(TILE), "--quiet", "--no-cog"])
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        assert a.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert b.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") != "COG"
        np.testing.assert_array_equal(a.read(1), b.read(1))
    # A second scene named as the output would be overwritten: refused.
    with pytest.raises(SystemExit, match="scene_1.tif exists and is not a label raster"):
        segment_script.main([str(models[0]), str(scenes[0]), str(scenes[1]),
                             "--tile-size", str(TILE), "--quiet"])
