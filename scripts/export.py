"""Exports the saved models to LiteRT (float32, float16, int8) and measures each.

For every model of `<output>/models/<name>.keras` (`--models`; by default the teacher and
the seed-0 students, `student_scratch_s0` and `student_distilled_s0`)
and every format: file size, batch-1 CPU latency (formats of one model interleaved),
and test mIoU5 / pixel accuracy, next to the Keras model. Prints a table and writes
`<output>/export.json`. Needs the TensorFlow backend (LiteRT conversion).

    python scripts/export.py --profile full --output results
    python scripts/export.py --profile tiny --output outputs/experiment   # after a tiny experiment

int8 is calibrated on 64 training patches (never test patches).
"""

import argparse
import json
import pathlib
import tempfile


import keras
import numpy as np

import flags
import runs
import utils

FORMATS = ("keras", "litert_float32", "litert_float16", "litert_int8")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="full", choices=sorted(utils.PROFILES))
    parser.add_argument("--output", default=str(utils.REPO_ROOT / "results"))
    parser.add_argument("--models", nargs="+",
                        default=["teacher", "student_scratch_s0", "student_distilled_s0"])
    parser.add_argument("--repeats", type=flags.count, default=20)
    args = parser.parse_args(argv)

    # refuses a folder of another profile's runs (the tiny profile into results/)
    profile = runs.load_profile(args.profile, output_dir=args.output)
    data = utils.profile_dataset(profile)
    size = profile.patch_size
    calibration = data.x_train[np.random.default_rng(0).permutation(len(data.x_train))[:64]]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            path = utils.RunFiles(profile.models_dir, name).model
            model = keras.models.load_model(path)
            predictors = {"keras": utils.make_predict_function(model)}
            sizes = {"keras": path.stat().st_size}
            for quantize in (None, "float16", "int8"):
                key = f"litert_{quantize or 'float32'}"
                exported = utils.export_litert(model, pathlib.Path(folder) / f"{name}_{key}.tflite",
                                               size, quantize=quantize,
                                               calibration_images=calibration)
                sizes[key] = exported.stat().st_size
                predictors[key] = utils.load_litert(exported)
            latency = utils.measure_latency(predictors, size, repeats=args.repeats)
            for key, predict in predictors.items():
                logits = np.concatenate([predict(data.x_test[i:i + 8])
                                         for i in range(0, len(data.x_test), 8)])
                scores = utils.iou_scores(data.y_test, logits.argmax(-1), n_classes=data.n_classes,
                                          labelled_classes=data.labelled_classes)
                rows.append({"model": name, "format": key, "size_mb": sizes[key] / 1e6,
                             "latency_ms": 1000 * latency[key], "miou5": scores["miou5"],
                             "pixel_acc": scores["pixel_acc"]})
                print(rows[-1], flush=True)
    report = {**utils.run_info(profile), "split": "test", "calibration": "64 training patches",
              "rows": rows}
    out = profile.output_dir / "export.json"
    utils.write_into_place(out, json.dumps(report, indent=1))
    print(utils.markdown_table(rows))
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
