"""The real-results experiment: teacher, then scratch and distilled students over seeds.

Trains the teacher once (or reuses a saved one), then for every seed a student from
scratch and a student distilled from the teacher, with the same budget, and last the
teachers of the other seeds (`--teacher-seeds`), for the teacher's mean and spread; it
evaluates each on the test split and appends one entry per run to
`<output>/metrics.json`. The budget (flags that override the profile) goes to
`<output>/profile.json` and the distillation settings to
`<output>/models/distillation.json`, so that a rerun asks for the same runs (the
bookkeeping is `scripts/runs.py`). With `--output results` the notebooks of the full
profile find the models in `results/models`.

`--tag x8 --teacher-ensemble` tries another recipe next to the chosen one: it trains
only distilled students, named `student_distilled_x8_s<seed>` (model
`student_distilled_x8` in `metrics.json`, a row of its own in the seed table), from the
finished teacher and with the folder's budget (it refuses flags that would change
either), and leaves the chosen runs, their entries and `distillation.json` as they are.
`--tag tf --scratch` trains students from scratch the same way (`student_scratch_tf_s<seed>`):
a baseline from the same machine and backend as a tagged or distilled run, since a seed
fixes the initial weights and augmentation only within one backend.

The recipes of issue #27 go with `--tag` (they change the students, not the folder's
budget): `--kind dist`, `--standardize` (logit standardisation), `--feature-weight W`
(bottleneck feature term), `--teacher-models teacher teacher_s1 teacher_s2` (distil from
the mean logits of these finished teachers), `--kd-schedule warmup:K:ALPHA` (labels only
for K epochs, then alpha ALPHA), and `--sampling consistent --mix cutmix
--mix-probability 0.5` (consistent teaching: scaled, flipped, mixed crops that teacher
and student both see; the students are built without their own augmentation). With
`--scratch`, `--sampling consistent` trains the baseline on the same input path.
Each run records its recipe in its `_run.json` and its `metrics.json` entry.

    KERAS_BACKEND=jax python scripts/experiment.py --profile full --output results
    python scripts/experiment.py --profile tiny --output outputs/experiment   # a dry run

Every run checkpoints each epoch and resumes when the command is rerun; finished runs
are evaluated again, not retrained.
"""

import argparse
import dataclasses
import json
import re


import keras

