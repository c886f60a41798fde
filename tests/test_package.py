"""The package's shape: layers import only downwards, the pages' names resolve, saved models load."""

import ast
import inspect
import json
import pathlib
import re
import subprocess
import sys

import keras
import pytest

import aerialkd
import utils

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "aerialkd"
LAYERS = re.findall(r"^- `(\w+)`:", aerialkd.__doc__, re.M)


def _local_imports(module):
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    return {node.module for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module}


def test_the_package_docstring_lists_every_module_once():
    modules = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert sorted(LAYERS) == modules and len(set(LAYERS)) == len(LAYERS)


@pytest.mark.parametrize("module", LAYERS)
def test_a_module_imports_only_modules_above_it(module):
    above = set(LAYERS[:LAYERS.index(module)])
    assert _local_imports(module) <= above, _local_imports(module) - above


@pytest.mark.parametrize("module", LAYERS)
def test_modules_stay_short_and_say_what_they_hold(module):
    source = (PACKAGE / f"{module}.py").read_text()
    assert len(source.splitlines()) <= 550  # "at most about 500"
    assert ast.get_docstring(ast.parse(source))


def test_nothing_outside_a_module_calls_its_private_names():
    users = list(PACKAGE.glob("*.py")) + list((REPO / "scripts").glob("*.py")) + \
        list((REPO / "benchmarks").glob("*.py")) + [REPO / "utils.py"]
    for path in users:
        text = path.read_text()
        private = re.findall(r"\b(?:utils|aerialkd(?:\.\w+)?)\.(_[a-z]\w*)", text)
        assert not private, f"{path.name} uses {private}"


def _names_used_through_utils():
    texts = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
             *sorted((REPO / "scripts").glob("*.py")),
             *sorted((REPO / "benchmarks").glob("*.py"))]
    used = set()
    for path in texts:
        used |= set(re.findall(r"(?<![\w.])utils\.([A-Za-z]\w*)", path.read_text()))
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        used |= set(re.findall(r"(?<![\w.])utils\.([A-Za-z]\w*)", code))
    return used - {"py"}  # "utils.py", the file


def test_every_utils_name_the_notebooks_readme_and_scripts_use_exists():
    missing = sorted(name for name in _names_used_through_utils() if not hasattr(utils, name))
    assert not missing


def test_every_public_function_and_class_has_an_example_the_doctests_run():
    objects = {name: getattr(aerialkd, name) for name in aerialkd.__all__}
    documented = {name: obj.__doc__ or "" for name, obj in objects.items()
                  if inspect.isfunction(obj) or inspect.isclass(obj)}
    assert len(documented) > 100  # the check sees the API, not an empty list
    # defined in the package, so `pytest --doctest-modules aerialkd` runs the examples
    assert {objects[name].__module__.split(".")[0] for name in documented} == {"aerialkd"}
    without = sorted(name for name, doc in documented.items() if "\n>>> " not in
                     "\n".join(line.strip() for line in doc.splitlines()))
    assert not without, f"no `>>>` example in the docstrings of {without}"


def test_utils_reexports_exactly_the_public_api():
    assert set(utils.__all__) == set(aerialkd.__all__)
    assert all(getattr(utils, name) is getattr(aerialkd, name) for name in aerialkd.__all__)


@pytest.mark.parametrize("path", sorted((REPO / "results" / "models").glob("*.keras")),
                         ids=lambda p: p.stem)
def test_every_committed_model_loads(path):
    model = keras.saving.load_model(path)
    assert model.output.shape[-1] == len(utils.CLASSES)


def test_xdist_groups_run_on_one_worker(tmp_path):
    # pytest.ini's `--dist loadgroup` keeps each xdist_group on one worker (the
    # subprocesses of test_distributed.py and test_hosts.py run once); some
    # pytest and pytest-xdist versions silently spread them (requirements-dev.txt).
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_groups.py").write_text(
        "import os, pytest\n"
        "@pytest.mark.xdist_group('g')\n"
        "@pytest.mark.parametrize('i', range(6))\n"
        "def test_grouped(i):\n"
        "    with open('workers.txt', 'a') as f:\n"
        "        f.write(os.environ['PYTEST_XDIST_WORKER'] + '\\n')\n"
        "@pytest.mark.parametrize('i', range(6))\n"
        "def test_free(i):\n"
        "    pass\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist",
                           "loadgroup", "-p", "no:cacheprovider", "test_groups.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    workers = (tmp_path / "workers.txt").read_text().split()
    assert len(workers) == 6 and len(set(workers)) == 1, workers
