"""Writes the results the pages quote, from the committed JSON: one number, one source.

The README's results table and verdict and the tables of `results/README.md` are
generated here from `results/metrics.json` (test scores of every committed run),
`benchmarks/cpu_2core.json` and `benchmarks/h200_jax.json` (speed, measured by
`scripts/benchmark.py`), `results/teacher_analysis.json` (what the teacher can teach)
and `results/export.json` (LiteRT). Each generated block sits between the markers
`<!-- report:NAME -->` and `<!-- /report:NAME -->`; the text around it is written by
hand and quotes no number the block holds. `tests/test_results_docs.py` fails when a
committed page and this script disagree.

    python scripts/report.py           # rewrite the blocks
    python scripts/report.py --check   # exit 1 if a page is out of date
"""

import argparse
import json
import pathlib
import re
import statistics
import sys

import aerialkd

REPO = pathlib.Path(__file__).resolve().parents[1]
PAGES = {"README.md": ("headline", "where_kd_pays"),
         "results/README.md": ("runs", "paired", "export", "few_labels", "widths")}

#: Model groups of `metrics.json`, as the pages name them, in table order.
NAMES = {
    "teacher": "teacher (U-Net 16→256)",
    "student_scratch_tf": "student from scratch (8→128)",
    "student_distilled": "student distilled from the teacher",
    "student_scratch": "student from scratch, JAX on the H200",
    "student_distilled_x8": "distilled from the teacher's 8-symmetry ensemble",
    "student_distilled_cwd4": "distilled channel-wise, T = 4",
    "student_distilled_a01": "distilled mostly from the teacher, alpha = 0.1",
    "teacher_l12": "teacher from scratch on 12 labelled images",
    "student_scratch_l12": "student from scratch on 12 labelled images",
    "student_distilled_l12": "student with 12 labelled images, distilled from the teacher",
    "student_distilled_t12": "student with 12 labelled images, distilled from the teacher "
                             "of the 12",
    "student_pseudo_t12": "student with 12 labelled images and the other 36 labelled by the "
                          "teacher of the 12",
    "student_scratch_w4": "quarter-width student from scratch (4→64)",
    "student_distilled_w4": "quarter-width student distilled from the teacher",
    "student_scratch_w2": "eighth-width student from scratch (2→32)",
    "student_distilled_w2": "eighth-width student distilled from the teacher",
}
SCRATCH, DISTILLED = "student_scratch_tf", "student_distilled"

#: The arms of `scripts/where_kd_pays.py` with few labels, next to the ceiling, in table
#: order: (model, what it is, labelled training images, training images it sees).
FEW_LABELS = [
    (SCRATCH, "student from scratch, all labels (the ceiling)", 48, 48),
    ("teacher_l12", "teacher, from scratch on the 12 labelled images", 12, 12),
    ("student_scratch_l12", "student from scratch on the 12", 12, 12),
    ("student_distilled_l12", "student distilled from the teacher of all 48", 12, 48),
    ("student_distilled_t12", "student distilled from the teacher of the 12", 12, 48),
    ("student_pseudo_t12", "student from scratch, the other 36 labelled by the teacher of "
                           "the 12 (pseudo-labels)", 12, 48),
]
#: The students from scratch on all labels, one per backend and machine (TensorFlow on the
#: CPU, JAX on the H200): the few-labels arms' ceiling is the one trained where they were.
ALL_LABELS_SCRATCH = (SCRATCH, "student_scratch")
#: Base width -> (scratch, distilled) models of the width curve, all labels.
WIDTHS = {8: (SCRATCH, DISTILLED), 4: ("student_scratch_w4", "student_distilled_w4"),
          2: ("student_scratch_w2", "student_distilled_w2")}
#: The models of `scripts/where_kd_pays.py`, which the tables of issue #35 pair among themselves.
WHERE_KD_PAYS = ({model for model, *_ in FEW_LABELS} | set().union(*WIDTHS.values())) - {
    SCRATCH, DISTILLED}


