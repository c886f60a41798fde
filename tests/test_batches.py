"""Tests of `aerialkd.batches`: patch batches in memory or streamed, random and consistent crops."""

import numpy as np
import pytest

import utils
from helpers import load_flat, write_flat


def test_patch_sequence_reshuffles_every_epoch(tiny_data):
    seq = utils.PatchSequence(tiny_data.x_train, tiny_data.y_train, 8)

    def epoch():
        return np.concatenate([seq[i][1] for i in range(len(seq))])

    first = epoch()
    seq.on_epoch_end()
    assert len(seq) == -(-len(tiny_data.x_train) // 8)
    second = epoch()
    assert not np.array_equal(first, second)
    every = sorted(y.tobytes() for y in tiny_data.y_train)  # each patch once an epoch
    assert sorted(y.tobytes() for y in first) == sorted(y.tobytes() for y in second) == every


def test_patch_sequence_can_drop_the_last_partial_batch():
    x, y = np.zeros((10, 4, 4, 3), "uint8"), np.zeros((10, 4, 4), "uint8")
    sequence = utils.PatchSequence(x, y, batch_size=4, drop_remainder=True)
    assert len(sequence) == 2
    assert all(len(sequence[i][0]) == 4 for i in range(len(sequence)))


def test_patch_sequence_refuses_teacher_logits_of_other_patches(tiny_data):
    x, y = tiny_data.x_val[:2], tiny_data.y_val[:2]
    logits = np.zeros((*y.shape, 6), "float32")
    with pytest.raises(ValueError, match="teacher_logits must be"):
        utils.PatchSequence(x, y, teacher_logits=logits[:1])
    with pytest.raises(ValueError, match=r"y must hold the labels \(N, P, P\) of the "
                                         r"patches x \(2, 32, 32, 3\), got shape \(2, 16, 16\)"):
        utils.PatchSequence(x, y[:, :16, :16])  # was accepted


def test_stream_yields_the_patches_of_the_in_memory_path(tmp_path):
    write_flat(tmp_path, n=4, size=(32, 48))  # 6 patches per image
    data = load_flat(tmp_path)
    streamed = load_flat(tmp_path, in_memory=False)
    assert streamed.x_train is None and streamed.patch_count("train") == 24
    stream = streamed.stream("train", batch_size=5, shuffle=False, cache_size=2)
    assert len(stream) == 5 and stream.num_patches == 24  # ceil(24 / 5)
    x, y = (np.concatenate(a) for a in zip(*(stream[i] for i in range(len(stream)))))
    assert x.dtype == np.uint8 and y.dtype == np.uint8
    np.testing.assert_array_equal(x, data.x_train)
    np.testing.assert_array_equal(y, data.y_train)
    assert len(stream._cache) <= 2  # the decoded images it keeps
    with pytest.raises(IndexError):
        stream[5]


def test_shuffled_stream_yields_every_patch_once_per_epoch_in_a_new_order(tmp_path):
    write_flat(tmp_path, n=4, size=(32, 48))
    data = load_flat(tmp_path, in_memory=False)
    stream = data.stream("train", batch_size=24, cache_size=2, seed=3)  # shuffled: train
    first = stream[0][1]
    stream.on_epoch_end()
    second = stream[0][1]
    assert not np.array_equal(first, second)
    key = lambda y: sorted(p.tobytes() for p in y)  # noqa: E731
    assert key(first) == key(second) == key(load_flat(tmp_path).y_train)
    stream.set_epoch(0)
    np.testing.assert_array_equal(stream[0][1], first)


def test_stream_trains_evaluates_and_feeds_a_distiller_running_its_teacher(tmp_path):
    import keras

    root = utils.make_custom_dataset(tmp_path, n_images=3, size=(64, 48))
    data = utils.load_dataset(root, 16, classes=root / "classes.json", resize_masks=True,
                              in_memory=False, val_fraction=0.34, test_fraction=0)
    keras.utils.set_random_seed(0)
    student = utils.build_unet(2, n_classes=data.n_classes, name="s")
    student.compile(optimizer="adam", loss=utils.SegmentationLoss(n_classes=data.n_classes))
    train = data.stream("train", batch_size=8)
    history = student.fit(train, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert np.isfinite(student.evaluate(data.stream("val", 8), verbose=0))
    teacher = utils.build_unet(2, n_classes=data.n_classes, name="t")
    distiller = utils.Distiller(teacher=teacher, student=student)
    distiller.compile(optimizer="adam", loss=utils.SegmentationLoss(n_classes=data.n_classes))
    history = distiller.fit(train, epochs=1, verbose=0)
    assert history.history["distillation_loss"][0] > 0


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


@pytest.mark.parametrize("argument", [dict(seed=None), dict(seed=-1), dict(patch_size=0)])
def test_every_sequence_names_a_seed_or_patch_size_that_draws_nothing(tiny_data, argument):
    # seed None was "object of type 'NoneType' has no len()"; patch_size 0 gave empty crops
    images, labels = tiny_data.whole_images("train")
    name = next(iter(argument))
    makers = [lambda **a: utils.RandomCropSequence(images, labels, **{"patch_size": 32, **a},
                                                   n_patches=4),
              lambda **a: utils.ConsistentCropSequence(images, labels, **{"patch_size": 32, **a},
                                                       n_patches=4)]
    if name == "seed":
        makers += [lambda **a: utils.PatchSequence(tiny_data.x_train, tiny_data.y_train, 4, **a),
                   lambda **a: utils.PatchStream(tiny_data.files["train"], 32, 4, **a)]
    for make in makers:
        with pytest.raises(ValueError, match=f"^{name} must be an int >= "):
            make(**argument)


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


def test_scaled_and_turned_consistent_crops_keep_each_pixel_with_its_label():
    # Blocks of 16 pixels, each labelled 0..5 and coloured 40 * label in red: in a
    # crop, wherever the labels around a pixel agree (away from the blended block
    # edges), its red must be 40 * its label. A flip of one side only, or labels
    # sampled a pixel off, breaks that by 40 or more.
    rng = np.random.default_rng(0)
    images, labels = [], []
    for height, width in ((96, 128), (128, 96)):
        grid = rng.integers(0, 6, (height // 16, width // 16)).astype(np.uint8)
        label = np.kron(grid, np.ones((16, 16), np.uint8))
        images.append(np.stack([label * 40, 255 - label * 40, np.full_like(label, 7)], -1))
        labels.append(label)
    sequence = utils.ConsistentCropSequence(images, labels, 32, 64, batch_size=8, seed=1,
                                            scale=(0.5, 2.0), symmetry=True, mix=None)
    assert set(sequence.crops[:, 4]) == set(range(8)) and len(set(sequence.crops[:, 3])) > 10
    checked = 0
    for index in range(len(sequence)):
        for x, y in zip(*sequence[index]):
            window = np.lib.stride_tricks.sliding_window_view(y, (5, 5))
            interior = window.max(axis=(2, 3)) == window.min(axis=(2, 3))
            inner_x, inner_y = x[2:-2, 2:-2, 0], y[2:-2, 2:-2]
            np.testing.assert_array_equal(inner_x[interior], 40 * inner_y[interior])
            checked += interior.sum()
    assert checked > 64 * 28 * 28 / 2


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
    # Colour 10 (label 1) at weight w and colour 200 (label 2) at 1 - w blend to
    # 200 - 190 * w, rounded: label 1 (w >= 0.5) gives at most 104 unless w is within
    # 0.5 / 190 of 0.5, where the rounded colour is 105 whichever label won.
    checked = 0
    for index in range(len(sequence)):
        x, y = sequence[index]
        for x_i, y_i in zip(x, y):
            assert len(np.unique(y_i)) == 1  # one image's labels, never a blend
            colour = int(x_i[0, 0, 0])  # w * own + (1 - w) * other
            if colour != 105:
                assert (y_i[0, 0] == 1) == (colour < 105)
                checked += 1
    assert checked >= 56  # of 64 crops; 105 holds about 1 in 190


def test_consistent_crops_reject_bad_arguments(tiny_data):
    images, labels = tiny_data.whole_images("train")
    with pytest.raises(ValueError, match="mix must be one of"):
        utils.ConsistentCropSequence(images, labels, 32, 8, mix="blend")
    for scale in ((2.0, 0.5), 2.0):  # a number: "object of type 'float' has no len()"
        with pytest.raises(ValueError, match="scale must be"):
            utils.ConsistentCropSequence(images, labels, 32, 8, scale=scale)
    with pytest.raises(ValueError, match=r"scale=\(0.01, 0.01\) would crop windows of no "
                                         r"pixel from patches of 32"):  # an IndexError later
        utils.ConsistentCropSequence(images, labels, 32, 8, scale=(0.01, 0.01))
    with pytest.raises(ValueError, match="mix_probability"):
        utils.ConsistentCropSequence(images, labels, 32, 8, mix_probability=1.5)
