"""LoRA on the Kontext transformer, through peft, saved in the format diffusers loads.

A LoRA layer leaves a linear layer's weight ``W`` (out x in) frozen and learns a low-rank update:

    y = W x + (alpha / r) * B (A x)        A: (r, in), B: (out, r), r << min(in, out)

`A` starts random and `B` starts at **zero**, so the update is zero and the first training step sees
exactly the base model; only ``r * (in + out)`` numbers per layer train instead of ``in * out``.
``alpha / r`` scales the update so that its size depends less on the chosen rank (``lora_alpha``
defaults to the rank here, a scale of 1).

The adapter is added with diffusers' `transformer.add_adapter(LoraConfig(...))`, the same call the
diffusers training scripts make, so `save_lora` writes ``pytorch_lora_weights.safetensors`` that
``FluxKontextPipeline.load_lora_weights`` reads back.

Precision: the LoRA weights are kept in float32 even when the base transformer is bfloat16. Their
updates are tiny relative to their values late in training; in bf16 (8 bits of mantissa) many of
them would round away. peft casts the layer input to the LoRA weights' dtype and the result back, so
a bf16 base with fp32 LoRA needs nothing else.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from .files import LORA_WEIGHT_NAME, LoraFileError


DOUBLE_BLOCK_TARGETS = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
)
"""Linear layers of FLUX's double-stream blocks (`transformer_blocks.N.`): image and text attention
projections and both feed-forward networks (image `ff`, text `ff_context`)."""

SINGLE_BLOCK_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out")
"""Linear layers of FLUX's single-stream blocks (`single_transformer_blocks.N.`): attention
projections, the MLP input `proj_mlp` and `proj_out`, which mixes attention and MLP outputs."""

_BLOCK_PREFIXES = {"transformer_blocks": DOUBLE_BLOCK_TARGETS, "single_transformer_blocks": SINGLE_BLOCK_TARGETS}


def default_target_modules(transformer: nn.Module) -> list[str]:
    """Full names of the linear layers LoRA adapts by default: the attention and feed-forward
    projections of every double and single block.

    Full names, not suffixes: peft matches a suffix such as ``"proj_out"`` anywhere, and the
    transformer's final output layer is also called ``proj_out``; the embedders, the modulation
    (``norm*.linear``) and the final layer stay untouched.
    """
    names = []
    for name, module in transformer.named_modules():
        match = re.fullmatch(r"(transformer_blocks|single_transformer_blocks)\.\d+\.(.+)", name)
        # A layer already wrapped by peft keeps its linear layer as `base_layer`.
        linear = isinstance(getattr(module, "base_layer", module), nn.Linear)
        if match and match.group(2) in _BLOCK_PREFIXES[match.group(1)] and linear:
            names.append(name)
    if not names:
        raise ValueError("no FLUX block projections found: is this a FluxTransformer2DModel?")
    return names


def add_lora(
    transformer,
    rank: int = 16,
    lora_alpha: float | None = None,
    lora_dropout: float = 0.0,
    target_modules=None,
    adapter_name: str = "default",
):
    """Add a trainable LoRA adapter to a (FLUX) transformer, freeze everything else.

    Args:
        transformer: a diffusers model with `PeftAdapterMixin` (`FluxTransformer2DModel`).
        rank: r, the inner size of each update (FLUX restoration LoRAs use 4-64).
        lora_alpha: the scale numerator; None means ``alpha = rank`` (scale 1).
        lora_dropout: dropout on the LoRA branch's input during training.
        target_modules: peft's `target_modules` (names, suffixes or a regex); None adapts
            `default_target_modules(transformer)`.
        adapter_name: peft adapter name (diffusers saves the "default" adapter).

    Returns:
        the same transformer, modified in place: base parameters frozen (`requires_grad=False`),
        LoRA parameters trainable and in float32 whatever the base dtype. B starts at zero.
    """
    from peft import LoraConfig

    if rank < 1:
        raise ValueError(f"rank must be a positive integer; got {rank}.")
    config = LoraConfig(
        r=rank,
        lora_alpha=rank if lora_alpha is None else lora_alpha,
        lora_dropout=lora_dropout,
        init_lora_weights="gaussian",  # A ~ N(0, (1/r)^2), B = 0: the update starts at exactly zero
        target_modules=default_target_modules(transformer) if target_modules is None else target_modules,
    )
    transformer.requires_grad_(False)
    transformer.add_adapter(config, adapter_name=adapter_name)
    for name, parameter in transformer.named_parameters():
        if "lora_" in name and f".{adapter_name}." in name:
            parameter.data = parameter.data.float()  # fp32 master weights, see the module docstring
            parameter.requires_grad_(True)
    return transformer


def lora_parameters(transformer) -> list[nn.Parameter]:
    """The trainable parameters (the LoRA A and B matrices), for the optimizer."""
    return [p for p in transformer.parameters() if p.requires_grad]


def count_parameters(module: nn.Module) -> dict:
    """{"trainable": int, "total": int, "fraction": trainable / total} for a module's parameters."""
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total, "fraction": trainable / total if total else 0.0}


