"""Compiling and fitting a segmentation model or `Distiller`: one way to train."""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import keras
import numpy as np

from .checks import check_count
from .classes import IGNORE_INDEX
from .files import cut_patches
from .hosts import LocalRows, gather_json, local_batches, process_count, writes_files
from .devices import data_parallel_size
from .batches import ConsistentCropSequence, PatchSequence, RandomCropSequence, check_mix
from .layers import RandomSymmetry
from .losses import SegmentationLoss
from .distiller import Distiller, distillation_settings
from .metrics import AnnotatedPixelAccuracy, check_labelled_classes, miou_name
from .prediction import predict_logits
from .run_files import RunFiles, write_into_place
from .callbacks import (BestModelCheckpoint, EpochRecord, HistoryLogger, SharedBackup, StopOnNaN,
                        SyncEpoch, monitored_miou)

if TYPE_CHECKING:
    from .datasets import SegmentationDataset


def compile_segmentation(
    model: keras.Model,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 1e-3,
    loss: keras.losses.Loss | None = None,
    steps_per_execution: int = 1,
    labelled_classes: Sequence[int] | None = None,
) -> keras.Model:
    """Compiles a model (or `Distiller`) with Adam, the loss and mIoU metrics.

    Metrics: `miou<K>`, the mean IoU over the K `labelled_classes` (on the
    Dubai data `miou5`, without Unlabeled: what model selection monitors),
    and `pixel_acc`; both ignore unannotated pixels. The number of classes is
    the model's (its last axis).

    Args:
        model: a model from `build_unet`, or a `Distiller`.
        learning_rate: Adam's learning rate, a float or a
            `keras.optimizers.schedules.LearningRateSchedule`.
        loss: student loss; `SegmentationLoss(n_classes=...)` if `None`.
        steps_per_execution: training steps per call from Python.
        labelled_classes: class indices the mean IoU averages over, e.g. a
            dataset's `labelled_classes` (on the Dubai data, all but
            Unlabeled: `miou5`); every class if `None`.

    Returns:
        The model, compiled.

    Example:

    >>> model = compile_segmentation(build_student(n_classes=3),
    ...                              labelled_classes=(0, 1, 2))
    """
    n_classes = _output_classes(model)
    labelled = check_labelled_classes(labelled_classes, n_classes)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=loss or SegmentationLoss(n_classes=n_classes),
        metrics=[
            keras.metrics.IoU(n_classes, target_class_ids=list(labelled),
                              sparse_y_pred=False, ignore_class=IGNORE_INDEX,
                              name=miou_name(labelled)),
            AnnotatedPixelAccuracy(),
        ],
        steps_per_execution=steps_per_execution,
    )
    return model


def _output_classes(model):
    return int(getattr(model, "student", model).output.shape[-1])


def _check_label_values(data, n_classes):
    """Refuses labels outside the model's classes: the loss would count such a pixel
    as annotated and learn nothing from it (its one-hot row is all zeros)."""
    for split in ("train", "val"):
        labels = np.asarray(getattr(data, f"y_{split}"))
        bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= n_classes))
        if bad.any():
            raise ValueError(
                f"data.y_{split} holds the labels {np.unique(labels[bad])[:5].tolist()} "
                f"({int(bad.sum())} pixels) outside the model's {n_classes} classes: labels "
                f"must be 0 to {n_classes - 1}, or IGNORE_INDEX ({IGNORE_INDEX}) where "
                f"nothing is annotated. Build the model with the dataset's n_classes, or "
                f"set those pixels to IGNORE_INDEX.")


SAMPLINGS = ("grid", "random", "consistent")
"""Training inputs `fit_segmentation` can draw: the fixed patches, random crops, or
scaled, flipped and mixed crops for consistent teaching (`ConsistentCropSequence`)."""


def check_sampling(sampling):
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}.")


def _whole_training_images(data, sampling):
    """The training images and masks that crops are drawn from, read from disk.

    Where `data.x_train` holds the grid patches of those images, their masks
    must hold the labels of `data.y_train`: a dataset whose patch labels were
    replaced (`unlabelled_elsewhere`, `pseudo_labelled`, or by hand) would
    otherwise train on the masks it meant to hide or replace.
    """
    if "train" in data.relabelled:
        raise ValueError(
            f"sampling={sampling!r} draws crops from the training masks on disk, but this "
            f"dataset's training labels were changed in memory (unlabelled_elsewhere or "
            f"pseudo_labelled): those labels would be ignored. Train with "
            f"sampling='grid', which reads data.y_train.")
    images, labels = data.whole_images("train")
    on_disk = [cut_patches(mask, data.patch_size) for mask in labels]
    if on_disk and sum(map(len, on_disk)) == len(data.y_train):
        changed = (np.concatenate(on_disk) != data.y_train).reshape(len(data.y_train), -1)
        n = int(changed.any(axis=1).sum())
        if n:
            raise ValueError(
                f"sampling={sampling!r} draws crops from the training masks on disk, but "
                f"{n} of the {len(data.y_train)} patches of data.y_train differ from them "
                f"(a dataset from unlabelled_elsewhere or pseudo_labelled?): those labels "
                f"would be ignored. Train with sampling='grid', which reads data.y_train.")
    return images, labels


