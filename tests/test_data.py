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
    with pytest.raises(ValueError, match="#000000"):
        utils.mask_to_labels(mask, ignore_colors=())


def test_deprecated_extra_colors_still_maps_a_colour_to_a_class():
    mask = np.zeros((1, 2, 3), np.uint8)
    mask[0, 1] = utils.PALETTE[2]
    with pytest.warns(DeprecationWarning, match="ignore_colors"):
        assert utils.mask_to_labels(mask, extra_colors={"#000000": 5}).tolist() == [[5, 2]]
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="#000000"):
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


def _coordinate_images(sizes):
    """Images whose pixels hold (row, column, image index); labels derived from them."""
    images, labels = [], []
    for index, (h, w) in enumerate(sizes):
        r, c = np.mgrid[:h, :w]
        images.append(np.stack([r, c, np.full_like(r, index)], -1).astype(np.uint8))
        labels.append(((r + c) % 6).astype(np.uint8))
    return images, labels


def test_random_crops_are_windows_of_the_images_with_their_labels():
    images, labels = _coordinate_images([(40, 50), (20, 30)])
    sequence = utils.RandomCropSequence(images, labels, 16, n_patches=10, batch_size=4)
    assert len(sequence) == 3
    x, y = (np.concatenate(a) for a in zip(*(sequence[i] for i in range(len(sequence)))))
    assert x.shape == (10, 16, 16, 3) and y.shape == (10, 16, 16)
    rows, cols = x[..., 0].astype(int), x[..., 1].astype(int)
    np.testing.assert_array_equal(np.diff(rows, axis=1), 1)  # consecutive rows and columns
    np.testing.assert_array_equal(np.diff(cols, axis=2), 1)
    np.testing.assert_array_equal(y, (rows + cols) % 6)  # the labels of those pixels


def test_random_crops_depend_on_seed_and_epoch_alone_and_cover_every_position():
    images, labels = _coordinate_images([(40, 50), (20, 30)])
    sequence = utils.RandomCropSequence(images, labels, 16, n_patches=64, batch_size=64, seed=1)
    first = sequence[0][0]
    sequence.set_epoch(5)
    assert not np.array_equal(sequence[0][0], first)
    sequence.set_epoch(0)
    np.testing.assert_array_equal(sequence[0][0], first)
    other = utils.RandomCropSequence(images, labels, 16, n_patches=64, batch_size=64, seed=2)
    assert not np.array_equal(other[0][0], first)
    corners = []
    for epoch in range(30):
        sequence.set_epoch(epoch)
        corners.append(sequence[0][0][:, 0, 0])  # (row, column, image) of each crop's corner
    corners = np.concatenate(corners).astype(int)
    for index, (h, w) in enumerate([(40, 50), (20, 30)]):
        mine = corners[corners[:, 2] == index]
        assert mine[:, 0].min() == 0 and mine[:, 0].max() == h - 16  # top to bottom margin
        assert mine[:, 1].min() == 0 and mine[:, 1].max() == w - 16
    # every position equally likely: image 1 holds 5 x 15 of the 25 x 35 + 75 positions
    assert np.mean(corners[:, 2] == 1) == pytest.approx(75 / 950, abs=0.02)


def test_random_crops_refuse_images_smaller_than_a_crop():
    images, labels = _coordinate_images([(40, 50), (12, 30)])
    with pytest.raises(ValueError, match=r"Image 1 is \(12, 30\), smaller than one 16x16 crop"):
        utils.RandomCropSequence(images, labels, 16, n_patches=4)
    with pytest.raises(ValueError, match="must match pixel for pixel"):
        utils.RandomCropSequence(images[:1], [labels[0][:, :20]], 16, n_patches=4)


def test_whole_images_are_the_patches_before_cutting(tiny_data):
    images, labels = tiny_data.whole_images("train")
    assert len(images) == len(tiny_data.sources["train"])
    p = tiny_data.patch_size
    first = [utils.cut_patches(a, p) for a in (images[0], labels[0])]
    np.testing.assert_array_equal(first[0], tiny_data.x_train[: len(first[0])])
    np.testing.assert_array_equal(first[1], tiny_data.y_train[: len(first[1])])


def test_download_dataset_accepts_a_zip(tiny_root, tmp_path):
    import shutil

    archive = shutil.make_archive(str(tmp_path / "aerial"), "zip", tiny_root.parent)
    root = utils.download_dataset(tmp_path / "unpacked", source=archive)
    assert root.name == utils.DATASET_DIRNAME and len(utils.find_pairs(root)) == 27


