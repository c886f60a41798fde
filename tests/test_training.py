"""Tests of section 4 of utils.py: training, checkpoints, saved models."""

import json

import keras
import numpy as np
import pytest

import aerialkd
import utils


def _small_data(tiny_data):
    import dataclasses

    return dataclasses.replace(tiny_data, x_train=tiny_data.x_train[:24],
                               y_train=tiny_data.y_train[:24],
                               x_val=tiny_data.x_val[:8], y_val=tiny_data.y_val[:8])


def test_fit_saves_best_model_and_history(tiny_data, small_unet, tmp_path):
    model = utils.compile_segmentation(small_unet, labelled_classes=utils.LABELLED_CLASSES)
    history = utils.fit_segmentation(model, _small_data(tiny_data), epochs=2,
                                     output_dir=tmp_path, name="m", batch_size=8,
                                     verbose=0)
    assert len(history["loss"]) == 2 and "val_miou5" in history
    best = json.loads((tmp_path / "m.best.json").read_text())
    assert best["best"] == pytest.approx(max(history["val_miou5"]))
    assert json.loads((tmp_path / "m_history.json").read_text()) == history


def test_saved_student_loads_alone_and_predicts_identically(tiny_data, tmp_path):
    keras.utils.set_random_seed(0)
    student = utils.build_student()
    path = tmp_path / "student.keras"
    utils.save_model(student, path)
    loaded = keras.models.load_model(path)  # no custom_objects needed
    assert not loaded.compiled
    x = tiny_data.x_test[:2]
    np.testing.assert_array_equal(utils.predict_logits(student, x),
                                  utils.predict_logits(loaded, x))


def test_distiller_checkpoint_holds_the_student_alone(tiny_data, tmp_path):
    keras.utils.set_random_seed(0)
    teacher, student = utils.build_unet(2, name="t"), utils.build_unet(2, name="s")
    distiller = utils.compile_segmentation(utils.Distiller(teacher=teacher, student=student))
    history = utils.fit_segmentation(distiller, _small_data(tiny_data), epochs=1,
                                     output_dir=tmp_path, name="d", batch_size=8,
                                     verbose=0)
    assert {"student_loss", "distillation_loss", "val_distillation_loss"} <= set(history)
    saved = keras.models.load_model(tmp_path / "d.keras")
    assert saved.name == "s" and saved.count_params() == student.count_params()
    assert not saved.compiled  # inference checkpoint: no optimizer state
    utils.Distiller(teacher=saved, student=utils.build_unet(2))  # usable as a teacher


def test_fit_requires_a_compiled_model(tiny_data, small_unet, tmp_path):
    with pytest.raises(ValueError, match="Compile the model"):
        utils.fit_segmentation(small_unet, tiny_data, epochs=1, output_dir=tmp_path,
                               name="m")


class _AtEpochBegin(keras.callbacks.Callback):
    """Runs `action(model)` when the epoch with 0-based index `epoch` begins."""

    def __init__(self, epoch, action):
        super().__init__()
        self.epoch, self.action = epoch, action

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            self.action(self.model)


def _disconnect(model):
    raise KeyboardInterrupt("runtime disconnected")


def _poison(model):
    model.set_weights([np.full_like(w, np.nan) for w in model.get_weights()])


def _segmenter(name, augment=True):
    """A small model with all the state a U-Net has: augmentation and dropout draws."""
    inputs = keras.Input((None, None, 3))
    x, symmetry = utils.RandomSymmetry(name=f"{name}_augment")(inputs)
    x = keras.layers.Rescaling(1 / 255)(x)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    x = keras.layers.Dropout(0.3)(x)
    logits = keras.layers.Conv2D(6, 1, name="logits")(x)
    if augment:
        logits = utils.UndoSymmetry()([logits, symmetry])
    return keras.Model(inputs, logits, name=name)


def _fresh(distil=False):
    keras.utils.set_random_seed(0)
    model = _segmenter("m")
    if distil:
        model = utils.Distiller(teacher=_segmenter("t", augment=False), student=model)
    return utils.compile_segmentation(model, labelled_classes=utils.LABELLED_CLASSES)


@pytest.mark.parametrize("distil, sampling", [(False, "grid"), (True, "grid"), (True, "random")],
                         ids=["plain", "distiller", "distiller-random-crops"])
