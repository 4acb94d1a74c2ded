"""**Merging** folds a LoRA into the weights, ``W += strength * (alpha / rank) * B @ A`` (float32
arithmetic, cast back to the weight's dtype), so inference needs no adapter. The merged transformer
is written as one safetensors file with diffusers' parameter names, which
``transformer.load_state_dict(safetensors.torch.load_file(path))`` reads and ComfyUI's *Load
Diffusion Model* converts on load (``comfy/model_detection.py``, ``convert_diffusers_mmdit``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .files import LoraFileError
from .layouts import LoraLayer, check_output_path, save_safetensors_atomically

__all__ = ["load_transformer_for_merge", "merge_lora_into_transformer", "save_merged_transformer"]


def merge_lora_into_transformer(transformer, layers: dict[str, LoraLayer], strength: float = 1.0) -> list[str]:
    """Fold a LoRA into a transformer's weights in place: ``W += strength * (alpha / rank) * B @ A``.

    Args:
        transformer: a ``FluxTransformer2DModel`` without adapters (plain ``nn.Linear`` layers).
        layers: diffusers module name -> LoraLayer (`read_lora`).
        strength: multiplier of the update (1.0: as trained).

    Returns:
        the names of the merged layers. The update is computed in float32 and added in float32,
        then cast to the weight's dtype (bf16 keeps ~3 significant digits of the sum).

    Raises:
        LoraFileError: a layer the transformer lacks, a layer wrapped by peft or quantized, or
            a shape mismatch (a LoRA for another model size).
    """
    merged = []
    for name, layer in layers.items():
        try:
            module = transformer.get_submodule(name)
        except AttributeError:
            raise LoraFileError(f"the transformer has no layer {name!r}; is the LoRA for another model?") from None
        # Exactly nn.Linear: quantized layers (bitsandbytes, quanto) subclass it but cannot take `+=`.
        if type(module) is not torch.nn.Linear:
            raise LoraFileError(
                f"{name} is a {type(module).__name__}, not a plain torch.nn.Linear: merge into a freshly loaded, "
                "unquantized transformer without adapters."
            )
        weight = module.weight
        if tuple(weight.shape) != (layer.up.shape[0], layer.down.shape[1]):
            raise LoraFileError(
                f"{name}: LoRA update is {layer.up.shape[0]} x {layer.down.shape[1]} but the weight is "
                f"{tuple(weight.shape)}; the LoRA was trained on a model of another size."
            )
        with torch.no_grad():
            delta = layer.delta().to(weight.device)
            weight.copy_((weight.float() + strength * delta).to(weight.dtype))
        merged.append(name)
    return merged


def save_merged_transformer(transformer, output: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a transformer's weights (diffusers parameter names) to one ``.safetensors`` file.

    The transformer's config goes into the file's metadata (``config`` key, JSON) so the file says
    which architecture it belongs to."""
    output = check_output_path(output, overwrite)
    tensors = {key: value.detach().contiguous() for key, value in transformer.state_dict().items()}
    config = json.dumps({k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(transformer.config).items()})
    save_safetensors_atomically(tensors, {"format": "pt", "config": config}, output)
    return output


def load_transformer_for_merge(name_or_path: str, dtype: str | None = None):
    """The base transformer to merge into: "nano", a diffusers pipeline or transformer folder, or a hub id.

    dtype: "bfloat16", "float16", "float32" or None (nano: float32; others: bfloat16, FLUX's own).
    Only the transformer is loaded, on the CPU (FLUX.1's needs ~24 GB of RAM in bf16).
    """
    from ..models import _DTYPE_ARGUMENT, ModelLoadError, hub_offline, is_nano, load_pipeline, model_source

    if is_nano(name_or_path):
        return load_pipeline("nano", device="cpu", dtype=dtype or "float32").transformer
    from diffusers import FluxTransformer2DModel

    torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype or "bfloat16"]
    path = Path(os.path.expanduser(name_or_path))
    kwargs = {_DTYPE_ARGUMENT: torch_dtype}
    offline = hub_offline()
    if path.is_dir() and (path / "config.json").is_file() and not (path / "model_index.json").is_file():
        source, subfolder = str(path), None  # a transformer folder itself
    else:
        model_source(name_or_path)  # a pipeline folder or a hub id, else a ModelLoadError that says what works
        source, subfolder = str(name_or_path), "transformer"
    try:
        return FluxTransformer2DModel.from_pretrained(source, subfolder=subfolder, local_files_only=offline, **kwargs)
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"could not load a FLUX transformer from {name_or_path!r} ({error}). Pass 'nano', a diffusers "
            "pipeline folder (with transformer/), a transformer folder (with config.json) or a hub id."
        ) from error