def load(path):
    return json.loads((REPO / path).read_text())


def groups(entries):
    """`{model: {seed: entry}}` from the entries of `metrics.json`."""
    out = {}
    for entry in entries:
        seeds = out.setdefault(entry["model"], {})
        if entry["seed"] in seeds:
            raise SystemExit(f"metrics.json has two entries of {entry['model']!r} for seed "
                             f"{entry['seed']}; keep one run per model and seed.")
        seeds[entry["seed"]] = entry
    return out


def mean_sd(values, signed=False):
    """'0.662 ± 0.001' over seeds (sample sd), '0.693' for one value, '' for none."""
    return aerialkd.format_mean_sd(list(values), signed=signed)


def miou5(by_model, model):
    """The test mIoU5 of `model`'s runs, in seed order (`by_model` as `groups` gives it)."""
    return [by_model[model][seed]["miou5"] for seed in sorted(by_model[model])]


def paired(metrics, model, baseline=SCRATCH):
    """`{seed: model minus baseline}` in test mIoU5, over the seeds both have."""
    return aerialkd.paired_differences(metrics, model, baseline)


def by_seed(changes):
    """'+0.060 (seed 0), -0.006 (seed 2)' from `{seed: change}`."""
    return ", ".join(f"{aerialkd.format_number(change, signed=True)} (seed {seed})"
                     for seed, change in sorted(changes.items()))


def unet_size(width):
    """Parameters and GFLOPs at 256x256 of the U-Net of base width `width`."""
    model = aerialkd.build_unet(width)
    return model.count_params(), aerialkd.count_flops(model) / 1e9


def model_sizes():
    """`{width: (parameters, GFLOPs at 256x256)}` of the teacher (16) and the students (8, 4, 2)."""
    return {width: unet_size(width) for width in (16, *WIDTHS)}


def backend_name(entry):
    """'TensorFlow' or 'JAX', from a run's record."""
    return {"tensorflow": "TensorFlow", "jax": "JAX"}.get(entry["backend"], entry["backend"])


def where(entry):
    """'TensorFlow on a 2-core CPU', 'JAX on an NVIDIA H200', from a run's record."""
    backend = backend_name(entry)
    cpu = re.fullmatch(r"CPU \([^,]*, (\d+) cores\)", entry["device"])  # run_info's
    if cpu:
        return f"{backend} on {article(cpu.group(1))} {cpu.group(1)}-core CPU"
    devices = entry["device"].split(", ")  # accelerator_names, one a device
    if len(set(devices)) > 1:
        return f"{backend} on {entry['device']}"
    if len(devices) > 1:
        return f"{backend} on {len(devices)} × {devices[0]}"
    return f"{backend} on {article(devices[0])} {devices[0]}"


def article(name):
    """'a' or 'an' before `name` read aloud: an 8-core, a 16-core, an NVIDIA, an H100, a Tesla."""
    word = name.split()[0] if name.split() else "?"
    if word.isdigit():
        return "an" if word[0] == "8" or word in ("11", "18") else "a"
    if word.isupper() or any(c.isdigit() for c in word):  # read letter by letter
        return "an" if word[0] in "AEFHILMNORSX" else "a"
    return "an" if word[0].lower() in "aeiou" else "a"


def trained_with(by_model, model):
    """Where `model`'s runs were trained, e.g. 'JAX on an NVIDIA H200' ('' if not recorded)."""
    return ", ".join(sorted({where(e) for e in by_model[model].values() if "backend" in e}))


def machine(*where_trained):
    """'; trained with X' when every group of runs was trained at X (`trained_with`), else ''."""
    places = set(where_trained)
    return f"; trained with {places.pop()}" if len(places) == 1 and "" not in places else ""


