"""Notebooks 02-05 run with a FLUX.1 Kontext-sized model: their real-model path, on the CPU.

Each notebook's code cells run top to bottom in one namespace, as Jupyter runs them, with
``MODEL = "random-kontext-shallow"``: the real widths (3072 in the transformer, 4096 in T5, the whole
FLUX VAE) with one block of each kind, through the notebook's `RunSettings` for a machine without a
GPU (64 px crops, batch 1, gradient checkpointing) and, in 04, `gpu_settings.CPU_TWIN_SETTINGS`. A
cell that only works at nano's sizes fails here. 05 then restores with the LoRA 04 trained.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import jupytext
import matplotlib
import pytest

from kontext_lora_helpers.course import OUTPUTS_VARIABLE

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
MODEL_LINE = re.compile(r'^MODEL = "nano".*$', re.MULTILINE)
SHALLOW = "random-kontext-shallow"


def run_with_model(name: str, model: str, monkeypatch, folder: Path) -> dict:
    """Run every code cell of ``notebooks/<name>.py`` but the Colab bootstrap, with `model`, in
    `folder` (the notebook's relative `outputs/` go there, not into the course's own)."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.chdir(folder)
    monkeypatch.setenv(OUTPUTS_VARIABLE, str(folder / "outputs"))
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
def test_notebook_runs_with_the_real_width_model(name, monkeypatch, tmp_path):
    namespace = run_with_model(name, SHALLOW, monkeypatch, tmp_path)
    run, pipe = namespace["RUN"], namespace["pipe"]
    assert run.card == "CPU" and run.resolution == 64 and run.batch_size == 1
    assert pipe.transformer.config.num_attention_heads * pipe.transformer.config.attention_head_dim == 3072
    if name == "03_flow_matching_loss":
        assert pipe.transformer.is_gradient_checkpointing
        census = namespace["lora"].gradient_census(pipe.transformer)
        assert census["base with grad"] == 0 and census["lora with grad"] > 0


def test_notebooks_04_and_05_train_and_restore_with_the_real_width_model(monkeypatch, tmp_path):
    """04 trains the twin's LoRA (a few steps, by hand and with `train`), 05 restores with it and exports it.

    Three concessions to the CPU, all in how the pipeline is called, none in the notebooks' code: every
    restoration takes one denoising step with 32 text tokens (the twin's own length is 64; the training
    steps keep it), and the twin's native side is 64 px, so that 05's whole-photo and tiled restorations
    work at 64 px instead of about 1024 (one 64 px image through the twin at 1024 px took 219 s here).
    `restore.plan_tiles` at the real 1024 px is tested in `test_restore.py`.
    """
    from diffusers import FluxKontextPipeline

    from kontext_lora_helpers import gpu_settings, models
    from kontext_lora_helpers.lora import LORA_WEIGHT_NAME

    monkeypatch.setenv(gpu_settings.NOTEBOOK_STEPS_VARIABLE, "2")
    call = FluxKontextPipeline.__call__

    @functools.wraps(call)  # the signature (its default of 28 steps) stays readable
    def one_short_step(self, *args, **kwargs):
        return call(self, *args, **{**kwargs, "num_inference_steps": 1, "max_sequence_length": 32})

    monkeypatch.setattr(FluxKontextPipeline, "__call__", one_short_step)
    monkeypatch.setattr(models, "native_resolution", lambda pipe: 64)

    training = run_with_model("04_training", SHALLOW, monkeypatch, tmp_path)
    config, result = training["config"], training["result"]
    assert (config.resolution, config.train_batch_size, config.gradient_checkpointing) == (64, 1, True)
    assert result["global_step"] == config.max_train_steps == 2 and len(training["hand_losses"]) == 2
    lora_file = tmp_path / "outputs" / "04-restoration-lora" / LORA_WEIGHT_NAME
    assert lora_file.is_file()

    restoring = run_with_model("05_restoration", SHALLOW, monkeypatch, tmp_path)
    assert restoring["pipe"].transformer.config.num_attention_heads * restoring["pipe"].transformer.config.attention_head_dim == 3072
    assert [image.size for image in restoring["lora_own"]] == [image.size for image in restoring["degraded_own"]]
    assert restoring["lora_tiled"].size == restoring["degraded_own"][restoring["index"]].size
    assert len(restoring["points"]) == 6 and set(restoring["yardstick"]) == set(restoring["CROPS"])
    assert any(key.startswith("lora_unet_single_blocks_0") for key in restoring["keys"])  # the ComfyUI export
