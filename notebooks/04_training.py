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
# loss and a LoRA. This notebook trains a restoration LoRA with them:
#
# 1. **The settings**, as a config object and as the equivalent shell command.
# 2. **The training step, by hand**: a loop of twenty lines built from notebook 03's functions,
#    training with plain flow matching for a few dozen steps.
# 3. **Nano's recipe**: the three choices this course adds for nano, each with its measurement.
# 4. **The run**, with the same function the command line calls (`kontext_lora_helpers.train.train`),
#    a live loss curve and the validation PSNR as it trains.
# 5. **Before and after**: the validation photos restored by the base model and by base + LoRA.
# 6. **What the run leaves behind**, and how to resume it.
# 7. **The real model on a GPU**: settings and memory for a Colab T4, an L4 and an A100.
#
# On a CPU the whole notebook takes about a minute and a half (the 120-step run of section 4
# most of it; the README's command trains the full 500 steps). To train FLUX.1-Kontext-dev on a GPU, change
# `MODEL`; the settings then come from the table of section 7 for the GPU that is present.

# %%
# On Colab: fetch the course, install its helpers and work in its notebooks folder.
# Where the course is installed (a clone on your machine), this cell does nothing.
import importlib.util
import os
import subprocess
import sys

COURSE_URL = "https://github.com/kontext-lora/kontext-lora-course"  # or the URL of your fork
COURSE_DIR = "/content/kontext-lora-course"
if importlib.util.find_spec("kontext_lora_helpers") is None:
    subprocess.check_call(["git", "clone", "--depth", "1", COURSE_URL, COURSE_DIR])
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "-e", COURSE_DIR])
    sys.path.insert(0, COURSE_DIR)  # an editable install is seen only after a restart
if os.path.isdir(COURSE_DIR):  # on Colab, also after a restart: work in the course's notebooks folder
    os.chdir(os.path.join(COURSE_DIR, "notebooks"))

# %%
import gc
import itertools
import json
import os

import torch
from IPython.display import Markdown, display
from PIL import Image

from kontext_lora_helpers import gpu_settings, lora, objective, viz
from kontext_lora_helpers.course import data_samples, evaluation_dirs, outputs
from kontext_lora_helpers.data import DegDataset
from kontext_lora_helpers.degradations import PRESETS
from kontext_lora_helpers.latents import image_token_count
from kontext_lora_helpers.models import load_pipeline, max_sequence_length_for
from kontext_lora_helpers.train import NANO_RECIPE_MEASUREMENTS, check_config, command_line, train
from kontext_lora_helpers.viz_training import (
    LiveTrainingPlot, loss_curve_figure, metrics_table, recipe_measurements_figure, show_figure,
)

MODEL = "nano"  # on a GPU: "black-forest-labs/FLUX.1-Kontext-dev"
OUTPUT_DIR = outputs("04-restoration-lora")  # outputs/ next to the notebook

# %% [markdown]
# ## 1. The settings
#
# The degradation is the one the course measures against (notebook 01's `downsample,noise,blur`
# with x2 downsampling, noise 0.1 and blur 0.5). Everything else is the recipe's default for the
# model (`gpu_settings.notebook_settings`): for nano, batch 4 at 64 px, rank 16, learning rate
# 3e-3, crops covering a quarter to all of a photo's short side, nano's recipe of section 3, and 120
# steps here instead of the command line's 500, so that the notebook stays quick; for the real
# model, the GPU's entry in `gpu_settings`. (`MODEL = "random-kontext-shallow"`, the real model's
# width with random weights, runs this notebook on a machine without a GPU: a few steps at 64 px,
# to see every stage of the real training step work, not to learn anything.)

# %%
degradation = PRESETS["course"]  # x2 down, noise 0.1, blur 0.5
config = gpu_settings.notebook_settings(MODEL, hr_root=os.path.relpath(data_samples()),
                                       output_dir=str(OUTPUT_DIR), degradation=degradation)
# The same run as a command, its paths as seen from the repository root:
root = data_samples().parent
print(command_line(config.replace(hr_root=os.path.relpath(data_samples(), root),
                                  output_dir=os.path.relpath(OUTPUT_DIR.resolve(), root))))

