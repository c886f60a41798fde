"""Segments whole scenes (GeoTIFF, JPEG or PNG of any size) into label GeoTIFFs.

Reads each scene band by band, so memory depends on its width, not its area;
writes a uint8 cloud-optimized GeoTIFF of class indices with the scene's CRS
and transform, the palette as colour map and nodata 255 (--no-cog: a plain
tiled GeoTIFF), and optionally the class regions as GeoJSON polygons.

One scene and an output file name: writes that file and prints its size,
seconds, megapixels/s and pixels per class. Scenes (paths, a glob, a .txt list
of paths, STAC Item .json files) and an output folder: writes each scene's
<name>_labels.tif and a STAC Item sidecar there, manifest.jsonl and labels.vrt,
skipping scenes already done with the same model and options; one progress
bar over the scenes, a summary at the end, and exit status 1 if any failed.
They run in this process, on a local Dask cluster (--engine dask --workers N)
or on an existing one (--scheduler ADDRESS).

    python scripts/segment.py results/models/student_distilled_s0.keras scene.tif labels.tif
    python scripts/segment.py MODEL.keras scene.tif labels.tif --polygons labels.geojson
    python scripts/segment.py MODEL.keras rgbn.tif labels.tif --bands 3 2 1
    python scripts/segment.py MODEL.keras scene16.tif labels.tif --rescale 0 4095
    python scripts/segment.py MODEL.keras 'scenes/**/*.tif' labels/ --engine dask --workers 2
    python scripts/segment.py MODEL.keras scenes.txt labels/ --scheduler tcp://10.0.0.5:8786
"""

import argparse
import collections
import pathlib
import time
import warnings

import keras

import flags
import utils
from aerialkd.scene_batch import MANIFEST_NAME
from aerialkd.scene_engines import ENGINES


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="\n".join(__doc__.splitlines()[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a .keras model returning logits, e.g. "
                        "results/models/student_distilled_s0.keras")
    parser.add_argument("scenes", nargs="+", metavar="SCENE",
                        help="a scene (GeoTIFF or any raster rasterio reads, JPEG, PNG), "
                        "a glob pattern (quoted), a .txt file listing scenes, or a STAC "
                        "Item .json (its 'visual', 'image' or 'data' asset)")
    parser.add_argument("output", help="the label GeoTIFF to write (one scene), or a "
                        "folder for the outputs of each scene")
    parser.add_argument("--polygons", nargs="?", const="", metavar="OUT.geojson",
                        help="also write the class regions as GeoJSON polygons: to "
                        "OUT.geojson (one scene; default: OUTPUT with .geojson), or "
                        "beside each label raster (a folder)")
    parser.add_argument("--min-area", type=flags.at_least_zero, default=0, metavar="PIXELS",
                        help="with --polygons and one scene: merge regions smaller than "
                        "this many pixels into their neighbour (default: keep all)")
    parser.add_argument("--engine", choices=ENGINES, default="local",
                        help="where the scenes of a folder run: this process (local, "
                        "default), a local Dask cluster (dask) or Ray actors (ray)")
    parser.add_argument("--workers", type=flags.count, default=None,
                        help="processes for --engine dask or ray (default: one per core)")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="run on an existing Dask cluster, e.g. tcp://10.0.0.5:8786 "
                        "(the model, scenes and output folder on a shared file system)")
    parser.add_argument("--retries", type=flags.at_least_zero, default=2,
                        help="times a scene runs again after its worker died (default: 2)")
    parser.add_argument("--no-cog", action="store_true",
                        help="plain tiled GeoTIFFs instead of cloud-optimized ones")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo scenes already done with the same model and options "
                        "(one scene: overwrite OUTPUT even if it is no label raster)")
    parser.add_argument("--tile-size", type=flags.count, default=256,
                        help="tile side in pixels, a multiple of 16 (default: 256, "
                        "the training patch)")
    parser.add_argument("--overlap", type=flags.at_least_zero, default=None,
                        help="pixels shared by neighbouring tiles "
                        "(default: tile size // 4)")
    parser.add_argument("--batch-size", type=flags.count, default=8,
                        help="tiles per forward pass (default: 8)")
    parser.add_argument("--bands", type=int, nargs=3, default=(1, 2, 3),
                        metavar=("R", "G", "B"),
                        help="1-based band indices of red, green, blue (default: 1 2 3)")
    parser.add_argument("--rescale", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="map LOW..HIGH linearly to 0..255, for scenes that are "
                        "not uint8 (e.g. uint16)")
    parser.add_argument("--classes", metavar="classes.json",
                        help="the model's classes and colours (Supervisely's classes.json); "
                             "default: the Dubai classes for a six-class model, else "
                             "generic names")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if not one_scene(args.scenes, args.output):
        return segment_many(args)
    if args.engine != "local" or args.workers or args.scheduler:
        raise SystemExit("--engine, --workers and --scheduler run scenes into an output "
                         "folder; pass a folder instead of the file name "
                         f"{args.output}.")
    output = pathlib.Path(args.output)
    if output.exists() and not args.overwrite and not is_label_raster(output):
        raise SystemExit(f"{output} exists and is not a label raster (one uint8 band "
                         f"with class names); not overwriting it. Name a new output "
                         f"file, pass --overwrite, or pass a folder to segment several "
                         f"scenes.")
    polygons = None if args.polygons is None else pathlib.Path(
        args.polygons or output.with_suffix(".geojson"))
    if polygons is not None and polygons.exists() and not args.overwrite:
        raise SystemExit(f"{polygons} exists; not overwriting it. Name another "
                         f"--polygons file, or pass --overwrite.")
    model = keras.saving.load_model(args.model)
    bars = []

    def progress(rows, height):
        if not bars:
            bars.append(keras.utils.Progbar(height, unit_name="row"))
        bars[0].update(rows)

    names, palette = scene_classes(model, args.classes)
    (scene,) = args.scenes
    result = utils.segment_scene(
        model, scene, args.output, tile_size=args.tile_size, overlap=args.overlap,
        batch_size=args.batch_size, bands=args.bands, rescale=args.rescale,
        class_names=names, palette=palette, cog=not args.no_cog,
        progress=None if args.quiet else progress)
    for line in summary(result, scene):
        print(line)
    if polygons is not None:
        polygons = utils.polygonize(args.output, polygons, min_area=args.min_area)
        print(f"Polygons: {sum(polygons['features'].values())} written to "
              f"{polygons['path']}")
    return result