def fit_segmentation(
    model: keras.Model,
    data: SegmentationDataset,
    *,
    epochs: int,
    output_dir: os.PathLike | str,
    name: str,
    batch_size: int = 16,
    seed: int = 0,
    verbose: str | int = "auto",
    callbacks: Sequence[keras.callbacks.Callback] = (),
    cache_teacher: bool = True,
    sampling: str = "grid",
    mix: str | None = "cutmix",
    mix_probability: float = 0.5,
) -> dict[str, list[float]]:
    """Trains a compiled model or `Distiller`, checkpointing every epoch.

    The run's files are `RunFiles(output_dir, name)`:

    - `BackupAndRestore` under `output_dir/backup_<name>`: rerun after an
      interruption (a Colab disconnect), training resumes from the last
      finished epoch;
    - the best model by the validation mean IoU (`miou5` on Dubai) is saved to
      `output_dir/<name>.keras` (for a `Distiller`, the student alone);
    - the history is appended to `output_dir/<name>_history.csv` and written
      to `output_dir/<name>_history.json` when training ends;
    - a NaN or infinite loss stops training and raises `FloatingPointError`
      saying which checkpoint was kept (the broken weights never replace it).

    A fresh run (no backup of `name`) moves an earlier run's model, best
    score, history (its CSV too, of a run interrupted before it ended) and
    record to `output_dir/previous/` (`RunFiles.archive`), so none of them is
    mistaken for this run's, and nothing is lost.

    A run resumed after an interruption sees the same batches, augmentation
    and dropout draws as an uninterrupted one, so it ends with the same
    weights (on a deterministic backend and device). Augmentation is part of
    the model (`build_unet(augment=True)`).

    Under a `data_parallel()` spanning several processes (JAX on several
    hosts, see `initialize_processes`), `batch_size` is the global batch:
    each process feeds its own rows of the batch one process would draw,
    and of each validation batch, so training and the logged metrics are
    those of one process with the same `batch_size`. Process 0 alone writes
    the files above; every process reads the backup to resume, so
    `output_dir` must be a folder they all read (a shared file system
    across machines). A `Distiller`'s teacher runs at every step there
    (`cache_teacher` is ignored).

    Args:
        model: compiled model (see `compile_segmentation`) or `Distiller`.
        data: a `SegmentationDataset` (train and val splits are used).
        epochs: total number of epochs.
        output_dir: folder for checkpoints and histories.
        name: file stem of the saved model and history.
        batch_size: patches per batch.
        seed: seed of the batch order.
        verbose: passed to `fit`.
        callbacks: extra Keras callbacks. They run before the history's row
            is written, so what they add to an epoch's logs (e.g.
            `KDWeightSchedule`'s `alpha`) is in the history.
        cache_teacher: for a `Distiller`, run its teacher once over the
            training and validation patches before training and feed those
            logits with the images, instead of running the teacher at every
            step. The targets are the same (the teacher is frozen and sees the
            images unaugmented); the host holds them (`N * P * P * C` float32).
            With `sampling="random"` or `"consistent"` only the validation
            logits are cached: the training crops are new every epoch, so the
            teacher runs at every step. With the `Distiller`'s feature term
            on, nothing is cached (a warning says so): the teacher's features
            are needed at every step.
        sampling: "grid" trains on the fixed patches `data.x_train`;
            "random" on `len(data.x_train)` crops per epoch drawn anywhere
            in the whole images of `data.files["train"]`
            (`RandomCropSequence`); "consistent" on as many crops at random
            scales, symmetries and mixes (`ConsistentCropSequence`), for
            consistent teaching: the teacher (if any) runs on exactly the
            batch the student sees, so the model's own augmentation must be
            off (`build_unet(augment=False)`; an error says so otherwise).
            The crops' labels are the masks on disk, so a dataset whose
            `y_train` was changed (`unlabelled_elsewhere`, `pseudo_labelled`)
            is refused: train it on the grid. Validation always uses the
            fixed patches.
        mix, mix_probability: the batch mix of `sampling="consistent"`
            ("cutmix", "mixup" or `None`) and its probability per crop.

    Returns:
        The history as a dict of lists, over all epochs including resumed
        ones.

    Example:

    One epoch of a small U-Net on a few patches of `data`:

    >>> import dataclasses, os
    >>> few = dataclasses.replace(data, x_train=data.x_train[:32], y_train=data.y_train[:32],
    ...                           x_val=data.x_val[:8], y_val=data.y_val[:8])
    >>> model = compile_segmentation(build_unet(4), labelled_classes=few.labelled_classes)
    >>> history = fit_segmentation(model, few, epochs=1, output_dir="runs", name="unet",
    ...                            verbose=0)
    >>> sorted(history), len(history["val_miou5"])
    (['epoch', 'loss', 'miou5', 'pixel_acc', 'val_loss', 'val_miou5', 'val_pixel_acc'], 1)
    >>> sorted(os.listdir("runs"))  # the best model, its score, the history; no backup left
    ['unet.best.json', 'unet.keras', 'unet_history.csv', 'unet_history.json']
    """
    if not model.compiled:
        raise ValueError(
            "Compile the model before training it, e.g. "
            "`compile_segmentation(model)`."
        )
    if getattr(data, "x_train", None) is None:
        raise ValueError(
            "fit_segmentation trains on a dataset held in memory, and this one is "
            "streamed (load_dataset(..., in_memory=False)): train with "
            "`model.fit(data.stream('train'), validation_data=data.stream('val'))`, "
            "or load it with in_memory=True."
        )
    if len(data.x_val) == 0:
        raise ValueError("The dataset has no validation patches: set val_per_tile >= 1 "
                         "(the Kaggle tiles) or val_fraction > 0 (a flat folder) in "
                         "load_dataset.")
    check_count("epochs", epochs)
    batch_size = check_count("batch_size", batch_size)
    check_count("seed", seed, minimum=0)
    _check_label_values(data, _output_classes(model))
    check_sampling(sampling)
    check_mix(mix, mix_probability)  # for every sampling: a typo is never silently ignored
    whole = None if sampling == "grid" else _whole_training_images(data, sampling)
    if sampling == "consistent":
        _check_no_model_augmentation(model)
    if cache_teacher and getattr(model, "feature_weight", 0):
        warnings.warn("cache_teacher=True is ignored: the Distiller's feature term needs "
                      "the teacher's bottleneck features, so the teacher runs at every step.")
        cache_teacher = False
    if cache_teacher and isinstance(model, Distiller) and process_count() > 1:
        warnings.warn("cache_teacher=True is ignored on several processes: the teacher "
                      "runs at every step (predict_logits runs on one process only).")
        cache_teacher = False
    replicas = _check_replica_batch(model, batch_size, len(data.x_train))
    _one_step_per_execution_on_tf_replicas(model, replicas)
    files = RunFiles(output_dir, name)
    writer = writes_files()  # on several processes (see data_parallel), process 0 alone
    # A run trains in one precision, which its record names. (Only float16 brings
    # its own optimizer, Keras' LossScaleOptimizer: a backup of a float16 run does
    # not even restore into another one's optimizer, or back.)
    precision = getattr(model, "student", model).dtype_policy.name
    progress = files.progress()  # of an interrupted run, which this call resumes
    recorded = progress.precision
    if files.backup.exists() and recorded is not None and recorded != precision:
        why = ("the optimizer's state (its loss scale in float16) would not load, and the "
               "resumed run would start its learning-rate schedule again"
               if "mixed_float16" in (recorded, precision) else
               "its record would name one precision for a run trained in two")
        raise ValueError(
            f"The backup in {files.backup} trained in {recorded}, and this model computes "
            f"in {precision} (a T4 trains in mixed_float16, a CPU in float32, newer GPUs "
            f"in mixed_bfloat16): {why}. Resume on the same kind of device, or with the "
            f"model in {recorded} (with_dtype_policy(model, {recorded!r})), or delete "
            f"{files.backup} to train afresh.")
    # A resumed run draws what an uninterrupted one draws only with the same batches,
    # epochs (a schedule's length), data, backend and distillation (as JSON has them:
    # a numpy seed or probability is recorded as a plain number)
    settings = {"batch_size": batch_size, "seed": int(seed),
                "sampling": sampling, "epochs": int(epochs),
                "train_patches": len(data.x_train), "backend": keras.backend.backend(),
                "distillation": distillation_settings(model)}
    if sampling == "consistent":
        settings.update(mix=mix, mix_probability=float(mix_probability))
    changed = {key: value for key, value in (progress.settings or {}).items()
               if settings.get(key) != value}
    if changed:
        raise ValueError(
            f"The backup in {files.backup} trained with {changed}, and this call asks for "
            f"{ {key: settings.get(key) for key in changed} }: the resumed run would not be "
            f"the run it continues. Pass {changed} to resume it, or delete {files.backup} "
            f"to train afresh.")
    if writer:
        files.folder.mkdir(parents=True, exist_ok=True)
    train_logits, val_x = None, data.x_val
    if cache_teacher and isinstance(model, Distiller):
        val_x = (data.x_val, predict_logits(model.teacher, data.x_val, batch_size))
        if sampling == "grid":
            train_logits = predict_logits(model.teacher, data.x_train, batch_size)
    n_crops = len(data.x_train)  # for random and consistent crops
    if replicas > 1:  # whole batches only
        n_crops -= n_crops % batch_size
    if sampling == "random":
        train = RandomCropSequence(*whole, data.patch_size,
                                   n_crops, batch_size, seed)
    elif sampling == "consistent":
        train = ConsistentCropSequence(*whole, data.patch_size,
                                       n_crops, batch_size, seed, mix=mix,
                                       mix_probability=mix_probability)
    else:
        train = PatchSequence(data.x_train, data.y_train, batch_size, seed,
                              teacher_logits=train_logits, drop_remainder=replicas > 1)
    val_x, val_y = _pad_to_replicas(val_x, data.y_val, replicas)
    # On several processes each feeds its own rows of every batch (itself on one)
    (val_x, val_y), val_batch_size = local_batches((val_x, val_y), batch_size)
    if process_count() > 1:
        train = LocalRows(train)
    if writer and not files.backup.exists():  # a fresh run: an older run's files, which
        # this run's would mix with, go aside (an interrupted one's history too)
        files.archive([files.model, files.history, files.record, files.history_csv,
                       files.best])
    # Build model, metrics and optimizer on one validation patch now: fit would
    # otherwise pull a training batch to do it, which shifts the batch order of
    # the first epoch of a resumed run. BackupAndRestore needs them built too.
    # (one patch per device: a device given none breaks the summed loss)
    model.test_on_batch(*local_batches(
        _pad_to_replicas(data.x_val[:1], data.y_val[:1], replicas), replicas)[0])
    # Keras prefetches batches before the callbacks' on_epoch_begin, so the
    # sequence must know a resumed run's epoch before fit starts: the epochs
    # Keras' backup restores. Our record (`progress`, written after it) agrees
    # unless a kill fell between the two: then it lacks the last epoch's seconds.
    # (on several processes no earlier checkpoint is kept: a cut record is an error)
    restored = SharedBackup.restored_epochs(files.backup, repair=process_count() == 1)
    seen = gather_json(progress.epochs if restored is None else restored)  # by every process
    if len(set(seen)) > 1:
        raise RuntimeError(
            f"The processes see different backups in {files.backup} (epochs done, by "
            f"process: {seen}), and each must restore the one process 0 wrote: train "
            f"with an output_dir every process reads (on several machines, a shared "
            f"file system).")
    sequence = getattr(train, "sequence", train)  # within LocalRows
    sequence.set_epoch(seen[0])
    monitor = monitored_miou(model)
    best = BestModelCheckpoint(files.model, monitor=monitor)
    stop_on_nan = StopOnNaN()
    model.fit(
        train,
        # The sequence shuffles itself, seeded per epoch. Keras' own shuffle
        # would reorder its batches again from Python's global `random`, which
        # a resumed run cannot replay.
        shuffle=False,
        validation_data=(val_x, val_y),
        validation_batch_size=val_batch_size,
        epochs=epochs,
        # At an epoch's end its history row and best model are written before
        # the backup, and the record of epochs done last: a run killed in
        # between resumes from the epoch before and writes them again (the
        # extra rows are cut when it resumes), never missing one.
        callbacks=[
            SyncEpoch(sequence),
            # before the history row, so what they add to the logs is in it
            *callbacks,
            # on several processes, the others only train
            *([HistoryLogger(str(files.history_csv), epochs_done=seen[0]), best]
              if writer else []),
            stop_on_nan,
            # every process restores, process 0 writes; on one process a backup cut
            # short by a kill (an epoch's weights half-written) falls back to the
            # epoch before, which the record of epochs done, written after it,
            # still names (on several, each would repair the shared files at once)
            SharedBackup(str(files.backup), double_checkpoint=process_count() == 1),
            *([EpochRecord(files, precision, settings)] if writer else []),
        ],
        verbose=verbose if writer else 0,
    )
    history = gather_json(read_history(files.history_csv) if writer else None)[0]
    if writer:
        write_into_place(files.history, json.dumps(history, indent=1))
    if stop_on_nan.stopped:
        epoch, loss = stop_on_nan.stopped
        kept = (f"the best checkpoint so far ({best.monitor} {best.best:.4f}) is kept "
                f"at {best.path}" if best.path.exists() and np.isfinite(best.best) else
                "no checkpoint had been saved yet")
        raise FloatingPointError(
            f"Training stopped: the loss became {loss} in epoch {epoch}; {kept}. "
            f"Lower the learning rate or check the data for bad values.")
    return history


