"""The notebooks' conveniences: runs that are loaded or trained, and their records."""

from __future__ import annotations

import json
import math
import os
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras

from .devices import mixed_precision_policy
from .datasets import SegmentationDataset
from .models import with_dtype_policy
from .distiller import Distiller, distillation_settings
from .run_files import RunFiles, write_into_place
from .training import compile_segmentation, fit_segmentation
from .profiles import COMMITTED_MODELS, Profile, run_info


def saved_model_path(profile: Profile, name: str) -> pathlib.Path | None:
    """Where the finished model `name` is saved, or `None`.

    This run's models folder first (`profile.models_dir/<name>.keras`), then,
    for the full profile, the models committed with the repository
    (`COMMITTED_MODELS`, the ones the rendered notebooks show), so that a
    notebook opened alone in a fresh Colab runtime can go on from them.
    A run is finished when its record (`<name>_run.json`) is written and no
    backup of it is left. An interrupted run in this run's folder (say, on
    Drive, after a Colab runtime disconnected) gives `None`, whatever was
    committed: its model is only its best epoch so far, and training it
    again resumes it from the backup.

    Args:
        profile: the `Profile`.
        name: the model's file stem, e.g. "teacher" or "student_scratch_s0".

    Returns:
        A `pathlib.Path`, or `None` when neither folder has it.

    Example:

    >>> profile = load_profile("full", output_dir="outputs")  # nothing trained here yet
    >>> saved_model_path(profile, "teacher").relative_to(REPO_ROOT).as_posix()
    'results/models/teacher.keras'
    """
    if RunFiles(profile.models_dir, name).backup.exists():  # unfinished here: resume it
        return None
    files = _saved_run(profile, name, lambda f: (f.model.exists() and f.record.exists()
                                                 and not f.backup.exists()))
    return None if files is None else files.model


def saved_models(profile: Profile, pattern: str) -> list[pathlib.Path]:
    """The finished models whose names match `pattern`, each as `saved_model_path` finds it.

    Args:
        profile: the `Profile`.
        pattern: a glob pattern of model names, e.g. "*_s[0-9]*" for every
            run of a seed.

    Returns:
        The paths, by name: this run's model where it has one, else (full
        profile) the committed one; unfinished runs and other profiles' are
        left out.

    Example:

    >>> profile = load_profile("full", output_dir="outputs")  # nothing trained here yet
    >>> [path.name for path in saved_models(profile, "student_scratch_s[0-9]")]
    ['student_scratch_s0.keras', 'student_scratch_s1.keras', 'student_scratch_s2.keras']
    """
    folders = [profile.models_dir] + ([COMMITTED_MODELS] if profile.name == "full" else [])
    names = sorted({path.stem for folder in folders for path in folder.glob(f"{pattern}.keras")})
    return [path for name in names if (path := saved_model_path(profile, name)) is not None]


def _saved_run(profile, name, found, committed=True):
    """The `RunFiles` of `name` in the first folder where `found(files)` holds.

    A run recorded under another profile is not this one's: with one
    `$SSSI_OUTPUT` for both, the full profile would take the tiny one's.
    """
    folders = [profile.models_dir] + (
        [COMMITTED_MODELS] if committed and profile.name == "full" else [])
    return next((RunFiles(f, name) for f in folders
                 if found(RunFiles(f, name)) and _of_profile(RunFiles(f, name), profile)),
                None)


def _of_profile(files, profile):
    """Whether the run of `files` is of `profile`, as its record says (if it has one)."""
    record = _read_record(files)
    return record is not None and record.get("profile", profile.name) == profile.name


