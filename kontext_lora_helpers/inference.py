"""Running a FLUX.1 Kontext pipeline on photos: the one inference call of the course.

`restore_batch` is what every restoration goes through: validation during training
(`train.validation`), ``nano check-lora`` and nano's own figures (`nano.evaluate`), the ``restore``
command and `restore.restore_image` (whole or tiled), and the notebooks. So every figure the course
reports comes from the same call, scored with the same `metrics.psnr`.

How an image of any size is run: it is resized (Lanczos) to a *working size* that keeps its aspect
ratio, has about the model's native area (64x64 for nano, 1024x1024 for FLUX.1 Kontext) and sides
that are multiples of `latents.pixel_multiple` (4 for nano, 16 for FLUX: VAE factor x 2x2 token
packing). The pipeline runs at exactly that size (`models.call_kwargs`), and the result is resized
back to the input's exact size, so a 250x187 photo comes back 250x187.

Reproducibility: every image gets its own CPU generator seeded with ``seed``. So an image's result
depends only on the image, the settings and the seed, not on the batch it shared or its position
in a folder, and it equals a plain diffusers call
``pipe(image=..., generator=torch.Generator().manual_seed(seed), ...)`` at the working size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .kontext import GUIDANCE_SCALE, default_num_inference_steps
from .prompts import DEFAULT_INSTANCE_PROMPT

__all__ = ["default_num_inference_steps", "float_to_pil", "model_geometry", "restore_batch", "run_at_size",
           "working_size"]

RESAMPLE = Image.Resampling.LANCZOS  # what diffusers' image processor uses for PIL inputs too


# ---------------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------------


def model_geometry(pipe) -> tuple[int, int]:
    """(native side, pixel multiple) of a pipeline: (64, 4) for nano, (1024, 16) for FLUX.1 Kontext."""
    from .latents import pixel_multiple
    from .models import native_resolution

    return native_resolution(pipe), pixel_multiple(pipe.vae)


def working_size(width: int, height: int, native_side: int, multiple: int) -> tuple[int, int]:
    """The (width, height) at which the model runs on a ``width`` x ``height`` image.

    Sides are multiples of ``multiple`` (at least one multiple each), the area is at most
    ``native_side ** 2``, and among the multiples just below and above the ideal sides the pair
    whose aspect ratio is closest to the image's is taken (ties: the larger area). Small images are
    scaled *up* to the native area: the model was trained there, and the pipeline itself would
    otherwise work at its default 1024x1024 area.

    Example: nano (64, 4) turns 250x187 into 72x52; FLUX (1024, 16) turns 4000x3000 into 1168x880.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive; got {width}x{height}")
    area = native_side * native_side
    scale = math.sqrt(area / (width * height))
    aspect = math.log(width / height)

    def fit(side: float) -> int:
        return max(multiple, math.floor(side / multiple) * multiple)

    near_w = {fit(width * scale), fit(width * scale) + multiple}
    near_h = {fit(height * scale), fit(height * scale) + multiple}
    pairs = {(w, h) for w in near_w for h in near_h}
    # The largest partner of each near side keeps very long or tall images inside the area.
    pairs |= {(w, fit(area / w)) for w in near_w} | {(fit(area / h), h) for h in near_h}
    fitting = [(w, h) for w, h in pairs if w * h <= area] or [(multiple, multiple)]
    return min(fitting, key=lambda size: (abs(math.log(size[0] / size[1]) - aspect), -size[0] * size[1]))


# ---------------------------------------------------------------------------------------------
# Running the pipeline
# ---------------------------------------------------------------------------------------------


def _generators(seed: int, count: int) -> list[torch.Generator]:
    """One CPU generator per image, all seeded with ``seed`` (see the module docstring)."""
    return [torch.Generator().manual_seed(int(seed)) for _ in range(count)]


