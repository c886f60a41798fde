"""Trains a tiny U-Net with `fit_segmentation` under `data_parallel`, as one process of a run.

`test_hosts.py` runs it alone (one process) and as two JAX processes on
localhost, each with one CPU device, joined through Keras' variables:

    python tests/multihost_check.py DATA_ROOT OUT [straight]  # one process
    KERAS_DISTRIBUTION_JOB_ADDRESSES=localhost:PORT KERAS_DISTRIBUTION_NUM_PROCESSES=2 \\
        KERAS_DISTRIBUTION_PROCESS_ID=0 python tests/multihost_check.py DATA_ROOT OUT  # and =1

Every process trains the same global batches twice: straight through, then
interrupted after the first epoch and resumed (unless told `straight`: the
reference run of one process needs only the first); after the `data_parallel` block
it loads the saved model and predicts with it. The runs' files go under
`OUT/runs`, and each process records what it wrote there (Python's audit
hooks: `open` for writing, `mkdir`, `rename`, `remove`, `rmtree`). Each writes
its initial and final weights to `OUT/report/process_<id>.npz` and prints one
line, `RESULTS {json}`.
"""

import dataclasses
import json
import os
import pathlib
import sys

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import aerialkd  # noqa: E402

DATA_ROOT, OUT = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
RESUME = sys.argv[3:] != ["straight"]
BATCH = 4  # global: 2 rows on each of two processes
EPOCHS = 2
WRITE_EVENTS = {"os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree",
                "os.truncate"}
RUNS = os.path.abspath(OUT / "runs")
writes = []


def record_writes(event, args):
    """Python's audit hook: every change this process makes under `OUT/runs`."""
    if event == "open" and isinstance(args[0], (str, os.PathLike)):
        mode = args[1] if isinstance(args[1], str) else ""
        flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
        changes = any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR)
    else:
        changes = event in WRITE_EVENTS and args and isinstance(args[0], (str, os.PathLike))
    if changes and os.path.abspath(os.fspath(args[0])).startswith(RUNS):
        writes.append([event, os.fspath(args[0])])
        if event == "os.rename":  # a file written whole, then renamed: its name too
            writes.append([event, os.fspath(args[1])])


class Disconnect(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("runtime disconnected")


def small(data):
    """24 training patches (6 batches) and 10 validation ones (4 + 4 + 2)."""
    return dataclasses.replace(data, x_train=data.x_train[:24], y_train=data.y_train[:24],
                               x_val=data.x_val[:10], y_val=data.y_val[:10])


def fit(data, folder, callbacks=()):
    keras.utils.set_random_seed(0)
    model = aerialkd.compile_segmentation(aerialkd.build_unet(2, n_classes=data.n_classes),
                                          labelled_classes=data.labelled_classes)
    history = aerialkd.fit_segmentation(model, data, epochs=EPOCHS, output_dir=folder,
                                        name="m", batch_size=BATCH, seed=0, verbose=0,
                                        callbacks=callbacks)
    return model, history


def main():
    sys.addaudithook(record_writes)
    with aerialkd.data_parallel() as parallel:
        processes = aerialkd.initialize_processes()  # what data_parallel joined
        data = small(aerialkd.load_dataset(DATA_ROOT, patch_size=32))
        keras.utils.set_random_seed(0)
        initial = aerialkd.build_unet(2, n_classes=data.n_classes).get_weights()
        model, history = fit(data, OUT / "runs" / "straight")
        resumed, resumed_history, interrupted = model, history, False
        if RESUME:
            try:
                fit(data, OUT / "runs" / "resumed", callbacks=[Disconnect()])
            except KeyboardInterrupt:
                pass
            interrupted = (OUT / "runs" / "resumed" / "backup_m").exists()
            resumed, resumed_history = fit(data, OUT / "runs" / "resumed")
    saved = keras.models.load_model(OUT / "runs" / "straight" / "m.keras")
    logits = aerialkd.predict_logits(saved, data.x_val[:2], batch_size=2)
    report = OUT / "report"
    report.mkdir(parents=True, exist_ok=True)
    np.savez(report / f"process_{processes.process_id}.npz",
             *initial, *model.get_weights(), *resumed.get_weights(), logits=logits)
    print("RESULTS " + json.dumps({
        "process_id": processes.process_id, "num_processes": processes.num_processes,
        "replicas": parallel.num_replicas, "history": history,
        "resumed_history": resumed_history, "interrupted": interrupted,
        "n_weights": len(initial), "writes": writes,
        "logits_shape": list(logits.shape)}), flush=True)


if __name__ == "__main__":
    main()
