"""LoRA files on disk: which file a path means, reading it, and checking that it fits a model.

A LoRA trained here is one ``pytorch_lora_weights.safetensors`` file (`LORA_WEIGHT_NAME`) in
diffusers' layout (keys ``transformer.<module>.lora_A.weight`` / ``lora_B.weight``, the adapter's
``LoraConfig`` in the ``lora_adapter_metadata`` entry of the file's metadata). Every command that
takes a LoRA (``restore``, ``export``, ``nano check-lora``) accepts that file or the folder that
holds it, resolved by `resolve_lora_file`. `layouts` reads and writes the kohya / ComfyUI layout.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

__all__ = [
    "DIFFUSERS_KEY",
    "DIFFUSERS_METADATA_KEY",
    "LORA_WEIGHT_NAME",
    "LoraFileError",
    "RESTORATION_STEPS_METADATA_KEY",
    "adapter_metadata",
    "check_lora_fits",
    "diffusers_file_metadata",
    "read_safetensors",
    "recorded_restoration_steps",
    "resolve_lora_file",
]

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
"""The file name diffusers' ``save_lora_weights`` and ``load_lora_weights`` use by default."""

DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"
"""The safetensors metadata key under which diffusers stores the adapter's ``LoraConfig`` as JSON
(``diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY``)."""

RESTORATION_STEPS_METADATA_KEY = "kontext_lora_restoration_steps"
"""The safetensors metadata key under which the trainer records how many denoising steps the LoRA
restores with (its objective's measured count, `train.RESTORATION_STEPS`); diffusers ignores it."""

DIFFUSERS_KEY = re.compile(r"^(?:transformer\.)?(?P<module>.+)\.(?P<kind>lora_A\.weight|lora_B\.weight|alpha)$")
"""One tensor of a diffusers-layout LoRA: ``[transformer.]<module>.lora_A.weight`` (A, (rank, in)),
``.lora_B.weight`` (B, (out, rank)) or ``.alpha`` (a scalar some writers add)."""


class LoraFileError(ValueError):
    """A LoRA file that cannot be used as asked; the message names the file, the reason and the fix."""


def recorded_restoration_steps(file_metadata: dict[str, str]) -> int | None:
    """The denoising steps a LoRA file records (`RESTORATION_STEPS_METADATA_KEY`), or None when the
    file records none (files from elsewhere) or an unreadable value."""
    raw = file_metadata.get(RESTORATION_STEPS_METADATA_KEY)
    try:
        steps = int(raw) if raw is not None else None
    except ValueError:
        return None
    return steps if steps is not None and steps >= 1 else None


def resolve_lora_file(path: str | os.PathLike) -> Path:
    """The ``.safetensors`` file meant by ``path``: the file itself, or the LoRA file in a folder
    (``pytorch_lora_weights.safetensors``, else the folder's only ``.safetensors`` file).

    Raises:
        LoraFileError: the path does not exist, is not a ``.safetensors`` file, or is a folder
            with no LoRA file or several candidates.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise LoraFileError(
            f"LoRA weights {str(path)!r} do not exist. Pass the folder training wrote (it contains "
            f"{LORA_WEIGHT_NAME}) or a .safetensors LoRA file."
        )
    if path.is_dir():
        if (path / LORA_WEIGHT_NAME).is_file():
            return path / LORA_WEIGHT_NAME
        candidates = sorted(path.glob("*.safetensors"))
        if len(candidates) == 1:
            return candidates[0]
        found = ", ".join(c.name for c in candidates[:5]) or "none"
        raise LoraFileError(
            f"{str(path)!r} is a folder without {LORA_WEIGHT_NAME} and with {len(candidates)} .safetensors "
            f"files ({found}); pass the LoRA file itself."
        )
    if path.suffix.lower() != ".safetensors":
        raise LoraFileError(
            f"LoRA weights {str(path)!r} are not a .safetensors file; a .bin/.pt pickle has to be converted first."
        )
    return path


def read_safetensors(path: Path, shapes_only: bool = False) -> tuple[dict, dict[str, str]]:
    """(tensors, metadata) of a safetensors file; with ``shapes_only`` the values are shape tuples
    (nothing is loaded, so a 10 GB file is checked in milliseconds).

    Raises:
        LoraFileError: the file cannot be read as safetensors.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            if shapes_only:
                tensors = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
            else:
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # safetensors raises its own error types for any unreadable header
        raise LoraFileError(
            f"{str(path)!r} is not a readable safetensors file ({type(error).__name__}: {error}). LoRA "
            "weights must be .safetensors; a .bin/.pt pickle has to be converted first."
        ) from error
    return tensors, metadata


