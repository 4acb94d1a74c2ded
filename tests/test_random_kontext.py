"""The random-weight twins of FLUX.1 Kontext: the real architecture runs through every code path.

`random-kontext-shallow` has the real widths (3072 in the transformer, 4096 in T5, the whole FLUX
VAE) with one block of each kind; on the CPU it restores at an odd size in tiles and its LoRA
exports to both layouts here, and it trains (gradient checkpointing, cached prompt embeddings, an
int8 base, the VGG term) and validates through the pre-flight in `test_benchmark_scripts.py`, so a
shape assumption that only holds at nano's size fails. `random-kontext` itself
is only built on the meta device here (its 16.8 B parameters would take 67 GB in float32).
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from kontext_lora_helpers import inference, lora, random_kontext, restore
from kontext_lora_helpers.models import load_pipeline, max_sequence_length_for, model_source, native_resolution

pytestmark = pytest.mark.usefixtures("private_cache")

SHALLOW = random_kontext.RANDOM_KONTEXT_SHALLOW


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory):
    """The quantized path writes the random transformer as a checkpoint folder: keep it out of ~/.cache."""
    import os

    previous = os.environ.get("KONTEXT_LORA_CACHE")
    os.environ["KONTEXT_LORA_CACHE"] = str(tmp_path_factory.mktemp("kontext_lora_cache"))
    yield
    if previous is None:
        os.environ.pop("KONTEXT_LORA_CACHE")
    else:
        os.environ["KONTEXT_LORA_CACHE"] = previous


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_the_full_twin_has_flux_kontext_dev_s_published_sizes():
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    with init_empty_weights():
        transformer = FluxTransformer2DModel(**random_kontext.transformer_config(random_kontext.RANDOM_KONTEXT))
        vae = AutoencoderKL(**random_kontext.VAE_CONFIG)
        clip = CLIPTextModel(CLIPTextConfig(**random_kontext.CLIP_CONFIG))
        t5 = T5EncoderModel(T5Config(**random_kontext.T5_CONFIG))
    t5.tie_weights()  # the embedding is shared with the encoder's, as when the model is built or loaded
    # FLUX.1 [dev]'s transformer: 11.9 B; its VAE 84 M; CLIP-L's text tower 123 M; T5-XXL's encoder 4.76 B
    assert parameter_count(transformer) == 11_901_408_320
    assert parameter_count(vae) == 83_819_683
    assert 123_000_000 < parameter_count(clip) < 124_000_000
    assert parameter_count(t5) == 4_762_310_656
    assert len(transformer.transformer_blocks) == 19 and len(transformer.single_transformer_blocks) == 38


@pytest.fixture(scope="module")
def shallow_pipe():
    return load_pipeline(SHALLOW, device="cpu")


def test_the_shallow_twin_keeps_every_width_and_is_a_kontext_pipeline(shallow_pipe):
    from diffusers import FluxKontextPipeline

    assert model_source(SHALLOW) == "random" and isinstance(shallow_pipe, FluxKontextPipeline)
    transformer = shallow_pipe.transformer
    assert (len(transformer.transformer_blocks), len(transformer.single_transformer_blocks)) == (1, 1)
    assert transformer.config.num_attention_heads * transformer.config.attention_head_dim == 3072
    assert transformer.config.joint_attention_dim == shallow_pipe.text_encoder_2.config.d_model == 4096
    assert shallow_pipe.vae.config.block_out_channels == (128, 256, 512, 512)
    assert native_resolution(shallow_pipe) == 1024 and max_sequence_length_for(shallow_pipe) == 64
    assert shallow_pipe.transformer.dtype == torch.float32 and shallow_pipe.vae.device.type == "cpu"


def test_each_model_of_the_twin_is_the_same_whichever_others_are_loaded_with_it(shallow_pipe):
    """The trainer loads the text encoders alone, then everything but them
    (`train.load_pipeline_and_prompt_cache`); each model must still be the whole twin's (one random
    generator serves all four, so a model left out still draws its numbers)."""
    from kontext_lora_helpers.models import load_text_encoders

    def assert_same_weights(part, loaded):
        expected, actual = getattr(shallow_pipe, part).state_dict(), getattr(loaded, part).state_dict()
        assert expected.keys() == actual.keys(), part
        assert all(torch.equal(expected[key], actual[key]) for key in expected), part

    text_side = load_text_encoders(SHALLOW, device="cpu")
    assert text_side.transformer is None and text_side.vae is None
    assert max_sequence_length_for(text_side) == max_sequence_length_for(shallow_pipe) == 64
    for part in ("text_encoder", "text_encoder_2"):
        assert_same_weights(part, text_side)
    del text_side
    rest = load_pipeline(SHALLOW, device="cpu", text_encoders=False)
    assert rest.text_encoder is None and rest.text_encoder_2 is None
    for part in ("vae", "transformer"):
        assert_same_weights(part, rest)


def test_a_lora_at_the_real_width_exports_to_both_layouts_exactly(shallow_pipe, tmp_path):
    transformer = shallow_pipe.transformer
    lora.add_lora(transformer, rank=4)
    try:
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, parameter in transformer.named_parameters():
                if "lora_B" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.01)
        lora.save_lora(transformer, tmp_path / "lora")
    finally:
        transformer.delete_adapters("default")
    layers, source = lora.read_lora(tmp_path / "lora")
    assert source == "diffusers" and any(name.startswith("single_transformer_blocks.0") for name in layers)
    # diffusers' kohya converter has FLUX.1's widths written in (linear1 = 3072 x 3 + 12288): at the
    # real width it reads the ComfyUI file back as the LoRA that was written, exactly.
    comfy = lora.convert_lora_file(tmp_path / "lora", tmp_path / "comfy.safetensors", "comfyui")
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers
    from safetensors.torch import load_file

    converted = _convert_kohya_flux_lora_to_diffusers(load_file(str(comfy)))
    written = load_file(str(tmp_path / "lora" / lora.LORA_WEIGHT_NAME))
    assert set(converted) == set(written)
    for key, value in written.items():
        torch.testing.assert_close(converted[key], value)  # alpha = rank: diffusers' scale is 1
    back = lora.convert_lora_file(comfy, tmp_path / "back.safetensors", "diffusers")
    layers_back, _ = lora.read_lora(back)
    for name, layer in layers.items():
        torch.testing.assert_close(layers_back[name].delta(), layer.delta(), rtol=0, atol=1e-6)


def test_the_shallow_twin_restores_an_odd_size_in_tiles(shallow_pipe):
    # On a CPU the real VAE at 1024 px costs minutes, so the tiles here are 64 px; the working size
    # of a whole 100 x 70 image with the real model is checked as arithmetic.
    assert inference.working_size(100, 70, 1024, 16) == (1216, 848)
    photo = Image.effect_noise((100, 70), 40).convert("RGB")
    layout = restore.plan_tiles(100, 70, 64, 16)
    assert (len(layout.xs), len(layout.ys)) == (2, 2)
    tiled = restore.restore_image(shallow_pipe, photo, num_inference_steps=1, tile=True, tile_size=64, batch_size=4)
    assert tiled.size == (100, 70)
    with pytest.raises(ValueError, match="multiple of 16"):
        restore.restore_image(shallow_pipe, photo, tile=True, tile_size=40)


def test_preflight_names_the_twin_and_refuses_impossible_settings_before_building_it(data_samples, capsys):
    from kontext_lora_helpers import preflight

    assert preflight.twin_of("black-forest-labs/FLUX.1-Kontext-dev") == "random-kontext"
    assert preflight.twin_of("/models/flux-kontext") == "random-kontext"
    assert preflight.twin_of("nano") == "nano" and preflight.twin_of(SHALLOW) == SHALLOW
    # refused by the trainer's own checks, before anything is built (the full run is in
    # tests/test_benchmark_scripts.py, through the card-profile script)
    assert preflight.main(["--pretrained_model_name_or_path", SHALLOW, "--hr_root", str(data_samples),
                           "--mixed_precision", "fp16"]) == 1
    assert "fp16 needs a CUDA GPU" in capsys.readouterr().err


def test_materialised_weights_differ_stay_shared_and_keep_float32_where_the_library_does():
    from accelerate import init_empty_weights
    from transformers import T5Config, T5EncoderModel

    with init_empty_weights(include_buffers=False):
        t5 = T5EncoderModel(T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=2,
                                     feed_forward_proj="gated-gelu"))
    random_kontext._materialise(t5, torch.device("cpu"), torch.float16, torch.Generator().manual_seed(0))
    attention, feed_forward = t5.encoder.block[0].layer[0].SelfAttention, t5.encoder.block[0].layer[1].DenseReluDense
    # under fp16 transformers keeps T5's `wo` in float32 (`_keep_in_fp32_modules`): so does the twin
    assert feed_forward.wo.weight.dtype == torch.float32 and attention.q.weight.dtype == torch.float16
    assert t5.shared.weight is t5.encoder.embed_tokens.weight
    assert not torch.equal(attention.q.weight, attention.k.weight)  # each weight its own window of the pool
    assert not any(parameter.is_meta for parameter in t5.parameters())
    bound = 1 / 16 ** 0.5
    assert 0.5 * bound < attention.q.weight.float().abs().max() <= bound
