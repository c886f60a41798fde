"""Tests of scripts/runs.py and scripts/experiment.py: the experiment's bookkeeping."""

import dataclasses
import json
import types

import keras
import numpy as np
import pytest

import runs
import utils
from helpers import fresh_segmenter, small_data


def test_mixed_precision_run_saves_a_float32_student(tiny_data, tmp_path):
    profile = dataclasses.replace(utils.load_profile("tiny", output_dir=tmp_path), epochs=1)
    keras.utils.set_random_seed(0)
    teacher = utils.build_unet(2, name="t")
    student, history = runs.train("student_distilled", profile, small_data(tiny_data),
                                   teacher=teacher, precision="mixed_bfloat16")
    assert {layer.dtype_policy.name for layer in student.layers} == {"float32"}
    assert np.isfinite(history["loss"]).all()
    run = json.loads((profile.models_dir / "student_distilled_run.json").read_text())
    assert run["precision"] == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored


def test_random_crops_are_another_run(tiny_data, tmp_path, capsys):
    profile = utils.load_profile("tiny", output_dir=tmp_path)
    data = small_data(tiny_data)
    _, grid = runs.train("student_scratch", profile, data, epochs=1)
    run_path = profile.models_dir / "student_scratch_run.json"
    run = json.loads(run_path.read_text())
    assert run["sampling"] == "grid"
    runs.train("student_scratch", profile, data, epochs=1)
    assert "Loading the finished run" in capsys.readouterr().out
    crops = dataclasses.replace(profile, sampling="random")
    _, history = runs.train("student_scratch", crops, data, epochs=1)
    assert "moved to" in capsys.readouterr().out
    assert json.loads(run_path.read_text())["sampling"] == "random"
    assert history["loss"] != grid["loss"]  # other inputs, same initial weights
    with pytest.raises(ValueError, match=r"sampling must be one of \('grid', 'random', 'consistent'\), got 'grid2'"):
        utils.fit_segmentation(fresh_segmenter(), data, epochs=1, output_dir=tmp_path, name="m",
                               sampling="grid2")
    # a wrong value is refused before the finished run is moved aside
    with pytest.raises(ValueError, match="got 'Random'. It comes from the profile's profile.json"):
        runs.train("student_scratch", dataclasses.replace(profile, sampling="Random"), data,
                    epochs=1)
    assert run_path.exists() and "moved to" not in capsys.readouterr().out


def test_a_finished_run_recorded_with_a_tuple_is_found_again(tiny_data, tmp_path, capsys):
    profile = utils.load_profile("tiny", output_dir=tmp_path)
    record = {"labelled": ("Tile 1/image_part_001", "Tile 2/image_part_002")}  # a list in JSON
    runs.train("m", profile, small_data(tiny_data), epochs=1, record=record)
    assert "Loading" not in capsys.readouterr().out
    runs.train("m", profile, small_data(tiny_data), epochs=1, record=record)
    assert "Loading the finished run 'm'" in capsys.readouterr().out
    assert not (profile.models_dir / "previous").exists()
    runs.train("m", profile, small_data(tiny_data), epochs=1)  # asks for no "labelled"
    assert "Loading" not in capsys.readouterr().out  # was loaded: another run's model
    assert (profile.models_dir / "previous").exists()  # that run kept aside


def test_a_backup_left_without_settings_is_moved_aside_not_resumed(tiny_data, tmp_path, capsys):
    profile = utils.load_profile("tiny", output_dir=tmp_path)
    files = utils.RunFiles(profile.models_dir, "m")  # e.g. a notebook's interrupted run "m"
    files.backup.mkdir(parents=True)
    (files.backup / "epochs_done.json").write_text('{"epochs_done": 3, "seconds": 9.0}')
    runs.train("m", profile, small_data(tiny_data), epochs=1)
    assert "files of the earlier run were moved to" in capsys.readouterr().out
    (archived,) = (profile.models_dir / "previous").iterdir()
    assert (archived / "backup_m" / "epochs_done.json").exists()
    assert json.loads(files.record.read_text())["epochs"] == 1 and not files.backup.exists()