def _read_record(files):
    """The run record of `files`: `{}` where it has none, `None` where it is not one.

    A record cut short, or a file that holds no dict, is not a finished run's.
    """
    if not files.record.exists():
        return {}
    try:
        record = json.loads(files.record.read_text())
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def load_run(
    path: os.PathLike | str,
) -> tuple[keras.Model, dict[str, list[float]], dict[str, Any]]:
    """Loads a saved model with its training history and run record.

    Args:
        path: a `.keras` file saved by `fit_segmentation`; its history and
            its record (where, when and how it was trained) are beside it
            (`RunFiles.history`, `RunFiles.record`).

    Returns:
        `(model, history, record)`; the history and record are `{}` where
        their file is missing.

    Example:

    >>> teacher, history, record = load_run(COMMITTED_MODELS / "teacher.keras")
    >>> record["device"], round(max(history["val_miou5"]), 3)
    ('NVIDIA H200', 0.705)
    """
    files = RunFiles.of_model(path)
    history, record = (json.loads(p.read_text()) if p.exists() else {}
                       for p in (files.history, files.record))
    return keras.models.load_model(files.model), history, record


def saved_history(profile: Profile, name: str,
                  committed: bool = True) -> dict[str, list[float]] | None:
    """The training history of the run `name`, where `saved_model_path` would look.

    For runs whose history is kept without their model (the sweep's).

    Args:
        profile: the `Profile`.
        name: the run's file stem, e.g. "sweep_scratch".
        committed: also look in the committed models (full profile);
            `False` for this run's folder alone, e.g. to train again what
            was committed but keep what this runtime finished.

    Returns:
        The history dict, or `None` when no history of `name` is found.

    Example:

    >>> profile = load_profile("full", output_dir="outputs")  # nothing trained here yet
    >>> len(saved_history(profile, "sweep_scratch")["val_miou5"])  # the sweep's epochs
    20
    """
    files = _saved_run(profile, name, lambda f: f.history.exists(), committed)
    return None if files is None else json.loads(files.history.read_text())


def saved_record(profile: Profile, name: str, committed: bool = True) -> dict[str, Any] | None:
    """The run record (`<name>_run.json`) of the run whose history `saved_history` reads.

    Where, when and how it was trained: backend, device, date, epochs, seed.

    Args:
        profile: the `Profile`.
        name: the run's file stem, e.g. "sweep_scratch".
        committed: as for `saved_history`.

    Returns:
        The record dict, or `None` when that run has none (or no history).

    Example:

    >>> profile = load_profile("full", output_dir="outputs")  # nothing trained here yet
    >>> saved_record(profile, "sweep_scratch")["epochs"]
    20
    """
    files = _saved_run(profile, name, lambda f: f.history.exists(), committed)
    if files is None or not files.record.exists():
        return None
    return _read_record(files)


def describe_run(path: os.PathLike | str, record: dict[str, Any]) -> str:
    """One line on a saved model: which file, and where, when and how it was trained.

    Example:

    >>> _, _, record = load_run(COMMITTED_MODELS / "teacher.keras")
    >>> print(describe_run(COMMITTED_MODELS / "teacher.keras", record))
    ... # doctest: +NORMALIZE_WHITESPACE
    teacher.keras (committed in results/models): 100 epochs, jax, NVIDIA H200,
    2026-11-28, mixed_bfloat16; trained in 4.5 min
    """
    path = pathlib.Path(path)
    where = ("committed in results/models" if path.parent == COMMITTED_MODELS
             else f"in {path.parent}")
    how = ", ".join(str(record[k]) for k in ("backend", "device", "date", "precision")
                    if k in record)
    epochs = f"{record['epochs']} epochs, " if "epochs" in record else ""
    seconds = record.get("train_seconds")
    took = "" if seconds is None else f"; trained in {_duration(seconds)}"
    return f"{path.name} ({where}): {epochs}{how}{took}"


def _duration(seconds):
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


