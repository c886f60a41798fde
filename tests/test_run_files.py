"""Tests of `aerialkd.run_files`: the names of a run's files, and writing a file whole."""

import pathlib
import time

import pytest

import utils
from aerialkd.callbacks import EpochRecord
from aerialkd.run_files import RunProgress


def test_run_files_refuse_a_name_that_is_a_path():
    with pytest.raises(ValueError, match="path separator"):
        utils.RunFiles("runs", "a/b")
    with pytest.raises(ValueError, match="must not be empty"):
        utils.RunFiles("runs", "")


def test_archive_moves_every_file_of_the_run_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda _: "20261205-120000")  # all in one second
    files = utils.RunFiles(tmp_path, "student")
    files.model.write_text("model")
    files.record.write_text("{}")
    other = utils.RunFiles(tmp_path, "teacher").model
    other.write_text("teacher")
    archive = files.archive()
    assert sorted(p.name for p in archive.iterdir()) == ["student.keras", "student_run.json"]
    assert files.existing() == [] and other.exists()
    assert utils.RunFiles(tmp_path, "absent").archive() is None
    files.model.write_text("second model")
    files.record.write_text("second record")
    second = files.archive([files.model, files.history])  # in the same second: its own folder
    assert second != archive and [p.name for p in second.iterdir()] == ["student.keras"]
    assert (archive / "student.keras").read_text() == "model"
    assert files.existing() == [files.record]


def test_epoch_record_sums_the_seconds_of_a_run_over_its_stretches(tmp_path):
    files = utils.RunFiles(tmp_path, "student")
    assert files.progress() == RunProgress() and files.seconds_trained() == 0.0  # not started
    for stretch in range(2):  # interrupted after an epoch, then resumed for one more
        record = EpochRecord(files, "float32")
        record.on_train_begin()
        time.sleep(0.2)
        record.on_epoch_end(stretch)
        assert files.seconds_trained() >= 0.2 * (stretch + 1)
    progress = files.progress()
    assert progress.epochs == 2 and progress.precision == "float32"
    assert files.seconds_trained() == progress.seconds
    files.epochs_done.unlink()  # the backup goes when the run finishes
    assert files.seconds_trained() == 0.0


def test_progress_reads_a_record_written_before_it_held_the_precision(tmp_path):
    files = utils.RunFiles(tmp_path, "student")
    files.backup.mkdir()
    files.epochs_done.write_text('{"epochs_done": 194, "seconds": 5159.1}')
    assert files.progress() == RunProgress(194, 5159.1, None)


def test_write_into_place_writes_text_and_bytes(tmp_path):
    path = tmp_path / "metrics.json"
    utils.write_into_place(path, "[1]")
    assert path.read_text() == "[1]"
    utils.write_into_place(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no partial file left


def test_write_into_place_leaves_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    path.write_text("old")

    def disk_full(self, data, *args, **kwargs):  # writes a part, then fails
        with open(self, "w") as file:
            file.write(data[:3])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_text", disk_full)
    with pytest.raises(OSError, match="No space left"):
        utils.write_into_place(path, "new contents")
    monkeypatch.undo()
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # the part is gone
