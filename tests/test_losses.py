"""Tests of section 3 of utils.py: losses and distillation."""

import keras
import numpy as np
import pytest

import utils
from conftest import random_logits


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


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_kd_rejects_non_positive_temperature(bad):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        utils.distillation_loss(random_logits(SHAPE), random_logits(SHAPE), bad)


def test_segmentation_loss_matches_a_hand_computation():
    logits = random_logits((2, 3, 4, 6), 3)
    labels = np.random.default_rng(4).integers(0, 6, (2, 3, 4))
    labels[0, 0, :2] = utils.IGNORE_INDEX
    weights = np.array([1.0, 0.5, 2.0, 1.0, 1.0, 3.0])
    valid = labels != utils.IGNORE_INDEX
    onehot = np.eye(6)[np.where(valid, labels, 0)] * valid[..., None]
    probs = _softmax(logits, -1)
    ce = -(onehot * np.log(probs)).sum(-1)
    ce = (ce * (onehot * weights).sum(-1)).sum() / valid.sum()
    p = (probs * valid[..., None]).reshape(-1, 6)
    o = onehot.reshape(-1, 6)
    dice = 1 - 2 * (o * p).sum(0) / (o.sum(0) + p.sum(0))
    expected = ce + (dice * weights).sum() / weights.sum()
    loss = utils.SegmentationLoss(class_weights=weights)
    assert float(loss(labels, logits)) == pytest.approx(expected, rel=1e-4)


def test_keras_dice_default_is_one_global_score_not_a_class_mean():
    # The trap our loss avoids by passing axis=0 on (pixels, classes).
    y = np.eye(3)[[0, 0, 0, 1]]
    p = np.array([[1, 0, 0]] * 4, dtype="float32")
    global_dice = float(keras.losses.dice(y, p))
    per_class = keras.ops.convert_to_numpy(keras.losses.dice(y, p, axis=0))
    assert global_dice == pytest.approx(1 - 6 / 8)
    assert per_class[0] == pytest.approx(1 - 6 / 7) and per_class[1] == pytest.approx(1.0)


def test_focal_loss_is_below_cross_entropy():
    logits = random_logits((2, 8, 8, 6), 5)
    labels = np.random.default_rng(6).integers(0, 6, (2, 8, 8))
    ce = utils.SegmentationLoss(dice_weight=0)(labels, logits)
    focal = utils.SegmentationLoss("focal", dice_weight=0)(labels, logits)
    assert 0 < float(focal) < float(ce)


def _teacher_student():
    keras.utils.set_random_seed(0)
    return utils.build_unet(2, name="t"), utils.build_unet(2, name="s")


def test_alpha_one_gives_the_plain_student_loss():
    teacher, student = _teacher_student()
    x = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    y = np.random.default_rng(1).integers(0, 6, (2, 16, 16))
    distiller = utils.Distiller(teacher=teacher, student=student, alpha=1.0)
    distiller.compile(optimizer="adam", loss=utils.SegmentationLoss())
    y_pred = student(x)
    total = distiller.compute_loss(x, y, y_pred)
    assert float(total) == pytest.approx(float(utils.SegmentationLoss()(y, y_pred)), rel=1e-6)


def _pixelwise(name, stddev):
    """A per-pixel linear model: no ReLU to die, so learning is reliable."""
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    init = keras.initializers.RandomNormal(stddev=stddev, seed=len(name))
    return keras.Model(inputs, keras.layers.Conv2D(6, 1, kernel_initializer=init,
                                                   bias_initializer=init)(x), name=name)


@pytest.mark.parametrize("kind", ["pixel", "channel"])
def test_distiller_lowers_the_kd_term_and_freezes_the_teacher(tiny_data, kind):
    teacher, student = _pixelwise("teacher", 4.0), _pixelwise("student", 0.1)
    before = [w.copy() for w in teacher.get_weights()]
    distiller = utils.Distiller(teacher=teacher, student=student, alpha=0.0,
                                temperature=2.0, kind=kind)
    distiller.compile(optimizer=keras.optimizers.Adam(0.2), loss=utils.SegmentationLoss())
    x, y = tiny_data.x_train[:16], tiny_data.y_train[:16]
    history = distiller.fit(x, y, batch_size=8, epochs=10, verbose=0).history
    kd = history["distillation_loss"]
    assert kd[-1] < 0.5 * kd[0]
    assert all(np.array_equal(a, b) for a, b in zip(before, teacher.get_weights()))
    assert {"student_loss", "distillation_loss"} <= set(history)


