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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/kontext-lora/kontext-lora-course/blob/main/notebooks/solutions.ipynb)
#
# # Solutions to the exercises
#
# One section per notebook, one cell (or two) per exercise, each followed by what it shows. Try
# each exercise in its notebook before reading its solution here: the point is the measurement you
# make, and most of them take a line or two of the functions the notebook just used.
#
# Every solution runs on a CPU with nano; the whole notebook takes a few minutes, most of it the
# short training runs of section 04. The figures printed are what this run measured; yours may
# differ a little on another machine, never by much.

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
import json
import os
from pathlib import Path

import matplotlib
import numpy as np
import torch

from kontext_lora_helpers import viz
from kontext_lora_helpers.course import data_samples, held_out_dir
from kontext_lora_helpers.degradations import ORIGINAL_GUIDE_ORDER, PRESETS, DegradationConfig, apply_degradation
from kontext_lora_helpers.images import list_images, load_rgb
from kontext_lora_helpers.metrics import psnr
from kontext_lora_helpers.models import load_pipeline

OUTPUT_DIR = Path("outputs/solutions")  # relative to the notebook, like every output of the course
matplotlib.rcParams["figure.dpi"] = 72
torch.set_num_threads(1)  # nano's matrices are too small to gain from threads

# %% [markdown]
# ## 01 · Degradations
#
# **Exercise 1.** The JPEG quality that keeps 30 dB, on notebook 01's photo:

# %%
from kontext_lora_helpers.viz_degradations import prepare_photo, severity_sweep

photo = prepare_photo(load_rgb(held_out_dir() / "china.jpg"), 320)
sweep = severity_sweep(photo, "jpeg_quality", [5, 10, 20, 30, 50, 75, 95], seed=0)
for point in sweep:
    print(f"jpeg_quality {point.value:>3}: {point.psnr_db:5.1f} dB")
print("lowest quality above 30 dB:", min(point.value for point in sweep if point.psnr_db >= 30))
for op in ORIGINAL_GUIDE_ORDER:  # each of the guide's operations alone, at its default
    alone, _ = apply_degradation(photo, DegradationConfig(degradation_types=(op,)), seed=0)
    print(f"the guide's {op:<10} alone: {psnr(alone, photo):5.1f} dB")

# %% [markdown]
# JPEG is the mildest of the guide's four operations at its defaults: quality 75 stays well above
# 30 dB, and only low qualities bring it to the damage that `lr_scale=8` does alone.
#
# **Exercise 2.** Blur and downsampling against their strength:

# %%
for parameter, values in [("blur_radius", [0.5, 1, 2, 4]), ("lr_scale", [2, 4, 8, 16])]:
    points = severity_sweep(photo, parameter, values, seed=0)
    steps = [f"{later.psnr_db - earlier.psnr_db:+.1f}" for earlier, later in zip(points, points[1:])]
    print(f"{parameter:<12}", " ".join(f"{p.value:>4}: {p.psnr_db:4.1f} dB" for p in points),
          "| each doubling:", ", ".join(steps), "dB")

# %% [markdown]
# Neither follows noise's steady 6 dB a doubling. The losses shrink as the strength grows: blur and
# downsampling remove detail, the fine detail goes first and carries most of the error, and what
# remains after a strong blur (large flat areas) changes little with more. The exact figures depend
# on the photo: a photo with more fine texture loses more at every step.
#
# **Exercise 3.** A "phone photo" recipe:

# %%
phone = DegradationConfig(degradation_types=("motion_blur", "poisson_noise", "jpeg"), degradation_order="listed",
                          motion_blur_length=5, poisson_scale=1.0, jpeg_quality=(50, 80))
first, record = apply_degradation(photo, phone, seed=3)
again, _ = apply_degradation(photo, phone, seed=3)
print("same seed, same bytes:", first.tobytes() == again.tobytes())
print("jpeg quality drawn:", next(step["jpeg_quality"] for step in record if step["op"] == "jpeg"))
print("train with it:", " ".join(phone.to_cli_flags()))
viz.show_images([photo, first], ["clean", f"phone recipe, {psnr(first, photo):.1f} dB"], scale=3.5);

# %% [markdown]
# **Exercise 4.** Noise then JPEG, and JPEG then noise:

# %%
orders = {"noise, then jpeg": ("noise", "jpeg"), "jpeg, then noise": ("jpeg", "noise")}
results = {name: apply_degradation(photo, DegradationConfig(degradation_types=ops, degradation_order="listed",
                                                           noise_level=0.05, jpeg_quality=30), seed=0)[0]
           for name, ops in orders.items()}
viz.show_images(list(results.values()), [f"{name}: {psnr(image, photo):.1f} dB" for name, image in results.items()],
                zoom_box=(140, 140, 180, 180), scale=3.5);

