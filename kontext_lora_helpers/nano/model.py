"""Nano Kontext: the real FLUX.1 Kontext classes at a size a laptop CPU can train and run.

Every component is the class `FluxKontextPipeline` uses for FLUX.1-Kontext-dev, built from the
configs below, so the course's code path is the real one:

| component        | FLUX.1-Kontext-dev                               | nano                                   |
|------------------|--------------------------------------------------|----------------------------------------|
| transformer      | 19 double + 38 single blocks, 24 heads of 128    | 2 double + 4 single blocks, 4 heads of 32 |
|                  | guidance embedding, RoPE axes (16, 56, 56)       | guidance embedding, RoPE axes (8, 12, 12) |
| VAE              | 8x down, 16 latent channels, 1024 px             | 2x down, 16 latent channels, 64 px     |
| text encoder     | CLIP-L (pooled 768)                              | 2-layer CLIP (pooled 64), random, frozen |
| text encoder 2   | T5-XXL (4096 wide, 512 tokens)                   | 2-layer T5 (64 wide, 32 tokens), random, frozen |
| scheduler        | FlowMatchEulerDiscrete, dynamic shifting         | the same config                        |

The packing is unchanged: 16 latent channels, 2x2 patches -> 64 values per token, so a 64x64 image is
a 16x32x32 latent and 16x16 = 256 tokens; Kontext appends the control image's 256 tokens after them.
The VAE halves the sides where FLUX's divides them by 8: 16 numbers for each 2x2 pixel block (12
values) let a small VAE reproduce noise and fine detail (36 dB on unseen photos). A nano VAE that
divided by 4 (a 4x4 block, 48 values, in 16 numbers) smoothed noise away by itself and capped every
restoration near 24 dB, below anything a LoRA could show.
The text encoders keep their random initialisation (seeded, frozen, shipped with the weights): the
transformer learned to read their outputs, which is all a conditioning path needs.
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxKontextPipeline,
    FluxTransformer2DModel,
)
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from ..kontext import SCHEDULER_CONFIG  # FLUX.1's scheduler config, shared with the twins
from .tokenizers import build_clip_tokenizer, build_t5_tokenizer

NANO_RESOLUTION = 64
"""Native side of nano images in pixels: 64x64 RGB -> 16x32x32 latents -> 256 tokens."""

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "nano_weights"
"""Where the shipped nano weights live (package data): one safetensors file per component."""

COMPONENT_FILES = {
    "transformer": "transformer.safetensors",
    "vae": "vae.safetensors",
    "text_encoder": "text_encoder.safetensors",
    "text_encoder_2": "text_encoder_2.safetensors",
}
FACTORS_FILE = "vae_latent_factors.json"
"""Holds the VAE's `shift_factor` and `scaling_factor`, measured on data by `nano train vae`."""

TRANSFORMER_CONFIG = dict(
    patch_size=1,
    in_channels=64,  # 16 latent channels x 2x2 patch
    num_layers=2,
    num_single_layers=4,
    attention_head_dim=32,
    num_attention_heads=4,
    joint_attention_dim=64,  # = T5 d_model
    pooled_projection_dim=64,  # = CLIP hidden size
    guidance_embeds=True,  # FLUX.1-dev / Kontext-dev are guidance-distilled
    axes_dims_rope=(8, 12, 12),  # sums to attention_head_dim, like (16, 56, 56) sums to 128
)

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    block_out_channels=(32, 64),  # two levels -> vae_scale_factor 2 ** 1 = 2
    layers_per_block=1,
    latent_channels=16,
    norm_num_groups=4,
    mid_block_add_attention=False,  # at 32x32 latents the convolutions already see the whole crop
    sample_size=NANO_RESOLUTION,
    # FLUX's VAE has no quant convs; the factors below are placeholders until measured on data.
    use_quant_conv=False,
    use_post_quant_conv=False,
    scaling_factor=1.0,
    shift_factor=0.0,
)


