"""Tests of `aerialkd.training`: `compile_segmentation` and `fit_segmentation`, one way to train."""

import dataclasses
import json
import shutil

import keras
import numpy as np
import pytest

import aerialkd
import utils
from helpers import AtEpochBegin, disconnect, fresh_segmenter, segmenter, small_data


def test_fit_saves_best_model_and_history(tiny_data, small_unet, tmp_path):
    model = utils.compile_segmentation(small_unet, labelled_classes=utils.LABELLED_CLASSES)
    history = utils.fit_segmentation(model, small_data(tiny_data), epochs=2,
                                     output_dir=tmp_path, name="m", batch_size=8,
                                     verbose=0)
    assert len(history["loss"]) == 2 and "val_miou5" in history
    best = json.loads((tmp_path / "m.best.json").read_text())
    assert best["best"] == pytest.approx(max(history["val_miou5"]))
    assert json.loads((tmp_path / "m_history.json").read_text()) == history


def test_fit_requires_a_compiled_model(tiny_data, small_unet, tmp_path):
    with pytest.raises(ValueError, match="Compile the model"):
        utils.fit_segmentation(small_unet, tiny_data, epochs=1, output_dir=tmp_path,
                               name="m")


def test_fit_segmentation_points_a_streamed_dataset_to_model_fit(tmp_path):
    root = utils.make_custom_dataset(tmp_path / "data", n_images=6, size=(64, 64))
    data = utils.load_dataset(root, patch_size=32, classes=root / "classes.json",
                              resize_masks=True, in_memory=False)
    model = utils.compile_segmentation(utils.build_unet(2, n_classes=data.n_classes),
                                       labelled_classes=data.labelled_classes)
    with pytest.raises(ValueError, match=r"streamed .*model\.fit\(data\.stream\('train'\)"):
        utils.fit_segmentation(model, data, epochs=1, output_dir=tmp_path, name="m")


def test_distiller_checkpoint_holds_the_student_alone(tiny_data, tmp_path):
    keras.utils.set_random_seed(0)
    teacher, student = utils.build_unet(2, name="t"), utils.build_unet(2, name="s")
    distiller = utils.compile_segmentation(utils.Distiller(teacher=teacher, student=student))
    history = utils.fit_segmentation(distiller, small_data(tiny_data), epochs=1,
                                     output_dir=tmp_path, name="d", batch_size=8,
                                     verbose=0)
    assert {"student_loss", "distillation_loss", "val_distillation_loss"} <= set(history)
    saved = keras.models.load_model(tmp_path / "d.keras")
    assert saved.name == "s" and saved.count_params() == student.count_params()
    assert not saved.compiled  # inference checkpoint: no optimizer state
    utils.Distiller(teacher=saved, student=utils.build_unet(2))  # usable as a teacher


def _straight_and_cut(data, tmp_path, at=2, distil=False, end=None, **more):
    """Trains a 3-epoch run straight into `tmp_path / "a"`, and the same run into
    `tmp_path / "b"` cut at the start of epoch `at` (1-based, as a disconnected
    runtime is); `end` sees the straight run's last weights. Returns fit's keyword
    arguments and the straight run's history."""
    kwargs = dict(epochs=3, name="m", batch_size=4, verbose=0, **more)  # 6 batches an epoch
    straight = utils.fit_segmentation(fresh_segmenter(distil), data, output_dir=tmp_path / "a",
                                      callbacks=[end] if end else (), **kwargs)
    with pytest.raises(KeyboardInterrupt):
        utils.fit_segmentation(fresh_segmenter(distil), data, output_dir=tmp_path / "b",
                               callbacks=[AtEpochBegin(at, disconnect)], **kwargs)
    return kwargs, straight


@pytest.mark.parametrize("distil, sampling", [(False, "grid"), (True, "grid"), (True, "random")],
                         ids=["plain", "distiller", "distiller-random-crops"])