# %% [markdown]
# Noise then JPEG: the compression smooths part of the noise away and leaves it in 8x8 blocks,
# the look of a noisy phone photo shared on the web (the sensor's noise comes first, compression
# after). JPEG then noise: sharp speckle on top of clean blocks, which no camera makes. A recipe
# for real photos keeps the order in which the damage happens.
#
# ## 02 · Pairs and latents
#
# **Exercise 1.** The VAE round trip of the degraded controls:

# %%
from kontext_lora_helpers import latents
from kontext_lora_helpers.data import DegDataset
from kontext_lora_helpers.pairs import alignment_offset

pipe = load_pipeline("nano")
pairs = DegDataset(held_out_dir(), "Restore this degraded photograph to high fidelity", config=PRESETS["course"],
                   resolution=64, seed=0, center_crop=True, random_flip=False)
items = [pairs[i] for i in range(len(pairs))]
target = torch.stack([item["target"] for item in items])
control = torch.stack([item["control"] for item in items])
control_round_trip, control_vs_itself = latents.round_trip(pipe.vae, control)
_, target_vs_itself = latents.round_trip(pipe.vae, target)
print(f"round trip of the clean targets:      {target_vs_itself:.1f} dB against themselves")
print(f"round trip of the degraded controls:  {control_vs_itself:.1f} dB against themselves")
print(f"degraded control against the clean target:   {psnr(control, target):.2f} dB")
print(f"its round trip against the clean target:     {psnr(control_round_trip, target):.2f} dB")

# %% [markdown]
# The VAE reproduces the degraded controls less faithfully than the clean photos (noise is the
# hardest content to encode), and the round trip of a control lands a little closer to the clean
# target than the control itself: the VAE smooths part of the noise away. That is a small
# restoration the base model gets for free, which is why the base model scores a little above the
# degraded input in notebooks 04 and 05. A VAE that smoothed much more would cap every LoRA: it
# could never return the detail it throws away.
#
# **Exercise 2.** A one-pixel shift:

# %%
shifted = torch.roll(items[0]["control"], shifts=1, dims=-1)  # one pixel to the right
print("aligned pair:", alignment_offset(items[0]["control"], items[0]["target"]),
      " control shifted right by one pixel:", alignment_offset(shifted, items[0]["target"]))

# %% [markdown]
# The check finds the shift (as `(dy, dx)`, the shift that lines the control up with the target).
# A LoRA trained on such pairs would learn to move every image by a pixel as well as to repair it,
# and PSNR, which compares pixel by pixel, would punish every restoration for it.
#
# **Exercise 3.** Tokens of FLUX.1-Kontext-dev at three sizes (its VAE divides each side by 8):

