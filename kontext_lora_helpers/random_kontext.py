"""Random-weight twins of FLUX.1 Kontext [dev]: the real architecture, nothing downloaded.

* ``random-kontext``: FLUX.1-Kontext-dev's published configurations exactly (transformer of 19
  double and 38 single blocks at width 3072 with 24 heads of 128, the 16-channel FLUX VAE, CLIP-L,
  T5-XXL) with random weights: 11.9 B + 0.08 B + 0.12 B + 4.8 B parameters. The weights are created
  directly on the target device in the requested dtype (no 24 GB download and no CPU copy), so a
  24 GB card holds the bf16 transformer (23.8 GB) only with ``quantize="nf4"`` or ``"int8"``, as
  with the real checkpoint.
* ``random-kontext-shallow``: the same widths (3072 in the transformer, 4096 in T5, 768 in CLIP,
  the whole FLUX VAE) with one block of each kind and one layer in each text encoder: about 1 B
  parameters, small enough for a CPU, so every shape assumption at the real width runs in the tests.

Both are a `FluxKontextPipeline` like the real one, loaded with `models.load_pipeline` and accepted
by every command that loads a pipeline (``train``, ``preflight``, ``restore``:
``--pretrained_model_name_or_path random-kontext``; not ``export --merge_into_transformer``).
**Their outputs are noise**: only shapes, memory and time mean anything. The tokenizers are built in
code (nano's vocabularies, with the real models' vocabulary sizes in the encoders), so the text
encoders see valid ids. The text length is the real 512 T5 tokens for ``random-kontext`` and 64 for
the shallow twin: on a CPU the 512-token text would cost eight times the image tokens it is paired
with in the tests, and the text length is a sequence length, not a width.

With a quantized base (``quantize="nf4"`` or ``"int8"``) the random transformer is first written as
a sharded checkpoint, one block at a time (so the CPU never holds more than a block), into
``$KONTEXT_LORA_CACHE`` (default ``~/.cache/kontext_lora_helpers``), and loaded from there with
diffusers' ``from_pretrained(..., quantization_config=...)``: the path the real checkpoint takes.
The folder is reused by later runs (23.8 GB in bf16 for ``random-kontext``).
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import torch

__all__ = [
    "PARTS",
    "RANDOM_KONTEXT",
    "RANDOM_KONTEXT_SHALLOW",
    "TRANSFORMER_CONFIG",
    "VAE_CONFIG",
    "build_random_kontext_components",
    "is_random_kontext",
    "random_transformer_folder",
]

RANDOM_KONTEXT = "random-kontext"
RANDOM_KONTEXT_SHALLOW = "random-kontext-shallow"
TEXT_LENGTHS = {RANDOM_KONTEXT: 512, RANDOM_KONTEXT_SHALLOW: 64}
"""T5 tokens per prompt (the tokenizer's `model_max_length`, which `models.max_sequence_length_for` reads)."""

# FLUX.1-Kontext-dev's transformer/config.json (diffusers' FluxTransformer2DModel).
TRANSFORMER_CONFIG = dict(
    patch_size=1,
    in_channels=64,
    out_channels=None,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
# Its vae/config.json (AutoencoderKL, 8x down, 16 latent channels, no quant convs).
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn="silu",
    latent_channels=16,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    use_quant_conv=False,
    use_post_quant_conv=False,
    force_upcast=True,
    mid_block_add_attention=True,
)
# CLIP ViT-L/14's text tower (text_encoder/config.json).
CLIP_CONFIG = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
)
# T5 v1.1 XXL's encoder (text_encoder_2/config.json).
T5_CONFIG = dict(
    vocab_size=32128,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    layer_norm_epsilon=1e-6,
    dropout_rate=0.0,
    is_encoder_decoder=False,
    use_cache=False,
    tie_word_embeddings=False,
)
SHALLOW_DEPTHS = dict(transformer=dict(num_layers=1, num_single_layers=1),
                      text_encoder=dict(num_hidden_layers=1), text_encoder_2=dict(num_layers=1))
"""What `random-kontext-shallow` changes: depths only, every width stays the real one."""


def is_random_kontext(name_or_path) -> bool:
    return str(name_or_path).strip().lower() in (RANDOM_KONTEXT, RANDOM_KONTEXT_SHALLOW)


def is_shallow_twin(name_or_path) -> bool:
    """Whether a model name is `RANDOM_KONTEXT_SHALLOW`, the twin a CPU can afford."""
    return str(name_or_path).strip().lower() == RANDOM_KONTEXT_SHALLOW