@torch.no_grad()
def run_at_size(pipe, images: Sequence[Image.Image], prompts: Sequence[str] | None, num_inference_steps: int,
                 guidance_scale: float, seed: int, prompt_embeddings=None) -> np.ndarray:
    """One pipeline call on same-size RGB images whose sides already fit the model.

    Returns:
        float32 array (B, H, W, 3) in [0, 1], H and W the images' own size.
    """
    from .models import call_kwargs

    width, height = images[0].size
    if prompt_embeddings is not None:
        text = dict(prompt_embeds=prompt_embeddings.prompt_embeds,
                    pooled_prompt_embeds=prompt_embeddings.pooled_prompt_embeds)
    else:
        text = dict(prompt=list(prompts))
    return pipe(
        image=list(images),
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        generator=_generators(seed, len(images)),
        output_type="np",
        **text,
        **call_kwargs(pipe, height, width),
    ).images


def float_to_pil(pixels: np.ndarray) -> Image.Image:
    """(H, W, 3) float in [0, 1] -> 8-bit RGB, rounded the way diffusers' ``numpy_to_pil`` rounds."""
    return Image.fromarray((np.clip(pixels, 0.0, 1.0) * 255).round().astype(np.uint8))


def _check_same_size(images: Sequence[Image.Image]) -> tuple[int, int]:
    if not images:
        raise ValueError("no images given")
    sizes = {image.size for image in images}
    if len(sizes) != 1:
        raise ValueError(f"restore_batch needs images of one size; got {sorted(sizes)} (use restore_images)")
    return images[0].size


def restore_batch(
    pipe,
    images: Sequence[Image.Image],
    prompt: str | Sequence[str] = DEFAULT_INSTANCE_PROMPT,
    num_inference_steps: int | None = None,
    guidance_scale: float = GUIDANCE_SCALE,
    seed: int = 0,
    *,
    prompt_embeddings=None,
    at_native_area: bool = True,
) -> list[Image.Image]:
    """Restore same-size images whole, in one pipeline call: the one inference call of the course.

    Validation during training, ``nano check-lora``, nano's own figures, the ``restore`` command and
    the notebooks all restore through this function, so their figures are comparable.

    Args:
        pipe: a `FluxKontextPipeline` with whatever LoRAs are active (`load_loras`).
        images: PIL images of one size (any mode; converted to RGB).
        prompt: the instruction (default: the course's instance prompt), or one per image.
        num_inference_steps: denoising steps; None means the pipeline's default (28).
        guidance_scale: FLUX's distilled guidance (`models.GUIDANCE_SCALE`, 3.5).
        seed: seeds each image's own noise generator.
        prompt_embeddings: an `objective.PromptEmbeddings` for the batch, used instead of
            `prompt` (the trainer's cache: its pipeline has no text encoders).
        at_native_area: run at the working size of about the model's native area (`working_size`);
            False runs at the images' own size, whose sides must then be multiples of
            `latents.pixel_multiple` (the trainer validates at its training resolution).

    Returns:
        8-bit RGB PIL images of the input size (resized from the working size with Lanczos).
    """
    width, height = _check_same_size(images)
    native, multiple = model_geometry(pipe)
    if at_native_area:
        run_w, run_h = working_size(width, height, native, multiple)
    elif width % multiple or height % multiple:
        raise ValueError(f"at_native_area=False needs sides that are multiples of {multiple}; got {width}x{height}")
    else:
        run_w, run_h = width, height
    steps = default_num_inference_steps(pipe) if num_inference_steps is None else int(num_inference_steps)
    prompts = [prompt] * len(images) if isinstance(prompt, str) else list(prompt)
    if len(prompts) != len(images):
        raise ValueError(f"{len(prompts)} prompts for {len(images)} images; give one prompt or one per image")
    inputs = [image.convert("RGB") for image in images]
    if (run_w, run_h) != (width, height):
        inputs = [image.resize((run_w, run_h), RESAMPLE) for image in inputs]
    pixels = run_at_size(pipe, inputs, prompts, steps, guidance_scale, seed, prompt_embeddings)
    outputs = [float_to_pil(image) for image in pixels]
    if (run_w, run_h) != (width, height):
        outputs = [image.resize((width, height), RESAMPLE) for image in outputs]
    return outputs
