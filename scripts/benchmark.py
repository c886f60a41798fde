"""Speed benchmark: training and inference throughput of teacher, student, distiller.

Prints a table and writes JSON (machine, backend, versions, settings, figures).
Runs on any Keras backend; on the GPU machine use `KERAS_BACKEND=jax`.

    python scripts/benchmark.py --output benchmarks/cpu.json
    KERAS_BACKEND=jax python scripts/benchmark.py --train-images 1024 \
        --variants reference,device_aug,bf16,bf16_b64,bf16_b64_spe8 --output $OUT/h200.json

Training variants change one thing at a time, from the `reference` (the
pipeline before issue #5: float32, batch 16, per-sample numpy flips and
rotations on the host, the loss read back after every step) to the settings
`utils` uses now; the teacher is timed under each, the student and the
distiller under the last, the distiller twice: running its teacher at every
step, and on the teacher's logits computed once (`distiller_cached`, what
`fit_segmentation` does; the time of that one pass is reported too).
Timings are wall-clock epochs of `fit` (each ends with a device
synchronisation) after an untimed, compiling one; student and distillers are
timed in turn, epoch by epoch, and each figure comes from its fastest epoch
(every epoch's time is in the JSON).
Compare figures as ratios within one run: machines are noisy.

`--data-parallel` times instead the training of teacher and student on one
device and on every visible one (`utils.data_parallel`), each device given the
last variant's batch (so N devices train on N times the batch), and reports the
scaling efficiency: images/s on N devices over N times images/s on one.

    KERAS_BACKEND=jax python scripts/benchmark.py --data-parallel --variants bf16_b64 \
        --train-images 1024 --output $OUT/data_parallel.json
"""

import argparse
import json
import pathlib
import platform
import resource
import time


import keras
import numpy as np

import flags
import utils

VARIANTS = {
    "reference": dict(precision="float32", batch=16, host_augment=True, sync=True),
    "device_aug": dict(precision="float32", batch=16),
    "bf16": dict(precision="mixed_bfloat16", batch=16),
    "bf16_b64": dict(precision="mixed_bfloat16", batch=64),
    "bf16_b64_spe8": dict(precision="mixed_bfloat16", batch=64, steps_per_execution=8),
}


class HostAugmentedSequence(utils.PatchSequence):
    """The reference pipeline: one numpy flip/rotation per sample, on the host."""

    def __getitem__(self, index):
        x, y = super().__getitem__(index)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        x, y = x.copy(), y.copy()
        for i, (k, flip) in enumerate(zip(rng.integers(0, 4, len(x)), rng.integers(0, 2, len(x)))):
            xi, yi = np.rot90(x[i], k), np.rot90(y[i], k)
            x[i], y[i] = (xi[:, ::-1], yi[:, ::-1]) if flip else (xi, yi)
        return x, y


class ReadLossEveryStep(keras.callbacks.Callback):
    """The reference's per-batch NaN check: the host waits for every step."""

    def on_train_batch_end(self, batch, logs=None):
        float(logs["loss"])


def build(role, variant, teacher=None):
    """A compiled teacher, student or distiller under a variant's settings."""
    keras.utils.set_random_seed(0)
    builder = utils.build_teacher if role == "teacher" else utils.build_student
    model = utils.with_dtype_policy(builder(augment=not variant.get("host_augment")),
                                    variant["precision"])
    if role == "distiller":
        model = utils.Distiller(
            teacher=utils.with_dtype_policy(teacher, variant["precision"]), student=model)
    return utils.compile_segmentation(
        model, steps_per_execution=variant.get("steps_per_execution", 1),
        labelled_classes=utils.LABELLED_CLASSES)


def one_epoch(model, x, y, variant, teacher_logits=None):
    """A function that trains `model` one epoch under `variant`."""
    kind = HostAugmentedSequence if variant.get("host_augment") else utils.PatchSequence
    sequence = kind(x, y, variant["batch"], teacher_logits=teacher_logits)
    callbacks = [ReadLossEveryStep()] if variant.get("sync") else []
    return lambda: model.fit(sequence, epochs=1, verbose=0, shuffle=False, callbacks=callbacks)


def images_per_second(runs, n_images, rounds, seconds=None):
    """Training images/s of each `one_epoch` function, timed in turn.

    After one untimed (compiling) epoch each, `rounds` rounds run one epoch
    of every function in turn, so a slow spell of a noisy machine hits them
    alike. Each figure is from the fastest epoch: interference only ever
    adds time (the advice of Python's `timeit`); on the 2-core development
    machine some epochs of the student and the distillers took ~10 s,
    whatever their work.

    Args:
        runs: dict mapping a name to a function that trains one epoch.
        n_images: images in an epoch.
        rounds: timed epochs of each function.
        seconds: optional dict that receives every epoch's seconds by name.

    Returns:
        A dict mapping each name to images/s of its fastest epoch.
    """
    for run in runs.values():
        run()
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    if seconds is not None:
        seconds.update(times)
    return {name: n_images / min(t) for name, t in times.items()}


