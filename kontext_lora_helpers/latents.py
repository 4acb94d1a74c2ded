"""From pixels to the token sequence FLUX.1 Kontext reads, and back.

The path, with FLUX.1-Kontext-dev's sizes at 1024x1024 (nano's at 64x64 in brackets):

1. pixels (B, 3, 1024, 1024) in [-1, 1]                    [(B, 3, 64, 64)]
2. VAE encode, take the mode, shift and scale:
   ``z = (vae.encode(x).latent_dist.mode() - shift_factor) * scaling_factor``
   -> latents (B, 16, 128, 128), roughly zero mean, unit variance   [(B, 16, 32, 32)]
3. pack 2x2 patches into tokens: (B, 16, H, W) -> (B, H/2 * W/2, 64)  -> (B, 4096, 64)  [(B, 256, 64)]
4. position ids, one (3,) row per token: ``(frame, row, col)``; the target image has frame 0, the
   Kontext condition (control) image frame 1, so the two share rows and columns but stay apart.

These functions reproduce `FluxKontextPipeline`'s private helpers (`_pack_latents`,
`_unpack_latents`, `_prepare_latent_image_ids`, `_encode_vae_image`) so that training builds exactly
the inputs inference builds; tests compare them against the pipeline.
"""

from __future__ import annotations


import torch

PATCH = 2
"""FLUX packs 2x2 latent patches into one token."""


def vae_scale_factor(vae) -> int:
    """Pixels per latent cell along one side: 8 for FLUX's VAE, 2 for nano's."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def pixel_multiple(vae) -> int:
    """Image sides must be multiples of this (16 for FLUX, 4 for nano): VAE factor x 2x2 packing."""
    return vae_scale_factor(vae) * PATCH


def token_count(latent_height: int, latent_width: int) -> int:
    """Image tokens for latents of this size: one per 2x2 patch (`pack`)."""
    return (latent_height // PATCH) * (latent_width // PATCH)


def image_token_count(vae, height: int, width: int) -> int:
    """Image tokens for a ``height`` x ``width`` pixel image: 4096 for FLUX at 1024x1024, 256 for
    nano at 64x64. The sigma shift of FLUX's scheduler depends on it (`objective.calculate_shift`)."""
    factor = vae_scale_factor(vae)
    return token_count(height // factor, width // factor)


def check_image_tensor(pixels: torch.Tensor, multiple: int, name: str = "image") -> None:
    """Raise a clear error unless `pixels` is (B, 3, H, W), finite, with sides multiples of `multiple`."""
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"{name} must be a (B, 3, H, W) tensor in [-1, 1]; got shape {tuple(pixels.shape)}.")
    height, width = pixels.shape[-2:]
    if height % multiple or width % multiple:
        raise ValueError(
            f"{name} sides must be multiples of {multiple} (VAE factor x 2x2 packing); got {height}x{width}. "
            f"Resize or crop to {height // multiple * multiple}x{width // multiple * multiple}."
        )
    if not torch.isfinite(pixels).all():
        raise ValueError(f"{name} contains NaN or inf values.")


@torch.no_grad()
def encode(vae, pixels: torch.Tensor) -> torch.Tensor:
    """Encode images into FLUX latents, exactly as the Kontext pipeline encodes its condition image.

    Args:
        vae: an `AutoencoderKL` with `shift_factor` and `scaling_factor` in its config.
        pixels: (B, 3, H, W) float in [-1, 1]; H and W multiples of `pixel_multiple(vae)`.

    Returns:
        (B, C, H / f, W / f) latents in the VAE's dtype, where f = `vae_scale_factor(vae)`
        (C = 16 for FLUX and nano), shifted and scaled to roughly zero mean and unit variance.
    """
    pixels = pixels.to(device=vae.device, dtype=vae.dtype)
    # The pipeline takes the mode (argmax) of the latent distribution, never a sample.
    latents = vae.encode(pixels).latent_dist.mode()
    return (latents - vae.config.shift_factor) * vae.config.scaling_factor


def encode_with_grad(vae, pixels: torch.Tensor) -> torch.Tensor:
    """`encode` without `no_grad`, for training the VAE itself."""
    latents = vae.encode(pixels).latent_dist.mode()
    return (latents - vae.config.shift_factor) * vae.config.scaling_factor


