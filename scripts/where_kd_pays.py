"""Where distillation pays: few labels, and thinner students (issue #35).

Two regimes where knowledge distillation is expected to help, each next to
students trained from scratch with the same budget, three seeds, paired by seed:

1. **A quarter of the labels.** `utils.label_subset` picks 12 of the 48 training
   images (one or two per tile, whose patches come closest to a quarter of the
   training patches; which images within a tile is drawn with seed 0). Arms:
   - `student_scratch_l12`: from scratch on the 12 labelled images;
   - `student_distilled_l12`: the committed teacher (trained on all 48) distilled
     into a student that has labels for the same 12 only, on all 48 images (the
     36 others' masks are all unannotated, so they add only the KD term);
   - `teacher_l12`: a teacher trained on the 12 alone;
   - `student_distilled_t12`: that teacher distilled into a student, likewise on
     all 48 images with labels for the 12;
   - `student_pseudo_t12`: a student from scratch on all 48 images, the 36 without
     labels labelled by that teacher's predicted classes (`utils.pseudo_labelled`):
     what its soft targets add over its hard labels.
   Every run takes the optimizer steps of a 100-epoch run on the 48 images
   (`utils.matched_epochs`): a run on the 12 sees them about four times as often.
2. **The width curve.** `student_scratch_w4` / `student_distilled_w4` (base width
   4), on all labels, distilled from the committed teacher. The same at width 2
   (`--parts width2`) is not trained by default: at that width the U-Net's top
   level can be born dead (`scripts/dead_units.py`: on TensorFlow, seeds 0 and
   2 of the grid's three), so its scores would measure the draw of the initial
   weights, not what a thin student can learn.

The recipe is the committed students': the profile's budget and the precision of
`results/profile.json`, the KD settings of `results/models/distillation.json`.
Runs checkpoint each epoch and resume when the command is rerun. The finished runs
are kept in `results/where_kd_pays/` until a part is complete (`results/README.md`). The
test split is scored only by `--evaluate`, once every run of a part has finished:

    nice -n 19 python scripts/where_kd_pays.py --output results/where_kd_pays
    python scripts/where_kd_pays.py --output results/where_kd_pays --evaluate
    python scripts/where_kd_pays.py --output results/where_kd_pays --parts labels --publish
    python scripts/where_kd_pays.py --profile tiny --output outputs/where_kd_pays   # a dry run

`--runs` trains only the named runs, e.g. to spread the grid over several sessions
or machines (a run that learns from `teacher_l12` refuses to start before that run
has finished). On one GPU, train runs one after another in one process: separate
processes side by side share the GPU by time-slicing and compile at the same time,
which was slower than one process; with JAX's persistent compilation cache, the runs
after the first of a model skip most of their compiling (`benchmarks/README.md`):

    export KERAS_BACKEND=jax JAX_COMPILATION_CACHE_DIR=~/.cache/jax
    python scripts/where_kd_pays.py --output results/where_kd_pays --runs teacher_l12 student_scratch_l12_s0
"""

import argparse
import functools
import json
import pathlib

import keras

import runs
import utils

PARTS = ("labels", "width4", "width2")
DEFAULT_PARTS = ("labels", "width4")  # width 2: see the module's docstring
SEEDS = (0, 1, 2)


