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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/kontext-lora/kontext-lora-course/blob/main/notebooks/02_pairs_and_latents.ipynb)
#
# # 02 · Pairs and latents: what FLUX.1 Kontext actually sees
#
# A restoration LoRA learns from **pairs**: a degraded *control* image and the clean *target* it
# should become. Kontext never sees pixels, though. Both images go through the VAE into
# **latents**, the latents are cut into **tokens**, and the transformer reads one long sequence:
# text tokens, then the (noisy) target tokens, then the control tokens.
#
# In this notebook you will
# 1. build pairs from clean photos (`DegDataset`) and from real degraded/clean folders (`PairedDataset`),
# 2. check that each pair is pixel-aligned,
# 3. encode both images with the VAE and look at the 16 latent channels,
# 4. measure how much the VAE loses in a round trip,
# 5. pack latents into tokens and draw the sequence Kontext reads,
# 6. meet the base model: it copies images and follows a few edits, but does not restore.
#
# Everything runs on a laptop CPU with **nano Kontext**: the real diffusers classes at a tiny size
# (64x64 images, 2.4 M-parameter transformer). To use FLUX.1-Kontext-dev on a GPU, change `MODEL`.

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
import os

import torch

from kontext_lora_helpers import gpu_settings, latents, viz
from kontext_lora_helpers.course import data_samples, evaluation_dirs, held_out_dir, outputs
from kontext_lora_helpers.data import DegDataset, PairedDataset
from kontext_lora_helpers.degradations import PRESETS
from kontext_lora_helpers.models import describe_pipeline, format_description, load_pipeline, native_resolution

MODEL = "nano"  # on a GPU: "black-forest-labs/FLUX.1-Kontext-dev"
RUN = gpu_settings.run_settings(MODEL)  # quantization, offload, VAE slicing for the card found
pipe = load_pipeline(MODEL, **RUN.pipeline_kwargs())
RESOLUTION = RUN.resolution or native_resolution(pipe)  # 64 for nano, 512 for the real model
print(format_description(describe_pipeline(pipe)))

# %% [markdown]
# ## 1. Synthetic pairs with `DegDataset`
#
# `DegDataset` reads clean photos, crops a square of `resolution` pixels, and degrades a copy of
# the crop. Both come back as tensors `(3, H, W)` in `[-1, 1]`, together with the prompt and a
# record of exactly what was applied. The validation and test photos are left out: they are for
# choosing and judging.

# %%
dataset = DegDataset(
    os.path.relpath(data_samples()), "Restore this degraded photograph to high fidelity",
    config=PRESETS["course"], resolution=RESOLUTION, seed=0, exclude=evaluation_dirs(),
)
print(dataset)
items = [dataset[i] for i in range(4)]
viz.image_grid([[it["control"] for it in items], [it["target"] for it in items]],
               row_titles=["control (degraded)", "target (clean)"]);

# %% [markdown]
# Each item carries its prompt and the record of the degradation, with every sampled value:

# %%
item = items[0]
print(item["prompts"])
print(item["record"])

# %% [markdown]
# ## 2. Are the pairs aligned?
#
# The control and the target must show the same pixels: same crop, same flip, same size. A
# one-pixel shift would teach the model to *move* images. `alignment_offset` searches small shifts
# and reports the one that matches best; `(0, 0)` means aligned.

# %% tags=["nbval-check-output"]
from kontext_lora_helpers.pairs import alignment_offset

print([alignment_offset(it["control"], it["target"]) for it in items])
print({tuple(it["control"].shape) == tuple(it["target"].shape) for it in items})

# %% [markdown]
# ## 3. Real pairs with `PairedDataset`
#
# When you have real degraded photos and their clean versions (scans before and after a
# professional retouch, say), put them in two folders with matching file names. Here we make such
# folders from the held-out photos, then read them back as pairs.

# %%
from kontext_lora_helpers.degradations import apply_degradation
from kontext_lora_helpers.images import list_images, load_rgb

pairs_dir = outputs("02-pairs")  # outputs/ next to the notebook, like every output of the course
(pairs_dir / "clean").mkdir(parents=True, exist_ok=True), (pairs_dir / "degraded").mkdir(exist_ok=True)
for i, path in enumerate(list_images(held_out_dir())):
    photo = load_rgb(path)
    photo.save(pairs_dir / "clean" / f"{path.stem}.png")
    apply_degradation(photo, PRESETS["old_photo"], seed=i)[0].save(pairs_dir / "degraded" / f"{path.stem}.png")
real_pairs = PairedDataset(pairs_dir / "degraded", pairs_dir / "clean", "Restore this old photograph",
                           resolution=RESOLUTION, center_crop=True)
print(real_pairs)
viz.image_grid([[real_pairs[i]["control"] for i in range(len(real_pairs))],
                [real_pairs[i]["target"] for i in range(len(real_pairs))]],
               row_titles=["degraded", "clean"]);

