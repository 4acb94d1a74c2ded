"""Validation during training: held-out photos, degraded once, restored with the LoRA as it is
(and once with the base model), scored against the clean photos and saved as comparison grids.

``metrics.json`` (`Validator.report`) holds the final numbers for the LoRA, the base model and the
degraded inputs, all on the same images, measured with `metrics.score_images` (per-image PSNR and
SSIM, then the mean), as every figure of the course is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .. import metrics
from ..inference import restore_batch

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = ["VALIDATION_SEED", "ValidationSet", "Validator", "build_validation_set", "comparison_grid",
           "restore_validation_images"]

VALIDATION_SEED = 2024
"""Seeds the validation degradations and the validation denoising noise, whatever ``--seed`` is,
so runs with different seeds are compared on the same degraded images."""


@dataclass
class ValidationSet:
    """Held-out pairs, degraded once: PIL images of side `resolution`, their prompts and names."""

    degraded: list
    clean: list
    prompts: list[str]
    names: list[str]


def build_validation_set(config: TrainConfig, validation_dir: Path) -> ValidationSet:
    """Centre crops of the first `num_validation_images` held-out photos, degraded with the
    training flags by a fixed seed (`VALIDATION_SEED`), the same in every run."""
    from ..data import DegDataset, tensor_to_pil

    dataset = DegDataset(
        validation_dir, config.instance_prompt, config=config.degradation, resolution=config.resolution,
        seed=VALIDATION_SEED, prompt_mode=config.prompt_mode, random_flip=False, center_crop=True,
    )
    count = min(config.num_validation_images, len(dataset.images))
    items = [dataset[i] for i in range(count)]
    return ValidationSet(
        degraded=[tensor_to_pil(item["control"]) for item in items],
        clean=[tensor_to_pil(item["target"]) for item in items],
        prompts=[item["prompts"] for item in items],
        names=[Path(item["path"]).name for item in items],
    )


def _psnr_text(scores: dict) -> str:
    """"mean ± std" of `metrics.score_images` scores; the mean alone where an image scored inf (identical)."""
    try:
        return str(metrics.spread(scores["psnr_per_image"]))
    except ValueError:
        return f"{scores['psnr']:.2f}"


@torch.no_grad()
def restore_validation_images(pipe, validation: ValidationSet, cache, config: TrainConfig, batch_size: int) -> list:
    """Restore the degraded images with whatever adapter state the transformer has, through
    `inference.restore_batch` (the one inference call of the course).

    Uses the cached prompt embeddings (the trainer's pipeline has no text encoders), the training
    resolution, ``config.validation_inference_steps`` steps and the configured guidance; every
    image's noise is seeded by `VALIDATION_SEED`, so every validation starts from the same noise.
    Returns PIL images.
    """
    restored = []
    for start in range(0, len(validation.degraded), batch_size):
        prompts = validation.prompts[start:start + batch_size]
        text = cache.batch(prompts, device=pipe.vae.device, dtype=pipe.transformer.dtype)
        restored += restore_batch(
            pipe, validation.degraded[start:start + batch_size], prompts, config.validation_inference_steps,
            config.guidance_scale, VALIDATION_SEED, prompt_embeddings=text, at_native_area=False,
        )
    return restored


def comparison_grid(columns: dict[str, list], scale: int = 1):
    """A PIL grid: one row per image, one labelled column per entry of `columns` (equal-sized images).

    Args:
        columns: {"degraded": [...], "base": [...], "LoRA": [...], "clean": [...]} of PIL images.
        scale: nearest-neighbour enlargement (small nano images are easier to judge at 2-4x).
    """
    from PIL import Image, ImageDraw

    names = list(columns)
    rows = len(columns[names[0]])
    width, height = columns[names[0]][0].size
    width, height = width * scale, height * scale
    header, gap = 14, 2
    grid = Image.new("RGB", (len(names) * (width + gap) - gap, header + rows * (height + gap) - gap), "white")
    draw = ImageDraw.Draw(grid)
    for column, name in enumerate(names):
        x = column * (width + gap)
        draw.text((x + 2, 1), name, fill="black")
        for row, image in enumerate(columns[name]):
            tile = image.convert("RGB").resize((width, height), Image.Resampling.NEAREST)
            grid.paste(tile, (x, header + row * (height + gap)))
    return grid


class Validator:
    """Restores the validation set, scores it against the clean photos and saves comparison grids.

    The base model (adapters disabled) is run once, at the first validation, and its images fill the
    "base" column of every grid. Runs on the main process only.
    """

    def __init__(self, pipe, validation: ValidationSet, cache, config: TrainConfig, say=print):
        self.pipe = pipe
        self.validation = validation
        self.cache = cache
        self.config = config
        self.say = say
        self.folder = Path(config.output_dir) / "validation"
        self.base_images: list | None = None
        self.base_scores: dict | None = None
        self.degraded_scores = metrics.score_images(validation.degraded, validation.clean)
        self.last: dict | None = None

    def _restore(self) -> list:
        return restore_validation_images(self.pipe, self.validation, self.cache, self.config,
                                         self.config.train_batch_size)

    def run(self, step: int) -> dict:
        """Validate the LoRA as it is at `step`; returns {"step", "psnr", "ssim", "grid_path", "images", "scores"}."""
        transformer = self.pipe.transformer
        was_training = transformer.training
        transformer.eval()
        try:
            if self.base_images is None:
                transformer.disable_adapters()
                try:
                    self.base_images = self._restore()
                finally:
                    transformer.enable_adapters()
                self.base_scores = metrics.score_images(self.base_images, self.validation.clean)
            # Before the first step B = 0 and the LoRA changes nothing: its images are the base's.
            restored = self.base_images if step == 0 else self._restore()
        finally:
            transformer.train(was_training)
        scores = metrics.score_images(restored, self.validation.clean)
        self.folder.mkdir(parents=True, exist_ok=True)
        grid_path = self.folder / f"step-{step:06d}.png"
        comparison_grid({"degraded": self.validation.degraded, "base": self.base_images, "LoRA": restored,
                         "clean": self.validation.clean}).save(grid_path)
        self.say(f"validation at step {step}: LoRA PSNR {_psnr_text(scores)} dB, SSIM {scores['ssim']:.4f} "
                 f"(base {_psnr_text(self.base_scores)} dB / {self.base_scores['ssim']:.4f}; mean ± std over "
                 f"{len(scores['psnr_per_image'])} validation photos) -> {grid_path}")
        self.last = {"step": step, "psnr": scores["psnr"], "ssim": scores["ssim"], "grid_path": str(grid_path),
                     "images": restored, "scores": scores}
        return self.last

    def report(self, history: list[dict]) -> dict:
        """metrics.json: the last validation's LoRA numbers, the base model's and the degraded
        inputs', all on the same images with the same settings."""
        final = self.last["scores"]
        return {
            "step": self.last["step"],
            "num_images": len(self.validation.clean),
            "images": self.validation.names,
            "resolution": self.config.resolution,
            "num_inference_steps": self.config.validation_inference_steps,
            "guidance_scale": self.config.guidance_scale,
            "prompt_mode": self.config.prompt_mode,
            "lora": final,
            "base": self.base_scores,
            "degraded": self.degraded_scores,
            "lora_gain_over_base_db": final["psnr"] - self.base_scores["psnr"],
            "lora_gain_over_degraded_db": final["psnr"] - self.degraded_scores["psnr"],
            "grid": self.last["grid_path"],
            "history": history,
        }
