"""Notebooks 02 and 03 run with a FLUX.1 Kontext-sized model: their real-model path, on the CPU.

Each notebook's code cells run top to bottom in one namespace, as Jupyter runs them, with
``MODEL = "random-kontext-shallow"``: the real widths (3072 in the transformer, 4096 in T5, the whole
FLUX VAE) with one block of each kind, through the notebook's `RunSettings` for a machine without a
GPU (64 px crops, batch 1, gradient checkpointing). A cell that only works at nano's sizes fails
here. (Notebook 04's real-model path is the training command, tested at this width in
`test_random_kontext.py`; notebook 05 restores with a LoRA trained by 04.)
"""

from __future__ import annotations

import re
from pathlib import Path

import jupytext
import matplotlib
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
MODEL_LINE = re.compile(r'^MODEL = "nano".*$', re.MULTILINE)


def run_with_model(name: str, model: str, monkeypatch) -> dict:
    """Run every code cell of ``notebooks/<name>.py`` but the Colab bootstrap, with `model`."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.chdir(NOTEBOOKS)
    cells = [cell.source for cell in jupytext.read(NOTEBOOKS / f"{name}.py").cells if cell.cell_type == "code"]
    assert MODEL_LINE.search("\n".join(cells)), f"{name} has no `MODEL = \"nano\"` line to switch"
    namespace: dict = {"__name__": "__notebook__"}
    for index, source in enumerate(cells[1:], start=1):
        source = MODEL_LINE.sub(f'MODEL = "{model}"', source)
        # the shape of every call is what matters here; 2 denoising steps show it as well as 20
        source = source.replace("num_inference_steps=20", "num_inference_steps=2")
        source = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("%"))
        try:
            exec(compile(source, f"{name} cell {index}", "exec"), namespace)
        finally:
            plt.close("all")
    return namespace


@pytest.mark.parametrize("name", ["02_pairs_and_latents", "03_flow_matching_loss"])
def test_notebook_runs_with_the_real_width_model(name, monkeypatch):
    namespace = run_with_model(name, "random-kontext-shallow", monkeypatch)
    run, pipe = namespace["RUN"], namespace["pipe"]
    assert run.card == "CPU" and run.resolution == 64 and run.batch_size == 1
    assert pipe.transformer.config.num_attention_heads * pipe.transformer.config.attention_head_dim == 3072
    if name == "03_flow_matching_loss":
        assert pipe.transformer.is_gradient_checkpointing
        census = namespace["lora"].gradient_census(pipe.transformer)
        assert census["base with grad"] == 0 and census["lora with grad"] > 0