def ceiling(by_model, model="student_scratch_l12"):
    """The all-labels scratch student trained where `model` was (`SCRATCH` if none was)."""
    for candidate in ALL_LABELS_SCRATCH:
        if candidate in by_model and model in by_model and (
                trained_with(by_model, candidate) == trained_with(by_model, model)):
            return candidate
    return SCRATCH


def headline(metrics, cpu, gpu, analysis, sizes):
    by = groups(metrics)
    teachers = [by["teacher"][seed] for seed in sorted(by["teacher"])]
    teacher = teachers[0]  # its split and budget, which every teacher shares
    teacher_miou5 = statistics.mean(e["miou5"] for e in teachers)
    scratch = [e["miou5"] for e in by[SCRATCH].values()]
    distilled = [e["miou5"] for e in by[DISTILLED].values()]
    gains = list(paired(metrics, DISTILLED).values())
    (t_params, t_gflops), (s_params, s_gflops) = sizes[16], sizes[8]
    figures, gpu_figures = cpu["figures"], gpu["figures"]
    alone = [analysis["val"]["overlap"][f"teacher vs {run}"]["only_a_right"]
             for run in sorted(e["run"] for e in by[SCRATCH].values())]
    student_where = {where(e) for e in by[SCRATCH].values()} | {
        where(e) for e in by[DISTILLED].values()}
    rows = [
        "| model | parameters | GFLOPs | mIoU5 (test) | seeds |",
        "|---|---|---|---|---|",
        f"| {NAMES['teacher']} | {t_params / 1e6:.2f} M | {t_gflops:.2f} | "
        f"{mean_sd(e['miou5'] for e in teachers)} | {len(teachers)} |",
        f"| {NAMES[SCRATCH]} | {s_params / 1e6:.2f} M | {s_gflops:.2f} | "
        f"{mean_sd(scratch)} | {len(scratch)} |",
        f"| {NAMES[DISTILLED]} | {s_params / 1e6:.2f} M | {s_gflops:.2f} | "
        f"{mean_sd(distilled)} | {len(distilled)} |",
        f"| distilled minus scratch, paired by seed | | | {mean_sd(gains, signed=True)} | "
        f"{len(gains)} |",
    ]
    keep = statistics.mean(distilled) / teacher_miou5
    verdict, paid = distillation_verdict(aerialkd.seed_summary(metrics, [DISTILLED], SCRATCH)[0])
    cpu_ratio = figures["latency_teacher_batch1_ms"] / figures["latency_student_batch1_ms"]
    text = [
        f"Test split ({len(teacher['split']['test'])} images never used for training or "
        f"choices, beside training images in their tiles, cut into 256×256 patches), mean IoU "
        f"over the five labelled classes "
        f"(mIoU5), {teacher['epochs']} epochs with the same recipe for every model, ± the "
        f"sample standard deviation over seeds. The teacher was trained with "
        f"{trained_with(by, 'teacher')}; "
        f"both students with {' and '.join(sorted(student_where))}, paired by seed.",
        "",
        *rows,
        "",
        f"**Verdict.** The distilled student keeps {keep:.0%} of the teacher's mIoU5 at "
        f"{s_params / t_params:.0%} of its parameters and {s_gflops / t_gflops:.0%} of its "
        f"FLOPs, and runs {cpu_ratio:.1f}× faster on a CPU "
        f"({figures['latency_student_batch1_ms']:.1f} vs "
        f"{figures['latency_teacher_batch1_ms']:.1f} ms a patch at batch 1, benchmark on an "
        f"idle 2-core CPU, TensorFlow). {gpu_sentence(gpu_figures)} {verdict} The teacher "
        f"leads those students by {'only ' if not paid else ''}"
        f"{teacher_miou5 - statistics.mean(scratch):.3f} on the test split and is right "
        f"alone on {statistics.mean(alone):.1%} of the validation pixels"
        f"{', so there is little to pass on' if not paid else ''}.",
    ]
    return "\n".join(text)


