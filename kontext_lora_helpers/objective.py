"""The Kontext flow-matching objective, one named stage at a time.

A training step reads top to bottom, and every stage builds what `FluxKontextPipeline` builds at
inference (tests capture the pipeline's transformer call and compare):

1. ``target_latents, control_latents = encode_pair(vae, target_pixels, control_pixels)``
2. ``sigmas = sample_sigmas(batch, scheme, shift=mu)``            noise level per sample, in (0, 1)
3. ``noisy = noisy_latents(target_latents, noise, sigmas)``        x_t = (1 - sigma) x0 + sigma noise
4. ``inputs = build_transformer_inputs(noisy, control_latents, prompt embeds, sigmas, guidance)``
   packs both images into tokens, puts the control tokens *after* the target tokens, gives the control
   ids frame 1, and passes ``timestep = sigma`` (the transformer multiplies by 1000 itself)
5. ``v_hat = predict_velocity(transformer, inputs)``               sliced back to the target tokens
6. ``v = velocity_target(noise, target_latents)``                  v = noise - x0 (packed)
7. ``loss = flow_matching_loss(v_hat, v, loss_weighting(sigmas, scheme))``
   and, for a pixel-space term, ``x0_hat = x0_from_velocity(noisy, sigmas, v_hat)``.

Only the target tokens carry a loss: the control tokens are context, exactly as at inference where
the pipeline keeps the first ``n_target_tokens`` of the prediction.

The other half of the flow is the sampler, written out in `pipeline_sigmas` and `euler_sample`:
`FluxKontextPipeline`'s schedule (``linspace(1, 1/n, n)``, shifted with the pipeline's mu, then 0)
and its Euler steps ``x <- x + (sigma_next - sigma) * v_hat``, equal to the pipeline's latents to
floating-point precision (tests compare them).

Two objectives share these stages (``OBJECTIVES``). ``flow_matching`` (above, what diffusers' Kontext
trainer does) teaches the model the distribution of clean images given the degraded one, so the
sampler *draws* one: plausible detail, but when the degradation leaves much undecided two draws
differ, and a draw's squared error is about twice that of the conditional mean (two independent
draws from one distribution differ by twice its variance): about 3 dB less PSNR. ``posterior_mean``
(`kontext_posterior_mean_step`) trains the points the sampler itself visits when every step aims
at the same clean image, and asks for the clean image from there: the sampler then ends at the
model's estimate of the conditional mean: smoother, higher PSNR (the perception-distortion
trade-off; notebook 03).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from . import latents as latent_ops
from .kontext import GUIDANCE_SCALE

SIGMA_SCHEMES = ("uniform", "logit_normal", "mode")
OBJECTIVES = ("flow_matching", "posterior_mean")
WEIGHTING_SCHEMES = ("none", "sigma_sqrt", "cosmap")


def _check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}.")


# --- 1. encode -------------------------------------------------------------------------------------


def encode_pair(vae, target_pixels: torch.Tensor, control_pixels: torch.Tensor):
    """Encode the clean target and the degraded control with the frozen VAE (mode, shift, scale).

    Args:
        target_pixels, control_pixels: (B, 3, H, W) float in [-1, 1]; sides multiples of
            `latents.pixel_multiple(vae)` (16 for FLUX, 4 for nano). Kontext accepts a control of a
            different size than the target, but the two batches must have the same B.

    Returns:
        (target_latents, control_latents), each (B, 16, H/f, W/f) in the VAE's dtype.
    """
    multiple = latent_ops.pixel_multiple(vae)
    latent_ops.check_image_tensor(target_pixels, multiple, "target image")
    latent_ops.check_image_tensor(control_pixels, multiple, "control image")
    if target_pixels.shape[0] != control_pixels.shape[0]:
        raise ValueError(
            f"target and control batches differ in size: {target_pixels.shape[0]} vs {control_pixels.shape[0]}."
        )
    return latent_ops.encode(vae, target_pixels), latent_ops.encode(vae, control_pixels)


# --- 2. noise levels -------------------------------------------------------------------------------


def calculate_shift(image_seq_len: int, scheduler_config=None) -> float:
    """The resolution-dependent shift `mu` FLUX's pipeline uses at inference (linear in token count).

    With FLUX's config (256 -> 0.5, 4096 -> 1.15): 4096 target tokens (1024 px) give 1.15, 1024
    tokens (512 px) give 0.63, nano's 256 tokens (64 px) give 0.5.
    """
    config = dict(base_image_seq_len=256, max_image_seq_len=4096, base_shift=0.5, max_shift=1.15)
    if scheduler_config is not None:
        config.update({k: scheduler_config[k] for k in config if k in scheduler_config})
    slope = (config["max_shift"] - config["base_shift"]) / (config["max_image_seq_len"] - config["base_image_seq_len"])
    return image_seq_len * slope + config["base_shift"] - slope * config["base_image_seq_len"]


def shift_sigmas(sigmas: torch.Tensor, mu: float) -> torch.Tensor:
    """FLUX's exponential time shift: ``e^mu / (e^mu + 1/sigma - 1)``; mu > 0 moves mass to high noise."""
    return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))