def _human(count: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return str(count)


def describe_parameters(module: nn.Module) -> str:
    """One line: trainable / total parameters and the percentage, e.g.
    ``trainable 4.72 M of 11.91 B parameters (0.040%)``."""
    counts = count_parameters(module)
    return (
        f"trainable {_human(counts['trainable'])} of {_human(counts['total'])} parameters "
        f"({100 * counts['fraction']:.3f}%)"
    )


def lora_state_dict(transformer, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter's weights in diffusers' LoRA format: keys
    ``transformer.<module>.lora_A.weight`` / ``lora_B.weight`` (no adapter name), tensors as stored
    (float32 after `add_lora`)."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(transformer, adapter_name=adapter_name)
    return {f"transformer.{key}": value for key, value in state.items()}


def save_lora(transformer, output_dir, adapter_name: str = "default", weight_name: str = LORA_WEIGHT_NAME,
              restoration_steps: int | None = None) -> Path:
    """Write ``output_dir/pytorch_lora_weights.safetensors`` with `FluxKontextPipeline.save_lora_weights`.

    The adapter's `LoraConfig` (rank, alpha, targets) goes into the file's metadata, so
    ``pipe.load_lora_weights(output_dir)`` rebuilds the same scale ``alpha / r`` even when alpha is
    not the rank. Another `weight_name` loads with ``load_lora_weights(output_dir, weight_name=...)``.
    `restoration_steps`, when given, is recorded too (`RESTORATION_STEPS_METADATA_KEY`): the
    denoising steps the LoRA restores with, which ``restore`` and ``nano check-lora`` default to.
    The file is written under a temporary name and renamed into place, so it is whole or absent.

    Returns:
        the path of the written file.
    """
    from diffusers import FluxKontextPipeline
    from peft.utils import get_peft_model_state_dict

    from ..fileio import write_safetensors_atomically
    from .files import RESTORATION_STEPS_METADATA_KEY, diffusers_file_metadata

    output_dir = Path(output_dir)
    layers = get_peft_model_state_dict(transformer, adapter_name=adapter_name)
    # diffusers' own metadata, written here so that the step count can join it
    metadata = diffusers_file_metadata(transformer.peft_config[adapter_name].to_dict())
    if restoration_steps is not None:
        metadata[RESTORATION_STEPS_METADATA_KEY] = str(int(restoration_steps))

    def save_whole(tensors, filename) -> None:
        write_safetensors_atomically(filename, tensors, metadata)

    FluxKontextPipeline.save_lora_weights(
        output_dir, transformer_lora_layers=layers, weight_name=weight_name, save_function=save_whole,
    )
    return output_dir / weight_name


def load_lora_into(transformer, folder, weight_name: str = LORA_WEIGHT_NAME, adapter_name: str = "default") -> None:
    """Load ``folder/<weight_name>`` (a diffusers-layout file `save_lora` wrote) into the
    transformer's existing adapter, exactly (float32 in, float32 out); used to resume training.

    Raises:
        LoraFileError: the file has LoRA weights for layers this adapter lacks.
    """
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    saved = load_file(str(Path(folder) / weight_name))
    state = {key.removeprefix("transformer."): value for key, value in saved.items()}
    result = set_peft_model_state_dict(transformer, state, adapter_name=adapter_name)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise LoraFileError(f"{Path(folder) / weight_name} has LoRA weights this model lacks: {unexpected[:3]} ...")


class LoraEMA:
    """An exponential moving average of the LoRA weights (float32), the weights a run exports.

    The averaging is diffusers' `EMAModel` (the one its training scripts use); this class gives it
    the LoRA's parameter names, so the average can be saved as a LoRA file and loaded back. After
    optimizer step ``k`` (1, 2, ...): ``ema = d * ema + (1 - d) * w`` with
    ``d = min(decay, (1 + k) / (10 + k))``: the warm-up term lets the average follow the fast early
    changes, then it averages over about ``1 / (1 - decay)`` steps. With a high learning rate the
    weights keep jittering around where the loss is low; their average sits closer to it (on nano,
    +0.07 dB on the held-out crops after 500 steps at decay 0.99).

    Args:
        transformer: the model with its LoRA adapter; the average starts from its current weights.
        decay: in (0, 1).
    """

    def __init__(self, transformer: nn.Module, decay: float):
        from diffusers.training_utils import EMAModel

        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1); got {decay}")
        self.decay = float(decay)
        self.parameters = {name: p for name, p in transformer.named_parameters() if "lora_" in name}
        if not self.parameters:
            raise ValueError("the model has no LoRA parameters to average")
        # EMAModel's warm-up counts from step k - 1 - update_after_step; -1 makes it (1 + k) / (10 + k).
        self.average = EMAModel(list(self.parameters.values()), decay=self.decay, update_after_step=-1)

    @property
    def shadow(self) -> dict[str, torch.Tensor]:
        """The averaged weights by parameter name (the tensors themselves, not copies)."""
        return dict(zip(self.parameters, self.average.shadow_params))

    @property
    def step(self) -> int:
        """Optimizer steps folded in so far."""
        return int(self.average.optimization_step)

    def decay_at(self, step: int) -> float:
        """The decay used after optimizer step `step` (1-based)."""
        return float(self.average.get_decay(step))

    def update(self) -> None:
        """Fold the current weights in, after one optimizer step."""
        self.average.step(list(self.parameters.values()))

    @contextmanager
    def applied(self):
        """Inside the block the model holds the averaged weights; the trained ones come back after."""
        parameters = list(self.parameters.values())
        self.average.store(parameters)
        try:
            self.average.copy_to(parameters)
            yield self
        finally:
            self.average.restore(parameters)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: tensor.detach().clone() for name, tensor in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor], step: int | None = None) -> None:
        """Exactly the names this model's LoRA has; anything else is an error that names them.

        Args:
            step: the optimizer steps the average has seen (for the warm-up); None keeps the count.
        """
        missing, unexpected = set(self.parameters) - set(state), set(state) - set(self.parameters)
        if missing or unexpected:
            raise ValueError(f"EMA state does not match this LoRA: missing {sorted(missing)[:3]}, "
                             f"unexpected {sorted(unexpected)[:3]}")
        with torch.no_grad():
            for name, shadow in self.shadow.items():
                shadow.copy_(state[name].to(shadow.dtype))
        if step is not None:
            self.average.optimization_step = int(step)