def test_interrupted_training_resumes_and_ends_with_the_same_weights(tiny_data, tmp_path,
                                                                     distil, sampling):
    data = small_data(tiny_data)
    ends = [_FinalWeights(), _FinalWeights()]
    kwargs, _ = _straight_and_cut(data, tmp_path, distil=distil, end=ends[0], sampling=sampling)
    straight = keras.models.load_model(tmp_path / "a" / "m.keras")
    assert (tmp_path / "b" / "backup_m").exists()
    history = utils.fit_segmentation(fresh_segmenter(distil), data, output_dir=tmp_path / "b",
                                     callbacks=[ends[1]], **kwargs)
    assert history["epoch"] == [0, 1, 2]  # epochs 1-2 kept, epoch 3 run after resuming
    # the weights after epoch 3 (the best checkpoint may be of an epoch before the stop)
    assert len(ends[1].weights) == len(ends[0].weights) > 0
    for a, b in zip(ends[0].weights, ends[1].weights):
        np.testing.assert_array_equal(a, b)
    resumed = keras.models.load_model(tmp_path / "b" / "m.keras")
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_run_killed_between_its_history_row_and_its_backup_resumes_with_one_row_an_epoch(
        tiny_data, tmp_path):
    data = small_data(tiny_data)
    kwargs, straight = _straight_and_cut(data, tmp_path)
    csv_path = utils.RunFiles(tmp_path / "b", "m").history_csv
    rows = csv_path.read_text().splitlines()
    assert len(rows) == 3  # the header and epochs 1-2, as the backup holds
    # killed at the end of epoch 3 after its row, before its backup, as a row of
    # epoch 4 was being written
    csv_path.write_text("\r\n".join(rows + ["2" + rows[2][1:], "3,0.5,0."]))
    resumed = utils.fit_segmentation(fresh_segmenter(), data, output_dir=tmp_path / "b", **kwargs)
    assert resumed["epoch"] == [0, 1, 2]
    for key in straight:
        np.testing.assert_array_equal(resumed[key], straight[key], err_msg=key)


def test_a_run_killed_while_writing_its_backup_resumes_from_the_epoch_before(
        tiny_data, tmp_path):
    data = small_data(tiny_data)
    ends = [_FinalWeights(), _FinalWeights()]
    kwargs, _ = _straight_and_cut(data, tmp_path, end=ends[0])
    # As if killed while Keras wrote epoch 2's weights (Keras' own file names): garbage, its
    # record of the epoch is the one before, and so is ours (written after).
    files = utils.RunFiles(tmp_path / "b", "m")
    (files.backup / "latest.weights.h5").write_bytes(b"half a file")
    shutil.copy(files.backup / "training_metadata.json.bkp",
                files.backup / "training_metadata.json")
    done = json.loads(files.epochs_done.read_text())
    files.epochs_done.write_text(json.dumps({**done, "epochs_done": 1}))
    history = utils.fit_segmentation(fresh_segmenter(), data, output_dir=tmp_path / "b",
                                     callbacks=[ends[1]], **kwargs)
    assert history["epoch"] == [0, 1, 2]
    for a, b in zip(ends[0].weights, ends[1].weights):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kill, at", [
    ("after Keras' record", 2), ("while Keras wrote its record", 2),
    ("between Keras' weights and record", 2), ("between Keras' weights and record", 1)])
def test_a_run_killed_around_keras_record_of_its_backup_resumes_where_keras_does(
        tiny_data, tmp_path, kill, at):
    data = small_data(tiny_data)
    ends = [_FinalWeights(), _FinalWeights()]
    kwargs, straight = _straight_and_cut(data, tmp_path, at=at, end=ends[0])
    files = utils.RunFiles(tmp_path / "b", "m")
    backup = aerialkd.callbacks.SharedBackup  # Keras' files, by their names
    record, weights = files.backup / backup.METADATA, files.backup / backup.WEIGHTS
    assert json.loads(record.read_text())["epoch"] == at == files.progress().epochs
    assert weights.exists() and (at > 1) == (files.backup / f"{backup.METADATA}.bkp").exists()
    if kill == "while Keras wrote its record":  # of epoch 2: the checkpoint before is whole
        record.write_text('{"epo')
    elif kill == "between Keras' weights and record":  # epoch `at`'s weights, the record before
        if at == 1:
            record.unlink()
        else:
            shutil.copyfile(files.backup / f"{backup.METADATA}.bkp", record)
    # ours comes after Keras' record: the kill left it at the epoch before
    files.record_progress(dataclasses.replace(files.progress(), epochs=at - 1))
    history = utils.fit_segmentation(fresh_segmenter(), data, output_dir=tmp_path / "b",
                                     callbacks=[ends[1]], **kwargs)
    assert history["epoch"] == [0, 1, 2]
    for key in straight:
        np.testing.assert_array_equal(history[key], straight[key], err_msg=key)
    for a, b in zip(ends[0].weights, ends[1].weights):
        np.testing.assert_array_equal(a, b)


