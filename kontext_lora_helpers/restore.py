"""Restore photos with a FLUX.1 Kontext pipeline and zero or more trained LoRAs.

From Python (a notebook)::

    pipe = load_pipeline("nano")
    load_loras(pipe, ["outputs/my_lora"], [1.0])          # the folder `train` wrote, or the .safetensors file
    restored = restore_image(pipe, load_rgb("old.jpg"), num_inference_steps=20, seed=0)

From the command line (``kontext-lora restore`` is the same command)::

    python -m kontext_lora_helpers.restore --lora_weights outputs/my_lora \\
        --input outputs/degraded --output outputs/restored --num_inference_steps 20 --seed 0

How an image of any size is run:

* **Whole image** (default): through `inference.restore_batch` at a working size of about the
  model's native area (see `inference`), then resized back to the input's exact size.
* **Tiled** (``tile=True``, only for images larger than the native area): the image is cut into
  overlapping tiles of the native side at its *own* resolution, so no detail is lost to a
  downscale; the tiles are restored in batches and blended with a raised-cosine weight that falls
  towards each tile's edge, so neighbouring tiles fade into each other instead of meeting at a
  seam.

Every image (and every tile) gets its own CPU generator seeded with ``seed`` (see `inference`).

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
import itertools
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .cli import fail, non_negative_int, positive_int
from .fileio import (
    DiskFullError,
    disk_full_message,
    is_disk_full,
    output_is_input_folder,
    overwrites_its_input,
    write_atomically,
    write_json_atomically,
)
from .images import SkippedImageWarning, UnusableImageError, find_usable_images, load_rgb, validate_image
from .inference import (
    default_num_inference_steps,
    float_to_pil,
    model_geometry,
    restore_batch,
    run_at_size,
    working_size,
)
from .lora import LoraFileError, check_lora_fits
from .models import COMPILE_BACKENDS, GUIDANCE_SCALE, QUANTIZE_CHOICES
from .prompts import DEFAULT_INSTANCE_PROMPT

__all__ = [
    "TileLayout",
    "blend_window",
    "build_parser",
    "default_num_inference_steps",
    "load_loras",
    "main",
    "plan_tiles",
    "restore_batch",
    "restore_image",
    "restore_images",
    "restoration_steps",
    "tile_starts",
    "working_size",
]


# ---------------------------------------------------------------------------------------------
# LoRAs
# ---------------------------------------------------------------------------------------------


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
        LoraFileError: see `lora.check_lora_fits`, plus diffusers' own refusal re-raised with the file
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

    checks = [check_lora_fits(pipe.transformer, path) for path in lora_weights]  # all files are checked before any loads
    loaded: list[dict] = []

    def refuse(message: str, cause: Exception | None = None):
        # Take out what this call added, so a failure leaves the pipeline's adapters as they were.
        added = [entry["adapter_name"] for entry in loaded] + [adapter_name]
        present = _present_adapters(pipe)
        for name in added:
            if name in present:
                pipe.delete_adapters(name)
        raise LoraFileError(message) from cause

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


def restoration_steps(pipe, loras: Sequence[dict | str | os.PathLike] = ()) -> int:
    """The denoising steps to restore with: the most that any of `loras` records at a non-zero
    scale, else the pipeline's own default (28).

    Args:
        loras: what `load_loras` returned, or LoRA files / folders (read with `check_lora_fits`,
            nothing loaded), or a mix.

    A LoRA trained here records its objective's measured count (`train.RESTORATION_STEPS`): 6 for
    nano's ``posterior_mean`` recipe, whose restorations at 4 steps score within 0.1 dB of 28 on the
    validation crops (`tests/benchmarks/bench_steps.py`), and 28 for flow matching.
    """
    records = [entry if isinstance(entry, dict) else check_lora_fits(pipe.transformer, entry) for entry in loras]
    recorded = [entry["restoration_steps"] for entry in records
                if entry.get("restoration_steps") and entry.get("scale", 1.0) != 0]
    return max(recorded) if recorded else default_num_inference_steps(pipe)


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
    if native_side % multiple:
        raise ValueError(f"tile side {native_side} must be a multiple of {multiple} (the model's pixel multiple)")
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
    return float_to_pil(blend_tiles(layout, restored, *image.size))


def restore_image(
    pipe,
    image: Image.Image,
    prompt: str = DEFAULT_INSTANCE_PROMPT,
    num_inference_steps: int | None = None,
    guidance_scale: float = GUIDANCE_SCALE,
    seed: int = 0,
    tile: bool = False,
    tile_overlap: int | None = None,
    batch_size: int = 4,
    tile_size: int | None = None,
) -> Image.Image:
    """Restore one image of any size; returns an 8-bit RGB PIL image of exactly its size.

    Args:
        pipe, prompt, num_inference_steps, guidance_scale, seed: as for `restore_batch`.
        tile: images larger than one tile (the native area unless `tile_size` is given) are
            restored tile by tile at their own resolution (see the module docstring); smaller
            ones run whole either way.
        tile_overlap: pixels shared by neighbouring tiles; None means a quarter of a tile.
        batch_size: tiles per pipeline call.
        tile_size: the tiles' side; None means the model's native side (1024 for FLUX.1 Kontext).
            Smaller tiles need less memory per call and see less context.
    """
    image = image.convert("RGB")
    native, multiple = model_geometry(pipe)
    layout = plan_tiles(*image.size, tile_size or native, multiple, tile_overlap) if tile else None
    if layout is None:
        return restore_batch(pipe, [image], prompt, num_inference_steps, guidance_scale, seed)[0]
    steps = default_num_inference_steps(pipe) if num_inference_steps is None else int(num_inference_steps)
    return _restore_tiled(
        image, layout, lambda tiles: run_at_size(pipe, tiles, [prompt] * len(tiles), steps, guidance_scale, seed),
        max(1, batch_size),
    )


def restore_images(
    pipe,
    images: Sequence[Image.Image],
    prompt: str = DEFAULT_INSTANCE_PROMPT,
    num_inference_steps: int | None = None,
    guidance_scale: float = GUIDANCE_SCALE,
    seed: int = 0,
    tile: bool = False,
    tile_overlap: int | None = None,
    batch_size: int = 4,
    tile_size: int | None = None,
) -> list[Image.Image]:
    """Restore many images of any sizes; images of one size share pipeline calls (``batch_size``
    at a time), tiled images batch their tiles. Returns RGB images in the input order, each of its
    input's size; each equals `restore_image` on it alone (the noise is per image)."""
    results: list[Image.Image | None] = [None] * len(images)
    whole: dict[tuple[int, int], list[int]] = {}
    native, multiple = model_geometry(pipe)
    for index, image in enumerate(images):
        if tile and plan_tiles(*image.size, tile_size or native, multiple, tile_overlap) is not None:
            results[index] = restore_image(pipe, image, prompt, num_inference_steps, guidance_scale, seed,
                                           tile=True, tile_overlap=tile_overlap, batch_size=batch_size,
                                           tile_size=tile_size)
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
                        help="denoising steps; None means what the LoRAs record (4 for nano's recipe), else the "
                        "pipeline's own default (28)")
    parser.add_argument("--guidance_scale", type=float, default=GUIDANCE_SCALE)
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of every image's noise")
    parser.add_argument("--tile", action="store_true",
                        help="restore images larger than one tile (the model's native area, or --tile_size) tile by "
                        "tile at full resolution")
    parser.add_argument("--tile_overlap", type=non_negative_int, default=None,
                        help="pixels shared by neighbouring tiles; None means a quarter tile")
    parser.add_argument("--tile_size", type=positive_int, default=None,
                        help="side of the tiles in pixels; None means the model's native side (1024 for FLUX)")
    parser.add_argument("--batch_size", type=positive_int, default=1,
                        help="images (or tiles) per pipeline call")
    parser.add_argument("--device", default=None, help="cuda, cpu, cuda:1, ...; None means CUDA when available")
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                        help="None means bf16 on Ampere or newer GPUs, fp16 on older ones, fp32 on CPU")
    parser.add_argument("--quantize", default="none", choices=QUANTIZE_CHOICES,
                        help="quantize the base transformer (nf4 needs CUDA and bitsandbytes; int8 optimum-quanto)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the transformer first (pays on long batches on a GPU; on a CPU the "
                        "compile takes longer than nano's restorations)")
    parser.add_argument("--compile_backend", default="inductor", choices=COMPILE_BACKENDS,
                        help="inductor generates fused code; aot_eager only traces")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return parser


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
    if refusal := output_is_input_folder(source_root, output_root):
        return fail(refusal)
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
        if refusal := overwrites_its_input(source, image_path):
            return fail(refusal)
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
    except (ModelLoadError, LoraFileError, ValueError) as error:
        return fail(str(error))
    if args.compile:  # in place, after the LoRAs: their layers are part of the compiled graph
        pipe.transformer.compile(backend=args.compile_backend)

    native, multiple = model_geometry(pipe)
    steps = restoration_steps(pipe, loras) if args.num_inference_steps is None else args.num_inference_steps
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
        try:
            image_path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(image_path, lambda temporary: restored.save(temporary, format="PNG"))
        except OSError as error:
            if not is_disk_full(error):
                raise
            raise DiskFullError(error.errno, disk_full_message(image_path, error, 4 * restored.width * restored.height)
                                + " The images written before it are whole.") from error
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
        write_json_atomically(record_path, record)

    def flush() -> None:
        if pending:
            outputs = restore_batch(pipe, [image for _, image in pending], args.prompt, steps, args.guidance_scale, args.seed)
            for (job, image), restored in zip(pending, outputs):
                finish(job, image, restored, None)
            pending.clear()

    written, skipped = 0, 0
    try:
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
                layout = plan_tiles(*image.size, args.tile_size or native, multiple, args.tile_overlap) if args.tile else None
            except ValueError as error:  # an overlap as long as the tile
                return fail(f"{job[0]}: {error}")
            if layout is not None:
                restored = restore_image(pipe, image, args.prompt, steps, args.guidance_scale, args.seed, tile=True,
                                         tile_overlap=args.tile_overlap, batch_size=args.batch_size,
                                         tile_size=args.tile_size)
                finish(job, image, restored, layout)
            else:
                if pending and pending[0][1].size != image.size:
                    flush()
                pending.append((job, image))
                if len(pending) >= args.batch_size:
                    flush()
            written += 1
        flush()
    except DiskFullError as error:
        return fail(str(error))
    print(f"wrote {written} restored image(s) and their JSON records to {output_root}"
          + (f" ({skipped} skipped)" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.argv[0] = "python -m kontext_lora_helpers.restore"  # instead of "restore.py" in usage lines
    raise SystemExit(main())
