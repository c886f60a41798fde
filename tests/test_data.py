"""Tests of section 1 of utils.py: data."""

import numpy as np
import pytest
from PIL import Image

import utils


def test_palette_maps_every_class_colour_to_its_index():
    mask = utils.PALETTE[None, :, :]  # one row, one pixel per class
    labels = utils.mask_to_labels(mask)
    assert labels.tolist() == [[0, 1, 2, 3, 4, 5]]


def test_palette_is_the_masks_not_classes_json():
    assert utils.rgb_to_hex(utils.PALETTE[0]) == "#3C1098"  # Building
    assert utils.rgb_to_hex(utils.PALETTE[4]) == "#E2A929"  # Water


def test_black_is_ignored_by_default_and_configurable():
    mask = np.zeros((1, 2, 3), np.uint8)
    mask[0, 1] = utils.PALETTE[2]
    assert utils.mask_to_labels(mask).tolist() == [[utils.IGNORE_INDEX, 2]]
    assert utils.mask_to_labels(mask, {"#000000": 5}).tolist() == [[5, 2]]
    with pytest.raises(ValueError, match="#000000"):
        utils.mask_to_labels(mask, extra_colors={})


def test_off_palette_colour_raises_naming_file_and_colour():
    mask = np.full((2, 2, 3), 7, np.uint8)
    with pytest.raises(ValueError, match=r"Tile 9/masks/x\.png.*#070707.*4"):
        utils.mask_to_labels(mask, source="Tile 9/masks/x.png")


def test_labels_to_rgb_inverts_mask_to_labels():
    labels = np.array([[0, 1, 2], [3, 4, 5]])
    assert np.array_equal(utils.mask_to_labels(utils.labels_to_rgb(labels)), labels)


def test_cut_patches_crops_to_multiples_and_keeps_order():
    array = np.arange(70 * 100).reshape(70, 100)
    patches = utils.cut_patches(array, 32)
    assert patches.shape == (2 * 3, 32, 32)
    assert np.array_equal(patches[1], array[:32, 32:64])  # rows first
    assert np.array_equal(patches[3], array[32:64, :32])


def test_tiny_dataset_has_the_kaggle_layout(tiny_root):
    assert tiny_root.name == utils.DATASET_DIRNAME
    pairs = utils.find_pairs(tiny_root.parent)
    assert len(pairs) == 27
    assert pairs[0][0] == "Tile 1/image_part_001"
    assert pairs[0][1].suffix == ".jpg" and pairs[0][2].suffix == ".png"


def test_tiny_dataset_round_trips_through_the_loader(tmp_path):
    root = utils.make_tiny_dataset(tmp_path, tile_sizes=((80, 70), (50, 100)),
                                   images_per_tile=2)
    data = utils.load_dataset(root, 32, test_parts=(), val_per_tile=0)
    expected = np.concatenate([
        utils.cut_patches(utils.mask_to_labels(np.asarray(Image.open(m).convert("RGB"))), 32)
        for _, _, m in utils.find_pairs(root)
    ])
    assert len(expected) == 2 * (2 * 2) + 2 * (3 * 1)
    assert data.x_train.dtype == np.uint8 and data.x_train.shape[1:] == (32, 32, 3)
    assert np.array_equal(data.y_train, expected)
    assert data.extra_color_sources == {"#000000": {"Tile 1/image_part_001": 26}}


def test_tiny_dataset_patch_counts(tiny_data):
    # 3 tiles of 150x136, 200x170, 136x200 at 32 px: 4x4, 6x5, 4x6 patches.
    n = len(tiny_data.x_train) + len(tiny_data.x_val) + len(tiny_data.x_test)
    assert n == 9 * (16 + 30 + 24)


def test_tiny_dataset_is_deterministic(tmp_path):
    a = utils.make_tiny_dataset(tmp_path / "a", tile_sizes=((64, 48),), images_per_tile=2)
    b = utils.make_tiny_dataset(tmp_path / "b", tile_sizes=((64, 48),), images_per_tile=2)
    for (_, ia, ma), (_, ib, mb) in zip(utils.find_pairs(a), utils.find_pairs(b)):
        assert ia.read_bytes() == ib.read_bytes() and ma.read_bytes() == mb.read_bytes()


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


def test_patch_size_must_be_a_multiple_of_16(tiny_root):
    with pytest.raises(ValueError, match="patch_size must be a multiple of 16"):
        utils.load_dataset(tiny_root, patch_size=50)


def test_patch_sequence_reshuffles_every_epoch(tiny_data):
    seq = utils.PatchSequence(tiny_data.x_train, tiny_data.y_train, 8)
    first = seq[0][1].copy()
    seq.on_epoch_end()
    assert len(seq) == -(-len(tiny_data.x_train) // 8)
    assert not np.array_equal(first, seq[0][1])


def test_download_dataset_accepts_a_zip(tiny_root, tmp_path):
    import shutil

    archive = shutil.make_archive(str(tmp_path / "aerial"), "zip", tiny_root.parent)
    root = utils.download_dataset(tmp_path / "unpacked", source=archive)
    assert root.name == utils.DATASET_DIRNAME and len(utils.find_pairs(root)) == 27


def test_importing_utils_touches_no_network():
    import sys

    assert "kagglehub" not in sys.modules
