"""Tests of section 1 of utils.py on datasets of your own: classes, layouts, splits, streaming."""

import json

import numpy as np
import pytest
from PIL import Image

import utils

CLASSES = {"Field": "#C8B464", "Forest": "#1E7832", "Water": "#1E64C8"}
PALETTE = np.array([[0xC8, 0xB4, 0x64], [0x1E, 0x78, 0x32], [0x1E, 0x64, 0xC8]], np.uint8)


def _labels(height, width, seed):
    """Labels 0..2 in 8x8 blocks, so every 16x16 patch holds several classes."""
    blocks = np.random.default_rng(seed).integers(0, 3, (height // 8, width // 8))
    return np.kron(blocks, np.ones((8, 8), np.int64)).astype(np.uint8)


def _write(root, stem, labels, *, folders=("images", "masks"), image_ext=".jpg",
           mask_ext=".png", mask=None):
    """Writes `stem` as an image (its pixels the labels times 80) and an RGB mask."""
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
    image = np.repeat((labels * 80)[..., None], 3, -1).astype(np.uint8)
    Image.fromarray(image).save(root / folders[0] / f"{stem}{image_ext}")
    mask = utils.labels_to_rgb(labels, PALETTE) if mask is None else mask
    Image.fromarray(mask).save(root / folders[1] / f"{stem}{mask_ext}")


def _flat(root, n=5, size=(32, 48), **kwargs):
    """A flat dataset of `n` images `a0`, `a1`, ...; returns their labels by stem."""
    labels = {f"a{i}": _labels(*size, seed=i) for i in range(n)}
    for stem, lab in labels.items():
        _write(root, stem, lab, **kwargs)
    return labels


def _load(root, **kwargs):
    defaults = {"classes": CLASSES, "val_fraction": 0}
    if "test_images" not in kwargs:
        defaults["test_fraction"] = 0
    kwargs = {**defaults, **kwargs}
    return utils.load_dataset(root, 16, **kwargs)


def test_dict_classes_give_names_palette_and_labels_in_their_order(tmp_path):
    labels = _flat(tmp_path, n=1)
    data = _load(tmp_path)
    assert data.classes == ("Field", "Forest", "Water") and data.n_classes == 3
    np.testing.assert_array_equal(data.palette, PALETTE)
    np.testing.assert_array_equal(data.y_train, utils.cut_patches(labels["a0"], 16))
    assert data.labelled_classes == (0, 1, 2)  # no "Unlabeled" class


def test_classes_json_in_the_supervisely_format_reads_like_the_dict(tmp_path):
    path = tmp_path / "classes.json"
    path.write_text(json.dumps({"classes": [{"title": n, "color": c, "id": i}
                                            for i, (n, c) in enumerate(CLASSES.items())]}))
    names, palette = utils.read_classes(path)
    assert names == tuple(CLASSES)
    np.testing.assert_array_equal(palette, PALETTE)
    path.write_text(json.dumps({"objects": []}))
    with pytest.raises(ValueError, match=r"classes\.json.*Supervisely"):
        utils.read_classes(path)


def test_classes_must_have_one_valid_colour_each():
    with pytest.raises(ValueError, match="'A' and 'B' share the colour #010203"):
        utils.read_classes({"A": "#010203", "B": "#010203"})
    with pytest.raises(ValueError, match="class 'A' has colour 'red'"):
        utils.read_classes({"A": "red"})


def test_no_classes_are_the_dubai_classes_scored_without_unlabeled(tiny_data):
    assert tiny_data.classes == utils.CLASSES and tiny_data.n_classes == 6
    np.testing.assert_array_equal(tiny_data.palette, utils.PALETTE)
    assert tiny_data.labelled_classes == (0, 1, 2, 3, 4)
    assert tiny_data.ignore_colors == ("#000000",) and tiny_data.resized_masks == 0


def test_labelled_classes_leave_out_the_class_named_unlabeled(tmp_path):
    _flat(tmp_path, n=1)
    classes = {**CLASSES, "unlabeled": "#9B9B9B"}
    assert _load(tmp_path, classes=classes).labelled_classes == (0, 1, 2)
    assert _load(tmp_path, classes=classes, unlabeled=None).labelled_classes == (0, 1, 2, 3)
    assert _load(tmp_path, classes=classes, unlabeled="Water").labelled_classes == (0, 1, 3)


def test_ignore_colors_become_ignore_index(tmp_path):
    labels = _labels(16, 16, seed=0)
    mask = utils.labels_to_rgb(labels, PALETTE)
    mask[0, :5] = [255, 0, 255]
    mask[1, :3] = 0  # black: ignored by default, like the Dubai masks' unannotated pixels
    _write(tmp_path, "a", labels, mask=mask)
    data = _load(tmp_path, ignore_colors=("#FF00FF", "#000000"))
    expected = labels.copy()
    expected[0, :5] = expected[1, :3] = utils.IGNORE_INDEX
    np.testing.assert_array_equal(data.y_train[0], expected)
    assert data.extra_color_sources == {"#000000": {"a": 3}, "#FF00FF": {"a": 5}}


def test_unknown_colour_is_an_error_naming_the_file_and_the_colour(tmp_path):
    labels = _labels(16, 16, seed=0)
    mask = utils.labels_to_rgb(labels, PALETTE)
    mask[0, :5] = [255, 0, 255]
    _write(tmp_path, "a", labels, mask=mask)
    with pytest.raises(ValueError, match=r"masks/a\.png: colours outside the classes.*#FF00FF"):
        _load(tmp_path)


def test_a_class_colour_listed_in_ignore_colors_is_refused(tmp_path):
    _flat(tmp_path, n=1)
    with pytest.raises(ValueError, match="ignore_colors lists #1E64C8, the colour of class 2"):
        _load(tmp_path, ignore_colors=("#1E64C8",))


@pytest.mark.parametrize("folders", [("images", "masks"), ("image", "mask")])
def test_flat_layouts_pair_images_and_masks_by_stem(tmp_path, folders):
    labels = _flat(tmp_path, n=3, folders=folders)
    pairs = utils.find_pairs(tmp_path)
    assert [name for name, _, _ in pairs] == ["a0", "a1", "a2"]
    assert all(i.parent.name == folders[0] and m.parent.name == folders[1] for _, i, m in pairs)
    data = _load(tmp_path)
    expected = np.concatenate([utils.cut_patches(labels[s], 16) for s in ("a0", "a1", "a2")])
    np.testing.assert_array_equal(data.y_train, expected)


def test_any_case_of_extension_is_read(tmp_path):
    for i, (image_ext, mask_ext) in enumerate([(".JPG", ".PNG"), (".tif", ".TIFF"),
                                               (".jpeg", ".png"), (".PNG", ".tif")]):
        _write(tmp_path, f"a{i}", _labels(16, 16, i), image_ext=image_ext, mask_ext=mask_ext)
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    assert [name for name, _, _ in utils.find_pairs(tmp_path)] == ["a0", "a1", "a2", "a3"]
    assert len(_load(tmp_path).y_train) == 4


def test_an_image_without_a_mask_is_an_error_naming_it(tmp_path):
    _flat(tmp_path, n=2)
    (tmp_path / "masks" / "a1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"images/a1\.jpg has no mask"):
        utils.find_pairs(tmp_path)


def test_a_mask_without_an_image_is_an_error_naming_it(tmp_path):
    _flat(tmp_path, n=2)
    (tmp_path / "images" / "a0.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"masks/a0\.png has no image"):
        utils.find_pairs(tmp_path)


def test_a_mask_of_another_size_is_an_error_naming_the_files_and_both_sizes(tmp_path):
    labels = _labels(32, 48, seed=0)
    _write(tmp_path, "a", labels, mask=utils.labels_to_rgb(labels[:16, :24], PALETTE))
    with pytest.raises(ValueError, match=r"images/a\.jpg is 48x32 but its mask .*masks/a\.png "
                                         r"is 24x16.*resize_masks=True"):
        _load(tmp_path)


def test_resize_masks_samples_nearest_neighbours_and_counts_them(tmp_path, capsys):
    small = _labels(16, 24, seed=3)
    small[0, 0], small[0, 1] = 0, 2  # neighbours whose blend would be a new colour
    _write(tmp_path, "a", np.kron(small, np.ones((2, 2), np.uint8)),
           mask=utils.labels_to_rgb(small, PALETTE))  # the mask at half scale
    _write(tmp_path, "b", _labels(32, 48, seed=4))
    data = _load(tmp_path, resize_masks=True)
    assert data.resized_masks == 1
    assert "rescaled 1 of 2 masks" in capsys.readouterr().out
    # each mask pixel becomes a 2x2 block: no colour between two classes appears
    np.testing.assert_array_equal(data.y_train[:6], utils.cut_patches(
        np.kron(small, np.ones((2, 2), np.uint8)), 16))


def test_fraction_split_is_seeded_and_never_shares_a_source_image(tmp_path):
    _flat(tmp_path, n=20, size=(16, 16))
    a = _load(tmp_path, val_fraction=0.2, test_fraction=0.25, seed=1)
    assert (len(a.sources["train"]), len(a.sources["val"]), len(a.sources["test"])) == (11, 4, 5)
    sets = [set(a.sources[s]) for s in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set.union(*sets) == {f"a{i}" for i in range(20)}
    assert _load(tmp_path, val_fraction=0.2, test_fraction=0.25, seed=1).sources == a.sources
    assert _load(tmp_path, val_fraction=0.2, test_fraction=0.25, seed=2).sources != a.sources


def test_test_images_named_by_stem_go_to_test(tmp_path):
    _flat(tmp_path, n=6, size=(16, 16))
    data = _load(tmp_path, test_images=["a4", "a1"], val_fraction=0.2)
    assert data.sources["test"] == ["a1", "a4"] and len(data.sources["val"]) == 1
    with pytest.raises(ValueError, match=r"test_images names \['a9'\]"):
        _load(tmp_path, test_images=["a9"])


def test_tile_and_flat_split_arguments_are_not_mixed(tmp_path, tiny_root):
    _flat(tmp_path, n=3, size=(16, 16))
    with pytest.raises(ValueError, match=r"flat layout.*\['val_per_tile'\]"):
        _load(tmp_path, val_per_tile=1)
    with pytest.raises(ValueError, match=r"Kaggle tile layout.*\['test_fraction'\]"):
        utils.load_dataset(tiny_root, 32, test_fraction=0.2)
    with pytest.raises(ValueError, match="leave none for training"):
        _load(tmp_path, val_fraction=0.5, test_fraction=0.5)


def test_stream_yields_the_patches_of_the_in_memory_path(tmp_path):
    _flat(tmp_path, n=4, size=(32, 48))  # 6 patches per image
    data = _load(tmp_path)
    streamed = _load(tmp_path, in_memory=False)
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
    _flat(tmp_path, n=4, size=(32, 48))
    data = _load(tmp_path, in_memory=False)
    stream = data.stream("train", batch_size=24, cache_size=2, seed=3)  # shuffled: train
    first = stream[0][1]
    stream.on_epoch_end()
    second = stream[0][1]
    assert not np.array_equal(first, second)
    key = lambda y: sorted(p.tobytes() for p in y)  # noqa: E731
    assert key(first) == key(second) == key(_load(tmp_path).y_train)
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


def test_custom_dataset_is_flat_with_its_palette_half_scale_masks_and_upper_case(tmp_path):
    root = utils.make_custom_dataset(tmp_path, n_images=2, size=(64, 48))
    assert sorted(p.name for p in (root / "images").iterdir()) == ["scene_001.JPG",
                                                                  "scene_002.JPG"]
    with Image.open(root / "masks" / "scene_001.PNG") as mask:
        assert mask.size == (32, 24)
    data = utils.load_dataset(root, 16, classes=root / "classes.json", resize_masks=True,
                              val_fraction=0, test_fraction=0)
    assert data.classes == ("Field", "Forest", "Water") and data.resized_masks == 2
    np.testing.assert_array_equal(data.palette, PALETTE)
    assert set(np.unique(data.y_train)) <= {0, 1, 2}


def test_labels_to_rgb_and_class_shares_take_a_palette_and_class_count():
    labels = np.array([[0, 2, 2, utils.IGNORE_INDEX]])
    assert utils.labels_to_rgb(labels, PALETTE)[0].tolist() == [
        [200, 180, 100], [30, 100, 200], [30, 100, 200], [0, 0, 0]]
    np.testing.assert_allclose(utils.class_shares(labels, n_classes=3), [1 / 3, 0, 2 / 3])


def test_segmentation_panel_draws_the_data_s_own_classes_and_colours():
    import matplotlib

    matplotlib.use("Agg")
    labels = np.array([[[0, 2]]], np.uint8)
    fig = utils.plot_segmentations(np.zeros((1, 1, 2, 3), np.uint8), labels, {},
                                   class_names=tuple(CLASSES), palette=PALETTE)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(CLASSES)
    assert fig.axes[1].images[0].get_array()[0].tolist() == [[200, 180, 100], [30, 100, 200]]


def test_deprecated_extra_colors_still_load_and_reread_the_same_labels(tiny_root):
    with pytest.warns(DeprecationWarning, match="extra_colors is deprecated"):
        data = utils.load_dataset(tiny_root, 32, extra_colors={"#000000": 5})
    assert data.ignore_colors == () and utils.IGNORE_INDEX not in data.y_train
    images, labels = data.whole_images("train")
    np.testing.assert_array_equal(utils.cut_patches(labels[0], 32),
                                  data.y_train[: len(utils.cut_patches(labels[0], 32))])


def test_fit_segmentation_points_a_streamed_dataset_to_model_fit(tmp_path):
    root = utils.make_custom_dataset(tmp_path / "data", n_images=6, size=(64, 64))
    data = utils.load_dataset(root, patch_size=32, classes=root / "classes.json",
                              resize_masks=True, in_memory=False)
    model = utils.compile_segmentation(utils.build_unet(2, n_classes=data.n_classes),
                                       labelled_classes=data.labelled_classes)
    with pytest.raises(ValueError, match=r"streamed .*model\.fit\(data\.stream\('train'\)"):
        utils.fit_segmentation(model, data, epochs=1, output_dir=tmp_path, name="m")
