"""The experiment's bookkeeping: runs that are reused or archived, sweeps, seed tables.

`scripts/experiment.py` trains the teacher and the students of several seeds on a
machine of its own (a GPU), and `scripts/teacher_analysis.py` reads what it left.
Between them sit the records this module keeps in the experiment's output folder:

- `profile.json`: the budget where it differs from `utils.PROFILES` (the flags);
- `models/<name>_run.json`: where, when and with which settings a run was trained;
  a finished run with the same settings is loaded, not trained again, and the files
  of a run trained anew are moved to `models/previous/`, never overwritten;
- `models/distillation.json`: the distillation settings the students learnt with;
- `metrics.json`: one entry per model and seed, and the seed table made from it.

The notebooks use none of this: they build, compile and fit in view with `utils`.
"""

import dataclasses
import json

import keras
import numpy as np

import aerialkd
import utils

DEFAULT_DISTILLATION = {"alpha": 0.5, "temperature": 4.0, "kind": "pixel",
                        "teacher_ensemble": False}



OVERRIDABLE = ("epochs", "batch_size", "learning_rate", "precision", "schedule",
               "steps_per_execution", "sampling", "sweep_alphas", "sweep_temperatures",
               "sweep_kinds", "sweep_epochs")
"""`Profile` fields an output folder's `profile.json` may override (the flags of
`scripts/experiment.py` carry the same names)."""


def save_profile_overrides(profile, precision=None):
    """Writes the budget where it differs from `utils.PROFILES` to `profile.json`.

    Args:
        profile: the `utils.Profile` with the flags applied.
        precision: the dtype policy the runs train with, if a flag chose it;
            `None` keeps the one saved (the runs of the folder trained in it).

    Returns:
        The `Profile`, unchanged.
    """
    precision = precision or _saved_overrides(profile).get("precision")
    base = utils.PROFILES[profile.name]
    fields = utils.Profile.__dataclass_fields__
    overrides = {k: getattr(profile, k) for k in OVERRIDABLE
                 if k in fields and getattr(profile, k) != base.get(k, fields[k].default)}
    if precision:
        overrides["precision"] = precision
    path = profile.output_dir / "profile.json"
    profile.output_dir.mkdir(parents=True, exist_ok=True)
    if overrides:
        utils.write_into_place(path, json.dumps({"name": profile.name, **overrides}, indent=1))
    else:
        path.unlink(missing_ok=True)
    return profile

def load_profile(name, output_dir):
    """`utils.load_profile`, with the budget an earlier run saved in `profile.json`.

    An experiment's folder keeps the flags it was run with, so that rerunning
    it (or a `--tag` run next to it) asks for the same runs.
    """
    profile = utils.load_profile(name, output_dir)
    overrides = _saved_overrides(profile)
    overrides.pop("precision", None)
    return dataclasses.replace(profile, **{  # JSON gives lists for the grid's tuples
        k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})


def load_precision(profile):
    """The training precision saved in `profile.json`, else the device's."""
    return _saved_overrides(profile).get("precision") or utils.mixed_precision_policy()


def _saved_overrides(profile):
    path = profile.output_dir / "profile.json"
    if not path.exists():
        return {}
    overrides = json.loads(path.read_text())
    if overrides.pop("name") != profile.name:
        raise ValueError(
            f"{path} belongs to another profile than {profile.name!r}: use another "
            f"output folder for this profile.")
    return overrides




