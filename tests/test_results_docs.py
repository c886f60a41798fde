"""The pages tell the numbers the committed JSON holds, and the requirements suit Colab."""

import datetime
import json
import pathlib
import re

import pytest

import aerialkd

import report

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_the_generated_blocks_of_the_pages_are_up_to_date(capsys):
    assert report.main(["--check"]) == 0, capsys.readouterr().out


def test_a_changed_score_makes_the_check_fail(monkeypatch, capsys):
    original = report.load

    def load(path):
        data = original(path)
        if path == "results/metrics.json":
            data[0] = {**data[0], "miou5": data[0]["miou5"] + 0.01}
        return data

    monkeypatch.setattr(report, "load", load)
    assert report.main(["--check"]) == 1
    assert "README.md" in capsys.readouterr().out


def _minutes_rendered(notebook):
    """Minutes from the first cell's start to the last cell's end in a rendered notebook."""
    stamps = [datetime.datetime.fromisoformat(times[key].replace("Z", "+00:00"))
              for cell in json.loads(notebook.read_text())["cells"]
              for times in [cell.get("metadata", {}).get("execution", {})]
              for key in ("iopub.execute_input", "shell.execute_reply") if key in times]
    return (max(stamps) - min(stamps)).total_seconds() / 60


def test_the_readme_gives_each_notebook_the_time_its_rendered_run_took():
    rows = re.findall(r"^\| `(\d\d_\w+)` .*\| ([^|]*) \|$", (REPO / "README.md").read_text(),
                      re.M)
    assert sorted(stem for stem, _ in rows) == sorted(
        path.stem for path in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    for stem, time in rows:
        said = re.search(r"(\d+(?:\.\d+)?) min", time)  # the loading time, or the whole run
        took = _minutes_rendered(REPO / "notebooks" / f"{stem}.ipynb")
        assert said and round(float(said.group(1))) == round(took), (stem, time, took)


def _requirements(name):
    lines = (REPO / name).read_text().splitlines()
    return {re.split(r"[<>=\[ ;]", line.strip())[0].lower()
            for line in lines if line.strip() and not line.startswith(("#", "-"))}


@pytest.mark.parametrize("package", ["ipykernel", "ipython", "jupyter-client", "jupyter-core",
                                     "jupyter-server", "notebook", "tornado", "pyzmq",
                                     "nbformat", "nbclient", "nbconvert", "pytest", "nbmake"])
def test_the_runtime_requirements_leave_colabs_kernel_and_test_tools_alone(package):
    assert package not in _requirements("requirements.txt")


def test_the_test_tools_are_in_the_dev_requirements():
    assert {"pytest", "nbmake", "ipykernel", "nbconvert"} <= _requirements("requirements-dev.txt")


SIZES = {16: (1_941_190, 6.1), 8: (485_862, 1.54), 4: (121_638, 0.39), 2: (30_498, 0.1)}


def _entry(model, seed, miou5):
    return {"model": model, "run": f"{model}_s{seed}", "seed": seed, "miou5": miou5}


CPU = {"backend": "tensorflow", "device": "CPU (x86_64, 2 cores)"}
H200 = {"backend": "jax", "device": "NVIDIA H200"}


def test_the_few_labels_ceiling_is_the_scratch_student_trained_where_the_arms_were():
    both = [{**_entry("student_scratch_tf", s, 0.66), **CPU} for s in range(3)] + [
        {**_entry("student_scratch", s, 0.65), **H200} for s in range(3)]
    for machine, top in ((H200, "student_scratch"), (CPU, "student_scratch_tf")):
        metrics = both + [{**_entry("student_scratch_l12", s, 0.5), **machine} for s in range(3)]
        assert report.ceiling(report.groups(metrics)) == top
        ceiling_row = report.few_labels_table(metrics).splitlines()[2]
        assert f"(the ceiling) (`{top}`) | 48 | 48 | 3 |" in ceiling_row
        assert ceiling_row.endswith(f"| {report.where(machine)} |")
        assert f"against {0.65 if top == 'student_scratch' else 0.66:.3f} ± 0.000 with every" in (
            report.where_kd_pays(metrics + [{**_entry("student_distilled_l12", s, 0.55), **machine}
                                           for s in range(3)], SIZES))


def test_the_few_labels_table_pairs_each_student_with_the_scratch_one_by_seed():
    metrics = [_entry("student_scratch_tf", s, 0.66) for s in range(3)] + [
        _entry("teacher_l12", 0, 0.60)] + [
        _entry("student_scratch_l12", s, v) for s, v in enumerate((0.50, 0.52, 0.54))] + [
        _entry("student_distilled_l12", s, v) for s, v in enumerate((0.55, 0.55, 0.58))]
    table = report.few_labels_table(metrics).splitlines()
    assert len(table) == 6  # header, rule, four arms: the teacher of the 12's students are missing
    assert table[2].startswith("| student from scratch, all labels (the ceiling) "
                               "(`student_scratch_tf`) | 48 | 48 | 3 | 0.660 ± 0.000 | "
                               "+0.140 ± 0.020 |")  # 0.16, 0.14, 0.12
    assert table[3] == ("| teacher, from scratch on the 12 labelled images (`teacher_l12`) | "
                        "12 | 12 | 1 | 0.600 |  |  |")  # where: not recorded here
    assert table[4].endswith("| 12 | 12 | 3 | 0.520 ± 0.020 |  |  |")
    # paired: +0.05, +0.03, +0.04, mean +0.04, sample sd 0.01
    assert table[5].endswith("| 12 | 48 | 3 | 0.560 ± 0.017 | +0.040 ± 0.010 |  |")


def test_the_width_table_gives_sizes_and_the_paired_gain_of_each_width():
    metrics = [_entry("teacher", 0, 0.69)] + [
        _entry(model, s, v + (0.01 * s if "distilled" in model else 0))
        for model, v in (("student_scratch_tf", 0.66), ("student_distilled", 0.66),
                         ("student_scratch_w4", 0.62), ("student_distilled_w4", 0.63))
        for s in range(3)]
    sizes = {16: (1_941_190, 6.1), 8: (485_862, 1.54), 4: (121_638, 0.39), 2: (30_498, 0.1)}
    table = report.width_table(metrics, sizes).splitlines()
    assert table[2] == "| 16 (teacher) | 1.94 M | 6.10 | 0.690 | | | 1 |  |"
    assert table[3] == ("| 8 | 0.49 M | 1.54 | 0.660 ± 0.000 | 0.670 ± 0.010 | +0.010 ± 0.010 | "
                        "3 |  |")
    assert table[4] == ("| 4 | 0.12 M | 0.39 | 0.620 ± 0.000 | 0.640 ± 0.010 | +0.020 ± 0.010 | "
                        "3 |  |")
    assert len(table) == 5  # width 2 has no runs yet
    on = {"student_scratch_tf": CPU, "student_distilled": CPU, "teacher": H200,
          "student_scratch_w4": H200, "student_distilled_w4": H200}
    table = report.width_table([{**e, **on[e["model"]]} for e in metrics], sizes).splitlines()
    assert table[2].endswith("| 1 | JAX on an NVIDIA H200 |")
    assert table[3].endswith("| 3 | TensorFlow on a 2-core CPU |")
    assert table[4].endswith("| 3 | JAX on an NVIDIA H200 |")
    assert report.unet_size(2)[0] < report.unet_size(4)[0] < sizes[8][0] == report.unet_size(8)[0]


def test_the_readme_says_where_distillation_paid_once_a_part_is_published():
    sizes = {16: (1_941_190, 6.1), 8: (485_862, 1.54), 4: (121_638, 0.39), 2: (30_498, 0.1)}
    half_width = [_entry(m, s, 0.66) for m in ("student_scratch_tf", "student_distilled")
                  for s in range(3)] + [_entry("teacher", 0, 0.69)]
    assert report.where_kd_pays(half_width, sizes) == ""  # nothing of #35 published yet
    assert report.few_labels_block(half_width) == report.widths_block(half_width, sizes) == (
        report.NOT_YET)
    metrics = half_width + [
        _entry("student_scratch_l12", s, v) for s, v in enumerate((0.50, 0.52, 0.54))] + [
        _entry("student_distilled_l12", s, v) for s, v in enumerate((0.55, 0.55, 0.58))] + [
        _entry("student_scratch_w4", s, 0.62) for s in range(3)] + [
        _entry("student_distilled_w4", s, 0.62 + d) for s, d in enumerate((0.01, -0.01, 0.003))]
    intro, few, width, short = report.where_kd_pays(metrics, sizes).split("\n\n")
    assert intro == report.WHERE_KD_PAYS_INTRO
    # paired +0.05, +0.03, +0.04: mean 0.04, sd 0.01, t = 6.93 with 2 degrees of freedom
    assert "from scratch on the 12 scores 0.520 ± 0.020, against 0.660 ± 0.000 with" in few
    assert few.endswith("it changes by +0.040 ± 0.010 over 3 seeds, real (paired t-test, "
                        "p = 0.020).")
    assert "teacher that had the same 12" not in few  # that arm is not published
    # paired +0.01, -0.01, +0.003: mean 0.001, sd 0.010
    assert width.startswith("**At base width 4** (0.12 M parameters, 0.39 GFLOPs; all labels): "
                            "from scratch 0.620 ± 0.000, distilled 0.621 ± 0.010 test mIoU5; "
                            "distilled minus scratch, paired by seed: +0.001 ± 0.010 over 3 "
                            "seeds, within the spread of the seeds (paired t-test")
    assert width.endswith("; seed by seed: +0.010 (seed 0), -0.010 (seed 1), +0.003 (seed 2).")
    assert short == ("**In short:** distillation paid with a quarter of the labels, from the "
                     "teacher of all 48 images (+0.040, p = 0.020); it did not (no gain called "
                     "real) at base width 4.")
    none_real = [e for e in metrics if e["model"] != "student_distilled_l12"] + [
        _entry("student_distilled_l12", s, v) for s, v in enumerate((0.60, 0.50, 0.56))]
    assert report.where_kd_pays(none_real, sizes).endswith(
        "**In short:** no distilled student's gain above is called real: distillation has not "
        "been shown to pay in these regimes.")
    cpu = "TensorFlow on a 2-core CPU"
    assert report.machine(cpu, cpu) == "; trained with TensorFlow on a 2-core CPU"
    assert report.machine(cpu, "JAX on an NVIDIA H200") == report.machine(cpu, "") == ""
    assert report.widths_block(metrics, sizes).startswith("| base width |")
    more = metrics + [
        _entry("student_distilled_t12", s, v) for s, v in enumerate((0.56, 0.55, 0.60))] + [
        _entry("student_pseudo_t12", s, v) for s, v in enumerate((0.53, 0.54, 0.55))]
    few = report.where_kd_pays(more, sizes).split("\n\n")[1]
    # t12 minus scratch +0.06, +0.03, +0.06; pseudo minus scratch +0.03, +0.02, +0.01 (t = 3.46,
    # p = 1 - t / sqrt(2 + t^2) = 0.074); t12 minus pseudo +0.03, +0.01, +0.05 (p = 0.122)
    assert "teacher that had the same 12 labels only, by +0.050 ± 0.017 over 3 seeds" in few
    assert ("(pseudo-labels, no KD term), it changes by +0.020 ± 0.010 over 3 seeds, within the "
            "spread of the seeds (paired t-test, p = 0.074)" in few)
    assert few.endswith("soft targets against its hard labels: +0.030 ± 0.020 over 3 seeds, "
                        "within the spread of the seeds (paired t-test, p = 0.122).")


def test_the_runs_of_issue_35_are_named_and_kept_out_of_the_half_width_pairing():
    models = ("student_scratch_l12", "student_distilled_l12", "student_distilled_w4")
    committed = [entry for entry in report.load("results/metrics.json")
                 if entry["model"] not in models]  # those published replaced by made-up ones
    added = [{**_entry(model, s, 0.5), "miou6": 0.4, "pixel_acc": 0.8, "backend": "tensorflow",
              "device": "CPU (x86_64, 2 cores)"}
             for model in models for s in range(3)]
    runs = report.runs_table(committed + added)
    assert ("| student with 12 labelled images, distilled from the teacher "
            "(`student_distilled_l12`) | TensorFlow on a 2-core CPU | 0, 1, 2 | 0.500 ± 0.000 |"
            in runs)
    assert report.paired_table(committed + added) == report.paired_table(committed)
    assert report.WHERE_KD_PAYS == {"teacher_l12", "student_scratch_l12", "student_distilled_l12",
                                    "student_distilled_t12", "student_pseudo_t12",
                                    "student_scratch_w4",
                                    "student_distilled_w4", "student_scratch_w2",
                                    "student_distilled_w2"}


def test_where_names_the_backend_and_the_machine_a_run_recorded():
    assert report.where(CPU) == "TensorFlow on a 2-core CPU"
    assert report.where(H200) == "JAX on an NVIDIA H200"
    assert report.where({"backend": "tensorflow", "device": "CPU (x86_64, 16 cores)"}) == (
        "TensorFlow on a 16-core CPU")
    assert report.where({"backend": "jax", "device": "NVIDIA H100 80GB HBM3"}) == (
        "JAX on an NVIDIA H100 80GB HBM3")
    assert report.where({"backend": "tensorflow", "device": "Tesla T4, Tesla T4"}) == (
        "TensorFlow on 2 × Tesla T4")
    assert report.where({"backend": "tensorflow", "device": "CPU (x86_64, 8 cores)"}) == (
        "TensorFlow on an 8-core CPU")


def test_the_export_table_names_each_students_backend_and_seed_from_its_run():
    metrics = [{**_entry("student_scratch", 0, 0.68), **H200},
               {**_entry("student_distilled", 0, 0.66), **CPU}]
    rows = [{"model": model, "format": "keras", "size_mb": 2.0, "latency_ms": 20.0,
             "miou5": 0.6, "pixel_acc": 0.8}
            for model in ("teacher", "student_scratch", "student_distilled")]
    table = report.export_table({"split": "test", "device": "a CPU", "date": "today",
                                 "rows": rows}, metrics)
    assert "| teacher | keras |" in table
    assert "| student from scratch (JAX, seed 0) | keras |" in table
    assert "| distilled student (TensorFlow, seed 0) | keras |" in table


def test_article_goes_by_how_the_name_is_read_aloud():
    names = {"8": "an", "18": "an", "80": "an", "2": "a", "16": "a", "NVIDIA A100": "an",
             "H100": "an", "TPU v4": "a", "Tesla T4": "a", "Intel Xeon": "an", "AMD EPYC": "an"}
    assert {name: report.article(name) for name in names} == names


def test_a_where_kd_pays_student_with_fewer_than_three_seeds_is_refused():
    metrics = [_entry("student_scratch_w4", s, 0.62) for s in range(3)] + [
        _entry("student_distilled_w4", s, 0.63) for s in range(2)] + [_entry("teacher_l12", 0, 0.6)]
    with pytest.raises(SystemExit, match=r"fewer than three seeds: \{'student_distilled_w4': \[0, 1\]\}"):
        report.check_seeds(metrics)
    report.check_seeds(metrics + [_entry("student_distilled_w4", 2, 0.63)])  # the teacher: one


def _verdict(gains):
    """`report.distillation_verdict` of distilled students `gains` above scratch ones."""
    metrics = [_entry(report.SCRATCH, s, 0.6) for s in range(len(gains))] + [
        _entry(report.DISTILLED, s, 0.6 + gain) for s, gain in enumerate(gains)]
    return report.distillation_verdict(
        aerialkd.seed_summary(metrics, [report.DISTILLED], report.SCRATCH)[0])


def test_the_headline_verdict_follows_the_paired_gains_and_the_gpu_figures():
    assert _verdict([0.005, 0.014, -0.005]) == (
        "Distillation did not pay here: paired by seed, the distilled students are level "
        "with students trained from scratch (+0.005 ± 0.010, against a target of +0.03).",
        False)
    sentence, paid = _verdict([0.055, 0.064, 0.045])
    assert paid and sentence.endswith("(+0.055 ± 0.010, p = 0.010), reaching the target of "
                                      "+0.03.")
    sentence, paid = _verdict([0.012, 0.011, 0.010])
    assert paid and "short of the target" in sentence
    sentence, paid = _verdict([-0.055, -0.064, -0.045])
    assert not paid and sentence.startswith("Distillation cost accuracy here")
    assert report.gpu_sentence({"latency_student_batch1_ms": 2.49,
                                "latency_teacher_batch1_ms": 2.49}).startswith(
        "On a GPU at batch 1 it is no faster (2.49 vs 2.49 ms")
    assert report.gpu_sentence({"latency_student_batch1_ms": 1.0,
                                "latency_teacher_batch1_ms": 2.5}) == (
        "On a GPU at batch 1 it is 2.5× faster (1.00 vs 2.50 ms on an H200, JAX).")
