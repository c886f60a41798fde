"""Tests of `aerialkd.notebook`: loading or training a run, and its record."""

import dataclasses
import json
import time

import keras
import numpy as np
import pytest

import utils
from helpers import AtEpochBegin, disconnect, small_data


def test_saved_models_come_from_this_run_first_then_the_committed_ones(tmp_path):
    full = utils.load_profile("full", output_dir=tmp_path)
    assert utils.saved_model_path(full, "teacher") == utils.COMMITTED_MODELS / "teacher.keras"
    assert utils.saved_model_path(utils.load_profile("tiny", output_dir=tmp_path),
                                  "teacher") is None  # the tiny profile never takes them
    full.models_dir.mkdir(parents=True)
    files = utils.RunFiles(full.models_dir, "teacher")
    files.model.write_bytes(b"")  # the best epoch so far of a run that has not finished
    assert utils.saved_model_path(full, "teacher") == utils.COMMITTED_MODELS / "teacher.keras"
    files.backup.mkdir()  # interrupted here: neither it nor the committed one, it resumes
    assert utils.saved_model_path(full, "teacher") is None
    files.record.write_text("{}")
    assert utils.saved_model_path(full, "teacher") is None
    files.backup.rmdir()  # finished: the record written, the backup gone
    assert utils.saved_model_path(full, "teacher") == files.model
    assert utils.saved_model_path(full, "no_such_model") is None


def test_a_run_of_another_profile_in_the_same_folder_is_not_taken(tmp_path):
    # one SSSI_OUTPUT for both profiles: the full profile took the tiny teacher
    tiny, full = (utils.load_profile(name, output_dir=tmp_path) for name in ("tiny", "full"))
    tiny.models_dir.mkdir(parents=True)
    files = utils.RunFiles(tiny.models_dir, "teacher")
    files.model.write_bytes(b"")
    files.history.write_text('{"val_miou5": [0.1]}')
    files.record.write_text('{"profile": "tiny", "epochs": 1}')
    assert utils.saved_model_path(tiny, "teacher") == files.model
    assert utils.saved_model_path(full, "teacher") == utils.COMMITTED_MODELS / "teacher.keras"
    assert utils.saved_record(full, "teacher")["profile"] == "full"
    assert utils.saved_history(full, "teacher", committed=False) is None


def test_saved_models_take_this_runs_finished_models_first(tmp_path):
    full = utils.load_profile("full", output_dir=tmp_path)
    full.models_dir.mkdir(parents=True)
    for name, record in (("student_scratch_s0", "{}"), ("student_scratch_s7", "{}"),
                         ("student_scratch_s8", '{"profile": "tiny"}'),
                         ("student_scratch_s9", '{"profile": "fu')):  # cut short
        files = utils.RunFiles(full.models_dir, name)
        files.model.write_bytes(b"")
        files.record.write_text(record)
    utils.RunFiles(full.models_dir, "student_scratch_s7").backup.mkdir()  # unfinished
    assert utils.saved_models(full, "student_scratch_s[0-9]") == [
        full.models_dir / "student_scratch_s0.keras",  # this run's, not the committed one
        utils.COMMITTED_MODELS / "student_scratch_s1.keras",
        utils.COMMITTED_MODELS / "student_scratch_s2.keras"]  # not s7, the tiny s8 or s9
    utils.RunFiles(full.models_dir, "student_scratch_s9").history.write_text("{}")
    assert utils.saved_record(full, "student_scratch_s9") is None


def test_saved_history_can_leave_the_committed_runs_out(tmp_path):
    full = utils.load_profile("full", output_dir=tmp_path)
    assert utils.saved_history(full, "sweep_scratch") is not None  # committed
    assert utils.saved_history(full, "sweep_scratch", committed=False) is None
    files = utils.RunFiles(full.models_dir, "sweep_scratch")
    full.models_dir.mkdir(parents=True)
    files.history.write_text('{"val_miou5": [0.5]}')  # finished in this runtime
    assert utils.saved_history(full, "sweep_scratch", committed=False) == {"val_miou5": [0.5]}


