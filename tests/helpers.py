"""Small inputs and models that several test modules build; the fixtures are in conftest.py."""

import dataclasses

import keras
import numpy as np
from PIL import Image

import utils


def random_logits(shape, seed=0, scale=3.0):
    return np.random.default_rng(seed).normal(0, scale, shape).astype("float32")


def small_data(data):
    """`data` cut to 24 training and 8 validation patches: a few batches an epoch."""
    return dataclasses.replace(data, x_train=data.x_train[:24], y_train=data.y_train[:24],
                               x_val=data.x_val[:8], y_val=data.y_val[:8])


def pixelwise_model():
    """A 1x1 convolution on the rescaled image: the same logits for a tile as for the image."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    return keras.Model(inputs, keras.layers.Conv2D(6, 1)(x))


def per_pixel_linear(name, stddev):
    """A per-pixel linear model: no ReLU to die, so learning is reliable."""
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    init = keras.initializers.RandomNormal(stddev=stddev, seed=len(name))
    return keras.Model(inputs, keras.layers.Conv2D(6, 1, kernel_initializer=init,
                                                   bias_initializer=init)(x), name=name)


# -- models that train in a second, with all the state a U-Net has -------------


def segmenter(name, augment=True):
    """A small model with all the state a U-Net has: augmentation and dropout draws."""
    inputs = keras.Input((None, None, 3))
    x, symmetry = utils.RandomSymmetry(name=f"{name}_augment")(inputs)
    x = keras.layers.Rescaling(1 / 255)(x)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    x = keras.layers.Dropout(0.3)(x)
    logits = keras.layers.Conv2D(6, 1, name="logits")(x)
    if augment:
        logits = utils.UndoSymmetry()([logits, symmetry])
    return keras.Model(inputs, logits, name=name)


def fresh_segmenter(distil=False):
    """`segmenter`, seeded and compiled, or a compiled `Distiller` training it."""
    keras.utils.set_random_seed(0)
    model = segmenter("m")
    if distil:
        model = utils.Distiller(teacher=segmenter("t", augment=False), student=model)
    return utils.compile_segmentation(model, labelled_classes=utils.LABELLED_CLASSES)


class AtEpochBegin(keras.callbacks.Callback):
    """Runs `action(model)` when the epoch with 0-based index `epoch` begins."""

    def __init__(self, epoch, action):
        super().__init__()
        self.epoch, self.action = epoch, action

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            self.action(self.model)


def disconnect(model):
    raise KeyboardInterrupt("runtime disconnected")


def poison(model):
    model.set_weights([np.full_like(w, np.nan) for w in model.get_weights()])


# -- a dataset of your own: three classes, flat layout -------------------------

OWN_CLASSES = {"Field": "#C8B464", "Forest": "#1E7832", "Water": "#1E64C8"}
OWN_PALETTE = np.array([[0xC8, 0xB4, 0x64], [0x1E, 0x78, 0x32], [0x1E, 0x64, 0xC8]], np.uint8)


def block_labels(height, width, seed):
    """Labels 0..2 in 8x8 blocks, so every 16x16 patch holds several classes."""
    blocks = np.random.default_rng(seed).integers(0, 3, (height // 8, width // 8))
    return np.kron(blocks, np.ones((8, 8), np.int64)).astype(np.uint8)


def write_pair(root, stem, labels, *, folders=("images", "masks"), image_ext=".jpg",
               mask_ext=".png", mask=None):
    """Writes `stem` as an image (its pixels the labels times 80) and an RGB mask."""
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
    image = np.repeat((labels * 80)[..., None], 3, -1).astype(np.uint8)
    Image.fromarray(image).save(root / folders[0] / f"{stem}{image_ext}")
    mask = utils.labels_to_rgb(labels, OWN_PALETTE) if mask is None else mask
    Image.fromarray(mask).save(root / folders[1] / f"{stem}{mask_ext}")


def write_flat(root, n=5, size=(32, 48), **kwargs):
    """A flat dataset of `n` images `a0`, `a1`, ...; returns their labels by stem."""
    labels = {f"a{i}": block_labels(*size, seed=i) for i in range(n)}
    for stem, lab in labels.items():
        write_pair(root, stem, lab, **kwargs)
    return labels


def load_flat(root, **kwargs):
    """`load_dataset` of a flat dataset at 16 px with `OWN_CLASSES`, all of it for training."""
    defaults = {"classes": OWN_CLASSES, "val_fraction": 0}
    if "test_images" not in kwargs:
        defaults["test_fraction"] = 0
    kwargs = {**defaults, **kwargs}
    return utils.load_dataset(root, 16, **kwargs)


# -- scenes: small GeoTIFFs in UTM zone 40N, for the test_scene_*.py modules ------
# rasterio is optional (the modules that use these skip without it): imported when used.

CRS = "EPSG:32640"  # WGS 84 / UTM zone 40N, Dubai's
TILE = 32


def utm_transform(x):
    """0.5 m pixels, the top left corner `x` metres east of 500,000 E, 2,800,000 N."""
    from affine import Affine

    return Affine(0.5, 0.0, 500_000.0 + x, 0.0, -0.5, 2_800_000.0)


def write_raster(path, pixels, transform, **profile):
    import rasterio

    count, height, width = pixels.shape
    with rasterio.open(path, "w", driver="GTiff", height=height, width=width, count=count,
                       dtype=pixels.dtype, crs=CRS, transform=transform, **profile) as dst:
        dst.write(pixels)
    return path


def save_conv_model(path, seed):
    """A 3x3 convolution to six classes: tiny, sees its neighbours, differs by seed."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    keras.Model(inputs, keras.layers.Conv2D(6, 3, padding="same")(x)).save(path)
    return path


def read_labels(path):
    """The first band of the raster at `path`."""
    import rasterio

    with rasterio.open(path) as src:
        return src.read(1)


def statuses(records):
    return [record["status"] for record in records]


def stac_item(item_id, href, roles=("data",), key="image"):
    return {"type": "Feature", "stac_version": "1.0.0", "id": item_id,
            "geometry": None, "properties": {"datetime": "2024-05-01T07:00:00Z"},
            "links": [], "assets": {"thumbnail": {"href": "thumb.png"},
                                    key: {"href": href, "roles": list(roles)}}}
