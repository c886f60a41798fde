"""Shared fixtures: the tiny synthetic dataset, small models, a fake Colab; fresh notebook outputs;
the scenes of the test_scene_*.py modules, and a batch of them on each engine.

Helpers that build small inputs and models are plain functions in `helpers.py`.
"""

import os
import pathlib
import shutil
import sys
import tempfile
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Notebooks under test (pytest --nbmake) write to a fresh folder, never into the
# outputs/ of a run the user made with the README's main command.
os.environ.setdefault("SSSI_OUTPUT", tempfile.mkdtemp(prefix="sssi-test-outputs-"))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import utils  # noqa: E402
from helpers import TILE, read_labels, save_conv_model, utm_transform, write_raster  # noqa: E402

REAL_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "aerial-dubai"

# Not test modules, not even for --doctest-modules: the scripts that tests run in a
# fresh process (`*_check.py`, which read their command line and set the backend when
# imported), and the helpers the tests import.
collect_ignore = ["helpers.py"]
collect_ignore_glob = ["*_check.py"]


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(items):
    """Each notebook (an nbmake item) runs alone in an empty output folder of its own.

    As in a fresh Colab runtime: a notebook finds no model an earlier notebook
    trained, so it must load or train what it needs itself. The kernel inherits
    `SSSI_OUTPUT` from this process when the item starts it. Notebooks are marked
    `notebook` before `-m` selects (`-m "not notebook"` leaves them out). The
    notebooks and the integration suites that train for minutes run first.
    """
    for item in items:
        if item.path.suffix == ".ipynb":
            item.runtest = _in_empty_output_folder(item.runtest, item.path.stem)
            item.add_marker(pytest.mark.notebook)
    yield  # the other plugins select and order
    # Minutes each on two cores: started first, they leave the quick tests to fill
    # the other worker's time instead of running alone at the end.
    items.sort(key=lambda item: not (item.get_closest_marker("notebook")
                                     or item.get_closest_marker("integration")))


def _in_empty_output_folder(runtest, stem):
    """`runtest` with `SSSI_OUTPUT` a new folder, removed if the notebook passes."""

    def run():
        previous = os.environ.get("SSSI_OUTPUT")
        folder = tempfile.mkdtemp(prefix=f"sssi-{stem}-")
        os.environ["SSSI_OUTPUT"] = folder
        try:
            runtest()
        finally:
            if previous is None:
                os.environ.pop("SSSI_OUTPUT", None)
            else:
                os.environ["SSSI_OUTPUT"] = previous
        shutil.rmtree(folder, ignore_errors=True)  # kept for a look when it failed

    return run


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    return utils.make_tiny_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_data(tiny_root):
    return utils.load_dataset(tiny_root, patch_size=32)


@pytest.fixture(scope="session")
def real_root():
    if not REAL_DATA.exists():
        pytest.skip(f"real dataset not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture
def small_unet():
    keras.utils.set_random_seed(0)
    return utils.build_unet(2, name="small")


@pytest.fixture
def fake_colab(monkeypatch):
    """A `google.colab` module whose `drive.mount` records the folders it mounts."""
    colab = types.ModuleType("google.colab")
    drive = types.ModuleType("google.colab.drive")
    drive.mounted = []
    drive.mount = drive.mounted.append
    colab.drive = drive
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google.colab.drive", drive)
    return drive


# -- scenes: small GeoTIFFs for the test_scene_*.py modules (which need rasterio) ------
# Session-scoped: the modules share one xdist group, so these (a Dask run among
# them) run once, on one worker.


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return [save_conv_model(folder / f"conv_{seed}.keras", seed) for seed in (0, 1)]


@pytest.fixture(scope="session")
def scenes(tmp_path_factory):
    """Three scenes side by side, 5 m apart (the last with a 12-column nodata margin), and
    a file that is no raster."""
    folder = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(0)
    paths, x = [], 0.0
    for i, (height, width) in enumerate([(70, 90), (100, 64), (80, 80)]):
        pixels = rng.integers(1, 256, (3, height, width), dtype=np.uint8)
        profile = {}
        if i == 2:
            pixels[:, :, :12] = 0
            profile["nodata"] = 0
        paths.append(write_raster(folder / f"scene_{i}.tif", pixels, utm_transform(x),
                                  **profile))
        x += width * 0.5 + 5
    (folder / "broken.tif").write_text("not a raster")
    return paths + [folder / "broken.tif"]


@pytest.fixture(scope="session")
def expected(tmp_path_factory, models, scenes):
    """Each good scene's labels as `segment_scene` writes them, one at a time."""
    folder = tmp_path_factory.mktemp("expected")
    model = keras.saving.load_model(models[0])
    labels = {}
    for scene in scenes[:3]:
        utils.segment_scene(model, scene, folder / scene.name, tile_size=TILE)
        labels[scene.name] = read_labels(folder / scene.name)
    return labels


@pytest.fixture(scope="session")
def scene_runs(tmp_path_factory, models, scenes):
    """The four scenes through an engine, once per engine whatever the tests' order."""
    done = {}

    def run(engine):
        if engine not in done:
            dst = tmp_path_factory.mktemp(f"batch_{engine}")
            workers = 2 if engine == "dask" else None
            done[engine] = dst, utils.segment_scenes(models[0], scenes, dst, engine=engine,
                                                     workers=workers, tile_size=TILE,
                                                     progress=False)
        return done[engine]

    return run


@pytest.fixture(params=["local", "dask"])
def batch(request, scene_runs):
    """(engine, dst_dir, records) of one engine's run."""
    if request.param == "dask":
        pytest.importorskip("distributed")
    return (request.param, *scene_runs(request.param))
