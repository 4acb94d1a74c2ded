"""Shared test set-up: no network, no display, small thread count."""

import os

# Nothing in the tests may reach a model hub; fail fast instead of hanging on a download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# nbval executes every notebook: their nano training runs take 10 steps here instead of the course's
# (the stored notebooks and the README's times are full runs; see gpu_settings.NOTEBOOK_STEPS_VARIABLE)
os.environ.setdefault("KONTEXT_LORA_NOTEBOOK_STEPS", "10")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_SAMPLES = REPO_ROOT / "data_samples"


@pytest.fixture(scope="session")
def data_samples() -> Path:
    """The shipped training photos (``data_samples/``, held-out ones in ``held_out/``)."""
    return DATA_SAMPLES


@pytest.fixture(scope="session")
def lora_dir(tmp_path_factory) -> Path:
    """A rank-4 LoRA saved by the project's own code (`lora.save_lora`) whose B holds small random
    values, so it visibly changes nano's output (a fresh LoRA's B is zero and would change nothing)."""
    import torch

    from kontext_lora_helpers import lora as lora_ops
    from kontext_lora_helpers.models import load_pipeline

    torch.manual_seed(0)
    donor = load_pipeline("nano", device="cpu")
    lora_ops.add_lora(donor.transformer, rank=4)
    with torch.no_grad():
        for name, parameter in donor.transformer.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.02)
    folder = tmp_path_factory.mktemp("lora")
    lora_ops.save_lora(donor.transformer, folder)
    return folder
