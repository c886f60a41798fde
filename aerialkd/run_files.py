"""The files of a training run: one owner for their names; files written whole or not at all."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pathlib
import time
import uuid
from collections.abc import Sequence
from typing import Any


def partial_path(path: os.PathLike | str, kind: str = "") -> pathlib.Path:
    """A hidden temporary file beside `path`, of this writer alone, to rename into place.

    `.<name>.<random><kind>.partial`: two writers of one path never write into
    one file, and `partial_leftovers` finds what a killed writer left.

    Example:

    >>> name = partial_path("labels.tif", ".cog").name  # .labels.tif.<random>.cog.partial
    >>> name.startswith(".labels.tif."), name.endswith(".cog.partial")
    (True, True)
    """
    path = pathlib.Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{kind}.partial")


def partial_leftovers(path: os.PathLike | str) -> list[pathlib.Path]:
    """The temporary files of `partial_path` beside `path`, and files GDAL added to them."""
    path = pathlib.Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.partial*"))


def write_into_place(path: os.PathLike | str, data: str | bytes) -> None:
    """Writes `data` to a hidden temporary file beside `path`, then renames it to `path`.

    The rename is atomic on one file system: `path` is the old file or the
    whole new one, never a part, whenever the process is killed. Text is
    written as UTF-8.

    Args:
        path: the file to write.
        data: its contents: text, or bytes (e.g. another file's, to copy it).

    Example:

    >>> write_into_place("notes.json", '{"status": "ok"}')
    >>> open("notes.json").read()
    '{"status": "ok"}'
    """
    path = pathlib.Path(path)
    partial = partial_path(path)
    try:
        if isinstance(data, bytes):
            partial.write_bytes(data)
        else:
            partial.write_text(data, encoding="utf-8")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


@dataclasses.dataclass(frozen=True)
class RunProgress:
    """How far an unfinished run has come, over all its stretches.

    What `RunFiles.progress` reads from `backup_<name>/epochs_done.json` and
    `RunFiles.record_progress` writes there after each epoch.

    Attributes:
        epochs: the epochs finished (a resumed run starts at the next one).
        seconds: the seconds of training they took, summed over every stretch
            of a run that was interrupted and resumed.
        precision: the dtype policy they trained in (e.g. "mixed_float16"),
            which the run's optimizer state depends on; `None` if not recorded.
        settings: what else a resumed run must share with them to draw what
            an uninterrupted run draws (`fit_segmentation`'s batch size, seed,
            sampling); `None` if not recorded.

    Example:

    >>> files = RunFiles("runs", "student")
    >>> files.record_progress(RunProgress(epochs=2, seconds=30.5, precision="float32"))
    >>> files.progress()
    RunProgress(epochs=2, seconds=30.5, precision='float32', settings=None)
    """

    epochs: int = 0
    seconds: float = 0.0
    precision: str | None = None
    settings: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class RunFiles:
    """Where the files of the training run `name` live in `folder`.

    `fit_segmentation` writes the model, its best score, the history and the
    backup; the notebooks' helpers add the run record; the experiment scripts
    add a record of a started run. Every name is spelled here and nowhere else.

    Attributes:
        folder: the folder of the run's files (a `str` becomes a `pathlib.Path`).
        name: the run's name, the stem of its files (e.g. "teacher").

    Example:

    >>> files = RunFiles("runs", "teacher")
    >>> files.model.as_posix(), files.history.name, files.record.name
    ('runs/teacher.keras', 'teacher_history.json', 'teacher_run.json')
    """

    folder: pathlib.Path
    name: str

    def __post_init__(self):
        object.__setattr__(self, "folder", pathlib.Path(self.folder))
        if not self.name or "/" in self.name or "\\" in self.name:
            raise ValueError(f"name is the stem of the run's files and must not be empty or "
                             f"hold a path separator, got {self.name!r}.")

    @classmethod
    def of_model(cls, path: os.PathLike | str) -> RunFiles:
        """The run whose model is the `.keras` file `path`."""
        path = pathlib.Path(path)
        return cls(path.parent, path.stem)

    @property
    def model(self) -> pathlib.Path:
        """The best model by the validation mean IoU (`<name>.keras`)."""
        return self.folder / f"{self.name}.keras"

    @property
    def best(self) -> pathlib.Path:
        """The best score and its epoch, for a resumed run (`<name>.best.json`)."""
        return self.folder / f"{self.name}.best.json"

    @property
    def history_csv(self) -> pathlib.Path:
        """The history, appended epoch by epoch (`<name>_history.csv`)."""
        return self.folder / f"{self.name}_history.csv"

    @property
    def history(self) -> pathlib.Path:
        """The history of all epochs, written when training ends (`<name>_history.json`)."""
        return self.folder / f"{self.name}_history.json"

    @property
    def record(self) -> pathlib.Path:
        """Where, when and how the run was trained (`<name>_run.json`)."""
        return self.folder / f"{self.name}_run.json"

    @property
    def started(self) -> pathlib.Path:
        """The settings of a run that has started and not finished (`<name>_started.json`)."""
        return self.folder / f"{self.name}_started.json"

    @property
    def backup(self) -> pathlib.Path:
        """Keras' `BackupAndRestore` folder of an unfinished run (`backup_<name>`)."""
        return self.folder / f"backup_{self.name}"

    @property
    def epochs_done(self) -> pathlib.Path:
        """How many epochs an unfinished run has finished, and in how many seconds
        of training over all its stretches (`backup_<name>/epochs_done.json`)."""
        return self.backup / "epochs_done.json"

    def progress(self) -> RunProgress:
        """How far the unfinished run has come (read from `epochs_done`).

        A fresh `RunProgress()` (no epochs, no seconds) before the run starts
        and after it finishes, when its backup is gone.

        Example:

        >>> RunFiles("runs", "teacher").progress()  # nothing trained yet
        RunProgress(epochs=0, seconds=0.0, precision=None, settings=None)
        """
        if not self.epochs_done.exists():
            return RunProgress()
        done = json.loads(self.epochs_done.read_text())
        return RunProgress(int(done.get("epochs_done", 0)), float(done.get("seconds", 0.0)),
                           done.get("precision"), done.get("settings"))

    def record_progress(self, progress: RunProgress) -> None:
        """Writes `progress` to `epochs_done`, whole (see `write_into_place`).

        Example:

        >>> files = RunFiles("runs", "teacher")
        >>> files.record_progress(RunProgress(epochs=3, seconds=42.0, precision="float32"))
        >>> files.progress().epochs, files.seconds_trained()
        (3, 42.0)
        """
        self.epochs_done.parent.mkdir(parents=True, exist_ok=True)
        write_into_place(self.epochs_done, json.dumps(
            {"epochs_done": progress.epochs, "seconds": progress.seconds,
             "precision": progress.precision, "settings": progress.settings}))

    def seconds_trained(self) -> float:
        """The seconds of training an unfinished run's finished epochs took so far.

        Summed over every stretch of a run that was interrupted and resumed
        (`progress().seconds`); 0.0 before the run starts and after it
        finishes, when its backup is gone. A run's whole training time is
        this, read before `fit_segmentation` resumes it, plus the time the
        call takes.

        Example:

        >>> RunFiles("runs", "teacher").seconds_trained()  # nothing trained yet
        0.0
        """
        return self.progress().seconds

    def existing(self) -> list[pathlib.Path]:
        """The run's files and folders that exist."""
        paths = (self.model, self.best, self.history_csv, self.history, self.record,
                 self.started, self.backup)
        return [path for path in paths if path.exists()]

    def archive(self, paths: Sequence[pathlib.Path] | None = None) -> pathlib.Path | None:
        """Moves the run's files to `previous/<name>-<time>/`, so a new run overwrites nothing.

        Args:
            paths: the files to move (default: all of `existing()`); those
                that do not exist are skipped.

        Returns:
            The archive folder (a new one each time), or `None` when there
            was nothing to move.
        """
        paths = self.existing() if paths is None else [p for p in paths if p.exists()]
        if not paths:
            return None
        stem = self.folder / "previous" / f"{self.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        for n in itertools.count(1):  # two archives in one second keep both
            archive = stem if n == 1 else stem.with_name(f"{stem.name}-{n}")
            try:
                archive.mkdir()
                break
            except FileExistsError:
                continue
        for path in paths:
            path.rename(archive / path.name)
        return archive
