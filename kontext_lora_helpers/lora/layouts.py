"""A FLUX.1 Kontext LoRA in diffusers' layout and in the one ComfyUI loads (kohya), read and written exactly.

``save_lora`` writes ``pytorch_lora_weights.safetensors`` in **diffusers' layout**: one pair of
matrices per adapted linear layer, named after diffusers' module names::

    transformer.transformer_blocks.0.attn.to_q.lora_A.weight          A: (rank, in_features)
    transformer.transformer_blocks.0.attn.to_q.lora_B.weight          B: (out_features, rank)

plus, in the file's ``lora_adapter_metadata``, the peft ``LoraConfig`` (``r``, ``lora_alpha``,
``rank_pattern``, ``alpha_pattern``, ``use_rslora``) that fixes each layer's scale ``alpha / rank``.
A file without that metadata (and without ``.alpha`` tensors) means scale 1 for every layer, which
is how diffusers and peft read it.

The **ComfyUI layout** written here is the kohya (sd-scripts) one with Black Forest Labs' module
names, the names of the original FLUX checkpoint that ComfyUI runs::

    lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight           (rank, in_features)
    lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight             (out_features, rank)
    lora_unet_double_blocks_0_img_attn_qkv.alpha                      scalar: scale = alpha / rank

Why this layout: ComfyUI's LoRA loader (``comfy/lora.py``, ``model_lora_keys_unet``) names every
weight ``W`` of the diffusion model ``lora_unet_<BFL name with "." -> "_">`` and patches it with
``W += strength * (alpha / lora_down.shape[0]) * lora_up @ lora_down``
(``comfy/weight_adapter/lora.py``). It is the layout kohya's sd-scripts trains, so many published
FLUX LoRAs use it, and diffusers reads it back (``FluxLoraLoaderMixin.lora_state_dict`` detects
``.lora_down.weight`` keys and runs ``_convert_kohya_flux_lora_to_diffusers`` in
``diffusers/loaders/lora_conversion_utils.py``; the key names and fused-layer rules below are that
converter's, and ComfyUI's ``comfy/utils.py`` ``flux_to_diffusers`` gives the same correspondence
between the two naming schemes).

diffusers module (block N)                       kohya / BFL module
-----------------------------------------------  --------------------------------------------------
transformer_blocks.N.attn.to_q / to_k / to_v      double_blocks_N_img_attn_qkv   (fused, rows q|k|v)
transformer_blocks.N.attn.to_out.0                double_blocks_N_img_attn_proj
transformer_blocks.N.attn.add_q/k/v_proj          double_blocks_N_txt_attn_qkv   (fused, rows q|k|v)
transformer_blocks.N.attn.to_add_out              double_blocks_N_txt_attn_proj
transformer_blocks.N.ff.net.0.proj / ff.net.2     double_blocks_N_img_mlp_0 / _img_mlp_2
transformer_blocks.N.ff_context.net.0.proj / .2   double_blocks_N_txt_mlp_0 / _txt_mlp_2
transformer_blocks.N.norm1.linear                 double_blocks_N_img_mod_lin
transformer_blocks.N.norm1_context.linear         double_blocks_N_txt_mod_lin
single_transformer_blocks.N.attn.to_q/k/v         single_blocks_N_linear1        (fused, rows q|k|v|mlp)
  + single_transformer_blocks.N.proj_mlp
single_transformer_blocks.N.proj_out              single_blocks_N_linear2
single_transformer_blocks.N.norm.linear           single_blocks_N_modulation_lin

**Fused layers.** BFL computes q, k and v (and, in single blocks, the MLP input) with ONE linear
layer whose output rows are the members' outputs stacked. Members with LoRAs ``(A_i, B_i, s_i)``
become one exact LoRA of rank ``R = sum(r_i)``::

    lora_down = cat([A_q, A_k, A_v])                (R, in)
    lora_up   = block_diag(B_q, B_k, B_v)           (sum(out_i), R)
    lora_up @ lora_down = cat([B_q A_q, B_k A_k, B_v A_v])    row blocks = the members' updates

The scale must then be one number for the whole group, so every member must have the same
``s = alpha_i / r_i``; the fused alpha is ``s * R``, because ComfyUI and diffusers divide it by the
fused rank ``R``. A member without a LoRA is a zero row block (rank 0). Reading back, the fused
matrices are split along the same blocks; the member ranks are stored in the file's metadata
(``kontext_lora_helpers.fused_lora_ranks``) and, for files written elsewhere, found from the
block-diagonal structure (equal ranks). A fused LoRA that is not block-diagonal (one trained on
BFL's fused layer) is split exactly too, as ``A_i = lora_down`` and ``B_i = lora_up``'s rows.

diffusers' kohya converter splits ``linear1`` with FLUX.1's widths written into it
(``dims=[3072, 3072, 3072, 12288]``), so for a model of another width, such as the course's nano
model, diffusers cannot read a ComfyUI-layout LoRA that adapts the single blocks' q/k/v/proj_mlp (it
stops at ``assert sum(dims) == up_weight.shape[0]``). This module reads such files itself, and the
diffusers layout has no such limit; for FLUX.1 Kontext [dev] (width 3072) both paths work.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from ..fileio import write_safetensors_atomically
from .files import (
    DIFFUSERS_KEY,
    LoraFileError,
    adapter_metadata,
    diffusers_file_metadata,
    read_safetensors,
    resolve_lora_file,
)

__all__ = [
    "FORMATS",
    "LoraLayer",
    "check_output_path",
    "convert_lora_file",
    "detect_lora_format",
    "layers_from_comfyui",
    "layers_from_diffusers",
    "layers_to_comfyui",
    "layers_to_diffusers",
    "read_lora",
    "save_safetensors_atomically",
    "write_lora",
]

FORMATS = ("diffusers", "comfyui")

FUSED_RANKS_METADATA_KEY = "kontext_lora_helpers.fused_lora_ranks"
"""safetensors metadata key of a ComfyUI-layout file written here: JSON ``{kohya module: [member
ranks]}`` for the fused layers, so they split back into exactly the original members."""

SINGLE_BLOCK_MLP_RATIO = 4
"""FLUX single blocks' MLP width over the hidden width (``FluxSingleTransformerBlock(mlp_ratio=4.0)``);
only needed to place an absent ``proj_mlp`` inside ``linear1``."""

# diffusers module name inside a block -> (kohya suffix, position inside the fused layer or None).
DOUBLE_BLOCK_LAYOUT: dict[str, tuple[str, int | None]] = {
    "attn.to_q": ("img_attn_qkv", 0),
    "attn.to_k": ("img_attn_qkv", 1),
    "attn.to_v": ("img_attn_qkv", 2),
    "attn.to_out.0": ("img_attn_proj", None),
    "attn.add_q_proj": ("txt_attn_qkv", 0),
    "attn.add_k_proj": ("txt_attn_qkv", 1),
    "attn.add_v_proj": ("txt_attn_qkv", 2),
    "attn.to_add_out": ("txt_attn_proj", None),
    "ff.net.0.proj": ("img_mlp_0", None),
    "ff.net.2": ("img_mlp_2", None),
    "ff_context.net.0.proj": ("txt_mlp_0", None),
    "ff_context.net.2": ("txt_mlp_2", None),
    # AdaLayerNormZero chunks (shift, scale, gate) x 2 in BFL's Modulation order: no reordering.
    "norm1.linear": ("img_mod_lin", None),
    "norm1_context.linear": ("txt_mod_lin", None),
}
SINGLE_BLOCK_LAYOUT: dict[str, tuple[str, int | None]] = {
    "attn.to_q": ("linear1", 0),
    "attn.to_k": ("linear1", 1),
    "attn.to_v": ("linear1", 2),
    "proj_mlp": ("linear1", 3),
    "proj_out": ("linear2", None),
    "norm.linear": ("modulation_lin", None),
}
_BLOCK_LAYOUTS = {"transformer_blocks": DOUBLE_BLOCK_LAYOUT, "single_transformer_blocks": SINGLE_BLOCK_LAYOUT}
_KOHYA_BLOCK = {"transformer_blocks": "double_blocks", "single_transformer_blocks": "single_blocks"}
_DIFFUSERS_BLOCK = {kohya: diffusers for diffusers, kohya in _KOHYA_BLOCK.items()}


def _fused_members(layout: dict[str, tuple[str, int | None]]) -> dict[str, tuple[str, ...]]:
    members: dict[str, list[tuple[int, str]]] = {}
    for name, (kohya, position) in layout.items():
        if position is not None:
            members.setdefault(kohya, []).append((position, name))
    return {kohya: tuple(name for _, name in sorted(pairs)) for kohya, pairs in members.items()}


# kohya suffix -> diffusers members in row order, e.g. "linear1" -> (to_q, to_k, to_v, proj_mlp)
_FUSED_MEMBERS = {block: _fused_members(layout) for block, layout in _BLOCK_LAYOUTS.items()}
_KOHYA_TO_DIFFUSERS = {
    block: {kohya: name for name, (kohya, position) in layout.items() if position is None}
    for block, layout in _BLOCK_LAYOUTS.items()
}

_DIFFUSERS_MODULE = re.compile(
    r"^(?P<block>transformer_blocks|single_transformer_blocks)\.(?P<index>\d+)\.(?P<layer>.+)$"
)
_KOHYA_KEY = re.compile(r"^lora_unet_(?P<module>.+)\.(?P<kind>lora_down\.weight|lora_up\.weight|alpha)$")
_KOHYA_MODULE = re.compile(r"^(?P<block>double_blocks|single_blocks)_(?P<index>\d+)_(?P<layer>.+)$")


@dataclass
class LoraLayer:
    """The LoRA of one linear layer: ``W x + (alpha / rank) * up @ (down @ x)``.

    Attributes:
        down: A, shape (rank, in_features); float32 as trained here (any float dtype is kept).
        up: B, shape (out_features, rank), same dtype as `down`.
        alpha: the scale's numerator; the update is scaled by ``alpha / rank`` (an rsLoRA's
            ``alpha / sqrt(rank)`` is stored as the equivalent ``alpha * sqrt(rank)``).
    """

    down: torch.Tensor
    up: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta(self) -> torch.Tensor:
        """The weight update ``scale * up @ down``, (out_features, in_features), float32."""
        return self.scale * (self.up.float() @ self.down.float())


def detect_lora_format(state_dict: dict[str, torch.Tensor]) -> str:
    """``"diffusers"`` (``lora_A``/``lora_B`` keys) or ``"comfyui"`` (kohya ``lora_down``/``lora_up``).

    Raises:
        LoraFileError: no LoRA matrices at all (full model weights, LyCORIS LoKr/LoHa, an empty
            file), DoRA weights, or both layouts mixed in one file.
    """
    keys = list(state_dict)
    if not keys:
        raise LoraFileError("the file holds no tensors; it is not a LoRA.")
    if any("dora_scale" in key or "lora_magnitude_vector" in key for key in keys):
        raise LoraFileError("this is a DoRA (weight-decomposed LoRA); only plain LoRAs can be exported.")
    has_diffusers = any(".lora_A." in key or ".lora_B." in key for key in keys)
    has_kohya = any(key.endswith((".lora_down.weight", ".lora_up.weight")) for key in keys)
    if has_diffusers and has_kohya:
        raise LoraFileError(
            "the file mixes diffusers (lora_A/lora_B) and kohya (lora_down/lora_up) keys; export one "
            "layout per file."
        )
    if has_diffusers:
        return "diffusers"
    if has_kohya:
        return "comfyui"
    if any(part in key for key in keys for part in ("lokr_", "hada_", ".oft_")):
        raise LoraFileError("this is a LyCORIS LoKr/LoHa/OFT adapter, not a plain LoRA; it cannot be exported.")
    raise LoraFileError(
        f"no LoRA matrices found (no lora_A/lora_B or lora_down/lora_up keys among {len(keys)} tensors, "
        f"e.g. {keys[0]!r}): this looks like full model weights, not a LoRA. Pass the file `save_lora` wrote."
    )


def _check_pair(name: str, down: torch.Tensor | None, up: torch.Tensor | None, down_label: str, up_label: str) -> None:
    if down is None or up is None:
        missing = down_label if down is None else up_label
        raise LoraFileError(f"LoRA layer {name!r} has no {missing} matrix; the file is incomplete.")
    if down.ndim != 2 or up.ndim != 2:
        raise LoraFileError(
            f"LoRA layer {name!r} is not a linear-layer LoRA ({down_label} {tuple(down.shape)}, "
            f"{up_label} {tuple(up.shape)}); FLUX LoRAs adapt linear layers only."
        )
    if up.shape[1] != down.shape[0]:
        raise LoraFileError(
            f"LoRA layer {name!r} has inconsistent ranks: {down_label} {tuple(down.shape)} has rank "
            f"{down.shape[0]} but {up_label} {tuple(up.shape)} has rank {up.shape[1]}; the file is damaged."
        )


def _pattern_value(patterns: dict, module: str, default):
    """peft's rank_pattern/alpha_pattern lookup: a key matches a module name that ends with it
    after a dot (``peft.utils.other.get_pattern_key``)."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _not_flux_message(names: list[str], expected: str) -> str:
    shown = ", ".join(repr(n) for n in names[:3])
    return (
        f"{len(names)} LoRA layer(s) do not match FLUX.1 block names (e.g. {shown}); expected {expected}. "
        "Is this a LoRA for another model (SDXL, SD3, FLUX.2, Wan...) or one that adapts layers outside "
        "the transformer blocks (embedders, final layer, text encoders)? Only FLUX.1 block LoRAs can be exported."
    )


