"""The pages tell the numbers the committed JSON holds, and the requirements suit Colab."""

import pathlib
import re

import pytest

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
