"""Tests of `aerialkd.layers`: on-device symmetry augmentation and device-invariant dropout."""

import keras
import numpy as np
import pytest
from keras import ops

import utils


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
    x = np.random.default_rng(0).random((64, 8, 8, 3)).astype("float32")
    moved, drawn = layer(x, training=True)
    assert len({tuple(c) for c in keras.ops.convert_to_numpy(drawn)}) == 8
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(moved),
                                  keras.ops.convert_to_numpy(utils.apply_symmetry(x, drawn)))
    assert not np.array_equal(keras.ops.convert_to_numpy(moved), x)
    same, none = layer(x, training=False)
    assert not keras.ops.convert_to_numpy(none).any()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(same), x)


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
