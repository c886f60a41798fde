"""Tests of `aerialkd.prediction`: logits of batches and a fast predict function."""

import keras
import numpy as np

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
