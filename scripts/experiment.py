"""The real-results experiment: teacher, then scratch and distilled students over seeds.

Trains the teacher once (or reuses a saved one), then for every seed a student from
scratch and a student distilled from the teacher, with the same budget, and last the
teachers of the other seeds (`--teacher-seeds`), for the teacher's mean and spread; it
evaluates each on the test split and appends one entry per run to
`<output>/metrics.json`. The budget (flags that override the profile) goes to
`<output>/profile.json` and the
distillation settings to `<output>/models/distillation.json`, so the notebooks
run with `SSSI_OUTPUT=<output>` ask for the same runs. The runs
of the profile's seed (0) are copied to `<output>/models/{student_scratch,
student_distilled}.*`, where the notebooks of the same profile and output folder
load them instead of training (`utils.train` reuses finished runs).

`--tag x8 --teacher-ensemble` tries another recipe next to the chosen one: it trains
only distilled students, named `student_distilled_x8_s<seed>` (model
`student_distilled_x8` in `metrics.json`, a row of its own in the seed table), from the
finished teacher and with the folder's budget (it refuses flags that would change
either), and leaves the chosen runs, their entries and `distillation.json` as they are.
`--tag tf --scratch` trains students from scratch the same way (`student_scratch_tf_s<seed>`):
a baseline from the same machine and backend as a tagged or distilled run, since a seed
fixes the initial weights and augmentation only within one backend.

    KERAS_BACKEND=jax python scripts/experiment.py --profile full --output results
    python scripts/experiment.py --profile tiny --output /tmp/experiment   # a dry run

Every run checkpoints each epoch and resumes when the command is rerun; finished runs
are evaluated again, not retrained.
"""

import argparse
import dataclasses
import json
import pathlib
import re
import shutil
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