def test_importing_utils_touches_no_network():
    import sys

    assert "kagglehub" not in sys.modules


# --- ConsistentCropSequence (issue #27) ---------------------------------------


def _two_flat_scenes():
    """Image 0 is colour 10 with label 1, image 1 colour 200 with label 2."""
    images = [np.full((40, 48, 3), 10, np.uint8), np.full((44, 40, 3), 200, np.uint8)]
    labels = [np.full((40, 48), 1, np.uint8), np.full((44, 40), 2, np.uint8)]
    return images, labels


def test_consistent_crops_are_the_same_for_a_seed_and_epoch(tiny_data):
    images, labels = tiny_data.whole_images("train")
    a = utils.ConsistentCropSequence(images, labels, 32, 12, batch_size=4, seed=3)
    b = utils.ConsistentCropSequence(images, labels, 32, 12, batch_size=4, seed=3)
    b.set_epoch(2)
    b.set_epoch(1)
    a.set_epoch(1)
    for index in range(len(a)):
        for u, v in zip(a[index], b[index]):
            np.testing.assert_array_equal(u, v)
    b.set_epoch(2)
    assert not np.array_equal(a[0][0], b[0][0])


@pytest.mark.parametrize("mix", ["cutmix", "mixup", None])
def test_consistent_crops_keep_labels_in_the_valid_set(tiny_data, mix):
    images, labels = tiny_data.whole_images("train")
    sequence = utils.ConsistentCropSequence(images, labels, 32, 16, batch_size=8,
                                            mix=mix, mix_probability=1.0)
    allowed = set(np.unique(np.concatenate([l.ravel() for l in labels])))
    for index in range(len(sequence)):
        x, y = sequence[index]
        assert x.shape == (8, 32, 32, 3) and x.dtype == np.uint8 and y.shape == (8, 32, 32)
        assert set(np.unique(y)) <= allowed


def test_a_consistent_crop_at_scale_one_without_symmetry_or_mix_is_the_window(tiny_data):
    images, labels = tiny_data.whole_images("train")
    sequence = utils.ConsistentCropSequence(images, labels, 32, 8, batch_size=8,
                                            scale=(1.0, 1.0), symmetry=False, mix=None)
    x, y = sequence[0]
    for k, (i, row, col, side, code) in enumerate(sequence.crops):
        assert (side, code) == (32, 0)
        np.testing.assert_array_equal(x[k], images[i][row : row + 32, col : col + 32])
        np.testing.assert_array_equal(y[k], labels[i][row : row + 32, col : col + 32])


def test_cutmix_pastes_the_other_images_labels_with_its_pixels():
    images, labels = _two_flat_scenes()
    sequence = utils.ConsistentCropSequence(images, labels, 16, 64, batch_size=4,
                                            mix="cutmix", mix_probability=1.0)
    mixed = 0
    for index in range(len(sequence)):
        x, y = sequence[index]
        np.testing.assert_array_equal(x[..., 0] == 200, y == 2)  # labels moved with pixels
        mixed += sum(len(np.unique(y_i)) == 2 for y_i in y)
    assert mixed > 0


def test_mixup_keeps_the_labels_of_the_heavier_image():
    images, labels = _two_flat_scenes()
    sequence = utils.ConsistentCropSequence(images, labels, 16, 64, batch_size=4,
                                            mix="mixup", mix_probability=1.0)
    for index in range(len(sequence)):
        x, y = sequence[index]
        for x_i, y_i in zip(x, y):
            assert len(np.unique(y_i)) == 1  # one image's labels, never a blend
            colour = int(x_i[0, 0, 0])  # w * own + (1 - w) * other
            assert (y_i[0, 0] == 1) == (colour <= 105)  # 105: the 50/50 blend


def test_consistent_crops_reject_bad_arguments(tiny_data):
    images, labels = tiny_data.whole_images("train")
    with pytest.raises(ValueError, match="mix must be one of"):
        utils.ConsistentCropSequence(images, labels, 32, 8, mix="blend")
    with pytest.raises(ValueError, match="scale must be"):
        utils.ConsistentCropSequence(images, labels, 32, 8, scale=(2.0, 0.5))
    with pytest.raises(ValueError, match="mix_probability"):
        utils.ConsistentCropSequence(images, labels, 32, 8, mix_probability=1.5)
