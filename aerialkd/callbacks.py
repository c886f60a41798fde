"""The callbacks of `fit_segmentation`: resumable randomness, best checkpoint, NaN stop."""

import csv
import io
import json
import os
import pathlib
import re
import shutil
import time

import keras
import numpy as np
from keras import ops

from .hosts import without_distribution, writes_files
from .models import save_model
from .run_files import RunFiles, RunProgress, write_into_place


class SyncEpoch(keras.callbacks.Callback):
    """Makes each epoch's randomness a function of the epoch number alone.

    Sets the training sequence's epoch (batch order, crops) and moves every seed
    generator (augmentation, dropout) to its initial state plus `[epoch, 0]`, so a run
    resumed by `BackupAndRestore` (which restores weights and optimizer, not
    seed states) draws exactly what an uninterrupted run draws. Must come
    before `BackupAndRestore` to record the states before any restore.
    """

    def __init__(self, sequence):
        super().__init__()
        self.sequence = sequence
        self._initial = {}

    def _seed_states(self):
        return [v for v in self.model.non_trainable_variables
                if v.path.endswith("seed_generator_state")]

    def on_train_begin(self, logs=None):
        self._initial = {v.path: ops.convert_to_numpy(v) for v in self._seed_states()}

    def on_epoch_begin(self, epoch, logs=None):
        self.sequence.set_epoch(epoch)
        for v in self._seed_states():
            start = self._initial[v.path]
            v.assign(start + np.array([epoch, 0], dtype=start.dtype))


def monitored_miou(model):
    names = [n for n in model.get_metrics_result() if re.fullmatch(r"miou\d+", n)]
    if len(names) != 1:
        raise ValueError(
            f"fit_segmentation selects the best epoch by the validation mean IoU "
            f"(a metric named like 'miou5'), but the model's metrics are "
            f"{sorted(model.get_metrics_result())}: compile it with "
            f"compile_segmentation.")
    return f"val_{names[0]}"


class EpochRecord(keras.callbacks.Callback):
    """Records the epochs finished so far, and their seconds over every stretch.

    A resumed run's first batches depend on the epochs already done, and its
    training time is the seconds recorded before the interruption plus the
    last stretch. After each epoch it writes the run's `RunProgress` (see
    `RunFiles.progress`), with `precision`, the dtype policy the run trains
    in, which a resumed run must share to restore its optimizer, and the
    `settings` it must share to draw the same batches.
    """

    def __init__(self, files: RunFiles, precision: str | None = None,
                 settings: dict | None = None):
        super().__init__()
        self.files = files
        self.precision, self.settings = precision, settings

    def on_train_begin(self, logs=None):
        self._earlier, self._start = self.files.progress().seconds, time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = self._earlier + time.perf_counter() - self._start
        self.files.record_progress(RunProgress(epoch + 1, seconds, self.precision,
                                               self.settings))


class SharedBackup(keras.callbacks.BackupAndRestore):
    """Keras' `BackupAndRestore`, on several processes: each restores, process 0 writes.

    Every process restores the same backup when a run resumes (JAX assigns
    a variable on all processes together), so the backup folder must be one
    they all read: the same folder on one machine, a shared file system
    across machines. Only process 0 saves and deletes it. On one process it
    is `BackupAndRestore`.
    """

    METADATA = "training_metadata.json"
    """The file in which Keras' `BackupAndRestore` records the epochs its backup holds."""
    WEIGHTS = "latest.weights.h5"
    """The file of the weights and optimizer state of Keras' backup."""

    @classmethod
    def restored_epochs(cls, folder: os.PathLike | str, repair: bool = True) -> int | None:
        """The epochs done that a run resuming from the backup in `folder` starts after.

        `None` if the backup records none. Keras saves an epoch's weights, then
        its record in place, so a kill can leave weights newer than the record,
        or a record cut short. With `repair` (one process: Keras keeps the
        checkpoint before, `*.bkp`, there alone) both are mended as Keras
        mends weights cut short: the weights and record of the epoch before
        are put back, and weights without any record are removed.
        """
        folder = pathlib.Path(folder)
        record, weights = folder / cls.METADATA, folder / cls.WEIGHTS
        before = {path: path.with_name(path.name + ".bkp") for path in (weights, record)}
        epochs = _read_epoch(record)
        if repair and epochs is None and weights.exists() and not record.exists():
            weights.unlink()  # the first epoch's, killed before its record: start again
        elif repair and all(path.exists() for path in before.values()) and (
                epochs is None or epochs == _read_epoch(before[record])):
            for path, earlier in before.items():  # killed between weights and record
                shutil.copyfile(earlier, path)
            epochs = _read_epoch(record)
        if epochs is None and record.exists():
            raise ValueError(
                f"{record} was cut short (a run killed while Keras wrote its backup) and "
                f"no earlier checkpoint is beside it: delete {folder} to train afresh "
                f"(the run's earlier files are kept in previous/).")
        return epochs

    def on_epoch_end(self, epoch, logs=None):
        if writes_files():
            with without_distribution():
                super().on_epoch_end(epoch, logs)

    def on_train_end(self, logs=None):
        if writes_files():
            super().on_train_end(logs)