def test_distillation_settings_come_from_distillation_json(tmp_path):
    profile = utils.load_profile("tiny", output_dir=tmp_path)
    assert runs.load_distillation_config(profile) == runs.DEFAULT_DISTILLATION
    profile.models_dir.mkdir(parents=True)
    (profile.models_dir / "distillation.json").write_text(json.dumps(
        {"alpha": 0.3, "temperature": 2.0, "kind": "channel", "teacher_ensemble": True,
         "val_miou5": 0.5}))
    assert runs.load_distillation_config(profile) == {
        "alpha": 0.3, "temperature": 2.0, "kind": "channel", "teacher_ensemble": True}


@pytest.mark.integration  # whole runs of the scripts
def test_sweep_scores_against_scratch_and_keeps_settings_chosen_otherwise(tmp_path, capsys):
    profile = dataclasses.replace(utils.load_profile("tiny", output_dir=tmp_path),
                                  sweep_kinds=("pixel",), sweep_alphas=(0.5,),
                                  sweep_temperatures=(1.0, 4.0))
    data = utils.profile_dataset(profile)
    teacher = utils.build_unet(2, name="teacher")
    profile.models_dir.mkdir(parents=True)
    flags = {"chosen_by": "scripts/experiment.py flags", **runs.DEFAULT_DISTILLATION,
             "alpha": 0.3}
    (profile.models_dir / "distillation.json").write_text(json.dumps(flags))
    rows = runs.sweep_distillation(profile, data, teacher)
    scratch = json.loads((profile.models_dir / "sweep_scratch_history.json").read_text())
    assert [(r["kind"], r["temperature"]) for r in rows] == [("none", None), ("pixel", 1.0),
                                                            ("pixel", 4.0)]
    assert rows[0]["val_miou5"] == max(scratch["val_miou5"])
    for row in rows[1:]:
        assert row["vs_scratch"] == pytest.approx(row["val_miou5"] - rows[0]["val_miou5"])
    assert "Kept" in capsys.readouterr().out  # the flags' students were trained with them
    assert json.loads((profile.models_dir / "distillation.json").read_text()) == flags
    # asked to replace them, the sweep reads its runs back and writes its best
    assert runs.sweep_distillation(profile, data, teacher, replace=True) == rows
    assert capsys.readouterr().out.count("Loading the finished run") == 3
    best = max(rows[1:], key=lambda r: r["val_miou5"])
    written = json.loads((profile.models_dir / "distillation.json").read_text())
    assert written["chosen_by"] == runs.SWEEP_CHOICE
    assert written["scratch_val_miou5"] == rows[0]["val_miou5"]
    assert runs.load_distillation_config(profile) == {
        **runs.DEFAULT_DISTILLATION, "alpha": 0.5, "temperature": best["temperature"]}


def test_profile_overrides_saved_in_the_output_folder_apply_to_it_alone(tmp_path):
    profile = utils.load_profile("tiny", output_dir=tmp_path)
    runs.save_profile_overrides(dataclasses.replace(profile, epochs=7,
                                                    sweep_temperatures=(1.0, 4.0)),
                                precision="mixed_bfloat16")
    assert json.loads((tmp_path / "profile.json").read_text()) == {
        "name": "tiny", "epochs": 7, "precision": "mixed_bfloat16", "sweep_temperatures": [1.0, 4.0]}
    again = runs.load_profile("tiny", output_dir=tmp_path)
    assert (again.epochs, again.batch_size) == (7, profile.batch_size)
    assert runs.load_precision(again) == "mixed_bfloat16"
    assert again.sweep_temperatures == (1.0, 4.0) and again.sweep_kinds == profile.sweep_kinds
    assert runs.save_profile_overrides(again, precision="mixed_bfloat16") == again
    assert json.loads((tmp_path / "profile.json").read_text())["sweep_temperatures"] == [1.0, 4.0]
    assert runs.load_profile("tiny", output_dir=tmp_path / "other").epochs == profile.epochs
    assert utils.load_profile("tiny", output_dir=tmp_path).epochs == profile.epochs  # notebooks
    with pytest.raises(ValueError, match="belongs to another profile than 'full'"):
        runs.load_profile("full", output_dir=tmp_path)
    runs.save_profile_overrides(profile)  # the defaults, but the runs' precision is kept
    assert json.loads((tmp_path / "profile.json").read_text()) == {
        "name": "tiny", "precision": "mixed_bfloat16"}  # was deleted: float32 on a CPU next
    (tmp_path / "profile.json").unlink()
    runs.save_profile_overrides(profile)  # nothing to save: no file
    assert not (tmp_path / "profile.json").exists()


