"""Tests of `aerialkd.metrics`: IoU, precision and recall, calibration, error overlap."""

import keras
import numpy as np
import pytest
from scipy.special import softmax
from sklearn import metrics

import utils


def _logits_for(labels, confidence=5.0):
    return np.eye(6)[labels] * confidence


def test_segmentation_metrics_on_hand_counted_pixels():
    y_true = np.array([[0, 0, 1, 1], [2, 2, 5, utils.IGNORE_INDEX]])
    y_pred = np.array([[0, 1, 1, 1], [2, 0, 5, 3]])
    res = utils.segmentation_metrics(y_true, _logits_for(y_pred),
                                     labelled_classes=utils.LABELLED_CLASSES)
    # Building: TP 1, FP 1 (a Road pixel), FN 1 -> 1/3. Land: TP 2, FP 1 -> 2/3.
    # Road: TP 1, FN 1 -> 1/2. Vegetation and Water: absent -> NaN. Unlabeled: 1.
    iou = res["per_class_iou"]
    assert iou[:3] == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert np.isnan(iou[3]) and np.isnan(iou[4]) and iou[5] == 1.0
    assert res["miou5"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert res["miou6"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2 + 1) / 4)
    assert res["pixel_acc"] == pytest.approx(5 / 7)  # the ignored pixel is out
    assert res["confusion_matrix"].sum() == 7


def test_iou_scores_match_scikit_learn_and_the_full_metrics():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 6, (2, 16, 16))
    y_true[0, :4] = utils.IGNORE_INDEX
    logits = rng.normal(size=(2, 16, 16, 6)) + np.eye(6)[np.minimum(y_true, 5)]
    y_pred = logits.argmax(-1)
    scores = utils.iou_scores(y_true, y_pred, n_classes=6,
                              labelled_classes=utils.LABELLED_CLASSES)
    valid = y_true != utils.IGNORE_INDEX
    np.testing.assert_array_equal(scores["confusion_matrix"], metrics.confusion_matrix(
        y_true[valid], y_pred[valid], labels=list(range(6))))
    full = utils.segmentation_metrics(y_true, logits, labelled_classes=utils.LABELLED_CLASSES)
    assert {k: full[k] for k in ("miou5", "miou6", "pixel_acc", "per_class_iou")} == {
        k: scores[k] for k in ("miou5", "miou6", "pixel_acc", "per_class_iou")}
    with pytest.raises(ValueError, match=r"y_true holds labels outside \[0, 6\) on annotated "
                                         r"pixels: \[7\]"):
        utils.iou_scores(np.array([0, 7]), np.array([0, 1]), n_classes=6)
    with pytest.raises(ValueError, match=r"y_true holds .*\[-1\]"):  # another ignore convention
        utils.iou_scores(np.array([0, -1, 1]), np.array([0, 1, 1]), n_classes=6)
    with pytest.raises(ValueError, match=r"y_pred holds .*\[255\] \(255 is allowed in y_true "
                                         r"alone"):  # it said labels must be in [0, 6) or 255
        utils.iou_scores(np.array([0, 1]), np.array([0, 255]), n_classes=6)


