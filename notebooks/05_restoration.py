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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/kontext-lora/kontext-lora-course/blob/main/notebooks/05_restoration.ipynb)
#
# # 05 · Restoring photographs and measuring the result
#
# Notebook 04 trained a restoration LoRA. This notebook uses it the way you would on your own
# photos, with the same functions as the `restore` and `evaluate` commands, and measures what it
# does:
#
# 1. **Degraded inputs**: the held-out photos, degraded with the training recipe, at the size the
#    model works at and at a size of their own.
# 2. **Base model versus base + LoRA**, same seed, side by side and zoomed; images of any size come
#    back at their own size, whole or tile by tile.
# 3. **A before/after slider** to compare a restoration with its input.
# 4. **The numbers**: restored images written to folders and scored against the clean photos
#    (PSNR, SSIM) with `evaluate_folders`.
# 5. **How strong should the LoRA be?** A `lora_scale` sweep against PSNR.
# 6. **The real model**: FLUX.1-Kontext-dev with the LoRA in diffusers, the `restore` command,
#    and the LoRA exported for ComfyUI.
#
# On a CPU everything runs with nano Kontext in a minute or two. To restore with
# FLUX.1-Kontext-dev on a GPU, change `MODEL`.

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
import time

import matplotlib
import numpy as np
import torch
from safetensors import safe_open

from kontext_lora_helpers import export, gpu_settings, restore, viz
from kontext_lora_helpers.classical import classical_restore, tune_strength
from kontext_lora_helpers.course import outputs, test_dir, validation_dir
from kontext_lora_helpers.degradations import PRESETS, degrade_each
from kontext_lora_helpers.evaluate import evaluate_folders, format_table
from kontext_lora_helpers.images import centre_window, list_images, load_rgb
from kontext_lora_helpers.latents import pixel_multiple
from kontext_lora_helpers.lora import LORA_WEIGHT_NAME
from kontext_lora_helpers.metrics import paired_spread, psnr, spread
from kontext_lora_helpers.nano import __main__ as nano_command
from kontext_lora_helpers.models import load_pipeline, model_source, native_resolution, quiet_library_output
from kontext_lora_helpers.viz_degradations import prepare_photo
from kontext_lora_helpers.viz_restoration import (
    BeforeAfter,
    lora_scale_sweep,
    plot_method_comparison,
    plot_scale_sweep,
    save_pngs,
    vae_ceiling_psnr,
    wipe,
)

MODEL = "nano"  # on a GPU: "black-forest-labs/FLUX.1-Kontext-dev"
LORA_DIR = outputs("04-restoration-lora")  # where notebook 04 saves the LoRA
OUTPUT_DIR = outputs("05-restoration")
SEED = 0  # every restoration below starts from the same noise, so only the model differs
# 72 dpi keeps the stored notebook small; raise it for sharper figures on a high-density screen.
matplotlib.rcParams["figure.dpi"] = 72

# %% [markdown]
# ## The LoRA from notebook 04
#
# The degradation is the one the LoRA was trained on: x2 downsampling, noise 0.1 and blur 0.5
# (notebook 01's `downsample,noise,blur`). On Colab every notebook runs on a machine of its own, so
# notebook 04's LoRA may not be here: then `notebook_lora` trains it with exactly notebook 04's
# settings into the same folder and says so (on a CPU that takes two minutes; an interrupted run of
# notebook 04 is continued from its last checkpoint). When the file is there, nothing is trained.

# %%
DEGRADATION = PRESETS["course"]  # notebook 04's: x2 down, noise 0.1, blur 0.5
gpu_settings.notebook_lora(MODEL, LORA_DIR, DEGRADATION)
print(f"LoRA: {LORA_DIR / LORA_WEIGHT_NAME} ({(LORA_DIR / LORA_WEIGHT_NAME).stat().st_size / 1024:.0f} KB)")

RUN = gpu_settings.run_settings(MODEL)  # quantization, offload, VAE slicing for the card found
pipe = load_pipeline(MODEL, **RUN.pipeline_kwargs())
NATIVE, MULTIPLE = native_resolution(pipe), pixel_multiple(pipe.vae)
RESOLUTION = RUN.resolution or NATIVE  # the size the LoRA was trained at (notebook 04)
print(f"{MODEL}: native size {NATIVE} px, image sides in multiples of {MULTIPLE} px")

