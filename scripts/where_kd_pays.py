"""Where distillation pays: few labels, and thinner students (issue #35).

Two regimes where knowledge distillation is expected to help, each next to
students trained from scratch with the same budget, three seeds, paired by seed:

1. **A quarter of the labels.** `label_subset` picks 12 of the 48 training images
   (one or two per tile, whose patches come closest to a quarter of the training
   patches; which images within a tile is drawn with seed 0). Arms:
   - `student_scratch_l12`: from scratch on the 12 labelled images;
   - `student_distilled_l12`: the committed teacher (trained on all 48) distilled
     into a student that has labels for the same 12 only, on all 48 images (the
     36 others' masks are all unannotated, so they add only the KD term);
   - `teacher_l12`: a teacher trained on the 12 alone;
   - `student_distilled_t12`: that teacher distilled into a student, likewise on
     all 48 images with labels for the 12.
   Every run takes the optimizer steps of a 100-epoch run on the 48 images
   (`matched_epochs`): a run on the 12 sees them about four times as often.
2. **The width curve.** `student_scratch_w4` / `student_distilled_w4` (base width
   4) and the same at width 2, on all labels, distilled from the committed teacher.

The recipe is the committed students': the profile's budget and the precision of
`results/profile.json`, the KD settings of `results/models/distillation.json`.
Runs checkpoint each epoch and resume when the command is rerun. The test split is
scored only by `--evaluate`, once every run of a part has finished:

    nice -n 19 python scripts/where_kd_pays.py --output runs/where_kd_pays
    python scripts/where_kd_pays.py --output runs/where_kd_pays --evaluate
    python scripts/where_kd_pays.py --profile tiny --output /tmp/kd_pays   # a dry run
"""

import argparse
import dataclasses
import functools
import itertools
import json
import math
import pathlib


import keras
import numpy as np

import runs
import utils

PARTS = ("labels", "width4", "width2")
SEEDS = (0, 1, 2)


def label_subset(data, n_images=None, seed=0):
    """The training images that keep their labels: one or two per tile.

    Every tile gives one image; the tiles that give a second are the ones whose
    patches bring the total closest to a quarter of the training patches. Which
    images of a tile is drawn with `seed`. In a flat layout (no tiles), `n_images`
    images drawn with `seed`.

    Returns:
        The chosen source names, in the order of `data.sources["train"]`.
    """
    sources = list(data.sources["train"])
    n_images = n_images or max(1, round(len(sources) / 4))
    counts = dict(zip(sources, _patches_per_image(data)))
    rng = np.random.default_rng(seed)
    tiles = {}
    for name in sources:
        tiles.setdefault(name.split("/")[0] if "/" in name else "", []).append(name)
    order = {tile: [names[i] for i in rng.permutation(len(names))]
             for tile, names in tiles.items()}
    if len(tiles) == 1 or n_images < len(tiles):
        chosen = order[next(iter(tiles))][:n_images] if len(tiles) == 1 else \
            [order[t][0] for t in list(tiles)[:n_images]]
    else:
        base = [order[t][0] for t in tiles]
        extra, target = n_images - len(tiles), sum(counts.values()) / 4
        best = min(itertools.combinations(list(tiles), extra),
                   key=lambda pick: abs(sum(counts[n] for n in base)
                                        + sum(counts[order[t][1]] for t in pick) - target))
        chosen = base + [order[t][1] for t in best]
    return [name for name in sources if name in chosen]


