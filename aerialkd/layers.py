"""Layers of the U-Net: on-device symmetry augmentation and device-invariant dropout."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import keras
from keras import layers
from keras import ops
from numpy.typing import ArrayLike

from .devices import replica_rows, replicas_in_sync


@keras.saving.register_keras_serializable(package="utils")
class DeviceInvariantDropout(layers.Dropout):
    """`keras.layers.Dropout` whose draws do not depend on how many devices share a batch.

    On one device it is `keras.layers.Dropout`, draw for draw. Under a
    `tf.distribute` strategy with several replicas (`data_parallel` on
    TensorFlow), Keras' `Dropout` draws every replica's mask from the same
    seed state, so the replicas repeat each other's draws and training does
    not follow one device's. This layer draws the mask of the whole batch
    on every replica and keeps the replica's own rows, so N devices drop the
    units one device drops (on JAX one program draws for the whole batch
    already). `noise_shape` is not supported.

    Args:
        rate: fraction of the units to drop, in `[0, 1)`.
        **kwargs: `seed`, `name`, ... as for `keras.layers.Dropout`.

    Example:

    >>> layer = DeviceInvariantDropout(0.5, seed=0)
    >>> np.unique(layer(np.ones((2, 4)), training=True)).tolist()  # dropped, or kept x 2
    [0.0, 2.0]
    """

    def __init__(self, rate: float, **kwargs: Any) -> None:
        if kwargs.get("noise_shape") is not None:
            raise ValueError("DeviceInvariantDropout does not support noise_shape; "
                             "use keras.layers.Dropout for it.")
        super().__init__(rate, **kwargs)

    def call(self, inputs: ArrayLike, training: bool = False) -> ArrayLike:
        if not training or self.rate == 0 or replicas_in_sync() == 1:
            return super().call(inputs, training=training)
        # tf.nn.experimental.stateless_dropout's arithmetic, as Keras' Dropout
        # runs it on TensorFlow, over this replica's rows of the batch's draw.
        draws = replica_rows(lambda shape: keras.random.uniform(
            shape, dtype=inputs.dtype, seed=self.seed_generator), ops.shape(inputs))
        kept = inputs * ops.cast(1 / (1 - self.rate), inputs.dtype)
        return ops.where(draws >= ops.cast(self.rate, inputs.dtype), kept,
                         ops.zeros_like(inputs))


@keras.saving.register_keras_serializable(package="utils")
class RandomSymmetry(layers.Layer):
    """Applies one random symmetry of the square to each image, in training.

    Draws, per image, whether to transpose, flip vertically and flip
    horizontally (the 8 symmetries of the square: 4 rotations by 90 degrees,
    each with or without a mirror). Returns the images and the `(N, 3)`
    draws, which `UndoSymmetry` uses to map the predictions back. Outside
    training it returns the images unchanged and zero draws. Runs in the
    compiled step, on the device; the draws come from a Keras `SeedGenerator`,
    and are those of one device however many share the batch (see
    `DeviceInvariantDropout`).

    Args:
        seed: seed of the draws.

    Example:

    >>> x = data.x_train[:4].astype("float32")
    >>> images, symmetry = RandomSymmetry(seed=0)(x, training=True)
    >>> np.array_equal(UndoSymmetry()([images, symmetry], training=True), x)
    True
    """

    def __init__(self, seed: int | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(
        self, images: ArrayLike, training: bool | None = None
    ) -> tuple[ArrayLike, ArrayLike]:
        batch = ops.shape(images)[0]
        if not training:
            return images, ops.zeros((batch, 3), "int32")
        height, width = images.shape[1:3]
        if height is not None and width is not None and height != width:
            raise ValueError(
                f"Random flips and rotations need square training patches, "
                f"got {height}x{width}."
            )
        symmetry = replica_rows(lambda shape: keras.random.randint(
            shape, 0, 2, seed=self.seed_generator), (batch, 3))
        return apply_symmetry(images, symmetry), symmetry

    def compute_output_spec(
        self, images: keras.KerasTensor, training: bool | None = None
    ) -> tuple[keras.KerasTensor, keras.KerasTensor]:
        return (keras.KerasTensor(images.shape, self.compute_dtype),
                keras.KerasTensor((images.shape[0], 3), "int32"))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package="utils")
class UndoSymmetry(layers.Layer):
    """Maps predictions of symmetry-transformed images back, in training.

    The other half of `RandomSymmetry`: called on `[outputs, symmetry]`, a
    model's outputs `(N, S, S, C)` for the transformed images and the `(N, 3)`
    draws `RandomSymmetry` returned, it undoes each image's symmetry, so the
    outputs line up with the untransformed images and their labels. Outside
    training it returns `outputs` unchanged.

    Args:
        **kwargs: `name`, `dtype`, ... as for `keras.layers.Layer` (float32
            unless given).

    Example:

    >>> outputs = np.arange(4.0).reshape(1, 2, 2, 1)  # of an image flipped upside down
    >>> undone = UndoSymmetry()([outputs, np.array([[0, 1, 0]])], training=True)
    >>> np.asarray(undone)[0, ..., 0].tolist()
    [[2.0, 3.0], [0.0, 1.0]]
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, inputs: Sequence[ArrayLike], training: bool | None = None) -> ArrayLike:
        outputs, symmetry = inputs
        if not training:
            return outputs
        return apply_symmetry(outputs, symmetry, inverse=True)

    def compute_output_spec(
        self, inputs: Sequence[keras.KerasTensor], training: bool | None = None
    ) -> keras.KerasTensor:
        return keras.KerasTensor(inputs[0].shape, self.compute_dtype)


