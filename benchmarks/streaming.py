"""Streaming benchmark: memory and speed of `PatchStream` on a dataset larger than memory.

Writes (once) a synthetic flat-layout dataset of `--images` JPEG images of
`--size` x `--size` pixels with PNG masks in 3 classes, then, each in a fresh
subprocess so that its peak resident memory (`ru_maxrss`) is its own:

1. `iterate`: one epoch of batches of `load_dataset(..., in_memory=False)`'s
   training stream (every image decoded, cut and mapped to labels);
2. `train`: a student (`build_student`) trained `--train-steps` steps on that
   stream with `model.fit`, after a few untimed steps that compile it;
3. `tiny`: on the tiny profile's dataset (`make_tiny_dataset`, patches of 64,
   batch 4), training epochs of the same student on the in-memory patches
   (`PatchSequence`) and on the stream (`PatchStream`), alternated; the ratios
   compare the fastest and the median epochs within one run, and one epoch of
   batches without the model times the input paths alone.

    python benchmarks/streaming.py --data /tmp/sssi-streaming

Compare figures as ratios within one run: machines are noisy.
"""

import argparse
import json
import pathlib
import platform
import resource
import subprocess
import sys
import tempfile
import time


CLASSES = {"Field": "#C8B464", "Forest": "#1E7832", "Water": "#1E64C8"}