def sample_sigmas(
    batch_size: int,
    scheme: str = "logit_normal",
    shift: float | None = None,
    generator: torch.Generator | None = None,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
    device=None,
) -> torch.Tensor:
    """Draw one noise level per sample, in (0, 1), float32.

    Args:
        scheme: "uniform"; "logit_normal" (sigmoid of N(logit_mean, logit_std), SD3's default);
            "mode" (SD3's mode sampling with `mode_scale`).
        shift: `mu` for FLUX's time shift (see `calculate_shift`), or None for unshifted sigmas.
            Shifting the training sigmas with the same mu the pipeline uses for the same token count
            trains the noise levels that inference visits.
        generator: a CPU `torch.Generator` for reproducible draws.
    """
    _check_choice("sigma sampling scheme", scheme, SIGMA_SCHEMES)
    if scheme == "uniform":
        u = torch.rand(batch_size, generator=generator)
    elif scheme == "logit_normal":
        u = torch.sigmoid(torch.randn(batch_size, generator=generator) * logit_std + logit_mean)
    else:
        u = torch.rand(batch_size, generator=generator)
        u = 1 - u - mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    u = u.clamp(1e-4, 1 - 1e-4)
    if shift is not None:
        u = shift_sigmas(u, shift)
    return u.to(device=device, dtype=torch.float32)


# --- 3. noise --------------------------------------------------------------------------------------


