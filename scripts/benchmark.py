"""Speed benchmark: training and inference throughput of teacher, student, distiller.

Prints a table and writes JSON (machine, backend, versions, batch, precision, figures).
Runs on any Keras backend; on the GPU machine use `KERAS_BACKEND=jax`.

    python scripts/benchmark.py --output benchmarks/cpu.json
    KERAS_BACKEND=jax python scripts/benchmark.py --batch 16 --output $OUT/h200.json

Timings are wall-clock after warm-up (compilation excluded); each training figure
times one whole `fit` epoch, which ends with a device synchronisation. Compare
figures as ratios within one run: machines are noisy.
"""

import argparse
import json
import pathlib
import platform
import resource
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import utils  # noqa: E402


def training_images_per_second(model, x, y, batch_size):
    """Images/s of one timed epoch of `fit`, after one warm-up epoch."""
    sequence = utils.PatchSequence(x, y, batch_size, augment=True)
    model.fit(sequence, epochs=1, verbose=0)  # compiles
    start = time.perf_counter()
    model.fit(sequence, epochs=1, verbose=0)
    return len(x) / (time.perf_counter() - start)


def inference_images_per_second(model, batch, repeats):
    ops.convert_to_numpy(model.predict_on_batch(batch))
    start = time.perf_counter()
    for _ in range(repeats):
        ops.convert_to_numpy(model.predict_on_batch(batch))
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
    x = np.random.default_rng(1).integers(0, 256, (1, size, size, 3)).astype("float32")
    times = {name: [] for name in predictors}
    for name, predict in predictors.items():
        predict(x)
    for _ in range(repeats):
        for name, predict in predictors.items():
            start = time.perf_counter()
            predict(x)
            times[name].append(time.perf_counter() - start)
    for name in predictors:
        figures[f"latency_{name}_litert_batch1_ms"] = 1000 * float(np.median(times[name]))
    figures["litert_latency_ratio_student_to_teacher"] = (
        figures["latency_student_litert_batch1_ms"] / figures["latency_teacher_litert_batch1_ms"])
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
    parser.add_argument("--size", type=int, default=256, help="patch side")
    parser.add_argument("--batch", type=int, default=16, help="training batch size")
    parser.add_argument("--train-images", type=int, default=64,
                        help="images in the timed training epoch")
    parser.add_argument("--inference-batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--precision", default="float32",
                        help="Keras dtype policy, e.g. mixed_bfloat16")
    parser.add_argument("--output", help="JSON file to write")
    args = parser.parse_args(argv)

    keras.config.set_dtype_policy(args.precision)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.train_images, args.size, args.size, 3), dtype=np.uint8)
    y = rng.integers(0, 6, (args.train_images, args.size, args.size), dtype=np.uint8)

    teacher, student = utils.build_teacher(), utils.build_student()
    figures = {}
    for name, model in (("teacher", teacher), ("student", student)):
        utils.compile_segmentation(model)
        figures[f"train_{name}_images_per_s"] = training_images_per_second(
            model, x, y, args.batch)
    distiller = utils.compile_segmentation(
        utils.Distiller(teacher=teacher, student=utils.build_student()))
    figures["train_distiller_images_per_s"] = training_images_per_second(
        distiller, x, y, args.batch)
    latency = utils.measure_latency({"teacher": teacher, "student": student},
                                    input_size=args.size, repeats=args.repeats)
    batch = x[: args.inference_batch]
    if len(batch) < args.inference_batch:
        batch = np.resize(x, (args.inference_batch, *x.shape[1:]))
    for name, model in (("teacher", teacher), ("student", student)):
        figures[f"latency_{name}_batch1_ms"] = 1000 * latency[name]
        figures[f"infer_{name}_batch{args.inference_batch}_images_per_s"] = (
            inference_images_per_second(model, batch, args.repeats))
    figures["latency_ratio_student_to_teacher"] = (
        latency["student"] / latency["teacher"])
    if keras.backend.backend() == "tensorflow":
        figures.update(litert_figures(teacher, student, args.size, args.repeats))
    figures["distiller_epoch_over_student_epoch"] = (
        figures["train_student_images_per_s"] / figures["train_distiller_images_per_s"])

    report = {
        **utils.run_info(),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "numpy": np.__version__,
        "settings": vars(args),
        "figures": figures,
        **peak_memory(),
    }
    if keras.backend.backend() == "jax":
        import jax

        report["jax"] = jax.__version__
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        report["tensorflow"] = tf.__version__
    width = max(map(len, figures))
    print(f"{report['backend']} on {report['device']}, {args.precision}, batch {args.batch}")
    for key, value in figures.items():
        print(f"  {key:{width}s} {value:10.3f}")
    if args.output:
        path = pathlib.Path(args.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1))
        print(f"Wrote {path}")


if __name__ == "__main__":
    main()