def runs_of(part, data, chosen, profile):
    """`(run name, model name, dataset, settings)` of a part, in training order."""
    if part == "labels":
        few = utils.only_labelled(data, chosen)
        masked = utils.unlabelled_elsewhere(data, chosen)
        epochs = utils.matched_epochs(profile.epochs, len(few.x_train), len(data.x_train),
                                      profile.batch_size)
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
        for seed in SEEDS:  # its dataset needs the teacher's predictions: made when trained
            out.append((f"student_pseudo_t12_s{seed}", "student_pseudo_t12", None,
                        dict(seed=seed, pseudo="teacher_l12",
                             record={**label, "pseudo_labels": "teacher_l12"})))
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
    parser.add_argument("--parts", nargs="+", default=list(DEFAULT_PARTS), choices=PARTS,
                        help=f"parts of the grid (default: {' '.join(DEFAULT_PARTS)})")
    parser.add_argument("--teacher",
                        help="the committed teacher's .keras file (default: "
                             "results/models/teacher.keras; the tiny profile trains one)")
    parser.add_argument("--evaluate", action="store_true",
                        help="score every finished run on the test split, once, into "
                             "<output>/metrics.json")
    parser.add_argument("--publish", action="store_true",
                        help="copy the scored runs of --parts, every one finished, into "
                             "--results: their entries into metrics.json, histories and run "
                             "records, the seed-0 models, the label subset")
    parser.add_argument("--results", type=pathlib.Path, default=utils.REPO_ROOT / "results",
                        help="where --publish writes (default: results/)")
    parser.add_argument("--runs", nargs="+", metavar="RUN",
                        help="train only these runs of --parts (default: every one), in "
                             "the order of the grid")
    args = parser.parse_args(argv)
    if args.runs and (args.evaluate or args.publish):
        parser.error("--runs chooses runs to train: --evaluate and --publish take whole --parts")
    output = pathlib.Path(args.output)
    committed = utils.REPO_ROOT / "results"
    if args.profile == "full" and not (output / "profile.json").exists():
        output.mkdir(parents=True, exist_ok=True)  # the committed students' budget
        utils.write_into_place(output / "profile.json", (committed / "profile.json").read_bytes())
    profile = runs.load_profile(args.profile, output)
    precision = runs.load_precision(profile)
    profile.models_dir.mkdir(parents=True, exist_ok=True)
    data = utils.profile_dataset(profile)
    print(data.summary(), flush=True)
    chosen = utils.label_subset(data)
    subset = {"labelled": chosen, "rule": utils.label_subset.__doc__.splitlines()[0],
              "patches": int(utils.labelled_patches(data, chosen).sum()),
              "train_patches": len(data.x_train)}
    written = output / "label_subset.json"
    if written.exists() and json.loads(written.read_text()) != subset:
        raise SystemExit(
            f"{written} names other labelled images than utils.label_subset chooses now "
            f"({json.loads(written.read_text())['labelled']} against {chosen}): the runs in "
            f"{output} were trained on those. Train the part in a new --output folder.")
    if not written.exists():
        utils.write_into_place(written, json.dumps(subset, indent=1))
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
            else:  # a run of this grid: its best checkpoint exists long before it ends
                files = utils.RunFiles(profile.models_dir, name)
                if not files.record.exists():
                    raise SystemExit(
                        f"{name} has not finished training in {profile.models_dir}, and a "
                        f"student must not learn from its checkpoint of the moment: train "
                        f"it first (--runs {name}).")
                teachers[name] = keras.models.load_model(files.model)
        return teachers[name]

    pseudo = {}

    def pseudo_labelled(name):
        """The training set, labelled by the model `name` outside the chosen images."""
        if name not in pseudo:
            labels = utils.predict_logits(teacher(name), data.x_train, profile.batch_size)
            pseudo[name] = utils.pseudo_labelled(data, chosen, labels.argmax(-1))
        return pseudo[name]

    todo = [run for part in args.parts for run in runs_of(part, data, chosen, profile)]
    if args.runs:
        names = [run for run, *_ in todo]
        unknown = [run for run in args.runs if run not in names]
        if unknown:
            parser.error(f"--runs {unknown}: not runs of --parts {args.parts}, whose runs "
                         f"are {names}")
        todo = [run for run in todo if run[0] in args.runs]
    if args.evaluate:
        return evaluate(todo, profile, data, subset)
    if args.publish:
        return publish(todo, profile, args.results, labels="labels" in args.parts,
                       fingerprint=lambda name: runs.weights_fingerprint(teacher(name)))
    for run_name, _, run_data, settings in todo:
        settings = dict(settings)
        if "pseudo" in settings:
            name = settings.pop("pseudo")
            run_data = pseudo_labelled(name)
            settings["record"] = {**settings["record"],
                                  "pseudo_teacher_sha1": runs.weights_fingerprint(teacher(name))}
        if "teacher" in settings:
            settings.update(teacher=teacher(settings["teacher"]), **config)
        print(f"== {run_name}", flush=True)
        runs.train(run_name, profile, run_data, precision=precision, **settings)


def evaluate(todo, profile, data, subset):
    """Scores the runs of `todo` on the test split into `<output>/metrics.json`.

    Only once every run of the parts has finished: the test split is looked at
    once, at the end, never while the grid is still training.
    """
    path = profile.output_dir / "metrics.json"
    entries = json.loads(path.read_text()) if path.exists() else []
    unfinished = [run for run, *_ in todo
                  if not utils.RunFiles(profile.models_dir, run).record.exists()]
    if unfinished:
        stale = [e["run"] for e in entries if e.get("run") in unfinished]
        if stale:  # scores of earlier runs of these names, trained again since
            entries = [e for e in entries if e.get("run") not in unfinished]
            utils.write_into_place(path, json.dumps(entries, indent=1))
        raise SystemExit(f"Not scored: the test split is scored once every run of the part "
                         f"has finished, and these have not: {unfinished}"
                         + (f" (the scores of their earlier runs {stale} are dropped)"
                            if stale else "") + ".")
    for run_name, model_name, _, settings in todo:
        run = json.loads(utils.RunFiles(profile.models_dir, run_name).record.read_text())
        model = keras.models.load_model(profile.models_dir / f"{run_name}.keras")
        logits = utils.predict_logits(model, data.x_test, profile.batch_size)
        result = utils.iou_scores(data.y_test, logits.argmax(-1), n_classes=data.n_classes,
                                  labelled_classes=data.labelled_classes)
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
        utils.write_into_place(path, json.dumps(entries, indent=1))
        print(f"{run_name}: test mIoU5 {entry['miou5']:.4f}", flush=True)


def _scored(entry, files):
    """Whether the test `entry` scores the run whose record is in `files`, not an earlier one."""
    if entry is None:
        return False
    record = json.loads(files.record.read_text())
    return all(entry.get(key) == record.get(key) for key in ("date", "train_seconds"))