def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Decode FLUX latents back to pixels (gradients flow, for the perceptual loss).

    Args:
        latents: (B, C, h, w) as returned by `encode`.

    Returns:
        (B, 3, h * f, w * f) pixels, nominally in [-1, 1] (not clamped).
    """
    latents = latents.to(device=vae.device, dtype=vae.dtype)
    return vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor).sample


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) latents -> (B, H/2 * W/2, 4C) tokens; each token is one 2x2 patch, row-major.

    The channel order inside a token is (c, dy, dx), matching `FluxKontextPipeline._pack_latents`.
    """
    batch, channels, height, width = latents.shape
    if height % PATCH or width % PATCH:
        raise ValueError(f"latent sides must be even to pack 2x2 patches; got {height}x{width}.")
    tokens = latents.view(batch, channels, height // 2, 2, width // 2, 2)
    tokens = tokens.permute(0, 2, 4, 1, 3, 5)
    return tokens.reshape(batch, (height // 2) * (width // 2), channels * 4)


def unpack(tokens: torch.Tensor, latent_height: int, latent_width: int) -> torch.Tensor:
    """Inverse of `pack`: (B, h/2 * w/2, 4C) tokens -> (B, C, h, w) latents."""
    batch, num_tokens, token_dim = tokens.shape
    if num_tokens != (latent_height // 2) * (latent_width // 2):
        raise ValueError(
            f"{num_tokens} tokens cannot form a {latent_height}x{latent_width} latent "
            f"({(latent_height // 2) * (latent_width // 2)} tokens expected)."
        )
    latents = tokens.view(batch, latent_height // 2, latent_width // 2, token_dim // 4, 2, 2)
    latents = latents.permute(0, 3, 1, 4, 2, 5)
    return latents.reshape(batch, token_dim // 4, latent_height, latent_width)


def position_ids(
    latent_height: int,
    latent_width: int,
    frame: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Position ids for the tokens of one packed image: (h/2 * w/2, 3) rows ``(frame, row, col)``.

    Args:
        latent_height, latent_width: the latent's sides (before packing).
        frame: 0 for the image being generated (the target), 1 for Kontext's condition image.
    """
    rows, cols = latent_height // 2, latent_width // 2
    ids = torch.zeros(rows, cols, 3)
    ids[..., 0] = frame
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(cols)[None, :]
    return ids.reshape(rows * cols, 3).to(device=device, dtype=dtype)


def text_position_ids(num_text_tokens: int, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Text tokens all sit at position (0, 0, 0): (T, 3) zeros, as in the pipeline."""
    return torch.zeros(num_text_tokens, 3, device=device, dtype=dtype)


def kontext_sequence(
    target_tokens: torch.Tensor,
    control_tokens: torch.Tensor,
    target_latent_hw: tuple[int, int],
    control_latent_hw: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate `[target tokens, control tokens]` and their ids, in the pipeline's order.

    Args:
        target_tokens: (B, N_t, 64) packed (noisy) target latents.
        control_tokens: (B, N_c, 64) packed condition latents.
        target_latent_hw, control_latent_hw: latent sides of each, for their position ids.

    Returns:
        hidden_states (B, N_t + N_c, 64) and img_ids (N_t + N_c, 3); the prediction for the target is
        the first N_t tokens of the transformer's output.
    """
    ids = torch.cat(
        [
            position_ids(*target_latent_hw, frame=0, device=target_tokens.device, dtype=target_tokens.dtype),
            position_ids(*control_latent_hw, frame=1, device=target_tokens.device, dtype=target_tokens.dtype),
        ],
        dim=0,
    )
    return torch.cat([target_tokens, control_tokens], dim=1), ids


def latent_statistics(latents: torch.Tensor) -> dict:
    """Per-channel mean and standard deviation of (B, C, H, W) latents, plus their overall values."""
    per_channel_mean = latents.mean(dim=(0, 2, 3))
    per_channel_std = latents.std(dim=(0, 2, 3))
    return {
        "mean": float(latents.mean()),
        "std": float(latents.std()),
        "per_channel_mean": per_channel_mean.tolist(),
        "per_channel_std": per_channel_std.tolist(),
    }


@torch.no_grad()
def round_trip(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Encode then decode; returns the reconstruction (B, 3, H, W) in [-1, 1] and its PSNR in dB
    (`metrics.psnr`: per image on 8-bit levels, then the mean)."""
    from .metrics import psnr

    reconstruction = decode(vae, encode(vae, pixels)).clamp(-1, 1).to(pixels.dtype)
    return reconstruction, psnr(reconstruction, pixels)