# %% [markdown]
# ## 1. Degraded inputs
#
# The course keeps three sets of photos apart (`data_samples/SOURCES.md`): the LoRA trained on the
# **training** photos; every choice below (the LoRA's strength, the classical denoiser's) is made on
# the 6 **validation** photos; and the 4 **test** photos only report, once everything is chosen.
# Nothing trains on the last two. The test photos, degraded with the training recipe by a fixed
# seed per photo, in two versions:
#
# * **at the training size**: centre squares of 64 px, the size nano works at and the LoRA
#   learnt at, as training crops them. Sections 4 and 5 score these.
# * **at a size of their own**: 250 x 187 pixel windows cut from the photos without resizing,
#   the kind of odd size a real photo has. The degradation's parameters are in pixels, so the
#   same recipe is applied at this scale.

# %%
photos = list_images(test_dir())  # the test photos: they report
names = [path.name for path in photos]
validation_photos = list_images(validation_dir())  # the validation photos: they choose


clean = [prepare_photo(load_rgb(path), RESOLUTION) for path in photos]
degraded = degrade_each(clean, DEGRADATION)  # photo i with seed i
clean_own = [centre_window(load_rgb(path), 250, 187) for path in photos]  # no resizing
degraded_own = degrade_each(clean_own, DEGRADATION)
viz.image_grid([degraded, clean], row_titles=["degraded", "clean"], col_titles=names, scale=1.3);

# %% [markdown]
# ## 2. Base model versus base + LoRA
#
# `restore.restore_images` runs the pipeline on a list of images (images of one size share a
# call) and returns each at its input's size. First the base model; then the LoRA is loaded with
# `restore.load_loras`, which checks the file against the model before diffusers loads it, and
# the same images are restored again with the same seed.
#
# Every restoration runs the number of denoising steps the LoRA file records,
# `restore.restoration_steps`: nano's recipe trains every point of the sampler's path to aim at one
# image, so a few steps restore as well as the pipeline's default 28 (section 5 measures the
# curve); a flow-matching LoRA, or a file from elsewhere, gets 28. The base model runs the same
# steps, so the comparison changes one thing only.

# %%
STEPS = restore.restoration_steps(pipe, [LORA_DIR])  # read from the LoRA file; nothing is loaded yet
print(f"{STEPS} denoising steps (the pipeline's default: {restore.default_num_inference_steps(pipe)})")
base_restored = restore.restore_images(pipe, degraded, num_inference_steps=STEPS, seed=SEED)

loras = restore.load_loras(pipe, [LORA_DIR])  # one LoRA at its trained strength (scale 1.0)
lora_restored = restore.restore_images(pipe, degraded, num_inference_steps=STEPS, seed=SEED)
lora_own = restore.restore_images(pipe, degraded_own, num_inference_steps=STEPS, seed=SEED)
print(f"loaded {loras[0]['layers']} LoRA layers of rank {loras[0]['ranks']} as adapter {loras[0]['adapter_name']!r}")

# %% [markdown]
# One row per photo, then one photo enlarged with a zoomed crop (the yellow box) and its PSNR
# against the clean photo (higher is closer); section 4 measures all of them.

# %%
viz.image_grid([[d, b, r, c] for d, b, r, c in zip(degraded, base_restored, lora_restored, clean)],
               row_titles=names, col_titles=["degraded", "base model", "base + LoRA", "clean"], scale=1.3);

# %%
index = 2  # coffee.jpg: fine edges on the cup and the saucer
columns = {"degraded": degraded[index], "base model": base_restored[index],
           "base + LoRA": lora_restored[index], "clean": clean[index]}
viz.show_images(list(columns.values()), zoom_box=(8, 16, 40, 48), scale=2.4,
                titles=[f"{label}\n{psnr(image, clean[index]):.2f} dB" if label != "clean" else label
                        for label, image in columns.items()]);

# %% [markdown]
# **Any size in, the same size out.** A 250 x 187 photo is not what the model works at. Whole
# (the default), `restore` resizes it to a *working size* with the model's area (64 x 64 for nano,
# about 1024 x 1024 for FLUX) and the photo's aspect ratio, in sides that are multiples of 4 px
# (nano) or 16 px (FLUX), runs the pipeline there, and resizes the result back:

# %% tags=["nbval-check-output"]
for image, restored in zip(degraded_own[:1] + degraded[:1], lora_own[:1] + lora_restored[:1]):
    run_size = restore.working_size(*image.size, NATIVE, MULTIPLE)
    print(f"input {image.width}x{image.height} -> pipeline at {run_size[0]}x{run_size[1]} "
          f"-> restored {restored.width}x{restored.height}")