# %% [markdown]
# That line, pasted into a terminal at the repository root, runs exactly this training;
# `TrainConfig` and the flags have the same names (`python -m kontext_lora_helpers.train --help`
# explains each).
#
# ## 2. The training step, by hand
#
# Before handing the work to `train()`, here is the step it repeats, written out with notebook
# 03's functions: encode the pair with the frozen VAE, draw a noise level per sample and the noise,
# predict the velocity from the noisy target, the control tokens and the prompt, and take an AdamW
# step on the LoRA alone. This is plain **flow matching**, Kontext's training objective (the
# released FLUX.1-Kontext-dev was in addition guidance-distilled, notebook 02). Forty steps on the
# training photos (never the validation or test ones):

# %%
settings = check_config(config)  # the model's recipe filled in: resolution, learning rate, crops...
RUN = gpu_settings.run_settings(MODEL)  # quantization, offload, checkpointing for the card found
pipe = load_pipeline(MODEL, **RUN.pipeline_kwargs())
lora.add_lora(pipe.transformer, rank=settings.rank)
if RUN.gradient_checkpointing:
    pipe.transformer.enable_gradient_checkpointing()
pairs = DegDataset(settings.hr_root, settings.instance_prompt, config=degradation, resolution=settings.resolution,
                   crop_scale=settings.crop_scale, seed=0, exclude=evaluation_dirs())
loader = torch.utils.data.DataLoader(pairs, batch_size=settings.train_batch_size, shuffle=True,
                                     generator=torch.Generator().manual_seed(0))
prompts = objective.PromptEmbeddingCache(pipe, max_sequence_length_for(pipe))
mu = objective.calculate_shift(image_token_count(pipe.vae, settings.resolution, settings.resolution),
                               pipe.scheduler.config)
optimizer = torch.optim.AdamW(lora.lora_parameters(pipe.transformer), lr=settings.learning_rate)
device, dtype = pipe.transformer.device, pipe.transformer.dtype
torch.manual_seed(0)

HAND_STEPS = min(40, config.max_train_steps)  # 40, fewer when the tests shorten the notebook's runs
hand_losses = []
for step, batch in zip(range(HAND_STEPS), itertools.cycle(loader)):
    with torch.no_grad():  # 1. encode the clean target and the degraded control (frozen VAE)
        target, control = objective.encode_pair(pipe.vae, batch["target"].to(device), batch["control"].to(device))
    text = prompts.batch(list(batch["prompts"]), device=device, dtype=dtype)  # 2. cached prompt embeddings
    sigmas = objective.sample_sigmas(len(target), "logit_normal", shift=mu).to(device)  # 3. a noise level each
    noise = torch.randn_like(target)
    # 4-6. noisy target on the straight line, predict the velocity, mean squared error to noise - x0
    loss = objective.kontext_flow_matching_step(pipe.transformer, target, control, text, sigmas, noise).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # 7. gradients reach the LoRA only
    optimizer.step()
    hand_losses.append(loss.item())
first, last = hand_losses[:10], hand_losses[-10:]
print(f"mean loss of the first {len(first)} steps {sum(first) / len(first):.3f}, "
      f"of the last {len(last)} {sum(last) / len(last):.3f}")

# %%
show_figure(loss_curve_figure(range(1, len(hand_losses) + 1), hand_losses,
                              title=f"the loop above: {HAND_STEPS} steps of flow matching"))

# %% [markdown]
# The loss per step jumps with the noise levels drawn for the batch: with the control image in
# view, a batch of low sigmas has the larger velocity error (the noise cannot be read off an almost
# clean latent) and a batch of high sigmas the smaller (notebook 03, section 4, prints one per
# sample); the moving average shows the trend. `train()` runs exactly these
# stages (`train.training_loss`), plus what a real run needs: noise drawn from (seed, epoch, index)
# so that a resumed run repeats it, gradient accumulation and clipping, a learning-rate schedule,
# mixed precision and several GPUs through accelerate, validation, checkpoints and a progress bar.
# The hand-made pipeline is not needed any more:

# %%
del pipe, optimizer, prompts
gc.collect()
if torch.cuda.is_available():
    torch.cuda.empty_cache()

