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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/kontext-lora/kontext-lora-course/blob/main/notebooks/01_degradations.ipynb)
#
# # 01 · Degradations: making the damaged half of every training pair
#
# A restoration LoRA learns from **pairs**: a damaged photo (the *control* image Kontext reads) and
# the same photo undamaged (the *target* it should produce). For the photos we most want to
# repair, such as a faded print from 1950 or a noisy JPEG from an early phone, nobody has the
# undamaged original. So training goes the other way round: take clean photos, damage them
# ourselves, and teach the model to undo the damage.
#
# The original guide (the recipe this course implements, described in `docs/original_guide.md`)
# does this inside its `DegDataset` with four operations: **downsample, noise, blur, JPEG**. That
# choice is the first design decision of the whole course, because the LoRA can only learn to
# repair what we show it: a model that never saw scratches will not remove them, and damage far
# stronger than the real thing teaches it to smear detail away.
#
# In this notebook you will
# 1. see what each degradation does to a photo, the original guide's four first, then the
#    extended set,
# 2. measure how fast a photo falls apart as one parameter grows,
# 3. compare the ready-made recipes (presets) and see why parameters can be ranges,
# 4. check that a degradation is reproducible and read its record,
# 5. turn the record into a prompt that says what went wrong,
# 6. tune a recipe with the interactive explorer and take it to the `degrade` command, the
#    training command and `DegDataset`.
#
# Everything here is plain image processing: it runs in seconds on a laptop CPU.

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
import matplotlib

from kontext_lora_helpers import viz
from kontext_lora_helpers.course import evaluation_dirs, held_out_dir, outputs
from kontext_lora_helpers.degradations import (
    ORIGINAL_GUIDE_ORDER, PRESETS, DegradationConfig, apply_degradation,
)
from kontext_lora_helpers.images import load_rgb
from kontext_lora_helpers.viz_degradations import (
    prepare_photo, severity_sweep, show_operations, show_sweep, zoom_box,
)

# A test photo (nothing in the course trains on it), as the 320 px square training would crop.
photo = prepare_photo(load_rgb(held_out_dir() / "china.jpg"), 320)
ZOOM_CENTER = (0.4, 0.4)  # the pillars and the roof against the sky: edges show damage best
# 72 dpi: a row of five photos fits the page without the browser shrinking it, and the notebook
# stays small. Raise it for sharper figures on a high-density screen.
matplotlib.rcParams["figure.dpi"] = 72
print(photo.size, photo.mode)

# %% [markdown]
# ## 1. The original guide's four operations
#
# Each picture below applies **one** operation to the clean photo, with the original guide's
# default parameter, and the bottom row enlarges the yellow box 4x so you can see individual
# pixels.
#
# | operation | parameter | what it means |
# |---|---|---|
# | `downsample` | `lr_scale=8` | shrink to 1/8 per side (bicubic) and back: detail gone, size kept |
# | `noise` | `noise_level=0.05` | Gaussian noise, std 0.05 **on the 0-1 scale** (about 13 of 255 levels) |
# | `blur` | `blur_radius=1.0` | Gaussian blur; PIL's radius *is* the standard deviation, in pixels |
# | `jpeg` | `jpeg_quality=75` | save as JPEG at quality 75 (1 worst, 100 best) and decode again |

# %%
show_operations(photo, ORIGINAL_GUIDE_ORDER, seed=0, center=ZOOM_CENTER);

# %% [markdown]
# Look at the zoomed row. Downsampling by 8 leaves soft blobs where the roof tiles were: at
# 320 px the photo has been through a 40 px version of itself. Noise adds coloured speckles, one
# random value per pixel and channel. A blur of 1 px softens edges but keeps their position. JPEG
# at 75 is hard to see at full size; in the zoom you find the 8x8 blocks in flat areas and the
# ringing next to sharp edges. The original guide applies all four in this order, each a value you
# choose.
#
# ## 2. More ways a photo gets damaged
#
# Real damage is more varied, and restoration papers (Real-ESRGAN, BSRGAN) train on more varied
# degradations so that the model generalises. `degradations.py` adds:
#
# * `aniso_blur`: an elliptical Gaussian, sharp in one direction and soft in the other, as a lens
#   out of focus or a slightly tilted scanner gives;
# * `motion_blur`: a straight streak, the camera moving during the exposure;
# * `poisson_noise`: shot noise, stronger in bright areas, as a real sensor has;
# * gray noise: the same noise on R, G and B (`gray_noise_prob`), which disturbs only brightness.