def test_scores_follow_the_class_count_and_the_labelled_classes():
    y_true = np.array([0, 1, 2, 2, utils.IGNORE_INDEX])
    y_pred = np.array([0, 1, 1, 2, 0])
    scores = utils.iou_scores(y_true, y_pred, n_classes=3, labelled_classes=(1, 2))
    # IoU: class 0 1/1, class 1 1/2, class 2 1/2.
    assert scores["miou3"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert scores["miou2"] == pytest.approx(0.5)
    res = utils.segmentation_metrics(y_true, np.eye(3)[np.minimum(y_pred, 2)] * 5,
                                     class_names=("a", "b", "c"), labelled_classes=(1, 2))
    assert res["miou2"] == scores["miou2"] and "a" in res["report"]
    with pytest.raises(ValueError, match=r"labelled_classes must be .* \[0, 3\)"):
        utils.iou_scores(y_true, y_pred, n_classes=3,  # the Dubai classes name class 4
                         labelled_classes=utils.LABELLED_CLASSES)


def test_iou_scores_average_every_class_unless_told_the_labelled_ones():
    y_true = np.array([0, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 2])
    scores = utils.iou_scores(y_true, y_pred, n_classes=3)
    # IoU: class 0 1/1, class 1 1/2, class 2 1/2; one mean, over all three.
    assert [k for k in scores if k.startswith("miou")] == ["miou3"]
    assert scores["miou3"] == pytest.approx(2 / 3)


def test_precision_recall_agree_with_scikit_learn():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 6, (3, 10, 10))
    logits = rng.normal(size=(3, 10, 10, 6)) + 2 * np.eye(6)[y_true]
    res = utils.segmentation_metrics(y_true, logits)
    y_pred = logits.argmax(-1).ravel()
    p, r, f, _ = metrics.precision_recall_fscore_support(
        y_true.ravel(), y_pred, labels=range(6), zero_division=0)
    assert res["precision"] == pytest.approx(p.tolist())
    assert res["recall"] == pytest.approx(r.tolist())
    assert res["f1"] == pytest.approx(f.tolist())


def test_pr_curves_come_from_probabilities_not_hard_labels():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 6, (2, 16, 16))
    logits = rng.normal(size=(2, 16, 16, 6)) + 1.5 * np.eye(6)[y_true]
    res = utils.segmentation_metrics(y_true, logits, class_names=utils.CLASSES)
    probs = softmax(logits.reshape(-1, 6), axis=-1)
    expected = metrics.average_precision_score(y_true.ravel() == 2, probs[:, 2])
    assert res["average_precision"][2] == pytest.approx(expected)
    precision, recall = res["pr_curves"]["Road"]
    assert len(precision) > 3  # a curve, not the 3 points of hard labels


def test_average_precision_tells_apart_logits_that_saturate_float32():
    # Class 0 leads by 25 on the positive pixel and by 18 on the negative one:
    # both round to probability 1.0 in float32, a tie that would give AP 0.5.
    # In float64 the positive ranks first: AP 1.0.
    logits = np.zeros((1, 1, 2, 6))
    logits[0, 0, :, 0] = [25.0, 18.0]
    assert (softmax(logits.astype(np.float32), axis=-1)[..., 0] == 1.0).all()
    res = utils.segmentation_metrics(np.array([[[0, 1]]]), logits.astype(np.float32))
    assert res["average_precision"][0] == 1.0


def test_pr_curve_pixel_sample_is_bounded():
    rng = np.random.default_rng(2)
    y_true = rng.integers(0, 6, (1, 40, 40))
    res = utils.segmentation_metrics(y_true, rng.normal(size=(1, 40, 40, 6)),
                                     max_pr_pixels=500)
    assert all(len(p) <= 501 for p, _ in res["pr_curves"].values())


def test_the_training_metric_equals_the_evaluation_iou():
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 6, (2, 8, 8))
    y_true[0, 0] = utils.IGNORE_INDEX
    logits = rng.normal(size=(2, 8, 8, 6)).astype("float32")
    inputs = keras.Input((8, 8, 6))
    model = utils.compile_segmentation(keras.Model(inputs, keras.layers.Identity()(inputs)),
                                       labelled_classes=utils.LABELLED_CLASSES)
    scores = model.evaluate(logits, y_true, verbose=0, return_dict=True)
    assert scores["miou5"] == pytest.approx(
        utils.iou_scores(y_true, logits.argmax(-1), n_classes=6,
                         labelled_classes=utils.LABELLED_CLASSES)["miou5"], abs=1e-6)


def test_training_metrics_ignore_unannotated_pixels():
    inputs = keras.Input((16, 16, 3))
    logits = keras.layers.Conv2D(6, 1, kernel_initializer="zeros", bias_initializer=
                                 keras.initializers.Constant([5.0, 0, 0, 0, 0, 0]))(inputs)
    model = utils.compile_segmentation(keras.Model(inputs, logits),  # always Building
                                       labelled_classes=utils.LABELLED_CLASSES)
    y = np.zeros((2, 16, 16), np.uint8)
    y[:, :4] = utils.IGNORE_INDEX  # a quarter unannotated
    scores = model.evaluate(np.zeros((2, 16, 16, 3)), y, verbose=0, return_dict=True)
    assert scores["pixel_acc"] == pytest.approx(1.0)  # not 0.75
    assert scores["miou5"] == pytest.approx(1.0)