def write_run_record(profile: Profile, name: str, **settings: Any) -> pathlib.Path:
    """Writes the record of the run `name`: where, when and how it was trained.

    The record (`RunFiles.record`, `<name>_run.json` beside the model) holds
    `run_info(profile)` (backend, Keras, device, date, budget) and the
    `settings` given, e.g. `precision`, `train_seconds` or the distillation's
    `alpha` and `temperature`.

    Args:
        profile: the `Profile`; the record goes into its `models_dir`.
        name: the run's file stem, e.g. "student_scratch_s0".
        **settings: entries to add to `run_info(profile)`; they replace
            entries of the same name.

    Returns:
        The path written.

    Example:

    >>> import json
    >>> profile = load_profile("tiny", output_dir="run")
    >>> profile.models_dir.mkdir(parents=True)  # as fit_segmentation makes it
    >>> path = write_run_record(profile, "student", epochs=1, precision="float32")
    >>> record = json.loads(path.read_text())
    >>> path.as_posix(), record["profile"], record["epochs"], record["precision"]
    ('run/models/student_run.json', 'tiny', 1, 'float32')
    """
    path = RunFiles(profile.models_dir, name).record
    write_into_place(path, json.dumps({**run_info(profile), **settings}, indent=1))
    return path


def train_model(
    model: keras.Model,
    data: SegmentationDataset,
    profile: Profile,
    *,
    name: str,
    epochs: int | None = None,
    seed: int | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: str | int = "auto",
    **fit_options: Any,
) -> tuple[keras.Model, dict[str, list[float]], dict[str, Any]]:
    """Compiles and fits one model of the series with the profile's recipe, and records it.

    The notebooks' shorthand for the two library steps: `compile_segmentation`
    (Adam with the profile's learning-rate schedule, the dataset's mean IoU)
    and `fit_segmentation` (best checkpoint by validation mean IoU,
    resumption after an interruption) under `profile.models_dir`, then
    `write_run_record` with the precision, the distillation settings and the
    training time (of a resumed run: the seconds its epochs finished before the
    interruption took, plus the whole last stretch). Build `model` (cast with
    `with_dtype_policy`, wrapped in a `Distiller` for distillation) after
    `keras.utils.set_random_seed(seed)` for a reproducible run.

    Args:
        model: an uncompiled model from `build_unet`, or a `Distiller`.
        data: the `SegmentationDataset`.
        profile: the `Profile` (budget and folders).
        name: file stem of the saved model, history and record.
        epochs: overrides `profile.epochs`.
        seed: seed of the batch order; `profile.seed` if `None`.
        callbacks: extra Keras callbacks (e.g. a `KDWeightSchedule`).
        verbose: passed to `fit`.
        **fit_options: more arguments of `fit_segmentation` (`sampling`,
            `mix`, `mix_probability`, `cache_teacher`); `sampling` defaults
            to `profile.sampling`. They are recorded too.

    Returns:
        `(model, history, record)` of the best epoch, as `load_run` gives.

    Example:

    >>> profile = load_profile("tiny", output_dir="outputs")
    >>> data = profile_dataset(profile)
    >>> student, history, record = train_model(build_student(), data, profile,
    ...                                        name="student", epochs=1, verbose=0)
    >>> record["epochs"], record["distillation"]
    (1, {'kind': 'none'})
    """
    if not isinstance(data, SegmentationDataset) or not data.in_memory:
        raise ValueError(
            f"train_model trains on a SegmentationDataset loaded into memory, got "
            f"{'a streamed one' if isinstance(data, SegmentationDataset) else repr(data)}: "
            f"pass profile_dataset(profile), or load_dataset(..., in_memory=True). A "
            f"streamed dataset trains with plain Keras fit on data.stream(...), as in "
            f"notebook 07.")
    epochs = profile.epochs if epochs is None else epochs
    seed = profile.seed if seed is None else seed
    fit_options.setdefault("sampling", profile.sampling)
    steps = math.ceil(len(data.x_train) / profile.batch_size)
    compile_segmentation(model, profile.learning_rate_schedule(epochs, steps),
                         steps_per_execution=profile.steps_per_execution,
                         labelled_classes=data.labelled_classes)
    files = RunFiles(profile.models_dir, name)
    start = time.perf_counter() - files.seconds_trained()  # a resumed run's earlier stretches
    fit_segmentation(model, data, epochs=epochs, output_dir=profile.models_dir, name=name,
                     batch_size=profile.batch_size, seed=seed, verbose=verbose,
                     callbacks=callbacks, **fit_options)
    trained = getattr(model, "student", model)
    write_run_record(profile, name, epochs=epochs, seed=seed,
                     precision=trained.dtype_policy.name,
                     distillation=distillation_settings(model),
                     learning_rate=profile.learning_rate,
                     train_seconds=time.perf_counter() - start, **fit_options)
    return load_run(files.model)


