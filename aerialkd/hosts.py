"""The processes of a run on several hosts (JAX): joining them, who writes, each one's rows."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from .checks import check_count

TENSORFLOW_MULTI_WORKER_ISSUE = "https://github.com/keras-team/keras/issues/20585"


@dataclasses.dataclass(frozen=True)
class Processes:
    """The processes a run trains on, as `initialize_processes` found them.

    Attributes:
        process_id: this process's number, 0 to `num_processes - 1`; process
            0 writes the run's files.
        num_processes: how many processes train together (1: this one alone).
        coordinator: the address of process 0 ("host:port"), `None` on one
            process or where JAX found it by itself (a TPU pod).

    Example:

    A script run alone (none of Keras' `KERAS_DISTRIBUTION_*` variables set)
    is process 0 of 1, and so writes the run's files:

    >>> processes = initialize_processes()
    >>> processes.process_id, processes.num_processes, processes.coordinator
    (0, 1, None)
    """

    process_id: int
    num_processes: int
    coordinator: str | None


def initialize_processes(
    job_addresses: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> Processes:
    """Joins this process to the others of a training run on several hosts.

    Each argument left `None` is read from Keras' standard variable,
    `KERAS_DISTRIBUTION_JOB_ADDRESSES`, `KERAS_DISTRIBUTION_NUM_PROCESSES`
    and `KERAS_DISTRIBUTION_PROCESS_ID`. With more than one process it calls
    `keras.distribution.initialize` (`jax.distributed.initialize`: every
    process runs the same script, each with its own id, and they find each
    other through process 0's address); with one, or none set, it changes
    nothing. It must run before anything runs on JAX (building a model
    does), and once a process: a second call returns what the first found.
    `data_parallel()` (and `use_all_devices()`) call it themselves, so a
    script that sets the variables needs no call of its own.

    Under `data_parallel()`, a model then trains on every device of every
    process, one program over the global batch: `fit_segmentation` with
    `batch_size=B` trains as one process would with the same `B` (each
    process feeds its own rows of exactly the batch one process would draw,
    validation too, so the logged metrics are the global ones). Only process
    0 writes the run's files (checkpoints, histories, the backup of
    `BackupAndRestore`); the others write nothing. To resume, rerun every
    process: each restores process 0's backup (JAX sets a variable on all
    processes together, with the same value), so `output_dir` must be a
    folder every process reads: on one machine any folder, across machines
    a shared file system (NFS, a mounted bucket) at the same path. Where
    they see different backups, `fit_segmentation` says so and stops.
    Predict and evaluate after the `data_parallel()` block, on the saved
    model (`keras.models.load_model`), on any one process.

    TensorFlow has no multi-host path here: Keras 3's `fit` does not run
    under `tf.distribute.MultiWorkerMirroredStrategy` (keras-team/keras#20585),
    so with more than one process this raises and says to use JAX.

    Recipe: two processes on one machine, each with one device of its own
    (CPU here; `CUDA_VISIBLE_DEVICES=0` and `=1` for two GPUs), and a free port:

        export KERAS_BACKEND=jax KERAS_DISTRIBUTION_NUM_PROCESSES=2
        export KERAS_DISTRIBUTION_JOB_ADDRESSES=localhost:12355
        KERAS_DISTRIBUTION_PROCESS_ID=0 python train.py &
        KERAS_DISTRIBUTION_PROCESS_ID=1 python train.py

    On two machines, the same on each, with process 0's address (reachable
    from the other machine, the port open) and each machine's own id:

        # on 10.0.0.1:
        KERAS_BACKEND=jax KERAS_DISTRIBUTION_JOB_ADDRESSES=10.0.0.1:12355 \\
          KERAS_DISTRIBUTION_NUM_PROCESSES=2 KERAS_DISTRIBUTION_PROCESS_ID=0 python train.py
        # on 10.0.0.2: the same with KERAS_DISTRIBUTION_PROCESS_ID=1

    where `train.py` loads the data, and builds, compiles and fits inside
    `with data_parallel():` with the same seeds and arguments on every
    process. On a TPU pod slice (or under SLURM), JAX finds the processes by
    itself: leave the variables unset, call `keras.distribution.initialize()`
    with no arguments at the top of the script, and run it on every host
    (`gcloud compute tpus tpu-vm ssh NAME --worker=all --command="..."`);
    `data_parallel()` then spans them all.

    Args:
        job_addresses: "host:port" of process 0 (or every process's,
            comma-separated: the first is used).
        num_processes: how many processes train together.
        process_id: this process's number, from 0 (the one that writes
            files) to `num_processes - 1`.

    Returns:
        A `Processes`: `.process_id`, `.num_processes`, `.coordinator`.

    Example:

    Each process of a two-process run calls it with its own `process_id`,
    e.g. `initialize_processes("localhost:12355", 2, process_id=0)`; alone:

    >>> initialize_processes()
    Processes(process_id=0, num_processes=1, coordinator=None)
    """
    job_addresses = job_addresses or os.environ.get("KERAS_DISTRIBUTION_JOB_ADDRESSES") or None
    num_processes = _setting(num_processes, "KERAS_DISTRIBUTION_NUM_PROCESSES")
    process_id = _setting(process_id, "KERAS_DISTRIBUTION_PROCESS_ID")
    backend = keras.backend.backend()
    if backend != "jax":
        if (num_processes or 1) > 1:
            raise RuntimeError(
                f"Training on {num_processes} processes needs the JAX backend, and Keras "
                f"runs on {backend!r}: Keras 3's `fit` does not run under TensorFlow's "
                f"MultiWorkerMirroredStrategy ({TENSORFLOW_MULTI_WORKER_ISSUE}), so "
                f"data_parallel trains on one machine's devices only there. Set "
                f"KERAS_BACKEND=jax before importing keras, or unset "
                f"KERAS_DISTRIBUTION_NUM_PROCESSES to train on this machine alone.")
        return Processes(0, 1, None)
    import jax

    coordinator = job_addresses.split(",")[0].strip() if job_addresses else None
    if jax.distributed.is_initialized():  # a second call, or keras.distribution.initialize()
        return Processes(jax.process_index(), jax.process_count(), coordinator)
    if (num_processes or 1) == 1:
        return Processes(0, 1, None)
    check_count("num_processes", num_processes)
    if process_id is None or not 0 <= process_id < num_processes:
        raise ValueError(
            f"process_id must be 0 to {num_processes - 1} for a run on {num_processes} "
            f"processes, got {process_id}: give each process its own "
            f"KERAS_DISTRIBUTION_PROCESS_ID (0 is the one that writes the files).")
    try:
        keras.distribution.initialize(job_addresses, num_processes, process_id)
    except RuntimeError as error:
        if "before" not in str(error):
            raise
        raise RuntimeError(
            f"initialize_processes must run before anything runs on JAX, and something "
            f"did ({error}): enter data_parallel() (or call initialize_processes) at the "
            f"top of the script, before building a model.") from error
    return Processes(jax.process_index(), jax.process_count(), coordinator)


def _setting(value, name):
    """`value`, else the integer environment variable `name`, else `None`."""
    text = os.environ.get(name) if value is None else value
    if text is None or text == "":
        return None
    try:
        return int(text)
    except (TypeError, ValueError):
        raise ValueError(f"{name.lower().removeprefix('keras_distribution_')} must be an "
                         f"integer, got {text!r} (from {name}?).") from None


def process_count() -> int:
    """How many processes the current `keras.distribution` spans (1 without one, off JAX)."""
    if keras.backend.backend() != "jax":
        return 1
    distribution = keras.distribution.distribution()
    return getattr(distribution, "num_processes", 1) if distribution is not None else 1


def process_index() -> int:
    """This process's number in the current distribution (0 on one process)."""
    if process_count() == 1:
        return 0
    import jax

    return jax.process_index()


