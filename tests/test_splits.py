"""Tests of `aerialkd.splits`: which image goes to which split, through `load_dataset`."""

import numpy as np
import pytest

import utils
from aerialkd.splits import SPLITS
from helpers import block_labels, load_flat, write_flat, write_pair


def test_split_never_shares_a_source_image(tiny_data):
    sets = [set(tiny_data.sources[s]) for s in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert all(n.endswith(utils.TEST_PARTS) for n in sets[2])
    assert len(sets[2]) == 3 * 2 and len(sets[1]) == 3  # 2 test, 1 val per tile


def test_split_is_deterministic_for_a_seed(tiny_root):
    a = utils.load_dataset(tiny_root, 32, seed=1)
    b = utils.load_dataset(tiny_root, 32, seed=1)
    others = [utils.load_dataset(tiny_root, 32, seed=s).sources["val"] for s in (2, 3, 4)]
    assert a.sources == b.sources and np.array_equal(a.y_val, b.y_val)
    assert any(o != a.sources["val"] for o in others)


def test_fraction_split_is_seeded_and_never_shares_a_source_image(tmp_path):
    write_flat(tmp_path, n=20, size=(16, 16))
    a = load_flat(tmp_path, val_fraction=0.2, test_fraction=0.25, seed=1)
    assert (len(a.sources["train"]), len(a.sources["val"]), len(a.sources["test"])) == (11, 4, 5)
    sets = [set(a.sources[s]) for s in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set.union(*sets) == {f"a{i}" for i in range(20)}
    assert load_flat(tmp_path, val_fraction=0.2, test_fraction=0.25, seed=1).sources == a.sources
    assert load_flat(tmp_path, val_fraction=0.2, test_fraction=0.25, seed=2).sources != a.sources


def test_test_images_named_by_stem_go_to_test(tmp_path):
    write_flat(tmp_path, n=6, size=(16, 16))
    data = load_flat(tmp_path, test_images=["a4", "a1"], val_fraction=0.2)
    assert data.sources["test"] == ["a1", "a4"] and len(data.sources["val"]) == 1
    with pytest.raises(ValueError, match=r"test_images names \['a9'\]"):
        load_flat(tmp_path, test_images=["a9"])


def test_images_cut_from_one_scene_stay_in_one_split(tmp_path, tiny_root):
    for scene in range(5):
        for tile in range(4):
            write_pair(tmp_path, f"s{scene}_r{tile // 2}_c{tile % 2}",
                       block_labels(16, 16, seed=4 * scene + tile))
    data = load_flat(tmp_path, group=r"^(s\d+)_", val_fraction=0.2, test_fraction=0.2)
    scenes = {split: {n.split("_")[0] for n in data.sources[split]} for split in SPLITS}
    assert [len(scenes[s]) for s in SPLITS] == [3, 1, 1]  # fractions of the 5 scenes
    assert [len(data.sources[s]) for s in SPLITS] == [12, 4, 4]  # whole scenes
    alone = load_flat(tmp_path, val_fraction=0.2, test_fraction=0.2)  # every image a scene
    assert len(alone.sources["test"]) == 4 and len(
        {n.split("_")[0] for n in alone.sources["test"]}) > 1
    named = load_flat(tmp_path, group=r"^s\d+", test_images=["s2_r1_c0"])
    assert named.sources["test"] == ["s2_r0_c0", "s2_r0_c1", "s2_r1_c0", "s2_r1_c1"]
    with pytest.raises(ValueError, match=r"group '\^t' finds no scene in the stems"):
        load_flat(tmp_path, group="^t")
    with pytest.raises(ValueError, match="group must be a regular expression"):
        load_flat(tmp_path, group="(")
    with pytest.raises(ValueError, match="group applies to flat layouts"):
        utils.load_dataset(tiny_root, 32, group="^image")


def test_tile_and_flat_split_arguments_are_not_mixed(tmp_path, tiny_root):
    write_flat(tmp_path, n=3, size=(16, 16))
    with pytest.raises(ValueError, match=r"flat layout.*\['val_per_tile'\]"):
        load_flat(tmp_path, val_per_tile=1)
    with pytest.raises(ValueError, match=r"Kaggle tile layout.*\['test_fraction'\]"):
        utils.load_dataset(tiny_root, 32, test_fraction=0.2)
    with pytest.raises(ValueError, match="leave none for training"):
        load_flat(tmp_path, val_fraction=0.5, test_fraction=0.5)


def test_a_tile_split_that_names_no_image_or_leaves_no_training_is_refused(tiny_root):
    with pytest.raises(ValueError, match=r"test_parts names \['image_part_008.jpg'\]"):
        utils.load_dataset(tiny_root, 32, test_parts=["image_part_008.jpg"])
    one = utils.load_dataset(tiny_root, 32, test_parts="image_part_009",
                             val_per_tile=np.int64(0))  # numpy integers too
    assert all(n.endswith("/image_part_009") for n in one.sources["test"])  # not a substring
    assert len(one.sources["test"]) == 3
    with pytest.raises(ValueError, match="leave none for training"):
        utils.load_dataset(tiny_root, 32, val_per_tile=7)


@pytest.mark.parametrize("seed", [None, -1, 1.5, True])
def test_a_split_seed_that_fixes_nothing_is_refused(tiny_root, seed):
    with pytest.raises(ValueError, match=r"seed must be an int >= 0, got .*\. It fixes .*a split "
                                         r"drawn afresh at each load"):
        utils.load_dataset(tiny_root, patch_size=32, seed=seed)
