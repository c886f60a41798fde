"""Tests of `aerialkd.callbacks`: the best checkpoint, and a NaN loss that stops training."""

import json

import keras
import numpy as np
import pytest

import aerialkd
import utils
from helpers import AtEpochBegin, fresh_segmenter, poison, small_data


def test_best_checkpoint_refuses_an_epoch_whose_loss_is_not_finite(tmp_path, small_unet):
    # It does not rely on _StopOnNaN running first: the callbacks' order is free.
    best = aerialkd.callbacks.BestModelCheckpoint(tmp_path / "m.keras", monitor="val_miou5")
    best.set_model(small_unet)
    best.on_train_begin()
    best.on_epoch_end(0, {"loss": float("nan"), "val_miou5": 0.9})
    assert not (tmp_path / "m.keras").exists() and best.best == -np.inf
    best.on_epoch_end(1, {"loss": 1.0, "val_miou5": 0.5})
    assert (tmp_path / "m.keras").exists() and best.best == 0.5


def test_the_tables_name_the_epoch_the_checkpoint_kept(tmp_path, small_unet):
    history = {"loss": [1.0, 0.9, float("nan"), 0.8, 0.7, 0.6],
               "val_miou5": [0.2, 0.5, 0.9, float("nan"), 0.5, 0.4]}  # a tie at 0.5
    best = aerialkd.callbacks.BestModelCheckpoint(tmp_path / "m.keras", monitor="val_miou5")
    best.set_model(small_unet)
    best.on_train_begin()
    for epoch, logs in enumerate(zip(history["loss"], history["val_miou5"])):
        best.on_epoch_end(epoch, dict(zip(("loss", "val_miou5"), logs)))
    kept = json.loads((tmp_path / "m.best.json").read_text())["epoch"]
    assert kept == aerialkd.callbacks.best_epoch(history, "val_miou5") == 2
    assert "2 (best)" in [row["epoch"] for row in utils.history_rows(history, every=10)]


def test_nan_loss_stops_training_and_keeps_the_best_checkpoint(tiny_data, tmp_path):
    with pytest.raises(FloatingPointError,
                       match=r"loss became nan in epoch 2.*best checkpoint so far .* is kept at"):
        utils.fit_segmentation(fresh_segmenter(), small_data(tiny_data), epochs=4, output_dir=tmp_path,
                               name="m", batch_size=8, verbose=0, callbacks=[AtEpochBegin(1, poison)])
    assert len(utils.read_history(tmp_path / "m_history.csv")["loss"]) == 2
    kept = keras.models.load_model(tmp_path / "m.keras")
    assert all(np.isfinite(w).all() for w in kept.get_weights())
    assert json.loads((tmp_path / "m.best.json").read_text())["epoch"] == 1


def test_nan_in_the_first_epoch_saves_no_model_and_mixes_none_with_an_earlier_run(
        tiny_data, tmp_path):
    earlier = utils.RunFiles(tmp_path, "m")  # a finished run of the same name
    for path in (earlier.model, earlier.history, earlier.record):
        path.write_text(f"earlier {path.name}")
    with pytest.raises(FloatingPointError, match="no checkpoint had been saved yet"):
        utils.fit_segmentation(fresh_segmenter(), small_data(tiny_data), epochs=2, output_dir=tmp_path,
                               name="m", batch_size=8, verbose=0, callbacks=[AtEpochBegin(0, poison)])
    assert not earlier.model.exists() and not earlier.record.exists()
    (kept,) = (tmp_path / "previous").iterdir()  # the earlier run's files, untouched
    assert sorted(p.read_text() for p in kept.iterdir()) == [
        "earlier m.keras", "earlier m_history.json", "earlier m_run.json"]


def test_a_backup_record_cut_short_without_a_checkpoint_before_names_the_folder(tmp_path):
    (tmp_path / aerialkd.callbacks.SharedBackup.METADATA).write_text('{"epo')
    with pytest.raises(ValueError, match=rf"cut short .* delete {tmp_path} to train afresh"):
        aerialkd.callbacks.SharedBackup.restored_epochs(tmp_path)
    assert aerialkd.callbacks.SharedBackup.restored_epochs(tmp_path / "none") is None


def test_a_resumed_history_whose_file_is_gone_starts_it_with_a_header(tmp_path):
    path = tmp_path / "m_history.csv"  # the run's backup holds 2 epochs; the CSV was deleted
    logger = aerialkd.callbacks.HistoryLogger(str(path), epochs_done=2)
    logger.on_train_begin()
    logger.on_epoch_end(2, {"loss": 0.5, "val_loss": 0.6})
    logger.on_train_end()
    assert path.read_text().split() == ["epoch,loss,val_loss", "2,0.5,0.6"]
