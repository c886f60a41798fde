"""Tests of scripts/where_kd_pays.py: the label subset, its datasets, the step budget, the runs.

The tiny dataset has 18 training images in three tiles, of 16, 30 and 24 patches of
32x32 each (420 patches): a quarter of them is 105 patches and a quarter of the images
rounds to 4.
"""

import collections
import dataclasses

import numpy as np
import pytest

import utils
import where_kd_pays


@pytest.fixture(scope="module")
def chosen(tiny_data):
    return where_kd_pays.label_subset(tiny_data)


def test_label_subset_takes_one_image_per_tile_and_a_second_where_it_comes_closest(
        tiny_data, chosen):
    tiles = collections.Counter(name.split("/")[0] for name in chosen)
    # one per tile is 16 + 30 + 24 = 70 patches; a second from Tile 1, 2 or 3 makes
    # 86, 100 or 94, and 100 is the closest to 105
    assert tiles == {"Tile 1": 1, "Tile 2": 2, "Tile 3": 1}
    assert where_kd_pays.labelled_mask(tiny_data, chosen).sum() == 100
    assert chosen == [n for n in tiny_data.sources["train"] if n in chosen]  # the data's order
    assert where_kd_pays.label_subset(tiny_data) == chosen  # fixed by the seed
    two = where_kd_pays.label_subset(tiny_data, n_images=2)  # fewer images than tiles
    assert [n.split("/")[0] for n in two] == ["Tile 1", "Tile 2"] and set(two) <= set(chosen)


def test_label_subset_of_a_flat_folder_draws_images_with_the_seed(tiny_data):
    flat = dataclasses.replace(tiny_data, sources={
        **tiny_data.sources, "train": [n.replace("/", "_") for n in tiny_data.sources["train"]]})
    picks = [where_kd_pays.label_subset(flat, n_images=5, seed=s) for s in (0, 0, 1)]
    assert len(picks[0]) == 5 and picks[0] == picks[1] != picks[2]


def test_the_datasets_of_the_few_labels_arms(tiny_data, chosen):
    keep = where_kd_pays.labelled_mask(tiny_data, chosen)
    few = where_kd_pays.only_labelled(tiny_data, chosen)
    assert few.sources["train"] == chosen and len(few.files["train"]) == len(chosen)
    np.testing.assert_array_equal(few.x_train, tiny_data.x_train[keep])
    np.testing.assert_array_equal(few.y_train, tiny_data.y_train[keep])
    assert where_kd_pays.labelled_mask(few, chosen).all()  # its images still match its patches
    masked = where_kd_pays.unlabelled_elsewhere(tiny_data, chosen)
    assert masked.x_train is tiny_data.x_train  # every image, for the KD term
    np.testing.assert_array_equal(masked.y_train[keep], tiny_data.y_train[keep])
    assert (masked.y_train[~keep] == utils.IGNORE_INDEX).all()
    assert (tiny_data.y_train[~keep] != utils.IGNORE_INDEX).any()  # the original is untouched
    with pytest.raises(ValueError, match="do not match the training images"):
        where_kd_pays.labelled_mask(dataclasses.replace(tiny_data, x_train=tiny_data.x_train[1:]),
                                    chosen)


def test_matched_epochs_give_the_steps_of_the_full_run(tmp_path):
    profile = utils.load_profile("full", output_dir=tmp_path)
    assert (profile.epochs, profile.batch_size) == (100, 16)
    # the real data's 218 labelled of 870 training patches: 14 steps an epoch against 55
    assert where_kd_pays.matched_epochs(profile, 218, 870) == 393  # 100 * 55 / 14 = 392.9
    assert where_kd_pays.matched_epochs(profile, 870, 870) == 100


def test_runs_of_each_part_in_training_order(tiny_data, chosen, tmp_path):
    profile = utils.load_profile("tiny", output_dir=tmp_path)
    labels = where_kd_pays.runs_of("labels", tiny_data, chosen, profile)
    assert [run for run, *_ in labels[:4]] == [
        "student_scratch_l12_s0", "student_distilled_l12_s0", "teacher_l12",
        "student_distilled_t12_s0"]
    assert len(labels) == 10 and labels[-1][0] == "student_distilled_t12_s2"
    settings = {run: s for run, _, _, s in labels}
    epochs = where_kd_pays.matched_epochs(profile, 100, 420)
    assert settings["student_scratch_l12_s1"]["epochs"] == settings["teacher_l12"]["epochs"] == epochs
    assert "epochs" not in settings["student_distilled_l12_s1"]  # the profile's, on all images
    assert settings["student_distilled_t12_s2"]["teacher"] == "teacher_l12"
    assert settings["student_distilled_l12_s2"]["teacher"] == "teacher"
    width = where_kd_pays.runs_of("width4", tiny_data, chosen, profile)
    assert [(run, s["seed"], s["record"]) for run, _, _, s in width[:2]] == [
        ("student_scratch_w4_s0", 0, {"width": 4}), ("student_distilled_w4_s0", 0, {"width": 4})]
    assert width[0][3]["build"]().count_params() < utils.build_student().count_params() / 3