TARGET = 0.03
"""The paired gain in test mIoU5 the series set distillation as a target."""


LEVEL = 0.05
"""The level of the two-sided paired t-test at which a change is called real, as
`aerialkd.describe_change` calls it."""


def real_gain(row):
    """Whether a `seed_summary` row's paired change is a gain called real (p < `LEVEL`)."""
    p = aerialkd.paired_t_test(row)
    return p is not None and p < LEVEL and row["change"] > 0


def distillation_verdict(row):
    """Whether distillation paid, in a sentence and a bool, from the distilled students'
    `aerialkd.seed_summary` row against scratch: its two-sided paired t-test at `LEVEL`
    (`aerialkd.paired_t_test`) and the target."""
    p = aerialkd.paired_t_test(row)
    change = aerialkd.format_number(row["change"], signed=True) + (
        f" ± {row['change sd']:.3f}" if row["change sd"] is not None else "")
    numbers = f"{change}, against a target of +{TARGET}"
    if real_gain(row):
        reached = "reaching" if row["change"] >= TARGET else "short of"
        return (f"Distillation paid here: paired by seed, the distilled students beat students "
                f"trained from scratch ({change}, {aerialkd.format_p_value(p)}), {reached} the "
                f"target of +{TARGET}."), True
    if p is not None and p < LEVEL:  # a real change, and no gain
        return (f"Distillation cost accuracy here: paired by seed, the distilled students "
                f"score below students trained from scratch ({numbers}, "
                f"{aerialkd.format_p_value(p)})."), False
    return (f"Distillation did not pay here: paired by seed, the distilled students are "
            f"level with students trained from scratch ({numbers})."), False


def gpu_sentence(gpu_figures):
    """The GPU latencies at batch 1, and whether the student is faster there."""
    student, teacher = (gpu_figures[f"latency_{m}_batch1_ms"] for m in ("student", "teacher"))
    figures = f"({student:.2f} vs {teacher:.2f} ms on an H200, JAX)"
    if teacher / student < 1.2:
        return (f"On a GPU at batch 1 it is no faster {figures}: both are bound by "
                f"launching work, not by arithmetic.")
    return f"On a GPU at batch 1 it is {teacher / student:.1f}× faster {figures}."


def runs_table(metrics):
    by = groups(metrics)
    lines = ["| model | trained with | seeds | mIoU5 | mIoU6 | pixel accuracy |",
             "|---|---|---|---|---|---|"]
    for model in NAMES:
        if model not in by:
            continue
        entries = [by[model][s] for s in sorted(by[model])]
        lines.append(
            f"| {NAMES[model]} (`{model}`) | {trained_with(by, model)} "
            f"| {', '.join(str(e['seed']) for e in entries)} "
            f"| {mean_sd(e['miou5'] for e in entries)} | {mean_sd(e['miou6'] for e in entries)} "
            f"| {mean_sd(e['pixel_acc'] for e in entries)} |")
    unnamed = sorted(set(by) - set(NAMES))
    if unnamed:
        raise SystemExit(f"metrics.json has models the pages do not name: {unnamed}; add "
                         f"them to NAMES in scripts/report.py")
    return "\n".join(lines)


def paired_table(metrics):
    by = groups(metrics)
    models = [m for m in NAMES
              if m.startswith("student_distilled") and m in by and m not in WHERE_KD_PAYS]
    lines = ["| seed | " + " | ".join(["scratch"] + [NAMES[m] for m in models]) + " |",
             "|---" * (len(models) + 2) + "|"]
    for seed in sorted(by[SCRATCH]):
        cells = [f"{by[SCRATCH][seed]['miou5']:.3f}"]
        for model in models:
            entry = by[model].get(seed)
            change = None if entry is None else aerialkd.format_number(
                entry["miou5"] - by[SCRATCH][seed]["miou5"], signed=True)
            cells.append("" if entry is None else f"{entry['miou5']:.3f} ({change})")
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    gains = paired(metrics, DISTILLED)
    lines.append("| mean ± sd | " + mean_sd(e["miou5"] for e in by[SCRATCH].values()) + " | "
                 + f"{mean_sd(e['miou5'] for e in by[DISTILLED].values())} "
                   f"({mean_sd(gains.values(), signed=True)})"
                 + " |" * (len(models) - 1) + " |")
    return "\n".join(lines)


