"""The notebook series as files: order, titles and badges, committed outputs, the Colab setup cell.

The notebooks themselves run under `pytest --nbmake notebooks`, each alone in an
empty output folder (see conftest.py); the last test runs the two training
notebooks again on two simulated devices. `aerialkd.profiles` and
`aerialkd.notebook` are tested in test_profiles.py and test_notebook.py.
"""

import json
import subprocess
import sys

import pytest

import utils


NOTEBOOKS = sorted((utils.REPO_ROOT / "notebooks").glob("*.ipynb"))


def _cells(path, kind):
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"]
            if c["cell_type"] == kind]


def test_the_series_is_numbered_in_order():
    stems = [p.stem for p in NOTEBOOKS]
    assert [s[:3] for s in stems] == ["01_", "02_", "03_", "04_", "05_", "06_", "07_", "08_"]
    assert stems[1] == "02_teacher" and stems[5] == "06_sweep" and stems[6] == "07_your_data"
    assert stems[-1] == "08_where_kd_pays"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_opens_with_a_title_and_a_badge_to_itself(path):
    first = _cells(path, "markdown")[0]
    assert first.startswith("# ")
    assert (f"colab.research.google.com/github/{utils.GITHUB_REPOSITORY}/blob/main/"
            f"notebooks/{path.name}") in first


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_hold_no_tiny_run_outputs(path):
    for cell in json.loads(path.read_text())["cells"]:
        text = json.dumps(cell.get("outputs", []))
        assert "Profile 'tiny'" not in text and "outputs/tiny" not in text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_setup_cell_clones_and_installs_only_in_colab_and_kaggle(path, fake_colab, tmp_path,
                                                      monkeypatch):
    calls = []

    def fake_run(args, **kwargs):
        calls.append(args)
        if args[0] == "git":  # the clone creates the folder
            (tmp_path / args[-1]).mkdir()
            (tmp_path / args[-1] / "utils.py").write_text("")
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(sys, "path", list(sys.path))
    bootstrap = _cells(path, "code")[0]
    exec(bootstrap, {})
    assert calls[0][:2] == ["git", "clone"]
    assert calls[0][-2] == f"https://github.com/{utils.GITHUB_REPOSITORY}"
    assert calls[1][1:] == ["-m", "pip", "install", "-q", "-r", "sssi/requirements.txt"]
    assert sys.path[0] == str(tmp_path / "sssi")
    exec(bootstrap, {})  # a second run on the same runtime does not clone again
    assert [c[0] for c in calls].count("git") == 1

    monkeypatch.delitem(sys.modules, "google.colab")
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    calls.clear()
    exec(bootstrap, {})
    assert calls == []  # locally and in CI
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")  # a Kaggle notebook
    exec(bootstrap, {})
    assert calls[0][1:] == ["-m", "pip", "install", "-q", "-r", "sssi/requirements.txt"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_failed_clone_says_which_constant_to_change(path, fake_colab, tmp_path, monkeypatch):
    def failing_clone(args, **kwargs):
        return subprocess.CompletedProcess(args, 128, "", "fatal: repository not found")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(subprocess, "run", failing_clone)
    with pytest.raises(RuntimeError, match=r"repository not found Set REPOSITORY above"):
        exec(_cells(path, "code")[0], {})


@pytest.mark.notebook  # `-m "not notebook"` leaves it out with nbmake's items
@pytest.mark.parametrize("name", ["04_distill", "07_your_data"])
def test_training_notebooks_run_on_two_simulated_devices(name, tmp_path, monkeypatch):
    # 04_distill trains all three kinds of model on the tiny profile (teacher,
    # scratch student, Distiller), 07_your_data a student with plain Keras on
    # streamed batches; in a kernel whose CPU is split in two before
    # TensorFlow starts, each must find both devices and run every cell.
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    startup = tmp_path / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-two-devices.py").write_text(
        "import tensorflow as tf\n"
        "tf.config.set_logical_device_configuration(\n"
        "    tf.config.list_physical_devices('CPU')[0],\n"
        "    [tf.config.LogicalDeviceConfiguration()] * 2)\n")
    path = utils.REPO_ROOT / "notebooks" / f"{name}.ipynb"
    notebook = nbformat.read(path, as_version=4)
    for name, value in {"IPYTHONDIR": tmp_path / "ipython", "KERAS_BACKEND": "tensorflow",
                        "SSSI_PROFILE": "tiny", "SSSI_OUTPUT": tmp_path / "outputs"}.items():
        monkeypatch.setenv(name, str(value))  # the kernel inherits them
    nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    setup = "".join(output.get("text", "") for output in notebook.cells[3].outputs)
    assert "2 devices" in setup, setup
