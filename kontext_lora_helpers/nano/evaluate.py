"""The figures that describe the shipped nano weights, measured on held-out photos.

Used by `nano train` (to report), by the tests (to assert), and by notebook 02 (to show):

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
from .model import NANO_RESOLUTION, nano_call_kwargs
from .pool import held_out_batch
from .train import EDITS, apply_edit

UNSEEN_INSTRUCTION = "Restore this degraded photograph to high fidelity"


def tensor_to_pils(pixels: torch.Tensor):
    """(B, 3, H, W) in [-1, 1] -> list of PIL RGB images."""
    return [tensor_to_pil(image) for image in pixels]


@torch.no_grad()
def run_pipeline(pipe, pixels: torch.Tensor, prompt: str, steps: int = 20, seed: int = 0) -> torch.Tensor:
    """Edit a batch (B, 3, 64, 64) in [-1, 1] with one prompt; returns the outputs in the same format."""
    generator = torch.Generator().manual_seed(seed)
    batch = pixels.shape[0]
    images = pipe(
        image=tensor_to_pils(pixels), prompt=[prompt] * batch, num_inference_steps=steps,
        generator=generator, output_type="pt", **nano_call_kwargs(*pixels.shape[-2:]),
    ).images
    return images.float() * 2 - 1


def evaluate_nano(pipe, steps: int = 20, seed: int = 0) -> dict:
    """All nano figures on the held-out photos (16 crops at 64x64). PSNRs in dB."""
    from ..degradations import apply_degradation

    clean = held_out_batch(NANO_RESOLUTION)
    _, vae_psnr = latent_ops.round_trip(pipe.vae, clean)
    results = {"vae_round_trip_psnr": vae_psnr}
    output = run_pipeline(pipe, clean, UNSEEN_INSTRUCTION, steps, seed)
    results["identity_psnr_unseen_instruction"] = latent_ops.psnr_db(output, clean)
    for edit, phrasings in EDITS.items():
        edited = run_pipeline(pipe, clean, phrasings[0], steps, seed)
        results[f"{edit}_psnr_vs_edited"] = latent_ops.psnr_db(edited, apply_edit(clean, edit))
        results[f"{edit}_psnr_vs_input"] = latent_ops.psnr_db(edited, clean)
    degraded = torch.stack([
        pil_to_tensor(apply_degradation(image, seed=i, degradation_types=["downsample", "noise", "blur"],
                                         lr_scale=2, noise_level=0.1, blur_radius=0.5)[0])
        for i, image in enumerate(tensor_to_pils(clean))
    ])
    restored_by_base = run_pipeline(pipe, degraded, UNSEEN_INSTRUCTION, steps, seed)
    degraded_round_trip, _ = latent_ops.round_trip(pipe.vae, degraded)
    results["degraded_psnr"] = latent_ops.psnr_db(degraded, clean)
    # The VAE cannot represent pixel noise well, so a round trip alone already smooths some away:
    # that is the most a pure copy through the latent space can "restore".
    results["degraded_vae_round_trip_psnr"] = latent_ops.psnr_db(degraded_round_trip, clean)
    results["base_on_degraded_psnr"] = latent_ops.psnr_db(restored_by_base, clean)
    results["base_on_degraded_vs_its_input_psnr"] = latent_ops.psnr_db(restored_by_base, degraded_round_trip)
    return results