@pytest.mark.integration  # whole runs of the scripts
def test_experiment_records_its_runs_and_retrains_only_what_changed(tmp_path, capsys,
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
        **runs.DEFAULT_DISTILLATION, "alpha": 0.3, "chosen_by": "scripts/experiment.py flags"}
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
    # a rerun loads the finished runs instead of training them again
    profile = runs.load_profile("tiny", output_dir=tmp_path)
    data = utils.profile_dataset(profile)
    config = runs.load_distillation_config(profile)
    teacher, _ = runs.train("teacher", profile, data, build=utils.build_teacher)
    runs.train("student_scratch_s0", profile, data)
    student, history = runs.train("student_distilled_s0", profile, data, teacher=teacher,
                                  **config)
    out = capsys.readouterr().out
    assert out.count("Loading the finished run") == 3 and "moved to" not in out
    assert history == json.loads(
        (profile.models_dir / "student_distilled_s0_history.json").read_text())
    scores = utils.evaluate_segmentation(student, data.x_test, data.y_test,
                                         labelled_classes=data.labelled_classes)
    assert scores["miou5"] == pytest.approx(distilled["miou5"], abs=1e-6)  # the same weights
    # a student distilled from another teacher is another run: the first one is archived
    keras.utils.set_random_seed(1)
    other = utils.build_unet(2, name="other_teacher")
    runs.train("student_distilled_s0", profile, data, teacher=other, **config)
    assert "files of the earlier run were moved to" in capsys.readouterr().out
    (archived,) = (profile.models_dir / "previous").iterdir()
    assert json.loads((archived / "student_distilled_s0_run.json").read_text())[
        "teacher_sha1"] == runs.weights_fingerprint(teacher)
    run = json.loads((profile.models_dir / "student_distilled_s0_run.json").read_text())
    assert run["teacher_sha1"] == runs.weights_fingerprint(other)
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


