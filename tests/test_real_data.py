"""Tests on the real Dubai dataset; skipped when ../shared/data is absent."""

import numpy as np
import pytest

import utils

pytestmark = [pytest.mark.integration,
              pytest.mark.xdist_group("real_data")]  # one worker loads the data, once


@pytest.fixture(scope="module")
def real_data(real_root):
    return utils.load_dataset(real_root, patch_size=256)


def test_real_data_gives_1305_patches_at_256(real_data):
    n = len(real_data.x_train) + len(real_data.x_val) + len(real_data.x_test)
    assert n == 1305
    assert len(real_data.x_test) == 290  # image_part_008 and _009 of every tile


def test_real_data_reports_the_colours_it_met(real_data):
    palette = {utils.rgb_to_hex(c) for c in utils.PALETTE}
    assert set(real_data.color_counts) == palette | {"#000000"}
    black = real_data.extra_color_sources["#000000"]
    assert black["Tile 8/image_part_003"] > 500_000
    assert sum(black.values()) == real_data.color_counts["#000000"]


def test_real_split_keeps_every_tile_in_every_split(real_data):
    for split in ("train", "val", "test"):
        tiles = {name.split("/")[0] for name in real_data.sources[split]}
        assert len(tiles) == 8, split
    assert np.isin(np.unique(real_data.y_test), [0, 1, 2, 3, 4, 5, 255]).all()


def test_committed_models_reproduce_their_recorded_test_scores(real_data):
    import json

    import keras

    results = utils.REPO_ROOT / "results"
    if not (results / "metrics.json").exists():
        pytest.skip("no committed results yet: scripts/experiment.py writes results/")
    models = results / "models"
    entries = {e["run"]: e for e in json.loads((results / "metrics.json").read_text())}
    checked = []
    for run, entry in entries.items():
        path = models / f"{run}.keras"
        if not path.exists():  # e.g. teacher_x8, the teacher's symmetry ensemble
            continue
        model = keras.models.load_model(path)
        logits = utils.predict_logits(model, real_data.x_test, 16)
        scores = utils.iou_scores(real_data.y_test, logits.argmax(-1), n_classes=6,
                                  labelled_classes=real_data.labelled_classes)
        assert scores["miou5"] == pytest.approx(entry["miou5"], abs=0.01), run
        checked.append(run)
    assert "teacher" in checked
    assert {"student_scratch_s0", "student_distilled_s0"} <= set(checked)


def test_the_published_label_subset_is_the_one_label_subset_picks(real_data):
    import json

    results = utils.REPO_ROOT / "results"
    # published, or the one the unpublished runs train with
    path = next((p for p in (results / "label_subset.json",
                             results / "where_kd_pays" / "label_subset.json") if p.exists()), None)
    if path is None:
        pytest.skip("no few-labels runs yet (scripts/where_kd_pays.py)")
    recorded = json.loads(path.read_text())
    assert recorded["labelled"] == utils.label_subset(real_data)
    assert recorded["patches"] == int(utils.labelled_patches(real_data, recorded["labelled"]).sum())
    assert recorded["train_patches"] == len(real_data.x_train)