def test_calibration_on_hand_computed_pixels():
    probs = np.array([[0.85, 0.15], [0.65, 0.35], [0.95, 0.05], [0.25, 0.75], [0.5, 0.5]])
    y_true = np.array([0, 1, 0, 1, utils.IGNORE_INDEX])  # the last pixel is left out
    t1, t2 = utils.calibration(np.log(probs), y_true, temperatures=(1, 2), n_bins=10)
    # T = 1: confidences 0.85, 0.65, 0.95, 0.75 fall in four bins; right, wrong, right, right.
    assert t1["accuracy"] == pytest.approx(0.75)
    assert t1["confidence"] == pytest.approx(0.8)
    assert t1["ece"] == pytest.approx((0.15 + 0.65 + 0.05 + 0.25) / 4)
    assert t1["nll"] == pytest.approx(-np.mean(np.log([0.85, 0.35, 0.95, 0.75])))
    kept = probs[:4]
    assert t1["entropy"] == pytest.approx(-np.mean(np.sum(kept * np.log(kept), -1)))
    # T = 2 takes square roots of the probabilities before normalising.
    soft = np.sqrt(kept) / np.sqrt(kept).sum(-1, keepdims=True)
    assert t2["nll"] == pytest.approx(-np.mean(np.log(soft[np.arange(4), y_true[:4]])))
    assert t2["accuracy"] == t1["accuracy"] and t2["confidence"] < t1["confidence"]
    # 5 bins: [0.6, 0.8) holds 0.65 (wrong) and 0.75 (right), [0.8, 1] 0.85 and 0.95 (right)
    (five,) = utils.calibration(np.log(probs), y_true, n_bins=5)
    assert five["ece"] == pytest.approx((2 * abs(0.5 - 0.7) + 2 * abs(1 - 0.9)) / 4)


def test_calibration_finds_the_temperature_the_labels_were_drawn_at():
    rng = np.random.default_rng(0)
    logits = 3 * rng.normal(size=(100_000, 6))
    probs = softmax(logits / 2, axis=-1)
    y_true = (probs.cumsum(-1) < rng.uniform(size=(len(probs), 1))).sum(-1)
    rows = utils.calibration(logits, y_true, temperatures=(1, 1.5, 2, 3, 4))
    assert min(rows, key=lambda row: row["nll"])["temperature"] == 2
    assert min(rows, key=lambda row: row["ece"])["temperature"] == 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperatures=(1, 0)), "temperatures must all be > 0"),
    (dict(temperatures=()), "temperatures must all be > 0"),
    (dict(n_bins=0), "n_bins must be >= 1"),
])
def test_calibration_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        utils.calibration(np.zeros((4, 6)), np.zeros(4, int), **kwargs)


def test_calibration_rejects_logits_of_other_pixels_and_unannotated_labels():
    with pytest.raises(ValueError, match="don't match 5 labels"):
        utils.calibration(np.zeros((4, 6)), np.zeros(5, int))
    with pytest.raises(ValueError, match="no annotated pixels"):
        utils.calibration(np.zeros((4, 6)), np.full(4, utils.IGNORE_INDEX))
    (row,) = utils.calibration(np.zeros((4, 6)), np.zeros(4, int), temperatures=np.array([2.0]))
    assert row["confidence"] == pytest.approx(1 / 6)


