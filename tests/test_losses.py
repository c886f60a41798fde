"""Tests of `aerialkd.losses`: the segmentation loss and the knowledge-distillation losses."""

import keras
import numpy as np
import pytest

import utils
from helpers import random_logits


def _softmax(z, axis):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _kl(p, q, axis):
    return (p * (np.log(p) - np.log(q))).sum(axis)


SHAPE = (2, 3, 5, 4)  # N, H, W, C all differ


def test_pixel_kd_matches_a_hand_computation():
    t, s, T = random_logits(SHAPE, 1), random_logits(SHAPE, 2), 3.0
    expected = _kl(_softmax(t / T, -1), _softmax(s / T, -1), -1).mean() * T**2
    got = float(utils.distillation_loss(t, s, temperature=T))
    assert got == pytest.approx(expected, rel=1e-5)


def test_channel_kd_matches_a_hand_computation():
    t, s, T = random_logits(SHAPE, 1), random_logits(SHAPE, 2), 2.0
    n, h, w, c = SHAPE
    expected = 0.0
    for i in range(n):
        for k in range(c):
            p = _softmax(t[i, :, :, k].ravel() / T, 0)
            q = _softmax(s[i, :, :, k].ravel() / T, 0)
            expected += _kl(p, q, 0)
    expected = expected / (n * c) * T**2
    got = float(utils.distillation_loss(t, s, temperature=T, kind="channel"))
    assert got == pytest.approx(expected, rel=1e-5)