def layers_from_diffusers(
    state_dict: dict[str, torch.Tensor], adapter_metadata: dict | None = None
) -> dict[str, LoraLayer]:
    """Read a diffusers-layout state dict into ``{module name: LoraLayer}``.

    Args:
        state_dict: ``[transformer.]<module>.lora_A.weight`` / ``lora_B.weight`` (and optional
            ``<module>.alpha``) tensors, module names like ``transformer_blocks.0.attn.to_q``.
        adapter_metadata: the transformer's LoraConfig fields (``r``, ``lora_alpha``,
            ``alpha_pattern``, ``use_rslora``), as in the file's ``lora_adapter_metadata`` without
            the ``transformer.`` prefix; None means scale 1 per layer unless ``.alpha`` tensors say otherwise.

    Returns:
        module name (no ``transformer.`` prefix) -> LoraLayer; the tensors are the state dict's own.
    """
    parts: dict[str, dict[str, torch.Tensor]] = {}
    unexpected = []
    for key, tensor in state_dict.items():
        match = DIFFUSERS_KEY.match(key)
        if match is None or not key.startswith(("transformer.", "transformer_blocks.", "single_transformer_blocks.")):
            unexpected.append(key)
            continue
        parts.setdefault(match["module"], {})[match["kind"]] = tensor
    if unexpected:
        if any(key.startswith(("text_encoder", "lora_te")) for key in unexpected):
            raise LoraFileError(
                "the LoRA also adapts a text encoder (keys like "
                f"{next(k for k in unexpected if k.startswith(('text_encoder', 'lora_te')))!r}); only "
                "transformer LoRAs can be exported."
            )
        raise LoraFileError(
            _not_flux_message(unexpected, "keys like 'transformer.transformer_blocks.0.attn.to_q.lora_A.weight'")
        )

    not_flux = [name for name in parts if not _is_flux_block_layer(name)]
    if not_flux:
        raise LoraFileError(
            _not_flux_message(not_flux, "transformer_blocks.N.<" + "|".join(DOUBLE_BLOCK_LAYOUT) + "> or "
                              "single_transformer_blocks.N.<" + "|".join(SINGLE_BLOCK_LAYOUT) + ">")
        )

    config = adapter_metadata or {}
    use_rslora = bool(config.get("use_rslora", False))
    layers = {}
    for name in sorted(parts, key=_module_sort_key):
        tensors = parts[name]
        down, up = tensors.get("lora_A.weight"), tensors.get("lora_B.weight")
        _check_pair(name, down, up, "lora_A", "lora_B")
        rank = int(down.shape[0])
        if "alpha" in tensors:
            alpha = float(tensors["alpha"].item())
        elif adapter_metadata is not None:
            alpha = float(_pattern_value(config.get("alpha_pattern") or {}, name, config.get("lora_alpha", rank)))
        else:
            alpha = float(rank)  # no alpha anywhere: diffusers and peft load it with scale 1
        if use_rslora:
            alpha = alpha * math.sqrt(rank)  # peft scales by alpha / sqrt(r): same update as (alpha sqrt(r)) / r
        layers[name] = LoraLayer(down=down, up=up, alpha=alpha)
    return layers