def test_error_overlap_counts_annotated_pixels():
    y_true = np.array([0, 1, 2, 3, utils.IGNORE_INDEX])
    a = np.array([0, 1, 0, 0, 0])
    b = np.array([0, 0, 2, 0, 0])
    shares = utils.error_overlap(y_true, a, b)
    assert shares == {"both_right": 0.25, "only_a_right": 0.25,
                      "only_b_right": 0.25, "both_wrong": 0.25}
    by_class = utils.error_overlap(y_true, a, b, by_class=True,
                                   class_names=utils.CLASSES)["by_class"]
    assert list(by_class) == ["Building", "Land", "Road", "Vegetation"]  # the classes present
    assert by_class["Land"]["only_a_right"] == 1 and by_class["Road"]["only_b_right"] == 1
    assert by_class["Vegetation"]["both_wrong"] == 1 and by_class["Building"]["both_right"] == 1
    with pytest.raises(ValueError, match="the same shape"):
        utils.error_overlap(y_true, a.reshape(1, 5), b)
    with pytest.raises(ValueError, match="no annotated pixels"):
        utils.error_overlap(np.full(5, utils.IGNORE_INDEX), a, b)


def test_error_overlap_names_the_classes_generically_unless_given_names():
    y_true = np.array([0, 2, 2])
    a, b = np.array([0, 2, 0]), np.array([1, 2, 2])
    by_class = utils.error_overlap(y_true, a, b, by_class=True)["by_class"]
    assert by_class == {
        "class 0": {"both_right": 0.0, "only_a_right": 1.0, "only_b_right": 0.0, "both_wrong": 0.0},
        "class 2": {"both_right": 0.5, "only_a_right": 0.0, "only_b_right": 0.5, "both_wrong": 0.0}}


def test_iou_scores_refuse_labels_without_an_annotated_pixel():
    y_true = np.full((1, 4, 4), utils.IGNORE_INDEX, np.uint8)
    with pytest.raises(ValueError, match="no annotated pixel"):
        utils.segmentation_metrics(y_true, np.zeros((1, 4, 4, 6), "float32"))


def test_a_mean_over_absent_classes_is_nan_without_a_warning(recwarn):
    y_true = np.full((1, 2, 2), 5)  # only the unlabelled class: none of the five is present
    scores = utils.iou_scores(y_true, y_true, n_classes=6,
                              labelled_classes=utils.LABELLED_CLASSES)
    assert np.isnan(scores["miou5"]) and scores["miou6"] == 1.0 and scores["pixel_acc"] == 1.0
    assert not recwarn.list


def test_iou_scores_compare_shapes_not_sizes():
    y_true = np.array([[0, 1, 2], [0, 1, 2]])
    with pytest.raises(ValueError, match=r"the same shape, got \(2, 3\) and \(3, 2\)"):
        utils.iou_scores(y_true, y_true.T, n_classes=3)
    assert utils.iou_scores(y_true[..., None], y_true, n_classes=3)["pixel_acc"] == 1.0


def test_pixel_accuracy_weighs_each_image_by_its_sample_weight():
    # (N,) weights lined up with the last axis (W): 0.5 here, or a shape error where N != W
    labels = np.zeros((2, 4, 3), "int32")
    logits = np.zeros((2, 4, 3, 2), "float32")
    logits[0, ..., 0] = 1  # the first image right, the second wrong
    metric = utils.AnnotatedPixelAccuracy()
    metric.update_state(labels, logits, sample_weight=np.array([1.0, 0.0]))
    assert float(metric.result()) == 1.0


def test_metrics_name_nan_logits_and_samples_of_no_pixel():
    labels, logits = np.array([0, 1, 1]), np.zeros((3, 2))
    logits[1, 0] = np.nan
    with pytest.raises(ValueError, match="logits hold 1 values that are NaN or infinite"):
        utils.segmentation_metrics(labels, logits)  # was scikit-learn's "Input contains NaN"
    with pytest.raises(ValueError, match="max_pr_pixels must be an int >= 1, got 0"):
        utils.segmentation_metrics(labels, np.zeros((3, 2)), max_pr_pixels=0)  # NaN APs
    with pytest.raises(ValueError, match="max_pixels must be an int >= 1, got 0"):
        utils.calibration(np.zeros((3, 2)), labels, max_pixels=0)  # "no annotated pixels"
    with pytest.raises(ValueError, match="y_true holds class 2, and class_names names 2"):
        utils.error_overlap(np.array([0, 1, 2]), np.array([0, 1, 2]), np.array([0, 1, 1]),
                            by_class=True, class_names=["a", "b"])  # class 2 was left out