import flags
import runs
import utils


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="full", choices=sorted(utils.PROFILES))
    parser.add_argument("--output", default=str(utils.REPO_ROOT / "results"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--teacher-seeds", type=int, nargs="*",
                        help="seeds of extra teachers, trained last, for the teacher's mean "
                             "and spread (default: --seeds); every student learns from the "
                             "teacher of the profile's seed")
    parser.add_argument("--epochs", type=flags.count, help="overrides the profile's epochs")
    parser.add_argument("--kind", choices=utils.KD_KINDS)
    parser.add_argument("--standardize", action="store_true", default=None,
                        help="with --tag: standardise each pixel's logits before the KD "
                             "softmax (Sun et al., CVPR 2024)")
    parser.add_argument("--feature-weight", type=float,
                        help="with --tag: weight of the bottleneck feature term (0: off)")
    parser.add_argument("--teacher-models", nargs="+", metavar="NAME",
                        help="with --tag: distil from the mean logits of these finished "
                             "models of the output folder, e.g. teacher teacher_s1 teacher_s2")
    parser.add_argument("--kd-schedule", metavar="warmup:K:ALPHA",
                        help="with --tag: alpha 1 (labels only) for K epochs, then ALPHA")
    parser.add_argument("--mix", choices=("cutmix", "mixup", "none"),
                        help="with --sampling consistent: the batch mix (default cutmix)")
    parser.add_argument("--mix-probability", type=float,
                        help="with --sampling consistent: probability a crop is mixed "
                             "(default 0.5)")
    parser.add_argument("--alpha", type=float)
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--sweep", action="store_true",
                        help="first run the profile's alpha x T x kind grid on the validation "
                             "split (as 06_sweep does) and distil with its best setting")
    parser.add_argument("--sweep-kinds", nargs="+", choices=utils.KD_KINDS,
                        help="overrides the profile's sweep grid (also what 06_sweep shows)")
    parser.add_argument("--sweep-alphas", type=float, nargs="+")
    parser.add_argument("--sweep-temperatures", type=float, nargs="+")
    parser.add_argument("--sweep-epochs", type=flags.count)
    parser.add_argument("--teacher-ensemble", action=argparse.BooleanOptionalAction,
                        help="distil from the teacher's logits averaged over 8 flips/rotations")
    parser.add_argument("--tag",
                        help="train only students of another recipe, next to the chosen one, "
                             "which it leaves as it is: distilled, as model "
                             "student_distilled_<tag>, or with --scratch from scratch")
    parser.add_argument("--scratch", action="store_true",
                        help="with --tag: train the students from scratch, as model "
                             "student_scratch_<tag>, a baseline on this machine and backend")
    parser.add_argument("--batch-size", type=flags.count, help="overrides the profile's batch size")
    parser.add_argument("--learning-rate", type=float,
                        help="overrides the profile's learning rate")
    parser.add_argument("--precision",
                        help="Keras dtype policy, e.g. mixed_bfloat16 (default: the one saved "
                             "in the output folder, else utils.mixed_precision_policy())")
    parser.add_argument("--schedule", choices=("constant", "cosine"))
    parser.add_argument("--steps-per-execution", type=flags.count)
    parser.add_argument("--sampling", choices=utils.SAMPLINGS,
                        help="training inputs: the fixed patches (default) or as many random "
                             "crops per epoch from the whole training images; 'consistent' "
                             "(with --tag, for the students only): scaled, flipped and mixed "
                             "crops that the teacher sees too")
    args = parser.parse_args(argv)
    if args.tag is not None and not re.fullmatch(r"[A-Za-z0-9_]+", args.tag):
        parser.error(f"--tag becomes part of file names: use ASCII letters, digits and _, "
                     f"got {args.tag!r}")
    if args.tag is not None and (args.sweep or args.teacher_seeds):
        parser.error("--tag trains only the tagged distilled students; run --sweep and "
                     "--teacher-seeds without it")
    recipe = {k: v for k, v in (("standardize", args.standardize),
                                 ("feature_weight", args.feature_weight),
                                 ("kd_schedule", args.kd_schedule),
                                 ("teacher_models", args.teacher_models)) if v is not None}
    inputs = {}
    if args.sampling == "consistent":  # the students' input path, not the folder's budget
        inputs = {"sampling": "consistent", "mix": args.mix or "cutmix",
                  "mix_probability": (0.5 if args.mix_probability is None
                                      else args.mix_probability)}
        if inputs["mix"] == "none":
            inputs["mix"] = None
        args.sampling = None
        if args.tag is None:
            parser.error("--sampling consistent trains students of another recipe: use it "
                         "with --tag (and --scratch for their baseline)")
    elif args.mix is not None or args.mix_probability is not None:
        parser.error("--mix and --mix-probability go with --sampling consistent")
    if recipe and args.tag is None:
        parser.error("--standardize, --feature-weight, --teacher-models and --kd-schedule "
                     "train students of another recipe: use them with --tag")
    if args.kd_schedule is not None:
        try:
            utils.KDWeightSchedule.parse(args.kd_schedule)
        except ValueError as error:
            parser.error(str(error))
    if args.feature_weight and args.teacher_models:
        parser.error("--feature-weight matches one teacher's bottleneck, and an ensemble of "
                     "--teacher-models has none: use one of them, or drop --feature-weight")
    if args.scratch and recipe:
        parser.error("a student from scratch has no teacher: drop --standardize, "
                     "--feature-weight, --teacher-models and --kd-schedule")
    if args.scratch and args.tag is None:
        parser.error("--scratch goes with --tag: name the baseline, e.g. --tag tf --scratch")
    if args.scratch and any(v is not None for v in (args.kind, args.alpha, args.temperature,
                                                    args.teacher_ensemble)):
        parser.error("a student from scratch has no teacher: drop --kind, --alpha, "
                     "--temperature and --teacher-ensemble")
    if args.sweep and any(v is not None for v in (args.kind, args.alpha, args.temperature)):
        parser.error("--sweep chooses kind, alpha and temperature; don't pass them too")
    if args.sweep and args.teacher_ensemble:
        parser.error("--sweep distils from the single teacher, so it can't choose settings "
                     "for --teacher-ensemble; pass --kind/--alpha/--temperature with it instead")

    if args.learning_rate is not None and not args.learning_rate > 0:
        parser.error(f"--learning-rate must be > 0, got {args.learning_rate}")

    profile = runs.load_profile(args.profile, output_dir=args.output)
    overrides = {field: tuple(value) if isinstance(value, list) else value
                 for field in runs.OVERRIDABLE  # flags are named as the fields
                 if field != "precision" and (value := getattr(args, field)) is not None}
    if args.tag is not None:
        _check_tag(parser, profile, overrides,
                   need_teacher=not args.scratch and not args.teacher_models)
        if args.precision and args.precision != runs.load_precision(profile):
            parser.error(f"--tag compares a recipe with the chosen runs at their budget: drop "
                         f"--precision (the runs in {profile.output_dir} train with "
                         f"{runs.load_precision(profile)})")
    profile = dataclasses.replace(profile, **overrides)
    data = utils.profile_dataset(profile)  # first: the folder is written once it can train
    print(data.summary(), flush=True)
    profile = runs.save_profile_overrides(profile, precision=args.precision)
    precision = runs.load_precision(profile)
    profile.models_dir.mkdir(parents=True, exist_ok=True)
    config = runs.load_distillation_config(profile)
    saved_config = dict(config)
    config.update({k: v for k, v in (("kind", args.kind), ("alpha", args.alpha),
                                     ("temperature", args.temperature)) if v is not None})
    if args.teacher_ensemble is not None:
        config["teacher_ensemble"] = args.teacher_ensemble
    metrics = Metrics(profile, data)

    def train(name, **kwargs):
        return runs.train(name, profile, data, precision=precision, **kwargs)

    if args.tag is not None:  # another recipe, next to the chosen runs
        if args.scratch:
            model_name, kwargs = f"student_scratch_{args.tag}", {**inputs}
        else:
            if args.teacher_models:
                teacher = utils.ensemble_teacher(
                    [_load_finished(parser, profile, n) for n in args.teacher_models])
            else:
                teacher, _ = train("teacher", build=utils.build_teacher, seed=profile.seed)
            config.update(recipe)
            model_name, kwargs = (f"student_distilled_{args.tag}",
                                  {"teacher": teacher, **config, **inputs})
            print(f"Distilling {model_name} with {config}", flush=True)
        for seed in args.seeds:
            student, _ = train(f"{model_name}_s{seed}", seed=seed, **kwargs)
            metrics.record(model_name, f"{model_name}_s{seed}", student, seed)
        metrics.print_summary()
        return
    teacher, _ = train("teacher", build=utils.build_teacher, seed=profile.seed)
    if args.sweep:
        # --sweep asks the grid to choose: it replaces settings chosen by earlier flags
        for row in runs.sweep_distillation(profile, data, teacher, replace=True):
            print(f"sweep: {row}", flush=True)
        best = runs.load_distillation_config(profile)  # the best on validation
        config.update({k: best[k] for k in ("alpha", "temperature", "kind")})
    else:
        _save_chosen_settings(profile, config, changed=config != saved_config)
    print(f"Distilling with {config}", flush=True)
    metrics.record("teacher", "teacher", teacher, profile.seed)
    if config["teacher_ensemble"]:  # what the students learn from
        metrics.record("teacher_x8", "teacher_x8", utils.symmetry_ensemble(teacher),
                       profile.seed, run_file="teacher")
    for seed in args.seeds:
        for model_name, kwargs in (("student_scratch", {}),
                                   ("student_distilled", {"teacher": teacher, **config})):
            run_name = f"{model_name}_s{seed}"
            student, _ = train(run_name, seed=seed, **kwargs)
            metrics.record(model_name, run_name, student, seed)
    # Last, so that a run cut short has the students first: more teachers, for
    # the teacher's mean and spread over seeds in the table
    teacher_seeds = args.seeds if args.teacher_seeds is None else args.teacher_seeds
    for seed in teacher_seeds:
        if seed != profile.seed:
            model, _ = train(f"teacher_s{seed}", build=utils.build_teacher, seed=seed)
            metrics.record("teacher", f"teacher_s{seed}", model, seed)
    metrics.print_summary()


