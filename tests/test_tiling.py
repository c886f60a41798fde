"""Tests of `aerialkd.tiling`: whole images of any size, from overlapping blended tiles."""

import keras
import numpy as np
import pytest

import utils
from helpers import pixelwise_model


@pytest.mark.parametrize("size", [(325, 410), (40, 50), (64, 64)])
def test_predict_image_covers_any_size_in_place(size):
    model = pixelwise_model()
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    labels, logits = utils.predict_image(model, image, tile_size=64, overlap=16,
                                         return_logits=True)
    direct = keras.ops.convert_to_numpy(model(image[None].astype("float32")))[0]
    np.testing.assert_allclose(logits, direct, atol=1e-4)  # tiles line up
    np.testing.assert_array_equal(labels, logits.argmax(-1))
    assert (labels == direct.argmax(-1)).mean() > 0.99  # but for near-ties at tile seams


def test_predict_image_rejects_bad_overlap():
    with pytest.raises(ValueError, match=r"overlap must be in \[0, tile_size=32\), got 32"):
        utils.predict_image(pixelwise_model(), np.zeros((8, 8, 3)), tile_size=32,
                            overlap=32)
