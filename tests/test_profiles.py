"""Tests of `aerialkd.profiles`: profiles, the Colab setup, a profile's dataset."""

import dataclasses
import os
import pathlib
import sys
import time

import pytest

import aerialkd
import utils


def test_profile_defaults_to_full_in_colab_and_tiny_elsewhere(fake_colab, monkeypatch):
    monkeypatch.delenv("SSSI_PROFILE", raising=False)
    assert utils.load_profile().name == "full"
    assert utils.load_profile().pictures_dir == utils.REPO_ROOT / "pictures"
    monkeypatch.setenv("SSSI_PROFILE", "tiny")
    assert utils.load_profile().name == "tiny"
    monkeypatch.delitem(sys.modules, "google.colab")
    monkeypatch.delenv("SSSI_PROFILE")
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    assert utils.load_profile().name == "tiny"
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")  # a Kaggle notebook
    assert utils.load_profile().name == "full"


def test_unknown_profile_is_refused(monkeypatch):
    monkeypatch.setenv("SSSI_PROFILE", "huge")
    with pytest.raises(ValueError, match="Unknown profile 'huge'.*tiny"):
        utils.load_profile()


def test_cosine_schedule_decays_to_zero_over_all_epochs(tmp_path):
    profile = dataclasses.replace(utils.load_profile("tiny", output_dir=tmp_path),
                                  schedule="cosine", batch_size=4, learning_rate=0.01)
    schedule = profile.learning_rate_schedule(epochs=3, steps_per_epoch=3)
    assert float(schedule(0)) == pytest.approx(0.01)
    assert float(schedule(9)) == pytest.approx(0.0, abs=1e-9)
    constant = dataclasses.replace(profile, schedule="constant")
    assert constant.learning_rate_schedule(3, 3) == 0.01
    with pytest.raises(ValueError, match="Unknown schedule 'step'"):
        dataclasses.replace(profile, schedule="step").learning_rate_schedule(3, 3)


def test_setup_mounts_drive_for_outputs_in_colab(fake_colab, tmp_path, monkeypatch):
    monkeypatch.setattr(aerialkd.profiles, "DRIVE_ROOT", tmp_path)
    profile = utils.setup_notebook("tiny", mount_drive=True)
    assert fake_colab.mounted == [str(tmp_path)]
    assert profile.output_dir == tmp_path / "MyDrive" / "sssi" / "tiny"
    assert profile.models_dir.is_dir()


def test_the_tiny_dataset_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    profile = utils.load_profile("tiny", output_dir=tmp_path)
    write = aerialkd.profiles.make_tiny_dataset

    def killed(path):
        write(path, images_per_tile=1)  # partway: one image a tile written
        raise KeyboardInterrupt

    monkeypatch.setattr(aerialkd.profiles, "make_tiny_dataset", killed)
    with pytest.raises(KeyboardInterrupt):
        utils.profile_data_root(profile)
    monkeypatch.undo()
    root = utils.profile_data_root(profile)  # written again, whole
    assert len(utils.find_pairs(root)) == 27 and list(root.parent.iterdir()) == [root]


def test_a_killed_run_s_staging_folder_goes_when_the_tiny_dataset_is_next_written(tmp_path):
    profile = utils.load_profile("tiny", output_dir=tmp_path)
    data = tmp_path / "data"
    old, recent = data / ".tiny.killed", data / ".tiny.writing"
    for folder in (old, recent):
        (folder / "Tile 1").mkdir(parents=True)
    os.utime(old, (time.time() - 7200,) * 2)  # two hours old
    root = utils.profile_data_root(profile)
    assert sorted(data.iterdir()) == [recent, root]  # one being written now is left alone


def test_a_missing_sssi_data_folder_is_an_error_not_a_download(tmp_path, monkeypatch):
    monkeypatch.setenv("SSSI_DATA", str(tmp_path / "typo"))
    with pytest.raises(FileNotFoundError, match="SSSI_DATA is .*typo.*does not exist"):
        utils.profile_data_root(utils.load_profile("full", output_dir=tmp_path))


def test_sssi_output_is_read_alike_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a notebook's kernel runs in notebooks/, a script anywhere
    monkeypatch.setenv("SSSI_OUTPUT", "~/sssi_runs")
    assert utils.load_profile("tiny").output_dir == pathlib.Path.home() / "sssi_runs"
    monkeypatch.setenv("SSSI_OUTPUT", "outputs/mine")  # of the repository, as the default
    assert utils.load_profile("tiny").output_dir == utils.REPO_ROOT / "outputs" / "mine"
    assert utils.load_profile("tiny", output_dir="here").output_dir == pathlib.Path("here")