def noisy_latents(clean: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Rectified flow's straight path: ``x_t = (1 - sigma) * x0 + sigma * noise``.

    Args:
        clean, noise: (B, C, h, w) latents; sigmas: (B,) in [0, 1].
    """
    s = sigmas.view(-1, *([1] * (clean.ndim - 1))).to(clean.dtype)
    return (1 - s) * clean + s * noise


def velocity_target(noise: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """The velocity of the path, d x_t / d sigma = noise - x0 (same shape as its inputs)."""
    return noise - clean


def x0_from_velocity(noisy: torch.Tensor, sigmas: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
    """The clean sample implied by a velocity: ``x0_hat = x_t - sigma * v_hat``."""
    s = sigmas.view(-1, *([1] * (noisy.ndim - 1))).to(noisy.dtype)
    return noisy - s * velocity


# --- 4. the transformer's inputs -------------------------------------------------------------------


@dataclass
class PromptEmbeddings:
    """Text conditioning for a batch: T5 states (B, T, D), CLIP pooled (B, P) and text ids (T, 3)."""

    prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor
    text_ids: torch.Tensor

    def to(self, device=None, dtype=None) -> PromptEmbeddings:
        return PromptEmbeddings(
            self.prompt_embeds.to(device=device, dtype=dtype),
            self.pooled_prompt_embeds.to(device=device, dtype=dtype),
            self.text_ids.to(device=device, dtype=dtype),
        )


def build_transformer_inputs(
    noisy_target_latents: torch.Tensor,
    control_latents: torch.Tensor,
    text: PromptEmbeddings,
    sigmas: torch.Tensor,
    guidance_scale: float | None = GUIDANCE_SCALE,
) -> dict:
    """The keyword arguments `FluxKontextPipeline` passes to its transformer, for a training batch.

    Args:
        noisy_target_latents: (B, 16, h, w) x_t of the target image.
        control_latents: (B, 16, h_c, w_c) clean latents of the condition (degraded) image.
        text: prompt embeddings with batch B.
        sigmas: (B,) noise levels; passed as `timestep` (the transformer scales by 1000 internally).
        guidance_scale: value of FLUX-dev's distilled-guidance input (the pipeline's default is
            3.5), or None for transformers without a guidance embedding.

    Returns:
        dict with hidden_states (B, N_t + N_c, 64), timestep (B,), guidance (B,) or None,
        pooled_projections, encoder_hidden_states, txt_ids, img_ids (N_t + N_c, 3), return_dict=False.
    """
    if noisy_target_latents.shape[0] != control_latents.shape[0]:
        raise ValueError("target and control latents must have the same batch size.")
    target_hw = tuple(noisy_target_latents.shape[-2:])
    control_hw = tuple(control_latents.shape[-2:])
    hidden_states, img_ids = latent_ops.kontext_sequence(
        latent_ops.pack(noisy_target_latents), latent_ops.pack(control_latents), target_hw, control_hw
    )
    batch = hidden_states.shape[0]
    guidance = None
    if guidance_scale is not None:
        guidance = torch.full((batch,), float(guidance_scale), device=hidden_states.device, dtype=torch.float32)
    return dict(
        hidden_states=hidden_states,
        timestep=sigmas.to(device=hidden_states.device, dtype=hidden_states.dtype),
        guidance=guidance,
        pooled_projections=text.pooled_prompt_embeds,
        encoder_hidden_states=text.prompt_embeds,
        txt_ids=text.text_ids,
        img_ids=img_ids,
        return_dict=False,
    )


def predict_velocity(transformer, inputs: dict, num_target_tokens: int) -> torch.Tensor:
    """Run the transformer and keep the target tokens' prediction: (B, N_t, 64)."""
    prediction = transformer(**inputs)[0]
    return prediction[:, :num_target_tokens]


# --- 5. the loss -----------------------------------------------------------------------------------


def loss_weighting(sigmas: torch.Tensor, scheme: str = "none") -> torch.Tensor:
    """Per-sample loss weights (B,) as in SD3/diffusers: none = 1; sigma_sqrt = sigma^-2;
    cosmap = 2 / (pi (1 - 2 sigma + 2 sigma^2))."""
    _check_choice("loss weighting scheme", scheme, WEIGHTING_SCHEMES)
    if scheme == "sigma_sqrt":
        return (sigmas**-2.0).float()
    if scheme == "cosmap":
        return (2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas**2))).float()
    return torch.ones_like(sigmas, dtype=torch.float32)


def flow_matching_loss(prediction: torch.Tensor, target: torch.Tensor, weighting: torch.Tensor) -> torch.Tensor:
    """The original guide's L2 loss per sample: mean over all but the batch dimension of
    w * (v_hat - v)^2.

    Returns:
        (B,) float32 losses; `.mean()` gives the batch loss.
    """
    w = weighting.view(-1, *([1] * (prediction.ndim - 1)))
    return torch.mean((w * (prediction.float() - target.float()) ** 2).reshape(target.shape[0], -1), 1)


