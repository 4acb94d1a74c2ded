# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/kontext-lora/kontext-lora-course/blob/main/notebooks/04_training.ipynb)
#
# # 04 · Training a restoration LoRA
#
# Notebooks 01–03 built the pieces: degraded pairs, the Kontext token sequence, the flow-matching
# loss and a LoRA. This notebook runs the whole training, the course's main job, with the same
# function the command line calls (`kontext_lora_helpers.train.train`):
#
# 1. **The settings**, as a config object and as the equivalent shell command.
# 2. **The run**, with a live loss curve and the validation PSNR as it trains.
# 3. **Before and after**: the held-out photos restored by the base model and by base + LoRA, with
#    PSNR and SSIM against the clean photos.
# 4. **What the run leaves behind**, and how to resume it.
# 5. **The real model on a GPU**: settings and memory for a Colab T4, an L4 and an A100.
#
# On a CPU it trains nano Kontext for 150 steps in about a minute and a half (the README's command trains
# the full 500 in about four). To train FLUX.1-Kontext-dev on a GPU, change `MODEL`; the settings
# then come from the table of section 5 for the GPU that is present.

# %%
# On Colab (or anywhere the course is not installed): fetch the course and install its helpers.
# Where `kontext_lora_helpers` is already importable, this cell does nothing.
import importlib.util
import os
import subprocess
import sys

COURSE_URL = "https://github.com/kontext-lora/kontext-lora-course"
if importlib.util.find_spec("kontext_lora_helpers") is None:
    subprocess.check_call(["git", "clone", "--depth", "1", COURSE_URL, "/content/kontext-lora-course"])
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "-e", "/content/kontext-lora-course"])
    sys.path.insert(0, "/content/kontext-lora-course")  # an editable install is seen after a restart
    os.chdir("/content/kontext-lora-course/notebooks")

# %%
import json
import os
from pathlib import Path

from IPython.display import Markdown, display
from PIL import Image

from kontext_lora_helpers import gpu_settings, viz
from kontext_lora_helpers.course import data_samples
from kontext_lora_helpers.degradations import PRESETS
from kontext_lora_helpers.train import command_line, train
from kontext_lora_helpers.viz_training import LiveTrainingPlot, metrics_table

MODEL = "nano"  # on a GPU: "black-forest-labs/FLUX.1-Kontext-dev"
OUTPUT_DIR = Path("outputs/04-restoration-lora")

# %% [markdown]
# ## 1. The settings
#
# The degradation is the one the course measures against (notebook 01's `downsample,noise,blur`
# with x2 downsampling, noise 0.1 and blur 0.5). Everything else is the recipe's default for the
# model (`gpu_settings.notebook_settings`). For nano: batch 4 at 64 px, rank 16, learning rate
# 3e-3, the `posterior_mean` objective of notebook 03 (the sampler ends at the average
# restoration, which PSNR rewards) with half the noise levels below 0.18 (`sigma_shift` -1.5), an
# average of the LoRA weights over about the last hundred steps (`ema_decay` 0.99), crops covering
# a quarter to all of a photo's short side, and 150 steps here instead of the command line's 500,
# so that the notebook stays quick. For the real model: the GPU's entry in `gpu_settings`.

# %%
degradation = PRESETS["course"]  # x2 down, noise 0.1, blur 0.5
config = gpu_settings.notebook_settings(MODEL, hr_root=os.path.relpath(data_samples()),
                                       output_dir=str(OUTPUT_DIR), degradation=degradation)
print(command_line(config))

# %% [markdown]
# That line, pasted into a terminal, runs exactly this training; `TrainConfig` and the flags have
# the same names (`python -m kontext_lora_helpers.train --help` explains each).
#
# ## 2. The run
#
# Every optimizer step: encode the clean/degraded pair with the frozen VAE, draw a noise level per
# sample, let the model estimate the clean image from pure noise, place the noisy target on the line
# from that estimate to the noise, predict from there with the control tokens as context, and update
# the LoRA only (notebook 03, section 8; that is nano's `posterior_mean` recipe, the real model
# trains with plain flow matching). Every 100 steps the run restores the held-out photos and
# measures them, and writes a checkpoint it can resume from.
#
# The loss per step jumps with the noise levels drawn for the batch; its moving average (dark line)
# and the validation PSNR (orange, right axis) show the trend.

# %%
live = LiveTrainingPlot(every=50, total_steps=config.max_train_steps)
result = train(config, on_step=live.on_step, on_validation=live.on_validation, progress_bar=False)
print(f"{result['status']}: {result['global_step']} steps in {result['seconds']:.0f} s "
      f"({result['steps_per_second']:.1f} steps/s)")

# %% [markdown]
# ## 3. Before and after
#
# The first validation ran before any training, so the LoRA was still zero: its column is the base
# model. The last one used the trained LoRA. Columns: degraded input | base model | LoRA | clean photo.

# %%
grids = sorted((OUTPUT_DIR / "validation").glob("step-*.png"))
before, after = Image.open(grids[0]), Image.open(grids[-1])
viz.show_images([before, after], titles=[f"before training ({grids[0].stem})", f"after ({grids[-1].stem})"], scale=4.5);

