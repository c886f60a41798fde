"""Dead units of thin U-Nets at initialization: why width 2 is left out of issue #35.

Every level of `utils.build_unet` is two 3x3 ReLU convolutions, and everything the
model sees of its input passes through the top level's second convolution
(`down0_conv2`: the first skip connection, and the pooled input of every level
below). A ReLU channel whose pre-activation is negative on every pixel outputs
zero and gets no gradient, so training cannot bring it back; when all of that
layer's channels are so, the logits hardly depend on the image. The narrower the
layer, the likelier this is at initialization: `down0_conv2` has 2 channels at
base width 2, 4 at width 4 and 8 at the committed student's width 8.

For each width and seed, this builds the model as the scripts do
(`keras.utils.set_random_seed(seed)`, then `utils.build_unet(width)`) and counts,
on the validation patches, the channels of the top level's two convolutions that
are positive on more than `--threshold` of the pixels; with `--models`, the same
for saved models (e.g. a trained run's best checkpoint). Inference only: a minute
or two on a CPU. Prints each model's counts and writes `<output>/dead_units.json` (or
`<output>/<--name>`) with the machine, backend and versions:

    python scripts/dead_units.py --output results
    python scripts/dead_units.py --output outputs/dead_units --models runs/models/student_scratch_w2_s0.keras
    python scripts/dead_units.py --profile tiny --output outputs/dead_units   # a dry run
"""

import argparse
import json
import pathlib

import keras

import utils

LAYERS = ("down0_conv1", "down0_conv2")
WIDTHS = (2, 4, 8)
SEEDS = tuple(range(10))


def active_shares(model, images, layers=LAYERS, batch_size=16):
    """For each layer, the share of pixels on which each of its channels is positive.

    Args:
        model: a Keras model with the named layers.
        images: `(N, H, W, 3)` images, as the model takes them.
        layers: names of the layers whose outputs are counted.
        batch_size: images per forward pass.

    Returns:
        `{layer name: [share of channel 0, share of channel 1, ...]}`, each share in
        `[0, 1]`, over every pixel of every image.
    """
    probe = keras.Model(model.input, {name: model.get_layer(name).output for name in layers})
    outputs = probe.predict(images, batch_size=batch_size, verbose=0)
    return {name: [float(s) for s in (outputs[name] > 0).mean(axis=(0, 1, 2))]
            for name in layers}


def active_count(shares, threshold):
    """How many channels are positive on more than `threshold` of the pixels."""
    return sum(share > threshold for share in shares)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="full", choices=sorted(utils.PROFILES))
    parser.add_argument("--output", required=True, help="folder of the JSON file")
    parser.add_argument("--name", default="dead_units.json",
                        help="name of the JSON file in --output (default dead_units.json)")
    parser.add_argument("--widths", type=int, nargs="+", default=list(WIDTHS))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--threshold", type=float, default=0.05,
                        help="a channel is active when positive on more than this share "
                             "of the pixels (default 0.05)")
    parser.add_argument("--models", type=pathlib.Path, nargs="*", default=[],
                        help="saved models (.keras) to count as well")
    args = parser.parse_args(argv)
    if not 0 <= args.threshold < 1:
        parser.error(f"--threshold must be in [0, 1), got {args.threshold}")
    if pathlib.Path(args.name).name != args.name or not args.name.endswith(".json"):
        parser.error(f"--name must be a file name ending in .json, got {args.name!r}")
    missing = [str(path) for path in args.models if not path.is_file()]
    if missing:
        parser.error(f"--models: no such file {missing}")
    output = pathlib.Path(args.output)
    profile = utils.load_profile(args.profile, output_dir=output)
    data = utils.profile_dataset(profile)
    images = data.x_val
    print(f"{len(images)} validation patches of {data.patch_size}x{data.patch_size}; a "
          f"channel is active when positive on more than {args.threshold:.0%} of their "
          f"pixels.", flush=True)
    rows = []
    for width in args.widths:
        for seed in args.seeds:
            keras.utils.set_random_seed(seed)
            model = utils.build_unet(width, name="student")
            rows.append({"model": f"build_unet({width})", "width": width, "seed": seed,
                         "shares": active_shares(model, images)})
    for path in args.models:
        rows.append({"model": path.name, "shares": active_shares(
            keras.models.load_model(path), images)})
    for row in rows:
        row["active"] = {name: active_count(shares, args.threshold)
                         for name, shares in row["shares"].items()}
        counts = ", ".join(f"{name} {n} of {len(row['shares'][name])}"
                           for name, n in row["active"].items())
        seed = f" seed {row['seed']}" if "seed" in row else ""
        print(f"{row['model']}{seed}: active channels {counts}", flush=True)
    for width in args.widths:
        dead = [row["seed"] for row in rows
                if row.get("width") == width and row["active"][LAYERS[-1]] == 0]
        print(f"width {width}: {LAYERS[-1]} has no active channel for {len(dead)} of "
              f"{len(args.seeds)} seeds {dead}", flush=True)
    result = {
        "threshold": args.threshold, "layers": list(LAYERS), "images": "validation",
        "patches": len(images), "patch_size": data.patch_size,
        "profile": profile.name, **utils.run_info(), "rows": rows,
    }
    output.mkdir(parents=True, exist_ok=True)
    utils.write_into_place(output / args.name, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