def _load_finished(parser, profile, name):
    files = utils.RunFiles(profile.models_dir, name)
    if not files.record.exists() or not files.model.exists():
        parser.error(f"--teacher-models: there is no finished model {name!r} in "
                     f"{profile.models_dir}; train it first (e.g. --teacher-seeds)")
    return keras.models.load_model(files.model)


def _save_chosen_settings(profile, config, changed):
    """Writes the settings the students distil with to `distillation.json`.

    A sweep's choice keeps its validation score unless the flags changed it; settings
    the flags chose are marked so, and a notebook's sweep must not replace them.
    """
    chosen = profile.models_dir / "distillation.json"
    saved = json.loads(chosen.read_text()) if chosen.exists() else {}
    if changed or not saved:
        saved = {"chosen_by": "scripts/experiment.py flags"}
    utils.write_into_place(chosen, json.dumps({**saved, **config}, indent=1))


class Metrics:
    """`<output>/metrics.json`: one entry per run, its test scores and settings."""

    def __init__(self, profile, data):
        self.profile, self.data = profile, data
        self.path = profile.output_dir / "metrics.json"
        self.entries = json.loads(self.path.read_text()) if self.path.exists() else []

    def record(self, model_name, run_name, model, seed, run_file=None):
        """Scores `model` on the test split and replaces the run's entry."""
        profile, data = self.profile, self.data
        run = json.loads(utils.RunFiles(profile.models_dir, run_file or run_name).record.read_text())
        # IoUs and accuracy only: the PR curves of evaluate_segmentation take ~20 s of
        # host time per model, which the GPU machine would sit through idle
        logits = utils.predict_logits(model, data.x_test, profile.batch_size)
        result = utils.iou_scores(data.y_test, logits.argmax(-1), n_classes=data.n_classes,
                                  labelled_classes=data.labelled_classes)
        entry = {
            "model": model_name, "run": run_name, "seed": seed,
            "miou5": result["miou5"], "miou6": result["miou6"],
            "pixel_acc": result["pixel_acc"],
            "per_class_iou": dict(zip(utils.CLASSES, result["per_class_iou"])),
            "epochs": run["epochs"], "train_seconds": run["train_seconds"],
            "config": {**run["distillation"],
                       **{k: run[k] for k in ("batch_size", "learning_rate", "schedule",
                                              "patch_size", "precision", "sampling")},
                       **{k: run[k] for k in ("mix", "mix_probability") if k in run}},
            **{k: run[k] for k in ("backend", "keras", "device", "date", "profile")},
            "split": {"test": data.sources["test"], "val": data.sources["val"]},
        }
        self.entries = [e for e in self.entries if e.get("run") != run_name] + [entry]
        utils.write_into_place(self.path, json.dumps(self.entries, indent=1))
        print(f"{run_name}: test mIoU5 {entry['miou5']:.4f}, mIoU6 {entry['miou6']:.4f}, "
              f"pixel acc {entry['pixel_acc']:.4f} (trained in {entry['train_seconds']:.0f} s)",
              flush=True)

    def print_summary(self):
        print(f"Wrote {self.path}\n")
        print(runs.seed_report(self.profile))


def _check_tag(parser, profile, overrides, need_teacher=True):
    """A tagged recipe is compared with the chosen runs: same teacher, same budget."""
    changed = [field for field, value in overrides.items() if getattr(profile, field) != value]
    if changed:
        flag = "--" + changed[0].replace("_", "-")
        parser.error(f"--tag compares a recipe with the chosen runs at their budget, so it "
                     f"can't change it: drop {flag} (it differs from the budget of "
                     f"{profile.output_dir}, see profile.json there)")
    if need_teacher and not utils.RunFiles(profile.models_dir, "teacher").record.exists():
        parser.error(f"--tag distils from the finished teacher in {profile.models_dir}, and "
                     f"there is none: run scripts/experiment.py without --tag first")


if __name__ == "__main__":
    main()