# %% [markdown]
# ## 3. Nano's recipe
#
# Trained like the loop above, for 500 steps, nano's LoRA gains on the base model, but three
# choices gain more. They are this course's own recipe for **nano**, chosen on the validation
# photos (never on the test photos that report the result), and `train()` uses them when `MODEL`
# is nano:
#
# * **`objective="posterior_mean"` instead of flow matching.** Flow matching teaches the model to
#   *draw* a plausible clean image; on a 64 px crop this noisy, two draws differ, and for an exact
#   posterior sampler a draw's squared error is twice the average's, 3 dB (notebook 03, section 8). The posterior-mean objective
#   trains the points the sampler visits so that it ends at the average: smoother, higher PSNR.
# * **`sigma_shift=-1.5`**: half the training noise levels below 0.18, where the sampler's last
#   steps refine that average.
# * **`ema_decay=0.99`**: at learning rate 3e-3 the weights jitter around their goal; the LoRA
#   saved is the moving average of about the last hundred steps.
#
# What each gained on the 24 validation crops, the README's command with one setting changed at a
# time, 500 steps each (`train.NANO_RECIPE_MEASUREMENTS`, from `tests/benchmarks/bench_recipe.py`;
# the bars are the paired gain ± two standard errors over the crops; it also holds the two smaller
# choices of section 1, whose gains are within their spread):

# %%
recipe_measurements_figure(NANO_RECIPE_MEASUREMENTS);

# %% [markdown]
# **The real model trains with plain flow matching**, logit-normal sigmas shifted as the pipeline
# shifts them and no weight average (`train.MODEL_RECIPES["flux"]`): Kontext's own objective
# (diffusers' Kontext script also uses flow matching, but draws sigmas uniformly and unshifted by
# default), and none of nano's choices has been measured at its scale.
# Exercise 1 compares the two objectives on nano for yourself.
#
# ## 4. The run
#
# Every 100 steps the run restores the validation photos and measures them (in the denoising steps
# its objective needs, `train.RESTORATION_STEPS`: 4 for `posterior_mean`, which the saved LoRA file
# records for notebook 05), and writes a checkpoint it can resume from. The loss per step (blue) and its moving average show the training (with
# `posterior_mean`, the loss is the error of the clean latents, not of a velocity); the validation
# PSNR (orange, right axis) shows what it is for.

# %%
live = LiveTrainingPlot(every=50, total_steps=config.max_train_steps)
result = train(config, on_step=live.on_step, on_validation=live.on_validation, progress_bar=False)
print(f"{result['status']}: {result['global_step']} steps in {result['seconds']:.0f} s "
      f"({result['steps_per_second']:.1f} steps/s)")

# %% [markdown]
# ## 5. Before and after
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
# Longer training gains a little more: the README's command trains the recipe's full 500 steps.
#
# ## 6. What the run leaves behind
#
# * `pytorch_lora_weights.safetensors`: the LoRA in diffusers format (for nano, the average of its
#   weights), for `FluxKontextPipeline.load_lora_weights(OUTPUT_DIR)` (notebook 05 restores photos
#   with it). The file also records the denoising steps the LoRA restores with.
# * `README.md`: the model card, as diffusers' training scripts write one: how to load the LoRA,
#   the exact command and the validation scores.
# * `training_config.json`: every setting, so the run can be repeated.
# * `metrics.json`, `loss_curve.png`, `validation/step-*.png`.
# * `checkpoint-N/`: LoRA (and `ema_lora_weights.safetensors`, its average), optimizer,
#   learning-rate schedule, random states and data position, and `manifest.json` with every
#   file's size and checksum, so a damaged copy is recognised and skipped when resuming.

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
# ## 7. The real model on a GPU
#
# FLUX.1-Kontext-dev's transformer has 11.9 B parameters, 23.8 GB in bf16 before a single
# activation; its T5 text encoder adds 9.5 GB. What makes it fit a smaller card:
#
# * **A quantized base** (`quantize="nf4"`): the frozen transformer in 4 bits, about 6.7 GB
#   (`gpu_settings.weight_memory_gb("transformer", "nf4")`). The LoRA itself stays in float32 and
#   trains normally (QLoRA).
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

