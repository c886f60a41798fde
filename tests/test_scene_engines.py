"""Tests of `aerialkd.scene_engines`: Dask clusters, Ray, killed workers, retries, no engine."""

import pathlib
import re
import sys
import threading

import numpy as np
import pytest

import utils
from helpers import TILE, read_labels, statuses

pytest.importorskip("rasterio")

# One xdist worker runs all the test_scene_*.py modules: their shared fixtures
# (tests/conftest.py, a Dask run among them) run once.
pytestmark = pytest.mark.xdist_group("scene_batch")


def test_an_existing_dask_cluster_by_client_or_address(tmp_path, models, scenes, expected):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        by_client = utils.segment_scenes(models[0], scenes[:2], tmp_path / "a",
                                         engine=client, tile_size=TILE, progress=False)
        by_address = utils.segment_scenes(models[0], scenes[:2], tmp_path / "b",
                                          engine=cluster.scheduler_address,
                                          tile_size=TILE, progress=False)
        with pytest.raises(ValueError, match="an existing cluster .* has its own"):
            utils.segment_scenes(models[0], scenes, tmp_path, engine=client, workers=2)
    assert statuses(by_client) == statuses(by_address) == ["ok", "ok"]
    for record in by_client + by_address:
        name = pathlib.Path(record["source"]).name
        np.testing.assert_array_equal(read_labels(record["labels"]), expected[name])


_KILLER = '''
"""Dask worker preload: SIGKILLs this worker mid-scene on the first `kills` attempts."""
import os
import pathlib
import re
import signal

import aerialkd.scene_tasks as batch

MARKERS = pathlib.Path({markers!r})
KILLS = {kills!r}
# Preloads may run more than once in a worker: wrap the originals only.
segment_scene = batch.__dict__.setdefault("_unkilled_segment_scene", batch.segment_scene)
remove_leftovers = batch.__dict__.setdefault("_unkilled_remove_leftovers",
                                             batch._remove_leftovers)


def recording_remove_leftovers(labels):
    # What earlier attempts left of this scene, seen by this one before it cleans up.
    name = labels.name.removesuffix("_labels.tif")
    batch._left = sorted(p.name for p in labels.parent.iterdir() if name in p.name)
    remove_leftovers(labels)


def killing_segment_scene(model, src_path, dst_path, **kwargs):
    name = pathlib.Path(src_path).stem
    attempt = len(list(MARKERS.glob(name + ".*")))
    (MARKERS / f"{{name}}.{{attempt}}").write_text("\\n".join(batch._left))

    def progress(rows, height):  # after the first band is written
        if attempt < KILLS.get(name, 0):
            os.kill(os.getpid(), signal.SIGKILL)

    return segment_scene(model, src_path, dst_path, progress=progress, **kwargs)


batch.segment_scene = killing_segment_scene
batch._remove_leftovers = recording_remove_leftovers
'''


def _killing_preload(folder, kills):
    markers = folder / "markers"
    markers.mkdir()
    script = folder / "kill_worker.py"
    script.write_text(_KILLER.format(markers=str(markers), kills=kills))
    return script, markers


def test_a_worker_killed_mid_scene_leaves_no_finished_file_and_the_retry_completes(
        tmp_path, models, scenes, expected):
    dask = pytest.importorskip("dask")
    pytest.importorskip("distributed")
    script, markers = _killing_preload(tmp_path, {"scene_1": 1})
    with dask.config.set({"distributed.worker.preload": [str(script)]}):
        records = utils.segment_scenes(models[0], scenes[:3], tmp_path / "out",
                                       engine="dask", workers=2, retries=1,
                                       tile_size=TILE, progress=False)
    assert statuses(records) == ["ok"] * 3
    assert sorted(p.name for p in markers.iterdir() if "scene_1" in p.name) == [
        "scene_1.0", "scene_1.1"]  # killed once, run again
    # The retry found only the killed attempt's temporary raster, nothing finished,
    # and removed it.
    (left,) = (markers / "scene_1.1").read_text().split()
    assert re.fullmatch(r"\.scene_1_labels\.tif\.[0-9a-f]{8}\.partial", left)
    np.testing.assert_array_equal(read_labels(records[1]["labels"]), expected["scene_1.tif"])
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_a_scene_whose_workers_keep_dying_fails_and_leaves_no_finished_file(
        tmp_path, models, scenes):
    dask = pytest.importorskip("dask")
    pytest.importorskip("distributed")
    script, _ = _killing_preload(tmp_path, {"scene_0": 99})
    with dask.config.set({"distributed.worker.preload": [str(script)]}):
        (record,) = utils.segment_scenes(models[0], scenes[:1], tmp_path / "out",
                                         engine="dask", workers=1, retries=0,
                                         tile_size=TILE, progress=False)
    assert record["status"] == "failed" and record["error"].startswith("KilledWorker: ")
    partial, manifest = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert re.fullmatch(r"\.scene_0_labels\.tif\.[0-9a-f]{8}\.partial", partial)
    assert manifest == "manifest.jsonl"