def few_labels_table(metrics):
    """Test mIoU5 of the few-labels arms, each student paired by seed with the scratch one.

    The ceiling is the all-labels scratch student trained where the arms were (`ceiling`).
    """
    by = groups(metrics)
    lines = ["| model | labelled images | images seen | seeds | mIoU5 | minus scratch on the "
             "12, paired by seed | trained with |", "|---|---|---|---|---|---|---|"]
    for model, what, labelled, seen in FEW_LABELS:
        model = ceiling(by) if model == SCRATCH else model
        if model not in by:
            continue
        entries = [by[model][s] for s in sorted(by[model])]
        change = ("" if model in ("student_scratch_l12", "teacher_l12") else  # no student pair
                  mean_sd(paired(metrics, model, baseline="student_scratch_l12").values(),
                          signed=True))
        lines.append(f"| {what} (`{model}`) | {labelled} | {seen} | {len(entries)} | "
                     f"{mean_sd(e['miou5'] for e in entries)} | {change} | "
                     f"{trained_with(by, model)} |")
    return "\n".join(lines)


def width_table(metrics, sizes):
    """Test mIoU5 by base width, from scratch and distilled, paired by seed.

    `sizes` maps a width to `(parameters, GFLOPs)`, e.g. `unet_size`'s. Each row says
    where its runs were trained: a row's pair shares a backend and machine, rows may not.
    """
    by = groups(metrics)
    params, gflops = sizes[16]
    lines = ["| base width | parameters | GFLOPs | from scratch | distilled | distilled minus "
             "scratch, paired by seed | seeds | trained with |",
             "|---|---|---|---|---|---|---|---|",
             f"| 16 (teacher) | {params / 1e6:.2f} M | {gflops:.2f} | "
             f"{mean_sd(e['miou5'] for e in by['teacher'].values())} | | | "
             f"{len(by['teacher'])} | {trained_with(by, 'teacher')} |"]
    for width, (scratch, distilled) in WIDTHS.items():
        if scratch not in by or distilled not in by:
            continue
        gains = paired(metrics, distilled, baseline=scratch)
        params, gflops = sizes[width]
        lines.append(
            f"| {width} | {params / 1e6:.2f} M | {gflops:.2f} | "
            f"{mean_sd(e['miou5'] for e in by[scratch].values())} | "
            f"{mean_sd(e['miou5'] for e in by[distilled].values())} | "
            f"{mean_sd(gains.values(), signed=True)} | {len(gains)} | "
            f"{' / '.join(dict.fromkeys(trained_with(by, m) for m in (scratch, distilled)))} |")
    return "\n".join(lines)


NOT_YET = "No run of this part is published yet."


def few_labels_block(metrics):
    """`few_labels_table`, once the few-labels part (and its baseline) is published."""
    return few_labels_table(metrics) if "student_scratch_l12" in groups(metrics) else NOT_YET


def widths_block(metrics, sizes):
    """`width_table`, once a thinner student's runs are published."""
    published = {w for w, pair in WIDTHS.items() if w != 8 and set(pair) <= set(groups(metrics))}
    return width_table(metrics, sizes) if published else NOT_YET


#: The first line of the README's verdict on issue #35's parts.
WHERE_KD_PAYS_INTRO = ("Where distillation is expected to pay more, measured with the same "
                       "recipe (notebook `08_where_kd_pays`):")


