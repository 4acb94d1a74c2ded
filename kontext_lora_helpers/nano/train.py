"""Training the nano weights on CPU: the VAE first, then the transformer as a small image editor.

Both stages checkpoint to `work_dir` and resume from there, so a long CPU run can be stopped and
continued. The commands, and the CPU time they took for the shipped weights, are in the README
("Rebuilding the nano weights").
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import latents as latent_ops
from .. import metrics
from ..data import pil_to_tensor, tensor_to_pil
from ..degradations import PRESETS, apply_degradation
from ..statefiles import load_state, save_state
from .model import NANO_RESOLUTION
from .edits import EDITS, apply_edit, random_identity_prompt
from .pool import CropPool, default_image_paths, held_out_batch


def _cosine_lr(step: int, total: int, peak: float, warmup: int, floor: float = 0.05) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _save_atomic(obj, path: Path) -> None:
    # Tensors and JSON, no pickle (`statefiles`); written atomically, so a kill mid-save leaves the
    # previous checkpoint intact.
    save_state(obj, path)


def _log(work_dir: Path, record: dict) -> None:
    with open(work_dir / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


@torch.no_grad()
def measure_latent_factors(vae, pool: CropPool, num_images: int = 512, seed: int = 7) -> dict:
    """FLUX-style `shift_factor` (mean) and `scaling_factor` (1 / std) of the VAE's raw latents,
    measured on `num_images` crops, so that scaled latents have zero mean and unit variance."""
    rng = np.random.default_rng(seed)
    raw = torch.cat([vae.encode(pool.batch(64, rng)).latent_dist.mode() for _ in range(num_images // 64)])
    return {"shift_factor": float(raw.mean()), "scaling_factor": float(1.0 / raw.std())}


def degrade_some(pixels: torch.Tensor, fraction: float, rng: np.random.Generator) -> torch.Tensor:
    """Replace a random `fraction` of a batch of crops by degraded copies.

    The degradations are the course's Real-ESRGAN-style preset (blur, resizing, Gaussian or Poisson
    noise, JPEG, at random strengths), so a VAE trained on the result reproduces flawed photos as
    faithfully as clean ones: a copy of a noisy photo through nano keeps its noise, and removing it is
    left to the restoration LoRA, as with FLUX's own VAE.

    Args:
        pixels: (B, 3, S, S) float in [-1, 1]; not modified.
        fraction: probability in [0, 1] that each crop is degraded.
        rng: draws which crops and the degradation seeds.

    Returns:
        (B, 3, S, S) float in [-1, 1].
    """
    if fraction <= 0:
        return pixels
    out = pixels.clone()
    for index in np.flatnonzero(rng.random(len(pixels)) < fraction):
        degraded, _ = apply_degradation(tensor_to_pil(pixels[index]), PRESETS["realesrgan"],
                                        seed=int(rng.integers(1 << 31)))
        out[index] = pil_to_tensor(degraded)
    return out


def train_vae(
    components: dict,
    work_dir: Path,
    steps: int = 4000,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    kl_weight: float = 1e-6,
    seed: int = 0,
    image_dirs=None,
    checkpoint_every: int = 250,
    crop_size: int = 32,
    degraded_fraction: float = 0.5,
    device: str | torch.device = "cpu",
) -> dict:
    """Train the nano VAE to reproduce natural-image crops, flaws included.

    Loss: MSE + 0.1 L1 on pixels in [-1, 1] plus a tiny KL term that keeps the posterior well
    behaved; the pipeline uses the posterior's mode, so the KL only regularises.

    Args:
        crop_size: side of the training crops in pixels; the VAE is fully convolutional, so small
            crops (32) train as well as 64 and cost a quarter.
        degraded_fraction: share of the crops replaced by a degraded copy (`degrade_some`), so the
            VAE learns to keep noise and blur instead of smoothing them away.
        device: where to train; the VAE is returned on the CPU.

    Returns:
        dict with held-out round-trip PSNR (dB) and the measured latent factors.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    vae = components["vae"].to(device).train().requires_grad_(True)
    pool = CropPool(default_image_paths(image_dirs), size=crop_size, seed=seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=learning_rate, weight_decay=0.0)
    checkpoint_path = work_dir / "vae_checkpoint.safetensors"
    start = 0
    if checkpoint_path.exists():
        state = load_state(checkpoint_path)
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        pool.rng.bit_generator.state = state["rng"]
        start = state["step"]
    evaluation = held_out_batch(64).to(device)
    progress = tqdm(range(start, steps), initial=start, total=steps, desc="nano VAE", dynamic_ncols=True)
    begun = time.time()
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = _cosine_lr(step, steps, learning_rate, warmup=200)
        pixels = degrade_some(pool.batch(batch_size), degraded_fraction, pool.rng).to(device)
        posterior = vae.encode(pixels).latent_dist
        reconstruction = vae.decode(posterior.mode()).sample
        loss = F.mse_loss(reconstruction, pixels) + 0.1 * F.l1_loss(reconstruction, pixels)
        loss = loss + kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        progress.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
            vae.eval()
            with torch.no_grad():
                recon = vae.decode(vae.encode(evaluation).latent_dist.mode()).sample
            vae.train()
            psnr = metrics.psnr(recon, evaluation)
            _log(work_dir, {"stage": "vae", "step": step + 1, "loss": loss.item(), "held_out_psnr": psnr,
                            "seconds": time.time() - begun})
            _save_atomic({"model": vae.state_dict(), "optimizer": optimizer.state_dict(),
                          "rng": pool.rng.bit_generator.state, "step": step + 1}, checkpoint_path)
    vae.eval().requires_grad_(False).to("cpu")
    factors = measure_latent_factors(vae, pool)  # per-value statistics: the crop size does not matter
    vae.register_to_config(**factors)
    _, psnr = latent_ops.round_trip(vae, evaluation.cpu())
    return {"held_out_psnr_db": psnr, **factors}


