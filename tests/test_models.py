"""Tests of `aerialkd.models`: the U-Net teacher and student, ensembles, size and FLOPs, saving."""

import keras
import numpy as np
import pytest

import utils
from helpers import per_pixel_linear


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


def test_flops_of_ensembles_count_every_pass():
    small = utils.build_unet(2)
    once = utils.count_flops(small, 64)
    assert utils.count_flops(utils.symmetry_ensemble(small), 64) == 8 * once  # was 0
    members = [utils.build_unet(2, name=f"m{i}") for i in range(3)]
    assert utils.count_flops(utils.ensemble_teacher(members), 64) == 3 * once


def test_flops_of_layers_the_count_does_not_follow_are_refused():
    inputs = keras.Input((64, 64, 3))
    for layer in (keras.layers.Conv2D(4, 3, strides=2, padding="same"),  # 4x over
                  keras.layers.Conv2D(4, 3, padding="valid"),
                  keras.layers.SeparableConv2D(4, 3, padding="same"),  # 0 before
                  keras.layers.UpSampling2D()):  # 4x under
        model = keras.Model(inputs, layer(inputs), name="other")
        with pytest.raises(ValueError, match="count_flops counts build_unet's layers, and "
                                             "'other' has"):
            utils.count_flops(model, 64)


def test_fixed_non_square_shapes_are_refused_where_images_are_rotated():
    with pytest.raises(ValueError, match=r"augment=True rotates by quarter turns.*"
                                         r"input_shape=\(32, 64, 3\)"):
        utils.build_unet(2, input_shape=(32, 64, 3))  # failed at the first training step
    wide = utils.build_unet(2, input_shape=(32, 64, 3), augment=False)
    with pytest.raises(ValueError, match="symmetry_ensemble rotates by quarter turns, so the "
                                         "images must be square; '.*' takes 32x64"):
        utils.symmetry_ensemble(wide)


def test_unet_returns_logits_not_probabilities(small_unet):
    out = keras.ops.convert_to_numpy(small_unet(np.random.default_rng(0).uniform(
        0, 255, (2, 48, 80, 3)).astype("float32")))
    assert out.shape == (2, 48, 80, 6)  # any size divisible by 16
    assert small_unet.get_layer("logits").activation.__name__ == "linear"
    assert not np.allclose(out.sum(-1), 1.0)


def test_unet_rejects_sizes_not_divisible_by_16():
    with pytest.raises(ValueError, match="divisible by 16"):
        utils.build_unet(4, input_shape=(100, 96, 3))


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


def test_unet_dropout_is_device_invariant():
    model = utils.build_unet(4, input_shape=(32, 32, 3))
    dropouts = [layer for layer in model.layers if "dropout" in layer.name]
    assert len(dropouts) == 9
    assert all(type(layer) is utils.DeviceInvariantDropout for layer in dropouts)


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


def test_ensemble_of_one_model_equals_it_and_of_two_the_mean(tmp_path):
    a, b = per_pixel_linear("a", 1.0), per_pixel_linear("bb", 2.0)
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
    try:  # under a global mixed policy a single member's logits stay float32
        keras.config.set_dtype_policy("mixed_float16")
        assert utils.ensemble_teacher([a]).output.dtype == "float32"  # was float16
    finally:
        keras.config.set_dtype_policy("float32")


def test_ensemble_teacher_rejects_members_of_other_shapes():
    with pytest.raises(ValueError, match="same output shape"):
        utils.ensemble_teacher([utils.build_unet(2), utils.build_unet(2, n_classes=5)])
    with pytest.raises(ValueError, match="at least one model"):
        utils.ensemble_teacher([])


def _policies(model):
    return {layer.name: (layer.dtype_policy.name, _policies(layer) if isinstance(layer, keras.Model)
                         else None) for layer in model.layers}


def test_dtype_policies_reach_the_members_of_an_ensemble(tmp_path):
    members = [utils.build_unet(2, name=f"m{i}") for i in range(2)]
    mixed = utils.with_dtype_policy(utils.ensemble_teacher(members), "mixed_bfloat16")
    member = mixed.get_layer("member0")
    assert member.get_layer("down0_conv1").dtype_policy.name == "mixed_bfloat16"
    assert member.get_layer("logits").dtype_policy.name == "float32"
    assert mixed.get_layer("mean_logits").dtype_policy.name == "float32"
    path = tmp_path / "ensemble.keras"
    utils.save_model(mixed, path)  # for inference: float32 throughout, members too
    loaded = keras.models.load_model(path)
    assert "mixed_bfloat16" not in str(_policies(loaded))
    assert _policies(loaded) == _policies(utils.with_dtype_policy(mixed, "float32"))
    x = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0),
                               utils.ensemble_teacher(members).predict(x, verbose=0), atol=1e-5)


def test_dtype_policies_reach_the_model_a_symmetry_ensemble_wraps(tmp_path):
    unet = utils.build_unet(2)
    mixed = utils.with_dtype_policy(utils.symmetry_ensemble(unet), "mixed_bfloat16")
    wrapped = mixed.get_layer("symmetry_average")
    assert wrapped.dtype_policy.name == "float32"
    assert wrapped.model.get_layer("down0_conv1").dtype_policy.name == "mixed_bfloat16"
    path = tmp_path / "ensemble.keras"
    utils.save_model(utils.symmetry_ensemble(utils.with_dtype_policy(unet, "mixed_bfloat16")),
                     path)  # cast, then wrapped: saved in float32 all the same
    loaded = keras.models.load_model(path).get_layer("symmetry_average").model
    assert {layer.dtype_policy.name for layer in loaded.layers} == {"float32"}


def test_saved_student_loads_alone_and_predicts_identically(tiny_data, tmp_path):
    keras.utils.set_random_seed(0)
    student = utils.build_student()
    path = tmp_path / "student.keras"
    utils.save_model(student, path)
    loaded = keras.models.load_model(path)  # no custom_objects needed
    assert not loaded.compiled
    x = tiny_data.x_test[:2]
    np.testing.assert_array_equal(utils.predict_logits(student, x),
                                  utils.predict_logits(loaded, x))