def test_a_run_is_not_resumed_with_other_batches(tiny_data, tmp_path):
    data = small_data(tiny_data)
    kwargs = dict(epochs=2, name="m", verbose=0, output_dir=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        utils.fit_segmentation(fresh_segmenter(), data, batch_size=4,
                               callbacks=[AtEpochBegin(1, disconnect)], **kwargs)
    with pytest.raises(ValueError, match=r"trained with \{'batch_size': 4, 'seed': 0\}, and "
                                         r"this call asks for \{'batch_size': 8, 'seed': 1\}"):
        utils.fit_segmentation(fresh_segmenter(), data, batch_size=8, seed=1, **kwargs)
    with pytest.raises(ValueError, match=r"trained with \{'epochs': 2, 'train_patches': 24\}"
                                         r", and this call asks for \{'epochs': 4, "
                                         r"'train_patches': 16\}"):  # another run
        utils.fit_segmentation(fresh_segmenter(), dataclasses.replace(
            data, x_train=data.x_train[:16], y_train=data.y_train[:16]), batch_size=4,
            **{**kwargs, "epochs": 4})
    history = utils.fit_segmentation(fresh_segmenter(), data, batch_size=4, **kwargs)
    assert history["epoch"] == [0, 1]  # resumed


def test_a_distillation_is_not_resumed_with_other_settings(tiny_data, tmp_path):
    # alpha is a variable the backup restores, the temperature a float it does not:
    # the run went on with the old alpha and the new temperature, recorded as asked
    data = small_data(tiny_data)
    kwargs = dict(epochs=2, name="m", batch_size=4, verbose=0, output_dir=tmp_path)

    def distiller(**settings):
        model = fresh_segmenter(distil=True)
        for key, value in settings.items():
            setattr(model, key, value)
        return model

    with pytest.raises(KeyboardInterrupt):
        utils.fit_segmentation(distiller(alpha=0.5), data,
                               callbacks=[AtEpochBegin(1, disconnect)], **kwargs)
    with pytest.raises(ValueError, match=r"trained with \{'distillation': \{'kind': 'pixel', "
                                         r"'alpha': 0.5, 'temperature': 4.0\}\}.*'alpha': 0.9"):
        utils.fit_segmentation(distiller(alpha=0.9, temperature=2.0), data, **kwargs)
    history = utils.fit_segmentation(distiller(alpha=0.5), data, **kwargs)
    assert history["epoch"] == [0, 1]  # resumed


def test_a_fresh_run_keeps_an_interrupted_runs_history_aside(tiny_data, tmp_path):
    data = small_data(tiny_data)
    kwargs = dict(epochs=2, name="m", batch_size=4, verbose=0, output_dir=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        utils.fit_segmentation(fresh_segmenter(), data, callbacks=[AtEpochBegin(1, disconnect)],
                               **kwargs)
    files = utils.RunFiles(tmp_path, "m")
    earlier = {path.name: path.read_bytes() for path in (files.history_csv, files.best)}
    shutil.rmtree(files.backup)  # as the advice to train afresh says
    utils.fit_segmentation(fresh_segmenter(), data, **kwargs)
    (archive,) = (tmp_path / "previous").iterdir()
    assert {name: (archive / name).read_bytes() for name in earlier} == earlier


@pytest.mark.parametrize("argument, value", [
    ("batch_size", 0), ("batch_size", 8.0), ("batch_size", True), ("epochs", 0),
    ("mix", "blend"), ("mix_probability", 7), ("seed", None), ("seed", -1)])
def test_a_bad_argument_is_refused_by_name_before_an_earlier_run_is_moved(
        tiny_data, tmp_path, argument, value):
    data = small_data(tiny_data)
    kwargs = dict(epochs=1, name="m", batch_size=8, verbose=0, output_dir=tmp_path)
    utils.fit_segmentation(fresh_segmenter(), data, **kwargs)
    before = sorted(path.name for path in tmp_path.iterdir())
    with pytest.raises(ValueError, match=rf"^{argument} must be"):
        utils.fit_segmentation(fresh_segmenter(), data, **{**kwargs, argument: value})
    assert sorted(path.name for path in tmp_path.iterdir()) == before


class _Logs(keras.callbacks.Callback):
    """Adds `extra` to every epoch's logs."""

    def on_epoch_end(self, epoch, logs=None):
        logs["extra"] = 7.0


def test_a_value_logged_after_resuming_shifts_no_column_of_the_history(tiny_data, tmp_path):
    data = small_data(tiny_data)
    kwargs, straight = _straight_and_cut(data, tmp_path)
    resumed = utils.fit_segmentation(fresh_segmenter(), data, output_dir=tmp_path / "b",
                                     callbacks=[_Logs()], **kwargs)
    assert resumed.keys() == straight.keys()  # the header's columns; "extra" left out
    for key in straight:
        np.testing.assert_array_equal(resumed[key], straight[key], err_msg=key)


def test_numpy_numbers_train_and_resume_as_plain_ones(tiny_data, tmp_path):
    kwargs = dict(epochs=1, output_dir=tmp_path, name="m", verbose=0, sampling="consistent",
                  mix_probability=np.float32(0.3))
    keras.utils.set_random_seed(0)
    model = utils.compile_segmentation(utils.build_unet(2, augment=False))
    history = utils.fit_segmentation(model, small_data(tiny_data), batch_size=np.int64(8),
                                     seed=np.int64(1), **kwargs)
    assert len(history["loss"]) == 1


def test_what_a_callback_adds_to_the_logs_is_in_the_history(tiny_data, tmp_path):
    keras.utils.set_random_seed(0)
    distiller = utils.compile_segmentation(utils.Distiller(
        teacher=utils.build_unet(2, name="t"), student=utils.build_unet(2, name="s")))
    schedule = utils.KDWeightSchedule(utils.KDWeightSchedule.warmup(1, 0.25))
    history = utils.fit_segmentation(distiller, small_data(tiny_data), epochs=2,
                                     output_dir=tmp_path, name="d", batch_size=8, verbose=0,
                                     callbacks=[schedule])
    assert history["alpha"] == [1.0, 0.25]


def test_a_backup_is_resumed_in_its_own_precision_alone(tiny_data, tmp_path):
    # A T4 trains in mixed_float16 with a loss-scale optimizer; a CPU runtime that
    # resumed its backup in float32 would load the weights but not the optimizer.
    # bfloat16 and float32 share their optimizer, but the record names one precision.
    data = small_data(tiny_data)
    kwargs = dict(epochs=2, name="m", batch_size=4, verbose=0, output_dir=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        utils.fit_segmentation(fresh_segmenter(), data, callbacks=[AtEpochBegin(1, disconnect)],
                               **kwargs)

    def in_precision(policy):  # fresh_segmenter's model, in `policy`
        keras.utils.set_random_seed(0)
        return utils.compile_segmentation(utils.with_dtype_policy(segmenter("m"), policy),
                                          labelled_classes=utils.LABELLED_CLASSES)

    with pytest.raises(ValueError, match=r"trained in float32, and this model computes in "
                                         r"mixed_float16.*with_dtype_policy\(model, 'float32'\)"):
        utils.fit_segmentation(in_precision("mixed_float16"), data, **kwargs)
    with pytest.raises(ValueError, match=r"trained in float32, and this model computes in "
                                         r"mixed_bfloat16.*a run trained in two"):
        utils.fit_segmentation(in_precision("mixed_bfloat16"), data, **kwargs)
    history = utils.fit_segmentation(in_precision("float32"), data, **kwargs)
    assert history["epoch"] == [0, 1]  # resumed


class _FinalWeights(keras.callbacks.Callback):
    """Keeps the model's weights as training ends."""

    def on_train_end(self, logs=None):
        self.weights = [np.array(w) for w in self.model.get_weights()]


def test_distiller_trains_the_same_on_cached_teacher_logits(tiny_data, tmp_path):
    data = small_data(tiny_data)
    kwargs = dict(epochs=2, name="m", batch_size=4, verbose=0)
    histories, weights = [], []
    for cache in (True, False):
        folder = tmp_path / str(cache)
        histories.append(utils.fit_segmentation(fresh_segmenter(distil=True), data, output_dir=folder,
                                                cache_teacher=cache, **kwargs))
        weights.append(keras.models.load_model(folder / "m.keras").get_weights())
    assert histories[0].keys() == histories[1].keys()
    for key in ("distillation_loss", "student_loss", "val_distillation_loss", "val_miou5"):
        np.testing.assert_allclose(histories[0][key], histories[1][key], rtol=1e-4, err_msg=key)
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_float16_training_gets_loss_scaling_and_bfloat16_does_not():
    for policy, scaled in (("mixed_float16", True), ("mixed_bfloat16", False)):
        model = utils.compile_segmentation(utils.with_dtype_policy(utils.build_unet(2), policy))
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == scaled


def test_labels_outside_the_models_classes_are_refused_naming_the_split(tiny_data, tmp_path):
    data = small_data(tiny_data)
    for split, value in (("train", 7), ("val", -1)):  # the loss counted them, learning nothing
        labels = getattr(data, f"y_{split}").astype("int16")
        labels[0, 0, :3] = value
        bad = dataclasses.replace(data, **{f"y_{split}": labels})
        with pytest.raises(ValueError, match=rf"data.y_{split} holds the labels \[{value}\] "
                                             rf"\(3 pixels\) outside the model's 6 classes"):
            utils.fit_segmentation(fresh_segmenter(), bad, epochs=1, output_dir=tmp_path,
                                   name="m")
    assert not (tmp_path / "m_history.csv").exists()


def test_consistent_sampling_refuses_a_model_that_augments_itself(tiny_data, tmp_path):
    with pytest.raises(ValueError, match=r"augment=False"):
        utils.fit_segmentation(fresh_segmenter(distil=True), small_data(tiny_data), epochs=1,
                               output_dir=tmp_path, name="m", sampling="consistent")


def test_consistent_sampling_trains_a_distiller_with_the_teacher_live(tiny_data, tmp_path):
    keras.utils.set_random_seed(0)
    distiller = utils.compile_segmentation(utils.Distiller(
        teacher=utils.build_unet(2, name="t"), student=utils.build_unet(2, augment=False)))
    history = utils.fit_segmentation(distiller, small_data(tiny_data), epochs=1,
                                     output_dir=tmp_path, name="m", batch_size=8, verbose=0,
                                     sampling="consistent", mix="mixup", mix_probability=1.0)
    assert np.isfinite(history["distillation_loss"][0]) and (tmp_path / "m.keras").exists()


def test_feature_term_trains_without_cached_teacher_logits_and_says_so(tiny_data, tmp_path):
    keras.utils.set_random_seed(0)
    distiller = utils.compile_segmentation(utils.Distiller(
        teacher=utils.build_unet(4, name="t"), student=utils.build_unet(2, name="s"),
        feature_weight=1.0))
    with pytest.warns(UserWarning, match="cache_teacher=True is ignored"):
        history = utils.fit_segmentation(distiller, small_data(tiny_data), epochs=1,
                                         output_dir=tmp_path, name="m", batch_size=8,
                                         verbose=0, cache_teacher=True)
    assert np.isfinite(history["feature_loss"][0]) and "val_feature_loss" in history


def test_the_readme_example_runs_and_scores_the_saved_best_student(tmp_path, monkeypatch,
                                                                   capsys):
    readme = (utils.REPO_ROOT / "README.md").read_text()
    example = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'load_model("outputs/student.keras")' in example
    # One tile of nine 64x64 images: 24 training patches of 32 px, a few batches an epoch.
    root = utils.make_tiny_dataset(tmp_path / "data", tile_sizes=((64, 64),))
    example = (example.replace('"path/to/aerial-dubai", patch_size=256',
                               f'"{root}", patch_size=32')
               .replace("epochs=100", "epochs=2"))
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    printed = float(capsys.readouterr().out.strip().splitlines()[-1])
    data, saved = namespace["data"], keras.models.load_model(tmp_path / "outputs" / "student.keras")
    assert printed == pytest.approx(  # the best epoch's student, as saved
        utils.evaluate_segmentation(saved, data.x_test, data.y_test,
                                    labelled_classes=data.labelled_classes)["miou5"], abs=1e-6)


@pytest.mark.parametrize("n_train, batch_size, advice", [
    (10, 16, "pass e.g. batch_size=10"), (24, 7, "pass e.g. batch_size=6"),
    (24, 30, "pass e.g. batch_size=24"), (1, 2, "there are fewer training patches than devices")])
def test_a_batch_the_devices_cannot_share_is_refused_with_one_they_can(
        tiny_data, tmp_path, monkeypatch, n_train, batch_size, advice):
    monkeypatch.setattr(aerialkd.training, "data_parallel_size", lambda model: 2)
    data = dataclasses.replace(small_data(tiny_data), x_train=tiny_data.x_train[:n_train],
                               y_train=tiny_data.y_train[:n_train])
    with pytest.raises(ValueError, match=rf"batch_size={batch_size}: {advice}"):
        utils.fit_segmentation(fresh_segmenter(), data, epochs=1, output_dir=tmp_path,
                               name="m", batch_size=batch_size)
    assert not any(tmp_path.iterdir())