def inference_images_per_second(model, batch, repeats):
    """Images/s of `utils.make_predict_function` on one batch (the result is fetched each time)."""
    predict = utils.make_predict_function(model)
    predict(batch)
    start = time.perf_counter()
    for _ in range(repeats):
        predict(batch)
    return repeats * len(batch) / (time.perf_counter() - start)


def litert_figures(teacher, student, size, repeats):
    """File sizes and batch-1 latency of the LiteRT exports next to Keras."""
    import tempfile

    figures, predictors = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for name, model in (("teacher", teacher), ("student", student)):
            keras_path = pathlib.Path(folder) / f"{name}.keras"
            utils.save_model(model, keras_path)
            litert_path = utils.export_litert(model, pathlib.Path(folder) / f"{name}.tflite", size)
            figures[f"size_{name}_keras_mb"] = keras_path.stat().st_size / 1e6
            figures[f"size_{name}_litert_mb"] = litert_path.stat().st_size / 1e6
            predictors[name] = utils.load_litert(litert_path)
    latency = utils.measure_latency(predictors, size, repeats=repeats)
    for name in predictors:
        figures[f"latency_{name}_litert_batch1_ms"] = 1000 * latency[name]
    figures["litert_latency_ratio_student_to_teacher"] = (
        figures["latency_student_litert_batch1_ms"] / figures["latency_teacher_litert_batch1_ms"])
    return figures


def data_parallel_figures(variant, x, y, epochs, seconds):
    """Training images/s of teacher and student on one and on every visible device.

    Each device gets `variant["batch"]` patches a step; an epoch keeps the
    whole batches of `x` on every device count (`data_parallel` needs them).

    Returns:
        A dict of figures: the device count, images/s on one and on all devices,
        and the scaling efficiency (images/s on N over N times images/s on one);
        only the device count when a single device is visible.
    """
    with utils.data_parallel() as parallel:
        n = parallel.num_replicas
    figures = {"data_parallel_devices": n}
    if n == 1:
        print(f"  data parallel: only one device is visible ({parallel.devices[0]}), "
              f"so there is nothing to scale over; nothing timed.", flush=True)
        return figures
    if keras.backend.backend() == "tensorflow" and variant.get("steps_per_execution", 1) > 1:
        raise SystemExit("--data-parallel on TensorFlow takes a variant of one step a call: "
                         "Keras fails to run more under a tf.distribute strategy "
                         "(keras-team/keras#19246); pass --variants with one, or "
                         "KERAS_BACKEND=jax.")
    keep = len(x) - len(x) % (variant["batch"] * n)
    if keep == 0:
        raise SystemExit(f"--train-images {len(x)} holds no batch of {variant['batch']} "
                         f"patches on each of {n} devices: pass at least "
                         f"{variant['batch'] * n}.")
    x, y = x[:keep], y[:keep]
    wide = {**variant, "batch": variant["batch"] * n}
    for role in ("teacher", "student"):
        rates = images_per_second({f"{role}_1_device": one_epoch(build(role, variant), x, y,
                                                                 variant)},
                                  len(x), epochs, seconds)
        with utils.data_parallel():
            rates.update(images_per_second(
                {f"{role}_{n}_devices": one_epoch(build(role, variant), x, y, wide)},
                len(x), epochs, seconds))
        one, many = rates[f"{role}_1_device"], rates[f"{role}_{n}_devices"]
        figures[f"train_{role}_1_device_images_per_s"] = one
        figures[f"train_{role}_{n}_devices_images_per_s"] = many
        figures[f"data_parallel_{role}_efficiency"] = many / (n * one)
        print(f"  {role}: {one:.1f} images/s on 1 device, {many:.1f} on {n} "
              f"(efficiency {many / (n * one):.2f})", flush=True)
    return figures


