"""Where the course's files are, wherever a notebook or command runs from.

The notebooks run with `notebooks/` as their working folder, the commands usually from the
repository root, and Colab from `/content/<repo>`; `data_samples()` finds the sample photos in each
case (the folder next to the installed package in a clone, else the working folder or its parents).
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
HELD_OUT_DIRNAME = "held_out"


def data_samples() -> Path:
    """The `data_samples/` folder (training photos; held-out ones in `held_out/`).

    Raises:
        FileNotFoundError: when no `data_samples/` is found; clone the repository to get it.
    """
    candidates = [PACKAGE_DIR.parent / "data_samples"]
    here = Path.cwd().resolve()
    candidates += [folder / "data_samples" for folder in (here, *here.parents)]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        "No data_samples/ folder next to the package or above the working folder. Clone the course "
        "repository (it ships the sample photos) and run from inside it."
    )


def held_out_dir() -> Path:
    """`data_samples/held_out/`: photos nothing in the course trains on."""
    return data_samples() / HELD_OUT_DIRNAME