@dataclass
class StepOutput:
    """What one objective evaluation produced (tokens are packed, (B, N_t, 64))."""

    loss: torch.Tensor  # scalar
    per_sample_loss: torch.Tensor  # (B,)
    sigmas: torch.Tensor  # (B,)
    predicted_velocity: torch.Tensor
    target_velocity: torch.Tensor
    noisy_tokens: torch.Tensor
    latent_hw: tuple[int, int]

    def x0_hat_latents(self) -> torch.Tensor:
        """(B, 16, h, w) clean latents implied by the prediction, for a pixel-space loss."""
        tokens = x0_from_velocity(self.noisy_tokens, self.sigmas, self.predicted_velocity)
        return latent_ops.unpack(tokens, *self.latent_hw)


def check_step_inputs(
    target_latents: torch.Tensor,
    control_latents: torch.Tensor,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    weighting_scheme: str = "none",
) -> None:
    """Raise a clear ValueError, before any model runs, for inputs a training step cannot use.

    Checks: known weighting scheme; (B, C, h, w) latents with even sides (2x2 packing); the same B
    for target and control; noise shaped like the target; sigmas (B,) in [0, 1]; no NaN or inf.
    """
    _check_choice("loss weighting scheme", weighting_scheme, WEIGHTING_SCHEMES)
    for name, tensor in (("target latents", target_latents), ("control latents", control_latents)):
        if tensor.ndim != 4:
            raise ValueError(f"{name} must be (B, C, h, w); got shape {tuple(tensor.shape)}.")
        if tensor.shape[-2] % latent_ops.PATCH or tensor.shape[-1] % latent_ops.PATCH:
            raise ValueError(
                f"{name} sides must be even to pack 2x2 patches; got {tensor.shape[-2]}x{tensor.shape[-1]} "
                "(image sides must be multiples of latents.pixel_multiple(vae))."
            )
    if target_latents.shape[0] != control_latents.shape[0]:
        raise ValueError(
            f"target and control batches differ in size: {target_latents.shape[0]} vs {control_latents.shape[0]}."
        )
    if noise.shape != target_latents.shape:
        raise ValueError(f"noise must have the target's shape {tuple(target_latents.shape)}; got {tuple(noise.shape)}.")
    if sigmas.shape != (target_latents.shape[0],):
        raise ValueError(f"sigmas must be ({target_latents.shape[0]},), one per sample; got {tuple(sigmas.shape)}.")
    for name, tensor in (("target latents", target_latents), ("control latents", control_latents),
                         ("noise", noise), ("sigmas", sigmas)):
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{name} contain NaN or inf; check the input images and the VAE.")
    if (sigmas < 0).any() or (sigmas > 1).any():
        raise ValueError(f"sigmas must lie in [0, 1]; got min {float(sigmas.min())}, max {float(sigmas.max())}.")


def predict_target_tokens(transformer, noisy_target_latents: torch.Tensor, control_latents: torch.Tensor,
                          text: PromptEmbeddings, sigmas: torch.Tensor, guidance_scale: float | None = GUIDANCE_SCALE):
    """Stages 4-5 for one noisy target: build the Kontext sequence and predict.

    Returns:
        (velocity, noisy_tokens): the prediction on the target tokens and those tokens' inputs,
        both (B, N_t, 64).
    """
    inputs = build_transformer_inputs(noisy_target_latents, control_latents, text, sigmas, guidance_scale)
    num_target_tokens = latent_ops.token_count(*noisy_target_latents.shape[-2:])
    return predict_velocity(transformer, inputs, num_target_tokens), inputs["hidden_states"][:, :num_target_tokens]


