"""Restore photos with a FLUX.1 Kontext pipeline and zero or more trained LoRAs.

From Python (a notebook)::

    pipe = load_pipeline("nano")
    load_loras(pipe, ["outputs/my_lora"], [1.0])          # the folder `train` wrote, or the .safetensors file
    restored = restore_image(pipe, load_rgb("old.jpg"), num_inference_steps=20, seed=0)

From the command line (``kontext-lora restore`` is the same command)::

    python -m kontext_lora_helpers.restore --lora_weights outputs/my_lora \\
        --input outputs/degraded --output outputs/restored --num_inference_steps 20 --seed 0

How an image of any size is run:

* **Whole image** (default): it is resized (Lanczos) to a *working size* that keeps its aspect
  ratio, has about the model's native area (64x64 for nano, 1024x1024 for FLUX.1 Kontext) and
  sides that are multiples of `latents.pixel_multiple` (8 for nano, 16 for FLUX: VAE factor x 2x2
  token packing). The pipeline runs at exactly that size (`models.call_kwargs`), and the result is
  resized back to the input's exact size, so a 250x187 photo comes back 250x187.
* **Tiled** (``tile=True``, only for images larger than the native area): the image is cut into
  overlapping tiles of the native side at its *own* resolution, so no detail is lost to a
  downscale; the tiles are restored in batches and blended with a raised-cosine weight that falls
  towards each tile's edge, so neighbouring tiles fade into each other instead of meeting at a
  seam.

Reproducibility: every image (and every tile) gets its own CPU generator seeded with ``seed``.
So an image's result depends only on the image, the settings and the seed, not on the batch it
shared or its position in a folder, and it equals a plain diffusers call
``pipe(image=..., generator=torch.Generator().manual_seed(seed), ...)`` at the working size.

LoRAs are loaded with diffusers' ``pipe.load_lora_weights(path, adapter_name=...)`` and mixed with
``pipe.set_adapters(names, adapter_weights=scales)``. Each file is checked against the model first
(module names, shapes, rank), because diffusers does not reject every misfit: a file for another
architecture loads as nothing at all, and a FLUX LoRA whose input sizes are larger than the
model's makes diffusers *widen the model's own layers* (its Flux Control path) before failing,
which leaves the pipeline broken.

For every input ``IN/sub/name.ext`` the command writes ``OUT/sub/name.png`` (PNG: lossless, so
evaluation measures the model and not a JPEG encoder) and ``OUT/sub/name.json`` with every setting
(model, LoRAs and scales, prompt, steps, guidance, seed, sizes, tiling). Existing outputs are never
overwritten unless ``--overwrite`` is given; unusable images in a folder are skipped with a message.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .cli import fail, non_negative_int, positive_int
from .images import SkippedImageWarning, UnusableImageError, find_usable_images, load_rgb, validate_image
from .lora import LORA_WEIGHT_NAME
from .prompts import DEFAULT_INSTANCE_PROMPT

__all__ = [
    "DEFAULT_GUIDANCE_SCALE",
    "LoraLoadError",
    "TileLayout",
    "blend_window",
    "build_parser",
    "check_lora_file",
    "default_num_inference_steps",
    "load_loras",
    "main",
    "plan_tiles",
    "restore_batch",
    "restore_image",
    "restore_images",
    "tile_starts",
    "working_size",
]

DEFAULT_GUIDANCE_SCALE = 3.5
"""FLUX.1 Kontext-dev's distilled guidance value (the pipeline's default and the training default)."""

_RESAMPLE = Image.Resampling.LANCZOS  # what diffusers' image processor uses for PIL inputs too


class LoraLoadError(ValueError):
    """A LoRA file cannot be used with this pipeline; the message names the file and the reason."""


# ---------------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------------


def _model_geometry(pipe) -> tuple[int, int]:
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


def default_num_inference_steps(pipe) -> int:
    """The pipeline's own default number of denoising steps (28 for `FluxKontextPipeline`)."""
    return int(inspect.signature(type(pipe).__call__).parameters["num_inference_steps"].default)