def load_or_train(
    profile: Profile,
    data: SegmentationDataset | None,
    name: str,
    build: Callable[[], keras.Model],
    *,
    teacher: keras.Model | None = None,
    epochs: int | None = None,
    **distiller_settings: Any,
) -> tuple[keras.Model, dict[str, list[float]], dict[str, Any]]:
    """The finished model `name` if one is saved, else one trained here.

    For a notebook opened alone: it looks where `saved_model_path` does (this
    run's folder, then for the full profile the committed models). Where
    neither has it, it seeds Keras with `profile.seed`, builds the model in
    the device's precision (`mixed_precision_policy`), wraps it in a
    `Distiller` when a `teacher` is given, and trains it with `train_model`.
    It says which it did.

    Args:
        profile: the `Profile`.
        data: the `SegmentationDataset`.
        name: the model's file stem, e.g. "teacher".
        build: function returning the untrained model, e.g. `build_teacher`.
        teacher: for a distilled student, its teacher.
        epochs: epochs of a run trained here; `profile.epochs` if `None`.
        **distiller_settings: `alpha`, `temperature`, ... of the `Distiller`.

    Returns:
        `(model, history, record)`.

    Example:

    >>> profile = load_profile("full", output_dir="outputs")  # nothing trained here yet
    >>> teacher, history, record = load_or_train(profile, None, "teacher", build_teacher)
    ... # doctest: +NORMALIZE_WHITESPACE
    Loaded teacher.keras (committed in results/models): 100 epochs, jax, NVIDIA H200,
    2026-11-28, mixed_bfloat16; trained in 4.5 min
    """
    path = saved_model_path(profile, name)
    if path is not None:
        model, history, record = load_run(path)
        print(f"Loaded {describe_run(path, record)}")
        return model, history, record
    backup = RunFiles(profile.models_dir, name).backup
    if data is None and backup.exists():
        raise FileNotFoundError(
            f"{name} in {profile.models_dir} was interrupted, and there is no dataset to "
            f"resume it on: pass the data (profile_dataset(profile)), or delete {backup} "
            f"to use the saved model.")
    if data is None:
        raise FileNotFoundError(
            f"No saved {name} in {profile.models_dir}"
            f"{' or the committed models' if profile.name == 'full' else ''}, and no "
            f"dataset to train it on: pass the data (profile_dataset(profile)).")
    epochs = profile.epochs if epochs is None else epochs
    if backup.exists():
        print(f"{name} in {profile.models_dir} was interrupted: resuming it from its "
              f"backup, {epochs} epochs in all.")
    else:
        print(f"No saved {name} in {profile.models_dir}: training it here, {epochs} epochs.")
    keras.utils.set_random_seed(profile.seed)
    precision = mixed_precision_policy()
    model = with_dtype_policy(build(), precision)
    if teacher is not None:
        model = Distiller(teacher=with_dtype_policy(teacher, precision), student=model,
                          **distiller_settings)
    elif distiller_settings:
        raise ValueError(f"{sorted(distiller_settings)} are settings of a distillation, "
                         f"but no teacher was given.")
    return train_model(model, data, profile, name=name, epochs=epochs, verbose=0)
