"""Tests of `aerialkd.run_plots`: the figures of runs and their comparison."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import utils  # noqa: E402


def test_history_draws_training_and_validation_of_each_key():
    history = {"loss": [2, 1], "val_loss": [2.5, 1.5]}
    fig = utils.plot_history({"teacher": history}, keys=("loss",))
    assert len(fig.axes[0].lines) == 2


def test_history_names_a_validation_key_and_fits_its_tail_to_finite_values():
    import matplotlib.pyplot as plt

    history = {"val_miou5": [0.1, float("nan"), 0.2, 0.5, 0.6, 0.62]}
    fig = utils.plot_history({"run": history}, keys=("val_miou5",), ylim="tail")
    assert [line.get_label() for line in fig.axes[0].lines] == ["run val"]  # was "run train"
    assert 0.5 < fig.axes[0].get_ylim()[1] < 0.7  # a NaN first in the tail made it fail
    plt.close(fig)
    before = plt.get_fignums()
    with pytest.raises(ValueError, match="ylim='tail'.*no history has a finite one"):
        utils.plot_history({"run": history}, keys=("miou6",), ylim="tail")
    assert plt.get_fignums() == before  # the half-drawn figure is closed


def test_sweep_heatmap_shows_each_setting_against_the_scratch_reference():
    rows = [{"kind": "none", "alpha": 1.0, "temperature": None, "val_miou5": 0.60},
            {"kind": "pixel", "alpha": 0.1, "temperature": 1.5, "val_miou5": 0.625},
            {"kind": "pixel", "alpha": 0.5, "temperature": 4.0, "val_miou5": 0.58},
            {"kind": "channel", "alpha": 0.5, "temperature": 4.0, "val_miou5": 0.61}]
    fig = utils.plot_sweep(rows)
    channel, pixel = fig.axes[:2]  # kinds in alphabetical order
    assert (channel.get_title(), pixel.get_title()) == ("channel KD", "pixel KD")
    assert sorted(t.get_text() for t in pixel.texts) == ["0.580\n(-0.020)", "0.625\n(+0.025)"]
    assert [t.get_text() for t in channel.texts] == ["0.610\n(+0.010)"]
    assert "scratch student's 0.600" in fig._suptitle.get_text()
    without = utils.plot_sweep(rows[1:])  # no reference: values alone
    assert "0.610" in [t.get_text() for t in without.axes[0].texts]


def test_tradeoff_draws_each_group_at_the_mean_of_its_seeds_with_every_seed(tmp_path):
    rows = [{"group": "scratch", "gflops": 1.5, "ms": 17.0, "scores": [0.64, 0.66]},
            {"group": "scratch", "gflops": 0.4, "ms": 9.0, "scores": [0.60]},
            {"group": "distilled", "gflops": 0.4, "ms": 9.0, "scores": [0.62, 0.63, 0.64]},
            {"group": "teacher", "gflops": 6.1, "ms": 43.0, "scores": [0.69]}]
    fig = utils.plot_tradeoff(rows, {"gflops": "GFLOPs", "ms": "latency"},
                              path=tmp_path / "tradeoff.png")
    assert (tmp_path / "tradeoff.png").stat().st_size > 0 and len(fig.axes) == 2
    ax = fig.axes[1]
    assert ax.get_legend() is None and ax.get_xscale() == "log"  # one legend, on the first
    handles, labels = fig.axes[0].get_legend_handles_labels()
    assert labels == ["scratch", "distilled", "teacher"]
    line = handles[0].lines[0]  # scratch, in order of cost, at its means
    np.testing.assert_allclose(line.get_xdata(), [0.4, 1.5])
    np.testing.assert_allclose(line.get_ydata(), [0.60, 0.65])
    bars = handles[1].lines[2][0].get_segments()  # distilled: one sd either side of 0.63
    np.testing.assert_allclose([bars[0][0][1], bars[0][1][1]], [0.62, 0.64])
    dots = [c for c in fig.axes[0].collections if c.get_offsets().shape[0] and c.get_alpha()]
    assert sum(len(c.get_offsets()) for c in dots) == 7  # every seed of every model
    with pytest.raises(ValueError, match=r"missing: \['ms'\]"):
        utils.plot_tradeoff(rows[:1] + [{"group": "x", "gflops": 1, "scores": [0.5]}],
                            {"gflops": "GFLOPs", "ms": "latency"})


def test_sweep_names_the_split_of_its_metric():
    rows = [{"kind": "none", "alpha": 1.0, "temperature": None, "test_miou5": 0.60},
            {"kind": "pixel", "alpha": 0.5, "temperature": 4.0, "test_miou5": 0.62}]
    title = utils.plot_sweep(rows, metric="test_miou5").get_suptitle()
    assert title.startswith("Test mIoU, 5 labelled classes over")  # was "Validation test_miou5"


def test_seed_scores_draw_every_seed_and_each_models_mean_and_sd(tmp_path):
    scores = {"scratch": [0.55, 0.58, 0.61], "distilled": [0.66, 0.68], "teacher": [0.69]}
    fig = utils.plot_seed_scores(scores, baseline="scratch", path=tmp_path / "seeds.png")
    ax = fig.axes[0]
    assert (tmp_path / "seeds.png").stat().st_size > 0
    assert [label.get_text() for label in ax.get_yticklabels()] == list(scores)
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # the first model on top
    dots = {int(c.get_offsets()[0, 1]): np.asarray(c.get_offsets()[:, 0])
            for c in ax.collections if c.get_alpha()}
    np.testing.assert_allclose(dots[0], scores["scratch"])  # every seed, on its row
    np.testing.assert_allclose(dots[2], scores["teacher"])
    means = [bar.lines[0].get_xdata()[0] for bar in ax.containers]
    np.testing.assert_allclose(means, [0.58, 0.67, 0.69])
    sd = ax.containers[0].lines[2][0].get_segments()[0][:, 0]
    np.testing.assert_allclose(sd, [0.55, 0.61])  # one sd either side of the mean
    baseline = [line for line in ax.lines if line.get_linestyle() == "--"]
    np.testing.assert_allclose(baseline[0].get_xdata(), [0.58, 0.58])
    with pytest.raises(ValueError, match=r"no score for \['teacher'\]"):
        utils.plot_seed_scores({"scratch": [0.5], "teacher": []})
    with pytest.raises(ValueError, match=r"\['scratch'\] have NaN"):
        utils.plot_seed_scores({"scratch": [0.5, float("nan")]})
    with pytest.raises(ValueError, match="baseline 'ceiling' is not among"):
        utils.plot_seed_scores({"scratch": [0.5]}, baseline="ceiling")
