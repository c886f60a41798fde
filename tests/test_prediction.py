"""Tests of `aerialkd.prediction`: logits of batches and a fast predict function."""

import time

import keras
import numpy as np
import pytest

import utils
from helpers import pixelwise_model


def test_predict_function_matches_the_model_and_sees_new_weights():
    model = pixelwise_model()
    predict = utils.make_predict_function(model)
    x = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    direct = keras.ops.convert_to_numpy(model(x.astype("float32")))
    np.testing.assert_allclose(predict(x), direct, atol=1e-5)
    model.set_weights([w * 2 for w in model.get_weights()])
    np.testing.assert_allclose(predict(x), 2 * direct, atol=1e-4)
    assert predict(x[:1]).shape == (1, 16, 16, 6)  # another batch size
    np.testing.assert_array_equal(utils.predict_logits(predict, x, batch_size=2), predict(x))


def test_measure_latency_gives_every_model_a_positive_median_in_seconds():
    calls = []

    def slow(images):
        calls.append(len(images))
        time.sleep(0.01)
        return np.zeros((*images.shape[:3], 2), "float32")

    seconds = utils.measure_latency({"keras": pixelwise_model(), "slow": slow},
                                    input_size=16, batch_size=2, repeats=3, warmup=1)
    assert list(seconds) == ["keras", "slow"]
    assert all(isinstance(s, float) and s > 0 for s in seconds.values())
    assert seconds["slow"] >= 0.01 and calls == [2] * 4  # one warm-up, three timed passes


@pytest.mark.parametrize("argument", [dict(repeats=0), dict(batch_size=0), dict(warmup=-1)])
def test_measure_latency_refuses_a_count_that_times_nothing(argument):
    name = next(iter(argument))  # repeats=0 gave the median of no time: NaN, and a warning
    with pytest.raises(ValueError, match=f"{name} must be an int >= "):
        utils.measure_latency({"f": lambda images: images}, input_size=16, **argument)


def test_predict_logits_names_the_size_a_unet_needs(small_unet):
    assert utils.size_multiple(small_unet) == 16
    with pytest.raises(ValueError, match=r"The images are 40x48 pixels, and 'small' needs a "
                                         r"height and width that are multiples of 16"):
        utils.predict_logits(small_unet, np.zeros((1, 40, 48, 3), "uint8"))  # was Keras':
    # "Dimension 1 in both shapes must be equal, but are 2 and 3" in a Concatenate


def test_predict_logits_of_a_function_are_float32_as_documented():
    images = np.zeros((3, 16, 16, 3), np.uint8)
    logits = utils.predict_logits(lambda b: np.zeros((*b.shape[:3], 2), np.float16), images)
    assert logits.dtype == np.float32 and logits.shape == (3, 16, 16, 2)  # was float16


def test_predict_logits_names_a_bad_batch_size_and_no_images():
    images = np.zeros((2, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        utils.predict_logits(pixelwise_model(), images, batch_size=0)
    with pytest.raises(ValueError, match="images holds no image"):
        utils.predict_logits(pixelwise_model(), images[:0])