@pytest.mark.integration  # whole runs of the scripts
def test_experiment_records_the_recipes_of_issue_27(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(utils.REPO_ROOT / "scripts"))
    import experiment

    common = ["--profile", "tiny", "--output", str(tmp_path), "--seeds", "0", "--epochs", "1",
              "--batch-size", "8"]
    profile = runs.save_profile_overrides(dataclasses.replace(
        runs.load_profile("tiny", output_dir=tmp_path), epochs=1, batch_size=8))
    data = utils.profile_dataset(profile)
    for name, seed in (("teacher", 0), ("teacher_s1", 1)):  # finished teachers of 2 seeds
        runs.train(name, profile, data, build=utils.build_teacher, seed=seed)
    experiment.main([*common, "--tag", "c27", "--teacher-models", "teacher", "teacher_s1",
                     "--kind", "dist", "--standardize",
                     "--kd-schedule", "warmup:1:0.2", "--sampling", "consistent",
                     "--mix", "mixup", "--mix-probability", "0.8"])
    experiment.main([*common, "--tag", "c27", "--scratch", "--sampling", "consistent"])
    experiment.main([*common, "--tag", "f27", "--feature-weight", "0.5"])
    distilled, scratch, features = json.loads((tmp_path / "metrics.json").read_text())
    assert distilled["model"] == "student_distilled_c27"
    assert {k: distilled["config"][k] for k in (
        "kind", "standardize", "kd_schedule", "teacher_models", "sampling",
        "mix", "mix_probability")} == {
        "kind": "dist", "standardize": True,
        "kd_schedule": "warmup:1:0.2", "teacher_models": ["teacher", "teacher_s1"],
        "sampling": "consistent", "mix": "mixup", "mix_probability": 0.8}
    assert scratch["model"] == "student_scratch_c27"
    assert {k: scratch["config"].get(k) for k in ("kind", "sampling", "mix")} == {
        "kind": "none", "sampling": "consistent", "mix": "cutmix"}
    student = keras.models.load_model(profile.models_dir / "student_scratch_c27_s0.keras")
    assert not any(isinstance(layer, utils.RandomSymmetry) for layer in student.layers)
    assert (features["model"], features["config"]["feature_weight"]) == (
        "student_distilled_f27", 0.5)
    assert "mix" not in features["config"] and "standardize" not in features["config"]
    assert "student_distilled_c27" in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [
    (["--standardize"], "use them with --tag"),
    (["--tag", "a", "--sampling", "grid", "--mix", "cutmix"], "go with --sampling consistent"),
    (["--tag", "a", "--scratch", "--kd-schedule", "warmup:1:0.1"], "has no teacher"),
    (["--tag", "a", "--kd-schedule", "cosine"], "warmup:K:ALPHA"),
    (["--tag", "a", "--teacher-models", "nobody"], "no finished model 'nobody'"),
    (["--tag", "a", "--teacher-models", "t", "--feature-weight", "1"], "ensemble"),
])
def test_experiment_refuses_recipe_flags_out_of_place(tmp_path, capsys, monkeypatch, flags,
                                                      message):
    monkeypatch.syspath_prepend(str(utils.REPO_ROOT / "scripts"))
    import experiment

    with pytest.raises(SystemExit):
        experiment.main(["--profile", "tiny", "--output", str(tmp_path), *flags])
    assert message in capsys.readouterr().err


def test_seed_table_gives_mean_and_sample_sd_per_model():
    entries = [{"model": "teacher", "seed": 0, "miou5": 0.7},
               {"model": "student", "seed": 0, "miou5": 0.5},
               {"model": "student", "seed": 1, "miou5": 0.6},
               {"model": "student", "seed": 2, "miou5": 0.7}]
    table = runs.seed_table(entries, keys=("miou5",)).splitlines()
    assert table[2] == "| teacher | 1 | 0.700 |"  # one seed has no spread
    assert table[3] == "| student | 3 | 0.600 ± 0.100 |"  # sqrt((0.01 + 0 + 0.01) / 2)
    with pytest.raises(ValueError, match="two entries for seed 0"):
        runs.seed_table(entries + [entries[1]], keys=("miou5",))


