"""Time the epochs of a real run: a student from scratch, then one distilled.

Trains the half-width student a few epochs from scratch, then distilled from the
committed teacher (its logits computed once, as `fit_segmentation` does), each with
`scripts/runs.py`'s `train`, the function the experiment scripts train with
(checkpoints, resumable randomness, validation every epoch), on the real data of
the `full` profile and the budget of `results/profile.json`. Prints the seconds of
each epoch and of its validation: the first epoch includes compilation, the others
show the cost of an epoch to set beside the training step alone
(`benchmarks/train_step.py`).

    KERAS_BACKEND=jax SSSI_DATA=../shared/data/aerial-dubai python benchmarks/epoch_time.py --epochs 5
"""

import argparse
import pathlib
import sys
import tempfile
import time

import keras

import utils

sys.path.insert(0, str(utils.REPO_ROOT / "scripts"))
import runs  # noqa: E402


class EpochTimer(keras.callbacks.Callback):
    """Prints the wall-clock seconds of each epoch and of its validation."""

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_test_begin(self, logs=None):
        self.validation = time.perf_counter()

    def on_test_end(self, logs=None):
        self.validation = time.perf_counter() - self.validation

    def on_epoch_end(self, epoch, logs=None):
        print(f"epoch {epoch + 1}: {time.perf_counter() - self.start:.2f} s "
              f"(validation {self.validation:.2f} s)", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--profile", default="full", choices=sorted(utils.PROFILES))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        output = pathlib.Path(folder)
        if args.profile == "full":  # the committed runs' budget and precision
            utils.write_into_place(output / "profile.json",
                                   (utils.REPO_ROOT / "results" / "profile.json").read_bytes())
        profile = runs.load_profile(args.profile, output)
        precision = runs.load_precision(profile)
        data = utils.profile_dataset(profile)
        print(f"{keras.backend.backend()}, {utils.run_info(profile)['device']}, {precision}, "
              f"{len(data.x_train)} training patches, batch {profile.batch_size}", flush=True)
        teacher = keras.models.load_model(utils.REPO_ROOT / "results" / "models" / "teacher.keras")
        for name, settings in (("scratch", {}),
                               ("distilled", dict(teacher=teacher, alpha=0.5, temperature=1.5))):
            print(f"== student {name}", flush=True)
            start = time.perf_counter()
            runs.train(name, profile, data, epochs=args.epochs, seed=0, precision=precision,
                       callbacks=[EpochTimer()], **settings)
            print(f"student {name}: {time.perf_counter() - start:.1f} s in all", flush=True)


if __name__ == "__main__":
    main()
