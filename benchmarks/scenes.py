"""Whole-scene benchmark: peak memory and speed of segment_scene against predict_image.

Writes synthetic uint8 RGB GeoTIFF scenes (EPSG:32640, 0.5 m pixels, tiled and
deflate-compressed, written window by window so writing never holds a scene)
of the given sizes, then runs each measurement in a fresh Python process and
prints its peak resident memory (`ru_maxrss` of that child, from `os.wait4`)
and megapixels/s: `segment_scene` on every size, `predict_image` (the scene
read whole into memory first) on the sizes in `--compare-sizes`. Each child
loads the model and runs one untimed batch first, so the time is the scene's
alone; the memory includes the Python, TensorFlow and model baseline, which
the `baseline` column (peak before the scene) shows.

    python benchmarks/scenes.py --sizes 4000 8000 20000
    python benchmarks/scenes.py --sizes 4000 --compare-sizes 4000 --baseline-commit 8717172
    python benchmarks/scenes.py --sizes 4000 8000 --compare-sizes 4000 8000 --repeats 5

`--baseline-commit` also times `predict_image` as `utils.py` of that commit
had it (before `segment_scene`'s shared, band-by-band blending), for the
memory it needed. Figures vary with other load on the machine: compare them
within one run.
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "results" / "models" / "student_distilled_s0.keras"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4000, 8000, 20000],
                        help="scene sides in pixels (default: 4000 8000 20000)")
    parser.add_argument("--compare-sizes", type=int, nargs="*", default=[4000],
                        help="sizes to run predict_image on too; it holds the scene "
                        "in memory (default: 4000)")
    parser.add_argument("--baseline-commit", default=None,
                        help="also run predict_image from utils.py of this commit")
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--scenes", default=str(pathlib.Path(tempfile.gettempdir())
                                                / "sssi-scenes"),
                        help="folder for the synthetic scenes (kept for reruns)")
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1,
                        help="measure each function this many times, in alternating "
                        "order, and print the medians (default: 1)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    folder = pathlib.Path(args.scenes)
    baseline_utils = None
    if args.baseline_commit:  # that commit's utils.py (and package, if it had one)
        baseline_utils = folder / f"utils_{args.baseline_commit}" / "utils.py"
        baseline_utils.parent.mkdir(parents=True, exist_ok=True)
        listed = subprocess.run(["git", "-C", str(REPO), "ls-tree", "--name-only",
                                 args.baseline_commit, "utils.py", "aerialkd"],
                                check=True, capture_output=True, text=True).stdout.split()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.baseline_commit,
                                  *listed], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(baseline_utils.parent)], input=archive,
                       check=True)
    print(machine())
    print("load average (1, 5, 15 min) at the start: %.1f %.1f %.1f" % os.getloadavg())
    print(f"model {args.model}, tile {args.tile_size}, batch {args.batch_size}")
    print(f"{'size':>11} {'function':<26} {'seconds':>8} {'Mpx/s':>6} "
          f"{'peak RSS':>9} {'baseline':>9}")
    rows = []
    for size in args.sizes:
        scene = write_scene(folder / f"scene_{size}.tif", size)
        runs = [("segment_scene", None)]
        if size in args.compare_sizes:
            runs.append(("predict_image", None))
            if baseline_utils:
                runs.append((f"predict_image@{args.baseline_commit}", baseline_utils))
        for repeat in range(args.repeats):
            # alternate the order, so neither function always runs first
            for function, utils_path in runs[:: 1 if repeat % 2 == 0 else -1]:
                row = measure(args, scene, size, function, utils_path)
                rows.append(row)
                print(f"{size:>5}x{size:<5} {function:<26} {row['seconds']:8.1f} "
                      f"{row['mpx_per_s']:6.2f} {row['peak_rss_gib']:7.2f} G "
                      f"{row['baseline_rss_gib']:7.2f} G", flush=True)
    print("load average (1, 5, 15 min) at the end: %.1f %.1f %.1f" % os.getloadavg())
    if args.repeats > 1:
        summarize(rows)
    return rows


def summarize(rows):
    """Median Mpx/s of each function and size, and segment_scene's ratio to each."""
    print("\nmedians of the repeats, and segment_scene's median speed over each:")
    for size in sorted({row["size"] for row in rows}):
        speeds = {}
        for row in rows:
            if row["size"] == size:
                speeds.setdefault(row["function"], []).append(row["mpx_per_s"])
        ours = statistics.median(speeds["segment_scene"])
        for function, values in speeds.items():
            median = statistics.median(values)
            print(f"{size:>5}x{size:<5} {function:<26} {median:6.2f} Mpx/s "
                  f"(n={len(values)}, {min(values):.2f}-{max(values):.2f}); "
                  f"segment_scene / it: {ours / median:.2f}")