def train(name, profile, data, *, build=utils.build_student, teacher=None, alpha=None,
          temperature=None, kind=None, teacher_ensemble=None, standardize=None,
          feature_weight=None, kd_schedule=None, teacher_models=None, sampling=None,
          mix="cutmix", mix_probability=0.5, seed=None, epochs=None, precision=None,
          retrain=False, load_model=True, callbacks=(), record=None):
    """Trains one run of the experiment with `utils.train_model`, or reuses it.

    `build` makes the model (`utils.build_teacher` or `utils.build_student`),
    distilled from `teacher` when one is given. Checkpoints, resumption and
    the history come from `utils.fit_segmentation`, under `profile.models_dir`;
    the run's provenance and settings are written to `<name>_run.json`. A
    finished run with the same settings (its `_run.json`) is loaded, not
    retrained, unless `retrain=True`: rerunning a notebook, or rendering the
    artifacts of a run made elsewhere (e.g. `scripts/experiment.py` on a
    GPU), costs nothing. Before a run is trained anew with other settings,
    the files of the earlier one are moved to `models/previous/`, never
    overwritten; an interrupted run resumes only with the settings it
    started with.

    Args:
        name: "teacher", "student_scratch_s0", "student_distilled_s0", ...
        profile: the `Profile` (budget and folders).
        data: the `AerialDataset`.
        build: function returning the untrained model.
        data: the `AerialDataset`.
        teacher: trained teacher, to distil a student.
        alpha, temperature, kind: `Distiller` settings (defaults:
            `DEFAULT_DISTILLATION`).
        teacher_ensemble: distil from `symmetry_ensemble(teacher)`, the
            teacher's logits averaged over the 8 flips and rotations.
        standardize, feature_weight, kd_schedule: the recipes of issue #27
            (`utils.train_model`); recorded in the run's `distillation`
            settings only where they are on, so older runs stay finished.
        teacher_models: names of the saved models that `teacher` (an
            `utils.ensemble_teacher`) averages, for the record.
        sampling: overrides `profile.sampling` for this run; "consistent"
            builds the model with `augment=False` and records `mix` and
            `mix_probability` in the run.
        mix, mix_probability: the batch mix of `sampling="consistent"`
            ("cutmix", "mixup" or `None`), ignored otherwise.
        seed: overrides `profile.seed`.
        epochs: overrides `profile.epochs`.
        precision: Keras dtype policy of training; `load_precision(profile)`
            if `None`.
        retrain: train again even if a finished run exists.
        load_model: with `False`, a finished run returns `(None, history)`
            without reading its model (e.g. for a sweep, where only the
            history matters).
        callbacks: extra Keras callbacks for `fit_segmentation`.
        record: more settings of the run to keep in its `_run.json` (e.g. the
            labelled images or the width), compared like the others.

    Returns:
        `(model, history)`: the best model by validation mIoU5, reloaded
        from its checkpoint, and the history dict.
    """
    sampling = profile.sampling if sampling is None else sampling
    try:  # before a wrong value moves finished runs aside
        aerialkd.training.check_sampling(sampling)
    except ValueError as error:
        raise ValueError(f"{error} It comes from the profile's profile.json or a "
                         f"--sampling flag.") from None
    seed = profile.seed if seed is None else seed
    epochs = profile.epochs if epochs is None else epochs
    precision = precision or load_precision(profile)
    config = {"kind": "none"}
    if teacher is not None:
        config = {**DEFAULT_DISTILLATION}
        config.update({k: v for k, v in (("alpha", alpha), ("temperature", temperature),
                                         ("kind", kind), ("teacher_ensemble", teacher_ensemble))
                       if v is not None})
        config.update({k: v for k, v in (("standardize", standardize),
                                         ("feature_weight", feature_weight),
                                         ("kd_schedule", kd_schedule),
                                         ("teacher_models", teacher_models)) if v})
    elif any((standardize, feature_weight, kd_schedule, teacher_models)):
        raise ValueError(f"Run {name!r} has no teacher, so standardize, feature_weight, "
                         f"kd_schedule and teacher_models don't apply to it.")
    wanted = {"seed": seed, "epochs": epochs, "distillation": config,
              "batch_size": profile.batch_size, "patch_size": profile.patch_size,
              "learning_rate": profile.learning_rate, "schedule": profile.schedule,
              "precision": precision, "sampling": sampling,
              "teacher_sha1": None if teacher is None else weights_fingerprint(teacher),
              **(record or {})}
    inputs = {}
    if sampling == "consistent":
        inputs = {"mix": mix, "mix_probability": mix_probability}
        wanted.update(inputs)
    wanted = json.loads(json.dumps(wanted))  # as the record will hold it (tuples as lists)
    files = utils.RunFiles(profile.models_dir, name)
    if files.record.exists() and not retrain:
        info = json.loads(files.record.read_text())
        # and nothing more: a record with settings this call does not ask for (a
        # student of where_kd_pays.py, of another width) is another run's
        own = set(info) - set(utils.run_info(profile)) - {"train_seconds"}
        if own <= set(wanted) and all(info.get(k) == v for k, v in wanted.items()):
            print(f"Loading the finished run {name!r} ({epochs} epochs, seed {seed}, "
                  f"trained on {info['backend']}, {info['device']}, {info['date']}) from "
                  f"{profile.models_dir}; pass retrain=True to train again.")
            history = json.loads(files.history.read_text())
            if not load_model:
                return None, history
            return keras.models.load_model(files.model), history
    # a backup with no settings (left by a notebook's run of this name) is not this run's
    stale = files.record.exists() or (
        json.loads(files.started.read_text()) != wanted if files.started.exists()
        else files.backup.exists())
    if stale or retrain:
        archive = files.archive()
        if archive is not None:
            print(f"Run {name!r} is trained anew (other settings, or retrain=True); the "
                  f"files of the earlier run were moved to {archive}.")
    profile.models_dir.mkdir(parents=True, exist_ok=True)
    utils.write_into_place(files.started, json.dumps(wanted))
    keras.utils.set_random_seed(seed)
    # consistent teaching augments on the host: the model must not augment again
    model = build(augment=False) if sampling == "consistent" else build()
    callbacks = list(callbacks)
    if teacher is not None and config["teacher_ensemble"]:
        teacher = utils.symmetry_ensemble(utils.with_dtype_policy(teacher, precision))
    model = utils.with_dtype_policy(model, precision)
    if teacher is not None:
        model = utils.Distiller(
            teacher=utils.with_dtype_policy(teacher, precision), student=model,
            **{k: config[k] for k in ("alpha", "temperature", "kind", "standardize",
                                      "feature_weight") if k in config})
        if "kd_schedule" in config:
            callbacks.append(utils.KDWeightSchedule(
                utils.KDWeightSchedule.parse(config["kd_schedule"])))
    model, history, record = utils.train_model(
        model, data, profile, name=name, epochs=epochs, seed=seed, callbacks=callbacks,
        verbose=2, sampling=sampling, cache_teacher=not config.get("feature_weight"),
        **inputs)
    info = {**utils.run_info(profile), **wanted, "train_seconds": record["train_seconds"]}
    utils.write_into_place(files.record, json.dumps(info, indent=1))
    files.started.unlink()
    return model, history