def test_distiller_rejects_bad_arguments():
    teacher, student = _teacher_student()
    for alpha in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"alpha .* must be in \[0, 1\]"):
            utils.Distiller(teacher=teacher, student=student, alpha=alpha)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        utils.Distiller(teacher=teacher, student=student, temperature=0)
    with pytest.raises(ValueError, match="kind must be"):
        utils.Distiller(teacher=teacher, student=student, kind="feature")


def test_distiller_rejects_a_class_count_mismatch():
    teacher, _ = _teacher_student()
    with pytest.raises(ValueError, match="Teacher predicts 6 classes but student predicts 5"):
        utils.Distiller(teacher=teacher, student=utils.build_unet(2, n_classes=5))


def test_distiller_refuses_a_teacher_that_outputs_probabilities():
    teacher, student = _teacher_student()
    with_softmax = keras.Model(teacher.input, keras.layers.Softmax()(teacher.output))
    with pytest.raises(ValueError, match="probabilities.*needs logits"):
        utils.Distiller(teacher=with_softmax, student=student)


def test_distiller_detects_softmax_hidden_in_a_custom_layer():
    class Probabilities(keras.layers.Layer):
        def call(self, x):
            return keras.ops.softmax(x, axis=-1)

    teacher, student = _teacher_student()
    hidden = keras.Model(teacher.input, Probabilities()(teacher.output))
    with pytest.raises(ValueError, match="probabilities"):
        utils.Distiller(teacher=hidden, student=student)


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


def test_a_saved_compiled_distiller_reloads_and_goes_on_training(tmp_path):
    keras.utils.set_random_seed(0)
    teacher, student = _teacher_student()
    distiller = utils.compile_segmentation(
        utils.Distiller(teacher=teacher, student=student, alpha=0.3, temperature=2.0,
                        kind="channel", standardize=True, feature_weight=0.5))
    x = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3)).astype("uint8")
    y = np.random.default_rng(1).integers(0, 6, (4, 16, 16)).astype("uint8")
    distiller.fit(x, y, batch_size=2, epochs=1, verbose=0)
    config = distiller.get_config()
    rebuilt = utils.Distiller.from_config(config)
    assert (rebuilt.alpha, rebuilt.temperature, rebuilt.kind) == (0.3, 2.0, "channel")
    assert (rebuilt.standardize, rebuilt.feature_weight) == (True, 0.5)
    distiller.save(tmp_path / "distiller.keras")
    reloaded = keras.saving.load_model(tmp_path / "distiller.keras")
    assert reloaded.compiled and int(reloaded.optimizer.iterations) == 2
    for a, b in zip(distiller.student.get_weights(), reloaded.student.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(reloaded.feature_adapter.get_weights()[0],
                                  distiller.feature_adapter.get_weights()[0])
    np.testing.assert_allclose(reloaded.compute_loss(x, y, reloaded(x), training=False),
                               distiller.compute_loss(x, y, distiller(x), training=False),
                               rtol=1e-5)
    history = reloaded.fit(x, y, batch_size=2, epochs=1, verbose=0).history
    assert int(reloaded.optimizer.iterations) == 4 and np.isfinite(history["loss"][0])


def test_segmentation_kd_round_trips_for_keras_own_distiller():
    kd = utils.SegmentationKD(temperature=3.0, kind="channel")
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(kd))
    assert isinstance(again, utils.SegmentationKD)
    assert (again.temperature, again.kind) == (3.0, "channel")


# --- DIST, logit standardisation (issue #27) ---------------------------------


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


# --- KD-weight schedule, ensemble teacher, feature term (issue #27) ----------