# %%
show_operations(photo, ["aniso_blur", "motion_blur", "poisson_noise", "noise"], seed=0,
                center=ZOOM_CENTER, aniso_sigma_x=3.0, aniso_angle=0.0, motion_blur_length=15,
                motion_blur_angle=30.0, poisson_scale=2.0, gray_noise_prob=1.0);

# %% [markdown]
# The anisotropic blur (3 px along the horizontal, 0.5 px across) smears the vertical pillars
# sideways while the horizontal roof lines stay crisp; the motion streak drags every bright point
# 15 px at 30°. Poisson noise is strongest in the bright sky and weaker in the dark trees. Gray
# noise has no colour in it: it changes brightness only.
#
# ### The old-photo family
#
# An old print is not only noisy and soft. Its dyes fade and shift colour, the film adds grain,
# and handling adds scratches and dust. These three operations make it look old:
#
# * `fade`: lower saturation and contrast, lifted blacks (`fade_strength`), plus a colour cast
#   towards a hue (`color_cast_strength`, `color_cast_hue` in degrees: 30 is sepia-orange);
# * `scratches`: thin, long, mostly light lines (`scratch_count`) and dust specks (`dust_count`);
# * `grain`: film grain, clumps larger than a pixel (`grain_size`) strongest in the mid-tones.

# %%
show_operations(photo, ["fade", "scratches", "grain"], seed=0, center=ZOOM_CENTER,
                fade_strength=0.5, color_cast_strength=0.5, color_cast_hue=30.0,
                scratch_count=8, dust_count=80, grain_strength=0.08, grain_size=2.0);

# %% [markdown]
# ## 3. How strong is strong? A severity sweep
#
# A parameter only means something next to a measurement. Here is `noise_level` from 0 to 0.2
# with the same random seed, so only the strength changes. The number under each picture is the
# **PSNR** against the clean photo, in dB: higher is closer, every 6 dB less means the error's
# amplitude doubled, and below about 20 dB a photo looks clearly damaged.

# %%
sweep = severity_sweep(photo, "noise_level", [0.0, 0.02, 0.05, 0.1, 0.2], seed=0)
for point in sweep:
    print(f"noise_level={point.value:<5}  PSNR {point.psnr_db:5.1f} dB")
show_sweep(sweep, "noise_level", center=ZOOM_CENTER);

# %% [markdown]
# Doubling `noise_level` costs about 6 dB each time, as it should for additive noise; a little
# less in practice, because pixels pushed past black or white are clipped back. The original
# guide's default of 0.05 is a visibly noisy photo; 0.2 is a snowstorm that no restorer can undo
# faithfully, and training on it would teach the LoRA to invent detail. Try the same with
# `"blur_radius"`, `"lr_scale"` or `"jpeg_quality"`.
#
# ## 4. Recipes: presets and ranges
#
# A `DegradationConfig` holds a whole recipe: which operations, in which order, with which
# parameters. Three ready-made recipes live in `PRESETS`:
#
# * `"original_guide"`: the original guide's four operations at their defaults;
# * `"realesrgan"`: a Real-ESRGAN-style *second-order* pipeline: blur, resize, noise and JPEG,
#   twice, the second round with milder blur and noise but stronger downsampling (each kind of noise
#   drawn with probability one half, so a round may have none; no sinc filter). Photos that were
#   shared, re-saved and shared again look like this;
# * `"old_photo"`: a faded, tinted, grainy, scratched print, scanned softly and saved as JPEG.

# %%
names = ["original_guide", "realesrgan", "old_photo"]
results = [apply_degradation(photo, PRESETS[name], seed=0) for name in names]
for name, (_, record) in zip(names, results):
    print(f"{name:<14} applied: {', '.join(step['op'] for step in record)}")
viz.show_images([photo, *[image for image, _ in results]], ["clean", *names],
                zoom_box=zoom_box(photo.size, 4, ZOOM_CENTER));

# %% [markdown]
# Most parameters of the `realesrgan` and `old_photo` presets are **ranges** such as
# `fade_strength=(0.2, 0.7)`: every image gets its own value, drawn uniformly. One photo, four
# draws:

# %%
old = PRESETS["old_photo"]
print("fade_strength:", old.fade_strength, " scratch_count:", old.scratch_count)
draws = [apply_degradation(photo, old, seed=seed) for seed in range(4)]
titles = [f"seed {seed}: fade {record[0]['fade_strength']:.2f}" for seed, (_, record) in enumerate(draws)]
viz.show_images([image for image, _ in draws], titles);

