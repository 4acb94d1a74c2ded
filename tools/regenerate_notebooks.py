"""Re-execute the course's notebooks and store them as students read them on GitHub.

    python tools/regenerate_notebooks.py --fresh    # all of them, in course order, from empty outputs/
    python tools/regenerate_notebooks.py 04 05      # only these (later ones may read earlier outputs)

Each notebook runs top to bottom in a fresh kernel from `notebooks/`, offline (`HF_HUB_OFFLINE=1`)
and with matplotlib's inline backend, so every figure is stored as a PNG (`MPLBACKEND`, which the
tests set to Agg, is removed for the kernel: with Agg the figures would not be stored). Afterwards:

* widget state is dropped: a widget is only live in a running notebook, and next to every widget
  the notebook shows a static picture of it; the widget's text fallback (which repeats its Python
  repr, paths included) is replaced by a sentence saying so;
* figures larger than 100 KB as PNG (photos) are stored as JPEG;
* the stored outputs are checked for paths of this machine (`tests/test_stored_notebooks.py` checks
  the same on every commit), and the file is written only if the check passes.

Prints each notebook's wall time, which is the figure the README quotes for the course.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import shutil
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from PIL import Image

REPOSITORY = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPOSITORY / "notebooks"
sys.path.insert(0, str(REPOSITORY / "tests"))
from stored_outputs import WIDGET_MIME, machine_paths_in  # noqa: E402

LARGEST_PNG_BYTES = 100_000
JPEG_QUALITY = 85
WIDGET_FALLBACK = "(an interactive widget: it is live when you run the notebook; the picture below shows it)"


def course_notebooks() -> list[Path]:
    """The numbered notebooks in course order, then the solutions to their exercises."""
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")) + sorted(NOTEBOOKS.glob("solutions.ipynb"))


def compress_picture(data: dict) -> None:
    """Store a large picture as one JPEG instead of a PNG (and drop duplicate encodings).

    Figures of photos, noisy ones above all, take hundreds of KB as PNG; as JPEG at quality 85
    they look the same at the size GitHub shows them. Charts stay PNG: they are small and sharp.
    """
    png = data.get("image/png")
    if png is None:
        return
    raw = base64.b64decode(png)
    if len(raw) <= LARGEST_PNG_BYTES:
        data.pop("image/jpeg", None)  # a PIL image offers both; one is enough
        return
    buffer = io.BytesIO()
    Image.open(io.BytesIO(raw)).convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    del data["image/png"]
    data["image/jpeg"] = base64.b64encode(buffer.getvalue()).decode("ascii")


def tidy_outputs(notebook: nbformat.NotebookNode) -> None:
    """Drop widget state, replace each widget's text fallback (see the module docstring) and
    compress large pictures."""
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_MIME in data:
                output["data"] = {"text/plain": WIDGET_FALLBACK}
            compress_picture(data)


def regenerate(path: Path, timeout_s: int) -> float:
    """Execute one notebook in place; returns its wall time in seconds."""
    notebook = nbformat.read(path, as_version=4)
    environment = {key: value for key, value in os.environ.items() if key != "MPLBACKEND"}
    environment["HF_HUB_OFFLINE"] = "1"
    start = time.perf_counter()
    client = NotebookClient(notebook, timeout=timeout_s, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    # The kernel inherits this process's environment; nbclient has no per-kernel switch for it.
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(environment)
    try:
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    seconds = time.perf_counter() - start
    tidy_outputs(notebook)
    leaks = machine_paths_in(notebook)
    if leaks:
        raise SystemExit(f"{path.name}: stored outputs would contain machine paths {leaks}; not written. "
                         "Print paths relative to the notebook (os.path.relpath) instead.")
    nbformat.write(notebook, path)
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("only", nargs="*", help="notebook number prefixes to run (default: all, in order)")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds a single cell may take")
    parser.add_argument("--fresh", action="store_true",
                        help="first delete notebooks/outputs/ (what the notebooks wrote last time), so that every "
                             "notebook runs as on a fresh clone; a training run refuses a folder holding another "
                             "run's checkpoints")
    args = parser.parse_args(argv)
    if args.fresh:
        shutil.rmtree(NOTEBOOKS / "outputs", ignore_errors=True)
    paths = [p for p in course_notebooks() if not args.only or any(p.name.startswith(k) for k in args.only)]
    if not paths:
        parser.error(f"no notebook matches {args.only}; names start with 01 ... 05 or 'solutions'")
    total = 0.0
    for path in paths:
        seconds = regenerate(path, args.timeout)
        total += seconds
        print(f"{path.name:<36} {seconds:6.1f} s", flush=True)
    print(f"{'all':<36} {total:6.1f} s ({total / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