def _checked_name(name: str) -> str:
    name = str(name).strip().lower()
    if name not in (RANDOM_KONTEXT, RANDOM_KONTEXT_SHALLOW):
        raise ValueError(f"unknown random twin {name!r}; use {RANDOM_KONTEXT!r} or {RANDOM_KONTEXT_SHALLOW!r}")
    return name


def transformer_config(name: str) -> dict:
    """The twin's `FluxTransformer2DModel` configuration."""
    depths = SHALLOW_DEPTHS["transformer"] if _checked_name(name) == RANDOM_KONTEXT_SHALLOW else {}
    return {**TRANSFORMER_CONFIG, **depths}


def _create(build, device: torch.device, dtype: torch.dtype, generator: torch.Generator, keep: bool = True):
    """``build()``'s module with its parameters created on `device` in `dtype`, filled by
    `_initialise` (no float32 copy on the CPU first, and none of the libraries' slower inits).

    ``keep=False`` builds it on the meta device only, draws the random numbers its weights would
    have taken from `generator`, and returns None: the parts built after it get the same weights
    as when it is built.
    """
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        module = build()
    if not keep:
        _initialise(module, generator, fill=False)
        return None
    _materialise(module, device, dtype, generator)
    return module


_POOL_SIZE = 1_000_003
"""Random values are drawn once into a pool of this (prime) length and tiled over each weight:
drawing 12 B values one by one costs minutes on a CPU, tiling costs a memory copy. The period is
prime, so no two rows of a weight start at the same place in it."""


@torch.no_grad()
def _initialise(module: torch.nn.Module, generator: torch.Generator, fill: bool = True) -> None:
    """Random weights in +-1/sqrt(fan_in) (PyTorch's default range), biases 0, norm scales 1.

    Each weight reads the pool from its own random starting point, so no two weights are equal.
    ``fill=False`` draws the same random numbers and writes nothing (a part left out, see `_create`).
    """
    pool = None
    for name, parameter in module.named_parameters():
        if parameter.ndim >= 2:
            if pool is None:
                pool = torch.empty(_POOL_SIZE, dtype=torch.float32).uniform_(-1, 1, generator=generator)
                pool = torch.cat([pool, pool]).to(parameter.device)  # a window may wrap around the end
            bound = 1.0 / math.sqrt(math.prod(parameter.shape[1:]))
            offset = int(torch.randint(0, _POOL_SIZE, (1,), generator=generator))
            if not fill:
                continue
            flat = parameter.view(-1)
            for start in range(0, flat.numel(), _POOL_SIZE):
                chunk = flat[start:start + _POOL_SIZE]
                chunk.copy_(pool[offset:offset + chunk.numel()] * bound)
        elif not fill:
            continue
        elif name.endswith("bias"):
            parameter.zero_()
        else:
            parameter.fill_(1.0)


@torch.no_grad()
def _materialise(module: torch.nn.Module, device: torch.device, dtype: torch.dtype,
                 generator: torch.Generator) -> None:
    """Replace a module's meta parameters by random ones on `device` in `dtype` (buffers stay).

    A parameter shared by several submodules stays shared, and the modules a library keeps in
    float32 under half precision (T5's ``wo`` layers, `_keep_in_fp32_modules`) are float32 here
    too, so the twin's memory is the real model's."""
    keep_fp32 = set(getattr(module, "_keep_in_fp32_modules", None) or []) if dtype == torch.float16 else set()
    replaced: dict[int, torch.nn.Parameter] = {}
    for submodule_name, submodule in module.named_modules():
        wanted = torch.float32 if keep_fp32 & set(submodule_name.split(".")) else dtype
        for name, parameter in list(submodule._parameters.items()):
            if parameter is not None and parameter.is_meta:
                if id(parameter) not in replaced:
                    replaced[id(parameter)] = torch.nn.Parameter(
                        torch.empty(parameter.shape, device=device, dtype=wanted), requires_grad=False)
                submodule._parameters[name] = replaced[id(parameter)]
    module.to(device)  # buffers (position ids, ...) were made on the CPU
    _initialise(module, generator)
    if hasattr(module, "tie_weights"):  # T5 shares its input embedding with the encoder's
        module.tie_weights()


PARTS = ("text_encoder", "text_encoder_2", "vae", "transformer")
"""The pipeline's models, in the order their random weights are drawn."""