def where_kd_pays(metrics, sizes):
    """The README's verdict on the parts of issue #35 published so far (none: empty).

    A paired change is called real by `aerialkd.describe_change`'s rule: a paired
    t-test over the seeds at the 5% level.
    """
    by, parts = groups(metrics), []
    gains = []  # (what, its seed_summary row against scratch) of each distilled student

    def rows(models, baseline):
        return {row["model"]: row for row in aerialkd.seed_summary(metrics, models, baseline)}

    if {"student_scratch_l12", "student_distilled_l12"} <= set(by):
        top = ceiling(by)
        few = rows([top, "student_scratch_l12", "student_distilled_l12",
                    "student_distilled_t12", "student_pseudo_t12"], "student_scratch_l12")
        students = [m for m in few if m != top]
        text = (f"**With a quarter of the labels** (12 of the 48 training images labelled; "
                f"test mIoU5, paired by seed"
                f"{machine(*(trained_with(by, m) for m in students))}), the student from "
                f"scratch on the 12 scores {mean_sd(miou5(by, 'student_scratch_l12'))}, "
                f"against {mean_sd(miou5(by, top))} with every label. "
                f"Distilled from the teacher on all 48 images (the 36 without labels teach "
                f"through the KD term alone), it changes by "
                f"{aerialkd.describe_change(few['student_distilled_l12'])}")
        if "student_distilled_t12" in few:
            text += (f"; distilled from a teacher that had the same 12 labels only, by "
                     f"{aerialkd.describe_change(few['student_distilled_t12'])}")
        if {"student_distilled_t12", "student_pseudo_t12"} <= set(few):
            soft = rows(["student_distilled_t12"], "student_pseudo_t12")["student_distilled_t12"]
            text += (f". Trained instead on that teacher's predicted classes for the 36 "
                     f"(pseudo-labels, no KD term), it changes by "
                     f"{aerialkd.describe_change(few['student_pseudo_t12'])}; the teacher's "
                     f"soft targets against its hard labels: "
                     f"{aerialkd.describe_change(soft)}")
        parts.append(text + ".")
        gains += [(what, few[model]) for model, what in (
            ("student_distilled_l12", "with a quarter of the labels, from the teacher of all 48 "
                                      "images"),
            ("student_distilled_t12", "from a teacher of the same 12 labels")) if model in few]
    for width, (scratch, distilled) in WIDTHS.items():
        if width == 8 or not {scratch, distilled} <= set(by):
            continue
        row = rows([scratch, distilled], scratch)[distilled]
        params, gflops = sizes[width]
        parts.append(
            f"**At base width {width}** ({params / 1e6:.2f} M parameters, {gflops:.2f} GFLOPs; "
            f"all labels{machine(trained_with(by, scratch), trained_with(by, distilled))}): "
            f"from scratch {mean_sd(miou5(by, scratch))}, "
            f"distilled {mean_sd(miou5(by, distilled))} test mIoU5; distilled "
            f"minus scratch, paired by seed: {aerialkd.describe_change(row)}; seed by seed: "
            f"{by_seed(paired(metrics, distilled, scratch))}.")
        gains.append((f"at base width {width}", row))
    if not parts:
        return ""
    return "\n\n".join([WHERE_KD_PAYS_INTRO] + parts + [in_short(gains)])


def in_short(distilled):
    """The verdict's last line: where distillation paid, from `(what, row)` of each
    distilled student against scratch (`real_gain`), and where it did not."""
    paid = [f"{what} ({aerialkd.format_number(row['change'], signed=True)}, "
            f"{aerialkd.format_p_value(aerialkd.paired_t_test(row))})"
            for what, row in distilled if real_gain(row)]
    unpaid = [what for what, row in distilled if not real_gain(row)]
    if not paid:
        return ("**In short:** no distilled student's gain above is called real: distillation "
                "has not been shown to pay in these regimes.")
    return (f"**In short:** distillation paid {' and '.join(paid)}"
            + (f"; it did not (no gain called real) {', or '.join(unpaid)}" if unpaid else "")
            + ".")


