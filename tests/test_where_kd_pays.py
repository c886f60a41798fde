"""Tests of scripts/where_kd_pays.py: the runs of each part (the label subset and its
datasets are aerialkd.few_labels', tested in test_few_labels.py)."""

import json

import keras
import numpy as np
import pytest

import utils
import where_kd_pays


@pytest.fixture(scope="module")
def chosen(tiny_data):
    return utils.label_subset(tiny_data)


def test_runs_of_each_part_in_training_order(tiny_data, chosen, tmp_path):
    profile = utils.load_profile("tiny", output_dir=tmp_path)
    labels = where_kd_pays.runs_of("labels", tiny_data, chosen, profile)
    assert [run for run, *_ in labels[:4]] == [
        "student_scratch_l12_s0", "student_distilled_l12_s0", "teacher_l12",
        "student_distilled_t12_s0"]
    assert [run for run, *_ in labels[-4:]] == [
        "student_distilled_t12_s2", "student_pseudo_t12_s0", "student_pseudo_t12_s1",
        "student_pseudo_t12_s2"]  # after the other arms: they need teacher_l12's predictions
    assert len(labels) == 13
    settings = {run: s for run, _, _, s in labels}
    datasets = {run: d for run, _, d, _ in labels}
    assert len(datasets["student_scratch_l12_s0"].x_train) == 100  # the 4 labelled images
    masked = datasets["student_distilled_t12_s0"]
    assert len(masked.x_train) == 420 and (masked.y_train == utils.IGNORE_INDEX).all(
        axis=(1, 2)).sum() == 320  # the 14 others' patches, unannotated
    epochs = utils.matched_epochs(profile.epochs, 100, 420, profile.batch_size)
    assert settings["student_scratch_l12_s1"]["epochs"] == settings["teacher_l12"]["epochs"] == epochs
    assert "epochs" not in settings["student_distilled_l12_s1"]  # the profile's, on all images
    assert settings["student_distilled_t12_s2"]["teacher"] == "teacher_l12"
    assert settings["student_distilled_l12_s2"]["teacher"] == "teacher"
    assert settings["student_pseudo_t12_s1"]["pseudo"] == "teacher_l12"
    assert "teacher" not in settings["student_pseudo_t12_s1"]  # hard labels, no KD term
    assert settings["student_pseudo_t12_s1"]["record"]["pseudo_labels"] == "teacher_l12"
    width = where_kd_pays.runs_of("width4", tiny_data, chosen, profile)
    assert [(run, s["seed"], s["record"]) for run, _, _, s in width[:2]] == [
        ("student_scratch_w4_s0", 0, {"width": 4}), ("student_distilled_w4_s0", 0, {"width": 4})]
    assert width[0][3]["build"]().count_params() < utils.build_student().count_params() / 3


def test_the_pseudo_labelled_students_learn_the_teachers_classes_outside_the_subset(
        tmp_path, monkeypatch):
    trained = {}

    def train(name, profile, data, **settings):  # records what each run would train on
        trained[name] = data, settings
        return None, {}

    monkeypatch.setattr(where_kd_pays.runs, "train", train)
    profile = utils.load_profile("tiny", output_dir=tmp_path)
    teacher = utils.build_unet(2, name="teacher_l12")
    profile.models_dir.mkdir(parents=True)
    teacher.save(profile.models_dir / "teacher_l12.keras")
    with pytest.raises(SystemExit, match="teacher_l12 has not finished training"):
        where_kd_pays.main(["--profile", "tiny", "--output", str(tmp_path), "--parts", "labels"])
    assert "student_pseudo_t12_s0" not in trained  # nor learnt from its checkpoint
    utils.RunFiles(profile.models_dir, "teacher_l12").record.write_text("{}")
    where_kd_pays.main(["--profile", "tiny", "--output", str(tmp_path), "--parts", "labels"])
    data = utils.profile_dataset(profile)
    chosen = utils.label_subset(data)
    keep = utils.labelled_patches(data, chosen)
    predicted = utils.predict_logits(teacher, data.x_train).argmax(-1)
    for seed in where_kd_pays.SEEDS:
        pseudo, settings = trained[f"student_pseudo_t12_s{seed}"]
        np.testing.assert_array_equal(pseudo.y_train[~keep], predicted[~keep])
        np.testing.assert_array_equal(pseudo.y_train[keep], data.y_train[keep])
        assert not {"pseudo", "teacher"} & set(settings)  # trained from scratch on them
        assert settings["record"]["pseudo_teacher_sha1"] == where_kd_pays.runs.weights_fingerprint(
            teacher)
    assert (pseudo.y_train[~keep] != data.y_train[~keep]).any()  # the masks were replaced


