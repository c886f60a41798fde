"""Tests of `aerialkd.scene_batch`: `segment_scenes` skips, records, refuses; scripts/segment.py."""

import json
import os
import pathlib
import re
import shutil

import keras
import numpy as np
import pytest

import aerialkd
import utils
from helpers import TILE, read_labels, stac_item, statuses, write_raster

rasterio = pytest.importorskip("rasterio")

# One xdist worker runs all the test_scene_*.py modules: their shared fixtures
# (tests/conftest.py, a Dask run among them) run once.
pytestmark = pytest.mark.xdist_group("scene_batch")


# -- one run, on each engine ------------------------------------------------


def test_segment_scenes_labels_equal_segment_scene_for_each_scene(batch, scenes, expected):
    _, dst, records = batch
    assert len(records) == len(scenes)  # the three good scenes first, then the broken file
    for scene, record in zip(scenes[:3], records):
        assert record["source"] == str(scene)
        assert record["labels"] == str(dst / f"{scene.stem}_labels.tif")
        labels = read_labels(record["labels"])
        np.testing.assert_array_equal(labels, expected[scene.name])
        assert record["class_pixels"] == {
            name: int(np.sum(labels == i)) for i, name in enumerate(
                aerialkd.classes.generic_classes(6)[0])}


def test_segment_scenes_writes_one_manifest_line_per_scene(batch, scenes):
    _, dst, records = batch
    lines = [json.loads(line) for line in (dst / "manifest.jsonl").read_text().splitlines()]
    by_source = {line["source"]: line for line in lines}
    assert len(lines) == 4 and by_source == {r["source"]: r for r in records}


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
    assert statuses(again) == ["skipped"] * 3
    assert [r["class_pixels"] for r in again] == [r["class_pixels"] for r in first]
    lines = (tmp_path / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["skipped"] * 3


def test_a_rerun_with_a_pattern_that_finds_the_outputs_skips_them(tmp_path, models, scenes):
    (tmp_path / "data").mkdir()
    shutil.copy(scenes[0], tmp_path / "data" / "a.tif")
    pattern, out = str(tmp_path / "data" / "**" / "*.tif"), tmp_path / "data" / "labels"
    first = utils.segment_scenes(models[0], pattern, out, tile_size=TILE, progress=False)
    again = utils.segment_scenes(models[0], pattern, out, tile_size=TILE, progress=False)
    assert statuses(first) == ["ok"] and statuses(again) == ["skipped"]  # not a_labels.tif


def test_a_rerun_with_a_pattern_of_items_that_finds_the_sidecars_skips_them(
        tmp_path, models, scenes):
    # a sidecar is a STAC Item too: read as a scene, it failed the whole batch
    (tmp_path / "data" / "items").mkdir(parents=True)
    shutil.copy(scenes[0], tmp_path / "data" / "a.tif")
    (tmp_path / "data" / "items" / "a.json").write_text(json.dumps(stac_item("a", "../a.tif")))
    pattern, out = str(tmp_path / "data" / "**" / "*.json"), tmp_path / "data" / "labels"
    first = utils.segment_scenes(models[0], pattern, out, tile_size=TILE, progress=False)
    again = utils.segment_scenes(models[0], pattern, out, tile_size=TILE, progress=False)
    assert statuses(first) == ["ok"] and statuses(again) == ["skipped"]


def test_numpy_tile_sizes_are_plain_ints_in_the_outputs(tmp_path, models, scenes):
    # check_tiling took an np.int64, which then failed the sidecar's JSON
    done = utils.segment_scenes(models[0], scenes[:1], tmp_path, tile_size=np.int64(TILE),
                                batch_size=np.int64(2), progress=False)
    assert statuses(done) == ["ok"]


def test_a_rerun_runs_only_the_failed_scenes_again(tmp_path, models, scenes, monkeypatch):
    utils.segment_scenes(models[0], scenes, tmp_path, tile_size=TILE, progress=False)
    ran = []
    segment_scene = aerialkd.scene_tasks.segment_scene
    monkeypatch.setattr(aerialkd.scene_tasks, "segment_scene",
                        lambda model, src, *args, **kwargs: ran.append(src) or
                        segment_scene(model, src, *args, **kwargs))
    again = utils.segment_scenes(models[0], scenes, tmp_path, tile_size=TILE,
                                 progress=False)
    assert statuses(again) == ["skipped"] * 3 + ["failed"]
    assert ran == [str(scenes[3])]


def test_another_model_file_or_parameter_redoes_finished_scenes(tmp_path, models, scenes):
    utils.segment_scenes(models[0], scenes[:3], tmp_path / "out", tile_size=TILE,
                         progress=False)
    copy = shutil.copy(models[0], tmp_path / "same_bytes.keras")  # same hash: same key
    assert statuses(utils.segment_scenes(copy, scenes[:3], tmp_path / "out",
                                         tile_size=TILE, progress=False)) == ["skipped"] * 3
    other = utils.segment_scenes(models[1], scenes[:3], tmp_path / "out", tile_size=TILE,
                                 progress=False)
    assert statuses(other) == ["ok"] * 3
    expected = keras.saving.load_model(models[1])
    utils.segment_scene(expected, scenes[0], tmp_path / "expected.tif", tile_size=TILE)
    np.testing.assert_array_equal(read_labels(other[0]["labels"]),
                                  read_labels(tmp_path / "expected.tif"))
    assert statuses(utils.segment_scenes(models[1], scenes[:3], tmp_path / "out",
                                         tile_size=TILE, overlap=0,
                                         progress=False)) == ["ok"] * 3


def test_a_touched_source_or_overwrite_redoes_a_scene(tmp_path, models, scenes):
    sources = [shutil.copy(scene, tmp_path) for scene in scenes[:2]]
    utils.segment_scenes(models[0], sources, tmp_path / "out", tile_size=TILE,
                         progress=False)
    pathlib.Path(sources[1]).touch()  # a new modification time: a new key
    touched = utils.segment_scenes(models[0], sources, tmp_path / "out", tile_size=TILE,
                                   progress=False)
    assert statuses(touched) == ["skipped", "ok"]
    assert statuses(utils.segment_scenes(models[0], sources, tmp_path / "out",
                                         tile_size=TILE, overwrite=True,
                                         progress=False)) == ["ok", "ok"]


def test_a_scene_keeps_the_name_an_earlier_batch_gave_it(tmp_path, models, scenes):
    for year, scene in (("2023", scenes[0]), ("2024", scenes[1])):
        (tmp_path / year).mkdir()
        shutil.copy(scene, tmp_path / year / "a.tif")
    out = tmp_path / "out"
    utils.segment_scenes(models[0], tmp_path / "2023" / "a.tif", out, tile_size=TILE,
                         progress=False)  # alone in its batch: "a"
    records = utils.segment_scenes(models[0], str(tmp_path / "*" / "a.tif"), out,
                                   tile_size=TILE, progress=False)  # "2023_a" in this one
    assert statuses(records) == ["skipped", "ok"]  # found, not labelled twice
    assert [pathlib.Path(r["labels"]).name for r in records] == [
        "a_labels.tif", "2024_a_labels.tif"]
    assert sorted(p.name for p in out.glob("*.tif")) == ["2024_a_labels.tif", "a_labels.tif"]


def test_a_scene_of_the_same_name_from_another_folder_is_refused_unless_overwrite(
        tmp_path, models, scenes):
    # 2023/a.tif and 2024/a.tif: one output name, the same size and time, other pixels.
    with rasterio.open(scenes[0]) as src:
        pixels, transform = src.read(), src.transform
    for year, flip in (("2023", False), ("2024", True)):
        (tmp_path / year).mkdir()
        write_raster(tmp_path / year / "a.tif", pixels[:, ::-1] if flip else pixels,
                     transform)
        os.utime(tmp_path / year / "a.tif", ns=(1_700_000_000 * 10**9,) * 2)
    utils.segment_scenes(models[0], str(tmp_path / "2023" / "*.tif"), tmp_path / "out",
                         tile_size=TILE, progress=False)
    labels_2023 = read_labels(tmp_path / "out" / "a_labels.tif")
    with pytest.raises(ValueError, match=re.escape(
            f"{tmp_path / 'out' / 'a_labels.json'} records the scene "
            f"{(tmp_path / '2023' / 'a.tif').resolve()}, not "
            f"{(tmp_path / '2024' / 'a.tif').resolve()}: both would be a_labels.tif")):
        utils.segment_scenes(models[0], str(tmp_path / "2024" / "*.tif"), tmp_path / "out",
                             tile_size=TILE, progress=False)
    np.testing.assert_array_equal(read_labels(tmp_path / "out" / "a_labels.tif"), labels_2023)
    (record,) = utils.segment_scenes(models[0], str(tmp_path / "2024" / "*.tif"),
                                     tmp_path / "out", tile_size=TILE, overwrite=True,
                                     progress=False)
    assert record["status"] == "ok"
    utils.segment_scene(keras.saving.load_model(models[0]), tmp_path / "2024" / "a.tif",
                        tmp_path / "expected.tif", tile_size=TILE)
    np.testing.assert_array_equal(read_labels(record["labels"]),
                                  read_labels(tmp_path / "expected.tif"))


# -- before anything runs ---------------------------------------------------


def test_a_folder_of_scenes_with_other_classes_is_refused_before_anything_runs(
        tmp_path, models, scenes):
    out = tmp_path / "out"
    utils.segment_scenes(models[0], scenes[:1], out, tile_size=TILE, progress=False)
    before = sorted(p.name for p in out.iterdir())
    renamed = [f"other {i}" for i in range(6)]
    with pytest.raises(ValueError, match=r"The finished scene scene_0_labels.tif and this batch "
                                         r"in .* name their classes differently "
                                         r"\(\['class 0'.* and \['other 0'"):
        utils.segment_scenes(models[0], scenes[1:2], out, tile_size=TILE, class_names=renamed,
                             progress=False)
    assert sorted(p.name for p in out.iterdir()) == before
    recoloured = aerialkd.classes.generic_classes(6)[1][::-1]  # the same names, other colours
    with pytest.raises(ValueError, match=r"scene_0_labels.tif and this batch in .* colour "
                                         r"their classes differently \(label 0: .{6} and "
                                         r".{6}, label 1: "):
        utils.segment_scenes(models[0], scenes[1:2], out, tile_size=TILE, palette=recoloured,
                             progress=False)
    assert sorted(p.name for p in out.iterdir()) == before
    records = utils.segment_scenes(models[0], scenes[:1], out, tile_size=TILE,
                                   class_names=renamed, overwrite=True, progress=False)
    assert statuses(records) == ["ok"]  # the folder's own scene, relabelled on purpose


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
        segment(models[0], [stac_item("tile-1", str(scene)) for scene in scenes[:2]], tmp_path)
    two_data = stac_item("s2", "b02.tif", key="B02")
    two_data["assets"]["B03"] = {"href": "b03.tif", "roles": ["data"]}
    with pytest.raises(ValueError, match="'s2' has 2 assets with the role 'data'"):
        segment(models[0], [two_data], tmp_path)
    with pytest.raises(ValueError, match="is at https://example.com/a.tif, not a local file"):
        segment(models[0], [stac_item("remote", "https://example.com/a.tif")], tmp_path)
    no_href = stac_item("bare", "a.tif")
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
    for palette in (np.full((6, 3), 300), np.full((6, 3), 0.5)):  # uint8 would wrap, or zero
        with pytest.raises(ValueError, match="palette must be 8-bit colours, whole numbers"):
            segment(models[0], scenes, tmp_path, palette=palette)
    with pytest.raises(ValueError, match="class_names must name the 6 classes"):
        segment(models[0], scenes, tmp_path, class_names=["a", "b"])
    inputs = keras.Input((None, None, 3))
    keras.Model(inputs, keras.layers.Conv2D(256, 1)(inputs)).save(tmp_path / "wide.keras")
    with pytest.raises(ValueError, match="wide.keras has 256 output classes; a label "
                                         "raster holds at most 255"):
        segment(tmp_path / "wide.keras", scenes, tmp_path)


# -- a missing scene --------------------------------------------------------


def test_a_missing_scene_fails_and_the_others_go_on(tmp_path, models, scenes):
    records = utils.segment_scenes(models[0], [tmp_path / "gone.tif", scenes[0]], tmp_path,
                                   tile_size=TILE, progress=False)
    assert statuses(records) == ["failed", "ok"]
    assert records[0]["error"].startswith("FileNotFoundError: ")


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


def test_segment_script_refuses_an_output_that_is_no_output_before_any_work(
        tmp_path, models, scenes, segment_script, capsys):
    model, scene = str(models[0]), str(scenes[0])
    (tmp_path / "a.jpg").write_bytes(b"")
    for output, message in ((str(tmp_path / "a.jpg"), "a.jpg is a file, and the last "
                             "argument is the output"),  # shell-expanded *.jpg, no output
                            (str(tmp_path / "labels.png"), "labels.png names an image")):
        with pytest.raises(SystemExit, match=message):
            segment_script.main([model, scene, output])
    assert not (tmp_path / "labels.png").exists()  # was made a folder of outputs
    with pytest.raises(SystemExit):
        segment_script.main([model, scene, str(tmp_path / "out"), "--workers", "0"])
    assert "--workers: must be a whole number of at least 1, got '0'" in capsys.readouterr().err
    (tmp_path / "a.geojson").write_text("{}")
    with pytest.raises(SystemExit, match="a.geojson exists; not overwriting it"):
        segment_script.main([model, scene, str(tmp_path / "a.tif"), "--polygons",
                             "--tile-size", str(TILE), "--quiet"])
    assert (tmp_path / "a.geojson").read_text() == "{}" and not (tmp_path / "a.tif").exists()
    odd = pathlib.Path(shutil.copy(scene, tmp_path / "ortho[2023].tif"))  # a file, no pattern
    segment_script.main([model, str(odd), str(tmp_path / "b.tif"), "--tile-size", str(TILE),
                         "--quiet"])
    assert (tmp_path / "b.tif").exists()