# ---------------------------------------------------------------------------------------------
# LoRAs
# ---------------------------------------------------------------------------------------------


def _lora_file(path: str | os.PathLike) -> Path:
    """The .safetensors file meant by ``path``: the file itself, or a folder's LoRA file."""
    path = Path(path).expanduser()
    if not path.exists():
        raise LoraLoadError(f"LoRA weights {str(path)!r} do not exist (give the folder `train` wrote or its .safetensors file)")
    if path.is_dir():
        standard = path / LORA_WEIGHT_NAME
        if standard.is_file():
            return standard
        found = sorted(path.glob("*.safetensors"))
        if len(found) == 1:
            return found[0]
        what = "no .safetensors file" if not found else f"{len(found)} .safetensors files and no {LORA_WEIGHT_NAME}"
        raise LoraLoadError(f"LoRA folder {str(path)!r} holds {what}; give the file itself")
    if path.suffix.lower() != ".safetensors":
        raise LoraLoadError(f"LoRA weights {str(path)!r} are not a .safetensors file")
    return path


_DIFFUSERS_KEY = re.compile(r"transformer\.(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight")


def _base_linear(module):
    """The plain linear layer inside a module (peft wraps an adapted one as ``base_layer``)."""
    return getattr(module, "base_layer", module)


def check_lora_file(pipe, path: str | os.PathLike) -> dict:
    """Check that a LoRA file fits this pipeline's transformer before anything is loaded.

    Files in diffusers' format (keys ``transformer.<module>.lora_A.weight`` / ``lora_B.weight``,
    as `lora.save_lora` and the training command write) are checked in full: every module must
    exist in the transformer and be a linear layer, ``lora_A`` must be (rank, in_features) and
    ``lora_B`` (out_features, rank) with one rank per module, equal to the rank in the file's
    metadata when it records one. Other layouts (kohya, ComfyUI) are left to diffusers' converters.

    Returns:
        {"file": str, "format": "diffusers" | "other", "layers": int, "ranks": sorted list of int}

    Raises:
        LoraLoadError: missing or unreadable file, a file for another architecture, module names
            the model lacks, shapes or ranks that do not fit; the message names the file.
    """
    from safetensors import safe_open

    file = _lora_file(path)
    try:
        with safe_open(str(file), framework="pt") as handle:
            metadata = handle.metadata() or {}
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as error:  # noqa: BLE001 - safetensors raises several types for a bad header
        raise LoraLoadError(f"{file}: not a readable safetensors file ({type(error).__name__}: {error})") from None
    if not shapes:
        raise LoraLoadError(f"{file}: the file holds no tensors")

    transformer_keys = [key for key in shapes if key.startswith("transformer.")]
    other_layouts = [key for key in shapes if key.startswith(("lora_unet_", "diffusion_model.", "lora_transformer_"))]
    if not transformer_keys and not other_layouts:
        prefixes = sorted({key.split(".")[0] for key in shapes})[:4]
        raise LoraLoadError(
            f"{file}: no weights for a FLUX transformer (keys start with {', '.join(map(repr, prefixes))}); "
            "is it a LoRA for another architecture (Stable Diffusion, SDXL, ...)?"
        )
    if other_layouts or not all(_DIFFUSERS_KEY.fullmatch(key) for key in transformer_keys):
        return {"file": str(file), "format": "other", "layers": None, "ranks": []}

    layers: dict[str, dict[str, tuple]] = {}
    for key in transformer_keys:
        match = _DIFFUSERS_KEY.fullmatch(key)
        layers.setdefault(match["module"], {})[match["part"]] = shapes[key]

    try:
        adapter_config = json.loads(metadata.get("lora_adapter_metadata", "{}"))
    except json.JSONDecodeError:
        adapter_config = {}
    # A per-layer rank_pattern overrides "r", so "r" is only a rule when there is none.
    metadata_rank = None if not isinstance(adapter_config, dict) or adapter_config.get("rank_pattern") else adapter_config.get("r")

    transformer = pipe.transformer
    missing, misfits, ranks = [], [], set()
    for name, parts in sorted(layers.items()):
        if set(parts) != {"A", "B"}:
            misfits.append(f"{name}: only lora_{''.join(parts)} is present")
            continue
        try:
            linear = _base_linear(transformer.get_submodule(name))
        except AttributeError:
            missing.append(name)
            continue
        if not isinstance(linear, torch.nn.Linear):
            misfits.append(f"{name} is a {type(linear).__name__}, not a linear layer")
            continue
        shape_a, shape_b = parts["A"], parts["B"]
        if len(shape_a) != 2 or len(shape_b) != 2 or shape_a[0] != shape_b[1]:
            misfits.append(f"{name}: rank mismatch inside the file, lora_A {shape_a} vs lora_B {shape_b}")
            continue
        if metadata_rank is not None and shape_a[0] != metadata_rank:
            misfits.append(f"{name}: rank {shape_a[0]} but the file's metadata says rank {metadata_rank}")
            continue
        if shape_a[1] != linear.in_features or shape_b[0] != linear.out_features:
            misfits.append(
                f"{name}: the file adapts a {shape_a[1]} -> {shape_b[0]} layer, this model's is "
                f"{linear.in_features} -> {linear.out_features}"
            )
            continue
        ranks.add(shape_a[0])
    if missing:
        raise LoraLoadError(
            f"{file}: {len(missing)} of its {len(layers)} layers do not exist in this model's transformer "
            f"(e.g. {missing[0]!r}); it was trained for another model (FLUX.1-Kontext-dev and nano differ)"
        )
    if misfits:
        raise LoraLoadError(
            f"{file}: does not fit this model's transformer ({len(misfits)} layer(s)), e.g. {misfits[0]}; "
            "it was trained for another model or its file is damaged"
        )
    return {"file": str(file), "format": "diffusers", "layers": len(layers), "ranks": sorted(ranks)}


