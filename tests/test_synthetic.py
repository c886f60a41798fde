"""Tests of `aerialkd.synthetic`: the tiny dataset CI trains on and a dataset of your own."""

import numpy as np
from PIL import Image

import utils
from helpers import OWN_PALETTE


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


def test_tiny_dataset_cuts_into_9_images_of_3_tiles_of_patches(tiny_data):
    # 3 tiles of 150x136, 200x170, 136x200 at 32 px: 4x4, 6x5, 4x6 patches.
    n = len(tiny_data.x_train) + len(tiny_data.x_val) + len(tiny_data.x_test)
    assert n == 9 * (16 + 30 + 24)


def test_tiny_dataset_is_deterministic(tmp_path):
    a = utils.make_tiny_dataset(tmp_path / "a", tile_sizes=((64, 48),), images_per_tile=2)
    b = utils.make_tiny_dataset(tmp_path / "b", tile_sizes=((64, 48),), images_per_tile=2)
    assert len(utils.find_pairs(a)) == len(utils.find_pairs(b)) == 2
    for (_, ia, ma), (_, ib, mb) in zip(utils.find_pairs(a), utils.find_pairs(b)):
        assert ia.read_bytes() == ib.read_bytes() and ma.read_bytes() == mb.read_bytes()


def test_custom_dataset_is_flat_with_its_palette_half_scale_masks_and_upper_case(tmp_path):
    root = utils.make_custom_dataset(tmp_path, n_images=2, size=(64, 48))
    assert sorted(p.name for p in (root / "images").iterdir()) == ["scene_001.JPG",
                                                                  "scene_002.JPG"]
    with Image.open(root / "masks" / "scene_001.PNG") as mask:
        assert mask.size == (32, 24)
    data = utils.load_dataset(root, 16, classes=root / "classes.json", resize_masks=True,
                              val_fraction=0, test_fraction=0)
    assert data.classes == ("Field", "Forest", "Water") and data.resized_masks == 2
    np.testing.assert_array_equal(data.palette, OWN_PALETTE)
    assert set(np.unique(data.y_train)) <= {0, 1, 2}