def test_seed_report_names_each_runs_machine_and_the_kd_settings(tmp_path):
    common = {"miou5": 0.6, "miou6": 0.5, "pixel_acc": 0.8, "epochs": 100,
              "date": "2026-11-28"}
    gpu = {"backend": "jax", "device": "NVIDIA H200"}
    entries = [
        {"model": "teacher", "run": "teacher", "seed": 0, **common, **gpu,
         "config": {"kind": "none"}},
        {"model": "student_scratch", "run": "student_scratch_s0", "seed": 0, **common, **gpu,
         "config": {"kind": "none"}},
        {"model": "student_distilled", "run": "student_distilled_s0", "seed": 0, **common,
         "backend": "tensorflow", "device": "CPU (x86_64, 2 cores)",
         "config": {"kind": "pixel", "alpha": 0.5, "temperature": 1.5,
                    "teacher_ensemble": False}},
        # another recipe, tried next to the chosen one (experiment.py --tag x8)
        {"model": "student_distilled_x8", "run": "student_distilled_x8_s0", "seed": 0,
         **common, "miou5": 0.65, "backend": "tensorflow", "device": "CPU (x86_64, 2 cores)",
         "config": {"kind": "pixel", "alpha": 0.5, "temperature": 1.5,
                    "teacher_ensemble": True}}]
    (tmp_path / "metrics.json").write_text(json.dumps(entries))
    report = runs.seed_report(types.SimpleNamespace(output_dir=tmp_path, name="full"))
    assert "- jax on NVIDIA H200, 2026-11-28: teacher, student_scratch_s0" in report
    assert ("- tensorflow on CPU (x86_64, 2 cores), 2026-11-28: student_distilled_s0, "
            "student_distilled_x8_s0") in report
    assert "`student_distilled` distilled with pixel KD, alpha 0.5, T 1.5." in report
    assert ("`student_distilled` minus `student_scratch`, mIoU5 paired by seed: seed 0 +0.000; "
            "mean +0.000 (across backends, so a pair shares only its batch order).") in report
    assert ("`student_distilled_x8` distilled with pixel KD, alpha 0.5, T 1.5, teacher "
            "ensemble.") in report
    assert "`student_distilled_x8` minus `student_scratch`, mIoU5 paired by seed: seed 0 +0.050" in report
    assert "| student_distilled_x8 | 1 | 0.650 |" in report
    assert "minus `student_scratch_tf`" not in report
    # a scratch baseline on the distilled students' backend (experiment.py --tag tf --scratch)
    entries.append({"model": "student_scratch_tf", "run": "student_scratch_tf_s0", "seed": 0,
                    **common, "miou5": 0.61, "backend": "tensorflow",
                    "device": "CPU (x86_64, 2 cores)", "config": {"kind": "none"}})
    (tmp_path / "metrics.json").write_text(json.dumps(entries))
    report = runs.seed_report(types.SimpleNamespace(output_dir=tmp_path, name="full"))
    assert ("`student_distilled` minus `student_scratch_tf`, mIoU5 paired by seed: seed 0 "
            "-0.010; mean -0.010 (both on tensorflow).") in report
    assert ("`student_distilled_x8` minus `student_scratch_tf`, mIoU5 paired by seed: "
            "seed 0 +0.040") in report
    assert "| student_scratch_tf | 1 | 0.610 |" in report


def _constant_segmenter(logits):
    """A model whose logits are `logits` at every pixel, whatever the image."""
    inputs = keras.Input((None, None, 3))
    layer = keras.layers.Conv2D(len(logits), 1)
    outputs = layer(inputs)
    layer.set_weights([np.zeros((1, 1, 3, len(logits)), "float32"),
                       np.asarray(logits, "float32")])
    return keras.Model(inputs, outputs)


def test_ensemble_scores_average_the_students_then_add_the_teacher_as_one_more(monkeypatch):
    monkeypatch.syspath_prepend(str(utils.REPO_ROOT / "scripts"))
    import teacher_analysis

    x = np.zeros((2, 16, 16, 3), "uint8")
    y = np.ones((2, 16, 16), "uint8")  # every pixel is class 1
    students = {"a": _constant_segmenter([2, 0, 0, 0, 0, 0]),  # says 0
                "b": _constant_segmenter([0, 1.5, 0, 0, 0, 0])}  # says 1; with a: 0 (2 > 1.5)
    teacher = np.zeros((2, 16, 16, 6), "float32")
    teacher[..., 1] = 1.0  # with a and b: 1 (2 < 2.5)
    scores = teacher_analysis.ensemble_scores(teacher, students, x, y, batch_size=2)
    assert list(scores) == ["a_x8", "b_x8", "mean of the 2 students x8",
                            "mean of the 2 students x8 and teacher_x8"]
    assert [scores[k]["pixel_acc"] for k in scores] == [0.0, 1.0, 0.0, 1.0]
    assert teacher_analysis.ensemble_scores(teacher, {}, x, y, batch_size=2) == {}
