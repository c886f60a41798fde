"""Tests of `aerialkd.distiller`: `Distiller` (a Keras model that trains a student from a
teacher), its feature term, and `KDWeightSchedule`."""

import keras
import numpy as np
import pytest

import utils
from helpers import fresh_segmenter, per_pixel_linear


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


@pytest.mark.parametrize("kind", ["pixel", "channel"])
def test_distiller_lowers_the_kd_term_and_freezes_the_teacher(tiny_data, kind):
    teacher, student = per_pixel_linear("teacher", 4.0), per_pixel_linear("student", 0.1)
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


def test_distiller_uses_given_teacher_logits_instead_of_the_teacher(tiny_data):
    x, y = tiny_data.x_val[:2], tiny_data.y_val[:2]
    distiller = fresh_segmenter(distil=True)
    logits = utils.predict_logits(distiller.teacher, x)
    own = distiller.test_on_batch(x, y, return_dict=True)
    given = distiller.test_on_batch((x, logits), y, return_dict=True)
    assert given["distillation_loss"] == pytest.approx(own["distillation_loss"], rel=1e-5)
    other = distiller.test_on_batch((x, np.zeros_like(logits)), y, return_dict=True)
    assert other["distillation_loss"] != pytest.approx(own["distillation_loss"], rel=1e-2)
    assert other["student_loss"] == pytest.approx(own["student_loss"], rel=1e-6)


def test_distiller_rejects_bad_arguments():
    teacher, student = _teacher_student()
    for alpha in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"alpha .* must be in \[0, 1\]"):
            utils.Distiller(teacher=teacher, student=student, alpha=alpha)
    with pytest.raises(ValueError, match="temperature must be a number > 0"):
        utils.Distiller(teacher=teacher, student=student, temperature=0)
    with pytest.raises(ValueError, match="kind must be"):
        utils.Distiller(teacher=teacher, student=student, kind="feature")


def test_distiller_needs_a_loss_and_refuses_sample_weights():
    teacher, student = _teacher_student()
    distiller = utils.Distiller(teacher=teacher, student=student)
    with pytest.raises(ValueError, match="Distiller.compile needs loss, the student's own"):
        distiller.compile(optimizer="adam")  # JAX trained on the KD term alone
    distiller.compile(optimizer="adam", loss=utils.SegmentationLoss())
    x = np.zeros((4, 16, 16, 3), "float32")
    y = np.zeros((4, 16, 16), "int32")
    with pytest.raises(ValueError, match="Distiller does not take sample weights"):
        distiller.fit(x, y, sample_weight=np.zeros(4), epochs=1, verbose=0)


def test_the_distillers_losses_weigh_a_short_last_batch_as_keras_weighs_loss(tiny_data):
    teacher, student = _teacher_student()
    distiller = utils.Distiller(teacher=teacher, student=student, alpha=0.5)
    distiller.compile(optimizer=keras.optimizers.SGD(0.0), loss=utils.SegmentationLoss())
    x, y = tiny_data.x_val[:20], tiny_data.y_val[:20]  # batches of 16 and 4
    logs = distiller.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    assert logs["total_loss"] == pytest.approx(logs["loss"], rel=1e-5)
    halves = [distiller.evaluate(x[s], y[s], batch_size=16, verbose=0, return_dict=True)
              for s in (slice(0, 16), slice(16, 20))]
    for term in ("student_loss", "distillation_loss"):
        assert logs[term] == pytest.approx((16 * halves[0][term] + 4 * halves[1][term]) / 20,
                                           rel=1e-5)


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


def test_kd_weight_schedule_switches_which_term_drives_the_loss(tiny_data):
    teacher, student = per_pixel_linear("teacher", 4.0), per_pixel_linear("student", 0.1)
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
        with pytest.raises(ValueError, match=f"warmup:K:ALPHA.*got '{bad}'"):
            utils.KDWeightSchedule.parse(bad)