def zero_residual_branches(vae: AutoencoderKL) -> AutoencoderKL:
    """Zero the last convolution of every ResNet block, so each block starts as its skip path.

    The residual branches then add nothing at first, and training starts from the plain chain of
    input, down/up-sampling, shortcut and output convolutions instead of from a sum of random
    branches (measured on a nano VAE: a faster start, the same end point).
    """
    for name, module in vae.named_modules():
        if "resnets" in name and name.endswith("conv2"):
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.zeros_(module.bias)
    return vae


def _clip_config(vocab_size: int, bos_token_id: int, eos_token_id: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=64,
        hidden_act="quick_gelu",
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
    )


def _t5_config(vocab_size: int) -> T5Config:
    return T5Config(
        vocab_size=vocab_size,
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=32,
        feed_forward_proj="gated-gelu",  # T5 v1.1, as in FLUX
        dropout_rate=0.0,
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=0,
        eos_token_id=1,
    )


def build_nano_components(seed: int = 0, parts=None) -> dict:
    """Fresh, randomly initialised nano components (the starting point of `nano train`).

    Args:
        seed: seeds `torch` before each component so the random text encoders are reproducible.
        parts: which of `COMPONENT_FILES` ("transformer", "vae", "text_encoder", "text_encoder_2")
            to build; default all. The others are None. Each component is seeded on its own, so
            it is the same whichever others are built.

    Returns:
        dict of the seven `FluxKontextPipeline` components, fp32 on CPU (tokenizers and scheduler
        always; a model left out of `parts` is None).
    """
    parts = _checked_parts(parts)
    tokenizer = build_clip_tokenizer()
    tokenizer_2 = build_t5_tokenizer()
    builders = {
        "text_encoder": lambda: CLIPTextModel(_clip_config(len(tokenizer), tokenizer.bos_token_id,
                                                           tokenizer.eos_token_id)),
        "text_encoder_2": lambda: T5EncoderModel(_t5_config(len(tokenizer_2))),
        "vae": lambda: zero_residual_branches(AutoencoderKL(**VAE_CONFIG)),
        "transformer": lambda: FluxTransformer2DModel(**TRANSFORMER_CONFIG),
    }
    models = {}
    for offset, (name, build) in enumerate(builders.items()):
        torch.manual_seed(seed + offset)
        models[name] = build().eval().requires_grad_(False) if name in parts else None
    return dict(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
        vae=models["vae"],
        text_encoder=models["text_encoder"],
        tokenizer=tokenizer,
        text_encoder_2=models["text_encoder_2"],
        tokenizer_2=tokenizer_2,
        transformer=models["transformer"],
    )


def _checked_parts(parts) -> set[str]:
    parts = set(COMPONENT_FILES if parts is None else parts)
    if not parts <= set(COMPONENT_FILES):
        raise ValueError(f"unknown nano parts {sorted(parts - set(COMPONENT_FILES))}; "
                         f"choose from {', '.join(COMPONENT_FILES)}")
    return parts


def save_nano_weights(components: dict, weights_dir: Path | str = WEIGHTS_DIR, parts=None) -> None:
    """Write the nano weights (fp32 safetensors, one file a component) and the VAE factors.

    Args:
        components: as returned by `build_nano_components` (possibly trained).
        weights_dir: destination folder, created if missing.
        parts: which of `COMPONENT_FILES` to write (default all).
    """
    weights_dir = Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    for name in parts or COMPONENT_FILES:
        # clone: T5 ties its input embedding to `shared`, and safetensors refuses shared storage
        state = {k: v.detach().float().clone().contiguous() for k, v in components[name].state_dict().items()}
        save_file(state, str(weights_dir / COMPONENT_FILES[name]), metadata={"format": "pt"})
    vae_config = components["vae"].config
    factors = {"shift_factor": float(vae_config.shift_factor), "scaling_factor": float(vae_config.scaling_factor)}
    (weights_dir / FACTORS_FILE).write_text(json.dumps(factors, indent=2) + "\n")


