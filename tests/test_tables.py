"""Tests of `aerialkd.tables`: column names, history rows, seeds, Markdown tables."""

import numpy as np
import pytest

import utils


def test_markdown_table_formats_numbers():
    table = utils.markdown_table([{"model": "teacher", "parameters": 1941190, "miou5": 0.71234}])
    assert table.splitlines()[0] == "| model | parameters | mIoU, 5 labelled classes |"
    assert table.splitlines()[2] == "| teacher | 1,941,190 | 0.712 |"


def test_markdown_table_marks_missing_cells_and_keeps_unnamed_columns():
    table = utils.markdown_table([{"run": "a", "x": 0.5}, {"run": "b", "x": None}], digits=1)
    assert table.splitlines() == ["| run | x |", "|---|---|", "| a | 0.5 |", "| b | — |"]


def test_history_rows_show_every_tenth_epoch_the_last_and_the_best():
    history = {"loss": [1.0 - 0.01 * i for i in range(25)],
               "val_miou5": [0.5] * 25, "lr": [1e-3] * 25}
    history["val_miou5"][13] = 0.9  # epoch 14
    rows = utils.history_rows(history)
    assert [row["epoch"] for row in rows] == [1, 10, "14 (best)", 20, 25]
    assert rows[-1] == {"epoch": 25, "loss": 0.76, "val_miou5": 0.5}  # `keys` only


def test_history_rows_mark_the_epoch_the_checkpoint_keeps_skipping_non_finite_ones():
    nan = float("nan")
    history = {"loss": [1.0, nan, 0.5, 0.4], "val_miou5": [0.2, 0.6, 0.4, nan]}
    assert [row["epoch"] for row in utils.history_rows(history)] == [1, "3 (best)", 4]
    broken = {"loss": [nan, nan], "val_miou5": [0.3, 0.4]}  # nothing saved: nothing marked
    assert [row["epoch"] for row in utils.history_rows(broken)] == [1, 2]


def test_seed_summary_pairs_each_model_with_the_baseline_of_the_same_seed():
    runs = [{"model": "scratch", "seed": s, "miou5": v}
            for s, v in ((0, 0.60), (1, 0.64), (2, 0.62))]
    runs += [{"model": "kd", "seed": s, "miou5": v} for s, v in ((0, 0.65), (2, 0.63), (5, 0.9))]
    runs += [{"model": "teacher", "seed": 0, "miou5": 0.70}]
    rows = utils.seed_summary(runs, models=["teacher", "kd", "absent"], baseline="scratch")
    assert [r["model"] for r in rows] == ["teacher", "kd"]  # the order asked, "absent" left out
    teacher, kd = rows
    assert teacher["seeds"] == 1 and teacher["sd"] is None
    assert teacher["change"] == pytest.approx(0.10)
    assert teacher["change sd"] is None and teacher["paired seeds"] == 1
    # kd has seeds 0, 2 and 5; the baseline 0 and 2: differences 0.05 and 0.01
    assert kd["seeds"] == 3 and kd["mean"] == pytest.approx((0.65 + 0.63 + 0.9) / 3)
    assert kd["paired seeds"] == 2 and kd["change"] == pytest.approx(0.03)
    assert kd["change sd"] == pytest.approx(0.02 * 2 ** 0.5)  # sample sd of 0.05, 0.01
    assert "change" not in utils.seed_summary(runs)[0]  # no baseline, no change columns


def test_paired_differences_pair_runs_by_seed():
    entries = [{"model": "student_scratch", "seed": 0, "miou5": 0.68},
               {"model": "student_scratch", "seed": 1, "miou5": 0.66},
               {"model": "student_scratch", "seed": 2, "miou5": 0.63},
               {"model": "student_distilled", "seed": 1, "miou5": 0.70},
               {"model": "student_distilled", "seed": 0, "miou5": 0.66}]
    pairs = utils.paired_differences(entries, "student_distilled", "student_scratch")
    assert list(pairs) == [0, 1]  # in seed order; seed 2 has no distilled run
    assert list(pairs.values()) == pytest.approx([-0.02, 0.04])
    assert utils.paired_differences(entries[2:4], "student_distilled", "student_scratch") == {}
    assert utils.paired_differences(entries, "student_distilled", "teacher") == {}
    with pytest.raises(ValueError, match="'student_scratch' has two entries for seed 1"):
        utils.paired_differences(entries + entries[1:2], "student_distilled", "student_scratch")