# %% [markdown]
# On nano, squeezing 250 x 187 pixels through the 72 x 52 working size printed above throws most of
# the detail away, whatever the model does. `tile=True` keeps the photo's own resolution instead: the image is
# cut into overlapping tiles of the native size (for nano 5 x 4 tiles of 64 px, overlapping by a
# quarter tile), each tile is restored, and neighbouring tiles are blended with weights that fade
# towards their edges, so no seam shows. It costs a denoising run per tile (20 tiles here,
# restored 8 per pipeline call: several seconds on a CPU, against a fraction of a second whole).
#
# Note what the nano LoRA saw in training: squares covering a quarter to all of a photo's short
# side, resized to 64 px (`TrainConfig.crop_scale` 0.25-1), 72 to 512 px windows of the training
# photos. A 64 px tile of a photo at its full resolution is a smaller window than the smallest of
# them, content at a finer scale; a LoRA for tiled use would be trained on crops of that scale (a
# smaller `crop_scale`, or photos stored smaller).

# %%
lora_tiled = restore.restore_image(pipe, degraded_own[index], num_inference_steps=STEPS, seed=SEED, tile=True,
                                   batch_size=8)
layout = restore.plan_tiles(*degraded_own[index].size, NATIVE, MULTIPLE)  # None: smaller than one tile
run_size = restore.working_size(*degraded_own[index].size, NATIVE, MULTIPLE)
tiled_label = f"tiled ({len(layout.xs)}x{len(layout.ys)} tiles)" if layout else "tiled (one tile: run whole)"
columns = {"degraded": degraded_own[index], f"whole ({run_size[0]}x{run_size[1]})": lora_own[index],
           tiled_label: lora_tiled, "clean": clean_own[index]}
viz.show_images(list(columns.values()), zoom_box=(100, 60, 164, 124), scale=2.2,
                titles=[f"{label}\n{psnr(image, clean_own[index]):.2f} dB" if label != "clean" else label
                        for label, image in columns.items()],
                suptitle=f"base + LoRA on a {degraded_own[index].width}x{degraded_own[index].height} photo");

# %% [markdown]
# ## 3. A before/after slider
#
# `BeforeAfter(before, after)` joins the two images at a divider: `before` to its left, `after`
# to its right. Drag the slider to move it; the picture is redrawn when you let go
# (`continuous_update=False`), and `zoom` enlarges the pixels so a small image stays readable. The
# picture is made by the plain function `wipe(before, after, position)`, which the course's tests
# call without a browser.

# %%
viewer = BeforeAfter(degraded_own[index], lora_tiled, position=0.5, zoom=2,
                     before_label="degraded", after_label="base + LoRA, tiled")
viewer

# %% [markdown]
# The slider is an ordinary widget: setting its value from code moves the divider exactly as
# dragging does. Where the widget is not live (a notebook viewed on GitHub), here are three of its
# positions as pictures:

# %%
viewer.slider.value = 0.7
positions = (0.25, 0.5, 0.75)
viz.show_images([wipe(degraded_own[index], lora_tiled, position) for position in positions],
                titles=[f"position {position}: degraded | restored" for position in positions], scale=2.6);

# %% [markdown]
# ## 4. The numbers
#
# `evaluate_folders` compares folders of images by file name: the restored images (here, base +
# LoRA), the clean references, and optionally the degraded inputs and the base model's output.
# `save_pngs` writes each set under `outputs/05-restoration/` as lossless PNGs named after the
# photos. The table gives PSNR (dB, higher is better) and SSIM (1 = identical structure) per
# image and the means, and the PSNR gain of the LoRA over the degraded input and over the base
# model. LPIPS runs only when its network weights are already on the machine; nothing is
# downloaded.

# %%
image_sets = {"clean": clean, "degraded": degraded, "base": base_restored, "lora": lora_restored}
for folder, images in image_sets.items():
    save_pngs(images, names, OUTPUT_DIR / folder)
result = evaluate_folders(OUTPUT_DIR / "lora", OUTPUT_DIR / "clean",
                          degraded=OUTPUT_DIR / "degraded", base=OUTPUT_DIR / "base")
print(format_table(result))

# %% [markdown]
# The same table from a terminal (it also writes `metrics.csv` and `metrics.json`):
#
# ```bash
# python -m kontext_lora_helpers.evaluate --restored outputs/05-restoration/lora \
#     --reference outputs/05-restoration/clean --degraded outputs/05-restoration/degraded \
#     --base outputs/05-restoration/base
# ```
#
# Before reading the table as a verdict on the LoRA, two more numbers: how far the base model
# moved away from its input, and the most any restoration could score through this VAE (every
# output image comes out of the VAE's decoder, so the clean photos' own encode-decode round trip
# is about the ceiling).

# %%
gains = result["mean"]["gains"]
scores = result["mean"]["scores"]
ceiling = vae_ceiling_psnr(pipe, clean)
per_photo = {method: [row["scores"][method]["psnr"] for row in result["images"]]
             for method in ("degraded", "base", "restored")}