@pytest.mark.parametrize("engine, hint", [
    ("ray", "engine='ray' needs ray: `pip install ray`, or use engine='dask'"),
    ("dask", "engine='dask' needs 'dask[distributed]': `pip install 'dask[distributed]'`")])
def test_a_missing_engine_says_how_to_install_it(tmp_path, models, scenes, monkeypatch,
                                                 engine, hint):
    # A None entry in sys.modules makes `import` raise ImportError, as on a machine
    # without the package, whether or not it is installed here.
    monkeypatch.setitem(sys.modules, "ray" if engine == "ray" else "distributed", None)
    with pytest.raises(ImportError, match=re.escape(hint)):
        utils.segment_scenes(models[0], scenes[:1], tmp_path, engine=engine, workers=1,
                             tile_size=TILE, progress=False)
    assert not any(tmp_path.iterdir())


def test_ray_started_by_segment_scenes_labels_every_scene_and_is_shut_down(
        tmp_path, models, scenes, expected):
    ray = pytest.importorskip("ray")
    records = utils.segment_scenes(models[0], scenes[:2], tmp_path, engine="ray",
                                   workers=2, tile_size=TILE, progress=False)
    assert statuses(records) == ["ok", "ok"] and not ray.is_initialized()
    for record in records:
        name = pathlib.Path(record["source"]).name
        np.testing.assert_array_equal(read_labels(record["labels"]), expected[name])


def _fail_each_sidecar_once():
    """Ray's worker setup hook (pickled by value): writing a sidecar fails once a scene."""
    import pathlib

    import aerialkd.scene_tasks

    write = aerialkd.scene_tasks.write_into_place

    def flaky(path, data):
        marker = pathlib.Path(f"{path}.failed-once")
        if not marker.exists():
            marker.touch()
            raise OSError(f"a flaky file system dropped {path}")
        return write(path, data)

    aerialkd.scene_tasks.write_into_place = flaky


def test_ray_retries_an_error_outside_the_scene_as_the_other_engines_do(
        tmp_path, models, scenes):
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=1, include_dashboard=False,
             runtime_env={"worker_process_setup_hook": _fail_each_sidecar_once})
    try:
        records = utils.segment_scenes(models[0], scenes[:2], tmp_path, engine="ray",
                                       workers=1, retries=1, tile_size=TILE, progress=False)
    finally:
        ray.shutdown()
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert sorted(p.name for p in tmp_path.glob("*.failed-once")) == [
        "scene_0_labels.json.failed-once", "scene_1_labels.json.failed-once"]
    assert statuses(records) == ["ok", "ok"]


def test_ray_actors_label_every_scene_even_with_more_workers_than_cpus(
        tmp_path, models, scenes, expected):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False)  # two actors, one CPU: both must run
    try:
        done = {}

        def run():  # in a thread: an actor never placed would make it wait forever
            try:
                done["records"] = utils.segment_scenes(
                    models[0], scenes[:3], tmp_path, engine="ray", workers=2,
                    tile_size=TILE, progress=False)
            except BaseException as error:
                done["error"] = error

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(timeout=300)
        assert not thread.is_alive(), "segment_scenes still waits for an actor"
        assert "error" not in done, done.get("error")
        assert ray.is_initialized()  # not shut down: segment_scenes did not start it
    finally:
        ray.shutdown()
    assert statuses(done["records"]) == ["ok"] * 3
    for record in done["records"]:
        name = pathlib.Path(record["source"]).name
        np.testing.assert_array_equal(read_labels(record["labels"]), expected[name])
