"""Renders the committed notebooks: executes them in place on the full profile.

The notebooks load the models committed in `results/models` (they train nothing
that is there), so rendering is inference only and runs on a CPU. The kernel does
not capture the native stderr of TensorFlow (oneDNN and CUDA notices printed while
it loads), which would otherwise open every rendered notebook.

The notebooks write to `outputs/full`, the folder a reader's own run of the full
profile uses (and prints), which must be empty first so that they find only the
committed models; when they are done it becomes `outputs/rendered`.

    SSSI_DATA=/path/to/aerial-dubai python scripts/render_notebooks.py
    SSSI_DATA=/path/to/aerial-dubai python scripts/render_notebooks.py 05_report
"""

import argparse
import os
import pathlib
import shutil
import time

import nbformat
from nbclient import NotebookClient

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
OUTPUT = REPO / "outputs" / "full"  # the full profile's folder, as every reader's run
KEPT = REPO / "outputs" / "rendered"  # what the last render wrote


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*",
                        help="notebook stems, e.g. 05_report (default: all of them)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = parser.parse_args(argv)
    if not os.environ.get("SSSI_DATA"):
        parser.error("set SSSI_DATA to the folder of the real dataset (aerial-dubai)")
    os.environ["SSSI_PROFILE"] = "full"
    os.environ.pop("SSSI_OUTPUT", None)  # the profile's own folder, OUTPUT
    # an empty output folder: the notebooks find only the committed models
    if OUTPUT.exists() and any(OUTPUT.iterdir()):
        parser.error(f"{OUTPUT.relative_to(REPO)} holds the files of an earlier run, which "
                     f"the notebooks would load in place of the committed models: move it "
                     f"aside (or delete it) and render again")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    paths = ([NOTEBOOKS / f"{name}.ipynb" for name in args.names] if args.names
             else sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")))
    for path in paths:
        start = time.perf_counter()
        notebook = nbformat.read(path, as_version=4)
        NotebookClient(notebook, timeout=args.timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(NOTEBOOKS)}},
                       extra_arguments=["--IPKernelApp.capture_fd_output=False"]).execute()
        nbformat.write(notebook, path)
        print(f"{path.name}: {time.perf_counter() - start:.0f} s", flush=True)
    shutil.rmtree(KEPT, ignore_errors=True)
    OUTPUT.rename(KEPT)
    print(f"The notebooks' files are in {KEPT.relative_to(REPO)}.")


if __name__ == "__main__":
    main()
