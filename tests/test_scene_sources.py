"""Tests of `aerialkd.scene_sources`: the scenes of globs, list files and STAC Items, named."""

import json
import pathlib
import re
import shutil

import pytest

import aerialkd
import utils
from helpers import TILE, stac_item, statuses

pytest.importorskip("rasterio")

# One xdist worker runs all the test_scene_*.py modules: their shared fixtures
# (tests/conftest.py, a Dask run among them) run once.
pytestmark = pytest.mark.xdist_group("scene_batch")


def test_segment_scenes_reads_globs_list_files_and_stac_items(tmp_path, models, scenes):
    folder = tmp_path / "in"
    shutil.copytree(scenes[0].parent, folder)
    (folder / "list.txt").write_text("# two scenes\nscene_0.tif\n\nscene_1.tif  # north\n")
    (folder / "item.json").write_text(json.dumps(stac_item("tile-7", "./scene_2.tif",
                                                           key="visual")))
    collection = {"type": "FeatureCollection",
                  "features": [stac_item("tile-8", str(folder / "scene_0.tif"), key="B04")]}
    (folder / "items.json").write_text(json.dumps(collection))
    records = utils.segment_scenes(
        models[0], [folder / "list.txt", str(folder / "scene_1*.tif"),
                    folder / "item.json", folder / "items.json",
                    stac_item("tile-9", str(folder / "scene_2.tif"), key="B08")],
        tmp_path / "out", tile_size=TILE, progress=False)
    # scene_1 twice (the list and the glob), scene_2 by two Items: each path once.
    assert [r["source"] for r in records] == [str(folder / f"scene_{i}.tif")
                                             for i in (0, 1, 2)]
    assert statuses(records) == ["ok"] * 3
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


def test_two_files_whose_names_clean_to_one_are_refused_naming_both(tmp_path, scenes):
    for name in ("a b.tif", "a_b.tif"):
        shutil.copy(scenes[0], tmp_path / name)
    with pytest.raises(ValueError, match=r"a b.tif and .*a_b.tif would all write "
                                         r"a_b\S*_labels.tif \(names that are the same once"):
        aerialkd.scene_sources.find_scenes(str(tmp_path / "*.tif"))


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