def kontext_flow_matching_step(
    transformer,
    target_latents: torch.Tensor,
    control_latents: torch.Tensor,
    text: PromptEmbeddings,
    sigmas: torch.Tensor,
    noise: torch.Tensor,
    guidance_scale: float | None = GUIDANCE_SCALE,
    weighting_scheme: str = "none",
) -> StepOutput:
    """Stages 3-7 in order: noise the target, build the Kontext sequence, predict, compare."""
    check_step_inputs(target_latents, control_latents, noise, sigmas, weighting_scheme)
    noisy = noisy_latents(target_latents, noise, sigmas)
    predicted, noisy_tokens = predict_target_tokens(transformer, noisy, control_latents, text, sigmas, guidance_scale)
    target = latent_ops.pack(velocity_target(noise, target_latents))
    per_sample = flow_matching_loss(predicted, target, loss_weighting(sigmas, weighting_scheme).to(predicted.device))
    return StepOutput(
        loss=per_sample.mean(),
        per_sample_loss=per_sample,
        sigmas=sigmas,
        predicted_velocity=predicted,
        target_velocity=target,
        noisy_tokens=noisy_tokens,
        latent_hw=tuple(noisy.shape[-2:]),
    )


def sigma_one_estimate(transformer, control_latents: torch.Tensor, text: PromptEmbeddings, noise: torch.Tensor,
                       guidance_scale: float | None = GUIDANCE_SCALE) -> torch.Tensor:
    """The model's clean estimate at sigma 1 from `noise`: where a sampler that starts at `noise` is
    headed after its first step. No graph (it is a target point, not a prediction to train).

    Args:
        noise: (B, 16, h, w) the starting noise; control_latents: (B, 16, h_c, w_c); text: batch B.

    Returns:
        (B, 16, h, w) latents, the dtype of `noise`.
    """
    ones = torch.ones(noise.shape[0], device=noise.device, dtype=torch.float32)
    with torch.no_grad():
        velocity, noise_tokens = predict_target_tokens(transformer, noise, control_latents, text, ones, guidance_scale)
        tokens = x0_from_velocity(noise_tokens, ones, velocity.to(noise_tokens.dtype))
    return latent_ops.unpack(tokens, *noise.shape[-2:]).detach()


def kontext_posterior_mean_step(
    transformer,
    target_latents: torch.Tensor,
    control_latents: torch.Tensor,
    text: PromptEmbeddings,
    sigmas: torch.Tensor,
    noise: torch.Tensor,
    guidance_scale: float | None = GUIDANCE_SCALE,
    weighting_scheme: str = "none",
) -> StepOutput:
    """The ``posterior_mean`` objective: same inputs and output as `kontext_flow_matching_step`.

    1. ``anchor = sigma_one_estimate(noise)``: the model's own clean estimate from this noise.
    2. ``x_t = (1 - sigma) * anchor + sigma * noise``: a point on the straight line an Euler sampler
       follows from `noise` while every step aims at `anchor` (FluxKontextPipeline's sampler).
    3. loss = ``|x0_hat - x0|^2`` with ``x0_hat = x_t - sigma * v_hat``, the clean image implied by
       the prediction (mean over latent values, times `loss_weighting`).

    ``x_t`` holds nothing about the clean image that the control image and the noise do not, and
    the noise is independent of it, so the best ``x0_hat`` from every such point is the conditional
    mean E[x0 | control]; a sampler started at any noise then ends there instead of at a draw.
    The cost is one more transformer forward per step, without a graph.
    """
    check_step_inputs(target_latents, control_latents, noise, sigmas, weighting_scheme)
    anchor = sigma_one_estimate(transformer, control_latents, text, noise, guidance_scale)
    noisy = noisy_latents(anchor, noise, sigmas)
    predicted, noisy_tokens = predict_target_tokens(transformer, noisy, control_latents, text, sigmas, guidance_scale)
    clean_tokens = latent_ops.pack(target_latents)
    s = sigmas.view(-1, 1, 1).to(device=predicted.device, dtype=torch.float32)
    x0_hat = noisy_tokens.float() - s * predicted.float()
    weighting = loss_weighting(sigmas, weighting_scheme).to(predicted.device)
    per_sample = flow_matching_loss(x0_hat, clean_tokens.float(), weighting)
    return StepOutput(
        loss=per_sample.mean(),
        per_sample_loss=per_sample,
        sigmas=sigmas,
        predicted_velocity=predicted,
        # the velocity that lands exactly on the clean image from x_t (for logging and tests)
        target_velocity=((noisy_tokens.float() - clean_tokens.float()) / s.clamp_min(1e-4)).to(predicted.dtype),
        noisy_tokens=noisy_tokens,
        latent_hw=tuple(noisy.shape[-2:]),
    )


