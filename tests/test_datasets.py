"""Tests of `aerialkd.datasets`: `load_dataset` and `SegmentationDataset`, split by source image."""

import dataclasses
import re

import numpy as np
import pytest

import utils
from helpers import (OWN_CLASSES, OWN_PALETTE, block_labels, load_flat, write_flat,
                     write_pair)


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


def test_patch_count_and_summary_count_the_patches_held_after_a_cut(tiny_data):
    full = tiny_data.patch_count("train")
    cut = dataclasses.replace(tiny_data, x_train=tiny_data.x_train[:24],
                              y_train=tiny_data.y_train[:24])
    assert full > 24 and cut.patch_count("train") == 24  # counted the files' 420
    assert "train    24 patches" in cut.summary()