def build_random_kontext_components(name: str, device: str | torch.device = "cpu",
                                    dtype: torch.dtype = torch.float32, seed: int = 0,
                                    text_device: str | torch.device | None = None,
                                    parts=PARTS) -> dict:
    """The seven `FluxKontextPipeline` components of a random-weight twin, eval mode, frozen.

    Args:
        name: "random-kontext" or "random-kontext-shallow".
        device, dtype: where and in which precision the weights are created.
        seed: seeds the random initialisation.
        text_device: where the text encoders are created (default `device`; the CPU when they
            will be offloaded).
        parts: which of `PARTS` to create; the others are None (the transformer left out to be
            loaded quantized instead, the text encoders left out once the prompts are cached).
            A model's weights do not depend on which others are created: a part left out still
            draws its random numbers (`_create`).
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from .kontext import SCHEDULER_CONFIG
    from .nano.tokenizers import build_clip_tokenizer, build_t5_tokenizer

    name = _checked_name(name)
    if not set(parts) <= set(PARTS):
        raise ValueError(f"unknown parts {sorted(set(parts) - set(PARTS))}; choose from {', '.join(PARTS)}")
    depths = SHALLOW_DEPTHS if name == RANDOM_KONTEXT_SHALLOW else {}
    device = torch.device(device)
    text_device = device if text_device is None else torch.device(text_device)
    tokenizer = build_clip_tokenizer()
    tokenizer_2 = build_t5_tokenizer(max_length=TEXT_LENGTHS[name])
    clip_config = CLIPTextConfig(**{**CLIP_CONFIG, **depths.get("text_encoder", {})},
                                 bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.eos_token_id)
    t5_config = T5Config(**{**T5_CONFIG, **depths.get("text_encoder_2", {})}, pad_token_id=0, eos_token_id=1)
    builders = {
        "text_encoder": (lambda: CLIPTextModel(clip_config), text_device),
        "text_encoder_2": (lambda: T5EncoderModel(t5_config), text_device),
        "vae": (lambda: AutoencoderKL(**VAE_CONFIG), device),
        "transformer": (lambda: FluxTransformer2DModel(**transformer_config(name)), device),
    }
    generator = torch.Generator().manual_seed(seed)
    # One generator, in the order of PARTS: a part left out draws its numbers when a later one is built.
    drawn = PARTS[:max((PARTS.index(part) + 1 for part in parts), default=0)]
    components = dict.fromkeys(PARTS)
    for part in drawn:
        build, where = builders[part]
        module = _create(build, where, dtype, generator, keep=part in parts)
        components[part] = None if module is None else module.eval().requires_grad_(False)
    return dict(components, scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
                tokenizer=tokenizer, tokenizer_2=tokenizer_2)


def _cache_root() -> Path:
    return Path(os.environ.get("KONTEXT_LORA_CACHE", "~/.cache/kontext_lora_helpers")).expanduser()


def random_transformer_folder(name: str, dtype: torch.dtype, seed: int = 0) -> Path:
    """A diffusers transformer folder (config.json, sharded safetensors and their index) holding
    the twin's random weights in `dtype`; written once, one block at a time, then reused.

    Returns:
        the folder, under ``$KONTEXT_LORA_CACHE`` (default ``~/.cache/kontext_lora_helpers``).
    """
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import save_file

    from .fileio import write_json_atomically

    name = _checked_name(name)
    final = _cache_root() / f"{name}-{str(dtype).removeprefix('torch.')}-seed{seed}" / "transformer"
    if final.is_dir():  # renamed into place only once complete
        return final
    # Each process writes its own copy and renames it into place; under a multi-process launch the
    # first rename wins and the others discard theirs, so nobody reads a half-written shard.
    folder = final.with_name(f"transformer.{os.getpid()}.partial")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with init_empty_weights():
        model = FluxTransformer2DModel(**transformer_config(name))
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for child_name, child in model.named_children():
        if isinstance(child, torch.nn.ModuleList):
            parts += [(f"{child_name}.{index}", block) for index, block in enumerate(child)]
        else:
            parts.append((child_name, child))
    weight_map, total_size = {}, 0
    for number, (prefix, part) in enumerate(parts):
        part.to_empty(device="cpu")
        _initialise(part, generator)
        state = {f"{prefix}.{key}": value.to(dtype).contiguous() for key, value in part.state_dict().items()}
        shard = f"diffusion_pytorch_model-{number + 1:05d}-of-{len(parts):05d}.safetensors"
        if state:
            save_file(state, str(folder / shard), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(state, shard))
            total_size += sum(value.numel() * value.element_size() for value in state.values())
        part.to("meta")  # free this block before the next one
    model.save_config(folder)
    write_json_atomically(folder / "diffusion_pytorch_model.safetensors.index.json",
                          {"metadata": {"total_size": total_size}, "weight_map": weight_map})
    try:
        os.replace(folder, final)
    except OSError:  # another process finished first
        shutil.rmtree(folder, ignore_errors=True)
    return final