def apply_symmetry(images: ArrayLike, symmetry: ArrayLike, inverse: bool = False) -> ArrayLike:
    """Transposes and flips each image as its row of `symmetry` says.

    Args:
        images: `(N, S, S, C)` tensor (square).
        symmetry: `(N, 3)` 0/1 tensor: transpose, flip rows, flip columns.
        inverse: undo the transform instead (the steps in reverse order).

    Returns:
        The transformed images, same shape.

    Example:

    >>> images = np.arange(4.0).reshape(1, 2, 2, 1)
    >>> np.asarray(apply_symmetry(images, np.array([[1, 0, 0]])))[0, ..., 0].tolist()
    [[0.0, 2.0], [1.0, 3.0]]
    """
    for column, transform in reversed(_SYMMETRY_STEPS) if inverse else _SYMMETRY_STEPS:
        chosen = ops.reshape(ops.cast(symmetry[:, column], "bool"), (-1, 1, 1, 1))
        images = ops.where(chosen, transform(images), images)
    return images


_SYMMETRY_STEPS = (  # (column of the draws, transform); all 8 symmetries compose from them
    (0, lambda x: ops.transpose(x, (0, 2, 1, 3))),
    (1, lambda x: ops.flip(x, axis=1)),
    (2, lambda x: ops.flip(x, axis=2)),
)


# Registered under its former, private name, which saved files hold.
@keras.saving.register_keras_serializable(package="utils", name="_SymmetryAverage")
class SymmetryAverage(layers.Layer):
    """The layer of `symmetry_ensemble`: the model's logits averaged over the 8 symmetries."""

    def __init__(self, model, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.model = model

    def call(self, images):
        height, width = images.shape[1:3]
        if height is not None and width is not None and height != width:
            raise ValueError(f"symmetry_ensemble needs square images, got {height}x{width}.")
        ones = ops.ones_like(images[:, :1, 0, 0], dtype="int32")  # (N, 1)
        total = 0.0
        for code in itertools.product((0, 1), repeat=3):
            symmetry = ones * ops.convert_to_tensor([code], "int32")
            logits = self.model(apply_symmetry(images, symmetry), training=False)
            total = total + ops.cast(apply_symmetry(logits, symmetry, inverse=True), "float32")
        return total / 8.0

    def compute_output_spec(self, images):
        return keras.KerasTensor((*images.shape[:3], self.model.output.shape[-1]), "float32")

    def get_config(self):
        return {**super().get_config(),
                "model": keras.saving.serialize_keras_object(self.model)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(config["model"])
        return cls(**config)