class HistoryLogger(keras.callbacks.CSVLogger):
    """Keras' `CSVLogger` for a run that resumes: a row per epoch done, under one header.

    A run resumed from its backup appends to the file, which is first cut to
    the whole rows of its first `epochs_done` epochs: rows of an epoch that a
    killed run wrote before its backup (it runs again) and a row cut short by
    the kill go. `CSVLogger` takes its columns from each stretch's first epoch
    and appends rows without a new header, so a value logged in one stretch
    only (a callback added on resuming) would shift every later value under the
    wrong name; here a stretch takes the columns of the file's header: a value
    it lacks is "NA", a new one is left out.

    Args:
        filename: the CSV file; a fresh run (`epochs_done=0`) starts it anew.
        epochs_done: the epochs the run's backup restores.
        separator: the CSV separator.

    Example:

    >>> _ = pathlib.Path("history.csv").write_text(
    ...     "epoch,loss\\n0,0.9\\n1,0.7\\n2,0.6\\n3,0.")  # epochs 3-4 ran after the backup
    >>> logger = HistoryLogger("history.csv", epochs_done=2)
    >>> logger.on_train_begin(); logger.on_train_end()  # as fit calls them
    >>> pathlib.Path("history.csv").read_text().split()
    ['epoch,loss', '0,0.9', '1,0.7']
    """

    def __init__(self, filename: str, epochs_done: int = 0, separator: str = ","):
        super().__init__(filename, separator=separator, append=epochs_done > 0)
        self.epochs_done = epochs_done

    def on_train_begin(self, logs=None):
        path = pathlib.Path(self.filename)
        header = (_keep_rows(path, self.epochs_done, self.sep)
                  if self.append and path.exists() else None)
        super().on_train_begin(logs)
        if header and header[0] == "epoch":
            self.keys = header[1:]


def _keep_rows(path, epochs, separator):
    """Cuts a history CSV to the whole rows of its first `epochs` epochs; its header."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter=separator))
    if not rows:
        return None
    header, kept = rows[0], []
    for row in rows[1:]:
        if len(row) == len(header) and row[0].isdigit() and int(row[0]) == len(kept) < epochs:
            kept.append(row)
    if len(kept) + 1 != len(rows):
        text = io.StringIO()
        csv.writer(text, delimiter=separator).writerows([header, *kept])  # as CSVLogger does
        write_into_place(path, text.getvalue())
    return header


def _read_epoch(record):
    """The epoch a Keras backup record holds; `None` if it is missing or cut short."""
    try:
        return int(json.loads(record.read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class StopOnNaN(keras.callbacks.Callback):
    """Stops training on a non-finite epoch loss, and says where.

    Checks once per epoch, not per batch like `keras.callbacks.TerminateOnNaN`:
    reading a batch's loss would make the host wait for the device at every
    step. One NaN batch makes the epoch's mean loss NaN. `BestModelCheckpoint`
    refuses an epoch with a non-finite loss by itself, so the order of the two
    callbacks does not matter.
    """

    def __init__(self):
        super().__init__()
        self.stopped = None  # (epoch, loss) once stopped

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if self.stopped is None and loss is not None and not np.isfinite(loss):
            self.model.stop_training = True
            self.stopped = (epoch + 1, loss)


def improves(value, loss, best):
    """Whether an epoch of score `value` and training `loss` beats the `best` score so far.

    The rule of `BestModelCheckpoint`: a finite score above the best (the first
    of equal scores stays), of an epoch whose loss is finite.

    Example:

    >>> improves(0.5, 0.3, 0.4), improves(0.5, float("nan"), 0.4), improves(0.4, 0.3, 0.4)
    (True, False, False)
    """
    return (value is not None and bool(np.isfinite(value)) and bool(np.isfinite(loss))
            and value > best)


def best_epoch(history, monitor):
    """The epoch (from 1) whose model `BestModelCheckpoint` keeps, from a training history.

    Args:
        history: a history dict, as `fit_segmentation` returns or `load_run` reads.
        monitor: the maximised metric, e.g. "val_miou5".

    Returns:
        The epoch; `None` where no epoch `improves` on minus infinity.

    Example:

    >>> best_epoch({"loss": [1.0, float("nan"), 0.7], "val_miou5": [0.2, 0.6, 0.4]}, "val_miou5")
    3
    """
    best, kept = -np.inf, None
    losses = history.get("loss", [0.0] * len(history[monitor]))
    for epoch, (value, loss) in enumerate(zip(history[monitor], losses), start=1):
        if improves(value, loss, best):
            best, kept = value, epoch
    return kept


class BestModelCheckpoint(keras.callbacks.Callback):
    """Saves the best model by a monitored metric: a Distiller's student alone.

    `keras.callbacks.ModelCheckpoint(save_best_only=True, mode="max")` would
    save the whole model it trains, which for a `Distiller` is the teacher,
    the student and the optimizer; this saves the student, float32, without
    optimizer (`save_model`), keeps the best score beside it (`RunFiles.best`)
    so a resumed run goes on comparing with it, and never saves an epoch whose
    loss is not finite.

    Args:
        path: the `.keras` file to write.
        monitor: the logged metric to maximise, e.g. "val_miou5".
    """

    def __init__(self, path, monitor):
        super().__init__()
        self.path, self.monitor = pathlib.Path(path), monitor
        self.best = -np.inf

    def on_train_begin(self, logs=None):
        state = RunFiles.of_model(self.path).best
        if state.exists() and self.path.exists():  # resuming this run
            self.best = json.loads(state.read_text())["best"]

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value, loss = logs.get(self.monitor), logs.get("loss", 0.0)
        if not improves(value, loss, self.best):
            return
        self.best = float(value)
        with without_distribution():  # process 0 saves alone (see SharedBackup)
            save_model(getattr(self.model, "student", self.model), self.path)
        write_into_place(RunFiles.of_model(self.path).best,
                         json.dumps({"best": self.best, "epoch": epoch + 1,
                                     "monitor": self.monitor}))
