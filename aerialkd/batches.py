"""Batches for `fit`: patches in memory, random crops, patches streamed from files,
and the consistent crops of consistent teaching."""

from __future__ import annotations

import collections
import math
import os
import pathlib
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
from PIL import Image

from .checks import check_count
from .classes import ColorTable
from .files import decode_pair, read_image_sizes


MIXES = ("cutmix", "mixup")
"""The batch mixes `ConsistentCropSequence` can apply."""


def check_mix(mix: str | None, mix_probability: float) -> None:
    """Refuses a batch mix other than `MIXES` or `None`, or a probability outside [0, 1]."""
    if mix not in (*MIXES, None):
        raise ValueError(f"mix must be one of {MIXES} or None, got {mix!r}.")
    if not 0 <= mix_probability <= 1:
        raise ValueError(f"mix_probability must be in [0, 1], got {mix_probability!r}.")


class PatchSequence(keras.utils.PyDataset):
    """Batches of patches in a new order every epoch, drawn from the seed.

    The order of epoch `e` depends on `(seed, e)` alone, so a resumed run
    replays it. Augmentation happens in the model (`RandomSymmetry`), on the
    device, so a batch is a plain slice of the arrays.

    Args:
        x: uint8 images `(N, P, P, 3)`.
        y: labels `(N, P, P)`.
        batch_size: patches per batch.
        seed: seed of the order.
        teacher_logits: optional `(N, P, P, C)` logits of a frozen teacher
            for the same patches; batches are then `((x, logits), y)`, which
            `Distiller` uses instead of running the teacher.
        drop_remainder: whether to leave out the epoch's last batch when it
            is partial (the patches left out change with the order), so that
            every batch has `batch_size` patches, as `data_parallel` needs.

    Example:

    >>> sequence = PatchSequence(data.x_train, data.y_train, batch_size=16, seed=0)
    >>> len(sequence), [array.shape for array in sequence[0]]
    (27, [(16, 32, 32, 3), (16, 32, 32)])
    >>> len(sequence[26][0])  # the last batch holds the 420 - 26 * 16 patches left
    4
    >>> len(PatchSequence(data.x_train, data.y_train, 16, drop_remainder=True))
    26
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        batch_size: int = 16,
        seed: int = 0,
        teacher_logits: np.ndarray | None = None,
        drop_remainder: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(
                f"x and y must hold the same, non-zero number of patches; "
                f"got {len(x)} and {len(y)}."
            )
        if tuple(np.shape(y)[:3]) != tuple(np.shape(x)[:3]):
            raise ValueError(
                f"y must hold the labels (N, P, P) of the patches x {tuple(np.shape(x))}, got "
                f"shape {tuple(np.shape(y))}.")
        if teacher_logits is not None and tuple(teacher_logits.shape[:3]) != tuple(x.shape[:3]):
            raise ValueError(
                f"teacher_logits must be (N, P, P, C) logits of the patches x "
                f"{tuple(x.shape)}, got shape {tuple(teacher_logits.shape)}."
            )
        self.x, self.y = x, y
        self.teacher_logits = teacher_logits
        self.batch_size = check_count("batch_size", batch_size)
        self.seed = check_count("seed", seed, minimum=0)
        self.drop_remainder = drop_remainder
        if drop_remainder and len(x) < batch_size:
            raise ValueError(f"drop_remainder=True leaves no batch: {len(x)} patches are "
                             f"fewer than batch_size={batch_size}.")
        self.set_epoch(0)

    def __len__(self) -> int:
        if self.drop_remainder:
            return len(self.x) // self.batch_size
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(
        self, index: int
    ) -> tuple[np.ndarray, np.ndarray] | tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
        rows = np.sort(
            self._order[index * self.batch_size : (index + 1) * self.batch_size]
        )
        if self.teacher_logits is None:
            return self.x[rows], self.y[rows]
        return (self.x[rows], self.teacher_logits[rows]), self.y[rows]

    def set_epoch(self, epoch: int) -> None:
        """Draws the order of `epoch`: the same for a seed, whatever came before."""
        self.epoch = epoch
        self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.x))

    def on_epoch_end(self) -> None:
        self.set_epoch(self.epoch + 1)


class _CropSequence(keras.utils.PyDataset):
    """What the crop sequences share: checked sources, batches of rows, draws per epoch.

    A subclass draws its crops in `set_epoch(epoch)`, from `(seed, epoch)` alone,
    and calls `set_epoch(0)` at the end of its `__init__`. An image is drawn in
    proportion to the crop positions it holds (`_weights`).
    """

    def __init__(self, images, labels, patch_size, n_patches, batch_size, seed, **kwargs):
        super().__init__(**kwargs)
        _check_crop_sources(images, labels, patch_size)
        self.images, self.labels = images, labels
        self.patch_size, self.n_patches = patch_size, check_count("n_patches", n_patches)
        self.batch_size = check_count("batch_size", batch_size)
        self.seed = check_count("seed", seed, minimum=0)
        self._sizes = np.array([image.shape[:2] for image in images])
        self._room = self._sizes - patch_size + 1  # crop positions along each axis
        positions = self._room.prod(1).astype(np.float64)
        self._weights = positions / positions.sum()

    def __len__(self) -> int:
        return math.ceil(self.n_patches / self.batch_size)

    def _rows(self, index):
        """The crops of batch `index`."""
        return range(index * self.batch_size, min((index + 1) * self.batch_size, self.n_patches))

    def on_epoch_end(self) -> None:
        self.set_epoch(self.epoch + 1)


class RandomCropSequence(_CropSequence):
    """Batches of square crops from anywhere in whole images, new every epoch.

    A fixed grid of patches (`load_dataset`) shows the network the same
    `n` windows every epoch and drops the images' right and bottom margins
    (14 % of the real training pixels at 256). This draws `n_patches` crops
    per epoch instead: a crop position uniformly among all positions of all
    images (an image is drawn in proportion to the positions it holds),
    from `(seed, epoch)` alone, so a resumed run replays it. With
    `n_patches = len(data.x_train)` an epoch has as many steps as on the
    grid: the same budget, more distinct inputs.

    Args:
        images: list of uint8 images `(H, W, 3)` (`SegmentationDataset.whole_images`).
        labels: list of labels `(H, W)`, the same sizes.
        patch_size: side of the crops.
        n_patches: crops per epoch.
        batch_size: crops per batch.
        seed: seed of the crops.

    Example:

    >>> images, labels = data.whole_images("train")
    >>> sequence = RandomCropSequence(images, labels, data.patch_size, len(data.x_train))
    >>> [array.shape for array in sequence[0]]
    [(16, 32, 32, 3), (16, 32, 32)]
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        patch_size: int,
        n_patches: int,
        batch_size: int = 16,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(images, labels, patch_size, n_patches, batch_size, seed, **kwargs)
        self.set_epoch(0)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        p = self.patch_size
        crops = [(self.images[i][r : r + p, c : c + p], self.labels[i][r : r + p, c : c + p])
                 for i, r, c in (self._crops[k] for k in self._rows(index))]
        return np.stack([x for x, _ in crops]), np.stack([y for _, y in crops])

    def set_epoch(self, epoch: int) -> None:
        """Draws the crops of `epoch`: the same for a seed, whatever came before."""
        self.epoch = epoch
        rng = np.random.default_rng([self.seed, epoch])
        which = rng.choice(len(self.images), self.n_patches, p=self._weights)
        corners = np.floor(rng.uniform(size=(self.n_patches, 2)) * self._room[which])
        self._crops = np.column_stack([which, corners.astype(np.int64)])


