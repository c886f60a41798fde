"""Tests of scripts/where_kd_pays.py: the runs of each part (the label subset and its
datasets are aerialkd.few_labels', tested in test_few_labels.py)."""

import pytest

import utils
import where_kd_pays


@pytest.fixture(scope="module")
def chosen(tiny_data):
    return utils.label_subset(tiny_data)


def test_runs_of_each_part_in_training_order(tiny_data, chosen, tmp_path):
    profile = utils.load_profile("tiny", output_dir=tmp_path)
    labels = where_kd_pays.runs_of("labels", tiny_data, chosen, profile)
    assert [run for run, *_ in labels[:4]] == [
        "student_scratch_l12_s0", "student_distilled_l12_s0", "teacher_l12",
        "student_distilled_t12_s0"]
    assert len(labels) == 10 and labels[-1][0] == "student_distilled_t12_s2"
    settings = {run: s for run, _, _, s in labels}
    datasets = {run: d for run, _, d, _ in labels}
    assert len(datasets["student_scratch_l12_s0"].x_train) == 100  # the 4 labelled images
    masked = datasets["student_distilled_t12_s0"]
    assert len(masked.x_train) == 420 and (masked.y_train == utils.IGNORE_INDEX).all(
        axis=(1, 2)).sum() == 320  # the 14 others' patches, unannotated
    epochs = utils.matched_epochs(profile.epochs, 100, 420, profile.batch_size)
    assert settings["student_scratch_l12_s1"]["epochs"] == settings["teacher_l12"]["epochs"] == epochs
    assert "epochs" not in settings["student_distilled_l12_s1"]  # the profile's, on all images
    assert settings["student_distilled_t12_s2"]["teacher"] == "teacher_l12"
    assert settings["student_distilled_l12_s2"]["teacher"] == "teacher"
    width = where_kd_pays.runs_of("width4", tiny_data, chosen, profile)
    assert [(run, s["seed"], s["record"]) for run, _, _, s in width[:2]] == [
        ("student_scratch_w4_s0", 0, {"width": 4}), ("student_distilled_w4_s0", 0, {"width": 4})]
    assert width[0][3]["build"]().count_params() < utils.build_student().count_params() / 3
