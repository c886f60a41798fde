"""Tests of section 2 of utils.py: models."""

import keras
import numpy as np
import pytest

import utils


def test_teacher_and_student_parameter_counts_and_ratio():
    teacher, student = utils.build_teacher(), utils.build_student()
    assert teacher.count_params() == 1_941_190
    assert student.count_params() == 485_862
    assert 3.9 < teacher.count_params() / student.count_params() < 4.1


def test_flops_match_a_hand_count_and_the_4x_ratio():
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2DTranspose(5, 2, strides=2)(x)
    model = keras.Model(inputs, x)
    hand = 2 * 9 * 3 * 4 * 32 * 32 + 2 * 4 * 4 * 5 * 16 * 16
    assert utils.count_flops(model, 32) == hand
    teacher, student = utils.count_flops(utils.build_teacher()), utils.count_flops(utils.build_student())
    assert abs(teacher / 1e9 - 6.08) < 0.01 and abs(student / 1e9 - 1.54) < 0.01


def test_unet_returns_logits_not_probabilities(small_unet):
    out = keras.ops.convert_to_numpy(small_unet(np.random.default_rng(0).uniform(
        0, 255, (2, 48, 80, 3)).astype("float32")))
    assert out.shape == (2, 48, 80, 6)  # any size divisible by 16
    assert small_unet.layers[-1].activation.__name__ == "linear"
    assert not np.allclose(out.sum(-1), 1.0)


def test_unet_rejects_sizes_not_divisible_by_16():
    with pytest.raises(ValueError, match="divisible by 16"):
        utils.build_unet(4, input_shape=(100, 96, 3))
