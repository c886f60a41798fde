"""Tests of `aerialkd.evaluation`: a model scored on patches, classes taken from its outputs."""

import keras
import numpy as np
import pytest
from sklearn import metrics

import utils


def test_evaluate_segmentation_names_and_averages_the_classes_it_is_given(tiny_data, small_unet):
    res = utils.evaluate_segmentation(small_unet, tiny_data.x_test[:4], tiny_data.y_test[:4],
                                      class_names=tiny_data.classes,
                                      labelled_classes=tiny_data.labelled_classes)
    assert res["confusion_matrix"].shape == (6, 6)
    assert "Vegetation" in res["report"]
    y = tiny_data.y_test[:4].ravel()
    y_pred = utils.predict_logits(small_unet, tiny_data.x_test[:4]).argmax(-1).ravel()
    annotated = y != utils.IGNORE_INDEX
    assert res["miou5"] == pytest.approx(metrics.jaccard_score(
        y[annotated], y_pred[annotated], labels=tiny_data.labelled_classes, average="macro",
        zero_division=0))
    assert res["confusion_matrix"].sum() == annotated.sum()


@pytest.mark.parametrize("n_classes", [3, 5])
def test_evaluate_segmentation_scores_every_class_of_the_model_without_class_arguments(
        n_classes):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(n_classes, 1)(
        keras.layers.Rescaling(1 / 255)(inputs)))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    y = rng.integers(0, n_classes, (2, 16, 16)).astype(np.uint8)
    res = utils.evaluate_segmentation(model, x, y)
    assert [k for k in res if k.startswith("miou")] == [f"miou{n_classes}"]
    y_pred = utils.predict_logits(model, x).argmax(-1)
    assert res[f"miou{n_classes}"] == pytest.approx(metrics.jaccard_score(
        y.ravel(), y_pred.ravel(), labels=range(n_classes), average="macro"))
    assert res["class_names"] == [f"class {i}" for i in range(n_classes)]
    assert res["confusion_matrix"].shape == (n_classes, n_classes)