# %%
TEXT_TOKENS = 512
sizes = {"512 x 512": (512, 512), "1024 x 1024": (1024, 1024), "1024 x 768": (1024, 768)}
sequence = {}
for name, (width, height) in sizes.items():
    image_tokens = latents.token_count(height // 8, width // 8)
    sequence[name] = TEXT_TOKENS + 2 * image_tokens  # target + control
    print(f"{name:>11}: {image_tokens} tokens per image, {sequence[name]} in the sequence")
ratio = (sequence["1024 x 1024"] / sequence["512 x 512"]) ** 2
print(f"attention at 1024 px against 512 px: {ratio:.1f}x")

# %% [markdown]
# A 1024 px step has 3.4 times the tokens of a 512 px step and about 11.6 times the attention
# work (the rest of the transformer, linear in the tokens, 3.4 times): one reason the recipe trains
# at 512 px, and why notebook 04's settings on small cards stay there.
#
# **Exercise 4.** The "brighter" edit at three guidance values:

# %%
from kontext_lora_helpers.models import call_kwargs
from kontext_lora_helpers.nano.evaluate import tensor_to_pils

clean_photo = tensor_to_pils(target[:1])[0]
edits = {scale: pipe(image=clean_photo, prompt="Make the image brighter", guidance_scale=scale, num_inference_steps=20,
                     generator=torch.Generator().manual_seed(0), **call_kwargs(pipe, 64, 64)).images[0]
         for scale in (1.0, 3.5, 7.0)}
viz.show_images([clean_photo, *edits.values()], ["input", *[f"guidance {scale}" for scale in edits]], scale=2.2);

# %% [markdown]
# Nano's pretraining always fed 3.5, so its guidance embedding never learned what other values
# mean: 3.5 gives the edit it was taught, and other values give whatever the untrained directions
# of the embedding do (here a weaker or an odd edit, not a stronger one). FLUX.1-Kontext-dev was
# distilled over a range of values, so on it the scale is a real knob; a LoRA is best used at the
# value it was trained with.
#
# ## 03 · The flow-matching loss
#
# **Exercise 1.** How many training noise levels fall below 0.18:

# %%
from kontext_lora_helpers import lora, losses, objective
from kontext_lora_helpers.latents import image_token_count

mu = objective.calculate_shift(image_token_count(pipe.vae, 64, 64), pipe.scheduler.config)
schemes = {"uniform": ("uniform", None), f"logit-normal, pipeline shift (mu {mu:.2f})": ("logit_normal", mu),
           "logit-normal, nano's shift -1.5": ("logit_normal", -1.5)}
for name, (scheme, shift) in schemes.items():
    sigmas = objective.sample_sigmas(100_000, scheme, shift, generator=torch.Generator().manual_seed(0))
    print(f"{name:<40} {100 * (sigmas < 0.18).float().mean():5.1f} % below 0.18")
scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
scheduler.set_timesteps(28, mu=mu)
print("the sampler's last sigmas:", [round(s, 3) for s in scheduler.sigmas[-4:].tolist()])

# %% [markdown]
# The sampler spends its last steps below 0.1, where uniform sampling puts a tenth of the training
# steps and the pipeline's shift even fewer; nano's -1.5 puts half of them below 0.18. The
# pipeline's shift trains where the sampler *starts*; nano's recipe trains more where it *ends*,
# which for an average restoration (the posterior-mean objective) is where the detail is settled.
#
# **Exercise 2.** `x0_hat = x_sigma - sigma * v`:

# %%
generator = torch.Generator().manual_seed(0)
x0, noise = torch.randn(1, 16, 32, 32, generator=generator), torch.randn(1, 16, 32, 32, generator=generator)
velocity = objective.velocity_target(noise, x0)
velocity_error = 0.1 * torch.randn(1, 16, 32, 32, generator=generator)
for sigma in (0.1, 0.5, 0.9):
    noisy = objective.noisy_latents(x0, noise, torch.tensor([sigma]))
    exact = noisy - sigma * velocity
    with_error = noisy - sigma * (velocity + velocity_error)
    print(f"sigma {sigma}: exact velocity gives x0 back: {torch.allclose(exact, x0, atol=1e-5)};"
          f" error of x0_hat / error of v: {(with_error - x0).norm() / velocity_error.norm():.2f}")

# %% [markdown]
# The identity is exact, and an error in the velocity reaches `x0_hat` multiplied by sigma: at low
# noise a poor velocity still gives a good clean estimate, at high noise every error counts almost
# fully. This is the `-sigma` of notebook 03's gate plot.
#
# **Exercise 3.** LoRA sizes on nano:

# %%
for rank in (4, 16, 64):
    fresh = load_pipeline("nano").transformer
    layers = lora.default_target_modules(fresh)
    by_formula = sum(rank * (module.in_features + module.out_features)
                     for name, module in fresh.named_modules() if name in layers)
    lora.add_lora(fresh, rank=rank)
    counted = sum(parameter.numel() for parameter in lora.lora_parameters(fresh))
    base = sum(parameter.numel() for parameter in fresh.parameters()) - counted
    print(f"rank {rank:>2}: {counted:>9,} trainable (formula {by_formula:,}), {100 * counted / base:5.1f} % of the base")

# %% [markdown]
# The count is linear in the rank and matches `r (in + out)` summed over the adapted layers. On
# nano a LoRA is a large share of a tiny model (rank 64 is bigger than half of it); on
# FLUX.1-Kontext-dev, whose layers are 3072 wide, rank 16 is 65 M parameters, 0.55 % of 11.9 B.
#
# **Exercise 4.** The perceptual term's pull at two noise levels, linear gate:

# %%
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # random VGG features: fine for measuring a ratio
    vgg = losses.VGGPerceptualLoss(resize=False, weights=None)
transformer = pipe.transformer
lora.add_lora(transformer, rank=16)
target_latents, control_latents = objective.encode_pair(pipe.vae, target, control)
prompts = objective.PromptEmbeddingCache(pipe, 32)
text = prompts.batch([item["prompts"] for item in items])
noise = torch.randn(target_latents.shape, generator=torch.Generator().manual_seed(0))
pull = {}
for sigma in (0.2, 0.95):
    sigmas = torch.full((len(items),), sigma)
    transformer.zero_grad(set_to_none=True)
    step = objective.kontext_flow_matching_step(transformer, target_latents, control_latents, text, sigmas, noise)
    losses.perceptual_term(vgg, pipe.vae, step.x0_hat_latents(), target, sigmas, gate="linear").backward()
    pull[sigma] = lora.lora_gradient_norm(transformer)
    print(f"sigma {sigma}: gradient norm on the LoRA {pull[sigma]:.4f}")
print(f"ratio 0.95 / 0.2: {pull[0.95] / pull[0.2]:.2f};  gate x sigma predicts {(0.05 * 0.95) / (0.8 * 0.2):.2f}")

# %% [markdown]
# At sigma 0.95 the gate keeps 5 % of the term and the chain rule multiplies by 0.95; at 0.2 the
# gate keeps 80 % and the chain rule multiplies by 0.2. Their products predict about a third of
# the pull at high noise; the measured ratio also contains how different the VGG features of the two
# estimates are, so it is near that prediction, not equal to it. The linear gate leaves the
# perceptual term to the low-noise steps, where `x0_hat` can be sharp.
