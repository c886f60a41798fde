"""The notebooks' conveniences: profiles, the Colab setup, runs that are loaded or trained."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras

from .devices import accelerator_names, mixed_precision_policy
from .files import DATASET_DIRNAME, download_dataset, find_dataset_root
from .datasets import SegmentationDataset, load_dataset
from .synthetic import make_tiny_dataset
from .models import with_dtype_policy
from .distiller import Distiller
from .run_files import RunFiles, write_into_place
from .training import compile_segmentation, fit_segmentation


GITHUB_REPOSITORY = "sssi-project/aerial-distillation"
"""`owner/name` of the repository on GitHub (Colab badges and clone)."""


REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
"""The repository: the folder above this package."""


COMMITTED_MODELS = REPO_ROOT / "results" / "models"
"""The models of the rendered notebooks, committed with the repository."""


COMMITTED_METRICS = REPO_ROOT / "results" / "metrics.json"
"""The test scores of the committed runs, one entry per run (`scripts/report.py` reads it)."""


DRIVE_ROOT = pathlib.Path("/content/drive")


PROFILES = {
    "tiny": dict(patch_size=64, epochs=3, batch_size=4, learning_rate=5e-3,
                 sweep_alphas=(0.5,), sweep_temperatures=(2.0,),
                 sweep_kinds=("pixel", "channel"), sweep_epochs=1),
    "full": dict(patch_size=256, epochs=100, batch_size=16, learning_rate=1e-3,
                 steps_per_execution=8, sweep_alphas=(0.1, 0.5),
                 sweep_temperatures=(1.5, 4.0), sweep_kinds=("pixel",), sweep_epochs=20),
}
"""The recipe of the notebook series: `tiny` (synthetic data, seconds, for
CI) and `full` (the real data, for a GPU; the committed models were trained
with it, in mixed precision)."""


@dataclasses.dataclass(frozen=True)
class Profile:
    """The recipe and folders of one run of the notebook series.

    Attributes:
        name: "tiny" or "full".
        patch_size, epochs, batch_size, learning_rate: training budget, the
            same for the teacher, the scratch student and the distilled one.
        seed: seed of weights, shuffling and augmentation.
        schedule: learning rate over training, "constant" or "cosine"
            (cosine decay to 0 over all epochs).
        steps_per_execution: training steps per call from Python (fewer
            host round trips on a GPU; results do not change).
        sampling: training inputs, "grid" (the fixed patches) or "random"
            (as many crops per epoch from anywhere in the training images;
            see `fit_segmentation`).
        sweep_alphas, sweep_temperatures, sweep_kinds, sweep_epochs: the
            grid of `06_sweep`.
        output_dir: where models, histories and results go.
        pictures_dir: where figures go (`pictures/` for the full profile).
    """

    name: str
    patch_size: int
    epochs: int
    batch_size: int
    learning_rate: float
    sweep_alphas: tuple[float, ...]
    sweep_temperatures: tuple[float, ...]
    sweep_kinds: tuple[str, ...]
    sweep_epochs: int
    output_dir: pathlib.Path
    pictures_dir: pathlib.Path
    seed: int = 0
    schedule: str = "cosine"
    steps_per_execution: int = 1
    sampling: str = "grid"

    @property
    def models_dir(self) -> pathlib.Path:
        return self.output_dir / "models"

    def learning_rate_schedule(
        self, epochs: int | None = None, steps_per_epoch: int = 1
    ) -> float | keras.optimizers.schedules.LearningRateSchedule:
        """Adam's learning rate: the constant, or Keras' cosine decay to 0 over `epochs`."""
        if self.schedule == "constant":
            return self.learning_rate
        if self.schedule == "cosine":
            return keras.optimizers.schedules.CosineDecay(
                self.learning_rate, (epochs or self.epochs) * steps_per_epoch)
        raise ValueError(f"Unknown schedule {self.schedule!r}: use 'constant' or 'cosine'.")


def in_colab() -> bool:
    """Whether this runs in Google Colab."""
    return "google.colab" in sys.modules


def load_profile(
    name: str | None = None, output_dir: os.PathLike | str | None = None
) -> Profile:
    """Returns the `Profile` chosen by `name` or the environment.

    The profile is `name`, else `$SSSI_PROFILE`, else "full" in Colab and
    Kaggle notebooks and "tiny" elsewhere. The output folder is `output_dir`, else
    `$SSSI_OUTPUT`, else `outputs/<profile>` in the repository. The recipe is
    `PROFILES[name]`, nothing else: change it there or with
    `dataclasses.replace`, in view.

    Example:

    >>> load_profile("tiny").epochs
    3
    """
    hosted = in_colab() or "KAGGLE_KERNEL_RUN_TYPE" in os.environ  # Colab or Kaggle
    name = name or os.environ.get("SSSI_PROFILE") or ("full" if hosted else "tiny")
    if name not in PROFILES:
        raise ValueError(
            f"Unknown profile {name!r} (from SSSI_PROFILE?): choose one of "
            f"{sorted(PROFILES)}."
        )
    output_dir = pathlib.Path(
        output_dir or os.environ.get("SSSI_OUTPUT") or REPO_ROOT / "outputs" / name
    )
    pictures_dir = REPO_ROOT / "pictures" if name == "full" else output_dir / "pictures"
    return Profile(name=name, output_dir=output_dir, pictures_dir=pictures_dir,
                   **PROFILES[name])


def setup_notebook(profile: str | None = None, mount_drive: bool = False) -> Profile:
    """Prepares a notebook: profile, optional Google Drive, device report.

    In Colab with `mount_drive=True`, outputs go to Google Drive
    (`MyDrive/sssi/<profile>`), so models and checkpoints survive a
    disconnect. Prints the profile, backend, devices and output folder.

    Args:
        profile: profile name, or `None` for `load_profile`'s choice.
        mount_drive: in Colab, keep outputs on Google Drive.

    Returns:
        The `Profile`.
    """
    output_dir = None
    if mount_drive and in_colab():
        from google.colab import drive

        drive.mount(str(DRIVE_ROOT))
        output_dir = DRIVE_ROOT / "MyDrive" / "sssi" / (
            profile or load_profile().name)
    profile = load_profile(profile, output_dir)
    profile.models_dir.mkdir(parents=True, exist_ok=True)
    info = run_info(profile)
    print(f"Profile {profile.name!r}: {profile.epochs} epochs, batch "
          f"{profile.batch_size}, patches {profile.patch_size}px, {profile.schedule} "
          f"learning rate from {profile.learning_rate:g}, seed {profile.seed}")
    print(f"Keras {info['keras']} on {info['backend']}; device: {info['device']}; "
          f"training precision: {mixed_precision_policy()}")
    where = profile.output_dir.resolve()
    print(f"Outputs: {where.relative_to(REPO_ROOT) if where.is_relative_to(REPO_ROOT) else where}")
    return profile


def run_info(profile: Profile | None = None) -> dict[str, Any]:
    """Where a number comes from: backend, versions, device, date, budget."""
    devices = accelerator_names()
    info = {
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "device": ", ".join(devices) if devices else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "date": time.strftime("%Y-%m-%d"),
    }
    if profile is not None:
        info.update(profile=profile.name, epochs=profile.epochs,
                    batch_size=profile.batch_size, patch_size=profile.patch_size,
                    seed=profile.seed, schedule=profile.schedule,
                    sampling=profile.sampling)
    return info


def profile_dataset(profile: Profile) -> SegmentationDataset:
    """Loads the dataset of a profile, from `profile_data_root(profile)`.

    Example:

    >>> profile_dataset(load_profile("tiny", output_dir="run")).patch_size
    64
    """
    return load_dataset(profile_data_root(profile), patch_size=profile.patch_size)


def profile_data_root(profile: Profile) -> pathlib.Path:
    """The folder of a profile's dataset.

    `tiny` writes the synthetic dataset into the output folder, once, whole
    or not at all. `full` reads `$SSSI_DATA` if set (an error if that folder
    does not exist), else `data/` in the repository, else downloads the
    dataset from Kaggle (`download_dataset`, into kagglehub's cache).

    Example:

    >>> profile_data_root(load_profile("tiny", output_dir="run")).name
    'Semantic segmentation dataset'
    """
    if profile.name == "tiny":
        root = profile.output_dir / "data" / DATASET_DIRNAME
        if not root.exists():  # written beside it, then renamed: never found half-written
            root.parent.mkdir(parents=True, exist_ok=True)
            staging = pathlib.Path(tempfile.mkdtemp(prefix=".tiny.", dir=root.parent))
            try:
                os.replace(make_tiny_dataset(staging), root)
            except OSError:  # another notebook wrote it first
                if not root.exists():
                    raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return root
    given = os.environ.get("SSSI_DATA")
    given = given and str(pathlib.Path(given).expanduser())
    if given and not pathlib.Path(given).exists():
        raise FileNotFoundError(
            f"SSSI_DATA is {given!r}, which does not exist. Point it at the folder of "
            f"the dataset (e.g. a mounted Drive folder), or unset it to use data/ in "
            f"the repository or a Kaggle download.")
    if given:
        return find_dataset_root(given)
    local = REPO_ROOT / "data"
    return find_dataset_root(local if local.exists() else download_dataset(local))


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


def _saved_run(profile, name, found, committed=True):
    """The `RunFiles` of `name` in the first folder where `found(files)` holds."""
    folders = [profile.models_dir] + (
        [COMMITTED_MODELS] if committed and profile.name == "full" else [])
    return next((RunFiles(f, name) for f in folders if found(RunFiles(f, name))), None)


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

    Returns:
        The path written.
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
                     distillation=_distillation_settings(model),
                     learning_rate=profile.learning_rate,
                     train_seconds=time.perf_counter() - start, **fit_options)
    return load_run(files.model)


def _distillation_settings(model):
    if not isinstance(model, Distiller):
        return {"kind": "none"}
    settings = {"kind": model.kind, "alpha": model.alpha, "temperature": model.temperature}
    settings.update({k: v for k, v in (("standardize", model.standardize),
                                       ("feature_weight", model.feature_weight)) if v})
    return settings


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
