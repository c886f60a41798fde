"""The engines of `segment_scenes`: this process, a Dask cluster, Ray actors.

Each runs the tasks of a batch (`scene_tasks`) and yields every scene's record
as it finishes, retrying a scene whose worker died. "dask" starts a
`dask.distributed.LocalCluster`, and a `dask.distributed.Client` or a
scheduler address uses an existing cluster; "ray" runs actors that each load
the model once. Neither Dask nor Ray is needed until its engine is asked for.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import keras

from .checks import check_count
from .scene_tasks import failed_record, run_scene_task, worker_model

ENGINES = ("local", "dask", "ray")
"""The engines `segment_scenes` starts by name; a `dask.distributed.Client` or a
scheduler address ("tcp://host:8786") uses an existing Dask cluster."""


def check_engine(engine: Any, workers: int | None) -> int | None:
    """Validates `engine` and `workers`; returns the workers to start, or `None`."""
    if workers is not None:
        workers = check_count("workers", workers)
    if engine in ("dask", "ray"):
        _import_engine(engine)
        return workers or _cores()
    if engine == "local":
        if workers not in (None, 1):
            raise ValueError(f"engine='local' runs the scenes one after another in this "
                             f"process, got workers={workers}; pass engine='dask' to run "
                             f"them in {workers} processes.")
        return None
    if isinstance(engine, str) and "://" not in engine:
        raise ValueError(f"engine must be one of {ENGINES}, a dask.distributed.Client or a "
                         f"scheduler address such as 'tcp://host:8786', got {engine!r}.")
    if not isinstance(engine, str):
        distributed = _import_engine("dask")
        if not isinstance(engine, distributed.Client):
            raise TypeError(f"engine must be one of {ENGINES}, a dask.distributed.Client "
                            f"or a scheduler address, got a {type(engine).__name__}.")
    if workers is not None:
        raise ValueError(f"workers={workers} sizes a cluster segment_scenes starts; an "
                         f"existing cluster ({engine!r}) has its own. Pass workers=None.")
    return None


def _import_engine(engine):
    """Imports Dask's `distributed` or Ray, saying how to install it if missing."""
    try:
        return __import__("distributed" if engine == "dask" else "ray")
    except ImportError as error:
        package = "'dask[distributed]'" if engine == "dask" else "ray"
        other = "" if engine == "dask" else ", or use engine='dask'"
        raise ImportError(f"engine={engine!r} needs {package}: `pip install "
                          f"{package}`{other}.") from error


def _cores():
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


def run_tasks(engine: Any, tasks: Sequence[dict[str, Any]], model: keras.Model,
              workers: int | None, retries: int) -> Iterator[tuple[dict, dict]]:
    """Yields `(task, record)` of each task as the engine finishes it.

    Args:
        engine: as `segment_scenes` takes it, checked by `check_engine`.
        tasks: `scene_task`s.
        model: the loaded model, which "local" uses; the workers of the
            other engines load the tasks' model file.
        workers: what `check_engine` returned.
        retries: times a scene is run again after its worker died.
    """
    if engine == "local":
        return _run_local(tasks, model, retries)
    if engine == "ray":
        return _run_ray(tasks, workers, retries)
    return _run_dask(tasks, engine, workers, retries)


def _run_local(tasks, model, retries):
    for task in tasks:
        for _ in range(retries + 1):
            try:
                record = run_scene_task(task, model)
                break
            except Exception as error:  # outside the scene (e.g. writing the sidecar)
                record = failed_record(task["source"], error)
        yield task, record


def _run_dask(tasks, engine, workers, retries):
    import dask
    import distributed

    cluster = client = None
    threads = None
    try:
        if engine == "dask":
            threads = max(1, _cores() // workers)
            # A worker holds only the scene it runs (saturation 1), so its death
            # counts against that scene alone; `retries` deaths are forgiven. No
            # dashboard, so no statistical profiler: it cost ~8% of the CPU time.
            with dask.config.set({"distributed.scheduler.worker-saturation": 1.0,
                                  "distributed.worker.profile.enabled": False}):
                cluster = distributed.LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True,
                    dashboard_address=None, silence_logs=logging.ERROR,
                    scheduler_kwargs={"allowed_failures": retries,
                                      "dashboard_address": ":0"})  # not 8787
            client = distributed.Client(cluster)
        elif isinstance(engine, str):
            client = distributed.Client(engine)
        futures = {}
        for task in tasks:
            future = (client or engine).submit(
                run_scene_task, {**task, "threads": threads}, pure=False, retries=retries,
                key=f"segment_scene-{uuid.uuid4().hex}")  # one task group
            futures[future] = task
        for future in distributed.as_completed(futures):
            try:
                record = future.result()
            except Exception as error:  # the workers running it died too often
                record = failed_record(futures[future]["source"], error)
            yield futures.pop(future), record
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()


class _SceneActor:
    """A Ray actor: a process that loads the model once, then segments scenes."""

    def __init__(self, model_path, sha256, threads):
        worker_model(model_path, sha256, threads)

    def run(self, task):
        return run_scene_task(task)


def _run_ray(tasks, workers, retries):
    ray = _import_engine("ray")
    started = not ray.is_initialized()
    if started:
        ray.init()
    try:
        cpus = ray.cluster_resources().get("CPU", 1)
        threads = max(1, int(cpus) // workers)
        # More workers than CPUs: each asks for its share of one (to Ray's 1e-4
        # precision), or the actors beyond the CPUs would never be placed and
        # their scenes would be waited for forever.
        share = threads if workers <= cpus else math.floor(cpus / workers * 1e4) / 1e4
        actor = ray.remote(num_cpus=share, max_restarts=retries,
                           max_task_retries=retries)(_SceneActor)
        model = (tasks[0]["model"], tasks[0]["model_sha256"], threads)
        idle = [actor.remote(*model) for _ in range(workers)]
        queue, pending = collections.deque(tasks), {}
        while queue or pending:
            while idle and queue:
                worker, task = idle.pop(), queue.popleft()
                # an error outside the scene (writing its sidecar) is retried too, as
                # the other engines do; Ray retries only a dead actor's tasks by default
                run = worker.run.options(retry_exceptions=True)
                pending[run.remote({**task, "threads": threads})] = (worker, task)
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            worker, task = pending.pop(ready)
            try:
                record = ray.get(ready)
                idle.append(worker)
            except Exception as error:  # the actor died more than `retries` times
                record = failed_record(task["source"], error)
                ray.kill(worker)  # (or failed outside the scene): a fresh one
                idle.append(actor.remote(*model))
            yield task, record
    finally:
        if started:
            ray.shutdown()
