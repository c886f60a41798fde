"""Profiles: the recipe and folders of a run of the series, the Colab and Kaggle setup, its data."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import platform
import shutil
import sys
import tempfile
import time
from typing import Any

import keras

from .devices import accelerator_names, mixed_precision_policy
from .files import DATASET_DIRNAME, download_dataset, find_dataset_root
from .datasets import SegmentationDataset, load_dataset
from .synthetic import make_tiny_dataset


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

    Example:

    `load_profile` makes one; change its recipe with `dataclasses.replace`.

    >>> import dataclasses
    >>> profile = load_profile("tiny", output_dir="run")
    >>> profile.epochs, profile.batch_size, profile.models_dir.as_posix()
    (3, 4, 'run/models')
    >>> longer = dataclasses.replace(profile, epochs=10, schedule="constant")
    >>> longer.epochs, longer.learning_rate_schedule()
    (10, 0.005)
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
    """Whether this runs in Google Colab.

    Returns:
        `True` where `google.colab` is imported, as in a Colab notebook.

    Example:

    >>> in_colab()  # True in a Colab notebook
    False
    """
    return "google.colab" in sys.modules


def load_profile(
    name: str | None = None, output_dir: os.PathLike | str | None = None
) -> Profile:
    """Returns the `Profile` chosen by `name` or the environment.

    The profile is `name`, else `$SSSI_PROFILE`, else "full" in Colab and
    Kaggle notebooks and "tiny" elsewhere. The output folder is `output_dir`, else
    `$SSSI_OUTPUT` (`~` expanded; a relative path is taken from the repository, as
    the default is, so that notebooks, which run in `notebooks/`, and scripts find
    the same folder), else `outputs/<profile>` in the repository. The recipe is
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
    if not output_dir and os.environ.get("SSSI_OUTPUT"):
        output_dir = REPO_ROOT / pathlib.Path(os.environ["SSSI_OUTPUT"]).expanduser()
    output_dir = pathlib.Path(output_dir or REPO_ROOT / "outputs" / name)
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

    Example:

    A notebook starts with `profile = setup_notebook()`. Outputs go to `$SSSI_OUTPUT`
    (else `outputs/<profile>` in the repository), here set for this call alone:

    >>> import os
    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, SSSI_OUTPUT=os.path.abspath("run")):
    ...     profile = setup_notebook("tiny")  # doctest: +ELLIPSIS
    Profile 'tiny': 3 epochs, batch 4, patches 64px, cosine learning rate from 0.005, seed 0
    Keras ... on ...; device: ...; training precision: ...
    Outputs: ...run
    >>> profile.models_dir.is_dir()
    True
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
    """Where a number comes from: backend, versions, device, date, budget.

    Args:
        profile: a `Profile`, to add its name and budget (epochs, batch size,
            patch size, seed, schedule, sampling); `None` for the machine alone.

    Returns:
        A dict: `backend`, `keras` (its version), `device` (the accelerators,
        else the CPU), `date` (YYYY-MM-DD), and the profile's entries.

    Example:

    >>> sorted(run_info())  # the values depend on the machine and the day
    ['backend', 'date', 'device', 'keras']
    >>> info = run_info(load_profile("tiny", output_dir="run"))
    >>> info["profile"], info["epochs"], info["sampling"]
    ('tiny', 3, 'grid')
    """
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
    or not at all (beside it first, in a hidden `.tiny.*` folder; one that a
    killed run left, an hour old or more, goes then). `full` reads `$SSSI_DATA` if set (an error if that folder
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
            for leftover in root.parent.glob(".tiny.*"):  # of a killed run (an hour old)
                try:
                    if time.time() - leftover.stat().st_mtime > 3600:
                        shutil.rmtree(leftover, ignore_errors=True)
                except FileNotFoundError:  # another notebook removed it first
                    continue
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
