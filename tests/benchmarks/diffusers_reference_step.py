"""One training step of diffusers' own FLUX.1 Kontext LoRA trainer, transcribed as functions.

Source: ``examples/dreambooth/train_dreambooth_lora_flux_kontext.py`` in huggingface/diffusers
(read at commit 01310e78bf9862c563cd6f273560e6264b709ea7; the script requires diffusers
>= 0.36.0.dev0, and the helpers it calls are taken from the diffusers installed here, 0.42.1).
The body of its ``for step, batch in enumerate(train_dataloader)`` loop is reproduced stage by
stage, in the script's order and with the script's helpers, so the benchmarks can run the same
batch through it and through this project's step:

1. VAE encode of the target (``pixel_values``) and of the condition image (``cond_pixel_values``),
   ``latent_dist.mode()`` (``--vae_encode_mode mode``, the default), then
   ``(z - shift_factor) * scaling_factor`` and a cast to the weight dtype;
2. position ids with ``FluxKontextPipeline._prepare_latent_image_ids`` for the target and the
   condition, the condition's first column set to 1, concatenated target first;
3. ``noise = torch.randn_like(model_input)``;
4. ``u = compute_density_for_timestep_sampling(weighting_scheme, ...)`` (diffusers.training_utils),
   ``indices = (u * num_train_timesteps).long()``, ``timesteps = noise_scheduler_copy.timesteps[indices]``;
5. ``sigmas = get_sigmas(timesteps)`` (the script's closure: look each timestep up in the
   scheduler's schedule), ``noisy = (1 - sigmas) * model_input + sigmas * noise``;
6. ``FluxKontextPipeline._pack_latents`` of the noisy target and of the condition, concatenated
   along the sequence (target first);
7. guidance ``torch.tensor([guidance_scale]).expand(B)`` (Kontext-dev is guidance-distilled);
8. the transformer with ``timestep=timesteps / 1000``, the prediction sliced to the target's
   tokens and ``FluxKontextPipeline._unpack_latents``-ed back to (B, 16, h, w);
9. ``weighting = compute_loss_weighting_for_sd3(weighting_scheme, sigmas)``,
   ``target = noise - model_input``, ``loss = mean_b(mean((weighting * (pred - target)^2)))``;
10. backward, ``clip_grad_norm_(transformer.parameters(), max_grad_norm)``, ``optimizer.step()``,
    ``lr_scheduler.step()``, ``optimizer.zero_grad()``, and ``loss.detach().item()`` for the logs.

What is deliberately not transcribed, and why:

* accelerate's wrappers: ``accelerator.accumulate`` (one micro-batch per step here),
  ``accelerator.backward`` and ``accelerator.clip_grad_norm_`` are, in one process without fp16
  scaling, exactly ``loss.backward()`` and ``torch.nn.utils.clip_grad_norm_``. Mixed precision
  (accelerate runs the prepared transformer's forward under ``torch.autocast``) is applied by the
  caller, to both arrangements alike.
* Prompt embeddings: with ``--instance_prompt`` only (no caption column, text encoders frozen) the
  script encodes the instance prompt once before the loop and passes that batch-1 tensor to every
  step (the transformer broadcasts it over the batch); the caller passes it in the same way. (A
  later revision of the script re-encodes the prompts each step; a T5-XXL forward per step is not
  part of the step being compared here.)
* The LoRA: the script adds its own ``LoraConfig`` (default rank 4, alpha 4, its target list,
  the adapter in the weight dtype unless fp16). The benchmarks add one adapter with
  ``kontext_lora_helpers.lora.add_lora`` and train it through both arrangements, so that they
  compute the same function and differ only in how the step is arranged.
* Prior preservation, text-encoder training and ``--cache_latents``: off by default in the script.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline
from diffusers.optimization import get_scheduler
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

# FLUX.1-dev's and FLUX.1-Kontext-dev's scheduler/scheduler_config.json; nano uses it unchanged.
from kontext_lora_helpers.nano.model import SCHEDULER_CONFIG as FLUX1_SCHEDULER_CONFIG

SCRIPT = "examples/dreambooth/train_dreambooth_lora_flux_kontext.py"
SCRIPT_COMMIT = "01310e78bf9862c563cd6f273560e6264b709ea7"



@dataclass
class ReferenceArgs:
    """The script's command-line settings that one step reads, at the script's defaults except
    ``weighting_scheme``: its default "none" samples timesteps uniformly; "logit_normal" (SD3's
    sampling, this project's default too) is what FLUX LoRA recipes pass."""

    weighting_scheme: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    guidance_scale: float = 3.5
    max_grad_norm: float = 1.0
    learning_rate: float = 1e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-4
    adam_epsilon: float = 1e-8
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 500
    vae_encode_mode: str = "mode"


def make_noise_scheduler_copy(config: dict | None = None) -> FlowMatchEulerDiscreteScheduler:
    """``noise_scheduler_copy``: the script loads the pipeline's scheduler and deep-copies it.

    With FLUX's config (dynamic shifting on) the training schedule is unshifted:
    ``timesteps = 1000, 999, ..., 1`` and ``sigmas = timesteps / 1000``.
    """
    scheduler = FlowMatchEulerDiscreteScheduler(**(config or FLUX1_SCHEDULER_CONFIG))
    return copy.deepcopy(scheduler)


def make_optimizer_and_lr_scheduler(transformer, args: ReferenceArgs, max_train_steps: int = 1000):
    """The script's AdamW over the transformer's trainable parameters and its LR scheduler."""
    transformer_lora_parameters = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": transformer_lora_parameters, "lr": args.learning_rate}],
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    lr_scheduler = get_scheduler(
        args.lr_scheduler, optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps, num_training_steps=max_train_steps,
    )
    return optimizer, lr_scheduler


def get_sigmas(noise_scheduler_copy, timesteps: torch.Tensor, device, n_dim: int = 4, dtype=torch.float32):
    """The script's ``get_sigmas`` closure: each timestep's sigma from the scheduler's schedule,
    shaped to broadcast over (B, C, h, w). (One ``.item()`` per sample, as in the script.)"""
    sigmas = noise_scheduler_copy.sigmas.to(device=device, dtype=dtype)
    schedule_timesteps = noise_scheduler_copy.timesteps.to(device)
    timesteps = timesteps.to(device)
    step_indices = [(schedule_timesteps == t).nonzero().item() for t in timesteps]

    sigma = sigmas[step_indices].flatten()
    while len(sigma.shape) < n_dim:
        sigma = sigma.unsqueeze(-1)
    return sigma


def encode_images(vae, pixel_values: torch.Tensor, cond_pixel_values: torch.Tensor, weight_dtype, args: ReferenceArgs):
    """Stage 1: latents of the target and of the condition image (no graph: the VAE is frozen,
    and the script runs the encode outside any ``requires_grad`` path)."""
    with torch.no_grad():
        pixel_values = pixel_values.to(dtype=vae.dtype)
        cond_pixel_values = cond_pixel_values.to(dtype=vae.dtype)
        if args.vae_encode_mode == "sample":
            model_input = vae.encode(pixel_values).latent_dist.sample()
            cond_model_input = vae.encode(cond_pixel_values).latent_dist.sample()
        else:
            model_input = vae.encode(pixel_values).latent_dist.mode()
            cond_model_input = vae.encode(cond_pixel_values).latent_dist.mode()
    shift_factor, scaling_factor = vae.config.shift_factor, vae.config.scaling_factor
    model_input = ((model_input - shift_factor) * scaling_factor).to(dtype=weight_dtype)
    cond_model_input = ((cond_model_input - shift_factor) * scaling_factor).to(dtype=weight_dtype)
    return model_input, cond_model_input


@dataclass
class ReferenceLoss:
    """What `reference_loss` computed: the scalar loss and the draws it used (for comparisons)."""

    loss: torch.Tensor
    sigmas: torch.Tensor  # (B,) float32, the noise levels looked up from the schedule
    timesteps: torch.Tensor  # (B,)
    noise: torch.Tensor  # (B, 16, h, w)
    model_input: torch.Tensor
    cond_model_input: torch.Tensor


def reference_loss(
    transformer,
    vae,
    pixel_values: torch.Tensor,
    cond_pixel_values: torch.Tensor,
    prompt_embeds: torch.Tensor,
    pooled_prompt_embeds: torch.Tensor,
    text_ids: torch.Tensor,
    noise_scheduler_copy,
    args: ReferenceArgs,
    weight_dtype: torch.dtype,
    device,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> ReferenceLoss:
    """Stages 1-9: from a batch of pixels to the script's flow-matching loss.

    Args:
        pixel_values, cond_pixel_values: (B, 3, H, W) in [-1, 1], already on `device` (accelerate's
            prepared data loader places the batch before the step).
        prompt_embeds, pooled_prompt_embeds, text_ids: the instance prompt's embeddings, encoded once.
        noise: optional (B, 16, h, w) noise to use instead of ``torch.randn_like`` (for comparing
            two arrangements on identical draws); generator: optional CPU generator for ``u``.
    """
    # 1. latents
    model_input, cond_model_input = encode_images(vae, pixel_values, cond_pixel_values, weight_dtype, args)
    vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    # 2. position ids: target frame 0, condition frame 1
    latent_image_ids = FluxKontextPipeline._prepare_latent_image_ids(
        model_input.shape[0], model_input.shape[2] // 2, model_input.shape[3] // 2, device, weight_dtype,
    )
    cond_latents_ids = FluxKontextPipeline._prepare_latent_image_ids(
        cond_model_input.shape[0], cond_model_input.shape[2] // 2, cond_model_input.shape[3] // 2, device, weight_dtype,
    )
    cond_latents_ids[..., 0] = 1
    latent_image_ids = torch.cat([latent_image_ids, cond_latents_ids], dim=0)

    # 3. noise
    if noise is None:
        noise = torch.randn_like(model_input)
    else:
        noise = noise.to(device=model_input.device, dtype=model_input.dtype)
    bsz = model_input.shape[0]

    # 4. timesteps
    u = compute_density_for_timestep_sampling(
        weighting_scheme=args.weighting_scheme, batch_size=bsz, logit_mean=args.logit_mean,
        logit_std=args.logit_std, mode_scale=args.mode_scale, generator=generator,
    )
    indices = (u * noise_scheduler_copy.config.num_train_timesteps).long()
    timesteps = noise_scheduler_copy.timesteps[indices].to(device=model_input.device)

    # 5. the noisy target, zt = (1 - t) x + t z1
    sigmas = get_sigmas(noise_scheduler_copy, timesteps, device, n_dim=model_input.ndim, dtype=model_input.dtype)
    noisy_model_input = (1.0 - sigmas) * model_input + sigmas * noise

    # 6. pack and concatenate [target tokens, condition tokens]
    packed_noisy_model_input = FluxKontextPipeline._pack_latents(
        noisy_model_input, batch_size=model_input.shape[0], num_channels_latents=model_input.shape[1],
        height=model_input.shape[2], width=model_input.shape[3],
    )
    orig_inp_shape = packed_noisy_model_input.shape
    packed_cond_input = FluxKontextPipeline._pack_latents(
        cond_model_input, batch_size=cond_model_input.shape[0], num_channels_latents=cond_model_input.shape[1],
        height=cond_model_input.shape[2], width=cond_model_input.shape[3],
    )
    packed_noisy_model_input = torch.cat([packed_noisy_model_input, packed_cond_input], dim=1)

    # 7. guidance
    guidance = None
    if transformer.config.guidance_embeds:
        guidance = torch.tensor([args.guidance_scale], device=device)
        guidance = guidance.expand(model_input.shape[0])

    # 8. predict, keep the target tokens, unpack
    model_pred = transformer(
        hidden_states=packed_noisy_model_input,
        timestep=timesteps / 1000,  # the transformer multiplies by 1000 again
        guidance=guidance,
        pooled_projections=pooled_prompt_embeds,
        encoder_hidden_states=prompt_embeds,
        txt_ids=text_ids,
        img_ids=latent_image_ids,
        return_dict=False,
    )[0]
    model_pred = model_pred[:, : orig_inp_shape[1]]
    model_pred = FluxKontextPipeline._unpack_latents(
        model_pred, height=model_input.shape[2] * vae_scale_factor, width=model_input.shape[3] * vae_scale_factor,
        vae_scale_factor=vae_scale_factor,
    )

    # 9. weighted flow-matching loss
    weighting = compute_loss_weighting_for_sd3(weighting_scheme=args.weighting_scheme, sigmas=sigmas)
    target = noise - model_input
    loss = torch.mean(
        (weighting.float() * (model_pred.float() - target.float()) ** 2).reshape(target.shape[0], -1), 1,
    )
    loss = loss.mean()
    return ReferenceLoss(loss, sigmas.flatten().float(), timesteps, noise, model_input, cond_model_input)


def reference_training_step(
    transformer,
    vae,
    optimizer,
    lr_scheduler,
    pixel_values: torch.Tensor,
    cond_pixel_values: torch.Tensor,
    prompt_embeds: torch.Tensor,
    pooled_prompt_embeds: torch.Tensor,
    text_ids: torch.Tensor,
    noise_scheduler_copy,
    args: ReferenceArgs,
    weight_dtype: torch.dtype,
    device,
) -> float:
    """Stages 1-10: one optimizer step; returns the logged loss value."""
    loss = reference_loss(
        transformer, vae, pixel_values, cond_pixel_values, prompt_embeds, pooled_prompt_embeds, text_ids,
        noise_scheduler_copy, args, weight_dtype, device,
    ).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(transformer.parameters(), args.max_grad_norm)
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad()
    return loss.detach().item()