def _check_no_model_augmentation(model):
    trained = getattr(model, "student", model)
    if any(isinstance(layer, RandomSymmetry) for layer in trained.layers):
        raise ValueError(
            f"sampling='consistent' augments the batch on the host, so that a teacher "
            f"sees exactly what the student sees, but the model {trained.name!r} also "
            f"augments inside itself (RandomSymmetry). Build it with "
            f"build_unet(augment=False) (build_student(augment=False)).")


def _check_replica_batch(model, batch_size, n_train):
    """The number of devices `model` trains on; checks they divide `batch_size`."""
    replicas = data_parallel_size(model)
    if replicas > 1 and (batch_size % replicas or batch_size > n_train):
        fits = min(batch_size, n_train) // replicas * replicas
        advice = (f"pass e.g. batch_size={fits}" if fits else
                  "there are fewer training patches than devices: train on fewer devices")
        raise ValueError(
            f"Under data_parallel on {replicas} devices, batch_size must be a multiple "
            f"of {replicas} and at most the {n_train} training patches (every batch is "
            f"split evenly), got batch_size={batch_size}: {advice}.")
    return replicas


def _one_step_per_execution_on_tf_replicas(model, replicas):
    """One step a call for a model TensorFlow trains on several devices.

    Keras fails to run several steps a call under a `tf.distribute` strategy
    ("You must feed a value for placeholder tensor", keras-team/keras#19246):
    on Kaggle's two T4s, `steps_per_execution=8` stopped at the first step. The
    results are the same with 1; only the host waits on the devices more often.
    """
    if keras.backend.backend() == "tensorflow" and replicas > 1 \
            and model.steps_per_execution > 1:
        warnings.warn(f"steps_per_execution={model.steps_per_execution} is set to 1 for "
                      f"training on {replicas} devices with TensorFlow, where Keras fails "
                      f"to run several steps a call (keras-team/keras#19246); the results "
                      f"are the same.")
        model.steps_per_execution = 1
        model.train_function = model.test_function = model.predict_function = None