# %% [markdown]
# ## 4. Into the VAE
#
# The pipeline encodes its condition image with `z = (mode(vae.encode(x)) - shift) * scale`: the
# *mode* of the latent distribution (never a random sample), then a shift and a scale chosen so the
# latents have roughly zero mean and unit variance. FLUX's VAE turns a 1024x1024 image into a
# 16x128x128 latent (8x smaller per side); nano's turns 64x64 into 16x32x32 (2x smaller, so that
# a VAE this small can keep the fine detail and the noise a restoration is judged on).

# %%
target = torch.stack([it["target"] for it in items])
control = torch.stack([it["control"] for it in items])
target_latents = latents.encode(pipe.vae, target)
control_latents = latents.encode(pipe.vae, control)
print("pixels", tuple(target.shape), "-> latents", tuple(target_latents.shape))
print(f"shift_factor={pipe.vae.config.shift_factor:.4f}  scaling_factor={pipe.vae.config.scaling_factor:.4f}")
stats = latents.latent_statistics(target_latents)
print(f"scaled latents: mean {stats['mean']:+.3f}, std {stats['std']:.3f}")

# %% [markdown]
# Sixteen channels, each a small map of the image. Some channels follow brightness, some colour,
# some edges. The degraded control's latent is grainier, with softer edges: noise and blur live in
# latent space too, and that is what the LoRA learns to undo.

# %%
viz.show_latent_channels(target_latents[0], title="target latent");
viz.show_latent_channels(control_latents[0], title="control latent");

# %% [markdown]
# ## 5. What does the VAE lose?
#
# Every restored image comes out of the VAE's decoder, so the round trip of the clean photo is
# roughly the best a restoration through it can reach (not a strict bound: some other latent may
# decode a little closer to the photo). Measure it first: encode, decode, compare. PSNR is in dB;
# every +6 dB halves the error.

# %%
reconstruction, psnr = latents.round_trip(pipe.vae, target)
print(f"VAE round trip on these crops: {psnr:.1f} dB")
viz.image_grid([list(target), list(reconstruction)], row_titles=["original", "VAE round trip"]);

# %% [markdown]
# ## 6. From latents to tokens
#
# FLUX cuts the latent into 2x2 patches and flattens each into one token of 16 x 4 = 64 numbers.
# A 32x32 latent becomes a 16x16 grid of 256 tokens. Each token gets a position id
# `(frame, row, col)`: the target image is frame 0, Kontext's condition image is frame 1. Packing
# loses nothing:

# %% tags=["nbval-check-output"]
tokens = latents.pack(target_latents)
print("latents", tuple(target_latents.shape), "-> tokens", tuple(tokens.shape))
print("unpack(pack(z)) == z:", torch.equal(latents.unpack(tokens, *target_latents.shape[-2:]), target_latents))
print("first control ids:", latents.position_ids(*control_latents.shape[-2:], frame=1)[:3].tolist())

# %% [markdown]
# ## 7. The sequence Kontext reads
#
# `objective.build_transformer_inputs` builds exactly what the pipeline passes to its transformer
# (a test in `tests/test_objective.py` compares the two): text tokens first, then the noisy target
# tokens, then the control tokens. Attention runs over all of them; the prediction is read back
# from the target span only.

# %%
from kontext_lora_helpers import objective
from kontext_lora_helpers.models import max_sequence_length_for

prompts = objective.PromptEmbeddingCache(pipe, max_sequence_length_for(pipe))
text = prompts.batch([item["prompts"]])
sigma = torch.tensor([0.7])
noisy = objective.noisy_latents(target_latents[:1], torch.randn_like(target_latents[:1]), sigma)
inputs = objective.build_transformer_inputs(noisy, control_latents[:1], text, sigma)
print({k: tuple(v.shape) for k, v in inputs.items() if isinstance(v, torch.Tensor)})
h, w = target_latents.shape[-2] // 2, target_latents.shape[-1] // 2
viz.plot_token_sequence(text.prompt_embeds.shape[1], (h, w), (h, w), inputs["img_ids"]);

# %% [markdown]
# With FLUX.1-Kontext-dev at 1024x1024 the same sequence is 512 text + 4096 target + 4096 control
# tokens: Kontext doubles the image tokens, which is why its training needs more memory than
# FLUX.1-dev's (notebook 04 has the figures).
#
# **Two numbers ride along with the tokens: the timestep and the guidance.** `timestep` is the
# noise level sigma of the target tokens (notebook 03). `guidance` needs a word of history. Most
# diffusion models steer towards the prompt with *classifier-free guidance*: every sampling step
# runs the model twice, with and without the prompt, and extrapolates from the second towards the
# first by a factor, the guidance scale. FLUX.1-dev and FLUX.1-Kontext-dev are
# *guidance-distilled*: they were trained to produce in **one** pass what that two-pass recipe
# gives, and the scale became an input, embedded like the timestep and added to it
# (`guidance_embeds=True` in the transformer's config). The pipeline's `guidance_scale` (3.5 by
# default, `models.GUIDANCE_SCALE`) is that input. Training feeds the same value, so the LoRA
# learns at the setting it will be used with; larger values follow the prompt more literally,
# smaller ones more loosely, and without a second pass either way.