def diffusers_file_metadata(adapter_config: dict) -> dict[str, str]:
    """The safetensors metadata diffusers writes for a transformer LoRA (the inverse of
    `adapter_metadata`): the LoraConfig's fields under ``transformer.<key>``, as JSON under
    `DIFFUSERS_METADATA_KEY` (sets become sorted lists), plus ``"format": "pt"``."""
    packed = {f"transformer.{key}": sorted(value) if isinstance(value, set) else value
              for key, value in adapter_config.items()}
    return {"format": "pt", DIFFUSERS_METADATA_KEY: json.dumps(packed, indent=2, sort_keys=True)}


def adapter_metadata(file_metadata: dict[str, str]) -> dict | None:
    """diffusers' LoraConfig for the transformer from a file's metadata, prefix removed; None if absent.

    Raises:
        LoraFileError: the metadata entry is not valid JSON.
    """
    raw = file_metadata.get(DIFFUSERS_METADATA_KEY)
    if not raw:
        return None
    try:
        packed = json.loads(raw)
    except json.JSONDecodeError as error:
        raise LoraFileError(f"the file's {DIFFUSERS_METADATA_KEY!r} metadata is not valid JSON: {error}") from error
    if not isinstance(packed, dict):
        return None
    transformer = {k.removeprefix("transformer."): v for k, v in packed.items() if k.startswith("transformer.")}
    return transformer or None


def _base_linear(module):
    """The plain linear layer inside a module (peft wraps an adapted one as ``base_layer``)."""
    return getattr(module, "base_layer", module)


def check_lora_fits(transformer, path: str | os.PathLike) -> dict:
    """Check that a LoRA file fits a transformer before anything is loaded into it.

    Files in diffusers' layout (as `save_lora` and the training command write) are checked in
    full: every module must exist in the transformer and be a linear layer, ``lora_A`` must be
    (rank, in_features) and ``lora_B`` (out_features, rank) with one rank per module, equal to the
    rank in the file's metadata when it records one. Other layouts (kohya, ComfyUI) are left to
    diffusers' converters. This matters because diffusers does not reject every misfit: a file for
    another architecture loads as nothing at all, and a FLUX LoRA with larger input sizes makes
    diffusers widen the model's own layers (its Flux Control path) before failing.

    Returns:
        {"file": str, "format": "diffusers" | "other", "layers": int | None, "ranks": sorted list of
        int, "restoration_steps": the steps the file records (`recorded_restoration_steps`) or None}

    Raises:
        LoraFileError: missing or unreadable file, a file for another architecture, module names
            the model lacks, shapes or ranks that do not fit; the message names the file.
    """
    file = resolve_lora_file(path)
    shapes, metadata = read_safetensors(file, shapes_only=True)
    if not shapes:
        raise LoraFileError(f"{file}: the file holds no tensors")

    transformer_keys = [key for key in shapes if key.startswith("transformer.")]
    other_layouts = [key for key in shapes if key.startswith(("lora_unet_", "diffusion_model.", "lora_transformer_"))]
    if not transformer_keys and not other_layouts:
        prefixes = sorted({key.split(".")[0] for key in shapes})[:4]
        raise LoraFileError(
            f"{file}: no weights for a FLUX transformer (keys start with {', '.join(map(repr, prefixes))}); "
            "is it a LoRA for another architecture (Stable Diffusion, SDXL, ...)?"
        )
    if other_layouts or not all(DIFFUSERS_KEY.fullmatch(key) for key in transformer_keys):
        return {"file": str(file), "format": "other", "layers": None, "ranks": [],
                "restoration_steps": recorded_restoration_steps(metadata)}

    layers: dict[str, dict[str, tuple]] = {}
    for key in transformer_keys:
        match = DIFFUSERS_KEY.fullmatch(key)
        if match["kind"] != "alpha":
            layers.setdefault(match["module"], {})[match["kind"][len("lora_")]] = shapes[key]

    try:
        config = adapter_metadata(metadata) or {}
    except LoraFileError:
        config = {}
    # A per-layer rank_pattern overrides "r", so "r" is only a rule when there is none.
    metadata_rank = None if config.get("rank_pattern") else config.get("r")

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
        raise LoraFileError(
            f"{file}: {len(missing)} of its {len(layers)} layers do not exist in this model's transformer "
            f"(e.g. {missing[0]!r}); it was trained for another model (FLUX.1-Kontext-dev and nano differ)"
        )
    if misfits:
        raise LoraFileError(
            f"{file}: does not fit this model's transformer ({len(misfits)} layer(s)), e.g. {misfits[0]}; "
            "it was trained for another model or its file is damaged"
        )
    return {"file": str(file), "format": "diffusers", "layers": len(layers), "ranks": sorted(ranks),
            "restoration_steps": recorded_restoration_steps(metadata)}
