"""Shared test set-up: no network, no display, small thread count."""

import os

# Nothing in the tests may reach a model hub; fail fast instead of hanging on a download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_SAMPLES = REPO_ROOT / "data_samples"


@pytest.fixture(scope="session")
def data_samples() -> Path:
    """The shipped training photos (``data_samples/``, held-out ones in ``held_out/``)."""
    return DATA_SAMPLES
