"""One scene of a batch as a task a worker runs: its key, its outputs, running it.

A task is a plain dict (it travels to Dask and Ray workers) naming the scene,
its outputs in the batch's folder and its key: what the outputs were made
from. `run_scene_task` writes the label raster, the polygons and, last, the
STAC sidecar that says the scene is finished; `segment_scenes` hands the tasks
to an engine (`scene_engines`) and skips those a sidecar already vouches for.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
import time
from typing import Any

import keras
import numpy as np

from .run_files import partial_leftovers, write_into_place
from .scene_outputs import label_item
from .scenes import polygonize, segment_scene


def polygons_path(labels: os.PathLike | str) -> pathlib.Path:
    """Where the polygons of the label raster `labels` go: beside it, `.geojson`.

    >>> polygons_path("out/a_labels.tif").as_posix()
    'out/a_labels.geojson'
    """
    return pathlib.Path(labels).with_suffix(".geojson")


def scene_task(scene: Any, index: int, dst_dir: pathlib.Path, model_path: pathlib.Path,
               model_sha256: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """The task of `scene` (a `find_scenes` scene): a dict a worker can run.

    Its `key` is the SHA-256 of `key_parts`: the model file's SHA-256, the
    source's resolved path, STAC Item id, size and modification time, and
    `parameters` (those of `segment_scenes`). Raises `OSError` if the
    source cannot be read.
    """
    stem = f"{scene.name}_labels"
    path = scene.path.absolute()
    stat = path.stat()
    key_parts = {"model_sha256": model_sha256, "source": str(path.resolve()),
                 "source_item": scene.item.get("id") if scene.item else None,
                 "source_size": stat.st_size, "source_mtime_ns": stat.st_mtime_ns,
                 "parameters": parameters}
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()
    labels = dst_dir / f"{stem}.tif"
    return {"index": index, "source": str(path), "name": scene.name, "item": scene.item,
            "item_path": str(scene.item_path.absolute()) if scene.item_path else None,
            "labels": str(labels), "sidecar": str(dst_dir / f"{stem}.json"),
            "polygons": str(polygons_path(labels)) if parameters["polygons"] else None,
            "key": key, "key_parts": key_parts, "model": str(model_path),
            "model_sha256": model_sha256, "threads": None, "parameters": parameters}


def file_sha256(path: os.PathLike | str) -> str:
    """The SHA-256 of a file's bytes, read a MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def failed_record(source: str, error: BaseException) -> dict[str, Any]:
    """The record of a scene that failed outside its task (or whose workers all died)."""
    return {"source": source, "labels": None, "status": "failed",
            "error": f"{type(error).__name__}: {error}", "seconds": None,
            "class_pixels": None}


def run_scene_task(task: dict[str, Any], model: keras.Model | None = None) -> dict[str, Any]:
    """Runs one scene: the label raster, its polygons, then (last) its sidecar.

    The scene's earlier sidecar, labels and polygons are removed first, so a
    run stopped halfway leaves no output of an earlier run under the scene's
    names, and its scene runs again.

    Args:
        task: a `scene_task`.
        model: the loaded model in this process ("local"); a worker
            process passes `None`, and loads the task's model once and keeps
            it (`worker_model`).

    Returns:
        The scene's record (see `segment_scenes`). An error of the scene is
        its record ("failed"); an error outside it (loading the model,
        writing the sidecar) is raised, for the engine to retry.
    """
    started, clock = time.time(), time.perf_counter()
    if model is None:
        model = worker_model(task["model"], task["model_sha256"], task["threads"])
    parameters = task["parameters"]
    labels = pathlib.Path(task["labels"])
    # An earlier run's sidecar would vouch for the new labels until this run's
    # replaced it, and its labels and polygons, left by a run stopped here, would
    # pass for this one's outputs: all go first.
    for earlier in (pathlib.Path(task["sidecar"]), labels, polygons_path(labels)):
        earlier.unlink(missing_ok=True)
    _remove_leftovers(labels)
    try:
        result = segment_scene(
            model, task["source"], labels, tile_size=parameters["tile_size"],
            overlap=parameters["overlap"], batch_size=parameters["batch_size"],
            bands=parameters["bands"], rescale=parameters["rescale"],
            class_names=parameters["class_names"],
            palette=np.asarray(parameters["palette"], np.uint8), cog=parameters["cog"])
        if task["polygons"]:
            _polygonize_into_place(labels, pathlib.Path(task["polygons"]),
                                   parameters["class_names"])
        error = None
    except Exception as exception:  # the scene's own error: recorded, the batch goes on
        result, error = None, f"{type(exception).__name__}: {exception}"
        for stale in filter(None, (task["labels"], task["polygons"])):
            pathlib.Path(stale).unlink(missing_ok=True)
    record = {"source": task["source"], "labels": None if error else str(labels),
              "status": "failed" if error else "ok", "error": error,
              "seconds": time.perf_counter() - clock,
              "class_pixels": result["class_pixels"] if result else None}
    item = label_item(
        record, class_names=parameters["class_names"], palette=parameters["palette"],
        key=task["key"], key_parts=task["key_parts"], model_path=task["model"],
        started=started, labels_path=labels,
        nodata_pixels=result["nodata_pixels"] if result else None,
        polygons_path=task["polygons"], cog=parameters["cog"], source_item=task["item"],
        source_item_path=task["item_path"])
    write_into_place(task["sidecar"], json.dumps(item, indent=1))
    return record


@functools.lru_cache(maxsize=1)
def worker_model(path: str, sha256: str, threads: int | None) -> keras.Model:
    """The model of a worker process, loaded once and kept for its next scenes.

    `sha256` keys the cache: a new model file at the same path is loaded anew.
    `threads` sizes TensorFlow's thread pools, if TensorFlow has not started.
    """
    if threads and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # TensorFlow already runs in this process: its pools stay
            pass
    return keras.saving.load_model(path)


def _remove_leftovers(labels):
    """Removes the temporary files and folders a killed attempt at a scene left."""
    for partial in partial_leftovers(labels):  # segment_scene's, and GDAL's beside them
        partial.unlink(missing_ok=True)
    polygons = polygons_path(labels)
    for folder in labels.parent.glob(f".{polygons.name}.*"):  # _polygonize_into_place's
        shutil.rmtree(folder, ignore_errors=True)


def _polygonize_into_place(labels, dst_path, class_names):
    """`polygonize` into a hidden folder beside `dst_path`, then renamed into place."""
    folder = pathlib.Path(tempfile.mkdtemp(prefix=f".{dst_path.name}.",
                                           dir=dst_path.parent))
    try:
        polygonize(labels, folder / dst_path.name, class_names=class_names)
        os.replace(folder / dst_path.name, dst_path)
    finally:
        for leftover in folder.iterdir():
            leftover.unlink()
        folder.rmdir()