def test_kd_is_zero_for_identical_logits_and_positive_otherwise():
    t = random_logits(SHAPE)
    assert float(utils.distillation_loss(t, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(utils.distillation_loss(t, t[..., ::-1])) > 0.1


def test_keras_logits_distillation_agrees_only_with_a_kl_instance():
    t, s, T = random_logits(SHAPE, 1), random_logits(SHAPE, 2), 4.0
    ours = float(utils.distillation_loss(t, s, T))
    right = keras.distillation.LogitsDistillation(T, loss=keras.losses.KLDivergence())
    trap = keras.distillation.LogitsDistillation(T)  # loss="kl_divergence"
    assert float(right.compute_loss(t, s)) == pytest.approx(ours, rel=1e-4)
    assert float(trap.compute_loss(t, s)) != pytest.approx(ours, rel=0.1)


@pytest.mark.parametrize("bad", [0.0, -1.0, np.float32(0.0), True])
def test_kd_rejects_non_positive_temperature(bad):
    with pytest.raises(ValueError, match="temperature must be a number > 0"):
        utils.distillation_loss(random_logits(SHAPE), random_logits(SHAPE), bad)


def test_kd_takes_numpy_numbers_as_temperature():
    t, s = random_logits(SHAPE, 1), random_logits(SHAPE, 2)
    ours = float(utils.distillation_loss(t, s, 2.0))
    assert float(utils.distillation_loss(t, s, np.float32(2.0))) == pytest.approx(ours)
    assert float(utils.distillation_loss(t, s, np.int64(2))) == pytest.approx(ours)


def test_kd_teaches_on_unannotated_pixels_and_the_label_loss_does_not():
    # Where the annotators painted nothing, the teacher's prediction is the only
    # target: the KD term has a gradient there, the label loss none.
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        pytest.skip("uses tf.GradientTape")
    labels = np.zeros((1, 2, 2), np.int64)
    labels[0, 0, 0] = utils.IGNORE_INDEX
    teacher = tf.constant(random_logits((1, 2, 2, 6), seed=1))
    student = tf.Variable(random_logits((1, 2, 2, 6), seed=2))
    with tf.GradientTape(persistent=True) as tape:
        kd = utils.distillation_loss(teacher, student, temperature=2.0)
        label_loss = utils.SegmentationLoss()(labels, student)
    assert np.abs(tape.gradient(kd, student).numpy()[0, 0, 0]).sum() > 1e-3
    np.testing.assert_allclose(tape.gradient(label_loss, student).numpy()[0, 0, 0], 0,
                               atol=1e-7)


def _segmentation_loss_by_hand(labels, logits, weights):
    """Weighted cross-entropy over annotated pixels plus the weighted mean Dice loss of the classes."""
    n_classes = logits.shape[-1]
    valid = labels != utils.IGNORE_INDEX
    onehot = np.eye(n_classes)[np.where(valid, labels, 0)] * valid[..., None]
    probs = _softmax(logits, -1)
    ce = -(onehot * np.log(probs)).sum(-1)
    ce = (ce * (onehot * weights).sum(-1)).sum() / valid.sum()
    p = (probs * valid[..., None]).reshape(-1, n_classes)
    o = onehot.reshape(-1, n_classes)
    dice = 1 - 2 * (o * p).sum(0) / (o.sum(0) + p.sum(0))
    return ce + (dice * weights).sum() / weights.sum()


def test_segmentation_loss_matches_a_hand_computation():
    logits = random_logits((2, 3, 4, 6), 3)
    labels = np.random.default_rng(4).integers(0, 6, (2, 3, 4))
    labels[0, 0, :2] = utils.IGNORE_INDEX
    weights = np.array([1.0, 0.5, 2.0, 1.0, 1.0, 3.0])
    expected = _segmentation_loss_by_hand(labels, logits, weights)
    loss = utils.SegmentationLoss(class_weights=weights)
    assert float(loss(labels, logits)) == pytest.approx(expected, rel=1e-4)


def test_segmentation_loss_takes_the_class_count_from_the_logits():
    logits = random_logits((2, 3, 4, 3), 7)
    labels = np.random.default_rng(8).integers(0, 3, (2, 3, 4))
    labels[1, 2, :3] = utils.IGNORE_INDEX
    loss = utils.SegmentationLoss()  # no n_classes: three, from the logits
    assert float(loss(labels, logits)) == pytest.approx(
        _segmentation_loss_by_hand(labels, logits, np.ones(3)), rel=1e-4)


def test_keras_dice_default_is_one_global_score_not_a_class_mean():
    # The trap our loss avoids by passing axis=0 on (pixels, classes).
    y = np.eye(3)[[0, 0, 0, 1]]
    p = np.array([[1, 0, 0]] * 4, dtype="float32")
    global_dice = float(keras.losses.dice(y, p))
    per_class = keras.ops.convert_to_numpy(keras.losses.dice(y, p, axis=0))
    assert global_dice == pytest.approx(1 - 6 / 8)
    assert per_class[0] == pytest.approx(1 - 6 / 7) and per_class[1] == pytest.approx(1.0)


def test_focal_loss_is_keras_focal_loss_where_keras_does_not_clip():
    logits = random_logits((2, 8, 8, 6), 5)
    labels = np.random.default_rng(6).integers(0, 6, (2, 8, 8))
    keras_focal = keras.losses.categorical_focal_crossentropy(
        np.eye(6)[labels], logits, alpha=1.0, gamma=2.0, from_logits=True)
    ours = utils.SegmentationLoss("focal", dice_weight=0)(labels, logits)
    assert float(ours) == pytest.approx(float(keras.ops.mean(keras_focal)), rel=1e-5)


def test_focal_loss_keeps_a_confidently_wrong_pixel_s_loss():
    # The true class trails by 20: p = e^-20 (Keras clips p to 1e-7, a loss of
    # 16.12 and no gradient); -(1 - p)^2 log p is 20 by hand.
    logits = np.zeros((1, 1, 1, 6), "float32")
    logits[..., 1] = 20.0
    labels = np.zeros((1, 1, 1), "int32")
    loss = utils.SegmentationLoss("focal", dice_weight=0)(labels, logits)
    p = 1 / (1 + np.exp(20) + 4)
    assert float(loss) == pytest.approx(-(1 - p) ** 2 * np.log(p), rel=1e-5)
    assert float(loss) == pytest.approx(20.0, abs=1e-3)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_loss_has_a_finite_gradient_beside_a_saturated_pixel(gamma):
    # 1 - p is 0 where a logit leads by 30: x ** gamma has an infinite slope there
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the gradient is taken with tf.GradientTape")
    logits = tf.Variable(np.zeros((1, 2, 2, 3), "float32"))
    logits[0, 0, 0, 1].assign(30.0)
    labels = np.array([[[1, 0], [2, 1]]])
    with tf.GradientTape() as tape:
        loss = utils.SegmentationLoss("focal", dice_weight=0, gamma=gamma)(labels, logits)
    assert np.isfinite(tape.gradient(loss, logits).numpy()).all()
    with pytest.raises(ValueError, match="gamma must be a number >= 0"):
        utils.SegmentationLoss("focal", gamma=-1)


@pytest.mark.parametrize("arguments, message", [
    ({"dice_weight": -1}, r"dice_weight must be a number >= 0 \(0 turns the Dice term off\)"),
    ({"dice_weight": float("nan")}, "dice_weight must be a number >= 0"),
    ({"class_weights": [0, 0, 0]}, r"class_weights must be one finite weight >= 0 per class, "
                                   r"not all 0; got \[0, 0, 0\]"),  # the loss was NaN
    ({"class_weights": [1, -1, 1]}, "class_weights must be one finite weight >= 0"),
    ({"class_weights": [1, float("inf"), 1]}, "class_weights must be one finite weight"),
    ({"n_classes": 0}, "n_classes must be an int >= 1, got 0"),  # took the logits' count
    ({"reduction": "sum"}, r"its reduction must average.*got reduction='sum'"),
    ({"reduction": None}, r"its reduction must average.*got reduction=None"),
])
def test_segmentation_loss_refuses_bad_arguments_naming_them(arguments, message):
    with pytest.raises(ValueError, match=message):
        utils.SegmentationLoss(**arguments)


def test_a_batch_without_annotated_pixels_has_no_loss():
    logits = random_logits((2, 4, 4, 6), 1)
    ignored = np.full((2, 4, 4), utils.IGNORE_INDEX)
    assert float(utils.SegmentationLoss()(ignored, logits)) == 0.0  # was 1: Dice of nothing


def test_labels_with_a_trailing_axis_of_one_give_the_same_loss():
    logits = random_logits((2, 4, 4, 6), 1)
    labels = np.random.default_rng(2).integers(0, 6, (2, 4, 4))
    loss = utils.SegmentationLoss()
    assert float(loss(labels[..., None], logits)) == pytest.approx(float(loss(labels, logits)))


def test_focal_loss_is_below_cross_entropy():
    logits = random_logits((2, 8, 8, 6), 5)
    labels = np.random.default_rng(6).integers(0, 6, (2, 8, 8))
    ce = utils.SegmentationLoss(dice_weight=0)(labels, logits)
    focal = utils.SegmentationLoss("focal", dice_weight=0)(labels, logits)
    assert 0 < float(focal) < float(ce)


def test_segmentation_kd_round_trips_for_keras_own_distiller():
    kd = utils.SegmentationKD(temperature=3.0, kind="channel")
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(kd))
    assert isinstance(again, utils.SegmentationKD)
    assert (again.temperature, again.kind) == (3.0, "channel")


def test_segmentation_kd_gives_keras_own_distiller_the_checked_loss_and_trains():
    t, s = random_logits(SHAPE, 1), random_logits(SHAPE, 2)
    kd = utils.SegmentationKD(temperature=3.0, kind="channel")
    assert float(kd.compute_loss(t, s)) == pytest.approx(
        float(utils.distillation_loss(t, s, 3.0, "channel")), rel=1e-6)
    keras.utils.set_random_seed(0)
    student = utils.build_unet(2, name="student")
    distiller = keras.distillation.Distiller(
        teacher=utils.build_unet(2, name="teacher"), student=student,
        distillation_losses=kd, student_loss_weight=0.5)
    distiller.compile(optimizer="adam", loss=utils.SegmentationLoss())
    rng = np.random.default_rng(0)
    x, y = rng.random((4, 32, 32, 3), "float32"), rng.integers(0, 6, (4, 32, 32))
    before = [w.copy() for w in student.get_weights()]
    loss = distiller.fit(x, y, batch_size=4, epochs=1, verbose=0).history["loss"][0]
    assert np.isfinite(loss) and loss > 0
    assert any(not np.array_equal(a, b) for a, b in zip(before, student.get_weights()))


def _dist_by_hand(t, s, T):
    """DIST with numpy's corrcoef: each pixel a sample, classes and pixels correlated."""
    p = _softmax(t / T, -1).reshape(-1, t.shape[-1])
    q = _softmax(s / T, -1).reshape(-1, s.shape[-1])
    inter = np.mean([1 - np.corrcoef(p[i], q[i])[0, 1] for i in range(len(p))])
    intra = np.mean([1 - np.corrcoef(p[:, k], q[:, k])[0, 1] for k in range(p.shape[1])])
    return T**2 * (inter + intra)


def test_dist_kd_matches_a_hand_computation_with_corrcoef():
    t, s, T = random_logits(SHAPE, 1), random_logits(SHAPE, 2), 2.0
    got = float(utils.distillation_loss(t, s, temperature=T, kind="dist"))
    assert got == pytest.approx(_dist_by_hand(t, s, T), rel=1e-4)


def test_dist_kd_is_zero_for_identical_logits():
    t = random_logits(SHAPE, 3)
    assert float(utils.distillation_loss(t, t, kind="dist")) == pytest.approx(0, abs=1e-5)


def test_dist_inter_class_term_ignores_a_positive_affine_map_of_probabilities():
    # A student whose probabilities at each pixel are 0.5 * p + 0.5 / C (a positive
    # affine map that still sums to 1): correlation 1 at every pixel and every class.
    t, T = random_logits(SHAPE, 4), 1.0
    p = _softmax(t / T, -1)
    s = np.log(0.5 * p + 0.5 / SHAPE[-1]).astype("float32")
    assert float(utils.distillation_loss(t, s, temperature=T, kind="dist")) == \
        pytest.approx(0, abs=1e-5)
    assert float(utils.distillation_loss(t, s, temperature=T)) > 1e-3  # KL is not 0


def _standardized(z):
    return (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + 1e-7)


@pytest.mark.parametrize("kind", utils.KD_KINDS)
def test_standardized_kd_is_plain_kd_of_standardized_logits(kind):
    t, s = random_logits(SHAPE, 5), random_logits(SHAPE, 6)
    got = float(utils.distillation_loss(t, s, 2.0, kind, standardize=True))
    plain = float(utils.distillation_loss(_standardized(t), _standardized(s), 2.0, kind))
    assert got == pytest.approx(plain, rel=1e-4)


def test_standardized_kd_ignores_a_shift_and_a_positive_scale_of_the_student():
    t, s = random_logits(SHAPE, 7), random_logits(SHAPE, 8)
    base = float(utils.distillation_loss(t, s, 2.0, standardize=True))
    for moved in (s + 5.0, 3.0 * s, 0.2 * s - 1.0):
        got = float(utils.distillation_loss(t, moved.astype("float32"), 2.0, standardize=True))
        assert got == pytest.approx(base, rel=1e-4)
    assert float(utils.distillation_loss(t, 3.0 * s, 2.0)) != pytest.approx(base, rel=1e-2)


def test_segmentation_kd_serializes_standardize():
    kd = utils.SegmentationKD(temperature=3.0, kind="dist", standardize=True)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(kd))
    assert (again.kind, again.standardize) == ("dist", True)
