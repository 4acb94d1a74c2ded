"""The figures that describe the shipped nano weights, measured on held-out photos.

Used by `nano train` (to report) and by the tests (to assert); the README's "Nano figures" quotes them:

- VAE round-trip PSNR at 64x64;
- the editor's identity PSNR for an instruction it never saw (through the full pipeline, 20 steps);
- how well it follows each trained edit (PSNR against the edited input);
- that it does *not* restore: on degraded inputs it returns its input as the VAE represents it, so
  its output is no closer to the clean photo than the VAE round trip of the degraded input.
"""

from __future__ import annotations

import torch

from .. import latents as latent_ops
from ..data import pil_to_tensor, tensor_to_pil
from ..degradations import PRESETS, DegradationConfig, apply_degradation
from ..metrics import paired_spread, psnr, spread
from ..prompts import DEFAULT_INSTANCE_PROMPT
from ..inference import restore_batch
from .edits import EDITS, apply_edit
from .model import NANO_RESOLUTION
from .pool import evaluation_batch, held_out_batch

UNSEEN_INSTRUCTION = DEFAULT_INSTANCE_PROMPT
"""The course's restoration instruction, which nano's editor never saw while it was built."""


def tensor_to_pils(pixels: torch.Tensor):
    """(B, 3, H, W) in [-1, 1] -> list of PIL RGB images."""
    return [tensor_to_pil(image) for image in pixels]


@torch.no_grad()
def run_pipeline(pipe, pixels: torch.Tensor, prompt: str, steps: int = 20, seed: int = 0) -> torch.Tensor:
    """Edit a batch (B, 3, 64, 64) in [-1, 1] with one prompt through `inference.restore_batch`;
    returns the 8-bit outputs in the same format, on the CPU."""
    images = restore_batch(pipe, tensor_to_pils(pixels), prompt, steps, seed=seed)
    return torch.stack([pil_to_tensor(image) for image in images])


def evaluate_nano(pipe, steps: int = 20, seed: int = 0) -> dict:
    """All nano figures on the held-out photos (16 crops at 64x64). PSNRs in dB (`metrics.psnr`:
    per image on 8-bit levels, then the mean); "spread" holds each figure's `metrics.Spread` over
    the 16 crops as a dict (mean, std, sem, n)."""

    clean = held_out_batch(NANO_RESOLUTION)
    per_image: dict[str, list[float]] = {}

    def score(name: str, images: torch.Tensor, references: torch.Tensor) -> None:
        per_image[name] = psnr(images, references, reduction="none")

    reconstructed, _ = latent_ops.round_trip(pipe.vae, clean)
    score("vae_round_trip_psnr", reconstructed, clean)
    score("identity_psnr_unseen_instruction", run_pipeline(pipe, clean, UNSEEN_INSTRUCTION, steps, seed), clean)
    for edit, phrasings in EDITS.items():
        edited = run_pipeline(pipe, clean, phrasings[0], steps, seed)
        score(f"{edit}_psnr_vs_edited", edited, apply_edit(clean, edit))
        score(f"{edit}_psnr_vs_input", edited, clean)
    degraded = torch.stack([
        pil_to_tensor(apply_degradation(image, RESTORATION_BAR, seed=i)[0])
        for i, image in enumerate(tensor_to_pils(clean))
    ])
    restored_by_base = run_pipeline(pipe, degraded, UNSEEN_INSTRUCTION, steps, seed)
    degraded_round_trip, _ = latent_ops.round_trip(pipe.vae, degraded)
    score("degraded_psnr", degraded, clean)
    # The VAE cannot represent pixel noise well, so a round trip alone already smooths some away:
    # that is the most a pure copy through the latent space can "restore".
    score("degraded_vae_round_trip_psnr", degraded_round_trip, clean)
    score("base_on_degraded_psnr", restored_by_base, clean)
    score("base_on_degraded_vs_its_input_psnr", restored_by_base, degraded_round_trip)
    results = {name: spread(values).mean for name, values in per_image.items()}
    results["spread"] = {name: spread(values).as_dict() for name, values in per_image.items()}
    return results


RESTORATION_BAR = PRESETS["course"]
"""The degradation the course's quality bar is judged on (the README's training command uses it too)."""
GUIDE_BAR = PRESETS["original_guide_command"]
"""The original guide's own flags: at 64 px, x8 downsampling leaves an 8x8-pixel image; reported, not judged."""