def generate(folder, n_images, size, seed=0):
    """Writes the synthetic dataset into `folder` unless it is there already."""
    import numpy as np
    from PIL import Image

    import utils

    folder = pathlib.Path(folder)
    done = folder / "generated.json"
    settings = {"images": n_images, "size": size, "seed": seed, "classes": CLASSES}
    if done.exists() and json.loads(done.read_text()) == settings:
        return folder, 0.0
    start = time.perf_counter()
    for name in ("images", "masks"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    names, palette = utils.read_classes(CLASSES)
    shades = (palette * 0.6 + 50).astype(np.uint8)
    rng = np.random.default_rng(seed)
    for i in range(n_images):
        labels = np.zeros((size, size), np.uint8)
        for _ in range(6):
            h, w = rng.integers(size // 16, size // 2, 2)
            y, x = rng.integers(0, size - h), rng.integers(0, size - w)
            labels[y : y + h, x : x + w] = rng.integers(1, len(names))
        image = shades[labels] + rng.integers(0, 24, (size, size, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / "images" / f"scene_{i:05d}.jpg", quality=90)
        Image.fromarray(utils.labels_to_rgb(labels, palette)).save(
            folder / "masks" / f"scene_{i:05d}.png")
    done.write_text(json.dumps(settings))
    return folder, time.perf_counter() - start


def peak_mib():
    """Peak resident memory of this process in MiB (`ru_maxrss` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args):
    """One measurement, in its own process; prints one JSON line."""
    import keras

    import utils

    imported = peak_mib()
    result = {"phase": args.child, "rss_after_import_mib": round(imported, 1)}
    if args.child in ("iterate", "train"):
        data = utils.load_dataset(args.data, args.patch_size, classes=CLASSES,
                                  val_fraction=0.05, test_fraction=0.05, in_memory=False)
        stream = data.stream("train", args.batch_size, cache_size=args.cache_size)
        result.update(source_images=len(data.files["train"]), patches=stream.num_patches,
                      batches=len(stream))
        if args.child == "iterate":
            start = time.perf_counter()
            for i in range(len(stream)):
                stream[i]
            seconds = time.perf_counter() - start
            result.update(seconds=round(seconds, 1),
                          source_images_per_s=round(len(data.files["train"]) / seconds, 1),
                          patches_per_s=round(stream.num_patches / seconds, 1))
        else:
            keras.utils.set_random_seed(0)
            model = utils.build_student(n_classes=data.n_classes)
            model.compile(optimizer=keras.optimizers.Adam(1e-3),
                          loss=utils.SegmentationLoss(n_classes=data.n_classes))
            model.fit(stream, epochs=1, steps_per_epoch=5, verbose=0)  # compiles
            start = time.perf_counter()
            model.fit(stream, epochs=1, steps_per_epoch=args.train_steps, verbose=0)
            seconds = time.perf_counter() - start
            result.update(steps=args.train_steps, seconds=round(seconds, 1),
                          patches_per_s=round(args.train_steps * args.batch_size / seconds, 1))
    else:
        result.update(tiny(args))
    result["peak_rss_mib"] = round(peak_mib(), 1)
    print(json.dumps(result), flush=True)


def tiny(args):
    """Epoch times of the same student on in-memory patches and on the stream."""
    import keras
    import numpy as np

    import utils

    profile = utils.PROFILES["tiny"]
    root = utils.make_tiny_dataset(tempfile.mkdtemp(prefix="sssi-tiny-"))
    memory = utils.load_dataset(root, profile["patch_size"])
    streamed = utils.load_dataset(root, profile["patch_size"], in_memory=False)
    batch = profile["batch_size"]
    inputs = {"in_memory": utils.PatchSequence(memory.x_train, memory.y_train, batch),
              "streaming": streamed.stream("train", batch)}
    models = {}
    for name in inputs:
        keras.utils.set_random_seed(0)
        models[name] = utils.build_student()
        models[name].compile(optimizer=keras.optimizers.Adam(profile["learning_rate"]),
                             loss=utils.SegmentationLoss())
        models[name].fit(inputs[name], epochs=1, verbose=0)  # compiles
    times = {name: [] for name in inputs}
    for _ in range(args.tiny_epochs):
        for name in inputs:
            start = time.perf_counter()
            models[name].fit(inputs[name], epochs=1, verbose=0)
            times[name].append(round(time.perf_counter() - start, 3))
    best = {name: min(t) for name, t in times.items()}
    median = {name: float(np.median(t)) for name, t in times.items()}
    data_seconds = {}  # one epoch of batches alone, no model: what the input path costs
    for name, sequence in inputs.items():
        start = time.perf_counter()
        for i in range(len(sequence)):
            sequence[i]
        sequence.on_epoch_end()
        data_seconds[name] = round(time.perf_counter() - start, 4)
    n = len(memory.x_train)
    return {"train_patches": n, "batch_size": batch, "patch_size": profile["patch_size"],
            "epoch_seconds": times,
            "patches_per_s": {k: round(n / v, 1) for k, v in best.items()},
            "streaming_time_over_in_memory": round(best["streaming"] / best["in_memory"], 3),
            "median_streaming_time_over_in_memory": round(
                median["streaming"] / median["in_memory"], 3),
            "data_only_epoch_seconds": data_seconds}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/tmp/sssi-streaming",
                        help="folder of the synthetic dataset (written once)")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--patch-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cache-size", type=int, default=16)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--tiny-epochs", type=int, default=8)
    parser.add_argument("--phases", default="iterate,train,tiny")
    parser.add_argument("--output", help="optional JSON file for the figures")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    import keras
    import tensorflow as tf

    folder, seconds = generate(args.data, args.images, args.size)
    print(f"Dataset: {args.images} JPEG images {args.size}x{args.size} + PNG masks in "
          f"{folder} ({'written in %.0f s' % seconds if seconds else 'already there'}).")
    results = {"machine": f"{platform.processor() or platform.machine()}, "
                          f"{__import__('os').cpu_count()} cores",
               "python": platform.python_version(), "tensorflow": tf.__version__,
               "keras": keras.__version__, "backend": keras.backend.backend(),
               "date": time.strftime("%Y-%m-%d"), "settings": vars(args), "phases": {}}
    for phase in args.phases.split(","):
        command = [sys.executable, __file__, "--child", phase, "--data", str(folder),
                   "--patch-size", str(args.patch_size), "--batch-size", str(args.batch_size),
                   "--cache-size", str(args.cache_size), "--train-steps", str(args.train_steps),
                   "--tiny-epochs", str(args.tiny_epochs)]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        figures = json.loads(out.strip().splitlines()[-1])
        results["phases"][phase] = figures
        print(json.dumps(figures), flush=True)
    if args.output:
        pathlib.Path(args.output).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