def weights_fingerprint(model):
    """A short SHA-1 of a model's weights: which teacher a student learned from."""
    import hashlib

    digest = hashlib.sha1()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()[:16]


SWEEP_CHOICE = "sweep_distillation: the grid's best validation mIoU5"
"""`chosen_by` of a `distillation.json` that a sweep wrote."""


def sweep_distillation(profile, data, teacher, replace=False):
    """Distils a fresh student for every alpha x temperature x kind of the grid.

    Each setting trains `profile.sweep_epochs` epochs and is scored by its
    best validation mIoU5 (never the test split). A student trained from
    scratch with the same budget and seed (`sweep_scratch`) is the reference:
    a setting helps only if it beats it. Finished runs are read back, not
    retrained, so an interrupted sweep resumes.

    The best setting is written to `distillation.json` in the models folder,
    where `load_distillation_config` (and so `04_distill`) picks it up, unless
    that file holds settings chosen otherwise (`scripts/experiment.py`'s
    flags, whose students were trained with them): those are kept, and
    `replace=True` replaces them.

    Args:
        profile: the `Profile` (its `sweep_*` fields are the grid).
        data: the `AerialDataset`.
        teacher: the trained teacher.
        replace: write the best setting even over settings chosen otherwise.

    Returns:
        List of dicts, the reference first: `kind` ("none" for the scratch
        student), `alpha`, `temperature` (None for the reference),
        `val_miou5`, `vs_scratch` (the difference to the reference).

    Example:

    >>> rows = sweep_distillation(profile, data, teacher)
    >>> print(markdown_table(rows))  # the reference first, then the grid
    """
    _, history = train("sweep_scratch", profile, data, epochs=profile.sweep_epochs,
                       load_model=False)
    reference = max(history["val_miou5"])
    rows = [{"kind": "none", "alpha": 1.0, "temperature": None, "val_miou5": reference,
             "vs_scratch": 0.0}]
    for kind in profile.sweep_kinds:
        for alpha in profile.sweep_alphas:
            for temperature in profile.sweep_temperatures:
                name = f"sweep_{kind}_a{alpha:g}_t{temperature:g}"
                _, history = train(name, profile, data, teacher=teacher, alpha=alpha,
                                   temperature=temperature, kind=kind,
                                   epochs=profile.sweep_epochs, load_model=False)
                score = max(history["val_miou5"])
                rows.append({"kind": kind, "alpha": alpha, "temperature": temperature,
                             "val_miou5": score, "vs_scratch": score - reference})
    best = max(rows[1:], key=lambda r: r["val_miou5"])
    print(f"Best on validation: {best['kind']} KD, alpha {best['alpha']:g}, T "
          f"{best['temperature']:g}: mIoU5 {best['val_miou5']:.4f}, "
          f"{best['vs_scratch']:+.4f} against the scratch student ({reference:.4f}), "
          f"{profile.sweep_epochs} epochs each.")
    path = profile.models_dir / "distillation.json"
    chosen = json.loads(path.read_text()) if path.exists() else {}
    if chosen.get("chosen_by", SWEEP_CHOICE) != SWEEP_CHOICE and not replace:
        print(f"Kept {path} (chosen by {chosen['chosen_by']}: "
              f"{ {k: chosen[k] for k in DEFAULT_DISTILLATION if k in chosen} }), with which "
              f"its distilled students were trained; sweep_distillation(..., replace=True) "
              f"makes the sweep's best what 04_distill trains next.")
        return rows
    utils.write_into_place(path, json.dumps(
        {"chosen_by": SWEEP_CHOICE, "alpha": best["alpha"], "temperature": best["temperature"],
         "kind": best["kind"], "val_miou5": best["val_miou5"],
         "scratch_val_miou5": reference, "sweep_epochs": profile.sweep_epochs}, indent=1))
    return rows


