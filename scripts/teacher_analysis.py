"""What the teacher can teach: calibration and error overlap of the saved models.

Distillation can only pass on what the teacher knows and the student does not.
This loads an experiment's teacher, its 8-symmetry ensemble and every saved
student (`<output>/models/student_*_s<seed>.keras`) and, on the validation and
the test split, reports

- each model's mIoU5 and pixel accuracy;
- the calibration of the teacher and the ensemble over KD temperatures
  (`utils.calibration`): the T at which their probabilities are honest, and
  how flat the KD targets are at the temperatures the sweep tries; and each
  student's own calibration (T = 1);
- for each student, where it and the teacher (and the ensemble) are right
  and wrong (`utils.error_overlap`), over all pixels and within each class:
  the pixels only the teacher gets right are the most imitation could fix;
- the ceiling of a teacher made of the models at hand: each scratch student's
  8-symmetry ensemble, and the averaged logits of all of them, with and without
  the teacher's. If those score no better than the teacher, a bigger ensemble
  of the same recipe would not be a stronger teacher either.

On the training split, which the teacher was fitted to, it reports the
teacher's and the ensemble's scores and calibration alone: these are the
targets a distilled student learns from, and how far they differ from the
labels is what the teacher can add to them there.

Inference only, so it runs on a CPU (a few minutes on 2 cores); writes
`<output>/teacher_analysis.json` with the machine, backend and versions.

    python scripts/teacher_analysis.py --profile full --output results
    python scripts/teacher_analysis.py --profile tiny --output outputs/experiment   # a dry run
"""

import argparse
import json
import re
import sys


import keras

import utils

TEMPERATURES = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 8.0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="full", choices=sorted(utils.PROFILES))
    parser.add_argument("--output", default=str(utils.REPO_ROOT / "results"),
                        help="the output folder of scripts/experiment.py")
    parser.add_argument("--temperatures", type=float, nargs="+", default=TEMPERATURES)
    args = parser.parse_args(argv)

    profile = utils.load_profile(args.profile, output_dir=args.output)
    teacher_files = utils.RunFiles(profile.models_dir, "teacher")
    if not teacher_files.model.exists():
        sys.exit(f"No teacher.keras in {profile.models_dir}: run scripts/experiment.py "
                 f"with --output {args.output} first.")
    teacher = keras.models.load_model(teacher_files.model)
    teachers = {"teacher": teacher, "teacher_x8": utils.symmetry_ensemble(teacher)}
    students = {path.stem: keras.models.load_model(path) for path in sorted(
        profile.models_dir.glob("student_*_s*.keras")) if re.search(r"_s\d+$", path.stem)}
    if not students:
        sys.exit(f"No student_*_s<seed>.keras in {profile.models_dir}: run "
                 f"scripts/experiment.py with --output {args.output} first.")
    data = utils.profile_dataset(profile)
    print(data.summary(), flush=True)

    report = {**utils.run_info(profile), "temperatures": list(args.temperatures),
              "note": "inference with the saved float32 models on this machine; the "
                      "profile's fields say how they were trained"}
    for split in ("train", "val", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        scored = teachers if split == "train" else {**teachers, **students}
        predictions, calibration = {}, {}
        for name, model in scored.items():  # one model's logits at a time, and teacher_x8's
            logits = utils.predict_logits(model, x, profile.batch_size)
            if name == "teacher_x8":
                teacher_x8 = logits
            predictions[name] = logits.argmax(-1)
            calibration[name] = utils.calibration(
                logits, y, args.temperatures if name in teachers else (1.0,))
            del logits
        scores = {name: _score(y, p) for name, p in predictions.items()}
        overlap = {f"{t} vs {s}": utils.error_overlap(y, predictions[t], predictions[s],
                                                      by_class=True, class_names=data.classes)
                   for t in teachers for s in students if s in predictions}
        report[split] = {"scores": scores, "calibration": calibration, "overlap": overlap}
        if split != "train":
            scratch = {name: model for name, model in students.items()
                       if name.startswith("student_scratch")}
            report[split]["ensembles"] = ensemble_scores(
                teacher_x8, scratch, x, y, profile.batch_size)
        del teacher_x8

        print(f"\n## {split} ({len(x)} patches)\n")
        print(utils.markdown_table([{"model": name, **s} for name, s in scores.items()],
                                   digits=4))
        for name in teachers:
            print(f"\n{name}, softmax(logits / T):\n")
            print(utils.markdown_table(calibration[name]))
        if split == "train":  # the KD targets: the students are not compared there
            continue
        print("\nThe students' own probabilities (T = 1):\n")
        print(utils.markdown_table([{"model": name, **calibration[name][0]}
                                    for name in students], digits=4))
        print("\nShares of annotated pixels (a: the teacher, b: the student):\n")
        print(utils.markdown_table([{"pair": pair, **{k: v for k, v in shares.items()
                                                      if k != "by_class"}}
                                    for pair, shares in overlap.items()], digits=4))
        pairs = [shares["by_class"] for pair, shares in overlap.items()
                 if pair.startswith("teacher vs student_scratch")]
        if pairs:
            print("\nThe same within each class, teacher vs the scratch students (mean):\n")
            print(utils.markdown_table([
                {"class": name, **{k: sum(p[name][k] for p in pairs) / len(pairs)
                                   for k in pairs[0][name]}}
                for name in pairs[0]], digits=4))
        if report[split]["ensembles"]:
            print("\nEnsembles (averaged logits; x8: over the 8 symmetries):\n")
            print(utils.markdown_table([{"model": name, **s} for name, s
                                        in report[split]["ensembles"].items()], digits=4))

    path = profile.output_dir / "teacher_analysis.json"
    utils.write_into_place(path, json.dumps(report, indent=1))
    print(f"\nWrote {path}")


def ensemble_scores(teacher_x8_logits, students, x, y, batch_size):
    """Scores of the students' 8-symmetry ensembles and of averages over models.

    Args:
        teacher_x8_logits: the teacher's 8-symmetry logits of `x`.
        students: dict of name to student model (trained independently).
        x, y: images and labels of one split.
        batch_size: for prediction.

    Returns:
        Dict of name to `{"miou5", "pixel_acc"}`: `<student>_x8` for each
        student, then the mean logits of all students' x8 ensembles, alone and
        with the teacher's as one more member. Empty without students.
    """
    scores, total = {}, 0.0
    for name, model in students.items():
        logits = utils.predict_logits(utils.symmetry_ensemble(model), x, batch_size)
        scores[f"{name}_x8"] = _score(y, logits.argmax(-1))
        total = total + logits
        del logits
    if students:
        n = len(students)
        scores[f"mean of the {n} students x8"] = _score(y, total.argmax(-1))
        scores[f"mean of the {n} students x8 and teacher_x8"] = _score(
            y, (total + teacher_x8_logits).argmax(-1))  # the teacher weighs 1 / (n + 1)
    return scores


def _score(y, predictions):
    return {k: v for k, v in utils.iou_scores(y, predictions, n_classes=len(utils.CLASSES),
                                              labelled_classes=utils.LABELLED_CLASSES).items()
            if k in ("miou5", "pixel_acc")}


if __name__ == "__main__":
    main()