def objective_step(name: str):
    """The step function of objective `name` (one of ``OBJECTIVES``); both take and return the same."""
    _check_choice("objective", name, OBJECTIVES)
    return kontext_posterior_mean_step if name == "posterior_mean" else kontext_flow_matching_step


# --- 8. sampling: the pipeline's Euler sampler, by hand -----------------------------------------------


def pipeline_sigmas(num_inference_steps: int, num_target_tokens: int, scheduler_config=None) -> torch.Tensor:
    """The noise levels `FluxKontextPipeline` steps through, from 1 down to 0.

    The pipeline passes ``sigmas = linspace(1, 1/n, n)`` to FLUX's scheduler, which shifts them with
    ``mu = calculate_shift(num_target_tokens)`` (`shift_sigmas`) and appends a final 0. The last
    step therefore jumps from the shifted ``1/n`` straight to the clean image: for 28 steps and
    nano's 256 tokens (mu 0.5) the tail is about 0.165, 0.113, 0.058, 0.

    Args:
        num_inference_steps: n, the number of transformer calls.
        num_target_tokens: tokens of the image being generated (`latents.token_count`); sets mu.
        scheduler_config: the pipeline's ``scheduler.config`` (FLUX's shift settings by default).

    Returns:
        (n + 1,) float32, decreasing from 1 to 0.

    Raises:
        ValueError: for a scheduler configured with options this hand-written version does not
            reproduce (terminal stretching, Karras/exponential/beta sigmas, stochastic sampling).
    """
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be at least 1; got {num_inference_steps}")
    config = dict(scheduler_config or {})
    unsupported = [key for key in ("shift_terminal", "use_karras_sigmas", "use_exponential_sigmas",
                                   "use_beta_sigmas", "invert_sigmas", "stochastic_sampling") if config.get(key)]
    if unsupported or config.get("time_shift_type", "exponential") != "exponential":
        raise ValueError(f"pipeline_sigmas reproduces FLUX's exponential shift only; this scheduler also sets "
                         f"{unsupported or 'a linear time shift'}: use the pipeline's own scheduler.set_timesteps")
    # The pipeline's numpy linspace, made float32 and shifted in numpy as the scheduler does it
    # (the same formula as `shift_sigmas`; torch's float32 division can round differently).
    base = np.linspace(1.0, 1.0 / num_inference_steps, num_inference_steps).astype(np.float32)
    scale = math.exp(calculate_shift(num_target_tokens, config or None))
    shifted = scale / (scale + (1 / base - 1) ** 1.0)
    return torch.cat([torch.from_numpy(shifted).float(), torch.zeros(1)])