def machine():
    import keras
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (OSError, ValueError):
        memory = float("nan")
    return (f"{os.cpu_count()} CPUs ({cpu}), {memory:.0f} GiB, Python "
            f"{platform.python_version()}, TensorFlow {tf.__version__}, Keras "
            f"{keras.__version__} ({keras.backend.backend()}), "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


def write_scene(path, size, block=16, window=1024, seed=0):
    """Writes a `size`² uint8 RGB GeoTIFF of random `block`-pixel squares, window by window."""
    import numpy as np
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.tif")
    profile = {"driver": "GTiff", "height": size, "width": size, "count": 3,
               "dtype": "uint8", "crs": "EPSG:32640", "photometric": "RGB",
               "transform": Affine(0.5, 0, 500_000, 0, -0.5, 2_800_000),
               "tiled": True, "blockxsize": 256, "blockysize": 256,
               "compress": "deflate"}
    with rasterio.open(partial, "w", **profile) as dst:
        for top in range(0, size, window):
            rows = min(window, size - top)
            rng = np.random.default_rng([seed, top])
            coarse = rng.integers(0, 256, (3, -(-rows // block), -(-size // block)),
                                  dtype=np.uint8)
            pixels = coarse.repeat(block, axis=1).repeat(block, axis=2)[:, :rows, :size]
            dst.write(pixels, window=Window(0, top, size, rows))
    partial.rename(path)
    return path


def measure(args, scene, size, function, utils_path):
    """Runs one measurement in a fresh process; returns its figures and peak RSS."""
    command = [sys.executable, __file__, "--child", function, "--model", args.model,
               "--scenes", str(scene), "--tile-size", str(args.tile_size),
               "--batch-size", str(args.batch_size)]
    env = dict(os.environ)
    if utils_path:  # a baseline commit's code comes first on the child's path
        env["PYTHONPATH"] = os.pathsep.join(
            [str(utils_path.parent), *filter(None, [os.environ.get("PYTHONPATH")])])
    process = subprocess.Popen(command, stdout=subprocess.PIPE, env=env)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"{function} on {scene} failed (exit {process.returncode}).")
    row = json.loads(output.decode().strip().splitlines()[-1])
    row.update(size=size, function=function,
               mpx_per_s=size * size / 1e6 / row["seconds"],
               peak_rss_gib=usage.ru_maxrss * 1024 / 2**30)  # Linux: KiB
    return row


def child(args):
    """One measurement: load the model, warm up, run, print JSON."""
    import resource

    import keras
    import numpy as np

    import utils

    model = keras.saving.load_model(args.model)
    utils.predict_logits(model, np.zeros((args.batch_size, args.tile_size,
                                          args.tile_size, 3), np.uint8))  # warm-up
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
    scene = pathlib.Path(args.scenes)
    if args.child == "segment_scene":
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            utils.segment_scene(model, scene, pathlib.Path(folder) / "labels.tif",
                                tile_size=args.tile_size, batch_size=args.batch_size)
            seconds = time.perf_counter() - start
    else:
        import rasterio

        with rasterio.open(scene) as src:
            image = np.moveaxis(src.read(), 0, -1)
        start = time.perf_counter()
        utils.predict_image(model, image, tile_size=args.tile_size,
                            batch_size=args.batch_size)
        seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "baseline_rss_gib": baseline}))


if __name__ == "__main__":
    main()