def _pad_to_replicas(x, y, replicas):
    """Pads validation patches to a multiple of `replicas`: black, unannotated.

    The padding's labels are `IGNORE_INDEX`, so the metrics and
    `SegmentationLoss` leave it out (a padded batch still counts as a full one
    in the mean loss, and a `Distiller`'s KD term sees the padding).
    """
    extra = -len(y) % replicas
    if not extra:
        return x, y
    pad = lambda a, value=0: np.concatenate(  # noqa: E731
        [a, np.full((extra, *a.shape[1:]), value, a.dtype)])
    x = tuple(pad(a) for a in x) if isinstance(x, tuple) else pad(x)
    return x, pad(y, IGNORE_INDEX)


def read_history(path: os.PathLike | str) -> dict[str, list[float]]:
    """Reads a history CSV (from `fit_segmentation`) into a dict of lists.

    `fit_segmentation` appends a row per epoch to `<name>_history.csv`
    (`RunFiles.history_csv`) as training goes, so this reads the epochs of a
    run that is still training or was interrupted.

    Args:
        path: the CSV file, one column per metric and a row per epoch.

    Returns:
        A dict mapping each column to its values as floats (NaN where an
        epoch logged no value); `{}` for a file without rows.

    Example:

    >>> np.savetxt("unet_history.csv", [[0, 1.25, 0.31], [1, 0.75, 0.42]], fmt="%g",
    ...            delimiter=",", header="epoch,loss,val_miou5", comments="")  # as CSVLogger
    >>> read_history("unet_history.csv")
    {'epoch': [0.0, 1.0], 'loss': [1.25, 0.75], 'val_miou5': [0.31, 0.42]}
    """
    with open(path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    return {key: [float("nan") if r[key] in ("", "NA") else float(r[key]) for r in rows]
            for key in rows[0]}