def load_distillation_config(profile):
    """The distillation settings in `distillation.json`, else the defaults.

    `sweep_distillation` writes the grid's best there; `scripts/experiment.py`
    writes the settings it distilled with.
    """
    path = profile.models_dir / "distillation.json"
    if not path.exists():
        return dict(DEFAULT_DISTILLATION)
    best = json.loads(path.read_text())
    return {**DEFAULT_DISTILLATION, **{k: best[k] for k in DEFAULT_DISTILLATION if k in best}}


def seed_table(entries, keys=("miou5", "miou6", "pixel_acc"), digits=3):
    """Markdown table of each model's scores over its seeds: "mean ± sd" per score.

    A model with one seed shows its score alone: it has no spread to show.
    """
    scores = {key: utils.scores_by_seed(entries, key) for key in keys}
    return utils.markdown_table([
        {"model": model, "seeds": len(seeds),
         **{key: utils.format_mean_sd(scores[key][model].values(), digits) for key in keys}}
        for model, seeds in scores[keys[0]].items()])


def seed_report(profile):
    """Markdown: the `seed_table` of `<output>/metrics.json`, or how to make it.

    `scripts/experiment.py` writes `metrics.json` with one entry per model and
    seed; this reads it back for the report notebook, with each distilled
    model's KD settings, its gain over each scratch student paired by seed
    (`utils.paired_differences`; whether a pair shares a backend, and with it the
    initial weights and augmentation), and which runs were trained where (the
    runs of one experiment may come from several machines and backends).
    """
    path = profile.output_dir / "metrics.json"
    if not path.exists():
        return (f"No multi-seed results in `{path}`: `scripts/experiment.py --profile "
                f"{profile.name} --output {profile.output_dir}` writes them.")
    entries = json.loads(path.read_text())
    machines = {}  # runs of one experiment may come from several machines
    for entry in entries:
        where = f"{entry['backend']} on {entry['device']}, {entry['date']}"
        machines.setdefault(where, []).append(entry.get("run", entry["model"]))
    distilled = {}  # the chosen recipe, and others tried next to it (experiment.py --tag)
    for entry in entries:
        if entry["model"].startswith("student_distilled"):
            c = entry["config"]
            distilled.setdefault(entry["model"], set()).add(
                f"{c['kind']} KD, alpha {c['alpha']}, T {c['temperature']}"
                + (", teacher ensemble" if c.get("teacher_ensemble") else ""))
    epochs = ", ".join(str(n) for n in sorted({e["epochs"] for e in entries}))
    lines = [seed_table(entries), "",
             f"Test split, {epochs} epochs; the settings of each run are in `{path}`."]
    # the chosen scratch student, and others trained as baselines (experiment.py --scratch)
    baselines = [m for m in dict.fromkeys(e["model"] for e in entries)
                 if m.startswith("student_scratch")]
    for model, settings in distilled.items():
        lines.append(f"`{model}` distilled with {'; '.join(sorted(settings))}.")
        lines += [line for baseline in baselines
                  if (line := _paired_line(entries, model, baseline))]
    lines += ["Trained with:"] + [f"- {where}: {', '.join(runs)}"
                                  for where, runs in machines.items()]
    return "\n".join(lines)


def _paired_line(entries, model, baseline):
    """One line of `seed_report`: `model` minus `baseline` by seed, and their backends.

    None when the two share no seed.
    """
    pairs = utils.paired_differences(entries, model, baseline)
    if not pairs:
        return None
    per_seed = ", ".join(f"seed {s} {d:+.3f}" for s, d in pairs.items())
    backends = {e["backend"] for e in entries
                if e["model"] in (model, baseline) and e["seed"] in pairs}
    how = (f"both on {backends.pop()}" if len(backends) == 1 else
           "across backends, so a pair shares only its batch order")
    return (f"`{model}` minus `{baseline}`, mIoU5 paired by seed: {per_seed}; "
            f"mean {utils.format_mean_sd(pairs.values(), signed=True)} ({how}).")
