"""Tests of `aerialkd.classes`: class names and palettes, mask colours to labels and back."""

import json

import numpy as np
import pytest

import utils
from helpers import OWN_CLASSES, OWN_PALETTE


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


@pytest.mark.parametrize("mask, found", [
    (np.zeros((2, 2, 3), np.float32), "float32 values from 0.0 to 0.0"),  # plt.imread's [0, 1]
    (np.full((2, 2, 3), 300, np.uint16), "uint16 values from 300 to 300")])
def test_a_mask_of_other_than_8_bit_colours_is_refused_not_read_as_black(mask, found):
    with pytest.raises(ValueError, match=rf"m\.png: expected 8-bit colours \(0\.\.255\), "
                                         rf"got {found}"):
        utils.mask_to_labels(mask, source="m.png")


def test_labels_to_rgb_inverts_mask_to_labels():
    labels = np.array([[0, 1, 2], [3, 4, 5]])
    assert np.array_equal(utils.mask_to_labels(utils.labels_to_rgb(labels)), labels)


def test_labels_to_rgb_paints_a_palette_of_your_own_and_unannotated_pixels_black():
    labels = np.array([[0, 2, 2, utils.IGNORE_INDEX]])
    assert utils.labels_to_rgb(labels, OWN_PALETTE)[0].tolist() == [
        [200, 180, 100], [30, 100, 200], [30, 100, 200], [0, 0, 0]]


@pytest.mark.parametrize("palette, message", [
    (np.full((2, 3), 300), r"8-bit colours, whole numbers 0 to 255, got int64 values from 300"),
    (np.full((2, 3), 0.5), r"8-bit colours, whole numbers 0 to 255, got float64 values"),
    (np.full((2, 3), -1), r"8-bit colours, whole numbers 0 to 255, got int64 values from -1"),
    (np.zeros((2, 4), int), r"palette must be \(n_classes, 3\) colours, one row a class, "
                            r"got shape \(2, 4\)"),
])
def test_a_palette_uint8_would_wrap_or_truncate_is_refused_everywhere(palette, message):
    from aerialkd.classes import check_palette

    with pytest.raises(ValueError, match=message):
        check_palette(palette)
    with pytest.raises(ValueError, match=message):
        utils.labels_to_rgb(np.zeros((2, 2), int), palette)
    with pytest.raises(ValueError, match=message):
        utils.mask_to_labels(np.zeros((2, 2, 3), np.uint8), palette)


def test_a_palette_of_another_class_count_is_refused_with_the_counts():
    from aerialkd.classes import check_palette

    with pytest.raises(ValueError, match="palette has 2 colours for 3 classes: give one"):
        check_palette(np.zeros((2, 3), int), n_classes=3)
    assert check_palette([[1, 2, 3]], n_classes=1).tolist() == [[1, 2, 3]]


def test_classes_json_in_the_supervisely_format_reads_like_the_dict(tmp_path):
    path = tmp_path / "classes.json"
    path.write_text(json.dumps({"classes": [{"title": n, "color": c, "id": i}
                                            for i, (n, c) in enumerate(OWN_CLASSES.items())]}))
    names, palette = utils.read_classes(path)
    assert names == tuple(OWN_CLASSES)
    np.testing.assert_array_equal(palette, OWN_PALETTE)
    path.write_text(json.dumps({"objects": []}))
    with pytest.raises(ValueError, match=r"classes\.json.*Supervisely"):
        utils.read_classes(path)


def test_classes_must_have_one_valid_colour_each():
    with pytest.raises(ValueError, match="'A' and 'B' share the colour #010203"):
        utils.read_classes({"A": "#010203", "B": "#010203"})
    with pytest.raises(ValueError, match="class 'A' has colour 'red'"):
        utils.read_classes({"A": "red"})


def test_hex_colours_convert_to_rgb_and_back_and_bad_ones_are_named():
    assert utils.hex_to_rgb("#3C1098") == (60, 16, 152)
    assert utils.hex_to_rgb("3c1098") == (60, 16, 152)
    assert utils.rgb_to_hex((60, 16, 152)) == "#3C1098"
    for bad in ("#3C109", "#3C10G8", "red"):
        with pytest.raises(ValueError, match=f"like '#3C1098', got '{bad}'"):
            utils.hex_to_rgb(bad)