def peak_memory():
    """Peak accelerator memory (JAX) or host resident memory, in MB."""
    if keras.backend.backend() == "jax":
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            return {"device_peak_mb": stats["peak_bytes_in_use"] / 1e6}
    return {"host_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=flags.count, default=256, help="patch side")
    parser.add_argument("--train-images", type=flags.count, default=64,
                        help="random patches in a training epoch")
    parser.add_argument("--epochs", type=flags.count, default=2,
                        help="timed training epochs of each model (the fastest counts)")
    parser.add_argument("--variants", default="reference,device_aug",
                        help=f"comma-separated training variants of {sorted(VARIANTS)}; "
                             f"student and distiller are timed under the last")
    parser.add_argument("--inference-batch", type=flags.count, default=64)
    parser.add_argument("--repeats", type=flags.count, default=10)
    parser.add_argument("--no-litert", action="store_true", help="skip the LiteRT export")
    parser.add_argument("--data-parallel", action="store_true",
                        help="time only the training on one and on every visible device "
                             "(utils.data_parallel), under the last variant")
    parser.add_argument("--output", help="JSON file to write")
    args = parser.parse_args(argv)
    names = args.variants.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.train_images, args.size, args.size, 3), dtype=np.uint8)
    y = rng.integers(0, 6, (args.train_images, args.size, args.size), dtype=np.uint8)

    figures, epoch_seconds = {}, {}

    def save():
        """Writes what is measured so far: a run stopped early keeps its figures."""
        if args.output:
            path = pathlib.Path(args.output)
            path.parent.mkdir(parents=True, exist_ok=True)
            utils.write_into_place(path, json.dumps(report(args, names, figures, epoch_seconds),
                                                   indent=1))

    if args.data_parallel:
        figures.update(data_parallel_figures(VARIANTS[names[-1]], x, y, args.epochs,
                                             epoch_seconds))
        save()
        if args.output:
            print(f"Wrote {args.output}")
        return

    for name in names:
        teacher = build("teacher", VARIANTS[name])
        figures[f"train_teacher_{name}_images_per_s"] = images_per_second(
            {f"teacher_{name}": one_epoch(teacher, x, y, VARIANTS[name])}, len(x), args.epochs,
            epoch_seconds)[f"teacher_{name}"]
        print(f"  teacher, {name}: {figures[f'train_teacher_{name}_images_per_s']:.1f} images/s",
              flush=True)
        save()
    final = VARIANTS[names[-1]]
    student, distiller, cached = (build(role, final, teacher=teacher)
                                  for role in ("student", "distiller", "distiller"))
    utils.predict_logits(distiller.teacher, x[:1])  # compile
    start = time.perf_counter()  # what fit_segmentation does: the teacher runs once
    logits = utils.predict_logits(distiller.teacher, x, final["batch"])
    figures["teacher_logits_seconds"] = time.perf_counter() - start
    rates = images_per_second({
        "student": one_epoch(student, x, y, final),
        "distiller": one_epoch(distiller, x, y, final),
        "distiller_cached": one_epoch(cached, x, y, final, teacher_logits=logits),
    }, len(x), args.epochs, epoch_seconds)
    for role, rate in rates.items():
        figures[f"train_{role}_images_per_s"] = rate
        print(f"  {role}, {names[-1]}: {rate:.1f} images/s", flush=True)
    save()
    for role in ("distiller", "distiller_cached"):
        figures[f"{role}_epoch_over_student_epoch"] = (
            figures["train_student_images_per_s"] / figures[f"train_{role}_images_per_s"])

    keras.utils.set_random_seed(0)
    models = {"teacher": utils.build_teacher(), "student": utils.build_student()}
    latency = utils.measure_latency(models, input_size=args.size, repeats=args.repeats)
    batch = np.resize(x, (args.inference_batch, *x.shape[1:]))
    for name, model in models.items():
        figures[f"latency_{name}_batch1_ms"] = 1000 * latency[name]
        figures[f"infer_{name}_batch{args.inference_batch}_images_per_s"] = (
            inference_images_per_second(model, batch, args.repeats))
    figures["latency_ratio_student_to_teacher"] = latency["student"] / latency["teacher"]
    save()
    if keras.backend.backend() == "tensorflow" and not args.no_litert:
        figures.update(litert_figures(models["teacher"], models["student"], args.size,
                                      args.repeats))
        save()

    width = max(map(len, figures))
    print(f"{keras.backend.backend()} on {utils.run_info()['device']}; training under "
          f"{names[-1]}: {final}")
    for key, value in figures.items():
        print(f"  {key:{width}s} {value:10.3f}")
    if args.output:
        print(f"Wrote {args.output}")


def report(args, names, figures, epoch_seconds):
    """The JSON report: machine, versions, settings, the figures so far and
    the seconds of every timed training epoch."""
    result = {
        **utils.run_info(),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "numpy": np.__version__,
        "settings": {**vars(args), "variants": {n: VARIANTS[n] for n in names}},
        "figures": figures,
        "epoch_seconds": epoch_seconds,
        **peak_memory(),
    }
    if keras.backend.backend() == "jax":
        import jax

        result["jax"] = jax.__version__
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        result["tensorflow"] = tf.__version__
    return result


if __name__ == "__main__":
    main()
