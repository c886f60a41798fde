"""Tests of `aerialkd.scene_tasks`: a scene's task, its failure, what earlier runs left removed."""

import json
import pathlib

import numpy as np
import pytest

import aerialkd
import utils
from helpers import TILE, read_labels, statuses

rasterio = pytest.importorskip("rasterio")

# One xdist worker runs all the test_scene_*.py modules: their shared fixtures
# (tests/conftest.py, a Dask run among them) run once.
pytestmark = pytest.mark.xdist_group("scene_batch")


def test_segment_scenes_fails_only_the_broken_scene_with_its_message(batch, scenes):
    _, dst, records = batch
    assert statuses(records) == ["ok", "ok", "ok", "failed"]
    broken = records[3]
    assert broken["source"] == str(scenes[3]) and broken["labels"] is None
    assert broken["error"].startswith("ValueError: ")
    assert "broken.tif is not a raster rasterio can read" in broken["error"]
    assert not (dst / "broken_labels.tif").exists()
    sidecar = json.loads((dst / "broken_labels.json").read_text())
    assert sidecar["properties"]["aerialkd:status"] == "failed"
    assert sidecar["properties"]["aerialkd:error"] == broken["error"]


def test_segment_scenes_leaves_no_temporary_files(batch):
    _, dst, _ = batch
    assert sorted(p.name for p in dst.iterdir() if p.name.startswith(".")) == []


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
    np.testing.assert_array_equal(read_labels(record["labels"]), expected["scene_0.tif"])


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
    (out / ".scene_0_labels.tif.0badc0de.cog.partial.ovr.tmp").write_text("GDAL's overviews")
    (out / ".scene_0_labels.geojson.k1lled").mkdir()  # polygonize's folder
    (out / ".scene_0_labels.geojson.k1lled" / "scene_0_labels.geojson").write_text("{")
    (out / ".scene_1_labels.tif.0badc0de.partial").write_text("another scene's")
    (record,) = utils.segment_scenes(models[0], scenes[:1], out, tile_size=TILE,
                                     polygons=True, progress=False)
    assert record["status"] == "ok"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [
        ".scene_1_labels.tif.0badc0de.partial"]  # not this run's scene: left alone