import utils  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="full", choices=sorted(utils.PROFILES))
    parser.add_argument("--output", default=str(utils.REPO_ROOT / "results"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--teacher-seeds", type=int, nargs="*",
                        help="seeds of extra teachers, trained last, for the teacher's mean "
                             "and spread (default: --seeds); every student learns from the "
                             "teacher of the profile's seed")
    parser.add_argument("--epochs", type=int, help="overrides the profile's epochs")
    parser.add_argument("--kind", choices=("pixel", "channel"))
    parser.add_argument("--alpha", type=float)
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--sweep", action="store_true",
                        help="first run the profile's alpha x T x kind grid on the validation "
                             "split (as 06_sweep does) and distil with its best setting")
    parser.add_argument("--sweep-kinds", nargs="+", choices=("pixel", "channel"),
                        help="overrides the profile's sweep grid (also what 06_sweep shows)")
    parser.add_argument("--sweep-alphas", type=float, nargs="+")
    parser.add_argument("--sweep-temperatures", type=float, nargs="+")
    parser.add_argument("--sweep-epochs", type=int)
    parser.add_argument("--teacher-ensemble", action=argparse.BooleanOptionalAction,
                        help="distil from the teacher's logits averaged over 8 flips/rotations")
    parser.add_argument("--tag",
                        help="train only students of another recipe, next to the chosen one, "
                             "which it leaves as it is: distilled, as model "
                             "student_distilled_<tag>, or with --scratch from scratch")
    parser.add_argument("--scratch", action="store_true",
                        help="with --tag: train the students from scratch, as model "
                             "student_scratch_<tag>, a baseline on this machine and backend")
    parser.add_argument("--batch-size", type=int, help="overrides the profile's batch size")
    parser.add_argument("--learning-rate", type=float,
                        help="overrides the profile's learning rate")
    parser.add_argument("--precision", help="Keras dtype policy, e.g. mixed_bfloat16")
    parser.add_argument("--schedule", choices=("constant", "cosine"))
    parser.add_argument("--steps-per-execution", type=int)
    parser.add_argument("--sampling", choices=("grid", "random"),
                        help="training inputs: the fixed patches (default) or as many random "
                             "crops per epoch from the whole training images")
    args = parser.parse_args(argv)
    if args.tag is not None and not re.fullmatch(r"[A-Za-z0-9_]+", args.tag):
        parser.error(f"--tag becomes part of file names: use ASCII letters, digits and _, "
                     f"got {args.tag!r}")
    if args.tag is not None and (args.sweep or args.teacher_seeds):
        parser.error("--tag trains only the tagged distilled students; run --sweep and "
                     "--teacher-seeds without it")
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

    profile = utils.load_profile(args.profile, output_dir=args.output)
    overrides = {field: tuple(value) if isinstance(value, list) else value
                 for field in utils.OVERRIDABLE  # flags are named as the fields
                 if (value := getattr(args, field)) is not None}
    if args.tag is not None:
        _check_tag(parser, profile, overrides, need_teacher=not args.scratch)
    profile = utils.save_profile_overrides(dataclasses.replace(profile, **overrides))
    profile.models_dir.mkdir(parents=True, exist_ok=True)
    epochs = profile.epochs
    config = utils.load_distillation_config(profile)
    saved_config = dict(config)
    config.update({k: v for k, v in (("kind", args.kind), ("alpha", args.alpha),
                                     ("temperature", args.temperature)) if v is not None})
    if args.teacher_ensemble is not None:
        config["teacher_ensemble"] = args.teacher_ensemble
    data = utils.profile_dataset(profile)
    print(data.summary(), flush=True)

    metrics_path = profile.output_dir / "metrics.json"
    entries = json.loads(metrics_path.read_text()) if metrics_path.exists() else []

    def record(model_name, run_name, model, seed, run_file=None):
        run = json.loads((profile.models_dir / f"{run_file or run_name}_run.json").read_text())
        # IoUs and accuracy only: the PR curves of evaluate_segmentation take ~20 s of
        # host time per model, which the GPU machine would sit through idle
        logits = utils.predict_logits(model, data.x_test, profile.batch_size)
        result = utils.iou_scores(data.y_test, logits.argmax(-1))
        entry = {
            "model": model_name, "run": run_name, "seed": seed,
            "miou5": result["miou5"], "miou6": result["miou6"],
            "pixel_acc": result["pixel_acc"],
            "per_class_iou": dict(zip(utils.CLASSES, result["per_class_iou"])),
            "epochs": run["epochs"], "train_seconds": run["train_seconds"],
            "config": {**run["distillation"], "batch_size": run["batch_size"],
                       "learning_rate": run["learning_rate"], "schedule": run["schedule"],
                       "patch_size": run["patch_size"], "precision": run["precision"],
                       "sampling": run.get("sampling", "grid")},
            **{k: run[k] for k in ("backend", "keras", "device", "date", "profile")},
            "split": {"test": data.sources["test"], "val": data.sources["val"]},
        }
        entries[:] = [e for e in entries if e.get("run") != run_name] + [entry]
        metrics_path.write_text(json.dumps(entries, indent=1))
        print(f"{run_name}: test mIoU5 {entry['miou5']:.4f}, mIoU6 {entry['miou6']:.4f}, "
              f"pixel acc {entry['pixel_acc']:.4f} (trained in {entry['train_seconds']:.0f} s)",
              flush=True)

    if args.tag is not None:  # another recipe, next to the chosen runs
        if args.scratch:
            model_name, kwargs = f"student_scratch_{args.tag}", {}
        else:
            teacher, _ = utils.train("teacher", profile, data, seed=profile.seed, epochs=epochs)
            model_name, kwargs = f"student_distilled_{args.tag}", {"teacher": teacher, **config}
            print(f"Distilling {model_name} with {config}", flush=True)
        for seed in args.seeds:
            student, _ = utils.train(f"{model_name}_s{seed}", profile, data, seed=seed,
                                     epochs=epochs, **kwargs)
            record(model_name, f"{model_name}_s{seed}", student, seed)
        _print_summary(profile, metrics_path)
        return
    teacher, _ = utils.train("teacher", profile, data, seed=profile.seed, epochs=epochs)
    if args.sweep:
        # --sweep asks the grid to choose: it replaces settings chosen by earlier flags
        for row in utils.sweep_distillation(profile, data, teacher, replace=True):
            print(f"sweep: {row}", flush=True)
        best = utils.load_distillation_config(profile)  # the best on validation
        config.update({k: best[k] for k in ("alpha", "temperature", "kind")})
    # 04_distill (and so the report) distils with the same settings; a sweep
    # already wrote its choice there, with its validation score
    chosen = profile.models_dir / "distillation.json"
    saved = json.loads(chosen.read_text()) if chosen.exists() else {}
    if not args.sweep and (config != saved_config or not saved):
        # the flags (or their defaults) chose: a sweep's score no longer describes them,
        # and a notebook's sweep must not replace the settings these students train with
        saved = {"chosen_by": "scripts/experiment.py flags"}
    chosen.write_text(json.dumps({**saved, **config}, indent=1))
    print(f"Distilling with {config}", flush=True)
    record("teacher", "teacher", teacher, profile.seed)
    if config["teacher_ensemble"]:  # what the students learn from
        record("teacher_x8", "teacher_x8", utils.symmetry_ensemble(teacher), profile.seed,
               run_file="teacher")
    for seed in args.seeds:
        for model_name, kwargs in (("student_scratch", {}),
                                   ("student_distilled", {"teacher": teacher, **config})):
            run_name = f"{model_name}_s{seed}"
            student, _ = utils.train(run_name, profile, data, seed=seed, epochs=epochs,
                                     **kwargs)
            record(model_name, run_name, student, seed)
            if seed == profile.seed:  # the runs the notebooks show
                for suffix in (".keras", "_history.json", "_run.json"):
                    shutil.copy(profile.models_dir / f"{run_name}{suffix}",
                                profile.models_dir / f"{model_name}{suffix}")
    # Last, so that a run cut short has the students first: more teachers, for
    # the teacher's mean and spread over seeds in the table
    teacher_seeds = args.seeds if args.teacher_seeds is None else args.teacher_seeds
    for seed in teacher_seeds:
        if seed != profile.seed:
            model, _ = utils.train(f"teacher_s{seed}", profile, data, seed=seed, epochs=epochs)
            record("teacher", f"teacher_s{seed}", model, seed)
    _print_summary(profile, metrics_path)


def _check_tag(parser, profile, overrides, need_teacher=True):
    """A tagged recipe is compared with the chosen runs: same teacher, same budget."""
    changed = [field for field, value in overrides.items() if getattr(profile, field) != value]
    if changed:
        flag = "--" + changed[0].replace("_", "-")
        parser.error(f"--tag compares a recipe with the chosen runs at their budget, so it "
                     f"can't change it: drop {flag} (it differs from the budget of "
                     f"{profile.output_dir}, see profile.json there)")
    if need_teacher and not (profile.models_dir / "teacher_run.json").exists():
        parser.error(f"--tag distils from the finished teacher in {profile.models_dir}, and "
                     f"there is none: run scripts/experiment.py without --tag first")


def _print_summary(profile, metrics_path):
    print(f"Wrote {metrics_path}\n")
    print(utils.seed_report(profile))


if __name__ == "__main__":
    main()