# --- the editor --------------------------------------------------------------------------------------

def editor_batch(pool: CropPool, batch_size: int, rng: np.random.Generator, identity_fraction: float = 0.55):
    """(control, target, prompts, edits): controls are photo crops, targets their edited versions."""
    control = pool.batch(batch_size, rng)
    names = ["identity"] + list(EDITS)
    edit_p = (1 - identity_fraction) / len(EDITS)
    edits = rng.choice(names, size=batch_size, p=[identity_fraction] + [edit_p] * len(EDITS))
    target = torch.stack([apply_edit(control[i : i + 1], str(e))[0] for i, e in enumerate(edits)])
    prompts = [
        random_identity_prompt(rng) if e == "identity" else EDITS[str(e)][rng.integers(len(EDITS[str(e)]))]
        for e in edits
    ]
    return control, target, prompts, [str(e) for e in edits]


def _quick_identity_psnr(pipe, transformer) -> float:
    """Identity PSNR (dB) on the held-out crops for an unseen instruction, 10 sampling steps."""
    from .evaluate import UNSEEN_INSTRUCTION, run_pipeline

    transformer.eval()
    clean = held_out_batch(NANO_RESOLUTION)
    pipe.set_progress_bar_config(disable=True)
    psnr = metrics.psnr(run_pipeline(pipe, clean, UNSEEN_INSTRUCTION, steps=10), clean)
    transformer.train()
    return psnr


def train_editor(
    components: dict,
    work_dir: Path,
    steps: int = 2500,
    batch_size: int = 32,
    learning_rate: float = 5e-4,
    seed: int = 0,
    image_dirs=None,
    checkpoint_every: int = 250,
    device: str | torch.device = "cpu",
) -> dict:
    """Pretrain the nano transformer as a small Kontext editor with the course's own objective.

    Each sample is (control crop, prompt, target): the target is the control itself for an
    unrecognised instruction, or its flipped / grayscale / brightened version for the prompted edits.
    Sigmas are logit-normal, shifted with the mu the pipeline uses for a 64x64 image's tokens.
    Random numbers are drawn on the CPU, so a run is the same draw on any `device`; the components
    are returned on the CPU.
    """
    from diffusers import FluxKontextPipeline

    from .. import objective
    from .tokenizers import NANO_MAX_SEQUENCE_LENGTH

    work_dir.mkdir(parents=True, exist_ok=True)
    pipe = FluxKontextPipeline(**components).to(device)
    transformer = components["transformer"].train().requires_grad_(True)
    vae = components["vae"]
    prompts_cache = objective.PromptEmbeddingCache(pipe, NANO_MAX_SEQUENCE_LENGTH)
    pool = CropPool(default_image_paths(image_dirs), size=NANO_RESOLUTION, seed=seed + 1)
    rng = np.random.default_rng(seed + 2)
    generator = torch.Generator().manual_seed(seed + 3)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=learning_rate, weight_decay=0.01)
    num_image_tokens = latent_ops.image_token_count(vae, NANO_RESOLUTION, NANO_RESOLUTION)
    mu = objective.calculate_shift(num_image_tokens, components["scheduler"].config)
    checkpoint_path = work_dir / "editor_checkpoint.safetensors"
    start = 0
    if checkpoint_path.exists():
        state = load_state(checkpoint_path)
        transformer.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
        pool.rng.bit_generator.state = state["pool_rng"]
        generator.set_state(state["generator"])
        start = state["step"]
    progress = tqdm(range(start, steps), initial=start, total=steps, desc="nano editor", dynamic_ncols=True)
    begun = time.time()
    running = None
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = _cosine_lr(step, steps, learning_rate, warmup=200)
        control, target, prompts, _ = editor_batch(pool, batch_size, rng)
        target_latents, control_latents = objective.encode_pair(vae, target.to(device), control.to(device))
        sigmas = objective.sample_sigmas(batch_size, "logit_normal", shift=mu, generator=generator).to(device)
        noise = torch.randn(target_latents.shape, generator=generator).to(device)
        out = objective.kontext_flow_matching_step(
            transformer, target_latents, control_latents, prompts_cache.batch(prompts, device=device), sigmas, noise
        )
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()
        running = out.loss.item() if running is None else 0.98 * running + 0.02 * out.loss.item()
        progress.set_postfix(loss=f"{running:.4f}", refresh=False)
        if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
            record = {"stage": "editor", "step": step + 1, "loss_ema": running, "seconds": time.time() - begun}
            if (step + 1) % (4 * checkpoint_every) == 0:
                record["identity_psnr_10_steps"] = _quick_identity_psnr(pipe, transformer)
            _log(work_dir, record)
            _save_atomic({"model": transformer.state_dict(), "optimizer": optimizer.state_dict(),
                          "rng": rng.bit_generator.state, "pool_rng": pool.rng.bit_generator.state,
                          "generator": generator.get_state(), "step": step + 1}, checkpoint_path)
    transformer.eval().requires_grad_(False)
    pipe.to("cpu")
    return {"steps": steps, "final_loss_ema": running}