def test_kd_weight_schedule_switches_which_term_drives_the_loss(tiny_data):
    teacher, student = _pixelwise("teacher", 4.0), _pixelwise("student", 0.1)
    distiller = utils.Distiller(teacher=teacher, student=student, alpha=0.5)
    distiller.compile(optimizer=keras.optimizers.Adam(0.01), loss=utils.SegmentationLoss())
    schedule = utils.KDWeightSchedule(utils.KDWeightSchedule.warmup(1, 0.0))
    x, y = tiny_data.x_train[:8], tiny_data.y_train[:8]
    history = distiller.fit(x, y, batch_size=4, epochs=2, verbose=0,
                            callbacks=[schedule]).history
    assert history["alpha"] == [1.0, 0.0]
    assert history["total_loss"][0] == pytest.approx(history["student_loss"][0], rel=1e-5)
    assert history["total_loss"][1] == pytest.approx(history["distillation_loss"][1],
                                                     rel=1e-5)
    assert distiller.alpha == 0.0


def test_kd_weight_schedule_parses_warmup_and_rejects_other_text():
    schedule = utils.KDWeightSchedule.parse("warmup:2:0.1")
    assert [schedule(e) for e in range(4)] == [1.0, 1.0, 0.1, 0.1]
    for bad in ("warmup:2", "cosine:1:0.1", "warmup:x:0.1", "warmup:2:1.5"):
        with pytest.raises(ValueError):
            utils.KDWeightSchedule.parse(bad)


def test_ensemble_of_one_model_equals_it_and_of_two_the_mean(tmp_path):
    a, b = _pixelwise("a", 1.0), _pixelwise("bb", 2.0)
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    la, lb = (keras.ops.convert_to_numpy(m(x)) for m in (a, b))
    np.testing.assert_allclose(utils.ensemble_teacher([a])(x), la, rtol=1e-6)
    pair = utils.ensemble_teacher([a, b])
    np.testing.assert_allclose(pair(x), (la + lb) / 2, rtol=1e-5, atol=1e-6)
    pair.save(tmp_path / "pair.keras")
    reloaded = keras.saving.load_model(tmp_path / "pair.keras")
    np.testing.assert_allclose(reloaded(x), (la + lb) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(utils.predict_logits(reloaded, x), (la + lb) / 2, rtol=1e-5,
                               atol=1e-6)


def test_ensemble_teacher_rejects_members_of_other_shapes():
    with pytest.raises(ValueError, match="same output shape"):
        utils.ensemble_teacher([utils.build_unet(2), utils.build_unet(2, n_classes=5)])
    with pytest.raises(ValueError, match="at least one model"):
        utils.ensemble_teacher([])


def test_feature_term_adds_the_adapted_bottleneck_mse(tiny_data):
    teacher, student = utils.build_unet(4, name="t"), utils.build_unet(2, name="s")
    distiller = utils.Distiller(teacher=teacher, student=student, alpha=0.5,
                                feature_weight=2.0)
    distiller.compile(optimizer="adam", loss=utils.SegmentationLoss())
    x, y = tiny_data.x_train[:2], tiny_data.y_train[:2]
    total = float(distiller.compute_loss(x, y, training=False))
    f_s = keras.Model(student.input, student.get_layer("bottleneck_conv2").output)(x)
    f_t = keras.Model(teacher.input, teacher.get_layer("bottleneck_conv2").output)(x)
    adapted = keras.ops.convert_to_numpy(distiller.feature_adapter(f_s))
    assert adapted.shape[-1] == 64 and f_s.shape[-1] == 32
    feature = np.mean((adapted - keras.ops.convert_to_numpy(f_t)) ** 2)
    logits_s, logits_t = student(x), teacher(x)
    expected = (0.5 * float(utils.SegmentationLoss()(y, logits_s))
                + 0.5 * float(utils.distillation_loss(logits_t, logits_s)) + 2.0 * feature)
    assert total == pytest.approx(expected, rel=1e-5)
    history = distiller.fit(x, y, batch_size=2, epochs=1, verbose=0).history
    assert "feature_loss" in history


def test_feature_term_needs_a_bottleneck_layer():
    teacher = utils.ensemble_teacher([utils.build_unet(2, name="t")])
    with pytest.raises(ValueError, match="bottleneck_conv2"):
        utils.Distiller(teacher=teacher, student=utils.build_unet(2), feature_weight=1.0)
    with pytest.raises(ValueError, match="feature_weight must be"):
        utils.Distiller(teacher=utils.build_unet(2), student=utils.build_unet(2),
                        feature_weight=-1.0)