#: The models `scripts/export.py` exports: the teacher and the seed-0 run of each student.
EXPORTED = {"teacher": ("teacher", "teacher"),
            "student_scratch": ("student_scratch_s0", "student from scratch"),
            "student_distilled": ("student_distilled_s0", "distilled student")}


def exported_label(model, metrics):
    """'distilled student (TensorFlow, seed 0)': the exported run's backend, from `metrics`."""
    run, label = EXPORTED[model]
    if model == "teacher":
        return label
    entry = next(e for e in metrics if e["run"] == run)
    return f"{label} ({backend_name(entry)}, seed {entry['seed']})"


def export_table(export, metrics):
    lines = [f"LiteRT exports, {export['split']} split, latency at batch 1 on "
             f"{export['device']} ({export['date']}, the formats of a model interleaved):",
             "",
             "| model | format | file (MB) | latency (ms) | mIoU5 | minus Keras |",
             "|---|---|---|---|---|---|"]
    keras_miou = {r["model"]: r["miou5"] for r in export["rows"] if r["format"] == "keras"}
    for row in export["rows"]:
        # of the unrounded scores, as every page gives a change (+ 0.0: never -0.0000)
        change = aerialkd.format_number(row["miou5"] - keras_miou[row["model"]], 4, signed=True)
        lines.append(f"| {exported_label(row['model'], metrics)} | {row['format']} | "
                     f"{row['size_mb']:.2f} | {row['latency_ms']:.1f} | {row['miou5']:.4f} | "
                     f"{change} |")
    return "\n".join(lines)


def check_seeds(metrics):
    """Refuses a student of `scripts/where_kd_pays.py` in `metrics` with fewer than 3 seeds.

    Its `--publish` adds a part only once all its seeds are scored; a part merged
    by hand with fewer would be called real or not on too few pairs.
    """
    by = groups(metrics)
    short = {m: sorted(by[m]) for m in sorted(WHERE_KD_PAYS - {"teacher_l12"})
             if m in by and len(by[m]) < 3}
    if short:
        raise SystemExit(f"metrics.json has students of scripts/where_kd_pays.py with fewer "
                         f"than three seeds: {short}. Publish a part with its --publish once "
                         f"its three seeds are scored.")


def blocks():
    metrics, sizes = load("results/metrics.json"), model_sizes()
    check_seeds(metrics)
    return {
        "headline": headline(metrics, load("benchmarks/cpu_2core.json"),
                             load("benchmarks/h200_jax.json"),
                             load("results/teacher_analysis.json"), sizes),
        "runs": runs_table(metrics),
        "paired": paired_table(metrics),
        "export": export_table(load("results/export.json"), metrics),
        "few_labels": few_labels_block(metrics),
        "widths": widths_block(metrics, sizes),
        "where_kd_pays": where_kd_pays(metrics, sizes),
    }


def render(text, name, block):
    pattern = re.compile(rf"(<!-- report:{name} -->\n)(?:.*?\n)?(<!-- /report:{name} -->)",
                         re.S)
    if not pattern.search(text):
        raise SystemExit(f"no <!-- report:{name} --> ... <!-- /report:{name} --> block")
    return pattern.sub(lambda m: m.group(1) + block + "\n" + m.group(2), text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if a page differs from what this script writes")
    args = parser.parse_args(argv)
    generated, stale = blocks(), []
    for page, names in PAGES.items():
        path = REPO / page
        text = path.read_text()
        new = text
        for name in names:
            new = render(new, name, generated[name])
        if new != text:
            stale.append(page)
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print(f"Out of date: {', '.join(stale)}. Run python scripts/report.py.")
        return 1
    print("Rewrote " + ", ".join(stale) if stale else "Every page is up to date.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