def writes_files() -> bool:
    """Whether this process writes the run's files: process 0, or the only one."""
    return process_index() == 0


def local_rows(rows: int) -> slice:
    """The rows of a global batch of `rows` that this process feeds (all on one process).

    Keras' JAX trainer takes each process's batch as its local share of the
    global batch (`jax.make_array_from_process_local_data`): the rows of
    the devices this process holds in the data mesh, which `data_parallel`
    orders by process, so they are one contiguous slice.
    """
    return _rows_of(rows, _device_span())


def _rows_of(rows, span):
    start, stop, devices = span
    if rows % devices:
        raise ValueError(f"A batch of {rows} patches cannot be split evenly over the "
                         f"{devices} devices of the data-parallel processes: use a "
                         f"multiple of {devices}.")
    return slice(rows // devices * start, rows // devices * stop)


def _device_span():
    """(first, end, count): this process's devices among the data mesh's, in order."""
    if process_count() == 1:
        return 0, 1, 1
    import jax

    mesh = keras.distribution.distribution().device_mesh.backend_mesh
    mine = [d.process_index == jax.process_index() for d in mesh.devices.flat]
    start, stop = mine.index(True), len(mine) - mine[::-1].index(True)
    if not all(mine[start:stop]):
        raise ValueError("This process's devices are not contiguous in the data mesh: "
                         "build the distribution with data_parallel().")
    return start, stop, len(mine)


def local_batches(data: Any, batch_size: int) -> tuple[Any, int]:
    """This process's rows of each batch of `batch_size` of `data`, end to end.

    `data` is an array or a structure of arrays (e.g. `(images, logits)`)
    with the same number of rows; its batches are cut as `fit` cuts them
    (the last may be shorter). Batching the result by the returned size
    gives, batch for batch, this process's share of the global batches.

    Returns:
        `(data, batch_size)`: themselves on one process.
    """
    if process_count() == 1:
        return data, batch_size
    n = len(keras.tree.flatten(data)[0])
    batches = [np.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    index = np.concatenate([batch[local_rows(len(batch))] for batch in batches])
    rows = local_rows(batch_size)
    return keras.tree.map_structure(lambda a: a[index], data), rows.stop - rows.start


class LocalRows(keras.utils.PyDataset):
    """This process's rows of every batch of a sequence (on one process, every row).

    Args:
        sequence: a `keras.utils.PyDataset` of global batches, e.g. a
            `PatchSequence` with the global batch size; its `on_epoch_end`
            is called through.
    """

    def __init__(self, sequence: keras.utils.PyDataset) -> None:
        super().__init__()
        self.sequence = sequence
        self._span = _device_span()  # here: keras.distribution is per thread

    def __len__(self) -> int:
        return len(self.sequence)

    def __getitem__(self, index: int) -> Any:
        batch = self.sequence[index]
        rows = _rows_of(len(keras.tree.flatten(batch)[0]), self._span)
        return keras.tree.map_structure(lambda a: a[rows], batch)

    def on_epoch_end(self) -> None:
        self.sequence.on_epoch_end()


def gather_json(value: Any) -> list[Any]:
    """Every process's `value` (anything `json` writes), in process order, on every process."""
    if process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    text = np.frombuffer(json.dumps(value).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.int32(len(text))))
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: len(text)] = text
    texts = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(t[:size].tobytes()) for t, size in zip(texts, sizes)]


@contextlib.contextmanager
def without_distribution() -> Iterator[None]:
    """Runs the block on this process alone: for process 0 writing files.

    Keras' JAX backend puts every variable it creates under a distribution on
    the devices of every process, a step all processes must take together;
    saving creates some (`save_weights` an `Optimizer`, `save_model` a float32
    copy), so process 0 saves with the distribution unset. On one process it
    changes nothing.
    """
    if process_count() == 1:
        yield
        return
    distribution = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(distribution)