# %% [markdown]
# Ranges are how a small dataset covers a wide variety of damage: with `repeats` the same photo
# comes back with different damage, and the LoRA learns *how much* to repair from the pixels
# instead of memorising one strength.
#
# ## 5. Reproducible, and recorded
#
# Every call draws its random numbers from a seed. The same photo, recipe and seed give the same
# bytes with the same library versions (JPEG and resampling builds may differ by a level between
# machines); this is what lets a dataset rebuild epoch 3 exactly, and lets you
# compare two trainings on identical inputs.

# %% tags=["nbval-check-output"]
from kontext_lora_helpers.degradations import apply_degradation_steps

first, record = apply_degradation(photo, PRESETS["old_photo"], seed=7)
again, record_again = apply_degradation(photo, PRESETS["old_photo"], seed=7)
print("same seed, same bytes:", first.tobytes() == again.tobytes(), record == record_again)
replayed, _ = apply_degradation_steps(photo, record)
print("replaying the record gives the same bytes:", replayed.tobytes() == first.tobytes())

# %% [markdown]
# The **record** is the list of what was applied with every drawn value, one dict per step. It is
# plain JSON: `DegDataset` stores it with every item and the `degrade` command writes it next to
# every image. Operations that draw random numbers while they run (noise, scratches, grain) carry
# their own derived `seed`, which is why replaying the record reproduces the image exactly.

# %%
for step in record:
    print(step)

# %% [markdown]
# ## 6. From record to prompt
#
# Kontext is an editing model: the prompt is an instruction. The original guide uses one fixed
# instruction for every pair, so the LoRA has to find out from the pixels what to undo. The record
# lets the prompt *say* what went wrong instead, in binned words (`described`) or with numbers
# (`numeric`); at inference you can then ask for just part of the repair ("remove the noise").
# `DegDataset(prompt_mode=...)` picks the mode for training.

# %%
from kontext_lora_helpers.prompts import restoration_prompt

for mode in ["plain", "described", "numeric"]:
    print(f"{mode:>9}: {restoration_prompt(record, mode=mode)}")

# %% [markdown]
# ## 7. Tune a recipe with the explorer
#
# The explorer shows a clean photo and its degraded copy side by side, with a zoomed crop of
# both. Tick operations, move sliders (each has a **range** toggle), pick a preset or another
# photo, change the seed or the preview resolution; the preview, the record, the prompts and the
# flags update as you go. Preview at the resolution you will train at: parameters are in pixels,
# so a 1 px blur is much stronger on a 256 px image than on a 1024 px one.

# %%
from kontext_lora_helpers.widgets import degradation_explorer

explorer = degradation_explorer(preset="old_photo", resolution=256)
explorer

# %% [markdown]
# Every control is a public attribute, so a cell can drive the explorer exactly as the mouse does
# (this is also how its tests work). Here: start from the original guide's recipe, lower the
# downsampling to 4 and make the noise a range.

# %%
explorer.preset.value = "original_guide"
explorer.parameters["lr_scale"].value = 4
explorer.parameters["noise_level"].value = (0.01, 0.05)
print(explorer.status.value)
print(explorer.result.described_prompt)

# %% [markdown]
# The explorer is live only in a running notebook. `explorer.picture()` is what it shows at this
# moment, as a plain picture (clean | degraded, the zoomed crops below); on GitHub, this is the
# explorer:

# %%
explorer.picture()

# %% [markdown]
# ## 8. Take the recipe to the commands and the dataset
#
# `explorer.config` is the recipe the controls describe. Its `to_cli_flags()` are the flags of the
# `degrade` command and of the training command (both define them with
# `add_degradation_arguments`), so a recipe tuned here is pasted unchanged into either:

# %%
from kontext_lora_helpers.widgets import degrade_command, train_command

config = explorer.config
print(" ".join(config.to_cli_flags()))
print()
print(degrade_command(config, "data_samples/held_out", "outputs/degraded"))
print()
print(train_command(config))

# %% [markdown]
# The `degrade` command writes each degraded image as a PNG with a JSON record next to it. Here it
# runs in-process on one photo, into `outputs/01-degraded`:

# %%
import json
import os
import shutil

from kontext_lora_helpers import degrade

work = outputs("01-degraded")  # outputs/ next to the notebook, like every output of the course
shutil.rmtree(work, ignore_errors=True)  # this notebook's own folder: each run starts empty
degrade.main(["--input", os.path.relpath(held_out_dir() / "china.jpg"), "--output", str(work), "--overwrite",
              *config.to_cli_flags()])
written = json.loads((work / "china.json").read_text())
print(sorted(written), "\n", [step["op"] for step in written["record"]])