print(f"VAE round trip of the clean photos (about the ceiling): {spread(ceiling)} dB")
print(f"base model:   {spread(per_photo['base'])} dB, "
      f"{paired_spread(per_photo['base'], per_photo['degraded']).mean:+.2f} dB over the degraded input")
lora_gain = paired_spread(per_photo["restored"], per_photo["base"])
print(f"base + LoRA:  {spread(per_photo['restored'])} dB, {gains['psnr_vs_degraded']:+.2f} dB over the degraded input, "
      f"{lora_gain.mean:+.2f} ± {lora_gain.std:.2f} dB over the base model (mean ± std over {lora_gain.n} photos)")

# %% [markdown]
# How to read these numbers on nano: its VAE reconstructs these clean 64 px photos at about 36 dB,
# far above every line here, and the base model, asked to restore, returns its input as the VAE
# represents it: a little smoother than the degraded input, so about a decibel above it, and no
# more. Everything the LoRA adds over the base model is restoration it learned. Each figure is a
# mean ± the standard deviation over the 4 test photos; the photos differ far more from each other
# than the methods do, so for "the LoRA beats the base model" the spread that counts is that of the
# per-photo gain (the last line), and 4 photos make even that a rough figure. The README's check
# (`nano check-lora`) reports the 500-step recipe on 16 test crops instead. Notebook 04's
# validation figures came from the *validation* photos, so they differ from these.
# With FLUX.1-Kontext-dev the same two cells measure the real model.
#
# ## 5. How strong should the LoRA be?
#
# A LoRA adds `scale x (alpha / rank) x B A` to each adapted weight, and the scale can be chosen
# at inference: 0 turns the LoRA off (the base model), 1 applies it as trained, values in between
# blend, and values above 1 exaggerate it. `lora_scale_sweep` restores the same images at each
# scale (through `restore.restore_images`, same seed) and scores them; afterwards the LoRA is back
# at its own scale. With several LoRAs loaded, each is multiplied, so their mix is kept.
#
# The scale is a choice, so it is made on the validation photos: the sweep runs there, the best
# scale is kept, and only then are the test photos measured at it.

# %%
SCALES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25)
validation_clean = [prepare_photo(load_rgb(path), RESOLUTION) for path in validation_photos]
validation_degraded = degrade_each(validation_clean, DEGRADATION)
validation_points = lora_scale_sweep(pipe, loras, validation_degraded, validation_clean, scales=SCALES,
                                     num_inference_steps=STEPS, seed=SEED)
for point in validation_points:
    print(f"lora_scale {point.scale:4.2f}: validation PSNR {spread(point.psnr)} dB, mean SSIM {point.mean_ssim:.3f}")
chosen = max(validation_points, key=lambda point: point.mean_psnr)
print(f"chosen on the {len(validation_photos)} validation photos: lora_scale {chosen.scale:g}")
plot_scale_sweep(validation_points, references={
    "degraded input": float(np.mean([psnr(d, c) for d, c in zip(validation_degraded, validation_clean)])),
    "VAE ceiling": float(np.mean(vae_ceiling_psnr(pipe, validation_clean)))});

# %% [markdown]
# The test photos at the chosen scale, and, for the pictures below, at every scale:

# %%
points = lora_scale_sweep(pipe, loras, degraded, clean, scales=SCALES, num_inference_steps=STEPS, seed=SEED)
at_chosen = next(point for point in points if point.scale == chosen.scale)
print(f"test photos at lora_scale {chosen.scale:g}: {spread(at_chosen.psnr)} dB (mean ± std over {len(photos)} photos)")

# %% [markdown]
# Scale 0 and scale 1 are the base model and the LoRA of section 2, pixel for pixel, since the
# seed is the same:

# %% tags=["nbval-check-output"]
def same(first, second):
    return all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, second, strict=True))


print("scale 0 gives the base model's images:", same(points[0].images, base_restored))
print("scale 1 gives the LoRA's images:", same(points[4].images, lora_restored))

# %%
viz.image_grid([[point.images[index] for point in points] + [clean[index]]],
               col_titles=[f"scale {point.scale:g}" for point in points] + ["clean"], scale=1.4);

# %% [markdown]
# The scale is a knob for the finished LoRA: `load_loras(pipe, [path], [0.75])` in Python,
# `--lora_scale 0.75` on the command line. Choose it on validation photos, never on the photos
# that then report the result (the best scale in hindsight on the test photos would overstate what
# a new photo gets), and remember that PSNR rewards smooth, safe answers: a scale that looks
# sharper can score lower. On nano the curve mostly says how far the LoRA moves the output away
# from the base model's smoothing; run the same cell with the real model and its own LoRA before
# settling on a scale for it.
#
# **How many steps?** The step count is a choice too, and `restoration_steps`'s value for nano's
# recipe was chosen on the validation photos (`tests/benchmarks/bench_steps.py`: the fewest steps
# within 0.1 dB of 28 on 24 validation crops). The same curve on this notebook's LoRA and
# validation photos, with the time each count takes:

# %%
for steps in sorted({1, 2, STEPS, 12, 28}):
    started = time.perf_counter()
    restored = restore.restore_images(pipe, validation_degraded, num_inference_steps=steps, seed=SEED)
    seconds = time.perf_counter() - started
    print(f"{steps:2d} steps: validation PSNR {spread([psnr(r, c) for r, c in zip(restored, validation_clean)])} dB, "
          f"{seconds:.2f} s for {len(restored)} photos")

# %% [markdown]
# What fewer steps give up: one step returns the model's first estimate from pure noise, a
# smooth guess at the photo; the next few steps put back the detail that the control image pins
# down. Past the recorded count the curve is flat within its spread, while the time grows with
# every step. That holds for a LoRA trained with `posterior_mean`, whose every point on the
# sampler's path aims at the same image. A flow-matching LoRA behaves the other way round on this
# measure: its PSNR *rises* as steps are taken away (in the benchmark, 22.9 dB at 1 step against
# 21.5 dB at 28 on the validation crops), because a few coarse steps average over the images it
# could draw instead of drawing one, and PSNR rewards the blur. For such a LoRA, and for
# FLUX.1-Kontext-dev, which draws, the step count is a choice between fidelity and sharpness, not
# a free speed-up, so their files record the pipeline's 28.
#
# ## 6. How good is that? A classical yardstick
#
# A gain over the degraded input says the LoRA helps; it does not say whether a restoration needed
# a 12 B model (or nano) at all. The yardstick here is a classical denoiser from scikit-image,
# **non-local means**, which averages each pixel with pixels whose neighbourhoods look alike and
# needs no training at all. Its one knob, the strength, is chosen where every choice is made: on
# the validation photos, degraded the same way (`classical.tune_strength`), never on the test
# photos it is then scored on.
#
# Scores depend on the scale of the content, so the comparison runs at two crop scales: the whole
# photo resized to 64 px (section 1's images) and a 64 px window of the photo at half its stored
# size, where each pixel holds finer detail and more of it is texture. The base model and the LoRA
# come from `lora_scale_sweep` at scales 0 and 1. With 4 test photos, a margin smaller than the
# spread of the per-photo margins printed with it is no verdict either way.

# %%
CROPS = {f"whole photo at {RESOLUTION} px": lambda photo: prepare_photo(photo, RESOLUTION),
         f"{RESOLUTION} px window at half size": lambda photo: centre_window(photo.reduce(2), RESOLUTION, RESOLUTION)}
if any(min(load_rgb(path).size) < 2 * RESOLUTION for path in [*photos, *validation_photos]):
    del CROPS[f"{RESOLUTION} px window at half size"]  # the course's photos are too small for it at this size

yardstick, examples = {}, {}
for crop_name, crop in CROPS.items():
    tune_clean = [crop(load_rgb(path)) for path in validation_photos]  # the strength is chosen here,
    strength, _ = tune_strength(degrade_each(tune_clean, DEGRADATION), tune_clean, "nlm")
    test_clean = [crop(load_rgb(path)) for path in photos]  # and scored on the test photos
    test_degraded = degrade_each(test_clean, DEGRADATION)
    base_point, lora_point = lora_scale_sweep(pipe, loras, test_degraded, test_clean, scales=(0.0, 1.0),
                                              num_inference_steps=STEPS, seed=SEED)
    denoised = classical_restore(test_degraded, "nlm", strength)
    yardstick[crop_name] = {"degraded input": np.mean([psnr(d, c) for d, c in zip(test_degraded, test_clean)]),
                            "base model": base_point.mean_psnr,
                            "non-local means": np.mean([psnr(d, c) for d, c in zip(denoised, test_clean)]),
                            "base + LoRA": lora_point.mean_psnr}
    examples[crop_name] = [test_degraded[index], denoised[index], lora_point.images[index], test_clean[index]]
    margin = paired_spread(lora_point.psnr, [psnr(d, c) for d, c in zip(denoised, test_clean)])
    print(f"{crop_name}: non-local means at strength {strength:g} (tuned on {len(validation_photos)} validation "
          f"photos); the LoRA {'leads' if margin.mean > 0 else 'trails'} it by {abs(margin.mean):.2f} dB "
          f"(per-photo margins: std {margin.std:.2f} dB)")
plot_method_comparison(yardstick, title="test photos, course degradation");

# %%
viz.image_grid(list(examples.values()), row_titles=list(examples),
               col_titles=["degraded", "non-local means", "base + LoRA", "clean"], scale=1.5);