# %%
print("guidance_embeds:", pipe.transformer.config.guidance_embeds,
      "| embedder:", type(pipe.transformer.time_text_embed).__name__)
print("timestep:", inputs["timestep"].tolist(), " guidance:", inputs["guidance"].tolist())

# %% [markdown]
# ## 8. Meet the base model
#
# Nano's transformer was pretrained here as a small editor in exactly this layout. Given an
# instruction it never saw, it returns its input; it follows three edits it was taught. It was
# never taught to restore, so asking it to restore a degraded photo gives the degraded photo back.
# Notebook 04 trains the LoRA that changes that.

# %%
from kontext_lora_helpers.models import call_kwargs
from kontext_lora_helpers.nano.evaluate import tensor_to_pils

photo = tensor_to_pils(target[:1])[0]
degraded = tensor_to_pils(control[:1])[0]
run = dict(num_inference_steps=20, **call_kwargs(pipe, RESOLUTION, RESOLUTION))
edited = [pipe(image=img, prompt=p, generator=torch.Generator().manual_seed(0), **run).images[0]
           for img, p in [(photo, "Flip the image horizontally"), (photo, "Make it black and white"),
                          (photo, "Make the image brighter"),
                          (degraded, "Restore this degraded photograph to high fidelity")]]
viz.show_images([photo, *edited[:3], degraded, edited[3]],
                ["input", "flip", "black and white", "brighter", "degraded input", "'restore' → copy"]);

# %% [markdown]
# ## Summary
#
# * `DegDataset` makes pixel-aligned pairs from clean photos, `PairedDataset` reads real
#   degraded/clean folders; both give `(3, H, W)` tensors in `[-1, 1]` with a prompt and a record.
# * The VAE encodes each image to 16 latent channels (FLUX: 8x smaller per side, nano: 2x), with a
#   shift and a scale; its round trip of the clean photo is roughly the best a restoration can reach.
# * Latents are packed into 2x2-patch tokens with `(frame, row, col)` ids; Kontext reads text
#   tokens, noisy target tokens (frame 0) and control tokens (frame 1) in one sequence, plus the
#   timestep and the distilled guidance value.
# * The base model copies its input when asked to restore: the LoRA has everything to learn.
#
# Next, notebook 03 builds the loss that trains the LoRA on this sequence.
#
# ## Exercises
#
# Solutions that run are in `solutions.ipynb` (section 02).
#
# **Exercise 1.** The VAE round trip is about the ceiling of every restoration. Measure it on the *degraded*
# controls too: does the VAE keep the noise, or does it clean some of it away? What would it mean
# for the LoRA if it did? *Hint:* `latents.round_trip(pipe.vae, control)` and
# `metrics.psnr` against the clean targets.
#
# **Exercise 2.** Break the alignment on purpose: shift a control image by one pixel to the right
# (`torch.roll`) and check that `alignment_offset` finds the shift. What would a LoRA trained on
# such pairs learn?
#
# **Exercise 3.** Count the tokens the transformer reads for FLUX.1-Kontext-dev at 512 x 512,
# 1024 x 1024 and a 1024 x 768 photo (512 text tokens each time). Attention costs grow with the
# square of the sequence: how much more does a 1024 px step cost than a 512 px one in attention?
# *Hint:* `latents.token_count` takes the latent size; FLUX's VAE divides each side by 8.
#
# **Exercise 4.** Run the base model's "Make the image brighter" edit with `guidance_scale` 1.0,
# 3.5 and 7.0 (same seed) and compare. Nano's pretraining always fed 3.5: what do you expect from
# the other values, and what do you see?

# %% [markdown]
# ## References
#
# - Black Forest Labs. *FLUX.1 Kontext: Flow Matching for In-Context Image Generation and Editing
#   in Latent Space.* 2025, arXiv:2506.15742, Section 3: the context image's tokens appended after
#   the target's, told apart by a constant offset in the first position index.
# - R. Rombach, A. Blattmann, D. Lorenz, P. Esser, B. Ommer. *High-Resolution Image Synthesis with
#   Latent Diffusion Models.* CVPR 2022, arXiv:2112.10752: generating in a VAE's latent space.
# - P. Esser et al. *Scaling Rectified Flow Transformers for High-Resolution Image Synthesis* (SD3).
#   ICML 2024, arXiv:2403.03206: the joint text-image attention (MM-DiT) FLUX's double blocks follow.
# - J. Su et al. *RoFormer: Enhanced Transformer with Rotary Position Embedding.* arXiv:2104.09864:
#   the rotary position embedding the three position ids feed.
# - J. Ho, T. Salimans. *Classifier-Free Diffusion Guidance.* arXiv:2207.12598; C. Meng et al. *On
#   Distillation of Guided Diffusion Models.* CVPR 2023, arXiv:2210.03142: guidance distilled into
#   a model that takes the guidance scale as an input, as FLUX.1-dev and Kontext-dev do.
# - Code: diffusers' `pipeline_flux_kontext.py` (`_pack_latents`, `_prepare_latent_image_ids`,
#   `prepare_latents`), which `latents` reproduces and the tests compare with.
