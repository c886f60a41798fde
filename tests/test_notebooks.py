"""Tests of section 7 of utils.py and of the notebooks' Colab setup.

The notebooks themselves run under `pytest --nbmake notebooks` (see .ci/run).
"""

import json
import subprocess
import sys
import types

import numpy as np
import pytest

import aerialkd
import utils

NOTEBOOKS = sorted((utils.REPO_ROOT / "notebooks").glob("*.ipynb"))


def _cells(path, kind):
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"]
            if c["cell_type"] == kind]


def test_the_series_is_numbered_in_order():
    stems = [p.stem for p in NOTEBOOKS]
    assert [s[:3] for s in stems] == ["01_", "02_", "03_", "04_", "05_", "06_", "07_"]
    assert stems[-1] == "07_your_data" and stems[5] == "06_sweep" and stems[1] == "02_teacher"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_opens_with_a_title_and_a_badge_to_itself(path):
    first = _cells(path, "markdown")[0]
    assert first.startswith("# ")
    assert (f"colab.research.google.com/github/{utils.GITHUB_REPOSITORY}/blob/main/"
            f"notebooks/{path.name}") in first


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_hold_no_tiny_run_outputs(path):
    for cell in json.loads(path.read_text())["cells"]:
        text = json.dumps(cell.get("outputs", []))
        assert "Profile 'tiny'" not in text and "outputs/tiny" not in text


@pytest.fixture
def fake_colab(monkeypatch):
    colab = types.ModuleType("google.colab")
    drive = types.ModuleType("google.colab.drive")
    drive.mounted = []
    drive.mount = drive.mounted.append
    colab.drive = drive
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google.colab.drive", drive)
    return drive


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_setup_cell_clones_and_installs_only_in_colab(path, fake_colab, tmp_path,
                                                      monkeypatch):
    calls = []

    def fake_run(args, **kwargs):
        calls.append(args)
        if args[0] == "git":  # the clone creates the folder
            (tmp_path / args[-1]).mkdir()
            (tmp_path / args[-1] / "utils.py").write_text("")
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(sys, "path", list(sys.path))
    bootstrap = _cells(path, "code")[0]
    exec(bootstrap, {})
    assert calls[0][:2] == ["git", "clone"]
    assert calls[0][-2] == f"https://github.com/{utils.GITHUB_REPOSITORY}"
    assert calls[1][1:] == ["-m", "pip", "install", "-q", "-r", "sssi/requirements.txt"]
    assert sys.path[0] == str(tmp_path / "sssi")
    exec(bootstrap, {})  # a second run on the same runtime does not clone again
    assert [c[0] for c in calls].count("git") == 1

    monkeypatch.delitem(sys.modules, "google.colab")
    calls.clear()
    exec(bootstrap, {})
    assert calls == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_failed_clone_says_which_constant_to_change(path, fake_colab, tmp_path, monkeypatch):
    def failing_clone(args, **kwargs):
        return subprocess.CompletedProcess(args, 128, "", "fatal: repository not found")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(subprocess, "run", failing_clone)
    with pytest.raises(RuntimeError, match=r"repository not found Set REPOSITORY above"):
        exec(_cells(path, "code")[0], {})


def test_profile_defaults_to_full_in_colab_and_tiny_elsewhere(fake_colab, monkeypatch):
    monkeypatch.delenv("SSSI_PROFILE", raising=False)
    assert utils.load_profile().name == "full"
    assert utils.load_profile().pictures_dir == utils.REPO_ROOT / "pictures"
    monkeypatch.setenv("SSSI_PROFILE", "tiny")
    assert utils.load_profile().name == "tiny"
    monkeypatch.delitem(sys.modules, "google.colab")
    monkeypatch.delenv("SSSI_PROFILE")
    assert utils.load_profile().name == "tiny"


def test_unknown_profile_is_refused(monkeypatch):
    monkeypatch.setenv("SSSI_PROFILE", "huge")
    with pytest.raises(ValueError, match="Unknown profile 'huge'.*tiny"):
        utils.load_profile()


def test_setup_mounts_drive_for_outputs_in_colab(fake_colab, tmp_path, monkeypatch):
    monkeypatch.setattr(aerialkd.notebook, "DRIVE_ROOT", tmp_path)
    profile = utils.setup_notebook("tiny", mount_drive=True)
    assert fake_colab.mounted == [str(tmp_path)]
    assert profile.output_dir == tmp_path / "MyDrive" / "sssi" / "tiny"
    assert profile.models_dir.is_dir()


def test_markdown_table_formats_numbers():
    table = utils.markdown_table([{"model": "teacher", "parameters": 1941190, "miou5": 0.71234}])
    assert table.splitlines()[0] == "| model | parameters | mIoU, 5 labelled classes |"
    assert table.splitlines()[2] == "| teacher | 1,941,190 | 0.712 |"




def test_saved_models_come_from_this_run_first_then_the_committed_ones(tmp_path):
    full = utils.load_profile("full", output_dir=tmp_path)
    assert utils.saved_model_path(full, "teacher") == utils.COMMITTED_MODELS / "teacher.keras"
    assert utils.saved_model_path(utils.load_profile("tiny", output_dir=tmp_path),
                                  "teacher") is None  # the tiny profile never takes them
    full.models_dir.mkdir(parents=True)
    (full.models_dir / "teacher.keras").write_bytes(b"")
    assert utils.saved_model_path(full, "teacher") == full.models_dir / "teacher.keras"
    assert utils.saved_model_path(full, "no_such_model") is None


def test_load_or_train_trains_what_is_missing_once_and_says_so(tiny_data, tmp_path, capsys):
    import dataclasses

    from test_training import _small_data

    profile = dataclasses.replace(utils.load_profile("tiny", output_dir=tmp_path), epochs=1)
    build = lambda: utils.build_unet(2, name="small")  # noqa: E731
    model, history, record = utils.load_or_train(profile, _small_data(tiny_data), "m", build)
    assert "training it here" in capsys.readouterr().out
    assert len(history["loss"]) == 1 and record["epochs"] == 1
    assert record["precision"] == "float32" and record["distillation"] == {"kind": "none"}
    again, same_history, _ = utils.load_or_train(profile, _small_data(tiny_data), "m", build)
    assert "Loaded m.keras" in capsys.readouterr().out and same_history == history
    x = tiny_data.x_test[:2]
    np.testing.assert_array_equal(utils.predict_logits(model, x), utils.predict_logits(again, x))