# %% [markdown]
# PSNR and SSIM against the clean photos (higher is better), from `metrics.json`:

# %%
metrics = json.loads((OUTPUT_DIR / "metrics.json").read_text())
display(Markdown(metrics_table(metrics)))

# %% [markdown]
# What these numbers say about nano: the base model returns its input as the VAE represents it
# (notebook 02), so its row is close to the degraded one; everything above it is what the LoRA
# learned. Nano's VAE reconstructs clean 64 px photos at about 36 dB, far above any of these rows,
# so the limit is the restoration itself: with noise this strong, some detail is gone for good.
# Longer training helps a little: the README's 500-step command reaches 25.2 dB on these four
# photos, about 0.3 dB more.
#
# ## 4. What the run leaves behind
#
# * `pytorch_lora_weights.safetensors`: the LoRA in diffusers format (for nano, the average of its
#   weights), for `FluxKontextPipeline.load_lora_weights(OUTPUT_DIR)` (notebook 05 restores photos
#   with it).
# * `training_config.json`: every setting, so the run can be repeated.
# * `metrics.json`, `loss_curve.png`, `validation/step-*.png`.
# * `checkpoint-N/`: LoRA (and `ema_lora_weights.safetensors`, its average), optimizer,
#   learning-rate schedule, random states and data position.

# %%
for path in sorted(OUTPUT_DIR.iterdir()):
    print(f"{path.name + '/' if path.is_dir() else path.name:<36} "
          f"{'' if path.is_dir() else f'{path.stat().st_size / 1024:8.1f} KB'}")

# %% [markdown]
# **Resuming.** A run stopped by Ctrl-C, a closed laptop or a Colab timeout continues from its
# newest checkpoint and ends with the same LoRA as an uninterrupted run (the tests kill a run and
# compare):
#
# ```python
# train(config.replace(resume_from_checkpoint="latest"))
# ```
#
# or add `--resume_from_checkpoint latest` to the command. To train longer, raise `max_train_steps`
# and resume. A *different* run needs another `output_dir`: the trainer refuses a folder that holds
# checkpoints of other settings rather than mixing them.
#
# ## 5. The real model on a GPU
#
# FLUX.1-Kontext-dev's transformer has 11.9 B parameters, 23.8 GB in bf16 before a single
# activation; its T5 text encoder adds 9.5 GB. What makes it fit a smaller card:
#
# * **A quantized base** (`quantize="nf4"`): the frozen transformer in 4 bits, about 6.3 GB. The
#   LoRA itself stays in float32 and trains normally (QLoRA).
# * **Cached prompt embeddings**: the trainer encodes each distinct prompt once and then frees the
#   text encoders, so T5 never shares the GPU with a training step.
# * **Gradient checkpointing**: activations are recomputed in the backward pass instead of stored.
# * **8-bit Adam** (`use_8bit_adam=True`) and **batch 1 with gradient accumulation** (4 steps make
#   one update of batch 4).
# * **Precision by card**: the T4 has no native bf16 (compute capability 7.5), so it computes in
#   fp16; the L4 and A100 use bf16.
#
# Kontext reads the target *and* the control image: a 512 px step sees 1024 + 1024 image tokens
# plus 512 text tokens, and a 1024 px step 4096 + 4096 + 512, which is why 512 px is the default.

# %%
display(Markdown(gpu_settings.settings_table()))

# %% [markdown]
# Where the memory figures come from (`gpu_settings.SOURCES`; "computed" = parameters x bytes):

# %%
for name, entry in gpu_settings.GPU_SETTINGS.items():
    print(f"{name}: {entry.basis}\n")
for key, text in gpu_settings.SOURCES.items():
    print(f"[{key}] {text}\n")

# %% [markdown]
# The expected peaks are estimates, not measurements on these cards; the GPU benchmark in
# `tests/benchmarks/bench_gpu_training.py` measures the peak of one training step of the full-size
# architecture, and `torch.cuda.max_memory_allocated()` after a few steps of your own run is the
# number to trust. The settings for a Colab T4, as a command:

# %%
t4 = gpu_settings.settings_for_gpu(
    "T4", hr_root="my_photos", output_dir="outputs/t4-restoration-lora", degradation=degradation,
)
print(command_line(t4, launcher="accelerate launch -m"))

# %% [markdown]
# **Several GPUs.** The same command runs data-parallel (DDP) under accelerate; each process takes
# its share of every batch, so 4 GPUs with batch 1 and accumulation 1 train like one GPU with
# batch 4:
#
# ```bash
# accelerate launch --multi_gpu --num_processes 4 -m kontext_lora_helpers.train ...        # 4 GPUs
# accelerate launch --multi_gpu --num_machines 2 --num_processes 16 --machine_rank 0 \
#     --main_process_ip HOST --main_process_port 29500 -m kontext_lora_helpers.train ...   # 2 nodes
# ```
#
# DDP keeps a full copy of the (quantized) base on every GPU, which is what a LoRA wants: the
# trainable part is tiny. Sharding the base with FSDP or DeepSpeed ZeRO-3 only pays when the base
# does not fit one card even quantized; the checkpoints here hold one unsharded optimizer state, so
# those launchers are not supported by this trainer (the README's "Several GPUs" section says more).