def test_saved_record_is_the_record_of_the_history_saved_history_reads(tmp_path):
    full = utils.load_profile("full", output_dir=tmp_path)
    committed = utils.saved_record(full, "sweep_scratch")
    assert committed["epochs"] == len(utils.saved_history(full, "sweep_scratch")["val_miou5"])
    files = utils.RunFiles(full.models_dir, "sweep_scratch")
    full.models_dir.mkdir(parents=True)
    files.history.write_text('{"val_miou5": [0.5]}')  # this runtime's run, not recorded yet
    assert utils.saved_record(full, "sweep_scratch") is None  # not the committed run's
    files.record.write_text('{"backend": "jax", "epochs": 1}')
    assert utils.saved_record(full, "sweep_scratch") == {"backend": "jax", "epochs": 1}
    assert utils.saved_record(full, "no_such_run") is None


def test_load_or_train_trains_what_is_missing_once_and_says_so(tiny_data, tmp_path, capsys):
    profile = dataclasses.replace(utils.load_profile("tiny", output_dir=tmp_path), epochs=1)
    build = lambda: utils.build_unet(2, name="small")  # noqa: E731
    model, history, record = utils.load_or_train(profile, small_data(tiny_data), "m", build)
    assert "training it here" in capsys.readouterr().out
    assert len(history["loss"]) == 1 and record["epochs"] == 1
    assert record["precision"] == "float32" and record["distillation"] == {"kind": "none"}
    again, same_history, _ = utils.load_or_train(profile, small_data(tiny_data), "m", build)
    assert "Loaded m.keras" in capsys.readouterr().out and same_history == history
    x = tiny_data.x_test[:2]
    np.testing.assert_array_equal(utils.predict_logits(model, x), utils.predict_logits(again, x))
    _, longer, record = utils.load_or_train(profile, small_data(tiny_data), "m2", build, epochs=2)
    assert "training it here, 2 epochs" in capsys.readouterr().out
    assert len(longer["loss"]) == 2 and record["epochs"] == 2


def test_train_model_and_load_or_train_say_what_data_they_need(tiny_root, tmp_path):
    profile = utils.load_profile("tiny", output_dir=tmp_path)
    streamed = utils.load_dataset(tiny_root, 32, in_memory=False)
    with pytest.raises(ValueError, match="a streamed one.*in_memory=True"):
        utils.train_model(utils.build_unet(2), streamed, profile, name="m")
    with pytest.raises(FileNotFoundError, match="No saved m .*pass the data"):
        utils.load_or_train(profile, None, "m", utils.build_student)
    utils.RunFiles(profile.models_dir, "m").backup.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="m in .* was interrupted.*or delete .*backup_m"):
        utils.load_or_train(profile, None, "m", utils.build_student)


class SlowEpochs(keras.callbacks.Callback):
    """Adds `seconds` to the start of every epoch."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

    def on_epoch_begin(self, epoch, logs=None):
        time.sleep(self.seconds)


def test_a_resumed_runs_training_time_counts_its_earlier_stretches(tiny_data, tmp_path):
    profile = dataclasses.replace(utils.load_profile("tiny", output_dir=tmp_path), epochs=3)
    data, files = small_data(tiny_data), utils.RunFiles(profile.models_dir, "m")

    def train(*callbacks):
        keras.utils.set_random_seed(0)
        return utils.train_model(utils.build_unet(2), data, profile, name="m", verbose=0,
                                 callbacks=[SlowEpochs(0.5), *callbacks])

    with pytest.raises(KeyboardInterrupt):
        train(AtEpochBegin(2, disconnect))  # after two epochs of at least 0.5 s each
    earlier = json.loads(files.epochs_done.read_text())
    assert earlier["epochs_done"] == 2 and earlier["seconds"] >= 1.0
    start = time.perf_counter()
    _, history, record = train()
    last = time.perf_counter() - start
    assert len(history["loss"]) == 3 and not files.backup.exists()
    assert last < record["train_seconds"] <= earlier["seconds"] + last
