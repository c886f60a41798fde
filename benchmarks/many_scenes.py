"""Many-scenes benchmark: scenes per hour of `segment_scenes`, one process against Dask.

Writes `--scenes` synthetic uint8 RGB GeoTIFFs of `--size` x `--size` pixels
(`benchmarks/scenes.py`'s writer: EPSG:32640, tiled, deflate), then times
`segment_scenes` on all of them, each run in a fresh Python process into an
empty output folder:

- `local`: this process, the scenes one after another (TensorFlow's own
  thread pools: all the cores);
- `dask`: a `dask.distributed.LocalCluster` of `--workers` processes of one
  thread, each loading the model once;

and, for the engine's start-up cost, both on one `--tile-size` scene per
worker (so that every worker starts TensorFlow and loads the model): the
difference of their times is what Dask adds before (starting the cluster,
importing TensorFlow and loading the model in each worker) and after (closing
it). Scenes per hour are counted over the whole call, start-up
included, and over the steady state (the call less the start-up cost). The
CPU time of each call (its process and all under it, Dask's workers too)
measures the work itself, which other load on the machine slows but does not
add to.

    python benchmarks/many_scenes.py --scenes 16 --size 2048 --repeats 2

Figures vary with other load on the machine: the script prints `uptime` before
and after, and alternates the engines' order between repeats.
"""

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # for the children and Dask's workers

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_MODEL = HERE.parent / "results" / "models" / "student_distilled_s0.keras"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=16, help="scenes (default: 16)")
    parser.add_argument("--size", type=int, default=2048,
                        help="scene side in pixels (default: 2048)")
    parser.add_argument("--workers", type=int, default=2,
                        help="Dask worker processes (default: 2)")
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--folder", default=str(pathlib.Path(tempfile.gettempdir())
                                                / "sssi-many-scenes"),
                        help="folder for the synthetic scenes (kept for reruns)")
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1,
                        help="times to run each measurement, in alternating order "
                        "(default: 1)")
    parser.add_argument("--child", nargs=3, metavar=("ENGINE", "SOURCES", "DST"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    from scenes import machine, write_scene  # benchmarks/scenes.py, beside this script

    folder = pathlib.Path(args.folder)
    many = folder / f"{args.scenes}x{args.size}"
    for i in range(args.scenes):
        write_scene(many / f"scene_{i:03d}.tif", args.size)
    tiny = folder / f"{args.workers}x{args.tile_size}"
    for i in range(args.workers):
        write_scene(tiny / f"scene_{i:03d}.tif", args.tile_size)
    print(machine())
    print(f"uptime at the start: {uptime()}")
    print(f"model {args.model}, tile {args.tile_size}, batch {args.batch_size}, "
          f"{args.scenes} scenes of {args.size}x{args.size} "
          f"({args.scenes * args.size**2 / 1e6:.0f} Mpx), dask: {args.workers} workers "
          f"of 1 thread")
    print(f"{'run':<20} {'scenes':>6} {'seconds':>8} {'scenes/hour':>11} {'Mpx/s':>6} "
          f"{'CPU s':>7} {'Mpx/CPU s':>9}")
    runs = [("local", many), ("dask", many), ("local", tiny), ("dask", tiny)]
    rows = []
    for repeat in range(args.repeats):
        for engine, sources in runs[:: 1 if repeat % 2 == 0 else -1]:
            row = measure(args, engine, sources)
            rows.append(row)
            label = f"{engine} ({'tiny' if sources == tiny else 'all'})"
            print(f"{label:<20} {row['scenes']:>6} {row['seconds']:8.1f} "
                  f"{3600 * row['scenes'] / row['seconds']:11.0f} "
                  f"{row['pixels'] / 1e6 / row['seconds']:6.2f} "
                  f"{row['cpu_seconds']:7.1f} "
                  f"{row['pixels'] / 1e6 / row['cpu_seconds']:9.3f}", flush=True)
    print(f"uptime at the end: {uptime()}")
    summarize(rows, args, many, tiny)
    return rows


def measure(args, engine, sources):
    """One `segment_scenes` call in a fresh process, into an empty folder.

    Besides its wall time, the CPU time (user + system) of the process and of
    every process under it (Dask's nanny and workers), from `os.wait4`: the
    work a call costs, whatever else the machine runs meanwhile.
    """
    with tempfile.TemporaryDirectory() as dst:
        command = [sys.executable, __file__, "--child", engine, str(sources), dst,
                   "--model", args.model, "--tile-size", str(args.tile_size),
                   "--batch-size", str(args.batch_size), "--workers", str(args.workers)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE)
        output = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{engine} on {sources} failed.")
    row = json.loads(output.decode().strip().splitlines()[-1])
    return dict(row, engine=engine, sources=str(sources),
                cpu_seconds=usage.ru_utime + usage.ru_stime)


def child(args):
    """Runs `segment_scenes` once; prints its time and what it did as JSON."""
    import numpy as np

    import utils

    engine, sources, dst = args.child
    start = time.perf_counter()
    records = utils.segment_scenes(
        args.model, str(pathlib.Path(sources) / "*.tif"), dst, engine=engine,
        workers=args.workers if engine == "dask" else None, tile_size=args.tile_size,
        batch_size=args.batch_size, progress=False)
    seconds = time.perf_counter() - start
    if any(record["status"] != "ok" for record in records):
        raise SystemExit(f"not every scene was segmented: {records}")
    pixels = sum(int(np.sum(list(record["class_pixels"].values()))) for record in records)
    print(json.dumps({"seconds": seconds, "scenes": len(records), "pixels": pixels,
                      "scene_seconds": [record["seconds"] for record in records]}))


def summarize(rows, args, many, tiny):
    """Medians: scenes per hour (whole call and steady state) and Dask's start-up cost."""
    def median(engine, sources, key="seconds"):
        return statistics.median(row[key] for row in rows if
                                 (row["engine"], row["sources"]) == (engine, str(sources)))

    startup = median("dask", tiny) - median("local", tiny)
    startup_cpu = median("dask", tiny, "cpu_seconds") - median("local", tiny, "cpu_seconds")
    print(f"\nmedians of {args.repeats} run(s):")
    print(f"  {args.workers} scenes of {args.tile_size}x{args.tile_size}: local "
          f"{median('local', tiny):.1f} s, dask {median('dask', tiny):.1f} s -> Dask's "
          f"start-up and shut-down cost {startup:.1f} s ({startup_cpu:.1f} CPU s)")
    for engine in ("local", "dask"):
        seconds = median(engine, many)
        steady = seconds - (startup if engine == "dask" else 0.0)
        cpu = median(engine, many, "cpu_seconds") - (startup_cpu if engine == "dask" else 0)
        print(f"  {engine:<5} {args.scenes} scenes in {seconds:.1f} s: "
              f"{3600 * args.scenes / seconds:.0f} scenes/hour over the call, "
              f"{3600 * args.scenes / steady:.0f} in the steady state "
              f"({args.scenes * args.size**2 / 1e6 / steady:.2f} Mpx/s); "
              f"{cpu / args.scenes:.1f} CPU s a scene in the steady state")


def uptime():
    if shutil.which("uptime"):
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return "load average %.2f %.2f %.2f" % os.getloadavg()


if __name__ == "__main__":
    main()
