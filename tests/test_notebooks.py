"""Tests of section 7 of utils.py and of the notebooks' Colab setup.

The notebooks themselves run under `pytest --nbmake notebooks` (see .ci/run).
"""

import json
import subprocess
import sys
import types

import pytest

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

    def fake_run(args, check):
        calls.append(args)
        if args[0] == "git":  # the clone creates the folder
            (tmp_path / args[-1]).mkdir()
            (tmp_path / args[-1] / "utils.py").write_text("")

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
    monkeypatch.setattr(utils, "DRIVE_ROOT", tmp_path)
    profile = utils.setup_notebook("tiny", mount_drive=True)
    assert fake_colab.mounted == [str(tmp_path)]
    assert profile.output_dir == tmp_path / "MyDrive" / "sssi" / "tiny"
    assert profile.models_dir.is_dir()


def test_missing_artifact_names_the_notebook_to_run(tmp_path):
    profile = utils.load_profile("tiny", output_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="run notebooks/02_teacher.ipynb first"):
        utils.artifact(profile, "teacher.keras", made_by="02_teacher.ipynb")


def test_markdown_table_formats_numbers():
    table = utils.markdown_table([{"model": "teacher", "parameters": 1941190, "miou5": 0.71234}])
    assert table.splitlines()[2] == "| teacher | 1,941,190 | 0.712 |"


def test_distillation_settings_come_from_distillation_json(tmp_path):
    profile = utils.load_profile("tiny", output_dir=tmp_path)
    assert utils.load_distillation_config(profile) == utils.DEFAULT_DISTILLATION
    profile.models_dir.mkdir(parents=True)
    (profile.models_dir / "distillation.json").write_text(json.dumps(
        {"alpha": 0.3, "temperature": 2.0, "kind": "channel", "teacher_ensemble": True,
         "val_miou5": 0.5}))
    assert utils.load_distillation_config(profile) == {
        "alpha": 0.3, "temperature": 2.0, "kind": "channel", "teacher_ensemble": True}


def test_sweep_scores_against_scratch_and_keeps_settings_chosen_otherwise(tmp_path, capsys):
    import dataclasses

    profile = dataclasses.replace(utils.load_profile("tiny", output_dir=tmp_path),
                                  sweep_kinds=("pixel",), sweep_alphas=(0.5,),
                                  sweep_temperatures=(1.0, 4.0))
    data = utils.profile_dataset(profile)
    teacher = utils.build_unet(2, name="teacher")
    profile.models_dir.mkdir(parents=True)
    flags = {"chosen_by": "scripts/experiment.py flags", **utils.DEFAULT_DISTILLATION,
             "alpha": 0.3}
    (profile.models_dir / "distillation.json").write_text(json.dumps(flags))
    rows = utils.sweep_distillation(profile, data, teacher)
    scratch = json.loads((profile.models_dir / "sweep_scratch_history.json").read_text())
    assert [(r["kind"], r["temperature"]) for r in rows] == [("none", None), ("pixel", 1.0),
                                                            ("pixel", 4.0)]
    assert rows[0]["val_miou5"] == max(scratch["val_miou5"])
    for row in rows[1:]:
        assert row["vs_scratch"] == pytest.approx(row["val_miou5"] - rows[0]["val_miou5"])
    assert "Kept" in capsys.readouterr().out  # the flags' students were trained with them
    assert json.loads((profile.models_dir / "distillation.json").read_text()) == flags
    # asked to replace them, the sweep reads its runs back and writes its best
    assert utils.sweep_distillation(profile, data, teacher, replace=True) == rows
    assert capsys.readouterr().out.count("Loading the finished run") == 3
    best = max(rows[1:], key=lambda r: r["val_miou5"])
    written = json.loads((profile.models_dir / "distillation.json").read_text())
    assert written["chosen_by"] == utils.SWEEP_CHOICE
    assert written["scratch_val_miou5"] == rows[0]["val_miou5"]
    assert utils.load_distillation_config(profile) == {
        **utils.DEFAULT_DISTILLATION, "alpha": 0.5, "temperature": best["temperature"]}


def test_profile_overrides_saved_in_the_output_folder_apply_to_it_alone(tmp_path):
    import dataclasses

    profile = utils.load_profile("tiny", output_dir=tmp_path)
    utils.save_profile_overrides(dataclasses.replace(profile, epochs=7, precision="mixed_bfloat16",
                                                     sweep_temperatures=(1.0, 4.0)))
    assert json.loads((tmp_path / "profile.json").read_text()) == {
        "name": "tiny", "epochs": 7, "precision": "mixed_bfloat16", "sweep_temperatures": [1.0, 4.0]}
    again = utils.load_profile("tiny", output_dir=tmp_path)
    assert (again.epochs, again.precision, again.batch_size) == (7, "mixed_bfloat16",
                                                                  profile.batch_size)
    assert again.sweep_temperatures == (1.0, 4.0) and again.sweep_kinds == profile.sweep_kinds
    assert utils.save_profile_overrides(again) == again  # the same file again
    assert json.loads((tmp_path / "profile.json").read_text())["sweep_temperatures"] == [1.0, 4.0]
    assert utils.load_profile("tiny", output_dir=tmp_path / "other").epochs == profile.epochs
    with pytest.raises(ValueError, match="belongs to another profile than 'full'"):
        utils.load_profile("full", output_dir=tmp_path)
    utils.save_profile_overrides(profile)  # back to the defaults: no file
    assert not (tmp_path / "profile.json").exists()