def check_publishable(todo, profile, fingerprint=None):
    """The test entries of the runs of `todo`, if they may be published; else `SystemExit`.

    They may be if every run has finished and been scored by `--evaluate` with
    the epochs and seed of the grid, its students (the runs that are not
    teachers) were all trained with one backend on one machine, and the
    students of one teacher all learnt from the same weights
    (`fingerprint(name)`'s, if given: the teacher's `runs.weights_fingerprint`).
    """
    scored = profile.output_dir / "metrics.json"
    entries = {e["run"]: e for e in json.loads(scored.read_text())} if scored.exists() else {}
    unfinished = [run for run, *_ in todo
                  if not utils.RunFiles(profile.models_dir, run).record.exists()]
    unscored = [run for run, *_ in todo if run not in unfinished and not _scored(
        entries.get(run), utils.RunFiles(profile.models_dir, run))]
    if unfinished or unscored:
        raise SystemExit(f"Not published: unfinished runs {unfinished}, finished but not scored "
                         f"(or scored before they were trained again) {unscored}. Finish them "
                         f"(rerun without --publish), score them with --evaluate, then publish.")
    other = _not_the_grids(todo, profile, fingerprint)
    if other:
        raise SystemExit(f"Not published: runs that are not the grid's: {other}. Train them "
                         f"again in {profile.models_dir} (--runs), then --evaluate and "
                         f"--publish.")
    machines = {}  # the students' (backend, device): one per part, teachers aside
    for run, model, *_ in todo:
        if not model.startswith("teacher"):
            entry = entries[run]
            machines.setdefault(f"{entry.get('backend')} on {entry.get('device')}", []).append(run)
    if len(machines) > 1:
        raise SystemExit(f"Not published: a part's students are compared with each other, so "
                         f"they must share a backend and machine, and these differ: {machines}. "
                         f"Keep one machine's runs in {profile.models_dir}, train the others "
                         f"again there (--runs), then --evaluate and --publish.")
    return entries


def _not_the_grids(todo, profile, fingerprint):
    """The runs of `todo` whose records differ from the grid's (epochs, seed, teacher's weights)."""
    records = {run: json.loads(utils.RunFiles(profile.models_dir, run).record.read_text())
               for run, *_ in todo}
    other = [f"{run} ({key} {records[run].get(key)}, the grid's {value})"
             for run, _, _, settings in todo
             for key, value in (("epochs", settings.get("epochs", profile.epochs)),
                                ("seed", settings["seed"]))
             if records[run].get(key) != value]
    learnt = {}  # teacher name: {its fingerprint in the students' records: runs}
    for run, _, _, settings in todo:
        for key, name in (("teacher_sha1", settings.get("teacher")),
                          ("pseudo_teacher_sha1", settings.get("pseudo"))):
            if name is not None:
                learnt.setdefault(name, {}).setdefault(records[run].get(key), []).append(run)
    for name, by_weights in learnt.items():
        expected = {fingerprint(name)} if fingerprint else set(list(by_weights)[:1])
        other += [f"{runs_} (learnt from {name} {sha}, not {sorted(expected)[0]})"
                  for sha, runs_ in by_weights.items() if sha not in expected]
    return other


def publish(todo, profile, results, labels=False, fingerprint=None):
    """Copies the finished and scored runs of `todo` into the folder `results`.

    Every run's test entry goes into `results/metrics.json` (replacing an earlier
    entry of the same run), its history and run record into `results/models/`,
    and the model too for seed 0 (and the one teacher); with `labels`, the label
    subset goes to `results/label_subset.json`. Nothing is written unless
    `check_publishable` passes.
    """
    saved = results / "profile.json"
    if saved.exists() and json.loads(saved.read_text()).get("name") != profile.name:
        raise SystemExit(f"{results} holds the runs of another profile than {profile.name!r} "
                         f"({saved}): publish these into another folder (--results).")
    entries = check_publishable(todo, profile, fingerprint)
    (results / "models").mkdir(parents=True, exist_ok=True)
    for run, _, _, settings in todo:
        source = utils.RunFiles(profile.models_dir, run)
        target = utils.RunFiles(results / "models", run)
        paths = ["history", "record"] + (["model"] if settings["seed"] == SEEDS[0] else [])
        for name in paths:
            utils.write_into_place(getattr(target, name), getattr(source, name).read_bytes())
    metrics = results / "metrics.json"
    published = json.loads(metrics.read_text()) if metrics.exists() else []
    runs_here = {run for run, *_ in todo}
    published = [e for e in published if e.get("run") not in runs_here] + [
        entries[run] for run, *_ in todo]
    utils.write_into_place(metrics, json.dumps(published, indent=1))
    if labels:
        utils.write_into_place(results / "label_subset.json",
                               (profile.output_dir / "label_subset.json").read_bytes())
    print(f"Published {len(todo)} runs into {results}", flush=True)


if __name__ == "__main__":
    main()
