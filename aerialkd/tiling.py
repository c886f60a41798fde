"""Whole images of any size, segmented with overlapping, blended tiles."""

from __future__ import annotations

import collections
import concurrent.futures
import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .checks import check_count
from .prediction import batch_predictor

if TYPE_CHECKING:
    import keras


def predict_image(
    model: keras.Model | Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    *,
    tile_size: int = 256,
    overlap: int | None = None,
    batch_size: int = 8,
    return_logits: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Segments a whole image of any size with overlapping tiles.

    The image is padded by reflection to cover a grid of `tile_size` tiles
    with stride `tile_size - overlap`; the logits of overlapping tiles are
    blended with weights that fall off towards tile borders (where a U-Net
    sees the least context), and the padding is cropped away. For a scene
    too large for memory, `segment_scene` runs the same blending band by
    band from a raster file.

    Args:
        model: model returning logits; must accept `tile_size` inputs.
        image: uint8 array `(H, W, 3)`, any H and W.
        tile_size: tile side, a multiple of 16.
        overlap: pixels shared by neighbouring tiles, `0 <= overlap <
            tile_size`; `tile_size // 4` if `None`.
        batch_size: tiles per forward pass.
        return_logits: also return the blended logits `(H, W, C)`.

    Returns:
        Labels `(H, W)`, or `(labels, logits)` with `return_logits=True`.

    Example:

    >>> images, _ = data.whole_images("test")
    >>> predict_image(student, images[0]).shape, images[0].shape
    ((136, 150), (136, 150, 3))
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or not image.shape[0] or not image.shape[1]:
        raise ValueError(f"image must be (H, W, 3) with H, W >= 1, got shape {image.shape}.")
    tile_size, overlap, batch_size = check_tiling(tile_size, overlap, batch_size)
    height, width = image.shape[:2]
    labels, logits = [], []

    def consume(top, band):
        if not labels:  # uint8 holds the labels of up to 256 classes
            labels.append(np.empty((height, width), np.min_scalar_type(band.shape[-1] - 1)))
        labels[0][top : top + len(band)] = band.argmax(-1)
        if return_logits:
            if not logits:
                logits.append(np.empty((height, width, band.shape[-1]), np.float32))
            logits[0][top : top + len(band)] = band

    blend_tiles(model, lambda start, stop: image[start:stop], height, width,
                 tile_size, overlap, batch_size, consume)
    return (labels[0], logits[0]) if return_logits else labels[0]


def check_tiling(tile_size, overlap, batch_size):
    """Validates `tile_size`, `overlap` and `batch_size`; returns them as plain ints.

    The overlap to use is returned (`tile_size // 4` for `None`).
    """
    check_count("batch_size", batch_size)
    if isinstance(tile_size, bool) or not isinstance(tile_size, (int, np.integer)) \
            or tile_size % 16 or tile_size < 16:
        raise ValueError(f"tile_size must be a multiple of 16, got {tile_size}.")
    tile_size = int(tile_size)
    overlap = tile_size // 4 if overlap is None else check_count("overlap", overlap, minimum=0)
    if not overlap < tile_size:
        raise ValueError(
            f"overlap must be in [0, tile_size={tile_size}), got {overlap}."
        )
    return tile_size, overlap, int(batch_size)


def blend_tiles(model, read_rows, height, width, tile_size, overlap, batch_size,
                 consume):
    """Blends overlapping tiles; calls `consume(top, logits)` for each band, top to bottom.

    The one tiling of `predict_image` and `segment_scene`. The image is
    padded by reflection (`np.pad(..., mode="symmetric")`) at its bottom and
    right to `tile_size + ceil((height - tile_size) / stride) * stride` rows
    (at least `tile_size`) and as many columns likewise, `stride = tile_size
    - overlap`, and cut into tiles at every multiple of `stride`. Each
    tile's logits are weighted by `w[i] * w[j]` (row `i`, column `j` of the
    tile), `w[k] = min(k + 1, tile_size - k, max(overlap, 1))`: a ramp across
    the overlap, flat inside. A pixel's logits are the weighted sum over its
    tiles divided by the sum of their weights.

    `read_rows(start, stop)` returns the image rows `[start, stop)`, all
    columns, `(rows, width, 3)`; it is asked for at most `tile_size` rows at
    a time. The padded image is never built: each row of tiles reads its
    strip, padded as above (rows mapped through the same padding of their
    indices). Tiles run in the same row-major batches and their weighted
    logits are summed in the same order as over a whole padded array, so the
    bands are bit-identical to it; only the `tile_size` rows under the
    current row of tiles are held.

    The model runs in the calling thread (so its device, distribution and
    dtype scopes apply); the blending and `consume` run in one worker
    thread, in order, at most two batches behind, so they overlap with the
    model's next batches (numpy, TensorFlow, JAX and GDAL release the GIL).
    An error in either thread is raised here.
    """
    stride = tile_size - overlap
    padded_h = tile_size + max(0, math.ceil((height - tile_size) / stride)) * stride
    padded_w = tile_size + max(0, math.ceil((width - tile_size) / stride)) * stride
    source_rows = np.pad(np.arange(height), (0, padded_h - height), mode="symmetric")
    corners = [(y, x) for y in range(0, padded_h - tile_size + 1, stride)
               for x in range(0, padded_w - tile_size + 1, stride)]
    ramp = np.minimum(np.arange(tile_size) + 1, np.arange(tile_size)[::-1] + 1)
    window = np.minimum(ramp, max(overlap, 1)).astype(np.float32)
    weight = np.outer(window, window)[..., None]
    predict = batch_predictor(model)
    strips = {}

    def strip(y):  # padded rows [y, y + tile_size), all padded columns
        if y not in strips:
            rows = source_rows[y : y + tile_size]
            first = int(rows.min())
            pixels = read_rows(first, int(rows.max()) + 1)[rows - first]
            strips[y] = np.pad(pixels, ((0, 0), (0, padded_w - width), (0, 0)),
                               mode="symmetric")
        return strips[y]

    blend = _TileBlender(tile_size, stride, padded_w, height, width, weight, consume)
    failed = threading.Event()

    def run(step, *args):  # in the worker; after an error, nothing more runs
        if failed.is_set():
            return
        try:
            step(*args)
        except BaseException:
            failed.set()
            raise

    with concurrent.futures.ThreadPoolExecutor(1, "blend_tiles") as worker:
        pending = collections.deque()
        try:
            for start in range(0, len(corners), batch_size):
                batch = corners[start : start + batch_size]
                for y in list(strips):
                    if y < batch[0][0]:
                        del strips[y]
                tiles = np.stack([strip(y)[:, x : x + tile_size] for y, x in batch])
                pending.append(worker.submit(run, blend.add, batch, predict(tiles)))
                while len(pending) > 2 or (pending and failed.is_set()):
                    pending.popleft().result()
            pending.append(worker.submit(run, blend.finish))
            while pending:
                pending.popleft().result()
        except BaseException:
            failed.set()  # an error here (or Ctrl+C): the worker stops too
            raise


class _TileBlender:
    """The running sums of `blend_tiles` over the `tile_size` rows of one row of tiles."""

    def __init__(self, tile_size, stride, padded_w, height, width, weight, consume):
        self.tile_size, self.stride = tile_size, stride
        self.height, self.width = height, width
        self.weight, self.consume = weight, consume
        self.total = None
        self.norm = np.zeros((tile_size, padded_w, 1), np.float32)
        self.top = 0  # padded row of total[0]: the top of the current row of tiles

    def add(self, corners, logits):
        if self.total is None:
            self.total = np.zeros((*self.norm.shape[:2], logits.shape[-1]), np.float32)
        size = self.tile_size
        for (y, x), tile_logits in zip(corners, logits):
            if y > self.top:  # a new row of tiles: rows above it get nothing more
                self._emit(y - self.top)
                for array in (self.total, self.norm):
                    array[: size - self.stride] = array[self.stride :].copy()
                    array[size - self.stride :] = 0
                self.top = y
            top = y - self.top
            self.total[top : top + size, x : x + size] += tile_logits * self.weight
            self.norm[top : top + size, x : x + size] += self.weight

    def finish(self):
        self._emit(self.tile_size)

    def _emit(self, rows):  # the blended rows [top, top + rows) inside the image
        rows = min(rows, self.height - self.top)
        if rows > 0:
            self.consume(self.top, self.total[:rows, : self.width]
                         / self.norm[:rows, : self.width])