def _is_flux_block_layer(name: str) -> bool:
    match = _DIFFUSERS_MODULE.match(name)
    return bool(match) and match["layer"] in _BLOCK_LAYOUTS[match["block"]]


def _module_sort_key(name: str):
    """Block kind, block number, layer: keeps files in model order rather than 0, 1, 10, 11, 2."""
    match = _DIFFUSERS_MODULE.match(name)
    if match is None:
        return (2, 0, name)
    return (0 if match["block"] == "transformer_blocks" else 1, int(match["index"]), match["layer"])


def _block_diagonal_split(up: torch.Tensor, row_sizes: list[int], ranks: list[int]) -> bool:
    """True when ``up`` is zero outside the (row_sizes x ranks) diagonal blocks."""
    mask = torch.ones_like(up, dtype=torch.bool)
    row = column = 0
    for rows, rank in zip(row_sizes, ranks):
        mask[row : row + rows, column : column + rank] = False
        row, column = row + rows, column + rank
    return not bool(up[mask].any())


def layers_from_comfyui(
    state_dict: dict[str, torch.Tensor], file_metadata: dict[str, str] | None = None
) -> dict[str, LoraLayer]:
    """Read a kohya/ComfyUI-layout FLUX LoRA into ``{diffusers module name: LoraLayer}``.

    Fused layers (``img_attn_qkv``, ``txt_attn_qkv``, ``linear1``) are split into their diffusers
    members: exactly back into the original blocks when the file's metadata lists the member ranks
    or the up matrix is block-diagonal with equal ranks, otherwise as members that share the whole
    ``lora_down`` (see the module docstring). Keys ``diffusion_model.double_blocks.0.img_attn.qkv...``
    (ComfyUI's dotted spelling) are accepted too. A missing ``.alpha`` means scale 1.

    Returns:
        diffusers module name -> LoraLayer. Split tensors are copies, so they can be saved separately.
    """
    normalized: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key.startswith("diffusion_model."):
            body = key.removeprefix("diffusion_model.")
            for suffix in (".lora_down.weight", ".lora_up.weight", ".alpha"):
                if body.endswith(suffix):
                    key = "lora_unet_" + body[: -len(suffix)].replace(".", "_") + suffix
                    break
        normalized[key] = tensor

    parts: dict[str, dict[str, torch.Tensor]] = {}
    unexpected = []
    for key, tensor in normalized.items():
        match = _KOHYA_KEY.match(key)
        module = match and _KOHYA_MODULE.match(match["module"])
        if not module or not _is_kohya_flux_layer(module["block"], module["layer"]):
            unexpected.append(key)
            continue
        parts.setdefault(match["module"], {})[match["kind"]] = tensor
    if unexpected:
        if any(key.startswith(("lora_te", "text_encoders")) for key in unexpected):
            raise LoraFileError(
                "the LoRA also adapts a text encoder (lora_te* keys); only transformer LoRAs can be exported."
            )
        raise LoraFileError(
            _not_flux_message(unexpected, "keys like 'lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight' "
                              "or 'lora_unet_single_blocks_0_linear1.lora_up.weight'")
        )

    stored_ranks = {}
    if file_metadata and file_metadata.get(FUSED_RANKS_METADATA_KEY):
        try:
            stored_ranks = json.loads(file_metadata[FUSED_RANKS_METADATA_KEY])
        except json.JSONDecodeError:
            stored_ranks = {}  # damaged hint: the block-diagonal check below still finds equal ranks
        if not isinstance(stored_ranks, dict):
            stored_ranks = {}

    layers: dict[str, LoraLayer] = {}
    for kohya_name, tensors in parts.items():
        down, up = tensors.get("lora_down.weight"), tensors.get("lora_up.weight")
        _check_pair(f"lora_unet_{kohya_name}", down, up, "lora_down", "lora_up")
        fused_rank = int(down.shape[0])
        alpha = float(tensors["alpha"].item()) if "alpha" in tensors else float(fused_rank)
        module = _KOHYA_MODULE.match(kohya_name)
        block = _DIFFUSERS_BLOCK[module["block"]]
        prefix = f"{block}.{module['index']}."
        members = _FUSED_MEMBERS[block].get(module["layer"])
        if members is None:
            layers[prefix + _KOHYA_TO_DIFFUSERS[block][module["layer"]]] = LoraLayer(down=down, up=up, alpha=alpha)
            continue

        row_sizes = _fused_row_sizes(kohya_name, members, down, up)
        ranks = stored_ranks.get(f"lora_unet_{kohya_name}")
        usable = isinstance(ranks, list) and all(isinstance(r, int) and r >= 0 for r in ranks)
        if not usable or len(ranks) != len(members) or sum(ranks) != fused_rank:
            ranks = [fused_rank // len(members)] * len(members) if fused_rank % len(members) == 0 else None
        if ranks is not None and _block_diagonal_split(up, row_sizes, ranks):
            row = column = 0
            for member, rows, rank in zip(members, row_sizes, ranks):
                if rank:
                    layers[prefix + member] = LoraLayer(
                        down=down[column : column + rank].clone(),
                        up=up[row : row + rows, column : column + rank].clone(),
                        # Same scale as the group: alpha_i / r_i = alpha / R. Multiply first, so
                        # integer alphas come back exactly.
                        alpha=alpha * rank / fused_rank,
                    )
                row, column = row + rows, column + rank
        else:
            # A LoRA trained on the fused layer itself: each member's update is its row block of
            # up @ down, i.e. the shared down matrix with that member's rows of up.
            row = 0
            for member, rows in zip(members, row_sizes):
                layers[prefix + member] = LoraLayer(down=down.clone(), up=up[row : row + rows].clone(), alpha=alpha)
                row += rows
    return {name: layers[name] for name in sorted(layers, key=_module_sort_key)}


def _is_kohya_flux_layer(kohya_block: str, layer: str) -> bool:
    block = _DIFFUSERS_BLOCK[kohya_block]
    return layer in _FUSED_MEMBERS[block] or layer in _KOHYA_TO_DIFFUSERS[block]


def _fused_row_sizes(kohya_name: str, members: tuple[str, ...], down: torch.Tensor, up: torch.Tensor) -> list[int]:
    """Output rows of each member inside a fused layer, from the fused shapes alone.

    q, k and v each have the hidden width; in single blocks that is also ``linear1``'s input width
    and the MLP takes the remaining rows."""
    total = int(up.shape[0])
    if len(members) == 3:
        if total % 3:
            raise LoraFileError(
                f"lora_unet_{kohya_name} has {total} output rows, not divisible into q, k, v; not a FLUX.1 LoRA."
            )
        return [total // 3] * 3
    hidden = int(down.shape[1])
    if total <= 3 * hidden:
        raise LoraFileError(
            f"lora_unet_{kohya_name} has {total} output rows for input width {hidden}; FLUX.1's linear1 "
            f"has 3 x {hidden} (q, k, v) + the MLP width. Not a FLUX.1 LoRA."
        )
    return [hidden, hidden, hidden, total - 3 * hidden]


# --- writing ---------------------------------------------------------------------------------------


def _same_scale(first: LoraLayer, other: LoraLayer) -> bool:
    # alpha_1 / r_1 == alpha_2 / r_2, compared cross-multiplied to keep integers exact
    return math.isclose(first.alpha * other.rank, other.alpha * first.rank, rel_tol=1e-6)


def layers_to_comfyui(layers: dict[str, LoraLayer]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The kohya/ComfyUI layout of a FLUX LoRA: fused q/k/v (and q/k/v/mlp) groups, one alpha each.

    Args:
        layers: diffusers module name -> LoraLayer (see `layers_from_diffusers`).

    Returns:
        (state_dict, file_metadata): ``lora_unet_<module>.lora_down.weight`` (R, in),
        ``.lora_up.weight`` (out, R) in the layers' dtype, ``.alpha`` float32 scalars; metadata with
        the member ranks of each fused layer.

    Raises:
        LoraFileError: members of one fused layer with different scales ``alpha / rank`` (one
            alpha per fused layer cannot express them), or with different input widths.
    """
    state_dict: dict[str, torch.Tensor] = {}
    groups: dict[tuple[str, str, str], dict[str, LoraLayer]] = {}  # (kohya name, block, suffix) -> members
    for name, layer in layers.items():
        match = _DIFFUSERS_MODULE.match(name)
        if match is None or match["layer"] not in _BLOCK_LAYOUTS[match["block"]]:
            raise LoraFileError(_not_flux_message([name], "FLUX.1 block layers"))
        block, index, layer_name = match["block"], match["index"], match["layer"]
        kohya_suffix, position = _BLOCK_LAYOUTS[block][layer_name]
        kohya_name = f"lora_unet_{_KOHYA_BLOCK[block]}_{index}_{kohya_suffix}"
        if position is None:
            state_dict[f"{kohya_name}.lora_down.weight"] = layer.down.contiguous()
            state_dict[f"{kohya_name}.lora_up.weight"] = layer.up.contiguous()
            state_dict[f"{kohya_name}.alpha"] = torch.tensor(layer.alpha, dtype=torch.float32)
        else:
            groups.setdefault((kohya_name, block, kohya_suffix), {})[layer_name] = layer

    fused_ranks = {}
    for (kohya_name, block, kohya_suffix), present in groups.items():
        members = _FUSED_MEMBERS[block][kohya_suffix]
        reference_name, reference = next(iter(present.items()))
        for member_name, member in present.items():
            if not _same_scale(reference, member):
                raise LoraFileError(
                    f"{kohya_name} fuses {', '.join(members)}, but their LoRA scales differ "
                    f"({reference_name}: alpha {reference.alpha:g} / rank {reference.rank}, {member_name}: "
                    f"alpha {member.alpha:g} / rank {member.rank}); ComfyUI's layout has one alpha per fused "
                    "layer. Train these layers with the same alpha/rank, or use --format diffusers."
                )
            if member.down.shape[1] != reference.down.shape[1]:
                raise LoraFileError(
                    f"{kohya_name}: {member_name} has input width {member.down.shape[1]} but "
                    f"{reference_name} has {reference.down.shape[1]}; these cannot be one FLUX layer."
                )
        hidden = int(reference.down.shape[1])
        dtype = reference.down.dtype
        for layer in present.values():
            dtype = torch.promote_types(dtype, torch.promote_types(layer.down.dtype, layer.up.dtype))
        row_sizes, ranks = [], []
        for member_name in members:
            if member_name in present:
                row_sizes.append(int(present[member_name].up.shape[0]))
                ranks.append(present[member_name].rank)
            else:  # absent member: zero rows of the right height, rank 0
                ranks.append(0)
                if member_name == "proj_mlp":
                    row_sizes.append(SINGLE_BLOCK_MLP_RATIO * hidden)
                elif block == "single_transformer_blocks":
                    row_sizes.append(hidden)
                else:
                    row_sizes.append(int(reference.up.shape[0]))
        fused_rank = sum(ranks)
        down = torch.cat([present[m].down.to(dtype) for m in members if m in present], dim=0)
        up = torch.zeros(sum(row_sizes), fused_rank, dtype=dtype, device=reference.up.device)
        row = column = 0
        for member_name, rows, rank in zip(members, row_sizes, ranks):
            if rank:
                up[row : row + rows, column : column + rank] = present[member_name].up.to(dtype)
            row, column = row + rows, column + rank
        state_dict[f"{kohya_name}.lora_down.weight"] = down
        state_dict[f"{kohya_name}.lora_up.weight"] = up
        # ComfyUI and diffusers divide alpha by the fused rank: alpha / R must equal each member's scale.
        fused_alpha = reference.alpha * fused_rank / reference.rank  # multiply first: integer alphas stay exact
        state_dict[f"{kohya_name}.alpha"] = torch.tensor(fused_alpha, dtype=torch.float32)
        fused_ranks[kohya_name] = ranks

    ordered = dict(sorted(state_dict.items(), key=lambda item: _kohya_sort_key(item[0])))
    # No `lora_adapter_metadata` here: diffusers would apply that LoraConfig on top of the scales its
    # kohya converter already folds into the weights.
    metadata = {"format": "pt", FUSED_RANKS_METADATA_KEY: json.dumps(fused_ranks, sort_keys=True)}
    return ordered, metadata


def _kohya_sort_key(key: str):
    module = _KOHYA_MODULE.match(key.removeprefix("lora_unet_").split(".")[0])
    if module is None:
        return (2, 0, key)
    return (0 if module["block"] == "double_blocks" else 1, int(module["index"]), key)


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def layers_to_diffusers(layers: dict[str, LoraLayer]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The diffusers layout that ``FluxKontextPipeline.load_lora_weights`` reads.

    Returns:
        (state_dict, file_metadata): ``transformer.<module>.lora_A.weight`` (rank, in) and
        ``.lora_B.weight`` (out, rank) in the layers' dtype; metadata holding the LoraConfig
        (``r``/``lora_alpha`` = the most common rank/alpha, ``rank_pattern``/``alpha_pattern`` for the
        other layers) under ``lora_adapter_metadata``, the way `save_lora` writes it, so each
        layer keeps its scale.
    """
    state_dict = {}
    for name, layer in layers.items():
        state_dict[f"transformer.{name}.lora_A.weight"] = layer.down.contiguous()
        state_dict[f"transformer.{name}.lora_B.weight"] = layer.up.contiguous()
    if not layers:
        return state_dict, {"format": "pt"}
    rank = Counter(layer.rank for layer in layers.values()).most_common(1)[0][0]
    alpha = Counter(layer.alpha for layer in layers.values()).most_common(1)[0][0]
    config = {
        "r": rank,
        "lora_alpha": _number(alpha),
        "rank_pattern": {name: layer.rank for name, layer in layers.items() if layer.rank != rank},
        "alpha_pattern": {name: _number(layer.alpha) for name, layer in layers.items() if layer.alpha != alpha},
        "target_modules": list(layers),
        "use_rslora": False,
        "use_dora": False,
        "lora_bias": False,
        "lora_dropout": 0.0,
        "init_lora_weights": True,
        "peft_type": "LORA",
    }
    return state_dict, diffusers_file_metadata(config)


def read_lora(path: str | os.PathLike) -> tuple[dict[str, LoraLayer], str]:
    """Read a FLUX LoRA file (or the folder `save_lora` wrote) in either layout.

    Returns:
        (layers, source_format): diffusers module name -> LoraLayer, and "diffusers" or "comfyui".

    Raises:
        LoraFileError: missing path, not safetensors, not a LoRA, not FLUX.1 block names,
            inconsistent shapes; the message says which and what to pass instead.
    """
    file = resolve_lora_file(path)
    tensors, metadata = read_safetensors(file)
    try:
        source_format = detect_lora_format(tensors)
        if source_format == "diffusers":
            layers = layers_from_diffusers(tensors, adapter_metadata(metadata))
        else:
            layers = layers_from_comfyui(tensors, metadata)
    except LoraFileError as error:
        raise LoraFileError(f"{file}: {error}") from None
    return layers, source_format


def check_output_path(output: str | os.PathLike, overwrite: bool) -> Path:
    output = Path(output).expanduser()
    if output.is_dir():
        raise LoraFileError(
            f"output {str(output)!r} is a directory; pass a file path such as {str(output / 'lora.safetensors')!r}."
        )
    if output.suffix != ".safetensors":
        raise LoraFileError(f"output {str(output)!r} must end in .safetensors (ComfyUI and diffusers look for that).")
    if output.exists() and not overwrite:
        raise LoraFileError(
            f"output {str(output)!r} already exists; pass --overwrite (overwrite=True) to replace it."
        )
    return output


def save_safetensors_atomically(tensors: dict[str, torch.Tensor], metadata: dict[str, str], output: Path) -> Path:
    """`fileio.write_safetensors_atomically` (the input may be the output)."""
    return write_safetensors_atomically(output, tensors, metadata)


def write_lora(layers: dict[str, LoraLayer], output: str | os.PathLike, format: str, overwrite: bool = False) -> Path:
    """Write layers as a ``.safetensors`` LoRA in `format` ("diffusers" or "comfyui").

    Raises:
        LoraFileError: unknown format, output is a directory / not .safetensors / exists without
            `overwrite`, or the layers cannot be expressed in the format (see `layers_to_comfyui`).
    """
    if format not in FORMATS:
        raise LoraFileError(f"format must be one of {', '.join(FORMATS)}; got {format!r}.")
    output = check_output_path(output, overwrite)
    tensors, metadata = layers_to_comfyui(layers) if format == "comfyui" else layers_to_diffusers(layers)
    save_safetensors_atomically(tensors, metadata, output)
    return output


def convert_lora_file(
    lora_weights: str | os.PathLike, output: str | os.PathLike, format: str, overwrite: bool = False
) -> Path:
    """Read a LoRA in either layout and write it in `format`; returns the written path."""
    layers, _ = read_lora(lora_weights)
    return write_lora(layers, output, format, overwrite=overwrite)
