"""Devices and precision: data-parallel training, replicas, the dtype policy of a device."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Iterator, Sequence

import keras
import numpy as np

from .hosts import initialize_processes


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """What `data_parallel` trains on: the backend, the devices, their number.

    Attributes:
        backend: "tensorflow" or "jax".
        devices: the devices' names, as the backend spells them.
        num_replicas: the number of devices a batch is split over.
        strategy: the `tf.distribute` strategy or the `keras.distribution`
            object; `None` where `use_all_devices` changed nothing.

    Example:

    Scale the batch with the devices, so each one gets 16 patches:

    >>> with data_parallel() as parallel:
    ...     batch_size = 16 * parallel.num_replicas
    >>> parallel.num_replicas, len(parallel.devices), batch_size  # one CPU here
    (1, 1, 16)
    """

    backend: str
    devices: tuple[str, ...]
    num_replicas: int
    strategy: object = dataclasses.field(repr=False, compare=False)


@contextlib.contextmanager
def data_parallel(devices: int | Sequence[str] | None = None) -> Iterator[DataParallel]:
    """Trains the models built, compiled and fitted inside it on several devices.

    Each batch is split evenly over the devices, each device runs the model on
    its share, and the gradients are summed, so a step on N devices with a
    batch of B patches is the step one device takes with the same B patches:
    the losses of this package (`SegmentationLoss`, `Distiller`) give the same
    value and gradient, to float rounding, on any number of devices (but for
    a `Distiller` of `kind="dist"` on TensorFlow, whose intra-class term
    correlates each replica's share of the batch, not the whole batch). Under
    it, `fit_segmentation` drops an epoch's last, partial training batch (so
    use a `batch_size` the devices divide), and `predict_logits` (and so
    `evaluate_segmentation`) pads a batch the devices do not divide and drops
    the padding's outputs, so every patch counts exactly once.

    Random draws are the same too: on JAX one program draws for the whole
    batch, and on TensorFlow the U-Net's `RandomSymmetry` and
    `DeviceInvariantDropout` draw the whole batch's values on every replica
    and keep the replica's rows (Keras' own `Dropout` and random layers
    would repeat one replica's draws on the others). Validation pads
    its split with unannotated black patches: the metrics (and the best
    checkpoint) are exact, the mean `val_loss` counts a padded batch as a
    full one, and a `Distiller`'s KD term sees the padding.

    On TensorFlow it enters a `tf.distribute.MirroredStrategy` scope (a
    `TPUStrategy` on a TPU); on JAX it sets a `keras.distribution.DataParallel`
    with `keras.distribution.set_distribution`, and puts back the previous
    distribution on exit. Build, compile and fit the model inside the block.

    On several hosts (JAX only), where Keras' `KERAS_DISTRIBUTION_*`
    variables say there is more than one process, it first joins them
    (`initialize_processes`, whose docstring has the recipe) and then trains
    on every device of every process: `fit_segmentation` with
    `batch_size=B` trains as one process with the same `B` would, and only
    process 0 writes files. On TensorFlow it raises there: Keras 3's `fit`
    does not run under `MultiWorkerMirroredStrategy` (keras-team/keras#20585).

    Args:
        devices: `None` for every visible accelerator (GPUs or TPU cores; on a
            machine without any, every visible CPU device); an int for the
            first that many of them; or a list of device names as the backend
            spells them ("/gpu:0" on TensorFlow, "gpu:0" on JAX). On several
            processes, `None` only: every device of every process.

    Returns:
        A context manager yielding a `DataParallel`: `.num_replicas` (the
        number of devices), `.devices`, `.backend`, and `.strategy` (the
        `tf.distribute` strategy or the `keras.distribution` object).

    Example:

    Build and compile inside the block, then fit there too, e.g.
    `fit_segmentation(model, data, ..., batch_size=16 * parallel.num_replicas)`.

    >>> with data_parallel() as parallel:
    ...     model = compile_segmentation(build_student())
    >>> parallel.num_replicas  # one CPU here; the GPUs or TPU cores elsewhere
    1
    """
    parallel = _make_data_parallel(devices)
    if parallel.backend == "tensorflow":
        import tensorflow as tf

        current = tf.distribute.get_strategy() if tf.distribute.has_strategy() else None
        if current is not None and current is not parallel.strategy:
            raise ValueError(
                f"A tf.distribute strategy over {current.num_replicas_in_sync} device(s) is "
                f"in use already (use_all_devices() sets one for the whole session, or a "
                f"data_parallel block is open), and TensorFlow can't enter another inside "
                f"it: train under that one, or restart the runtime and call "
                f"data_parallel({devices!r}) without use_all_devices().")
        with parallel.strategy.scope():
            yield parallel
    else:
        previous = keras.distribution.distribution()
        keras.distribution.set_distribution(parallel.strategy)
        try:
            yield parallel
        finally:
            keras.distribution.set_distribution(previous)


def use_all_devices() -> DataParallel:
    """Makes the models built from here on train on every visible accelerator.

    The notebooks' one call for several devices: where the runtime has more
    than one GPU (Kaggle's "GPU T4 x2", a multi-GPU machine) or a TPU (or,
    without accelerators, more than one CPU device, as the tests make), it
    sets what `data_parallel()` enters for the rest of the session
    (`tf.distribute.experimental_set_strategy` on TensorFlow,
    `keras.distribution.set_distribution` on JAX), so the cells below build,
    compile, fit and predict as usual, each batch split evenly over the
    devices (see `data_parallel` for what equals one device's training).
    With one device, or none, it changes nothing. Either way it prints what
    it found.

    Returns:
        A `DataParallel`: `.num_replicas` is 1 when nothing changed.

    Example:

    >>> parallel = use_all_devices()  # doctest: +ELLIPSIS
    1 device (...): training runs on it as usual.
    """
    initialize_processes()  # before JAX starts, where several processes train together
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        visible = [d.name for d in gpus or tf.config.list_logical_devices("CPU")]
        several = len(visible) > 1 or (not gpus and _connect_tpu() is not None)
    else:
        visible = [str(d) for d in keras.distribution.list_devices()]
        several = len(visible) > 1
    if not several:
        print(f"1 device ({visible[0] if visible else backend}): training runs on it "
              f"as usual.")
        return DataParallel(backend, tuple(visible[:1]), 1, None)
    parallel = _make_data_parallel(None)
    if backend == "tensorflow":
        tf.distribute.experimental_set_strategy(parallel.strategy)
    else:
        keras.distribution.set_distribution(parallel.strategy)
    print(f"{parallel.num_replicas} devices ({', '.join(parallel.devices)}): the models "
          f"built from here on train data-parallel, each batch split evenly over them.")
    return parallel


def _make_data_parallel(devices):
    """The `DataParallel` of `devices` on this backend, not yet in use."""
    processes = initialize_processes()  # raises off JAX with several processes
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tensorflow_data_parallel(devices)
    if backend == "jax" and processes.num_processes > 1:
        return _multi_process_data_parallel(devices, processes.num_processes)
    if backend == "jax":
        names = _pick_devices(devices, keras.distribution.list_devices())
        distribution = keras.distribution.DataParallel(devices=names)
        return DataParallel("jax", tuple(names), len(names), distribution)
    raise ValueError(
        f"data_parallel supports the TensorFlow and JAX backends, and Keras runs "
        f"on {backend!r}: set KERAS_BACKEND=tensorflow or KERAS_BACKEND=jax "
        f"before importing keras.")


def _multi_process_data_parallel(devices, num_processes):
    """Every device of every process, ordered by process: each one's rows are contiguous.

    Each process feeds its own rows of a batch (`auto_shard_dataset=False`:
    `fit_segmentation` cuts them, see `hosts.local_rows`).
    """
    import jax

    if devices is not None:
        raise ValueError(f"On {num_processes} processes, data_parallel trains on every "
                         f"device of every process; got devices={devices!r}: pass None "
                         f"(and choose each process's devices with CUDA_VISIBLE_DEVICES).")
    ordered = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    names = [f"{d.platform}:{d.id}" for d in ordered]
    distribution = keras.distribution.DataParallel(devices=names, auto_shard_dataset=False)
    return DataParallel("jax", tuple(names), len(names), distribution)


def _tensorflow_data_parallel(devices):
    import tensorflow as tf

    if devices is None or isinstance(devices, int):
        tpu = _connect_tpu() if not tf.config.list_logical_devices("GPU") else None
        if tpu is not None:
            strategy = tf.distribute.TPUStrategy(tpu)
            names = [d.name for d in tf.config.list_logical_devices("TPU")]
            if devices is not None and devices != len(names):
                raise ValueError(f"On a TPU, data_parallel trains on all {len(names)} "
                                 f"cores; got devices={devices}. Pass devices=None.")
            return DataParallel("tensorflow", tuple(names), strategy.num_replicas_in_sync,
                                strategy)
        visible = (tf.config.list_logical_devices("GPU")
                   or tf.config.list_logical_devices("CPU"))
        names = _pick_devices(devices, [d.name for d in visible])
    else:
        names = _pick_devices(devices, None)
    strategy = _mirrored_strategy(tuple(names))
    return DataParallel("tensorflow", tuple(names), strategy.num_replicas_in_sync, strategy)


@functools.lru_cache(maxsize=None)
def _mirrored_strategy(names):
    """One `MirroredStrategy` per set of devices for the whole process.

    A second strategy over the same devices numbers its all-reduces from the
    same start as the first, and a model trained under it after one trained
    under the first aborts with "Shape mismatch in the collective instance".
    """
    import tensorflow as tf

    return tf.distribute.MirroredStrategy(list(names))


@functools.lru_cache(maxsize=None)
def _connect_tpu():
    """The TPU's cluster resolver when this machine has one, else `None` (once a process)."""
    if not (os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR")
            or os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio/0")):
        return None
    import tensorflow as tf

    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError):
        return None
    return resolver


def _pick_devices(devices, visible):
    if devices is None:
        return list(visible)
    if isinstance(devices, bool) or not isinstance(devices, (int, list, tuple)):
        raise TypeError(f"devices must be None, an int or a list of device names, "
                        f"got {devices!r}.")
    if isinstance(devices, int):
        if visible is None or not 1 <= devices <= len(visible):
            raise ValueError(f"devices={devices}: pass 1 to {len(visible or [])}, the "
                             f"devices visible ({visible}), or None for all of them.")
        return list(visible[:devices])
    if not devices:
        raise ValueError("devices is an empty list: pass None for every visible device.")
    return [str(d) for d in devices]


def replicas_in_sync():
    """How many `tf.distribute` replicas each compute a share of the loss (else 1).

    On JAX a `keras.distribution` step is one program over the whole batch, so
    the loss is already the global one and this is 1.
    """
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def replica_rows(draw, shape):
    """`draw(shape)` for a batch, as one device would draw it, whatever the replicas.

    `draw(shape)` must draw from a seed state every replica holds alike (a
    Keras `SeedGenerator`). Under `tf.distribute` with several replicas it is
    called with the whole batch's shape on each replica, and the replica's
    own rows are returned: the draws one device takes for the same batch.
    Elsewhere it is `draw(shape)`.
    """
    if keras.backend.backend() != "tensorflow":
        return draw(shape)
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return draw(shape)
    replicas, replica = context.num_replicas_in_sync, context.replica_id_in_sync_group
    rows = tf.cast(shape[0], tf.int32)
    # Every replica's row count, by summing one-hot vectors (replicas may differ
    # by one in the last, uneven batch of plain `fit`).
    sizes = tf.cast(context.all_reduce(
        tf.distribute.ReduceOp.SUM,
        tf.one_hot(replica, replicas) * tf.cast(rows, tf.float32)), tf.int32)
    offset = tf.reduce_sum(tf.where(tf.range(replicas) < replica, sizes, 0))
    batch = tf.stack([tf.reduce_sum(sizes), *[tf.cast(d, tf.int32) for d in shape[1:]]])
    return draw(batch)[offset : offset + rows]


def sum_over_replicas(value):
    """`value` summed over the `tf.distribute` replicas (itself elsewhere).

    Differentiable: the gradient of an all-reduced sum is the all-reduced sum of
    the replicas' gradients, so a loss built from it is the global loss on
    every replica.
    """
    if keras.backend.backend() != "tensorflow":
        return value
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def data_parallel_size(model=None):
    """The number of devices a batch is split over when `model` trains now."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        strategy = (model.distribute_strategy if model is not None
                    else tf.distribute.get_strategy())
        return strategy.num_replicas_in_sync
    distribution = keras.distribution.distribution() if keras.backend.backend() == "jax" else None
    if isinstance(distribution, keras.distribution.DataParallel):
        return int(np.prod(distribution.device_mesh.shape))
    return 1


def mixed_precision_policy() -> str:
    """The Keras dtype policy for training on this machine's accelerator.

    "mixed_bfloat16" where the hardware computes in bfloat16 (NVIDIA
    Ampere or newer, compute capability >= 8, and TPUs); "mixed_float16"
    on GPUs with float16 tensor cores only (Colab's T4, V100: compute
    capability 7), where Keras' `compile` adds loss scaling; "float32"
    on older GPUs and CPUs, where half precision is slower, not faster.
    Models are saved in float32 either way (`save_model`).

    Returns:
        A dtype policy name, for `with_dtype_policy`.

    Example:

    >>> mixed_precision_policy()  # on a CPU; "mixed_bfloat16" on an A100 or H100
    'float32'
    >>> model = with_dtype_policy(build_student(), mixed_precision_policy())
    """
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            device = jax.devices()[0]
            if device.platform == "tpu":
                return "mixed_bfloat16"
            capability = getattr(device, "compute_capability", None) if device.platform == "gpu" else None
            major = int(str(capability).split(".")[0]) if capability else 0
        elif backend == "tensorflow":
            import tensorflow as tf

            if tf.config.list_logical_devices("TPU"):
                return "mixed_bfloat16"
            gpus = tf.config.list_physical_devices("GPU")
            details = tf.config.experimental.get_device_details(gpus[0]) if gpus else {}
            major = (details.get("compute_capability") or (0, 0))[0]
        else:
            major = 0
    except Exception:  # a backend that can't describe its devices: stay exact
        major = 0
    return "mixed_bfloat16" if major >= 8 else "mixed_float16" if major == 7 else "float32"


def accelerator_names():
    """Names of the accelerators Keras trains on, e.g. ["NVIDIA H200"]; [] on a CPU."""
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            return [d.device_kind for d in jax.devices() if d.platform != "cpu"]
        if backend == "tensorflow":
            import tensorflow as tf

            tpus = tf.config.list_logical_devices("TPU")  # as mixed_precision_policy sees them
            if tpus:
                return [f"TPU ({d.name})" for d in tpus]
            return [tf.config.experimental.get_device_details(d).get("device_name", d.name)
                    for d in tf.config.list_physical_devices("GPU")]
        return [d for d in keras.distribution.list_devices() if "cpu" not in d.lower()]
    except Exception:  # a backend that can't list its devices: report the CPU
        return []
