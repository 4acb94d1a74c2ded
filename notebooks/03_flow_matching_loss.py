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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/kontext-lora/kontext-lora-course/blob/main/notebooks/03_flow_matching_loss.ipynb)
#
# # 03 · The flow-matching loss, LoRA, and an optional VGG term
#
# Notebook 02 turned a pair of images into the token sequence Kontext reads. This notebook is
# about what training does with that sequence: which target the model learns, which parameters
# change, and what an extra perceptual loss adds.
#
# 1. **Rectified flow**: the straight path from a clean latent to noise, and the noise level sigma.
# 2. **The velocity target** `v = noise - x0`, the quantity the transformer predicts.
# 3. **Which sigmas training visits**, and why they are shifted.
# 4. **One loss evaluation**, stage by stage, and the **clean estimate x0_hat** it implies.
# 5. **LoRA**: `W + (alpha/r) B A` on one layer, and why the first step equals the base model.
# 6. **L2 alone vs L2 + VGG** on one batch, and why the VGG term is gated by sigma.
# 7. **Proof** that only the LoRA parameters receive gradients.
#
# Everything runs on a CPU with nano Kontext. To use FLUX.1-Kontext-dev on a GPU, change `MODEL`.

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
import torch

from kontext_lora_helpers import gpu_settings, lora, losses, objective, viz, viz_objective
from kontext_lora_helpers import latents as latent_ops
from kontext_lora_helpers.course import held_out_dir
from kontext_lora_helpers.data import DegDataset
from kontext_lora_helpers.degradations import PRESETS
from kontext_lora_helpers.models import call_kwargs, load_pipeline, max_sequence_length_for, native_resolution

MODEL = "nano"  # on a GPU: "black-forest-labs/FLUX.1-Kontext-dev"
RUN = gpu_settings.run_settings(MODEL)  # quantization, offload, checkpointing for the card found
pipe = load_pipeline(MODEL, **RUN.pipeline_kwargs())
RESOLUTION = RUN.resolution or native_resolution(pipe)  # 512 px keeps a 12 B backward affordable
BATCH = RUN.batch_size
device, dtype = pipe.transformer.device, pipe.transformer.dtype

# %% [markdown]
# Our batch: the held-out photos (nothing in the course trains on them), each with a degraded copy
# as the Kontext condition. `encode_pair` turns both into latents exactly as the pipeline does.

# %%
dataset = DegDataset(
    held_out_dir(), "Restore this degraded photograph to high fidelity",
    config=PRESETS["course"], resolution=RESOLUTION, seed=0, center_crop=True, random_flip=False,
)
items = [dataset[i] for i in range(BATCH)]
target_pixels = torch.stack([item["target"] for item in items])
control_pixels = torch.stack([item["control"] for item in items])
target_latents, control_latents = objective.encode_pair(pipe.vae, target_pixels, control_pixels)
print("target latents", tuple(target_latents.shape), "control latents", tuple(control_latents.shape))
viz.image_grid([list(control_pixels), list(target_pixels)], row_titles=["control", "target"]);

# %% [markdown]
# ## 1. Rectified flow: a straight line from the image to noise
#
# Training picks a noise level **sigma** in [0, 1] and mixes the clean target latent `x0` with
# Gaussian noise on a straight line:
#
# $$x_\sigma = (1 - \sigma)\, x_0 + \sigma\, \varepsilon$$
#
# sigma = 0 is the photo, sigma = 1 pure noise. Decoding a few points of the path:

# %%
noise = torch.randn(target_latents.shape, generator=torch.Generator().manual_seed(0)).to(target_latents)
viz_objective.show_flow_path(pipe.vae, target_latents, noise);

# %% [markdown]
# ## 2. The velocity target
#
# Along the line every latent value moves at a constant speed: its derivative with respect to sigma
# is `v = noise - x0`, the same at every point. That **velocity** is what the transformer is trained
# to predict from `x_sigma` (plus the text and the control image).

# %%
viz_objective.plot_straight_paths(target_latents[0], noise[0]);

# %% [markdown]
# A finite difference between two points of the path gives the velocity back exactly:

# %%
velocity = objective.velocity_target(noise, target_latents)
x_low, x_high = (objective.noisy_latents(target_latents, noise, torch.full((BATCH,), s)) for s in (0.3, 0.7))
print("(x_0.7 - x_0.3) / 0.4 == noise - x0:", torch.allclose((x_high - x_low) / 0.4, velocity, atol=1e-4))

# %% [markdown]
# ## 3. Which sigmas training visits
#
# Each sample gets its own sigma. For text-to-image models, Stable Diffusion 3 found the middle of
# the path the hardest part and proposed the **logit-normal** density, which concentrates there
# (diffusers' FLUX and Kontext training scripts offer it as `--weighting_scheme logit_normal`; their
# default is uniform). With a control image in view the high-noise end is easy (the control says
# what the photo is) and the low-noise end is where the velocity error sits (section 4 prints one
# loss per sample), which is why nano's recipe shifts its sigmas *towards* low noise (notebook 04). At inference the
# pipeline **shifts** its sigmas toward noise, more for more tokens (`calculate_shift`: mu = 0.5
# for nano's 256 tokens, 1.15 for 1024 px). Training with the same shift trains the sigmas that
# inference visits; diffusers' Kontext script does not.

# %%
num_target_tokens = (target_latents.shape[-2] // 2) * (target_latents.shape[-1] // 2)
mu = objective.calculate_shift(num_target_tokens, pipe.scheduler.config)
def draw(scheme, shift=None):
    return objective.sample_sigmas(20000, scheme, shift, generator=torch.Generator().manual_seed(0))


viz_objective.plot_sigma_densities({
    "uniform": draw("uniform"), "logit-normal": draw("logit_normal"),
    f"logit-normal, shifted for {num_target_tokens} tokens (mu {mu:.2f})": draw("logit_normal", mu),
    "logit-normal, shifted for 1024 px (mu 1.15)": draw("logit_normal", objective.calculate_shift(4096)),
});

# %% [markdown]
# ## 4. One loss evaluation, stage by stage
#
# The prompt is encoded once per distinct string (`PromptEmbeddingCache`), sigmas are drawn with the
# inference shift, and `build_transformer_inputs` builds what the pipeline passes to its transformer:
# target tokens first, control tokens after, `timestep = sigma`. (The tests prove these inputs equal
# the pipeline's own, tensor for tensor.)

# %%
prompts = objective.PromptEmbeddingCache(pipe, max_sequence_length_for(pipe))
text = prompts.batch([item["prompts"] for item in items], device=device, dtype=dtype)
sigmas = objective.sample_sigmas(BATCH, "logit_normal", shift=mu, generator=torch.Generator().manual_seed(1)).to(device)
noisy = objective.noisy_latents(target_latents, noise, sigmas)
inputs = objective.build_transformer_inputs(noisy, control_latents, text, sigmas)
for name, value in inputs.items():
    print(f"{name:22s}", tuple(value.shape) if torch.is_tensor(value) else value)

# %% [markdown]
# The transformer predicts a velocity for every token; only the first `num_target_tokens` (the
# target) are kept, and the loss is the mean squared difference to `noise - x0` (per sample, so a
# weighting by sigma could be applied):

# %%
step = objective.kontext_flow_matching_step(pipe.transformer, target_latents, control_latents, text, sigmas, noise)
print("sigmas         ", [round(s, 3) for s in sigmas.tolist()])
print("loss per sample", [round(v, 4) for v in step.per_sample_loss.tolist()])
print("batch loss     ", round(step.loss.item(), 4))

# %% [markdown]
# ### What the prediction implies: x0_hat
#
# A velocity and the noisy input give an estimate of the clean image, `x0_hat = x_sigma - sigma * v_hat`.
# For a text-to-image model, at high sigma little of the photo is left in `x_sigma` and the best
# guess is a blurry average. Kontext also reads the control image, and our base model learned to
# copy it: watch its estimate at every sigma below. It is the *degraded control*, sharp or not,
# never the clean target. Turning that copy into a restoration is the LoRA's whole job. Here is the
# base model (no LoRA yet) on the first photo:

# %%
first_text = prompts.batch([items[0]["prompts"]], device, dtype)
predict_x0 = losses.transformer_x0_predictor(pipe.transformer, control_latents[:1], first_text)
noisy_by_sigma, x0_hat_by_sigma = {}, {}
with torch.no_grad():
    for s in (0.1, 0.3, 0.6, 0.9):
        sigma = torch.tensor([s], device=device)
        noisy_by_sigma[s] = objective.noisy_latents(target_latents[:1], noise[:1], sigma)
        x0_hat_by_sigma[s] = predict_x0(noisy_by_sigma[s], sigma)
viz_objective.show_x0_estimates(pipe.vae, target_pixels[:1], noisy_by_sigma, x0_hat_by_sigma);

# %% [markdown]
# ## 5. LoRA: a low-rank update on frozen weights
#
# `add_lora` wraps the attention and feed-forward projections of every block. Each keeps its weight
# `W` frozen and learns `A` (r x in) and `B` (out x r):
#
# $$y = W x + \tfrac{\alpha}{r} B A x$$
#
# Only `r (in + out)` numbers per layer train. The LoRA weights stay in float32 even on a bf16 base.

# %% tags=["nbval-check-output"]
lora.add_lora(pipe.transformer, rank=16)
if RUN.gradient_checkpointing:  # the real model: recompute activations in backward instead of storing them
    pipe.transformer.enable_gradient_checkpointing()
print(lora.describe_parameters(pipe.transformer))
print("adapted layers:", len(lora.default_target_modules(pipe.transformer)))

# %% [markdown]
# One layer by hand: the first double block's query projection. `B` starts at zero, so the update
# `(alpha/r) B A x` is exactly zero: the first training step sees the base model.

# %% tags=["nbval-check-output"]
layer = pipe.transformer.transformer_blocks[0].attn.to_q
parts = lora.lora_layer_parts(layer)
print({k: tuple(v.shape) for k, v in parts.items() if torch.is_tensor(v)}, "scale alpha/r =", parts["scale"])
x = torch.randn(3, parts["W"].shape[1], generator=torch.Generator().manual_seed(0)).to(parts["W"])
with torch.no_grad():
    update = parts["scale"] * (x @ parts["A"].T.to(x)) @ parts["B"].T.to(x)
    by_hand = x @ parts["W"].T + parts["bias"] + update
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2  # bf16 on a GPU rounds to ~3 digits
    print("layer(x) == W x + b + (alpha/r) B A x:", torch.allclose(layer(x), by_hand, atol=tolerance))
    print("max |update| at the start:", update.abs().max().item())
    with_lora = objective.kontext_flow_matching_step(
        pipe.transformer, target_latents, control_latents, text, sigmas, noise)
print("whole model: prediction with LoRA == without:",
      torch.equal(with_lora.predicted_velocity, step.predicted_velocity))

# %%
viz_objective.show_lora_matrices(parts);

# %% [markdown]
# ## 6. L2 alone vs L2 + a VGG perceptual term
#
# The original guide adds an optional VGG perceptual loss; here it decodes `x0_hat` with the
# frozen VAE and compares VGG16 features with the clean photo. On this CPU we use **random** VGG
# features (no download); the notice says how to get the ImageNet ones on a GPU machine.

# %%
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the random-features warning; the notice below says it plainly
    vgg = losses.VGGPerceptualLoss(resize=False, weights=None).to(device)
print(losses.vgg_weights_notice(vgg))

# %% [markdown]
# Both terms on the same batch, and how hard each pulls on the LoRA (the norm of the gradient it
# sends). The perceptual term is gated: each sample is weighted by `1 - sigma`.

# %%
def flow_matching_step():
    return objective.kontext_flow_matching_step(pipe.transformer, target_latents, control_latents, text, sigmas, noise)


# Two forward passes, one per term, so no graph is kept between the backward passes.
pipe.transformer.zero_grad(set_to_none=True)
step = flow_matching_step()
step.loss.backward()
l2_pull = lora.lora_gradient_norm(pipe.transformer)
pipe.transformer.zero_grad(set_to_none=True)
perceptual = losses.perceptual_term(vgg, pipe.vae, flow_matching_step().x0_hat_latents(), target_pixels, sigmas,
                                    gate="linear")
perceptual.backward()
print(f"L2 (flow matching) {step.loss.item():.4f}   gradient norm on LoRA {l2_pull:.4f}")
vgg_pull = lora.lora_gradient_norm(pipe.transformer)
print(f"VGG, linear gate   {perceptual.item():.4f}   gradient norm on LoRA {vgg_pull:.4f}")

# %% [markdown]
# **Why gate by sigma?** The same noise, the same photos, only sigma changes. For an estimate that
# has only `x_sigma` to go on (the best *linear* denoiser, a Wiener filter), the perceptual loss of
# `x0_hat` grows steeply with sigma: from `x_sigma` alone, detail drowned in noise cannot be told
# apart, so the best linear estimate blurs it, and an ungated term would be dominated by that blur.
# A model that also reads the control image is not bound by it: the nano base stays nearly flat
# because it copies the control image at every sigma (its error is the degradation itself), and a
# trained LoRA can be sharp at high sigma too. Right: the gates, and the scale they leave on
# the velocity's gradient (`d x0_hat / d v_hat = -sigma`).

# %%
grid = [i / 5 for i in range(6)]  # sigma = 0, 0.2, ..., 1
def measure(predict_x0):
    return losses.perceptual_loss_by_sigma(vgg, pipe.vae, target_pixels, target_latents, noise, grid, predict_x0)


curves = {
    "nano transformer": measure(losses.transformer_x0_predictor(pipe.transformer, control_latents, text)),
    "best linear estimate (Wiener)": measure(lambda noisy, s: losses.spectral_wiener_x0(noisy, s, target_latents)),
}
viz_objective.plot_perceptual_by_sigma(grid, curves, gates=("linear", "threshold"));

# %% [markdown]
# ## 7. Only the LoRA learns
#
# One backward pass of L2 + VGG, then a census of which parameter tensors hold a gradient. The base
# transformer, the VAE and VGG are frozen: gradients flow *through* them into the LoRA only.

# %% tags=["nbval-check-output"]
pipe.transformer.zero_grad(set_to_none=True)
step = objective.kontext_flow_matching_step(pipe.transformer, target_latents, control_latents, text, sigmas, noise)
total = step.loss + 0.1 * losses.perceptual_term(vgg, pipe.vae, step.x0_hat_latents(), target_pixels, sigmas)
total.backward()
print(lora.gradient_census(pipe.transformer))
print("VAE parameters with a gradient:", sum(p.grad is not None for p in pipe.vae.parameters()))
print("VGG parameters with a gradient:", sum(p.grad is not None for p in vgg.parameters()))

# %% [markdown]
# One optimizer step on the flow-matching loss, LoRA parameters alone, and `B` is no longer zero:
# from here on the adapter changes what the model predicts, and the loss on this batch goes down.

# %%
optimizer = torch.optim.AdamW(lora.lora_parameters(pipe.transformer), lr=1e-4)
optimizer.zero_grad(set_to_none=True)
objective.kontext_flow_matching_step(pipe.transformer, target_latents, control_latents, text, sigmas, noise).loss.backward()
optimizer.step()
with torch.no_grad():
    after = objective.kontext_flow_matching_step(pipe.transformer, target_latents, control_latents, text, sigmas, noise)
print("max |B| after one step:", round(parts["B"].abs().max().item(), 6))
print("loss before / after:", round(step.loss.item(), 4), "/", round(after.loss.item(), 4))

# %% [markdown]
# ## 8. Drawing a clean image, or estimating it
#
# Flow matching teaches the model the whole *distribution* of clean images that fit the degraded
# one, and the sampler draws one of them: sharp, plausible detail. Where the degradation leaves
# detail undecided (heavy noise, a small image), two draws differ, and a draw's squared error
# against the true photo is on average twice the distribution mean's (the photo and the draw are
# two independent draws from one distribution): about 3 dB less PSNR than the best estimate, for an
# exact posterior sampler (nano measured 1.6 dB against the average of six draws). This is
# the perception-distortion trade-off, and it is why a well-trained restoration LoRA can score a
# *lower* PSNR than a blurrier one.
#
# `objective="posterior_mean"` (`--objective posterior_mean`, this course's own objective, argued
# here and measured on nano only) trains for the estimate instead. It
# takes the model's own clean estimate at sigma 1 from the sample's noise (the sampler's first
# step), places `x` on the straight line from that estimate to the noise (where the pipeline's
# sampler is when every step aims at the same image) and asks for the clean photo from there. The
# best answer from such a point is the average clean image given the control, so the sampler ends
# at it: smoother, higher PSNR, one more forward per step. It takes the same inputs:

# %%
estimate_step = objective.kontext_posterior_mean_step(pipe.transformer, target_latents, control_latents, text, sigmas, noise)
print("posterior-mean loss (clean-latent error):", round(estimate_step.loss.item(), 4))

# %% [markdown]
# ### The sampler, written out
#
# That argument is about the sampler, so here it is in full. `FluxKontextPipeline` steps through
# `sigmas = linspace(1, 1/n, n)`, shifted with the mu of section 3, then a final 0, and at each
# level makes one Euler step along the predicted velocity:
#
# $$x \leftarrow x + (\sigma_{i+1} - \sigma_i)\, \hat v(x, \sigma_i)$$
#
# `objective.pipeline_sigmas` and `objective.euler_sample` are those few lines. The last step
# jumps from the shifted `1/n` (about 0.06 for 28 steps) straight to 0:

# %%
schedule = objective.pipeline_sigmas(28, num_target_tokens, pipe.scheduler.config)
print("28-step schedule, first four:", [round(s, 3) for s in schedule[:4].tolist()],
      " last four:", [round(s, 3) for s in schedule[-4:].tolist()])

# %% [markdown]
# The hand-written sampler and the pipeline, from the same noise, on the first photo (4 steps keep
# it quick; the tests check other step counts). They agree to floating-point precision:

# %%
steps, height, width = 4, *target_pixels.shape[-2:]
latent_noise = torch.randn(target_latents[:1].shape, generator=torch.Generator().manual_seed(7)).to(target_latents)
aims = []
by_hand = objective.euler_sample(pipe.transformer, control_latents[:1], first_text, latent_noise,
                                 objective.pipeline_sigmas(steps, num_target_tokens, pipe.scheduler.config), aims=aims)
with torch.no_grad():
    by_pipeline = pipe(image=viz.to_pil(control_pixels[0]), prompt=items[0]["prompts"], num_inference_steps=steps,
                       latents=latent_ops.pack(latent_noise), output_type="latent",
                       **call_kwargs(pipe, height, width)).images
print("largest difference, hand-written vs pipeline latents:",
      f"{(latent_ops.pack(by_hand) - by_pipeline).abs().max().item():.1e}")

# %% [markdown]
# Each step aims at `x0_hat = x - sigma v_hat`. A model trained with `flow_matching` changes its
# aim as the noise clears and ends at a draw; one trained with `posterior_mean` aims at the same
# average image from every step, so the sampler moves on the straight line the objective trains on.
# Here are the aims of the (barely trained) model above, step by step:

# %%
viz.image_grid([[latent_ops.decode(pipe.vae, aim)[0] for aim in aims] + [latent_ops.decode(pipe.vae, by_hand)[0]]],
               col_titles=[f"aim at sigma {s:.2f}" for s in
                           objective.pipeline_sigmas(steps, num_target_tokens, pipe.scheduler.config)[:-1].tolist()]
               + ["result"]);

# %% [markdown]
# ## Summary
#
# - Training noises the target latent on a straight line, `x = (1 - sigma) x0 + sigma noise`, and
#   regresses the velocity `noise - x0` on the target tokens only; sigmas are drawn logit-normal,
#   shifted like the pipeline's for the real model (`--sigma_shift auto`); nano's recipe in
#   notebook 04 shifts them towards low noise instead (-1.5), a choice measured there.
# - `x0_hat = x - sigma v_hat` links the velocity to an image; with Kontext's control image the base
#   model's `x0_hat` is a copy of the control at every sigma, and the LoRA must move it to the target.
# - LoRA trains `A` and `B` of every block projection; `B = 0` makes the first step the base model.
#   Rank 16 adds 12% to tiny nano's transformer, but 65 M to FLUX.1-Kontext-dev's 11.9 B
#   parameters (0.55%).
# - A VGG term compares decoded `x0_hat` with the photo; gate it by sigma (`1 - sigma` or a
#   threshold) so it acts where `x0_hat` can be sharp. Use ImageNet VGG weights for real training.
# - Flow matching samples a plausible restoration; `posterior_mean` trains the sampler to end at
#   the average one (higher PSNR, less invented detail).
#
# Next, **04_training** runs these steps in a loop with an optimizer, validation and checkpoints.
#
# ## Exercises
#
# Solutions that run are in `solutions.ipynb` (section 03).
#
# **Exercise 1.** What share of training steps see little noise? With `objective.sample_sigmas`,
# find the fraction of sigmas below 0.18 for uniform sampling, for logit-normal shifted with the
# pipeline's mu for nano's 256 tokens, and with nano's recipe shift of -1.5. Which sigmas do the
# sampler's last steps use? *Hint:* `objective.pipeline_sigmas(28, 256)` is the pipeline's schedule
# (the tests check it against `pipe.scheduler.sigmas` after a call); `set_timesteps(28, mu=mu)` alone
# starts from another grid and gives a different tail.
#
# **Exercise 2.** Check the identity behind `x0_hat`: with the *true* velocity `noise - x0`,
# `x_sigma - sigma * v` gives `x0` back at every sigma. Then add a small error `e` to the velocity:
# how large is the error of `x0_hat` at sigma 0.1 and at 0.9?
#
# **Exercise 3.** How many parameters does a LoRA of rank 4, 16 and 64 train on nano, and what
# share of the transformer is that? The count is `r (in + out)` per adapted layer: compute it from
# the layers' shapes and compare with `lora.describe_parameters` after `add_lora`. *Hint:* add the
# LoRA to a fresh `load_pipeline("nano")`, not to this notebook's pipeline, which already has one.
#
# **Exercise 4.** With the `"linear"` gate, how much does the perceptual term pull on the LoRA at
# sigma 0.95 compared with sigma 0.2? Measure `lora.lora_gradient_norm` for one batch at each
# sigma, and explain the ratio from the gate and from `d x0_hat / d v_hat = -sigma`.

# %% [markdown]
# ## References
#
# - X. Liu, C. Gong, Q. Liu. *Flow Straight and Fast: Learning to Generate and Transfer Data with
#   Rectified Flow.* ICLR 2023, arXiv:2209.03003: the straight path and its velocity (section 1-2).
# - Y. Lipman, R. T. Q. Chen, H. Ben-Hamu, M. Nickel, M. Le. *Flow Matching for Generative
#   Modeling.* ICLR 2023, arXiv:2210.02747: regressing the velocity of a chosen path (their time
#   runs from noise at 0 to data at 1; this course follows diffusers' sigma, 1 = noise).
# - P. Esser et al. (SD3), arXiv:2403.03206, Section 3.1: logit-normal and mode sampling of the
#   noise level; Section 5.3.2: shifting the schedule with the resolution. FLUX's exponential shift
#   with mu linear in the token count (`calculate_shift`) comes from Black Forest Labs' code and
#   diffusers' FLUX pipeline, not from the paper.
# - E. J. Hu et al. *LoRA: Low-Rank Adaptation of Large Language Models.* ICLR 2022,
#   arXiv:2106.09685, Section 4.1: `W x + (alpha / r) B A x`, A random and B zero at the start.
# - Y. Blau, T. Michaeli. *The Perception-Distortion Tradeoff.* CVPR 2018, arXiv:1711.06077: why a
#   sharper, plausible restoration can score a lower PSNR (section 8). The factor 2 of a posterior
#   draw's squared error holds for an exact posterior sampler.
# - J. Johnson, A. Alahi, L. Fei-Fei. *Perceptual Losses for Real-Time Style Transfer and
#   Super-Resolution.* ECCV 2016, arXiv:1603.08155; K. Simonyan, A. Zisserman. *Very Deep
#   Convolutional Networks* (VGG). arXiv:1409.1556: the VGG perceptual term of section 6.
# - The `posterior_mean` objective of section 8 is this course's own, argued in that section and
#   measured on nano only; it is related to, not the same as, rectified flow's reflow (Liu et al.,
#   Section 2.3), which also trains on the model's own couplings.
# - Code: diffusers' `pipeline_flux_kontext.py` (the sampler and schedule of section 8),
#   `scheduling_flow_match_euler_discrete.py` and `training_utils.py`
#   (`compute_density_for_timestep_sampling`), which `objective` follows.
