"""Tests of `aerialkd.tiling`: whole images of any size, from overlapping blended tiles."""

import math

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
    for overlap in (7.5, True):  # a TypeError in numpy's pad, or 1
        with pytest.raises(ValueError, match=f"overlap must be an int >= 0, got {overlap}"):
            utils.predict_image(pixelwise_model(), np.zeros((8, 8, 3)), tile_size=32,
                                overlap=overlap)


def _neighbourhood_model():
    """A 5x5 convolution with fixed weights: a pixel's logits depend on its neighbours, so
    the tiles' padding (reflected, or zeros at a tile's border) shows in them."""
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    conv = keras.layers.Conv2D(4, 5, padding="same")
    model = keras.Model(inputs, conv(x))
    rng = np.random.default_rng(0)
    conv.set_weights([rng.normal(0, 1, (5, 5, 3, 4)).astype("float32"),
                      rng.normal(0, 1, 4).astype("float32")])
    return model


def _naive_blend(model, image, tile_size, overlap):
    """The blended logits as `blend_tiles` documents them, over the whole padded image."""
    height, width = image.shape[:2]
    stride = tile_size - overlap
    padded_h = tile_size + max(0, math.ceil((height - tile_size) / stride)) * stride
    padded_w = tile_size + max(0, math.ceil((width - tile_size) / stride)) * stride
    padded = np.pad(image, ((0, padded_h - height), (0, padded_w - width), (0, 0)),
                    mode="symmetric")
    corners = [(y, x) for y in range(0, padded_h - tile_size + 1, stride)
               for x in range(0, padded_w - tile_size + 1, stride)]
    tiles = np.stack([padded[y : y + tile_size, x : x + tile_size] for y, x in corners])
    logits = keras.ops.convert_to_numpy(model(tiles.astype("float32")))  # each tile alone
    k = np.arange(tile_size)
    w = np.minimum(np.minimum(k + 1, tile_size - k), max(overlap, 1)).astype("float32")
    weight = np.outer(w, w)[..., None]
    total = np.zeros((padded_h, padded_w, logits.shape[-1]), "float32")
    norm = np.zeros((padded_h, padded_w, 1), "float32")
    for (y, x), tile_logits in zip(corners, logits):
        total[y : y + tile_size, x : x + tile_size] += tile_logits * weight
        norm[y : y + tile_size, x : x + tile_size] += weight
    return (total / norm)[:height, :width]


@pytest.mark.parametrize("height, width, tile_size, overlap, batch_size", [
    (50, 70, 32, 0, 8),  # no overlap: every pixel from one tile, zeros at its borders
    (12, 9, 32, 8, 8),  # smaller than a tile: reflected further than the image reaches
    (45, 61, 32, 12, 2),  # three tiles a row, two rows: batches split a row
    (70, 50, 16, 5, 3),  # an odd overlap, many rows of tiles
])
def test_predict_image_blends_tiles_with_the_documented_padding_and_weights(
        height, width, tile_size, overlap, batch_size):
    model = _neighbourhood_model()
    image = np.random.default_rng(height).integers(0, 256, (height, width, 3), np.uint8)
    labels, logits = utils.predict_image(model, image, tile_size=tile_size, overlap=overlap,
                                         batch_size=batch_size, return_logits=True)
    expected = _naive_blend(model, image, tile_size, overlap)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(labels, logits.argmax(-1))
    # The neighbourhood shows: the whole image in one pass differs near tile seams.
    whole = keras.ops.convert_to_numpy(model(image[None].astype("float32")))[0]
    assert not np.allclose(logits, whole, atol=1e-3)


def test_predict_image_keeps_the_labels_of_more_than_256_classes():
    model = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(300, 1)])
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    labels, logits = utils.predict_image(model, image, tile_size=16, return_logits=True)
    assert labels.dtype == np.uint16
    np.testing.assert_array_equal(labels, logits.argmax(-1))


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), "batch_size must be an int >= 1"),
    (dict(tile_size=32.0), "tile_size must be a multiple of 16"),
    (dict(image=np.zeros((0, 8, 3), np.uint8)), r"H, W >= 1, got shape \(0, 8, 3\)")])
def test_predict_image_names_a_bad_argument(kwargs, message):
    kwargs = {"image": np.zeros((8, 8, 3), np.uint8), "tile_size": 16, **kwargs}
    with pytest.raises(ValueError, match=message):
        utils.predict_image(pixelwise_model(), **kwargs)