def load_nano_components(weights_dir: Path | str = WEIGHTS_DIR, allow_missing: bool = False, parts=None) -> dict:
    """Build the nano components and load trained weights into them.

    Args:
        weights_dir: folder with the safetensors files written by `save_nano_weights`.
        allow_missing: keep random initialisation for components whose file is absent (used while
            training the parts in order: the VAE first, then the editor).
        parts: which models to build and load (`build_nano_components`); default all.

    Raises:
        FileNotFoundError: a weight file is missing and `allow_missing` is False.
    """
    weights_dir = Path(weights_dir)
    components = build_nano_components(parts=parts)
    factors_path = weights_dir / FACTORS_FILE
    if factors_path.exists() and components["vae"] is not None:
        factors = json.loads(factors_path.read_text())
        components["vae"].register_to_config(**factors)
    for name, filename in COMPONENT_FILES.items():
        if components[name] is None:
            continue
        path = weights_dir / filename
        if not path.exists():
            if allow_missing:
                continue
            raise FileNotFoundError(
                f"Nano weight file {path} is missing. Reinstall the package, or rebuild the weights "
                "with `python -m kontext_lora_helpers.nano train all`."
            )
        components[name].load_state_dict(load_file(str(path)), strict=True)
    return components


def build_nano_pipeline(weights_dir: Path | str = WEIGHTS_DIR, allow_missing: bool = False,
                        parts=None) -> FluxKontextPipeline:
    """The nano `FluxKontextPipeline` (fp32, CPU) with the shipped weights.

    Run it at its native size: ``pipe(image=img, prompt=p, height=64, width=64, max_area=64 * 64,
    _auto_resize=False, max_sequence_length=32)``; without those arguments the pipeline works at
    1024x1024 with 512 text tokens, which nano was not trained for. `models.call_kwargs(pipe, 64, 64)`
    returns these arguments for any pipeline. ``parts`` builds only some models (the rest None), as
    `models.load_text_encoders` does.
    """
    return FluxKontextPipeline(**load_nano_components(weights_dir, allow_missing=allow_missing, parts=parts))


MODEL_CARD_NAME = "README.md"
"""The model card `nano export` writes next to the pipeline files (what the Hub shows for a folder)."""