def one_scene(scenes, output):
    """Whether the command names one scene file and an output file (not a folder)."""
    path = pathlib.Path(output)
    if path.suffix.lower() not in (".tif", ".tiff"):
        if path.is_file() or path.suffix.lower() in NOT_OUTPUTS:
            what = "is a file" if path.is_file() else "names an image, a list or a model"
            raise SystemExit(f"{output} {what}, and the last argument is the output: a "
                             f".tif for one scene, or a folder for several (was it left "
                             f"out?).")
        return False
    (scene, *more) = scenes
    pattern = any(c in scene for c in "*?[") and not pathlib.Path(scene).exists()
    if more or pattern or \
            pathlib.Path(scene).suffix.lower() in (".txt", ".json"):
        raise SystemExit(f"{output} is a file name, but {' '.join(scenes)} name several "
                         f"scenes (or may): pass an output folder for them.")
    return True


NOT_OUTPUTS = (".jpg", ".jpeg", ".png", ".json", ".txt", ".geojson", ".keras")
"""Suffixes of an output argument that is surely not a folder: a scene, a list, a model."""


def is_label_raster(path):
    """Whether `path` is a label raster as segment_scene writes it (safe to overwrite)."""
    import rasterio

    try:
        with warnings.catch_warnings(), rasterio.open(path) as src:
            warnings.simplefilter("ignore")
            return src.count == 1 and src.dtypes[0] == "uint8" and \
                "CLASS_NAMES" in src.tags()
    except rasterio.errors.RasterioIOError:
        return False


def segment_many(args):
    """The scenes into the output folder (utils.segment_scenes); exits 1 if any failed."""
    if args.polygons:
        raise SystemExit("With an output folder, each scene's polygons go beside its "
                         f"labels: pass --polygons without a file name (got "
                         f"{args.polygons}).")
    if args.min_area:
        raise SystemExit("--min-area applies to one scene and an output file; the "
                         "polygons of a folder keep every region.")
    if args.scheduler and args.engine != "local":
        raise SystemExit(f"--scheduler {args.scheduler} runs on that Dask cluster; "
                         f"drop --engine {args.engine}.")
    names, palette = scene_classes(keras.saving.load_model(args.model), args.classes)
    started = time.perf_counter()
    records = utils.segment_scenes(
        args.model, args.scenes, args.output, engine=args.scheduler or args.engine,
        workers=args.workers, tile_size=args.tile_size, overlap=args.overlap,
        batch_size=args.batch_size, bands=args.bands, rescale=args.rescale,
        class_names=names, palette=palette, cog=not args.no_cog,
        overwrite=args.overwrite, retries=args.retries,
        polygons=args.polygons is not None, progress=not args.quiet)
    for line in batch_summary(records, time.perf_counter() - started, args.output):
        print(line)
    if any(record["status"] == "failed" for record in records):
        raise SystemExit(1)
    return records


def scene_classes(model, classes):
    """Class names and colours for the label raster.

    A `classes.json` (or nothing: the Dubai classes, those of the committed models)
    names them; a model with another number of outputs and no `classes` gets generic
    names and colours.
    """
    n_classes = model.output_shape[-1]
    if classes is None and n_classes != len(utils.CLASSES):
        return None, None
    names, palette = utils.read_classes(classes)
    if len(names) != n_classes:
        raise SystemExit(f"{classes or 'The Dubai classes'} name {len(names)} classes, "
                         f"but the model predicts {n_classes}: pass --classes with its "
                         f"dataset's classes.json.")
    return names, palette


def batch_summary(records, seconds, output):
    """The lines printed after many scenes: counts, time, scenes/hour, each failure."""
    counts = collections.Counter(record["status"] for record in records)
    rate = f", {3600 * counts['ok'] / seconds:,.0f} scenes/hour" if counts["ok"] else ""
    lines = [f"{counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed "
             f"of {len(records)} scenes in {seconds:.1f} s{rate} -> "
             f"{pathlib.Path(output) / MANIFEST_NAME}"]
    lines += [f"  failed: {record['source']}: {record['error']}"
              for record in records if record["status"] == "failed"]
    return lines


def summary(result, scene):
    """The lines printed after a scene: size, time, speed, pixels per class."""
    pixels = result["height"] * result["width"]
    lines = [
        f"{scene}: {result['width']} x {result['height']} pixels "
        f"({pixels / 1e6:.1f} Mpx) in {result['seconds']:.1f} s, "
        f"{pixels / 1e6 / result['seconds']:.2f} Mpx/s -> {result['path']}",
    ]
    counts = dict(result["class_pixels"], nodata=result["nodata_pixels"])
    width = max(map(len, counts))
    for name, count in counts.items():
        lines.append(f"  {name:<{width}} {count:>14,d} px {100 * count / pixels:6.2f} %")
    return lines


if __name__ == "__main__":
    main()