def _present_adapters(pipe) -> set[str]:
    return {name for names in pipe.get_list_adapters().values() for name in names}


def load_loras(pipe, lora_weights: Sequence[str | os.PathLike], lora_scales: Sequence[float] | None = None) -> list[dict]:
    """Load LoRAs into ``pipe`` (each as its own adapter) and activate them with their scales.

    Args:
        pipe: a `FluxKontextPipeline` (nano or FLUX.1 Kontext).
        lora_weights: folders written by training (holding ``pytorch_lora_weights.safetensors``)
            or .safetensors files; may be empty (then the base model runs, adapters off).
        lora_scales: one multiplier per LoRA (default 1.0 each): 0 turns a LoRA off, 1 applies it
            as trained; the updates of several LoRAs add up.

    Returns:
        One dict per LoRA: {"path", "file", "adapter_name", "scale", "format", "layers", "ranks"}.

    Raises:
        LoraLoadError: see `check_lora_file`, plus diffusers' own refusal re-raised with the file
            name, or a file that adapted no layer. Every file is checked before any is loaded, and
            a failure while loading removes the adapters this call added.
        ValueError: the number of scales differs from the number of LoRAs.
    """
    from .models import _quiet_diffusers

    lora_weights = list(lora_weights)
    scales = [1.0] * len(lora_weights) if lora_scales is None else [float(s) for s in lora_scales]
    if len(scales) != len(lora_weights):
        raise ValueError(f"{len(scales)} LoRA scale(s) for {len(lora_weights)} LoRA(s); give one scale per LoRA")
    if not lora_weights:
        if _present_adapters(pipe):
            pipe.disable_lora()
        return []

    checks = [check_lora_file(pipe, path) for path in lora_weights]  # all files are checked before any loads
    loaded: list[dict] = []

    def refuse(message: str, cause: Exception | None = None):
        # Take out what this call added, so a failure leaves the pipeline's adapters as they were.
        added = [entry["adapter_name"] for entry in loaded] + [adapter_name]
        present = _present_adapters(pipe)
        for name in added:
            if name in present:
                pipe.delete_adapters(name)
        raise LoraLoadError(message) from cause

    for index, (path, check, scale) in enumerate(zip(lora_weights, checks, scales)):
        present = _present_adapters(pipe)
        adapter_name = next(f"lora_{k}" for k in itertools.count(index) if f"lora_{k}" not in present)
        file = Path(check["file"])
        try:
            with _quiet_diffusers():
                pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name=adapter_name)
        except (RuntimeError, ValueError, KeyError, OSError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            refuse(f"{file}: diffusers could not load it into this model ({first_line})", error)
        if adapter_name not in _present_adapters(pipe):
            refuse(f"{file}: no layer of this model was adapted (diffusers found no weights it knows); "
                   "is it a LoRA for another architecture?")
        loaded.append({"path": str(path), "adapter_name": adapter_name, "scale": scale, **check})
    pipe.enable_lora()  # an earlier call without LoRAs may have disabled the adapters
    pipe.set_adapters([entry["adapter_name"] for entry in loaded], adapter_weights=[entry["scale"] for entry in loaded])
    return loaded


# ---------------------------------------------------------------------------------------------
# Running the pipeline
# ---------------------------------------------------------------------------------------------


def _generators(seed: int, count: int) -> list[torch.Generator]:
    """One CPU generator per image, all seeded with ``seed`` (see the module docstring)."""
    return [torch.Generator().manual_seed(int(seed)) for _ in range(count)]


@torch.no_grad()
def _run_at_size(pipe, images: Sequence[Image.Image], prompt: str, num_inference_steps: int,
                 guidance_scale: float, seed: int) -> np.ndarray:
    """One pipeline call on same-size RGB images whose sides already fit the model.

    Returns:
        float32 array (B, H, W, 3) in [0, 1], H and W the images' own size.
    """
    from .models import call_kwargs

    width, height = images[0].size
    return pipe(
        image=list(images),
        prompt=[prompt] * len(images),
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        generator=_generators(seed, len(images)),
        output_type="np",
        **call_kwargs(pipe, height, width),
    ).images


def _to_pil(pixels: np.ndarray) -> Image.Image:
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
    prompt: str = DEFAULT_INSTANCE_PROMPT,
    num_inference_steps: int | None = None,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    seed: int = 0,
) -> list[Image.Image]:
    """Restore same-size images whole, in one pipeline call.

    Args:
        pipe: a `FluxKontextPipeline` with whatever LoRAs are active (`load_loras`).
        images: PIL images of one size (any mode; converted to RGB).
        prompt: the instruction (default: the course's instance prompt).
        num_inference_steps: denoising steps; None means the pipeline's default (28).
        guidance_scale: FLUX's distilled guidance (3.5).
        seed: seeds each image's own noise generator.

    Returns:
        8-bit RGB PIL images of the input size (resized from the working size with Lanczos).
    """
    width, height = _check_same_size(images)
    native, multiple = _model_geometry(pipe)
    run_w, run_h = working_size(width, height, native, multiple)
    steps = default_num_inference_steps(pipe) if num_inference_steps is None else int(num_inference_steps)
    inputs = [image.convert("RGB") for image in images]
    if (run_w, run_h) != (width, height):
        inputs = [image.resize((run_w, run_h), _RESAMPLE) for image in inputs]
    outputs = [_to_pil(pixels) for pixels in _run_at_size(pipe, inputs, prompt, steps, guidance_scale, seed)]
    if (run_w, run_h) != (width, height):
        outputs = [image.resize((width, height), _RESAMPLE) for image in outputs]
    return outputs