def model_card_text(pipeline_dir: str = "path/to/nano") -> str:
    """The model card of an exported nano folder: what nano is and the exact call it needs.

    Plain diffusers defaults (a 1024x1024 working area, prompts padded to 512 T5 tokens) run nano
    far outside what it was trained on and give poor images without any warning, so the card
    spells out every argument. Every number comes from the code's constants (`NANO_RESOLUTION`,
    `NANO_MAX_SEQUENCE_LENGTH`, `models.GUIDANCE_SCALE`, the configs above), so the card cannot
    drift from the weights.

    Args:
        pipeline_dir: the folder as the reader should pass it to ``from_pretrained`` (``nano export``
            gives the path it was called with).

    Returns:
        Markdown text with one runnable Python block (Pillow, torch and diffusers only).
    """
    from ..kontext import GUIDANCE_SCALE, REAL_MODEL_ID, default_num_inference_steps
    from ..prompts import DEFAULT_INSTANCE_PROMPT
    from .edits import EDITS
    from .tokenizers import NANO_MAX_SEQUENCE_LENGTH

    side = NANO_RESOLUTION
    steps = default_num_inference_steps(FluxKontextPipeline)
    # what diffusers does when not told otherwise, read from the installed pipeline's signature
    defaults = inspect.signature(FluxKontextPipeline.__call__).parameters
    default_side = math.isqrt(defaults["max_area"].default)
    default_tokens = defaults["max_sequence_length"].default
    vae_factor = 2 ** (len(VAE_CONFIG["block_out_channels"]) - 1)
    heads, head_dim = TRANSFORMER_CONFIG["num_attention_heads"], TRANSFORMER_CONFIG["attention_head_dim"]
    tokens = (side // vae_factor // 2) ** 2  # 2x2 latent patches per token
    edits = ", ".join(EDITS)
    return f"""---
library_name: diffusers
pipeline_tag: image-to-image
tags: [flux, flux-kontext, teaching, tiny]
---

# Nano Kontext

A tiny stand-in for [{REAL_MODEL_ID}](https://huggingface.co/{REAL_MODEL_ID}) made for teaching
(the `kontext_lora_helpers` course on restoration LoRAs). Every component is the class
`FluxKontextPipeline` uses for the real model, at a size a laptop CPU can train and run:

- transformer: `FluxTransformer2DModel` with {TRANSFORMER_CONFIG["num_layers"]} double-stream and
  {TRANSFORMER_CONFIG["num_single_layers"]} single-stream blocks, {heads} heads of {head_dim}, guidance embedding;
- VAE: `AutoencoderKL`, {vae_factor}x down, {VAE_CONFIG["latent_channels"]} latent channels, so a
  {side}x{side} image is {tokens} tokens (plus {tokens} for the image being edited);
- text encoders: small CLIP and T5 encoders with tokenizers built from code; their weights are
  random (seeded) and frozen: the transformer learned to read them.

All weights started from random initialisation and were trained on CPU by
`python -m kontext_lora_helpers.nano train all`: the VAE to reconstruct photos, the transformer as
a small editor that follows {len(EDITS)} prompted edits ({edits}) and returns its input for any other
instruction. Nano does **not** restore photos by itself, and it is no general image model: it
exists so that the course's code path (the real classes, latents, LoRA training and loading) runs
in minutes on a CPU.

## Use it: the arguments nano needs

Nano works at **{side}x{side} pixels** and reads at most **{NANO_MAX_SEQUENCE_LENGTH} T5 tokens**.
Called with diffusers' defaults it works at a {default_side}x{default_side} area with prompts padded
to {default_tokens} tokens, and the output is poor with no warning. Pass every argument below:

```python
import torch
from diffusers import FluxKontextPipeline
from PIL import Image, ImageOps

pipe = FluxKontextPipeline.from_pretrained({json.dumps(str(pipeline_dir))})
# pipe.load_lora_weights("path/to/lora")  # a LoRA trained by the course: its --output_dir

photo = ImageOps.fit(Image.open("photo.png").convert("RGB"), ({side}, {side}))  # centre crop to {side}x{side}
result = pipe(
    image=photo,
    prompt={json.dumps(DEFAULT_INSTANCE_PROMPT)},
    height={side}, width={side},
    max_area={side} * {side}, _auto_resize=False,
    max_sequence_length={NANO_MAX_SEQUENCE_LENGTH},
    guidance_scale={GUIDANCE_SCALE},
    num_inference_steps={steps},
    generator=torch.Generator().manual_seed(0),
).images[0]
result.save("result.png")
```

- `height`, `width`, `max_area`, `_auto_resize=False`: work at exactly {side}x{side}; otherwise the
  pipeline rescales to a {default_side}x{default_side} area and snaps the input to one of Kontext's preferred sizes.
- `max_sequence_length={NANO_MAX_SEQUENCE_LENGTH}`: nano's T5 was trained on {NANO_MAX_SEQUENCE_LENGTH} tokens
  (its `tokenizer_2.model_max_length`); the default {default_tokens} feeds it padding it never saw.
- `guidance_scale={GUIDANCE_SCALE}`: FLUX.1 Kontext-dev's distilled guidance, the value the course trains
  and restores with. `num_inference_steps={steps}` is the pipeline's default.

## With a restoration LoRA trained by the course

Without a LoRA the prompt above returns the photo about as it was (nano never learned to restore). The
course's training command (`python -m kontext_lora_helpers.train --pretrained_model_name_or_path nano
... --output_dir DIR`) writes a LoRA that `pipe.load_lora_weights(DIR)` loads (uncomment that line);
the same call then restores {side}x{side} photos degraded the way the LoRA was trained on.
"""