def test_interrupted_training_resumes_and_ends_with_the_same_weights(tiny_data, tmp_path,
                                                                     distil, sampling):
    data = _small_data(tiny_data)
    kwargs = dict(epochs=3, name="m", batch_size=4, verbose=0,  # 6 batches an epoch
                  sampling=sampling)
    utils.fit_segmentation(_fresh(distil), data, output_dir=tmp_path / "straight", **kwargs)
    straight = keras.models.load_model(tmp_path / "straight" / "m.keras")
    with pytest.raises(KeyboardInterrupt):
        utils.fit_segmentation(_fresh(distil), data, output_dir=tmp_path / "resumed",
                               callbacks=[_AtEpochBegin(2, _disconnect)], **kwargs)
    assert (tmp_path / "resumed" / "backup_m").exists()
    history = utils.fit_segmentation(_fresh(distil), data, output_dir=tmp_path / "resumed",
                                     **kwargs)
    assert history["epoch"] == [0, 1, 2]  # epochs 1-2 kept, epoch 3 run after resuming
    resumed = keras.models.load_model(tmp_path / "resumed" / "m.keras")
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_distiller_trains_the_same_on_cached_teacher_logits(tiny_data, tmp_path):
    data = _small_data(tiny_data)
    kwargs = dict(epochs=2, name="m", batch_size=4, verbose=0)
    histories, weights = [], []
    for cache in (True, False):
        folder = tmp_path / str(cache)
        histories.append(utils.fit_segmentation(_fresh(distil=True), data, output_dir=folder,
                                                cache_teacher=cache, **kwargs))
        weights.append(keras.models.load_model(folder / "m.keras").get_weights())
    assert histories[0].keys() == histories[1].keys()
    for key in ("distillation_loss", "student_loss", "val_distillation_loss", "val_miou5"):
        np.testing.assert_allclose(histories[0][key], histories[1][key], rtol=1e-4, err_msg=key)
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_distiller_uses_given_teacher_logits_instead_of_the_teacher(tiny_data):
    x, y = tiny_data.x_val[:2], tiny_data.y_val[:2]
    distiller = _fresh(distil=True)
    logits = utils.predict_logits(distiller.teacher, x)
    own = distiller.test_on_batch(x, y, return_dict=True)
    given = distiller.test_on_batch((x, logits), y, return_dict=True)
    assert given["distillation_loss"] == pytest.approx(own["distillation_loss"], rel=1e-5)
    other = distiller.test_on_batch((x, np.zeros_like(logits)), y, return_dict=True)
    assert other["distillation_loss"] != pytest.approx(own["distillation_loss"], rel=1e-2)
    assert other["student_loss"] == pytest.approx(own["student_loss"], rel=1e-6)
    with pytest.raises(ValueError, match="teacher_logits must be"):
        utils.PatchSequence(x, y, teacher_logits=logits[:1])


def test_nan_loss_stops_training_and_keeps_the_best_checkpoint(tiny_data, tmp_path):
    with pytest.raises(FloatingPointError,
                       match=r"loss became nan in epoch 2.*best checkpoint so far .* is kept at"):
        utils.fit_segmentation(_fresh(), _small_data(tiny_data), epochs=4, output_dir=tmp_path,
                               name="m", batch_size=8, verbose=0, callbacks=[_AtEpochBegin(1, _poison)])
    assert len(utils.read_history(tmp_path / "m_history.csv")["loss"]) == 2
    kept = keras.models.load_model(tmp_path / "m.keras")
    assert all(np.isfinite(w).all() for w in kept.get_weights())
    assert json.loads((tmp_path / "m.best.json").read_text())["epoch"] == 1


def test_nan_in_the_first_epoch_saves_no_model(tiny_data, tmp_path):
    with pytest.raises(FloatingPointError, match="no checkpoint had been saved yet"):
        utils.fit_segmentation(_fresh(), _small_data(tiny_data), epochs=2, output_dir=tmp_path,
                               name="m", batch_size=8, verbose=0, callbacks=[_AtEpochBegin(0, _poison)])
    assert not (tmp_path / "m.keras").exists()


