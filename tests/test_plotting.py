"""Tests of section 6 of utils.py: plots."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402

import utils  # noqa: E402


def test_segmentation_panel_has_a_column_per_model_and_saves(tmp_path):
    images = np.zeros((2, 16, 16, 3), np.uint8)
    labels = np.zeros((2, 16, 16), np.uint8)
    fig = utils.plot_segmentations(images, labels, {"Teacher": labels, "Student": labels},
                                   path=tmp_path / "p" / "seg.png")
    assert len(fig.axes) == 2 * 4
    assert [a.get_title() for a in fig.axes[:4]] == ["Image", "Ground truth", "Teacher", "Student"]
    assert (tmp_path / "p" / "seg.png").stat().st_size > 0
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == list(utils.CLASSES)


def test_history_pr_and_confusion_plots_return_figures():
    history = {"loss": [2, 1], "val_loss": [2.5, 1.5]}
    fig = utils.plot_history({"teacher": history}, keys=("loss",))
    assert len(fig.axes[0].lines) == 2
    res = utils.segmentation_metrics(np.array([[0, 1, 2, 3, 4, 5]]),
                                     np.eye(6)[[[0, 1, 2, 3, 4, 5]]] + 0.1)
    assert len(utils.plot_pr_curves({"m": res}).axes) == 6
    fig = utils.plot_confusion_matrix(res["confusion_matrix"], "m")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts.count("1.00") == 6  # normalised rows
