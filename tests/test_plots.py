"""Tests of `aerialkd.plots`: the figures of images and classes."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import utils  # noqa: E402
from helpers import OWN_CLASSES, OWN_PALETTE  # noqa: E402


def test_segmentation_panel_has_a_column_per_model_and_saves(tmp_path):
    images = np.zeros((2, 16, 16, 3), np.uint8)
    labels = np.zeros((2, 16, 16), np.uint8)
    fig = utils.plot_segmentations(images, labels, {"Teacher": labels, "Student": labels},
                                   path=tmp_path / "p" / "seg.png", class_names=utils.CLASSES)
    assert len(fig.axes) == 2 * 4
    assert [a.get_title() for a in fig.axes[:4]] == ["Image", "Ground truth", "Teacher", "Student"]
    assert (tmp_path / "p" / "seg.png").stat().st_size > 0
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == list(utils.CLASSES)


def test_segmentation_panel_draws_the_data_s_own_classes_and_colours():
    labels = np.array([[[0, 2]]], np.uint8)
    fig = utils.plot_segmentations(np.zeros((1, 1, 2, 3), np.uint8), labels, {},
                                   class_names=tuple(OWN_CLASSES), palette=OWN_PALETTE)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(OWN_CLASSES)
    assert fig.axes[1].images[0].get_array()[0].tolist() == [[200, 180, 100], [30, 100, 200]]


def test_pr_and_confusion_plots_return_figures():
    res = utils.segmentation_metrics(np.array([[0, 1, 2, 3, 4, 5]]),
                                     np.eye(6)[[[0, 1, 2, 3, 4, 5]]] + 0.1)
    assert len(utils.plot_pr_curves({"m": res}).axes) == 6
    fig = utils.plot_confusion_matrix(res["confusion_matrix"], "m")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts.count("1.00") == 6  # normalised rows
    fig = utils.plot_confusion_matrix(np.array([[3, 1], [0, 4]]), "m")
    texts = [t.get_text() for t in fig.axes[0].texts]  # row by row: truth down, prediction across
    assert texts == ["0.75", "0.25", "0.00", "1.00"]  # by row (truth), not by column
    with pytest.raises(ValueError, match=r"classes \['class 0', .*none of \['Building'"):
        utils.plot_pr_curves({"m": res}, class_names=utils.CLASSES)


def test_class_shares_are_drawn_for_the_data_s_own_classes(tmp_path):
    root = utils.make_custom_dataset(tmp_path / "data", n_images=6, size=(64, 64))
    data = utils.load_dataset(root, patch_size=32, classes=root / "classes.json",
                              resize_masks=True)
    fig = utils.plot_class_shares(data)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == list(data.classes) and len(labels) == 3
    streamed = utils.load_dataset(root, patch_size=32, classes=root / "classes.json",
                                  resize_masks=True, in_memory=False)
    with pytest.raises(ValueError, match="streamed dataset.*in_memory=True"):
        utils.plot_class_shares(streamed)


def test_confusion_matrix_leaves_a_class_absent_from_the_truth_blank():
    fig = utils.plot_confusion_matrix([[8, 2], [0, 0]], class_names=["Land", "Water"])
    assert [text.get_text() for text in fig.axes[0].texts] == ["0.80", "0.20", "—", "—"]