def test_runs_trains_the_named_runs_alone_and_refuses_others(tmp_path, monkeypatch, capsys):
    trained = []

    def train(name, *args, **settings):
        trained.append(name)
        return None, {}

    monkeypatch.setattr(where_kd_pays.runs, "train", train)
    argv = ["--profile", "tiny", "--output", str(tmp_path), "--parts", "width4"]
    where_kd_pays.main(argv + ["--runs", "student_distilled_w4_s2", "student_scratch_w4_s0"])
    # in training order; the tiny profile's teacher is trained when a student needs it
    assert trained == ["student_scratch_w4_s0", "teacher", "student_distilled_w4_s2"]
    with pytest.raises(SystemExit):
        where_kd_pays.main(argv + ["--runs", "teacher_l12"])  # a run of another part
    assert "--runs ['teacher_l12']: not runs of --parts ['width4']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        where_kd_pays.main(argv + ["--runs", "student_scratch_w4_s0", "--evaluate"])
    with pytest.raises(SystemExit):  # width 2 only when asked for: it can be born dead
        where_kd_pays.main(argv[:-2] + ["--runs", "student_scratch_w2_s0"])
    assert "not runs of --parts ['labels', 'width4']" in capsys.readouterr().err
    where_kd_pays.main(argv[:-1] + ["width2", "--runs", "student_scratch_w2_s1"])
    assert trained[3:] == ["student_scratch_w2_s1"]


_RECORD = {"date": "2026-12-05", "train_seconds": 60.0}  # a run, as its record and its score name it


def _finish(profile, todo, scored=True):
    """Fake finished runs: the files `fit_segmentation` and `train_model` leave, and scores."""
    profile.models_dir.mkdir(parents=True, exist_ok=True)
    for run, _, _, settings in todo:
        files = utils.RunFiles(profile.models_dir, run)
        for path in (files.model, files.history):
            path.write_text(f"{path.name} of {run}")
        files.record.write_text(json.dumps({
            **_RECORD, "seed": settings["seed"],
            "epochs": settings.get("epochs", profile.epochs)}))
    entries = [{"model": model, "run": run, "seed": s["seed"], "miou5": 0.5, **_RECORD}
               for run, model, _, s in todo[:len(todo) if scored else -1]]
    (profile.output_dir / "metrics.json").write_text(json.dumps(entries))
    (profile.output_dir / "label_subset.json").write_text('{"labelled": []}')


def test_publish_copies_scored_runs_and_seed_0_models_and_keeps_other_entries(
        tiny_data, chosen, tmp_path):
    profile = utils.load_profile("tiny", output_dir=tmp_path / "runs")
    todo = where_kd_pays.runs_of("labels", tiny_data, chosen, profile)
    _finish(profile, todo)
    results = tmp_path / "results"
    (results / "models").mkdir(parents=True)
    (results / "metrics.json").write_text(json.dumps([
        {"model": "teacher", "run": "teacher", "seed": 0, "miou5": 0.7},
        {"model": "student_scratch_l12", "run": "student_scratch_l12_s0", "seed": 0,
         "miou5": 0.1}]))
    where_kd_pays.publish(todo, profile, results, labels=True)
    published = json.loads((results / "metrics.json").read_text())
    assert [e["run"] for e in published] == ["teacher"] + [run for run, *_ in todo]
    assert {e["miou5"] for e in published[1:]} == {0.5}  # the earlier entry replaced
    models = {p.name for p in (results / "models").iterdir()}
    assert {"teacher_l12.keras", "student_scratch_l12_s0.keras",
            "student_distilled_t12_s0.keras"} <= models
    assert "student_scratch_l12_s1.keras" not in models  # seeds 1 and 2: records only
    assert {"student_scratch_l12_s1_history.json", "student_scratch_l12_s1_run.json"} <= models
    copied = (results / "models" / "teacher_l12.keras").read_text()
    assert copied == "teacher_l12.keras of teacher_l12"
    assert (results / "label_subset.json").exists()
    assert not [p for p in results.rglob(".*.partial")]  # nothing half-written left behind


def test_publish_refuses_a_part_with_unfinished_or_unscored_runs(tiny_data, chosen, tmp_path):
    profile = utils.load_profile("tiny", output_dir=tmp_path / "runs")
    todo = where_kd_pays.runs_of("width4", tiny_data, chosen, profile)
    _finish(profile, todo, scored=False)
    utils.RunFiles(profile.models_dir, "student_scratch_w4_s1").record.unlink()
    results = tmp_path / "results"
    with pytest.raises(SystemExit, match=r"unfinished runs \['student_scratch_w4_s1'\], finished "
                                         r"but not scored .* \['student_distilled_w4_s2'\]"):
        where_kd_pays.publish(todo, profile, results)
    assert not results.exists()  # nothing written


