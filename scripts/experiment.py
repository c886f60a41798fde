"""The real-results experiment: teacher, then scratch and distilled students over seeds.

Trains the teacher once (or reuses a saved one), then for every seed a student from
scratch and a student distilled from the teacher, with the same budget, evaluates each
on the test split, and appends one entry per run to `<output>/metrics.json`. The runs
of the first seed are copied to `<output>/models/{teacher,student_scratch,
student_distilled}.keras`, the models the report notebook shows.

    KERAS_BACKEND=jax python scripts/experiment.py --profile full --output results
    python scripts/experiment.py --profile tiny --output /tmp/experiment   # a dry run

Every run checkpoints each epoch and resumes when the command is rerun.
"""

import argparse
import json
import pathlib
import shutil
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras  # noqa: E402

import utils  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="full", choices=sorted(utils.PROFILES))
    parser.add_argument("--output", default=str(utils.REPO_ROOT / "results"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, help="overrides the profile's epochs")
    parser.add_argument("--kind", choices=("pixel", "channel"))
    parser.add_argument("--alpha", type=float)
    parser.add_argument("--temperature", type=float)
    args = parser.parse_args(argv)

    profile = utils.load_profile(args.profile, output_dir=args.output)
    profile.models_dir.mkdir(parents=True, exist_ok=True)
    epochs = args.epochs or profile.epochs
    config = utils.load_distillation_config(profile)
    config.update({k: v for k, v in (("kind", args.kind), ("alpha", args.alpha),
                                     ("temperature", args.temperature)) if v is not None})
    data = utils.profile_dataset(profile)
    print(data.summary(), flush=True)

    metrics_path = profile.output_dir / "metrics.json"
    entries = json.loads(metrics_path.read_text()) if metrics_path.exists() else []

    def record(model_name, run_name, model, seed, run_config, seconds):
        result = utils.evaluate_segmentation(model, data.x_test, data.y_test)
        entry = {
            "model": model_name, "run": run_name, "seed": seed,
            "miou5": result["miou5"], "miou6": result["miou6"],
            "pixel_acc": result["pixel_acc"],
            "per_class_iou": dict(zip(utils.CLASSES, result["per_class_iou"])),
            "epochs": epochs, "train_seconds": seconds,
            "config": {**run_config, "batch_size": profile.batch_size,
                       "learning_rate": profile.learning_rate,
                       "patch_size": profile.patch_size,
                       "precision": keras.config.dtype_policy().name},
            **{k: v for k, v in utils.run_info(profile).items()
               if k in ("backend", "keras", "device", "date", "profile")},
            "split": {"test": data.sources["test"], "val": data.sources["val"]},
        }
        entries[:] = [e for e in entries if e.get("run") != run_name] + [entry]
        metrics_path.write_text(json.dumps(entries, indent=1))
        print(f"{run_name}: test mIoU5 {entry['miou5']:.4f}, mIoU6 {entry['miou6']:.4f}, "
              f"pixel acc {entry['pixel_acc']:.4f} ({seconds:.0f} s)", flush=True)

    teacher_path = profile.models_dir / "teacher.keras"
    start = time.time()
    reuse = (profile.models_dir / "teacher_run.json").exists()
    if reuse:
        teacher = keras.models.load_model(teacher_path)
        print(f"Reusing the saved teacher {teacher_path}", flush=True)
    else:
        teacher, _ = utils.train("teacher", profile, data, seed=args.seeds[0], epochs=epochs)
    if not reuse or not any(e["run"] == "teacher" for e in entries):
        record("teacher", "teacher", teacher, args.seeds[0], {"kd": "none"},
               time.time() - start)

    for seed in args.seeds:
        for model_name, kwargs in (("student_scratch", {}),
                                   ("student_distilled", {"teacher": teacher, **config})):
            run_name = f"{model_name}_s{seed}"
            start = time.time()
            student, _ = utils.train(run_name, profile, data, seed=seed, epochs=epochs,
                                     **kwargs)
            run_config = {"kd": "none"} if model_name == "student_scratch" else dict(config)
            record(model_name, run_name, student, seed, run_config, time.time() - start)
            if seed == args.seeds[0]:
                shutil.copy(profile.models_dir / f"{run_name}.keras",
                            profile.models_dir / f"{model_name}.keras")
                shutil.copy(profile.models_dir / f"{run_name}_history.json",
                            profile.models_dir / f"{model_name}_history.json")
    print(f"Wrote {metrics_path}")


if __name__ == "__main__":
    main()