@torch.no_grad()
def check_restoration_lora(lora_dir, degradation: DegradationConfig | None = None, pipeline_dir=None,
                           seed: int = 0, num_inference_steps: int | None = None, photo_set: str = "test",
                           pipe=None) -> dict:
    """The independent check of a trained nano restoration LoRA, through plain diffusers only.

    Exports nano as a standard diffusers folder (or uses `pipeline_dir`), loads it with
    ``FluxKontextPipeline.from_pretrained``, and restores the crops of `photo_set` (`evaluation_batch`:
    the 16 test crops at 64x64 by default, or the 24 validation crops to choose on; never trained
    on) degraded with `degradation` (default `RESTORATION_BAR`), once
    without and once with ``load_lora_weights(lora_dir)``, as the original guide's inference snippet
    does: guidance 3.5, at the crops' own size, through `inference.restore_batch`, scored with
    `metrics.psnr` like every figure of the course.

    ``num_inference_steps``: both restorations use the same count; the default is what the LoRA file
    records (`train.RESTORATION_STEPS`: 4 for nano's recipe), else the pipeline's default (28, the
    snippet's). ``pipe``: an already loaded plain
    ``FluxKontextPipeline`` without LoRA (a study that checks many LoRAs loads it once); its LoRA is
    unloaded again before returning.

    Returns:
        {"degraded_psnr", "base_psnr", "lora_psnr", "lora_minus_base_db", "lora_minus_degraded_db",
        "num_images", "num_inference_steps", "photo_set", "degradation", "spread"} with PSNRs in dB
        against the clean crops (means over the crops); "spread" holds `metrics.Spread` dicts of each
        PSNR and of the paired gains, and "per_image" the per-crop PSNRs.
    """
    import tempfile
    from pathlib import Path

    from diffusers import FluxKontextPipeline

    from ..models import GUIDANCE_SCALE
    from ..inference import default_num_inference_steps
    from ..lora import check_lora_fits
    from .model import build_nano_pipeline

    degradation = RESTORATION_BAR if degradation is None else degradation
    with tempfile.TemporaryDirectory() as scratch:
        if pipe is None:
            if pipeline_dir is None:
                pipeline_dir = Path(scratch) / "nano"
                build_nano_pipeline().save_pretrained(pipeline_dir, safe_serialization=True)
            pipe = FluxKontextPipeline.from_pretrained(pipeline_dir)
        pipe.set_progress_bar_config(disable=True)
        clean = evaluation_batch(photo_set, NANO_RESOLUTION)
        degraded = torch.stack([
            pil_to_tensor(apply_degradation(image, degradation, seed=seed + i)[0])
            for i, image in enumerate(tensor_to_pils(clean))
        ])
        steps = (num_inference_steps or check_lora_fits(pipe.transformer, lora_dir)["restoration_steps"]
                 or default_num_inference_steps(pipe))

        def restore() -> list:
            return restore_batch(pipe, tensor_to_pils(degraded), DEFAULT_INSTANCE_PROMPT, steps, GUIDANCE_SCALE, seed)

        base = restore()
        pipe.load_lora_weights(str(lora_dir))
        try:
            restored = restore()
        finally:
            pipe.unload_lora_weights()
    per_image = {name: psnr(images, clean, reduction="none")
                 for name, images in (("degraded", degraded), ("base", base), ("lora", restored))}
    results = {f"{name}_psnr": spread(values).mean for name, values in per_image.items()}
    results.update({
        "num_images": len(clean),
        "num_inference_steps": steps,
        "photo_set": photo_set,
        "degradation": " ".join(degradation.to_cli_flags()),
        "lora_minus_base_db": results["lora_psnr"] - results["base_psnr"],
        "lora_minus_degraded_db": results["lora_psnr"] - results["degraded_psnr"],
        "per_image": per_image,
        "spread": {
            **{f"{name}_psnr": spread(values).as_dict() for name, values in per_image.items()},
            "lora_minus_base_db": paired_spread(per_image["lora"], per_image["base"]).as_dict(),
            "lora_minus_degraded_db": paired_spread(per_image["lora"], per_image["degraded"]).as_dict(),
        },
    })
    return results
