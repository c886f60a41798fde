"""Time one training step of the U-Net: precision, XLA and width, on this machine.

Builds `build_unet(width)`, compiles it as `compile_segmentation` does (Adam, the
segmentation loss, mIoU and pixel accuracy, 8 steps per call) with or without XLA,
fits one warm-up epoch of 8 steps on random 256x256 patches, then times two more
epochs and prints the seconds per step. Run it on an otherwise idle machine and
compare the rows of one run (a slow spell shifts every row of a run alike only if
they run together: run the variants back to back).

    python benchmarks/train_step.py                                  # the table below
    python benchmarks/train_step.py --widths 8 --variants bf16 bf16_xla
    KERAS_BACKEND=jax python benchmarks/train_step.py --variants bf16_xla f32_xla

Variants: "bf16" (mixed bfloat16, as the committed runs train), "f32" (float32),
each with "_xla" for `jit_compile=True` (on JAX, Keras always compiles with XLA).
"""

import argparse
import time

import keras
import numpy as np

import aerialkd

VARIANTS = ("bf16", "bf16_xla", "f32", "f32_xla")


def seconds_per_step(width, variant, batch=16, size=256, steps=8):
    """Seconds of one training step of `build_unet(width)` under `variant`."""
    policy = "float32" if variant.startswith("f32") else "mixed_bfloat16"
    keras.utils.set_random_seed(0)
    model = aerialkd.with_dtype_policy(aerialkd.build_unet(width), policy)
    aerialkd.compile_segmentation(model, steps_per_execution=steps,
                                  labelled_classes=aerialkd.LABELLED_CLASSES)
    if variant.endswith("_xla") or keras.backend.backend() == "jax":
        model.jit_compile = True
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch * steps, size, size, 3)).astype("uint8")
    y = rng.integers(0, 6, (batch * steps, size, size)).astype("uint8")
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)  # compiles
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=2, verbose=0)
    return (time.perf_counter() - start) / (2 * steps)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[8],
                        help="base widths (16: teacher, 8: student)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    args = parser.parse_args(argv)
    print(aerialkd.run_info())
    for width in args.widths:
        for variant in args.variants:
            print(f"width {width:2d} {variant:9s} {1000 * seconds_per_step(width, variant):7.0f} "
                  f"ms/step", flush=True)


if __name__ == "__main__":
    main()