# %% [markdown]
# Read the bars plainly. Where the LoRA is ahead of non-local means, that margin (not the gain over
# the degraded input) is what its training bought; where it is level or behind, a few milliseconds
# of classical denoising do as well, and the LoRA has more to learn: longer training, or training
# crops closer to that scale (`TrainConfig.crop_scale`), which exercise 1 tries. Nano is a tiny model
# trained for minutes; the same comparison with FLUX.1-Kontext-dev and its LoRA is the one that
# decides whether a real restoration LoRA is worth its GPU hours. `evaluate` adds the same
# yardstick as a column of its table: `--classical nlm` with `--classical_tune_degraded` and
# `--classical_tune_reference` naming validation folders (it refuses the evaluated ones).
#
# ## 7. The real model
#
# On a GPU, the LoRA works in plain diffusers, with the original guide's inference snippet. It runs
# here first on nano: `nano export` writes nano as a standard diffusers folder, with a model card
# (the folder's `README.md`) that gives the exact call nano needs. Its key part:

# %%
NANO_FOLDER = OUTPUT_DIR / "nano-diffusers"
nano_command.main(["export", str(NANO_FOLDER), "--overwrite"])  # python -m kontext_lora_helpers.nano export DIR
card = (NANO_FOLDER / "README.md").read_text()
print(card[card.index("## Use it"):card.index("```python")])

# %% [markdown]
# Those arguments matter: called without `max_sequence_length=32`, the pipeline pads nano's prompt
# to its default 512 tokens. It calls T5 without an attention mask and passes the transformer no
# text mask either, so nano's transformer, which learned to read 32 text states, reads 480 more
# states of pad tokens (and T5's states of the 32 real tokens change too, since they attend to the
# pads), and returns a poor image without any warning (exercise 3 measures how poor). Here is the original guide's snippet, unchanged except
# for the paths, float32 on the CPU instead of bf16 on CUDA, and nano's size and text length from
# its card:

# %%
if MODEL == "nano":
    quiet_library_output()  # loading bars, notes, and torch_dtype's rename to dtype in diffusers 0.42

    from diffusers import FluxKontextPipeline
    from diffusers.utils import load_image

    pipeline = FluxKontextPipeline.from_pretrained(
        str(NANO_FOLDER),
        torch_dtype=torch.float32,
    ).to("cpu")

    pipeline.load_lora_weights(str(LORA_DIR))
    pipeline.set_progress_bar_config(disable=True)  # no denoising bar in the stored notebook

    input_image = load_image(str(OUTPUT_DIR / "degraded" / "coffee.png"))
    prompt = "Restore this degraded photograph to high fidelity"
    enhanced_image = pipeline(
        image=input_image,
        prompt=prompt,
        guidance_scale=3.5,
        num_inference_steps=STEPS,  # what the LoRA records (the pipeline's default is 28)
        height=64, width=64, max_area=64 * 64, _auto_resize=False, max_sequence_length=32,  # nano's card
        generator=torch.Generator().manual_seed(SEED),
    ).images[0]

    enhanced_image.save(OUTPUT_DIR / "restored_image.png")
    print(f"the guide's snippet: {psnr(enhanced_image, clean[index]):.2f} dB; section 2's restore_images: "
          f"{psnr(lora_restored[index], clean[index]):.2f} dB against the clean photo")

# %% [markdown]
# The plain diffusers call and the course's `restore_images` give the same restoration: the LoRA
# file is a standard diffusers LoRA, and nothing in the course's restoration is hidden from a plain
# pipeline.
#
# **The snippet's size trap.** The guide's snippet passes no `height` or `width`, and then the
# pipeline returns exactly its default size, a square (1024 x 1024 for FLUX.1-Kontext-dev; for
# nano, whose card fixes the area at 64 x 64, 64 x 64), whatever the photo's shape: it resizes the
# photo to a Kontext resolution of the photo's aspect ratio as the condition, but generates the
# square. A 250 x 187 photo comes back square, and stretched back to its own shape it is distorted.
# The fix is to pass a `height` and `width` of the photo's aspect ratio (`restore.working_size`
# computes them in the right multiples) and resize the result back, which is what `restore_image`
# does:

# %%
if MODEL == "nano":
    photo = degraded_own[index]
    nano_call = dict(prompt=prompt, guidance_scale=3.5, max_area=64 * 64, _auto_resize=False, max_sequence_length=32)
    square = pipeline(image=photo, generator=torch.Generator().manual_seed(SEED), **nano_call).images[0]
    run_width, run_height = restore.working_size(*photo.size, NATIVE, MULTIPLE)
    shaped = pipeline(image=photo, height=run_height, width=run_width, generator=torch.Generator().manual_seed(SEED),
                      **nano_call).images[0]
    print(f"photo {photo.size[0]}x{photo.size[1]}; snippet without height/width -> {square.size[0]}x{square.size[1]}; "
          f"with height={run_height}, width={run_width} -> {shaped.size[0]}x{shaped.size[1]}")
    viz.show_images([photo, square, square.resize(photo.size), shaped.resize(photo.size)], scale=2.2,
                    titles=["degraded photo", "snippet's square", "square, back to the photo's shape",
                            "height/width of its shape"]);