# %% [markdown]
# The explorer's **export** button (or `export_config`) saves the recipe as JSON, and never
# replaces an existing file unless you tick *overwrite*. `DegradationConfig.from_dict` reads it
# back:

# %% tags=["nbval-check-output"]
from kontext_lora_helpers.widgets import export_config

path = export_config(config, work / "my_recipe.json")
print(DegradationConfig.from_dict(json.loads(path.read_text())) == config)
try:
    export_config(PRESETS["old_photo"], path)
except FileExistsError as error:
    print(type(error).__name__, "- the file was kept")

# %% [markdown]
# Finally, `DegDataset(config=...)` trains with the recipe. Each item is a pixel-aligned pair of
# tensors `(3, R, R)` in `[-1, 1]` with its prompt; notebook 02 looks at these pairs closely.
# The validation and test photos stay out of training.

# %%
from kontext_lora_helpers.course import data_samples
from kontext_lora_helpers.data import DegDataset

dataset = DegDataset(os.path.relpath(data_samples()), "Restore this degraded photograph to high fidelity", config=config,
                     resolution=256, prompt_mode="described", exclude=evaluation_dirs())
items = [dataset[i] for i in range(4)]
print(dataset)
print(items[0]["prompts"])
viz.image_grid([[item["control"] for item in items], [item["target"] for item in items]],
               row_titles=["control (degraded)", "target (clean)"]);

# %% [markdown]
# ## Summary
#
# * Each operation damages a photo in its own way: downsampling removes detail, noise adds random
#   speckle, blur softens edges, JPEG adds blocks and ringing; the extended set adds lens and motion
#   blur, sensor noise and the faded, scratched, grainy look of old prints.
# * A parameter means something only next to a measurement: PSNR falls about 6 dB each time the
#   noise doubles, and the original guide's defaults are strong damage at 320 px.
# * A recipe (`DegradationConfig`, `PRESETS`) holds fixed values or per-image ranges, is
#   reproducible from its seed, and leaves a JSON record from which prompts are written.
# * One recipe travels unchanged between the explorer, the `degrade` command, the training command
#   and `DegDataset`.
#
# Next, notebook 02 builds pairs with this dataset and follows them into the VAE and the token
# sequence Kontext reads.
#
# ## Exercises
#
# Solutions that run are in `solutions.ipynb` (section 01); try each exercise before reading them.
#
# **Exercise 1.** At which JPEG quality does this photo stay above 30 dB PSNR? Sweep
# `jpeg_quality` from 5 to 95 and find the lowest quality that keeps 30 dB. Is JPEG at the guide's
# default of 75 mild or strong damage next to the guide's other defaults?
# *Hint:* `severity_sweep(photo, "jpeg_quality", [5, 10, 20, 30, 50, 75, 95])`.
#
# **Exercise 2.** Section 3 found that doubling the noise costs about 6 dB. Does blur follow a law
# as simple? Sweep `blur_radius` over 0.5, 1, 2 and 4 px and `lr_scale` over 2, 4, 8 and 16, and
# describe how PSNR falls with each. *Hint:* look at the difference between consecutive values.
#
# **Exercise 3.** Write a "phone photo" recipe of your own: a slight motion blur (5 px), sensor
# noise that is stronger in bright areas, and JPEG at a quality drawn between 50 and 80 for each
# image. Check that one seed gives the same bytes twice, and print the flags that train a LoRA on
# it. *Hint:* `DegradationConfig(degradation_types=("motion_blur", "poisson_noise", "jpeg"), ...)`
# and `config.to_cli_flags()`.
#
# **Exercise 4.** Order matters: apply noise then JPEG, and JPEG then noise (same parameters,
# `degradation_order="listed"`), to the photo and compare PSNR and the zoomed pictures. Which order
# does a real photo shared on the web go through?

# %% [markdown]
# ## References
#
# - X. Wang, L. Xie, C. Dong, Y. Shan. *Real-ESRGAN: Training Real-World Blind Super-Resolution with
#   Pure Synthetic Data.* ICCV Workshops 2021, arXiv:2107.10833: the high-order degradation model
#   (Section 3) that the `realesrgan` preset imitates (without its sinc filter).
# - K. Zhang, J. Liang, L. Van Gool, R. Timofte. *Designing a Practical Degradation Model for Deep
#   Blind Image Super-Resolution* (BSRGAN). ICCV 2021: random shuffles of blur, resizing, noise and JPEG.
# - The original guide (`docs/original_guide.md`): `DegDataset`, `apply_degradation` and its four
#   degradation types and flags.
# - Code: Pillow's resampling, Gaussian blur and JPEG encoder do the pixel work (`degradations`).