def test_format_mean_sd_shows_the_sample_sd_and_a_lone_value_alone():
    assert utils.format_mean_sd([-0.02, 0.04], signed=True) == "+0.010 ± 0.042"  # 0.06 / sqrt 2
    assert utils.format_mean_sd([0.6931]) == "0.693"
    assert utils.format_mean_sd([0.5, 0.6, 0.7], digits=2) == "0.60 ± 0.10"
    assert utils.format_mean_sd([]) == ""
    assert utils.format_mean_sd([-0.0001, 0.0], signed=True) == "+0.000 ± 0.000"  # not "-0.000"


def test_describe_change_calls_a_change_real_by_a_paired_t_test():
    # with two degrees of freedom the two-sided p of t is 1 - |t| / sqrt(t^2 + 2):
    # t = 0.04 / (0.01 / sqrt 3) = 6.93, p = 0.0202; t = 0.005 / (0.01 / sqrt 3) = 0.866, p = 0.478
    assert utils.describe_change({"change": 0.04, "change sd": 0.01, "paired seeds": 3}) == (
        "+0.040 ± 0.010 over 3 seeds, real (paired t-test, p = 0.020)")
    assert utils.describe_change({"change": -0.005, "change sd": 0.01, "paired seeds": 3}) == (
        "-0.005 ± 0.010 over 3 seeds, within the spread of the seeds (paired t-test, p = 0.478)")
    # twice the standard error is not enough with three seeds: t = 2.5, p = 0.13
    assert "within the spread" in utils.describe_change(
        {"change": 0.025, "change sd": 0.01 * 3 ** 0.5, "paired seeds": 3})
    assert utils.describe_change({"change": 0.02, "change sd": 0.0, "paired seeds": 3}).endswith(
        "real (paired t-test, p < 0.001)")  # the same change on every seed
    assert utils.describe_change({"change": -1e-5, "change sd": None, "paired seeds": 1}) == (
        "+0.000 (one seed)")  # never "-0.000"
    row = utils.seed_summary([{"model": "a", "seed": 0, "miou5": 0.5}], baseline="b")[0]
    assert utils.describe_change(row) == "no paired run" and utils.paired_t_test(row) is None
    # 1 - t / sqrt(t^2 + 2) with t = 0.04 / (0.01 / sqrt 3)
    t = 0.04 / (0.01 / 3 ** 0.5)
    assert utils.paired_t_test({"change": -0.04, "change sd": 0.01, "paired seeds": 3}) == (
        pytest.approx(1 - t / (t * t + 2) ** 0.5))


def test_markdown_table_formats_numpy_numbers_and_shows_booleans_as_such():
    row = {"a": np.float32(0.123456), "b": np.int64(1234567), "c": True, "d": np.bool_(False)}
    assert utils.markdown_table([row]).splitlines()[2] == "| 0.123 | 1,234,567 | True | False |"


def test_describe_change_calls_no_verdict_on_a_nan_change():
    row = {"change": float("nan"), "change sd": float("nan"), "paired seeds": 3}
    assert utils.describe_change(row) == "undefined (a score is NaN)"


def test_history_rows_refuse_an_interval_of_zero():
    with pytest.raises(ValueError, match="every must be an int >= 1, got 0"):  # range()'s
        utils.history_rows({"loss": [1.0]}, every=0)


def test_tables_never_show_a_negative_zero():
    # two equal scores' difference is -1e-9 as often as +1e-9 (LiteRT float32 minus Keras)
    assert utils.markdown_table([{"change": -4e-5}], digits=4).endswith("| 0.0000 |")
    assert utils.describe_change({"change": -1e-9, "change sd": 0.01, "paired seeds": 3}
                                 ).startswith("+0.000 ± 0.010")
