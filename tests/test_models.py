"""Tests of section 2 of utils.py: models."""

import keras
import numpy as np
import pytest
from keras import ops

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
    assert small_unet.get_layer("logits").activation.__name__ == "linear"
    assert not np.allclose(out.sum(-1), 1.0)


def test_unet_rejects_sizes_not_divisible_by_16():
    with pytest.raises(ValueError, match="divisible by 16"):
        utils.build_unet(4, input_shape=(100, 96, 3))


def _codes():
    return np.array([[t, r, c] for t in (0, 1) for r in (0, 1) for c in (0, 1)], "int32")


def test_the_eight_symmetries_are_distinct_and_undone_exactly():
    image = np.arange(4 * 4 * 2, dtype="float32").reshape(1, 4, 4, 2)
    images = np.repeat(image, 8, axis=0)
    moved = keras.ops.convert_to_numpy(utils.apply_symmetry(images, _codes()))
    assert len({m.tobytes() for m in moved}) == 8
    expected = {np.rot90(image[0], k)[:, ::f].tobytes() for k in range(4) for f in (1, -1)}
    assert {m.tobytes() for m in moved} == expected  # rotations and mirrors
    back = keras.ops.convert_to_numpy(utils.apply_symmetry(moved, _codes(), inverse=True))
    np.testing.assert_array_equal(back, images)


def test_training_draws_every_symmetry_and_inference_draws_none():
    layer = utils.RandomSymmetry(seed=1)
    x = np.zeros((64, 8, 8, 3), "float32")
    _, drawn = layer(x, training=True)
    assert len({tuple(c) for c in keras.ops.convert_to_numpy(drawn)}) == 8
    same, none = layer(x, training=False)
    assert not keras.ops.convert_to_numpy(none).any()


def test_loss_on_mapped_back_logits_equals_loss_on_transformed_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (8, 8, 8, 6)).astype("float32")  # the model's output on g(x)
    labels = rng.integers(0, 6, (8, 8, 8)).astype("uint8")
    labels[:, :2, :3] = utils.IGNORE_INDEX
    loss = utils.SegmentationLoss(class_weights=[1, 2, 1, 1, 3, 0.5])
    back = utils.apply_symmetry(logits, _codes(), inverse=True)
    moved = keras.ops.convert_to_numpy(utils.apply_symmetry(labels[..., None], _codes()))[..., 0]
    assert float(loss(labels, back)) == pytest.approx(float(loss(moved, logits)), rel=1e-6)


def _net(core):
    inputs = keras.Input((16, 16, 3))
    x, symmetry = utils.RandomSymmetry(seed=0)(inputs)
    return keras.Model(inputs, utils.UndoSymmetry()([core(x), symmetry]))


def test_augmentation_leaves_a_pixelwise_network_unchanged_but_not_a_spatial_one():
    x = np.random.default_rng(0).uniform(0, 255, (16, 16, 16, 3)).astype("float32")
    keras.utils.set_random_seed(0)
    pointwise, spatial = _net(keras.layers.Conv2D(6, 1)), _net(keras.layers.Conv2D(6, 3, padding="same"))
    np.testing.assert_allclose(pointwise(x, training=True), pointwise(x), atol=1e-4)
    assert not np.allclose(spatial(x, training=True), spatial(x), atol=1e-2)


def test_unet_augmentation_is_identity_at_inference_and_holds_no_weights():
    keras.utils.set_random_seed(0)
    augmented = utils.build_unet(2)
    plain = utils.build_unet(2, augment=False)
    plain.set_weights(augmented.get_weights())
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(augmented.predict_on_batch(x), plain.predict_on_batch(x))
    assert augmented.count_params() == plain.count_params()
    with pytest.raises(ValueError, match="square training patches"):
        augmented(np.zeros((1, 32, 48, 3), "float32"), training=True)


def test_symmetry_ensemble_is_equivariant_and_exact_for_a_pixelwise_model():
    x = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    pointwise = keras.Model(inputs, keras.layers.Conv2D(6, 1)(inputs))
    np.testing.assert_allclose(utils.symmetry_ensemble(pointwise).predict_on_batch(x),
                               pointwise.predict_on_batch(x), atol=1e-4)
    ensemble = utils.symmetry_ensemble(utils.build_unet(2, augment=False))
    turned = np.rot90(x, 1, axes=(1, 2)).copy()
    np.testing.assert_allclose(ensemble.predict_on_batch(turned),
                               np.rot90(ensemble.predict_on_batch(x), 1, axes=(1, 2)), atol=1e-4)
    utils.Distiller(teacher=ensemble, student=utils.build_unet(2))  # a valid teacher


def test_device_invariant_dropout_is_keras_dropout_on_one_device():
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("float32")
    ours = utils.DeviceInvariantDropout(0.3, seed=7)
    keras_dropout = keras.layers.Dropout(0.3, seed=7)
    for _ in range(2):  # the seed state moves on alike
        dropped = ops.convert_to_numpy(ours(x, training=True))
        np.testing.assert_array_equal(
            dropped, ops.convert_to_numpy(keras_dropout(x, training=True)))
    assert 0.2 < np.mean(dropped == 0) < 0.4
    np.testing.assert_array_equal(ops.convert_to_numpy(ours(x, training=False)), x)


def test_device_invariant_dropout_serializes_and_refuses_a_noise_shape():
    layer = utils.DeviceInvariantDropout(0.2, seed=3, name="drop")
    copy = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(copy) is utils.DeviceInvariantDropout
    assert (copy.rate, copy.seed, copy.name) == (0.2, 3, "drop")
    with pytest.raises(ValueError, match="noise_shape"):
        utils.DeviceInvariantDropout(0.2, noise_shape=(None, 1, 1, 3))


def test_unet_dropout_is_device_invariant():
    model = utils.build_unet(4, input_shape=(32, 32, 3))
    dropouts = [layer for layer in model.layers if "dropout" in layer.name]
    assert len(dropouts) == 9
    assert all(type(layer) is utils.DeviceInvariantDropout for layer in dropouts)
