"""Tests of scripts/dead_units.py: channels counted active or dead, and its JSON."""

import json

import numpy as np
import pytest

import dead_units
import utils


def _bias(model, layer, value):
    kernel, bias = model.get_layer(layer).get_weights()
    model.get_layer(layer).set_weights([kernel, np.full_like(bias, value)])


def test_a_channel_pushed_below_zero_is_dead_and_one_above_is_active(tiny_data):
    model = utils.build_unet(2)
    images = tiny_data.x_val[:3]
    _bias(model, "down0_conv2", -1e4)
    assert dead_units.active_shares(model, images)["down0_conv2"] == [0.0, 0.0]
    _bias(model, "down0_conv2", 1e4)
    shares = dead_units.active_shares(model, images, layers=("down0_conv2",))
    assert shares == {"down0_conv2": [1.0, 1.0]}


def test_active_count_is_strictly_above_the_threshold():
    assert dead_units.active_count([0.0, 0.05, 0.06, 1.0], 0.05) == 2
    assert dead_units.active_count([0.0, 0.0], 0.0) == 0


def test_main_writes_a_row_per_width_and_seed_and_per_saved_model(tmp_path, capsys):
    model = utils.build_unet(2)
    _bias(model, "down0_conv2", -1e4)
    model.save(tmp_path / "dead.keras")
    dead_units.main(["--profile", "tiny", "--output", str(tmp_path), "--widths", "2", "4",
                     "--seeds", "0", "1", "--models", str(tmp_path / "dead.keras")])
    result = json.loads((tmp_path / "dead_units.json").read_text())
    assert [(r["model"], r.get("seed")) for r in result["rows"]] == [
        ("build_unet(2)", 0), ("build_unet(2)", 1), ("build_unet(4)", 0), ("build_unet(4)", 1),
        ("dead.keras", None)]
    assert result["rows"][-1]["active"]["down0_conv2"] == 0
    assert all(len(r["shares"]["down0_conv2"]) == r["width"] for r in result["rows"][:4])
    assert result["backend"] and result["threshold"] == 0.05
    assert "dead.keras: active channels" in capsys.readouterr().out


def test_main_refuses_a_missing_model_and_a_bad_threshold(tmp_path, capsys):
    with pytest.raises(SystemExit):
        dead_units.main(["--profile", "tiny", "--output", str(tmp_path),
                         "--models", str(tmp_path / "nowhere.keras")])
    assert "nowhere.keras" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        dead_units.main(["--profile", "tiny", "--output", str(tmp_path), "--threshold", "1"])
    assert "--threshold" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        dead_units.main(["--profile", "tiny", "--output", str(tmp_path), "--name", "a/b.json"])
    assert "--name" in capsys.readouterr().err


def test_main_writes_under_another_name_and_leaves_dead_units_json_alone(tmp_path):
    (tmp_path / "dead_units.json").write_text("{}")
    dead_units.main(["--profile", "tiny", "--output", str(tmp_path), "--widths", "4",
                     "--seeds", "0", "--name", "trained.json"])
    assert (tmp_path / "dead_units.json").read_text() == "{}"
    rows = json.loads((tmp_path / "trained.json").read_text())["rows"]
    assert [(r["model"], r["seed"]) for r in rows] == [("build_unet(4)", 0)]