def test_training_metrics_ignore_unannotated_pixels():
    inputs = keras.Input((16, 16, 3))
    logits = keras.layers.Conv2D(6, 1, kernel_initializer="zeros", bias_initializer=
                                 keras.initializers.Constant([5.0, 0, 0, 0, 0, 0]))(inputs)
    model = utils.compile_segmentation(keras.Model(inputs, logits),  # always Building
                                       labelled_classes=utils.LABELLED_CLASSES)
    y = np.zeros((2, 16, 16), np.uint8)
    y[:, :4] = utils.IGNORE_INDEX  # a quarter unannotated
    scores = model.evaluate(np.zeros((2, 16, 16, 3)), y, verbose=0, return_dict=True)
    assert scores["pixel_acc"] == pytest.approx(1.0)  # not 0.75
    assert scores["miou5"] == pytest.approx(1.0)


def test_the_readme_example_runs_and_scores_the_saved_best_student(tiny_root, tmp_path,
                                                                   monkeypatch, capsys):
    readme = (utils.REPO_ROOT / "README.md").read_text()
    example = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'load_model("outputs/student.keras")' in example
    example = (example.replace('"path/to/aerial-dubai", patch_size=256',
                               f'"{tiny_root}", patch_size=32')
               .replace("epochs=100", "epochs=2"))
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    printed = float(capsys.readouterr().out.strip().splitlines()[-1])
    data, saved = namespace["data"], keras.models.load_model(tmp_path / "outputs" / "student.keras")
    assert printed == pytest.approx(  # the best epoch's student, as saved
        utils.evaluate_segmentation(saved, data.x_test, data.y_test,
                                    labelled_classes=data.labelled_classes)["miou5"], abs=1e-6)


def test_best_checkpoint_refuses_an_epoch_whose_loss_is_not_finite(tmp_path, small_unet):
    # It does not rely on _StopOnNaN running first: the callbacks' order is free.
    best = aerialkd.callbacks.BestModelCheckpoint(tmp_path / "m.keras", monitor="val_miou5")
    best.set_model(small_unet)
    best.on_train_begin()
    best.on_epoch_end(0, {"loss": float("nan"), "val_miou5": 0.9})
    assert not (tmp_path / "m.keras").exists() and best.best == -np.inf
    best.on_epoch_end(1, {"loss": 1.0, "val_miou5": 0.5})
    assert (tmp_path / "m.keras").exists() and best.best == 0.5


def test_float16_training_gets_loss_scaling_and_bfloat16_does_not():
    for policy, scaled in (("mixed_float16", True), ("mixed_bfloat16", False)):
        model = utils.compile_segmentation(utils.with_dtype_policy(utils.build_unet(2), policy))
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == scaled


def test_precision_follows_the_device_and_is_exact_on_a_cpu():
    assert utils.mixed_precision_policy() == "float32"  # CI and this machine have no GPU


# --- consistent teaching, the feature term (issue #27) -----------------------


def test_consistent_sampling_refuses_a_model_that_augments_itself(tiny_data, tmp_path):
    with pytest.raises(ValueError, match=r"augment=False"):
        utils.fit_segmentation(_fresh(distil=True), _small_data(tiny_data), epochs=1,
                               output_dir=tmp_path, name="m", sampling="consistent")


def test_consistent_sampling_trains_a_distiller_with_the_teacher_live(tiny_data, tmp_path):
    keras.utils.set_random_seed(0)
    distiller = utils.compile_segmentation(utils.Distiller(
        teacher=utils.build_unet(2, name="t"), student=utils.build_unet(2, augment=False)))
    history = utils.fit_segmentation(distiller, _small_data(tiny_data), epochs=1,
                                     output_dir=tmp_path, name="m", batch_size=8, verbose=0,
                                     sampling="consistent", mix="mixup", mix_probability=1.0)
    assert np.isfinite(history["distillation_loss"][0]) and (tmp_path / "m.keras").exists()


def test_feature_term_trains_without_cached_teacher_logits_and_says_so(tiny_data, tmp_path):
    keras.utils.set_random_seed(0)
    distiller = utils.compile_segmentation(utils.Distiller(
        teacher=utils.build_unet(4, name="t"), student=utils.build_unet(2, name="s"),
        feature_weight=1.0))
    with pytest.warns(UserWarning, match="cache_teacher=True is ignored"):
        history = utils.fit_segmentation(distiller, _small_data(tiny_data), epochs=1,
                                         output_dir=tmp_path, name="m", batch_size=8,
                                         verbose=0, cache_teacher=True)
    assert np.isfinite(history["feature_loss"][0]) and "val_feature_loss" in history
