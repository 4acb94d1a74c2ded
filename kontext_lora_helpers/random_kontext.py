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
by every command where a model path is (``--pretrained_model_name_or_path random-kontext``).
**Their outputs are noise**: only shapes, memory and time mean anything. The tokenizers are built in
code (nano's vocabularies, with the real models' vocabulary sizes in the encoders), so the text
encoders see valid ids; the text length is the real 512 T5 tokens.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = [
    "RANDOM_KONTEXT",
    "RANDOM_KONTEXT_SHALLOW",
    "TRANSFORMER_CONFIG",
    "VAE_CONFIG",
    "build_random_kontext_pipeline",
    "is_random_kontext",
]

RANDOM_KONTEXT = "random-kontext"
RANDOM_KONTEXT_SHALLOW = "random-kontext-shallow"
REAL_MAX_SEQUENCE_LENGTH = 512

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


@contextlib.contextmanager
def _created_on(device: torch.device, dtype: torch.dtype):
    """New parameters are created on `device` in `dtype` (no float32 copy on the CPU first)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_random_kontext_components(name: str, device: str | torch.device = "cpu",
                                    dtype: torch.dtype = torch.float32, seed: int = 0,
                                    transformer: bool = True) -> dict:
    """The seven `FluxKontextPipeline` components of a random-weight twin, eval mode, frozen.

    Args:
        name: "random-kontext" or "random-kontext-shallow".
        device, dtype: where and in which precision the weights are created.
        seed: seeds the random initialisation (on `device`'s generator).
        transformer: False leaves the transformer out (None), for loading it quantized instead.
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from .nano.model import SCHEDULER_CONFIG
    from .nano.tokenizers import build_clip_tokenizer, build_t5_tokenizer

    name = str(name).strip().lower()
    if name not in (RANDOM_KONTEXT, RANDOM_KONTEXT_SHALLOW):
        raise ValueError(f"unknown random twin {name!r}; use {RANDOM_KONTEXT!r} or {RANDOM_KONTEXT_SHALLOW!r}")
    depths = SHALLOW_DEPTHS if name == RANDOM_KONTEXT_SHALLOW else {}
    device = torch.device(device)
    tokenizer = build_clip_tokenizer()
    tokenizer_2 = build_t5_tokenizer(max_length=REAL_MAX_SEQUENCE_LENGTH)
    clip_config = CLIPTextConfig(**{**CLIP_CONFIG, **depths.get("text_encoder", {})},
                                 bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.eos_token_id)
    t5_config = T5Config(**{**T5_CONFIG, **depths.get("text_encoder_2", {})}, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(seed)
    with _created_on(device, dtype):
        components = dict(
            vae=AutoencoderKL(**VAE_CONFIG),
            text_encoder=CLIPTextModel(clip_config),
            text_encoder_2=T5EncoderModel(t5_config),
            transformer=FluxTransformer2DModel(**{**TRANSFORMER_CONFIG, **depths.get("transformer", {})})
            if transformer else None,
        )
    for module in components.values():
        if module is not None:
            module.eval().requires_grad_(False)
    return dict(components, scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
                tokenizer=tokenizer, tokenizer_2=tokenizer_2)


def build_random_kontext_pipeline(name: str, device: str | torch.device = "cpu",
                                  dtype: torch.dtype = torch.float32, seed: int = 0):
    """A `FluxKontextPipeline` of the named random twin, its weights created on `device` in `dtype`."""
    from diffusers import FluxKontextPipeline

    return FluxKontextPipeline(**build_random_kontext_components(name, device, dtype, seed))