# --- looking inside -------------------------------------------------------------------------------


def lora_layer_parts(layer, adapter_name: str = "default") -> dict:
    """The pieces of one peft LoRA linear layer, for checking ``y = W x + b + (alpha / r) B A x`` by hand.

    Returns:
        dict with W (out, in), bias (out,) or None, A (r, in), B (out, r) and scale (alpha / r).
    """
    if not hasattr(layer, "lora_A") or adapter_name not in layer.lora_A:
        raise ValueError(f"{type(layer).__name__} has no LoRA adapter {adapter_name!r}; call add_lora first.")
    return dict(
        W=layer.base_layer.weight,
        bias=layer.base_layer.bias,
        A=layer.lora_A[adapter_name].weight,
        B=layer.lora_B[adapter_name].weight,
        scale=layer.scaling[adapter_name],
    )


def gradient_census(module: nn.Module) -> dict:
    """How many LoRA and base parameter tensors hold a gradient after a backward pass.

    Returns:
        {"lora with grad": int, "lora without grad": int, "base with grad": int, "base without grad": int}
    """
    census = {"lora with grad": 0, "lora without grad": 0, "base with grad": 0, "base without grad": 0}
    for name, parameter in module.named_parameters():
        kind = "lora" if "lora_" in name else "base"
        census[f"{kind} {'with' if parameter.grad is not None else 'without'} grad"] += 1
    return census


def lora_gradient_norm(module: nn.Module) -> float:
    """The L2 norm of all LoRA parameters' gradients together (0.0 when none has a gradient)."""
    squares = [p.grad.float().pow(2).sum() for n, p in module.named_parameters() if "lora_" in n and p.grad is not None]
    return float(torch.stack(squares).sum().sqrt()) if squares else 0.0