def test_notebooks_load_an_experiments_runs_and_retrain_only_what_changed(tmp_path, capsys,
                                                                          monkeypatch):
    import keras

    monkeypatch.syspath_prepend(str(utils.REPO_ROOT / "scripts"))
    import experiment

    experiment.main(["--profile", "tiny", "--output", str(tmp_path), "--seeds", "0",
                     "--teacher-seeds", "0", "1", "--epochs", "1", "--batch-size", "8",
                     "--alpha", "0.3"])
    entries = json.loads((tmp_path / "metrics.json").read_text())
    assert [(e["model"], e["seed"]) for e in entries] == [
        ("teacher", 0), ("student_scratch", 0), ("student_distilled", 0), ("teacher", 1)]
    assert utils.seed_summary(entries)[0]["seeds"] == 2  # the teacher's mean over two seeds
    distilled = entries[2]
    assert distilled["config"]["alpha"] == 0.3 and distilled["config"]["batch_size"] == 8
    assert json.loads((tmp_path / "models" / "distillation.json").read_text()) == {
        **utils.DEFAULT_DISTILLATION, "alpha": 0.3, "chosen_by": "scripts/experiment.py flags"}
    # the teacher analysis reads the same runs back
    import teacher_analysis

    teacher_analysis.main(["--profile", "tiny", "--output", str(tmp_path),
                           "--temperatures", "1", "4"])
    analysis = json.loads((tmp_path / "teacher_analysis.json").read_text())
    test = analysis["test"]
    assert set(test["scores"]) == {"teacher", "teacher_x8", "student_scratch_s0",
                                   "student_distilled_s0"}
    for run in entries[:3]:
        assert test["scores"][run["run"]]["miou5"] == pytest.approx(run["miou5"], abs=1e-6)
    assert [row["temperature"] for row in test["calibration"]["teacher"]] == [1.0, 4.0]
    assert [row["temperature"] for row in test["calibration"]["student_distilled_s0"]] == [1.0]
    ensembles = test["ensembles"]  # over the one scratch student
    assert list(ensembles) == ["student_scratch_s0_x8", "mean of the 1 students x8",
                               "mean of the 1 students x8 and teacher_x8"]
    assert ensembles["mean of the 1 students x8"] == ensembles["student_scratch_s0_x8"]
    assert 0 <= ensembles["mean of the 1 students x8 and teacher_x8"]["miou5"] <= 1
    assert set(analysis["train"]["scores"]) == {"teacher", "teacher_x8"}  # the KD targets
    assert "ensembles" not in analysis["train"]
    assert analysis["train"]["overlap"] == {}
    overlap = test["overlap"]["teacher vs student_scratch_s0"]
    assert sum(v for k, v in overlap.items() if k != "by_class") == pytest.approx(1)
    assert all(sum(shares.values()) == pytest.approx(1) for shares in overlap["by_class"].values())
    capsys.readouterr()
    # what 02_teacher, 03_student and 04_distill do, with SSSI_OUTPUT=<the experiment's output>
    profile = utils.load_profile("tiny", output_dir=tmp_path)
    data = utils.profile_dataset(profile)
    config = utils.load_distillation_config(profile)
    teacher, _ = utils.train("teacher", profile, data)
    utils.train("student_scratch", profile, data)
    student, history = utils.train("student_distilled", profile, data, teacher=teacher, **config)
    out = capsys.readouterr().out
    assert out.count("Loading the finished run") == 3 and "moved to" not in out
    assert history == json.loads((profile.models_dir / "student_distilled_history.json").read_text())
    scores = utils.evaluate_segmentation(student, data.x_test, data.y_test)
    assert scores["miou5"] == pytest.approx(distilled["miou5"], abs=1e-6)  # the same weights
    # a student distilled from another teacher is another run: the first one is archived
    keras.utils.set_random_seed(1)
    other = utils.build_unet(2, name="other_teacher")
    utils.train("student_distilled", profile, data, teacher=other, **config)
    assert "files of the earlier run were moved to" in capsys.readouterr().out
    (archived,) = (profile.models_dir / "previous").iterdir()
    assert json.loads((archived / "student_distilled_run.json").read_text())["teacher_sha1"] == (
        utils.weights_fingerprint(teacher))
    run = json.loads((profile.models_dir / "student_distilled_run.json").read_text())
    assert run["teacher_sha1"] == utils.weights_fingerprint(other)
    # another recipe, next to the chosen one: only its distilled students are trained and
    # recorded, as their own model; the chosen runs, entries and settings stay as they were
    chosen = (profile.models_dir / "distillation.json").read_text()
    experiment.main(["--profile", "tiny", "--output", str(tmp_path), "--seeds", "0",
                     "--epochs", "1", "--batch-size", "8", "--tag", "x8", "--teacher-ensemble"])
    tagged = json.loads((tmp_path / "metrics.json").read_text())
    assert tagged[:-1] == entries
    assert (tagged[-1]["model"], tagged[-1]["run"]) == ("student_distilled_x8",
                                                        "student_distilled_x8_s0")
    assert tagged[-1]["config"]["teacher_ensemble"] is True
    assert (profile.models_dir / "distillation.json").read_text() == chosen
    assert "`student_distilled_x8` minus `student_scratch`" in capsys.readouterr().out
    # a scratch baseline trained elsewhere (here: the same machine), paired with every
    # distilled model: no teacher is needed, nothing chosen changes
    experiment.main(["--profile", "tiny", "--output", str(tmp_path), "--seeds", "0",
                     "--epochs", "1", "--batch-size", "8", "--tag", "tf", "--scratch"])
    baseline = json.loads((tmp_path / "metrics.json").read_text())
    assert baseline[:-1] == tagged
    assert (baseline[-1]["model"], baseline[-1]["config"]["kind"]) == ("student_scratch_tf", "none")
    assert (profile.models_dir / "distillation.json").read_text() == chosen
    out = capsys.readouterr().out
    assert "Distilling" not in out
    assert "`student_distilled_x8` minus `student_scratch_tf`" in out