@torch.no_grad()
def euler_sample(
    transformer,
    control_latents: torch.Tensor,
    text: PromptEmbeddings,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    guidance_scale: float | None = GUIDANCE_SCALE,
    aims: list | None = None,
) -> torch.Tensor:
    """Integrate the learned velocity from noise to a clean latent: the pipeline's sampler.

    ``x = noise``; for each pair of neighbouring noise levels, ``v_hat = transformer(x, sigma)``
    (the Kontext sequence of `build_transformer_inputs`) and ``x <- x + (sigma_next - sigma) * v_hat``,
    the update computed in float32 as FLUX's scheduler does. With `pipeline_sigmas` and the noise
    the pipeline draws (``randn`` of this shape from its generator) this is `FluxKontextPipeline`'s
    ``output_type="latent"`` result, unpacked; `latents.decode` turns it into pixels.

    Every step's ``x0_hat = x - sigma * v_hat`` is where that step aims; a model trained for the
    posterior mean gives the same ``x0_hat`` all the way, so the sampler moves on a straight line.

    Args:
        control_latents: (B, 16, h_c, w_c) the encoded condition image. text: prompt embeddings, batch B.
        noise: (B, 16, h, w) the starting latent (sigma 1). sigmas: (n + 1,) from 1 down to 0.
        aims: a list to receive each step's ``x0_hat`` as (B, 16, h, w) float32 latents, or None.

    Returns:
        (B, 16, h, w) latents, the dtype of `noise`.
    """
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError(f"sigmas must be a 1-D schedule of at least 2 levels; got shape {tuple(sigmas.shape)}")
    height, width = noise.shape[-2:]
    batch = noise.shape[0]
    tokens = latent_ops.pack(noise)
    for sigma, sigma_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        # The pipeline's scheduler keeps timestep = sigma * 1000 in float32 and divides by 1000
        # again: the round trip can move sigma by one float32 step, so it is copied here.
        timestep = torch.full((batch,), sigma, dtype=torch.float32).mul(1000).to(tokens.dtype).div(1000)
        x = latent_ops.unpack(tokens, height, width)
        velocity, _ = predict_target_tokens(transformer, x, control_latents, text, timestep.to(tokens.device),
                                            guidance_scale)
        if aims is not None:
            aims.append(latent_ops.unpack(tokens.float() - timestep.view(-1, 1, 1).float() * velocity.float(),
                                          height, width))
        # float32 sigmas as the scheduler holds them
        step = torch.tensor(sigma_next, dtype=torch.float32) - torch.tensor(sigma, dtype=torch.float32)
        tokens = (tokens.float() + step * velocity.float()).to(noise.dtype)
    return latent_ops.unpack(tokens, height, width)


# --- text ------------------------------------------------------------------------------------------


class PromptEmbeddingCache:
    """Prompt embeddings computed once per distinct prompt string (never per step, never by index).

    Args:
        pipe: a `FluxKontextPipeline` whose text encoders are loaded (the whole pipeline, or only
            its text side: `models.load_text_encoders`).
        max_sequence_length: T5 tokens (512 for FLUX-dev, 32 for nano); must match inference.
    """

    def __init__(self, pipe, max_sequence_length: int):
        self.max_sequence_length = max_sequence_length
        self._pipe = pipe
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.text_ids: torch.Tensor | None = None

    @torch.no_grad()
    def add(self, prompts) -> None:
        """Encode any prompts not seen yet (in one batch)."""
        new = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if not new:
            return
        if self._pipe is None:
            raise RuntimeError(f"prompt {new[0]!r} was not encoded before the text encoders were released.")
        embeds, pooled, text_ids = self._pipe.encode_prompt(
            prompt=new, prompt_2=None, max_sequence_length=self.max_sequence_length,
            device=self._pipe.text_encoder.device,
        )
        for i, prompt in enumerate(new):
            self._cache[prompt] = (embeds[i].cpu(), pooled[i].cpu())
        self.text_ids = text_ids.cpu()

    def __len__(self) -> int:
        return len(self._cache)

    def release_encoders(self) -> None:
        """Forget the pipeline so the text encoders can be freed once every prompt is cached."""
        self._pipe = None

    def batch(self, prompts, device=None, dtype=None) -> PromptEmbeddings:
        """PromptEmbeddings for a list of prompts (B entries, repeats allowed)."""
        self.add(prompts)
        embeds = torch.stack([self._cache[p][0] for p in prompts])
        pooled = torch.stack([self._cache[p][1] for p in prompts])
        return PromptEmbeddings(embeds, pooled, self.text_ids).to(device=device, dtype=dtype)