class PatchStream(keras.utils.PyDataset):
    """Batches of patches read from the image files as they are needed.

    The streaming twin of `PatchSequence`, for datasets larger than memory:
    it holds the list of patches (file, row, column) and decodes an image
    only when a batch needs one of its patches, keeping the last
    `cache_size` decoded images (an LRU cache). Memory stays bounded by the
    cache and the batch, whatever the size of the dataset. Batches are
    `(images uint8 (B, P, P, 3), labels uint8 (B, P, P))`, for
    `model.fit`, `model.evaluate` and `Distiller` (which then runs its
    teacher on every batch).

    Without `shuffle`, patches come in the order of `load_dataset`'s arrays
    (image by image, rows first). With it, each epoch draws a new image
    order from `(seed, epoch)` and shuffles the patches within windows of
    `cache_size` images, so an image is decoded about once per epoch.

    Args:
        files: list of `(image_path, mask_path)` pairs
            (`SegmentationDataset.files[split]`).
        patch_size: side of the patches; images are cropped to multiples of
            it, as in `load_dataset`.
        batch_size: patches per batch.
        palette: class colours, uint8 `(n_classes, 3)` (`PALETTE` if
            `None`).
        ignore_colors: colours read as `IGNORE_INDEX` (see
            `mask_to_labels`).
        resize_masks: rescale masks to their images (nearest neighbour).
        shuffle: draw a new order every epoch.
        seed: seed of the order.
        cache_size: decoded images kept, >= 1.
        extra_colors: deprecated, see `mask_to_labels`.
        **kwargs: passed to `keras.utils.PyDataset` (`workers`, ...).

    Example:

    `SegmentationDataset.stream` makes one for a split. `model.fit`'s
    default `shuffle=True` reorders its batches at random again, so that
    consecutive steps come from different images; each image is then decoded
    several times an epoch. `shuffle=False` keeps the windows, decoding each
    image about once, but then a window's steps come in a row: on the Dubai
    data (48 training images, windows of 16) the validation score swung from
    epoch to epoch and the last epoch's model scored far lower
    (`results/README.md`). Keep Keras' shuffle unless decoding is what limits
    training, and then make `cache_size` a large share of the images.

    >>> stream = PatchStream(data.files["train"], patch_size=32, shuffle=True)
    >>> stream.num_patches, len(stream), [array.shape for array in stream[0]]
    (420, 27, [(16, 32, 32, 3), (16, 32, 32)])
    """

    def __init__(
        self,
        files: Sequence[tuple[os.PathLike | str, os.PathLike | str]],
        patch_size: int,
        batch_size: int = 16,
        *,
        palette: np.ndarray | None = None,
        ignore_colors: str | Sequence[str] | None = None,
        resize_masks: bool = False,
        shuffle: bool = False,
        seed: int = 0,
        cache_size: int = 16,
        extra_colors: Mapping[str, int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        files = [(pathlib.Path(image), pathlib.Path(mask)) for image, mask in files]
        if not files:
            raise ValueError("files must list at least one (image_path, mask_path) pair.")
        self.files = files
        self.patch_size = check_count("patch_size", patch_size)
        self.batch_size = check_count("batch_size", batch_size)
        self.shuffle, self.seed = bool(shuffle), check_count("seed", seed, minimum=0)
        self.cache_size = check_count("cache_size", cache_size)
        self.resize_masks = bool(resize_masks)
        self._table = ColorTable(palette, ignore_colors, extra_colors)
        sizes, _ = read_image_sizes([(str(i), i, m) for i, m in files], self.patch_size,
                                self.resize_masks)
        p = self.patch_size
        grid = [(i, r, c) for i, (h, w) in enumerate(sizes)
                for r in range(h // p) for c in range(w // p)]
        self._patches = np.array(grid, dtype=np.int64).reshape(-1, 3)
        self._cache = collections.OrderedDict()
        self._lock = threading.Lock()
        self.set_epoch(0)

    def __len__(self) -> int:
        return math.ceil(len(self._patches) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"Batch {index} of a PatchStream of {len(self)} batches.")
        rows = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        p = self.patch_size
        x = np.empty((len(rows), p, p, 3), np.uint8)
        y = np.empty((len(rows), p, p), np.uint8)
        for k, (i, r, c) in enumerate(self._patches[rows]):
            image, labels = self._load(int(i))
            x[k] = image[r * p : (r + 1) * p, c * p : (c + 1) * p]
            y[k] = labels[r * p : (r + 1) * p, c * p : (c + 1) * p]
        return x, y

    @property
    def num_patches(self) -> int:
        """Number of patches in one epoch."""
        return len(self._patches)

    def set_epoch(self, epoch: int) -> None:
        """Draws the order of `epoch`: the same for a seed, whatever came before."""
        self.epoch = epoch
        if not self.shuffle:
            self._order = np.arange(len(self._patches))
            return
        rng = np.random.default_rng([self.seed, epoch])
        images = rng.permutation(len(self.files))
        of_image = self._patches[:, 0]
        order = []
        for start in range(0, len(images), self.cache_size):
            window = np.flatnonzero(np.isin(of_image, images[start : start + self.cache_size]))
            order.append(rng.permutation(window))
        self._order = np.concatenate(order)

    def on_epoch_end(self) -> None:
        self.set_epoch(self.epoch + 1)

    def _load(self, i):
        with self._lock:
            if i in self._cache:
                self._cache.move_to_end(i)
                return self._cache[i]
        pair = decode_pair(*self.files[i], self._table, self.resize_masks)
        with self._lock:
            self._cache[i] = pair
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return pair

    def __getstate__(self):  # for worker processes: no lock, an empty cache
        state = dict(self.__dict__)
        state["_lock"], state["_cache"] = None, collections.OrderedDict()
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()


class ConsistentCropSequence(_CropSequence):
    """Strongly augmented crops for consistent teaching: teacher and student see one batch.

    "Knowledge distillation: a good teacher is patient and consistent" (Beyer
    et al., CVPR 2022): distillation pays when the teacher predicts on
    exactly the augmented image the student sees, with aggressive
    augmentation and long training. This draws `n_patches` crops per epoch
    from anywhere in the whole images, each at a random scale `s`
    (log-uniform in `scale`): a window of side `round(patch_size * s)`
    (capped at the image's smaller side) resized to `patch_size`, images
    bilinear, labels nearest (so labels stay class indices or
    `IGNORE_INDEX`); then one of the 8 symmetries of the square; then, with
    probability `mix_probability`, mixes each crop with another crop of its
    batch:

    - "cutmix": a box of the other crop (area a uniform fraction of the
      crop) is pasted in, its labels with it;
    - "mixup": `w * this + (1 - w) * other`, `w` uniform in [0, 1], rounded
      to uint8; the labels are those of the crop with the larger weight
      (a hard-label approximation: the teacher's soft targets carry the
      mix, the label loss sees the dominant image).

    Every draw comes from `(seed, epoch)` alone (as in `RandomCropSequence`),
    so a resumed run replays it. Augmentation happens here, on the host:
    train with a student built with `build_unet(augment=False)` and a
    teacher that runs live on each batch (a `Distiller` fed plain images,
    no cached logits), as `fit_segmentation(sampling="consistent")` does.
    Batches are `(uint8 images (B, P, P, 3), labels (B, P, P))`.

    Args:
        images: list of uint8 images `(H, W, 3)` (`SegmentationDataset.whole_images`).
        labels: list of labels `(H, W)`, the same sizes.
        patch_size: side of the crops.
        n_patches: crops per epoch.
        batch_size: crops per batch.
        seed: seed of the draws.
        scale: `(low, high)` range of the window side over `patch_size`.
        symmetry: apply a random symmetry of the square to each crop.
        mix: "cutmix", "mixup" or `None`.
        mix_probability: probability that a crop is mixed.

    Example:

    >>> images, labels = data.whole_images("train")
    >>> sequence = ConsistentCropSequence(images, labels, data.patch_size,
    ...                                   len(data.x_train), mix="cutmix")
    >>> [array.shape for array in sequence[0]]
    [(16, 32, 32, 3), (16, 32, 32)]
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        patch_size: int,
        n_patches: int,
        batch_size: int = 16,
        seed: int = 0,
        scale: tuple[float, float] = (0.5, 2.0),
        symmetry: bool = True,
        mix: str | None = "cutmix",
        mix_probability: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(images, labels, patch_size, n_patches, batch_size, seed, **kwargs)
        if np.ndim(scale) != 1 or len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {scale!r}.")
        if round(patch_size * scale[0]) < 1:
            raise ValueError(f"scale={scale!r} would crop windows of no pixel from patches "
                             f"of {patch_size}: low must be more than {0.5 / patch_size:.3g}.")
        check_mix(mix, mix_probability)
        self.scale, self.symmetry = (float(scale[0]), float(scale[1])), bool(symmetry)
        self.mix, self.mix_probability = mix, float(mix_probability)
        self.set_epoch(0)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self._rows(index)
        crops = [self._crop(k) for k in rows]
        x = np.stack([c for c, _ in crops])
        y = np.stack([c for _, c in crops])
        if self.mix is None or len(rows) < 2:
            return x, y
        x_mixed, y_mixed = x.copy(), y.copy()
        p = self.patch_size
        for j, k in enumerate(rows):
            if not self._mixed[k]:
                continue
            other = (j + 1 + self._partner[k] % (len(rows) - 1)) % len(rows)
            weight = self._weight[k]
            if self.mix == "cutmix":  # a box of area (1 - weight) from the other crop
                side = int(round(p * math.sqrt(1.0 - weight)))
                top, left = np.floor(self._box[k] * (p - side + 1)).astype(int)
                box = (slice(top, top + side), slice(left, left + side))
                x_mixed[j][box], y_mixed[j][box] = x[other][box], y[other][box]
            else:
                blend = weight * x[j].astype(np.float32) + (1 - weight) * x[other]
                x_mixed[j] = np.clip(np.round(blend), 0, 255).astype(x.dtype)
                y_mixed[j] = y[j] if weight >= 0.5 else y[other]
        return x_mixed, y_mixed

    def _crop(self, k):
        i, row, col, side, code = self.crops[k]
        p = self.patch_size
        image = self.images[i][row : row + side, col : col + side]
        label = self.labels[i][row : row + side, col : col + side]
        if side != p:
            image = np.asarray(Image.fromarray(image).resize((p, p), Image.BILINEAR))
            nearest = np.minimum(((np.arange(p) + 0.5) * side / p).astype(int), side - 1)
            label = label[nearest][:, nearest]
        if code & 1:
            image, label = image.transpose(1, 0, 2), label.T
        if code & 2:
            image, label = image[::-1], label[::-1]
        if code & 4:
            image, label = image[:, ::-1], label[:, ::-1]
        return np.ascontiguousarray(image), np.ascontiguousarray(label)

    def set_epoch(self, epoch: int) -> None:
        """Draws the crops and mixes of `epoch`: the same for a seed, whatever came before.

        Sets `crops`, one row `(image, row, column, side, symmetry code)` per crop.
        """
        self.epoch = epoch
        n, rng = self.n_patches, np.random.default_rng([self.seed, epoch])
        which = rng.choice(len(self.images), n, p=self._weights)
        s = np.exp(rng.uniform(np.log(self.scale[0]), np.log(self.scale[1]), n))
        sides = np.minimum(np.round(self.patch_size * s).astype(np.int64),
                           self._sizes[which].min(1))
        corners = np.floor(rng.uniform(size=(n, 2)) * (self._sizes[which] - sides[:, None] + 1))
        codes = rng.integers(0, 8, n) if self.symmetry else np.zeros(n, np.int64)
        self.crops = np.column_stack([which, corners.astype(np.int64), sides, codes])
        self._mixed = rng.uniform(size=n) < (self.mix_probability if self.mix else 0.0)
        self._partner = rng.integers(0, 2**31, n)
        self._weight = rng.uniform(size=n)
        self._box = rng.uniform(size=(n, 2))


def _check_crop_sources(images, labels, patch_size):
    check_count("patch_size", patch_size)
    if len(images) != len(labels) or not images:
        raise ValueError(
            f"images and labels must be non-empty lists of the same length; got "
            f"{len(images)} and {len(labels)}."
        )
    for i, (image, label) in enumerate(zip(images, labels)):
        if image.shape[:2] != label.shape[:2]:
            raise ValueError(f"Image {i} is {image.shape[:2]} but its labels are "
                             f"{label.shape[:2]}; they must match pixel for pixel.")
        if min(image.shape[:2]) < patch_size:
            raise ValueError(f"Image {i} is {image.shape[:2]}, smaller than one "
                             f"{patch_size}x{patch_size} crop.")