def _patches_per_image(data):
    p = data.patch_size
    return [(h // p) * (w // p) for h, w in data.image_sizes["train"]]


def labelled_mask(data, chosen):
    """Boolean per training patch: whether its source image is in `chosen`."""
    owners = np.repeat(np.arange(len(data.sources["train"])), _patches_per_image(data))
    if len(owners) != len(data.x_train):
        raise ValueError("The training patches do not match the training images.")
    keep = np.array([name in chosen for name in data.sources["train"]])
    return keep[owners]


def only_labelled(data, chosen):
    """The dataset with the chosen training images alone."""
    keep = labelled_mask(data, chosen)
    files = [f for n, f in zip(data.sources["train"], data.files["train"]) if n in chosen]
    return dataclasses.replace(
        data, x_train=data.x_train[keep], y_train=data.y_train[keep],
        sources={**data.sources, "train": list(chosen)}, files={**data.files, "train": files},
        image_sizes={**data.image_sizes, "train": [
            s for n, s in zip(data.sources["train"], data.image_sizes["train"]) if n in chosen]})


def unlabelled_elsewhere(data, chosen):
    """The dataset with every training image, masks unannotated outside `chosen`."""
    y = data.y_train.copy()
    y[~labelled_mask(data, chosen)] = utils.IGNORE_INDEX
    return dataclasses.replace(data, y_train=y)


def matched_epochs(profile, n_train, n_reference):
    """Epochs on `n_train` patches that take the steps of `profile.epochs` on `n_reference`."""
    steps = lambda n: math.ceil(n / profile.batch_size)  # noqa: E731
    return round(profile.epochs * steps(n_reference) / steps(n_train))


def runs_of(part, data, chosen, profile):
    """`(run name, model name, dataset, settings)` of a part, in training order."""
    if part == "labels":
        few, masked = only_labelled(data, chosen), unlabelled_elsewhere(data, chosen)
        epochs = matched_epochs(profile, len(few.x_train), len(data.x_train))
        label = {"labelled_images": len(chosen), "train_images": len(data.sources["train"])}
        out = []
        for seed in SEEDS:
            out.append((f"student_scratch_l12_s{seed}", "student_scratch_l12", few,
                        dict(seed=seed, epochs=epochs, record=label)))
            out.append((f"student_distilled_l12_s{seed}", "student_distilled_l12", masked,
                        dict(seed=seed, teacher="teacher", record=label)))
            if seed == SEEDS[0]:
                out.append(("teacher_l12", "teacher_l12", few,
                            dict(seed=seed, epochs=epochs, build=utils.build_teacher,
                                 record=label)))
            out.append((f"student_distilled_t12_s{seed}", "student_distilled_t12", masked,
                        dict(seed=seed, teacher="teacher_l12", record=label)))
        return out
    width = int(part.removeprefix("width"))
    build = functools.partial(utils.build_unet, width, name="student")
    record = {"width": width}
    return [run for seed in SEEDS for run in (
        (f"student_scratch_w{width}_s{seed}", f"student_scratch_w{width}", data,
         dict(seed=seed, build=build, record=record)),
        (f"student_distilled_w{width}_s{seed}", f"student_distilled_w{width}", data,
         dict(seed=seed, build=build, teacher="teacher", record=record)))]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="full", choices=sorted(utils.PROFILES))
    parser.add_argument("--output", required=True,
                        help="folder of the runs (models/, metrics.json, label_subset.json)")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--teacher",
                        help="the committed teacher's .keras file (default: "
                             "results/models/teacher.keras; the tiny profile trains one)")
    parser.add_argument("--evaluate", action="store_true",
                        help="score every finished run on the test split, once, into "
                             "<output>/metrics.json")
    args = parser.parse_args(argv)
    output = pathlib.Path(args.output)
    committed = utils.REPO_ROOT / "results"
    if args.profile == "full" and not (output / "profile.json").exists():
        output.mkdir(parents=True, exist_ok=True)  # the committed students' budget
        (output / "profile.json").write_text((committed / "profile.json").read_text())
    profile = runs.load_profile(args.profile, output)
    precision = runs.load_precision(profile)
    profile.models_dir.mkdir(parents=True, exist_ok=True)
    data = utils.profile_dataset(profile)
    print(data.summary(), flush=True)
    chosen = label_subset(data)
    subset = {"labelled": chosen, "rule": label_subset.__doc__.splitlines()[0],
              "patches": int(labelled_mask(data, chosen).sum()),
              "train_patches": len(data.x_train)}
    (output / "label_subset.json").write_text(json.dumps(subset, indent=1))
    print(f"Labelled images ({len(chosen)}, {subset['patches']} of {len(data.x_train)} "
          f"patches): {chosen}", flush=True)
    if args.profile == "full":
        config = json.loads((committed / "models" / "distillation.json").read_text())
    else:
        config = dict(runs.DEFAULT_DISTILLATION)
    config = {k: config[k] for k in ("alpha", "temperature", "kind")}
    teachers = {}

    def teacher(name):
        if name not in teachers:
            if name == "teacher":
                path = pathlib.Path(args.teacher or committed / "models" / "teacher.keras")
                if args.profile == "tiny" and args.teacher is None:
                    teachers[name], _ = runs.train("teacher", profile, data,
                                                   build=utils.build_teacher,
                                                   precision=precision)
                else:
                    teachers[name] = keras.models.load_model(path)
            else:
                teachers[name] = keras.models.load_model(profile.models_dir / f"{name}.keras")
        return teachers[name]

    todo = [run for part in args.parts for run in runs_of(part, data, chosen, profile)]
    if args.evaluate:
        return evaluate(todo, profile, data, subset)
    for run_name, _, run_data, settings in todo:
        settings = dict(settings)
        if "teacher" in settings:
            settings.update(teacher=teacher(settings["teacher"]), **config)
        print(f"== {run_name}", flush=True)
        runs.train(run_name, profile, run_data, precision=precision, **settings)


def evaluate(todo, profile, data, subset):
    """Scores each finished run on the test split into `<output>/metrics.json`."""
    path = profile.output_dir / "metrics.json"
    entries = json.loads(path.read_text()) if path.exists() else []
    for run_name, model_name, _, settings in todo:
        record_path = profile.models_dir / f"{run_name}_run.json"
        if not record_path.exists():
            print(f"{run_name}: not finished, not scored", flush=True)
            continue
        run = json.loads(record_path.read_text())
        model = keras.models.load_model(profile.models_dir / f"{run_name}.keras")
        logits = utils.predict_logits(model, data.x_test, profile.batch_size)
        result = utils.iou_scores(data.y_test, logits.argmax(-1), n_classes=data.n_classes, labelled_classes=data.labelled_classes)
        entry = {
            "model": model_name, "run": run_name, "seed": settings["seed"],
            "miou5": result["miou5"], "miou6": result["miou6"],
            "pixel_acc": result["pixel_acc"],
            "per_class_iou": dict(zip(utils.CLASSES, result["per_class_iou"])),
            "epochs": run["epochs"], "train_seconds": run["train_seconds"],
            "config": {**run["distillation"],
                       **{k: run[k] for k in ("batch_size", "learning_rate", "schedule",
                                              "patch_size", "precision", "sampling")}},
            **{k: run[k] for k in ("backend", "keras", "device", "date", "profile")},
            **settings["record"],
            "split": {"test": data.sources["test"], "val": data.sources["val"]},
        }
        if "labelled_images" in entry:
            entry["labelled"] = subset["labelled"]
        entries = [e for e in entries if e.get("run") != run_name] + [entry]
        path.write_text(json.dumps(entries, indent=1))
        print(f"{run_name}: test mIoU5 {entry['miou5']:.4f}", flush=True)


if __name__ == "__main__":
    main()