# %% [markdown]
# With FLUX.1-Kontext-dev the snippet's text length (512 tokens) is the model's own, and its size
# is 1024 x 1024 unless you pass the photo's. The whole pipeline in bf16 takes about 34 GB of GPU memory (transformer
# 23.8 GB, T5 text encoder 9.5 GB), so this plain form wants a 40 GB card or larger; on smaller
# ones `load_pipeline(MODEL, quantize="nf4")` or the command's `--quantize nf4` stores the
# transformer in 4 bits. The model is gated: accept its licence on the Hugging Face hub and log in
# first. The cell runs only when `MODEL` names a real checkpoint (a hub id or a local folder, not
# nano or a random-weight twin), and first frees this notebook's pipeline, since one copy of a 12 B
# model is enough.

# %%
if model_source(MODEL) in ("hub", "local"):
    del pipe
    torch.cuda.empty_cache()
    degraded_image = degraded_own[index]

    from diffusers import FluxKontextPipeline
    pipeline = FluxKontextPipeline.from_pretrained(MODEL, torch_dtype=torch.bfloat16).to("cuda")
    pipeline.load_lora_weights(str(LORA_DIR))
    width, height = restore.working_size(*degraded_image.size, 1024, 16)  # the photo's shape, FLUX's area
    restored = pipeline(image=degraded_image, prompt="Restore this degraded photograph to high fidelity",
                        guidance_scale=3.5, height=height, width=width).images[0].resize(degraded_image.size)

    # Without height and width the plain call returns a 1024 x 1024 square (the trap above);
    # restore_image makes this same call and resizes back for you.
    print(f"input {degraded_image.size}, pipeline at {width}x{height}, output {restored.size}")
    viz.show_images([degraded_image, restored], titles=["degraded", "FLUX.1-Kontext-dev + LoRA"], scale=4)

# %% [markdown]
# **The command line.** `python -m kontext_lora_helpers.restore` (also `kontext-lora restore`)
# does what section 2 did, for a file or a whole folder, and writes a PNG plus a JSON record of
# every setting per image:
#
# ```bash
# python -m kontext_lora_helpers.restore --pretrained_model_name_or_path black-forest-labs/FLUX.1-Kontext-dev \
#     --lora_weights outputs/04-restoration-lora --lora_scale 1.0 \
#     --input my_photos --output outputs/restored --seed 0 --tile --batch_size 4
# ```
#
# Here it runs in this process on one of the degraded 64 px photos, with nano: the command gives
# the image section 2 gave (batched runs may round a pixel differently by one level).

# %%
command = ["--pretrained_model_name_or_path", MODEL, "--lora_weights", str(LORA_DIR),
           "--input", str(OUTPUT_DIR / "degraded" / "coffee.png"), "--output", str(OUTPUT_DIR / "command"),
           "--seed", str(SEED), "--overwrite"]
if MODEL == "nano":  # with the real model this would load a second copy of it; run it in a terminal
    restore.main(command)
    from_command = load_rgb(OUTPUT_DIR / "command" / "coffee.png")
    difference = np.abs(np.asarray(from_command, dtype=int) - np.asarray(lora_restored[index], dtype=int)).max()
    print(f"largest difference from section 2's image: {difference} of 255 levels")
    record = json.loads((OUTPUT_DIR / "command" / "coffee.json").read_text())
    print(json.dumps({key: record[key] for key in ("input_size", "working_size", "loras", "num_inference_steps",
                                                   "guidance_scale", "seed")}, indent=1))

# %% [markdown]
# **ComfyUI.** The trained file is in diffusers' layout (`transformer.<module>.lora_A.weight`).
# ComfyUI reads that layout too, but not the alpha, which diffusers keeps in the file's metadata
# (`lora_adapter_metadata`), not as a tensor, so it applies a diffusers file correctly only when
# `lora_alpha` equals the rank. The kohya layout with Black Forest Labs'
# module names (`lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`, q, k and v fused into one
# layer) carries its alpha, and `export`'s file in that layout was checked to load exactly in
# ComfyUI's own loader: that is the file to give ComfyUI. `export` converts exactly (the fused
# layers become one LoRA of the summed rank):
#
# ```bash
# python -m kontext_lora_helpers.export --lora_weights outputs/04-restoration-lora --format comfyui \
#     --output outputs/restoration_lora_comfyui.safetensors
# ```
#
# It takes a second, so it runs here too:

