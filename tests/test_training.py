"""Tests of section 4 of utils.py: training, checkpoints, saved models."""

import json

import keras
import numpy as np
import pytest

import utils


def _small_data(tiny_data):
    import dataclasses

    return dataclasses.replace(tiny_data, x_train=tiny_data.x_train[:24],
                               y_train=tiny_data.y_train[:24],
                               x_val=tiny_data.x_val[:8], y_val=tiny_data.y_val[:8])


def test_fit_saves_best_model_and_history(tiny_data, small_unet, tmp_path):
    model = utils.compile_segmentation(small_unet)
    history = utils.fit_segmentation(model, _small_data(tiny_data), epochs=2,
                                     output_dir=tmp_path, name="m", batch_size=8,
                                     verbose=0)
    assert len(history["loss"]) == 2 and "val_miou5" in history
    best = json.loads((tmp_path / "m.best.json").read_text())
    assert best["best"] == pytest.approx(max(history["val_miou5"]))
    assert json.loads((tmp_path / "m_history.json").read_text()) == history


def test_saved_student_loads_alone_and_predicts_identically(tiny_data, tmp_path):
    keras.utils.set_random_seed(0)
    student = utils.build_student()
    path = tmp_path / "student.keras"
    student.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects needed
    x = tiny_data.x_test[:2]
    np.testing.assert_array_equal(utils.predict_logits(student, x),
                                  utils.predict_logits(loaded, x))


def test_distiller_checkpoint_holds_the_student_alone(tiny_data, tmp_path):
    keras.utils.set_random_seed(0)
    teacher, student = utils.build_unet(2, name="t"), utils.build_unet(2, name="s")
    distiller = utils.compile_segmentation(utils.Distiller(teacher=teacher, student=student))
    history = utils.fit_segmentation(distiller, _small_data(tiny_data), epochs=1,
                                     output_dir=tmp_path, name="d", batch_size=8,
                                     verbose=0)
    assert {"student_loss", "distillation_loss", "val_distillation_loss"} <= set(history)
    saved = keras.models.load_model(tmp_path / "d.keras")
    assert saved.name == "s" and saved.count_params() == student.count_params()


def test_fit_requires_a_compiled_model(tiny_data, small_unet, tmp_path):
    with pytest.raises(ValueError, match="Compile the model"):
        utils.fit_segmentation(small_unet, tiny_data, epochs=1, output_dir=tmp_path,
                               name="m")