def test_publish_refuses_a_folder_of_another_profiles_runs(tiny_data, chosen, tmp_path):
    profile = utils.load_profile("tiny", output_dir=tmp_path / "runs")
    todo = where_kd_pays.runs_of("labels", tiny_data, chosen, profile)
    _finish(profile, todo)
    results = tmp_path / "results"  # as results/: the full profile's
    results.mkdir()
    (results / "profile.json").write_text(json.dumps({"name": "full"}))
    with pytest.raises(SystemExit, match=r"holds the runs of another profile than 'tiny'"):
        where_kd_pays.publish(todo, profile, results, labels=True)  # was published
    assert sorted(p.name for p in results.iterdir()) == ["profile.json"]


def test_a_score_of_a_run_trained_since_is_neither_published_nor_kept(
        tiny_data, chosen, tmp_path):
    profile = utils.load_profile("tiny", output_dir=tmp_path / "runs")
    todo = where_kd_pays.runs_of("width4", tiny_data, chosen, profile)
    _finish(profile, todo)
    files = utils.RunFiles(profile.models_dir, "student_scratch_w4_s1")
    trained_again = {**json.loads(files.record.read_text()), "train_seconds": 61.0}
    files.record.write_text(json.dumps(trained_again))
    results = tmp_path / "results"
    with pytest.raises(SystemExit, match=r"not scored \(or scored before they were trained "
                                         r"again\) \['student_scratch_w4_s1'\]"):
        where_kd_pays.publish(todo, profile, results)
    assert not results.exists()
    files.record.unlink()  # training again, not finished: --evaluate drops the old score
    with pytest.raises(SystemExit, match=r"these have not: \['student_scratch_w4_s1'\] \(the "
                                         r"scores of their earlier runs .* are dropped\)"):
        where_kd_pays.evaluate(todo, profile, tiny_data, {"labelled": []})  # nor scores any
    scored = json.loads((profile.output_dir / "metrics.json").read_text())
    assert len(scored) == len(todo) - 1 and files.name not in {e["run"] for e in scored}


def test_publish_refuses_students_trained_on_different_machines(tiny_data, chosen, tmp_path):
    profile = utils.load_profile("tiny", output_dir=tmp_path / "runs")
    todo = where_kd_pays.runs_of("labels", tiny_data, chosen, profile)
    _finish(profile, todo)
    scored = profile.output_dir / "metrics.json"
    unscored = json.loads(scored.read_text())
    cpu = {"backend": "tensorflow", "device": "CPU (x86_64, 2 cores)"}
    gpu = {"backend": "jax", "device": "NVIDIA H200"}

    def score(on_gpu):
        scored.write_text(json.dumps([{**e, **(gpu if e["run"] in on_gpu else cpu)}
                                      for e in unscored]))

    score({"teacher_l12", "student_distilled_t12_s0"})
    results = tmp_path / "results"
    with pytest.raises(SystemExit, match=r"'jax on NVIDIA H200': \['student_distilled_t12_s0'\]"):
        where_kd_pays.publish(todo, profile, results)
    assert not results.exists()  # nothing written
    score({"teacher_l12"})  # a teacher from another machine is an input, not compared
    where_kd_pays.publish(todo, profile, results)
    assert len(json.loads((results / "metrics.json").read_text())) == len(todo)


def test_the_committed_runs_of_the_grid_are_finished_runs_of_it(tiny_data, chosen, tmp_path):
    folder = utils.REPO_ROOT / "results" / "where_kd_pays" / "models"
    if not folder.exists():
        pytest.skip("no run of the grid is committed yet")
    profile = utils.load_profile("tiny", output_dir=tmp_path)
    grid = {run for part in where_kd_pays.PARTS
            for run, *_ in where_kd_pays.runs_of(part, tiny_data, chosen, profile)}
    models = sorted(folder.glob("*.keras"))
    assert models
    for model in models:
        files = utils.RunFiles.of_model(model)
        assert files.name in grid and files.record.exists() and files.history.exists(), (
            f"{model.name} is not a finished run of the grid")
        record = json.loads(files.record.read_text())
        assert record["profile"] == "full" and record["epochs"] >= 100
    assert not [*folder.glob("backup_*"), *folder.glob("*_started.json")]  # unfinished state


