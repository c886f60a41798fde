"""Tests of `aerialkd.datasets`: `load_dataset` and `SegmentationDataset`, split by source image."""

import re

import numpy as np
import pytest

import utils
from aerialkd.datasets import SPLITS
from helpers import (OWN_CLASSES, OWN_PALETTE, block_labels, load_flat, write_flat,
                     write_pair)


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


def test_patch_size_must_be_a_multiple_of_16(tiny_root):
    with pytest.raises(ValueError, match="patch_size must be a multiple of 16"):
        utils.load_dataset(tiny_root, patch_size=50)


def test_whole_images_are_the_patches_before_cutting(tiny_data):
    images, labels = tiny_data.whole_images("train")
    assert len(images) == len(tiny_data.sources["train"])
    p = tiny_data.patch_size
    first = [utils.cut_patches(a, p) for a in (images[0], labels[0])]
    np.testing.assert_array_equal(first[0], tiny_data.x_train[: len(first[0])])
    np.testing.assert_array_equal(first[1], tiny_data.y_train[: len(first[1])])


def test_dict_classes_give_names_palette_and_labels_in_their_order(tmp_path):
    labels = write_flat(tmp_path, n=1)
    data = load_flat(tmp_path)
    assert data.classes == ("Field", "Forest", "Water") and data.n_classes == 3
    np.testing.assert_array_equal(data.palette, OWN_PALETTE)
    np.testing.assert_array_equal(data.y_train, utils.cut_patches(labels["a0"], 16))
    assert data.labelled_classes == (0, 1, 2)  # no "Unlabeled" class


def test_no_classes_are_the_dubai_classes_scored_without_unlabeled(tiny_data):
    assert tiny_data.classes == utils.CLASSES and tiny_data.n_classes == 6
    np.testing.assert_array_equal(tiny_data.palette, utils.PALETTE)
    assert tiny_data.labelled_classes == (0, 1, 2, 3, 4)
    assert tiny_data.ignore_colors == ("#000000",) and tiny_data.resized_masks == 0


def test_labelled_classes_leave_out_the_class_named_unlabeled(tmp_path):
    write_flat(tmp_path, n=1)
    classes = {**OWN_CLASSES, "unlabeled": "#9B9B9B"}
    assert load_flat(tmp_path, classes=classes).labelled_classes == (0, 1, 2)
    assert load_flat(tmp_path, classes=classes, unlabeled=None).labelled_classes == (0, 1, 2, 3)
    assert load_flat(tmp_path, classes=classes, unlabeled="Water").labelled_classes == (0, 1, 3)


def test_ignore_colors_become_ignore_index(tmp_path):
    labels = block_labels(16, 16, seed=0)
    mask = utils.labels_to_rgb(labels, OWN_PALETTE)
    mask[0, :5] = [255, 0, 255]
    mask[1, :3] = 0  # black: ignored by default, like the Dubai masks' unannotated pixels
    write_pair(tmp_path, "a", labels, mask=mask)
    data = load_flat(tmp_path, ignore_colors=("#FF00FF", "#000000"))
    expected = labels.copy()
    expected[0, :5] = expected[1, :3] = utils.IGNORE_INDEX
    np.testing.assert_array_equal(data.y_train[0], expected)
    assert data.extra_color_sources == {"#000000": {"a": 3}, "#FF00FF": {"a": 5}}


def test_unknown_colour_is_an_error_naming_the_file_and_the_colour(tmp_path):
    labels = block_labels(16, 16, seed=0)
    mask = utils.labels_to_rgb(labels, OWN_PALETTE)
    mask[0, :5] = [255, 0, 255]
    write_pair(tmp_path, "a", labels, mask=mask)
    with pytest.raises(ValueError, match=r"masks/a\.png: 1 colour outside the classes.*#FF00FF"):
        load_flat(tmp_path)


def test_a_class_colour_listed_in_ignore_colors_is_refused(tmp_path):
    write_flat(tmp_path, n=1)
    with pytest.raises(ValueError, match="ignore_colors lists #1E64C8, the colour of class 2"):
        load_flat(tmp_path, ignore_colors=("#1E64C8",))


def test_deprecated_extra_colors_still_load_and_reread_the_same_labels(tiny_root):
    with pytest.warns(DeprecationWarning, match="extra_colors is deprecated"):
        data = utils.load_dataset(tiny_root, 32, extra_colors={"#000000": 5})
    assert data.ignore_colors == () and utils.IGNORE_INDEX not in data.y_train
    images, labels = data.whole_images("train")
    np.testing.assert_array_equal(utils.cut_patches(labels[0], 32),
                                  data.y_train[: len(utils.cut_patches(labels[0], 32))])


def test_class_shares_are_shares_of_the_annotated_pixels_of_each_of_n_classes():
    labels = np.array([[0, 2, 2, utils.IGNORE_INDEX]])
    np.testing.assert_allclose(utils.class_shares(labels, n_classes=3), [1 / 3, 0, 2 / 3])


def test_dataset_overview_counts_each_tiles_images_and_patches(tiny_data):
    rows = utils.dataset_overview(tiny_data)
    assert [row["tile"] for row in rows] == sorted({name.split("/")[0] for split in
                                                    tiny_data.sources.values() for name in split})
    for split in ("train", "val", "test"):
        assert sum(row[split] for row in rows) == len(tiny_data.sources[split])
    assert sum(row["patches"] for row in rows) == (
        len(tiny_data.x_train) + len(tiny_data.x_val) + len(tiny_data.x_test))
    assert all(re.fullmatch(r"\d+x\d+(, \d+x\d+)*", row["sizes"]) for row in rows)
