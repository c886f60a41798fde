"""Many raster scenes: label rasters, STAC sidecars, a manifest and a mosaic, on any engine.

`segment_scenes` is the loop around `segment_scene` that thousands of scenes
need. It finds the scenes (`find_scenes`), skips those already done with the
same model and parameters, and hands the rest to an engine that runs and
retries them: this process, a Dask cluster (a local one or an existing one) or
Ray actors. It keeps the books (`scene_outputs`): a STAC Item beside each label
raster, a manifest of the run and a VRT mosaic of the outputs.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import keras

from .checks import check_count
from .classes import check_palette, class_names_for, generic_classes
from .scene_engines import check_engine, run_tasks
from .scene_outputs import (classes_differ, finished_labels, read_label_item,
                            write_mosaics)
from .scene_sources import find_scenes
from .scene_tasks import failed_record, file_sha256, scene_task
from .scenes import check_class_count, check_read_options
from .tiling import check_tiling

MANIFEST_NAME = "manifest.jsonl"
"""The file in `dst_dir` where the driver writes one JSON line per scene."""

STATUSES = ("ok", "skipped", "failed")
"""A scene's `status` in the records of `segment_scenes`."""


def segment_scenes(
    model: str | os.PathLike,
    sources: str | os.PathLike | dict | Sequence[str | os.PathLike | dict],
    dst_dir: str | os.PathLike,
    *,
    engine: Any = "local",
    workers: int | None = None,
    tile_size: int = 256,
    overlap: int | None = None,
    batch_size: int = 8,
    bands: Sequence[int] = (1, 2, 3),
    rescale: tuple[float, float] | None = None,
    class_names: Sequence[str] | None = None,
    palette: Any = None,
    cog: bool = True,
    overwrite: bool = False,
    retries: int = 2,
    polygons: bool = False,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Segments many raster scenes into label rasters, on this machine or a cluster.

    Each scene goes through `segment_scene` (so its labels are those of
    `predict_image`) and leaves in `dst_dir`, named after the scene (its file
    stem, after as many parent folders as tell apart scenes of one stem; or a
    STAC Item's id): `<name>_labels.tif`, a cloud-optimized GeoTIFF
    (tiles of `tile_size`, overviews resampled by mode, the CRS, transform,
    colour map, class names and nodata 255 of `segment_scene`); with
    `polygons`, `<name>_labels.geojson`; and last `<name>_labels.json`, a STAC
    Item (label extension, `label:type` "raster") with the status, the time,
    the pixels of each class and the scene's key: the SHA-256 of the model
    file, the source's resolved path (and STAC Item id), size and
    modification time, and the parameters. Files are written under hidden
    temporary names and renamed when complete, the sidecar last, so a killed
    worker never leaves a file that looks finished (a scene's earlier sidecar
    and polygons are removed before it runs); what it left is removed when
    its scene runs again (so run one call at a time in a `dst_dir`).

    Before submitting anything, scenes whose sidecar says "ok" with the same
    key are skipped (another model file or other parameters redo them; so
    does `overwrite`). A scene whose sidecar in `dst_dir` records another
    source (a file of the same name elsewhere, e.g. `2023/a.tif` and then
    `2024/a.tif`) is refused with an error before anything runs, unless
    `overwrite` is set. A scene's own error (an unreadable file, too few
    bands, ...) is recorded with its message and the others go on. The driver
    alone writes `manifest.jsonl` (a line per scene, as they finish) and a VRT
    mosaic of every finished label raster in `dst_dir` (its sidecar says "ok":
    this call's and earlier calls', in name order) that share a CRS:
    `labels.vrt`, or one `labels_<crs>.vrt` per CRS (while the batch runs, it
    leaves out the scenes being labelled again). A folder whose finished
    scenes have other class names is refused before anything runs. A scene
    keeps the name an earlier batch into `dst_dir` gave it (`find_scenes`
    names a file after the folders that tell it apart from the batch's others).

    Engines: "local" runs the scenes one after another in this process.
    "dask" starts a `dask.distributed.LocalCluster` of `workers` processes
    (default: one per core) of one thread each, TensorFlow's thread pools
    sized to the cores each has; a worker killed mid-scene is replaced and
    the scene retried up to `retries` times. A `dask.distributed.Client`, or
    a scheduler address such as "tcp://10.0.0.5:8786", uses an existing
    cluster: its workers need `aerialkd` installed and the model, the scenes
    and `dst_dir` at the same paths (a shared file system); lost workers are
    retried as its scheduler's `distributed.scheduler.allowed-failures` says.
    "ray" (if Ray is installed) runs `workers` actors that each load the
    model once, each asking for the cluster's CPUs divided among them (a
    fraction of one if `workers` outnumber them, so that all are placed).
    Each worker process loads the model once and keeps it. In a script, call
    this under `if __name__ == "__main__":`, since Dask starts its workers by
    spawning fresh Python processes.

    Args:
        model: path of a `.keras` model returning logits of at most 255
            classes.
        sources: the scenes: a path, a glob pattern (`"tiles/**/*.tif"`; a
            folder is refused, and the folders a pattern matches left out), a
            `.txt` file listing paths, patterns or Item files (one a line,
            relative to the list's folder; `#` starts a comment), a STAC Item
            (a dict, or the path of its `.json`; an ItemCollection's `.json`
            gives all its Items), or a list of any of these. An Item's scene
            is its asset keyed "visual", else "image", else its one asset with
            the role "data"; the asset must be a local (or mounted) file.
        dst_dir: the folder for the outputs (created). Its label rasters
            are never taken for scenes, should `sources` find them.
        engine: "local", "dask", "ray", a `dask.distributed.Client` or a
            Dask scheduler address.
        workers: processes for "dask" and "ray" (default: the cores); `None`
            for "local" and an existing cluster.
        tile_size: tile side, a multiple of 16.
        overlap: pixels shared by neighbouring tiles; `tile_size // 4` if
            `None`.
        batch_size: tiles per forward pass.
        bands: the three 1-based band indices to read as R, G, B.
        rescale: `None` for uint8 scenes; `(low, high)` maps other dtypes
            linearly to 0..255.
        class_names: one name per model output class; "class 0", ... if
            `None`.
        palette: `(classes, 3)` uint8 colours; generic colours if `None`.
        cog: cloud-optimized GeoTIFFs; `False` writes the plain tiled
            GeoTIFF of `segment_scene`.
        overwrite: redo scenes already done with the same key, and replace
            the outputs of another source of the same name.
        retries: times a scene is run again after its worker died (or an
            error outside the scene, e.g. loading the model).
        polygons: also write each scene's class regions as GeoJSON
            (`polygonize`, which holds a scene's whole label raster and its
            polygons in memory, unlike the labelling itself).
        progress: show a progress bar over the scenes.

    Returns:
        One record per scene, in the order of `sources`: a dict with
        `source` (the scene's path), `labels` (the label raster, `None` if
        it failed), `status` ("ok", "skipped" or "failed"), `error` (the
        message of a failure, else `None`), `seconds` (its time in this run)
        and `class_pixels` (class name -> pixels).

    Example:

    >>> student.save("student.keras")
    >>> scenes = [image for image, _ in data.files["test"]]  # 6 JPEGs in 3 folders
    >>> records = segment_scenes("student.keras", scenes, "labels",
    ...                          class_names=data.classes, progress=False)
    >>> [record["status"] for record in records]
    ['ok', 'ok', 'ok', 'ok', 'ok', 'ok']
    >>> import os
    >>> os.path.basename(records[0]["labels"])  # Tile 1/images/image_part_008.jpg's
    'Tile_1_images_image_part_008_labels.tif'
    """
    model_path = pathlib.Path(model).absolute()  # workers may run elsewhere
    if not model_path.is_file():
        raise FileNotFoundError(f"model {model_path} does not exist; pass the path of a "
                                f".keras file, e.g. "
                                f"results/models/student_distilled_s0.keras.")
    tile_size, overlap, batch_size = check_tiling(tile_size, overlap, batch_size)
    retries = check_count("retries", retries, minimum=0)
    bands, rescale = check_read_options(bands, rescale)
    workers = check_engine(engine, workers)
    keras_model = keras.saving.load_model(model_path)
    n_classes = keras_model.output_shape[-1]
    check_class_count(n_classes, f"model {model_path}")
    class_names = list(class_names_for(n_classes, class_names))
    palette = (generic_classes(n_classes)[1] if palette is None
               else check_palette(palette, n_classes))
    parameters = {"tile_size": tile_size, "overlap": overlap, "batch_size": batch_size,
                  "bands": bands, "rescale": rescale, "class_names": class_names,
                  "palette": palette.tolist(), "cog": bool(cog),
                  "polygons": bool(polygons)}
    dst_dir = pathlib.Path(dst_dir).absolute()
    sidecars = _read_sidecars(dst_dir)  # once: names, resume, and classes
    scenes = _earlier_names(find_scenes(sources, outputs_in=dst_dir), sidecars, dst_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    model_sha256 = file_sha256(model_path)

    records, done, tasks, clashes = [None] * len(scenes), [], [], []
    for index, scene in enumerate(scenes):
        try:
            task = scene_task(scene, index, dst_dir, model_path, model_sha256, parameters)
        except OSError as error:  # no file to look at: a failed record, no task
            done.append((index, failed_record(str(scene.path.absolute()), error)))
            continue
        sidecar = None if overwrite else sidecars.get(task["sidecar"])
        recorded = sidecar and sidecar["source"]  # None: an older sidecar, keyed without it
        if recorded and recorded != task["key_parts"]["source"]:
            clashes.append((task, recorded))
        elif sidecar is not None and _finished(task, sidecar):
            done.append((index, _skipped_record(task, sidecar)))
        else:
            tasks.append(task)
    if clashes:
        raise ValueError(_clash_message(clashes))
    _check_classes(sidecars, {task["sidecar"] for task in tasks}, class_names,
                   parameters["palette"])

    bar = keras.utils.Progbar(len(scenes), unit_name="scene") if progress else None
    counts = dict.fromkeys(STATUSES, 0)
    with open(dst_dir / MANIFEST_NAME, "w") as manifest:
        def finish(index, record):
            records[index] = record
            manifest.write(json.dumps(record) + "\n")
            manifest.flush()
            counts[record["status"]] += 1
            if bar is not None:
                bar.update(sum(counts.values()))

        for index, record in done:
            finish(index, record)
        if tasks:  # nothing to do: no engine is started
            # the scenes about to be labelled again leave the mosaic until they are
            # finished, which a batch stopped halfway would otherwise name, deleted
            redone = {task["labels"] for task in tasks}
            write_mosaics(dst_dir, [path for path in finished_labels(dst_dir)
                                    if str(path) not in redone])
            for task, record in run_tasks(engine, tasks, keras_model, workers, retries):
                finish(task["index"], record)
    write_mosaics(dst_dir, finished_labels(dst_dir))
    return records


# -- the resume check ------------------------------------------------------


def _finished(task, sidecar):
    """Whether `sidecar` (`read_label_item`'s) says the task is done: "ok", its key, its files."""
    if (sidecar["status"], sidecar["key"]) != ("ok", task["key"]):
        return False
    outputs = [task["labels"]] + ([task["polygons"]] if task["polygons"] else [])
    return all(pathlib.Path(p).is_file() for p in outputs)


def _clash_message(clashes):
    """The error for scenes whose outputs in `dst_dir` are another source's."""
    task, other = clashes[0]
    more = f" (and {len(clashes) - 1} more scenes likewise)" if len(clashes) > 1 else ""
    return (f"{task['sidecar']} records the scene {other}, not {task['key_parts']['source']}"
            f"{more}: both would be {pathlib.Path(task['labels']).name}. Pass another "
            f"dst_dir for these scenes, or overwrite=True to replace the outputs of the "
            f"other source.")


def _read_sidecars(dst_dir):
    """The readable sidecars in `dst_dir`: path -> `read_label_item`'s record."""
    items = {str(path): read_label_item(path) for path in sorted(dst_dir.glob("*_labels.json"))}
    return {path: item for path, item in items.items() if item is not None}


def _earlier_names(scenes, sidecars, dst_dir):
    """Scenes named as their outputs in `dst_dir` (its `sidecars`) already are, if any.

    A file's name depends on the batch (`a.tif` alone is "a", beside another
    folder's `a.tif` "2023_a"): a later batch must find and skip, or
    replace, the outputs an earlier one wrote for it.
    """
    earlier = {}
    for sidecar, item in sidecars.items():  # by path: the first name wins
        if item["source"]:
            earlier.setdefault(item["source"], pathlib.Path(sidecar).name[:-len("_labels.json")])
    if not earlier:
        return scenes
    named = [scene if scene.item is not None else scene._replace(
        name=earlier.get(str(scene.path.absolute().resolve()), scene.name)) for scene in scenes]
    names = collections.Counter(scene.name for scene in named)
    for scene in named:
        if names[scene.name] > 1:
            clash = [str(s.path) for s in named if s.name == scene.name]
            raise ValueError(f"{' and '.join(clash)} would all write {scene.name}_labels.tif "
                             f"(one of them named so by an earlier batch into {dst_dir}); "
                             f"segment them into different dst_dir folders.")
    return named


def _check_classes(sidecars, rewritten, class_names, palette):
    """Refuses a batch into a folder of finished scenes with other classes or colours
    (the folder's mosaic takes one colour map)."""
    colours = ["%02X%02X%02X" % tuple(colour) for colour in palette]
    for sidecar, item in sidecars.items():
        if sidecar in rewritten or item["status"] != "ok":
            continue
        if (item["classes"] not in (None, class_names)
                or item["colours"] not in (None, colours)):
            raise classes_differ(
                f"The finished scene {pathlib.Path(sidecar).with_suffix('.tif').name}",
                "this batch", pathlib.Path(sidecar).parent,
                (item["classes"] or class_names, class_names),
                (item["colours"] or colours, colours))


def _skipped_record(task, sidecar):
    return {"source": task["source"], "labels": task["labels"], "status": "skipped",
            "error": None, "seconds": 0.0, "class_pixels": sidecar["class_pixels"]}
