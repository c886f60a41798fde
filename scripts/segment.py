"""Segments a whole scene (GeoTIFF, JPEG or PNG of any size) into a label GeoTIFF.

Reads the scene band by band, so memory depends on its width, not its area;
writes a uint8 GeoTIFF of class indices with the scene's CRS and transform,
the palette as colour map and nodata 255, and optionally the class regions as
GeoJSON polygons. Prints a summary: size, seconds, megapixels/s, pixels per
class.

    python scripts/segment.py results/models/student_distilled_s0.keras scene.tif labels.tif
    python scripts/segment.py MODEL.keras scene.tif labels.tif --polygons labels.geojson
    python scripts/segment.py MODEL.keras rgbn.tif labels.tif --bands 3 2 1
    python scripts/segment.py MODEL.keras scene16.tif labels.tif --rescale 0 4095
"""

import argparse


import keras

import utils


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="\n".join(__doc__.splitlines()[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a .keras model returning logits, e.g. "
                        "results/models/student_distilled_s0.keras")
    parser.add_argument("scene", help="the scene: GeoTIFF (or any raster rasterio "
                        "reads), JPEG or PNG")
    parser.add_argument("output", help="the label GeoTIFF to write")
    parser.add_argument("--polygons", metavar="OUT.geojson",
                        help="also write the class regions as GeoJSON polygons")
    parser.add_argument("--min-area", type=int, default=0, metavar="PIXELS",
                        help="with --polygons: merge regions smaller than this "
                        "many pixels into their neighbour (default: keep all)")
    parser.add_argument("--tile-size", type=int, default=256,
                        help="tile side in pixels, a multiple of 16 (default: 256, "
                        "the training patch)")
    parser.add_argument("--overlap", type=int, default=None,
                        help="pixels shared by neighbouring tiles "
                        "(default: tile size // 4)")
    parser.add_argument("--batch-size", type=int, default=8,
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

    model = keras.saving.load_model(args.model)
    bars = []

    def progress(rows, height):
        if not bars:
            bars.append(keras.utils.Progbar(height, unit_name="row"))
        bars[0].update(rows)

    names, palette = scene_classes(model, args.classes)
    result = utils.segment_scene(
        model, args.scene, args.output, tile_size=args.tile_size, overlap=args.overlap,
        batch_size=args.batch_size, bands=args.bands, rescale=args.rescale,
        class_names=names, palette=palette,
        progress=None if args.quiet else progress)
    for line in summary(result, args.scene):
        print(line)
    if args.polygons:
        polygons = utils.polygonize(args.output, args.polygons, min_area=args.min_area)
        print(f"Polygons: {sum(polygons['features'].values())} written to "
              f"{polygons['path']}")
    return result


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