# %% [markdown]
# ## Summary
#
# * A training step encodes the pair with the frozen VAE, noises the target latent at a drawn
#   sigma, predicts from it with the control tokens and the prompt, and updates the LoRA alone;
#   twenty lines of notebook 03's functions (section 2) make the whole step.
# * `train()` repeats it with what a real run needs: reproducible noise, accumulation, schedules,
#   mixed precision, several GPUs, validation, checkpoints and resuming.
# * Nano trains with this course's measured recipe (posterior mean, shift -1.5, a weight average);
#   the real model trains with plain flow matching, as it was trained.
# * The run leaves a diffusers LoRA file, its settings, its metrics and resumable checkpoints; on a
#   GPU, a quantized base, cached prompts, checkpointing and 8-bit Adam are expected to fit a 12 B
#   model on a T4 (an estimate: `preflight` measures it on your card).
#
# Next, notebook 05 restores photos with this LoRA, measures it and exports it.
#
# ## Exercises
#
# Each needs a few short training runs (about half a minute each on a CPU with nano); keep them
# short with `max_train_steps` and give each its own `output_dir`. Solutions that run are in
# `solutions.ipynb` (section 04).
#
# **Exercise 1.** *Flow matching or the posterior mean?* Train two LoRAs for the same number of
# steps from `config`, one with `objective="flow_matching"` (and the pipeline's shift,
# `sigma_shift="auto"`) and one with nano's `"posterior_mean"`, and compare their validation PSNR
# in `metrics.json`. Is the gap of section 3 there after a few dozen steps already? (Both runs
# validate on the same validation photos with the same noise, so the difference is the objective's.)
# *Hint:* `config.replace(objective=..., sigma_shift=..., max_train_steps=..., output_dir=...)`.
#
# **Exercise 2.** *L2 alone or L2 + VGG?* The original guide adds a perceptual term
# (`--perceptual_loss`). Train the flow-matching run of exercise 1 again with
# `perceptual_loss=True` and compare PSNR, SSIM and seconds per step. On a CPU use
# `vgg_weights="random"` (no download); on a GPU the ImageNet weights are the real thing.
#
# **Exercise 3.** *A degradation the LoRA never saw.* Damage the validation photos with JPEG at
# quality 15 only, and restore them with this notebook's LoRA: does it help, hurt, or do nothing?
# Then train a short LoRA on that JPEG degradation and measure it on the same photos. Explain the
# difference. *Hint:* `DegradationConfig(degradation_types=("jpeg",), jpeg_quality=15)`, and
# `train.Validator` is not needed: `metrics.json` holds the validation PSNR.

# %% [markdown]
# ## References
#
# - Black Forest Labs, FLUX.1 Kontext, arXiv:2506.15742, Section 3: Kontext's rectified-flow
#   training objective; the released FLUX.1-Kontext-dev is in addition guidance-distilled.
# - E. J. Hu et al., LoRA, arXiv:2106.09685.
# - T. Dettmers, A. Pagnoni, A. Holtzman, L. Zettlemoyer. *QLoRA: Efficient Finetuning of Quantized
#   LLMs.* NeurIPS 2023, arXiv:2305.14314: LoRA on a 4-bit NF4 base.
# - T. Dettmers, M. Lewis, S. Shleifer, L. Zettlemoyer. *8-bit Optimizers via Block-wise
#   Quantization.* ICLR 2022, arXiv:2110.02861: 8-bit Adam.
# - T. Chen, B. Xu, C. Zhang, C. Guestrin. *Training Deep Nets with Sublinear Memory Cost.*
#   arXiv:1604.06174: gradient checkpointing.
# - I. Loshchilov, F. Hutter. *Decoupled Weight Decay Regularization* (AdamW). ICLR 2019, arXiv:1711.05101.
# - B. T. Polyak, A. B. Juditsky. *Acceleration of Stochastic Approximation by Averaging.* SIAM J.
#   Control Optim. 1992: averaging the weights (`--ema_decay`).
# - Code: diffusers' `examples/dreambooth/train_dreambooth_lora_flux_kontext.py` (the Kontext LoRA
#   trainer this loop matches step for step, `tests/benchmarks/diffusers_reference_step.py`) and
#   accelerate's `Accelerator` (mixed precision, several GPUs, checkpoints).