def test_publish_refuses_runs_of_other_epochs_or_another_teacher(tiny_data, chosen, tmp_path):
    profile = utils.load_profile("tiny", output_dir=tmp_path / "runs")
    todo = where_kd_pays.runs_of("labels", tiny_data, chosen, profile)
    _finish(profile, todo)
    results = tmp_path / "results"

    def record(run, **changes):
        files = utils.RunFiles(profile.models_dir, run)
        files.record.write_text(json.dumps({**json.loads(files.record.read_text()), **changes}))

    record("student_scratch_l12_s1", epochs=profile.epochs)  # not the matched epochs
    with pytest.raises(SystemExit, match=r"student_scratch_l12_s1 \(epochs 3, the grid's \d+\)"):
        where_kd_pays.publish(todo, profile, results)
    record("student_scratch_l12_s1", epochs=todo[0][3]["epochs"])
    for run, _, _, settings in todo:  # every student of teacher_l12 learnt from its weights
        if settings.get("teacher") == "teacher_l12":
            record(run, teacher_sha1="t12")
        if settings.get("pseudo") == "teacher_l12":
            record(run, pseudo_teacher_sha1="t12")
    record("student_distilled_t12_s2", teacher_sha1="t12-retrained")
    with pytest.raises(SystemExit, match=r"\['student_distilled_t12_s2'\] \(learnt from "
                                         r"teacher_l12 t12-retrained, not t12\)"):
        where_kd_pays.publish(todo, profile, results)
    record("student_distilled_t12_s2", teacher_sha1="t12")
    fingerprints = {"teacher": None, "teacher_l12": "t12-now"}  # teacher_l12 trained again
    with pytest.raises(SystemExit, match=r"learnt from teacher_l12 t12, not t12-now"):
        where_kd_pays.publish(todo, profile, results, fingerprint=fingerprints.get)
    assert not results.exists()  # nothing written
    where_kd_pays.publish(todo, profile, results, fingerprint={"teacher_l12": "t12"}.get)
    assert len(json.loads((results / "metrics.json").read_text())) == len(todo)


def test_the_label_subset_of_a_folder_is_never_rewritten(tmp_path, monkeypatch):
    monkeypatch.setattr(where_kd_pays.runs, "train", lambda *args, **kwargs: (None, {}))
    argv = ["--profile", "tiny", "--output", str(tmp_path), "--parts", "width4"]
    where_kd_pays.main(argv)
    written = tmp_path / "label_subset.json"
    subset = json.loads(written.read_text())
    written.write_text(json.dumps({**subset, "labelled": subset["labelled"][:1]}))
    with pytest.raises(SystemExit, match="label_subset.json names other labelled images"):
        where_kd_pays.main(argv)


def test_evaluate_scores_each_run_of_a_finished_part_on_the_test_split(
        tiny_data, chosen, tmp_path):
    profile = utils.load_profile("tiny", output_dir=tmp_path / "runs")
    todo = where_kd_pays.runs_of("width4", tiny_data, chosen, profile)[:2]  # seed 0's pair
    profile.models_dir.mkdir(parents=True)
    models = {}
    for run, _, _, settings in todo:
        keras.utils.set_random_seed(len(models))
        models[run] = utils.build_unet(2, name=run)
        utils.save_model(models[run], utils.RunFiles(profile.models_dir, run).model)
        record = {**utils.run_info(profile), "epochs": 3, "train_seconds": 9.0, "seed": 0,
                  "distillation": {"kind": "none"}, "learning_rate": profile.learning_rate,
                  "precision": "float32"}
        utils.RunFiles(profile.models_dir, run).record.write_text(json.dumps(record))
    where_kd_pays.evaluate(todo, profile, tiny_data, {"labelled": chosen})
    entries = json.loads((profile.output_dir / "metrics.json").read_text())
    assert [(e["run"], e["model"], e["seed"], e["width"]) for e in entries] == [
        ("student_scratch_w4_s0", "student_scratch_w4", 0, 4),
        ("student_distilled_w4_s0", "student_distilled_w4", 0, 4)]
    for entry in entries:
        predicted = utils.predict_logits(models[entry["run"]], tiny_data.x_test).argmax(-1)
        expected = utils.iou_scores(tiny_data.y_test, predicted, n_classes=6,
                                    labelled_classes=tiny_data.labelled_classes)
        assert entry["miou5"] == pytest.approx(expected["miou5"])
        assert entry["split"]["test"] == tiny_data.sources["test"]
        assert (entry["train_seconds"], entry["backend"]) == (9.0, keras.backend.backend())
        assert "labelled" not in entry  # all labels: no subset to name
    assert entries[0]["miou5"] != entries[1]["miou5"]  # each run's own model