# ---------------------------------------------------------------------------------------------
# Tiling
# ---------------------------------------------------------------------------------------------


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``0..length`` with at least ``overlap`` shared.

    The first tile starts at 0, the last ends at ``length``, and the ones between are spread
    evenly, so every overlap is at least ``overlap`` (larger when the length does not divide).
    """
    if tile > length:
        raise ValueError(f"tile {tile} is longer than the image side {length}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile); got {overlap} for tile {tile}")
    if tile == length:
        return [0]
    count = math.ceil((length - tile) / (tile - overlap)) + 1
    return [int(round(start)) for start in np.linspace(0, length - tile, count)]


def blend_window(height: int, width: int, ramp: int) -> np.ndarray:
    """(height, width) float64 tile weights: 1 inside, a raised-cosine ramp over ``ramp`` pixels
    at every edge, never 0 (so the sum over tiles never vanishes, even at the image border).

    Along one side, pixel ``d`` steps from the edge (d < ramp) weighs
    ``0.5 - 0.5 cos(pi (d + 0.5) / ramp)``: the weights of two tiles overlapping by ``ramp`` sum
    to a smooth curve, so a tile's content fades out as its neighbour's fades in.
    """

    def line(length: int) -> np.ndarray:
        distance = np.minimum(np.arange(length), np.arange(length)[::-1]).astype(np.float64)
        if ramp <= 0:
            return np.ones(length)
        return np.where(distance < ramp, 0.5 - 0.5 * np.cos(np.pi * (distance + 0.5) / ramp), 1.0)

    return np.outer(line(height), line(width))


@dataclass(frozen=True)
class TileLayout:
    """Where the tiles of one image go: tile size (width, height), start offsets and blend ramp."""

    tile_width: int
    tile_height: int
    xs: tuple[int, ...]
    ys: tuple[int, ...]
    overlap: int

    @property
    def count(self) -> int:
        return len(self.xs) * len(self.ys)

    def boxes(self) -> list[tuple[int, int, int, int]]:
        """PIL crop boxes (left, top, right, bottom), row by row."""
        return [(x, y, x + self.tile_width, y + self.tile_height) for y in self.ys for x in self.xs]

    def to_dict(self) -> dict:
        return {"tile_size": [self.tile_width, self.tile_height], "overlap": self.overlap,
                "grid": [len(self.xs), len(self.ys)], "x_starts": list(self.xs), "y_starts": list(self.ys)}


def plan_tiles(width: int, height: int, native_side: int, multiple: int, overlap: int | None = None) -> TileLayout | None:
    """The tile layout for a ``width`` x ``height`` image, or None when it should run whole.

    Tiles are ``native_side`` square (a side shorter than that gets tiles of its own length rounded
    down to ``multiple``). Images no larger than the native area, or with a side shorter than one
    multiple, run whole.

    Args:
        overlap: pixels shared by neighbouring tiles (also the blend ramp); None means a quarter tile.
    """
    if width * height <= native_side * native_side or min(width, height) < multiple:
        return None
    tile_w = min(native_side, width // multiple * multiple)
    tile_h = min(native_side, height // multiple * multiple)
    ramp = max(1, min(tile_w, tile_h) // 4) if overlap is None else int(overlap)
    if not 0 <= ramp < min(tile_w, tile_h):
        raise ValueError(f"tile overlap must be in [0, {min(tile_w, tile_h)}); got {ramp}")
    return TileLayout(tile_w, tile_h, tuple(tile_starts(width, tile_w, ramp)), tuple(tile_starts(height, tile_h, ramp)), ramp)


def blend_tiles(layout: TileLayout, tiles: Sequence[np.ndarray], width: int, height: int) -> np.ndarray:
    """Weighted average of restored tiles, (height, width, 3) float64 in the tiles' range.

    Args:
        tiles: one (tile_height, tile_width, 3) array per box of ``layout.boxes()``, same order.
    """
    window = blend_window(layout.tile_height, layout.tile_width, layout.overlap)[..., None]
    total = np.zeros((height, width, 3))
    weight = np.zeros((height, width, 1))
    for (left, top, right, bottom), tile in zip(layout.boxes(), tiles, strict=True):
        total[top:bottom, left:right] += window * tile
        weight[top:bottom, left:right] += window
    return total / weight


def _restore_tiled(image: Image.Image, layout: TileLayout, run_tiles: Callable[[list[Image.Image]], np.ndarray],
                   batch_size: int) -> Image.Image:
    """Cut, restore in batches with ``run_tiles`` (list of PIL tiles -> (B, h, w, 3) in [0, 1]), blend."""
    crops = [image.crop(box) for box in layout.boxes()]
    restored: list[np.ndarray] = []
    for start in range(0, len(crops), batch_size):
        restored.extend(run_tiles(crops[start:start + batch_size]))
    return _to_pil(blend_tiles(layout, restored, *image.size))


def restore_image(
    pipe,
    image: Image.Image,
    prompt: str = DEFAULT_INSTANCE_PROMPT,
    num_inference_steps: int | None = None,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    seed: int = 0,
    tile: bool = False,
    tile_overlap: int | None = None,
    batch_size: int = 4,
) -> Image.Image:
    """Restore one image of any size; returns an 8-bit RGB PIL image of exactly its size.

    Args:
        pipe, prompt, num_inference_steps, guidance_scale, seed: as for `restore_batch`.
        tile: images larger than the native area are restored tile by tile at their own
            resolution (see the module docstring); smaller ones run whole either way.
        tile_overlap: pixels shared by neighbouring tiles; None means a quarter of a tile.
        batch_size: tiles per pipeline call.
    """
    image = image.convert("RGB")
    native, multiple = _model_geometry(pipe)
    layout = plan_tiles(*image.size, native, multiple, tile_overlap) if tile else None
    if layout is None:
        return restore_batch(pipe, [image], prompt, num_inference_steps, guidance_scale, seed)[0]
    steps = default_num_inference_steps(pipe) if num_inference_steps is None else int(num_inference_steps)
    return _restore_tiled(
        image, layout, lambda tiles: _run_at_size(pipe, tiles, prompt, steps, guidance_scale, seed), max(1, batch_size)
    )


def restore_images(
    pipe,
    images: Sequence[Image.Image],
    prompt: str = DEFAULT_INSTANCE_PROMPT,
    num_inference_steps: int | None = None,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    seed: int = 0,
    tile: bool = False,
    tile_overlap: int | None = None,
    batch_size: int = 4,
) -> list[Image.Image]:
    """Restore many images of any sizes; images of one size share pipeline calls (``batch_size``
    at a time), tiled images batch their tiles. Returns RGB images in the input order, each of its
    input's size; each equals `restore_image` on it alone (the noise is per image)."""
    results: list[Image.Image | None] = [None] * len(images)
    whole: dict[tuple[int, int], list[int]] = {}
    native, multiple = _model_geometry(pipe)
    for index, image in enumerate(images):
        if tile and plan_tiles(*image.size, native, multiple, tile_overlap) is not None:
            results[index] = restore_image(pipe, image, prompt, num_inference_steps, guidance_scale, seed,
                                           tile=True, tile_overlap=tile_overlap, batch_size=batch_size)
        else:
            whole.setdefault(image.size, []).append(index)
    for indices in whole.values():
        for start in range(0, len(indices), max(1, batch_size)):
            chunk = indices[start:start + max(1, batch_size)]
            outputs = restore_batch(pipe, [images[i] for i in chunk], prompt, num_inference_steps, guidance_scale, seed)
            for i, output in zip(chunk, outputs):
                results[i] = output
    return results


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m kontext_lora_helpers.restore``."""
    parser = argparse.ArgumentParser(
        usage="%(prog)s --input FILE_OR_DIR --output DIR [--lora_weights PATH [PATH ...]] [options]",
        description="Restore an image or a folder of images with FLUX.1 Kontext and trained LoRAs; "
                    "write PNGs and a JSON record of the settings per image.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--pretrained_model_name_or_path", default="nano",
                        help="'nano', a local diffusers folder, or a hub id such as black-forest-labs/FLUX.1-Kontext-dev")
    parser.add_argument("--lora_weights", nargs="*", default=[], metavar="PATH",
                        help="LoRA folders (as training writes them) or .safetensors files; none runs the base model")
    parser.add_argument("--lora_scale", nargs="*", type=float, default=None, metavar="SCALE",
                        help="one scale per LoRA; None means 1.0 each")
    parser.add_argument("--input", required=True, help="an image file or a folder (searched recursively)")
    parser.add_argument("--output", required=True, help="folder for the restored PNGs and their JSON records")
    parser.add_argument("--prompt", default=DEFAULT_INSTANCE_PROMPT, help="the restoration instruction")
    parser.add_argument("--num_inference_steps", type=positive_int, default=None,
                        help="denoising steps; None means the pipeline's own default (28)")
    parser.add_argument("--guidance_scale", type=float, default=DEFAULT_GUIDANCE_SCALE)
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of every image's noise")
    parser.add_argument("--tile", action="store_true",
                        help="restore images larger than the model's native area tile by tile at full resolution")
    parser.add_argument("--tile_overlap", type=non_negative_int, default=None,
                        help="pixels shared by neighbouring tiles; None means a quarter tile")
    parser.add_argument("--batch_size", type=positive_int, default=1,
                        help="images (or tiles) per pipeline call")
    parser.add_argument("--device", default=None, help="cuda, cpu, cuda:1, ...; None means CUDA when available")
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                        help="None means bf16 on Ampere or newer GPUs, fp16 on older ones, fp32 on CPU")
    parser.add_argument("--quantize", default=None, choices=["nf4", "int8"], help="quantize the base transformer (nf4 needs CUDA and bitsandbytes)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return parser


def _save_atomically(write: Callable[[Path], None], path: Path) -> None:
    """Write through a temporary file and rename, so an interrupted run leaves no half-written file."""
    temporary = path.with_name(path.name + ".partial")
    write(temporary)
    os.replace(temporary, path)


def _collect_sources(source_root: Path, output_root: Path) -> list[tuple[Path, str]]:
    """(file, relative path) of every usable input; unusable folder entries are reported and skipped."""
    if source_root.is_file():
        validate_image(source_root)  # a single unusable file is an error, raised to the caller
        return [(source_root, source_root.name)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SkippedImageWarning)
        # The output folder is left out in case it lives inside the input folder.
        infos = find_usable_images(source_root, [output_root])
    for warning in caught:
        if issubclass(warning.category, SkippedImageWarning):
            print(str(warning.message), file=sys.stderr)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return [(info.path, info.path.relative_to(source_root).as_posix()) for info in infos]


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (0 success, 1 error; 2 for bad flags via argparse)."""
    from tqdm.auto import tqdm

    from .models import ModelLoadError, choose_device_and_dtype, load_pipeline

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.lora_scale is not None and len(args.lora_scale) != len(args.lora_weights):
        parser.error(f"--lora_scale needs one value per LoRA: {len(args.lora_weights)} LoRA(s), "
                     f"{len(args.lora_scale)} scale(s)")
    source_root = Path(args.input).expanduser()
    output_root = Path(args.output).expanduser()
    if output_root.exists() and not output_root.is_dir():
        return fail(f"--output {str(output_root)!r} is an existing file; give a folder")
    if not source_root.exists():
        return fail(f"--input {str(source_root)!r} does not exist")
    for path in args.lora_weights:
        if not Path(path).expanduser().exists():
            return fail(f"--lora_weights {path!r} does not exist")

    try:
        sources = _collect_sources(source_root, output_root)
    except UnusableImageError as error:
        return fail(f"cannot use --input: {error}")
    except ValueError as error:  # a folder with nothing usable
        return fail(str(error))

    jobs, claimed = [], {}
    for source, relative in sources:
        image_path = output_root / Path(relative).with_suffix(".png")
        if image_path in claimed:
            return fail(f"{claimed[image_path]} and {relative} would both be written to {image_path}; rename one")
        claimed[image_path] = relative
        jobs.append((source, relative, image_path, image_path.with_suffix(".json")))
    if not args.overwrite:
        existing = [str(path) for *_, image, record in jobs for path in (image, record) if path.exists()]
        if existing:
            shown = ", ".join(existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
            return fail(f"{len(existing)} output file(s) already exist ({shown}); pass --overwrite to replace them")

    try:
        choice = choose_device_and_dtype(args.device, args.dtype)
        pipe = load_pipeline(args.pretrained_model_name_or_path, device=choice.device, dtype=choice.dtype,
                             quantize=args.quantize)
        loras = load_loras(pipe, args.lora_weights, args.lora_scale)
    except (ModelLoadError, LoraLoadError, ValueError) as error:
        return fail(str(error))

    native, multiple = _model_geometry(pipe)
    steps = default_num_inference_steps(pipe) if args.num_inference_steps is None else args.num_inference_steps
    settings = {
        "model": args.pretrained_model_name_or_path,
        "loras": [{"path": entry["path"], "file": entry["file"], "scale": entry["scale"], "ranks": entry["ranks"]}
                  for entry in loras],
        "prompt": args.prompt,
        "num_inference_steps": steps,
        "guidance_scale": args.guidance_scale,
        "seed": args.seed,
        "native_resolution": native,
        "device": str(choice.device),
        "dtype": str(choice.dtype).replace("torch.", ""),
        "quantize": args.quantize,
        "batch_size": args.batch_size,
    }

    # Images of one size (and not tiled) share pipeline calls; results do not depend on the
    # grouping because every image has its own generator.
    pending: list[tuple] = []

    def finish(job, image, restored, layout) -> None:
        source, relative, image_path, record_path = job
        image_path.parent.mkdir(parents=True, exist_ok=True)
        _save_atomically(lambda temporary: restored.save(temporary, format="PNG"), image_path)
        record = {
            "source": str(source),
            "output": image_path.name,
            "input_size": list(image.size),
            "output_size": list(restored.size),
            "working_size": None if layout else list(working_size(*image.size, native, multiple)),
            "tiling": {"enabled": bool(args.tile), "used": layout is not None,
                       **(layout.to_dict() if layout else {})},
            **settings,
        }
        _save_atomically(lambda temporary: temporary.write_text(json.dumps(record, indent=2) + "\n"), record_path)

    def flush() -> None:
        if pending:
            outputs = restore_batch(pipe, [image for _, image in pending], args.prompt, steps, args.guidance_scale, args.seed)
            for (job, image), restored in zip(pending, outputs):
                finish(job, image, restored, None)
            pending.clear()

    written, skipped = 0, 0
    progress = tqdm(jobs, desc="restoring", unit="image", disable=len(jobs) < 2)
    for job in progress:
        try:
            image = load_rgb(job[0])
        except UnusableImageError as error:  # changed on disk since it was checked
            if source_root.is_file():
                return fail(f"cannot use --input: {error}")
            print(f"skipping {job[0]}: {error.reason}", file=sys.stderr)
            skipped += 1
            continue
        try:
            layout = plan_tiles(*image.size, native, multiple, args.tile_overlap) if args.tile else None
        except ValueError as error:  # an overlap as long as the tile
            return fail(f"{job[0]}: {error}")
        if layout is not None:
            restored = restore_image(pipe, image, args.prompt, steps, args.guidance_scale, args.seed, tile=True,
                                     tile_overlap=args.tile_overlap, batch_size=args.batch_size)
            finish(job, image, restored, layout)
        else:
            if pending and pending[0][1].size != image.size:
                flush()
            pending.append((job, image))
            if len(pending) >= args.batch_size:
                flush()
        written += 1
    flush()
    print(f"wrote {written} restored image(s) and their JSON records to {output_root}"
          + (f" ({skipped} skipped)" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.argv[0] = "python -m kontext_lora_helpers.restore"  # instead of "restore.py" in usage lines
    raise SystemExit(main())