# %%
COMFYUI_FILE = OUTPUT_DIR / "restoration_lora_comfyui.safetensors"
export.main(["--lora_weights", str(LORA_DIR), "--format", "comfyui", "--output", str(COMFYUI_FILE), "--overwrite"])
with safe_open(str(COMFYUI_FILE), framework="pt") as handle:
    keys = sorted(handle.keys())
print(f"{len(keys)} tensors, e.g.", *keys[:3], sep="\n  ")

# %% [markdown]
# Copy the file into `ComfyUI/models/loras/` and apply it with a *LoraLoaderModelOnly* node
# between the FLUX.1 Kontext [dev] model loader and the sampler; the node's `strength_model` is
# the `lora_scale` of section 5. For nano the file is only a demonstration (ComfyUI runs the real
# model); a LoRA trained on FLUX.1-Kontext-dev converts the same way.
#
# ## Summary
#
# * `restore_images` and `restore_image` return every image at its own size, whole or tiled;
#   `load_loras` switches a LoRA on at any scale, and the same seed makes base and LoRA comparable
#   pixel for pixel.
# * `evaluate_folders` turns folders of results into PSNR and SSIM against the clean photos, with
#   the gains over the degraded input and the base model; the scale sweep shows how the score
#   depends on the LoRA's strength.
# * A classical denoiser, tuned on other photos, is the yardstick: it says how much of the LoRA's
#   gain a method without any training gets, and where the LoRA is worth its training.
# * The LoRA works in plain diffusers (`load_lora_weights`, with nano's exported folder as with
#   FLUX.1-Kontext-dev), from the `restore` command, and in ComfyUI after `export`.
#
# ## Exercises
#
# Solutions that run are in `solutions.ipynb` (section 05).
#
# **Exercise 1.** *Beat the yardstick by more.* Section 6 measured the LoRA against non-local
# means at two crop scales; the margin is small. Try two ways to widen it (or to close it, where
# the denoiser is ahead): run the denoiser on the LoRA's output, and train a short LoRA on crops of
# the window scale only. Measure both on the test photos, tuning anything you tune on the
# validation photos only. *Hint:* `classical_restore`, and `TrainConfig.crop_scale` for the size of the
# training crops (a fraction of the photo's short side).
#
# **Exercise 2.** *Damage the LoRA never saw.* Degrade the test photos with notebook 01's
# `old_photo` preset and restore them with the LoRA. What does it repair, what does it leave, and
# why? *Hint:* compare with the base model and look at the colours and the scratches.
#
# **Exercise 3.** *The trap.* Call the exported nano folder with section 7's snippet but without
# `max_sequence_length=32`, on the clean 64 px photos with the base model (no LoRA loaded: nano
# then returns its input), and measure PSNR against the photos with and without the argument. What
# happened to the prompt?
#
# **Exercise 4.** *The price of hindsight.* Section 5 chose `lora_scale` on the validation photos.
# Which scale would the test photos themselves have picked, and how many decibels would that
# choice have "gained"? Repeat with the scale chosen on crops of the *training* photos. Why is only
# the validation choice a fair figure for a new photo?

# %% [markdown]
# ## References
#
# - A. Buades, B. Coll, J.-M. Morel. *A non-local algorithm for image denoising.* CVPR 2005: the
#   non-local means yardstick of section 6.
# - L. I. Rudin, S. Osher, E. Fatemi. *Nonlinear total variation based noise removal algorithms.*
#   Physica D 1992; A. Chambolle, *An algorithm for total variation minimization and applications*,
#   J. Math. Imaging Vis. 2004: `classical`'s `tv` method.
# - Z. Wang, A. C. Bovik, H. R. Sheikh, E. P. Simoncelli. *Image Quality Assessment: From Error
#   Visibility to Structural Similarity.* IEEE TIP 2004: SSIM (`metrics`).
# - R. Zhang, P. Isola, A. A. Efros, E. Shechtman, O. Wang. *The Unreasonable Effectiveness of Deep
#   Features as a Perceptual Metric* (LPIPS). CVPR 2018, arXiv:1801.03924.
# - Y. Blau, T. Michaeli, *The Perception-Distortion Tradeoff*, arXiv:1711.06077: why PSNR rewards
#   smooth answers (section 5).
# - Code: diffusers' `FluxKontextPipeline` and `load_lora_weights` (sections 2 and 7), scikit-image's
#   `denoise_nl_means` and `denoise_tv_chambolle`, ComfyUI's LoRA loader (`comfy/lora.py`) for the
#   export's layout.
