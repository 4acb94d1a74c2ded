"""LoRA export: diffusers <-> ComfyUI (kohya, fused BFL layers) conversion, merging, the command line.

The checks are numerical: fused layers must reproduce every member's update, a round trip must give
back the very same tensors, and diffusers itself must read the ComfyUI file to the same pixels.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from kontext_lora_helpers import export, objective
from kontext_lora_helpers import lora as lora_ops
from kontext_lora_helpers.models import call_kwargs, load_pipeline


RANK = 4
ALPHA = 8  # scale alpha / rank = 2: a wrong alpha anywhere changes the numbers
NANO_WIDTH, NANO_MLP = 128, 512
FUSED_SINGLE_MEMBERS = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")


def nano_pipe():
    return load_pipeline("nano", device="cpu")


def make_lora(folder, rank=RANK, lora_alpha=ALPHA, target_modules=None, seed=0):
    """Save a nano LoRA with random (non-zero) B matrices, as training would leave them."""
    transformer = nano_pipe().transformer
    lora_ops.add_lora(transformer, rank=rank, lora_alpha=lora_alpha, target_modules=target_modules)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in transformer.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return lora_ops.save_lora(transformer, folder)


@pytest.fixture(scope="module")
def full_lora(tmp_path_factory):
    """Every default target (all double- and single-block projections), rank 4, alpha 8."""
    return make_lora(tmp_path_factory.mktemp("full_lora"))


@pytest.fixture(scope="module")
def diffusers_kohya_compatible_lora(tmp_path_factory):
    """All default targets except the single blocks' q/k/v/proj_mlp.

    Those four fuse into BFL's ``linear1``, which diffusers' kohya converter splits with FLUX.1-dev's
    hard-coded widths (``dims=[3072, 3072, 3072, 12288]``): on nano (width 128) it stops at
    ``assert sum(dims) == up_weight.shape[0]``. `test_diffusers_converter_splits_full_size_flux_layers`
    checks ``linear1`` against that converter at FLUX.1's real width instead.
    """
    targets = [
        name
        for name in lora_ops.default_target_modules(nano_pipe().transformer)
        if not (name.startswith("single_transformer_blocks.") and name.split(".", 2)[2] in FUSED_SINGLE_MEMBERS)
    ]
    return make_lora(tmp_path_factory.mktemp("kohya_compatible_lora"), target_modules=targets, seed=1)


def restore(pipe, image) -> torch.Tensor:
    return pipe(
        image=image, prompt="restore this photo", num_inference_steps=2,
        generator=torch.Generator().manual_seed(0), output_type="pt", **call_kwargs(pipe, 64, 64),
    ).images


def degraded_image():
    return torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))


def transformer_inputs(seed=0):
    """Inputs of one nano transformer call: a 32x32 image's latents and random text conditioning."""
    generator = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=generator)  # noqa: E731
    text = objective.PromptEmbeddings(make(1, 8, 64), make(1, 64), torch.zeros(8, 3))
    sigmas = torch.tensor([0.6])
    noisy = objective.noisy_latents(make(1, 16, 8, 8), make(1, 16, 8, 8), sigmas)
    return objective.build_transformer_inputs(noisy, make(1, 16, 8, 8), text, sigmas)


def transformer_output(transformer, inputs) -> torch.Tensor:
    with torch.no_grad():
        return transformer(**inputs)[0]


def tensors_of(path):
    with safe_open(str(path), "pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata()


def random_layer(out_features, in_features, rank, alpha, seed):
    generator = torch.Generator().manual_seed(seed)
    return lora_ops.LoraLayer(
        down=torch.randn(rank, in_features, generator=generator),
        up=torch.randn(out_features, rank, generator=generator),
        alpha=float(alpha),
    )


# --- the ComfyUI layout ----------------------------------------------------------------------------


def test_comfyui_keys_shapes_and_alphas(full_lora, tmp_path):
    output = lora_ops.convert_lora_file(full_lora, tmp_path / "comfy.safetensors", "comfyui")
    tensors, metadata = tensors_of(output)
    double = ("img_attn_qkv", "img_attn_proj", "img_mlp_0", "img_mlp_2",
              "txt_attn_qkv", "txt_attn_proj", "txt_mlp_0", "txt_mlp_2")
    modules = [f"lora_unet_double_blocks_{i}_{name}" for i in range(2) for name in double]
    modules += [f"lora_unet_single_blocks_{i}_{name}" for i in range(4) for name in ("linear1", "linear2")]
    assert set(tensors) == {f"{m}.{kind}" for m in modules for kind in ("lora_down.weight", "lora_up.weight", "alpha")}
    assert "lora_adapter_metadata" not in metadata  # diffusers would apply it on top of the kohya alphas

    qkv = "lora_unet_double_blocks_1_txt_attn_qkv"
    assert tensors[f"{qkv}.lora_down.weight"].shape == (3 * RANK, NANO_WIDTH)
    assert tensors[f"{qkv}.lora_up.weight"].shape == (3 * NANO_WIDTH, 3 * RANK)
    linear1 = "lora_unet_single_blocks_3_linear1"
    assert tensors[f"{linear1}.lora_down.weight"].shape == (4 * RANK, NANO_WIDTH)
    assert tensors[f"{linear1}.lora_up.weight"].shape == (3 * NANO_WIDTH + NANO_MLP, 4 * RANK)
    # alpha / (fused rank) must stay ALPHA / RANK = 2
    assert tensors[f"{qkv}.alpha"].item() == 2 * 3 * RANK
    assert tensors[f"{linear1}.alpha"].item() == 2 * 4 * RANK
    assert tensors["lora_unet_single_blocks_0_linear2.alpha"].item() == ALPHA
    assert json.loads(metadata[lora_ops.FUSED_RANKS_METADATA_KEY])[linear1] == [RANK] * 4


def test_fused_layers_apply_each_members_update_the_comfyui_way(full_lora, tmp_path):
    """ComfyUI patches W_bfl += (alpha / lora_down.shape[0]) * lora_up @ lora_down; the BFL weight
    of a fused layer is the members' weights stacked by rows, so its update must be the members'
    scaled updates stacked the same way."""
    layers, source_format = lora_ops.read_lora(full_lora)
    assert source_format == "diffusers" and len(layers) == 2 * 12 + 4 * 5
    tensors, _ = tensors_of(lora_ops.write_lora(layers, tmp_path / "comfy.safetensors", "comfyui"))

    def comfy_update(name):
        down, up = tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"]
        return tensors[f"{name}.alpha"].item() / down.shape[0] * (up @ down)

    for block in range(2):
        for kohya, members in (("img_attn_qkv", ("attn.to_q", "attn.to_k", "attn.to_v")),
                               ("txt_attn_qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"))):
            expected = torch.cat([layers[f"transformer_blocks.{block}.{m}"].delta() for m in members])
            torch.testing.assert_close(comfy_update(f"lora_unet_double_blocks_{block}_{kohya}"), expected)
        expected = layers[f"transformer_blocks.{block}.ff_context.net.2"].delta()
        torch.testing.assert_close(comfy_update(f"lora_unet_double_blocks_{block}_txt_mlp_2"), expected)
    for block in range(4):
        expected = torch.cat([layers[f"single_transformer_blocks.{block}.{m}"].delta() for m in FUSED_SINGLE_MEMBERS])
        torch.testing.assert_close(comfy_update(f"lora_unet_single_blocks_{block}_linear1"), expected)
    assert layers["transformer_blocks.0.attn.to_q"].delta().abs().max() > 1e-3  # not a trivially zero LoRA


def test_diffusers_comfyui_diffusers_round_trip_is_identical(full_lora, tmp_path):
    comfy = lora_ops.convert_lora_file(full_lora, tmp_path / "comfy.safetensors", "comfyui")
    back = lora_ops.convert_lora_file(comfy, tmp_path / "back" / "pytorch_lora_weights.safetensors", "diffusers")
    original, original_metadata = tensors_of(full_lora)
    returned, returned_metadata = tensors_of(back)
    assert set(returned) == set(original)
    for key, tensor in original.items():
        assert torch.equal(returned[key], tensor), key
    config = json.loads(returned_metadata["lora_adapter_metadata"])
    assert (config["transformer.r"], config["transformer.lora_alpha"]) == (RANK, ALPHA)
    assert json.loads(original_metadata["lora_adapter_metadata"])["transformer.lora_alpha"] == ALPHA

    # ...and diffusers loads the returned file (including the single blocks' linear1 members) to the
    # same pixels as the original.
    with_original, with_returned = nano_pipe(), nano_pipe()
    with_original.load_lora_weights(full_lora)
    with_returned.load_lora_weights(back)
    image = degraded_image()
    expected = restore(with_original, image)
    torch.testing.assert_close(restore(with_returned, image), expected, rtol=0, atol=1e-6)
    assert (expected - restore(nano_pipe(), image)).abs().max() > 1e-2  # the LoRA changes the image


def test_diffusers_loads_the_comfyui_file_to_the_same_pixels(diffusers_kohya_compatible_lora, tmp_path):
    """The file diffusers reads through its own kohya converter (FluxKontextPipeline.load_lora_weights)."""
    comfy = lora_ops.convert_lora_file(diffusers_kohya_compatible_lora, tmp_path / "comfy.safetensors", "comfyui")
    from_diffusers_file, from_comfyui_file = nano_pipe(), nano_pipe()
    from_diffusers_file.load_lora_weights(diffusers_kohya_compatible_lora)
    from_comfyui_file.load_lora_weights(str(comfy))

    inputs = transformer_inputs()
    expected = transformer_output(from_diffusers_file.transformer, inputs)
    torch.testing.assert_close(transformer_output(from_comfyui_file.transformer, inputs), expected, rtol=0, atol=1e-5)
    image = degraded_image()
    pixels = restore(from_diffusers_file, image)
    torch.testing.assert_close(restore(from_comfyui_file, image), pixels, rtol=0, atol=1e-5)
    assert (pixels - restore(nano_pipe(), image)).abs().max() > 1e-2  # the LoRA (alpha 8, rank 4) matters


def test_diffusers_converter_splits_full_size_flux_layers():
    """At FLUX.1-dev's width (3072, MLP 12288) diffusers' kohya converter also reads ``linear1``;
    its exact split must give back our A matrices times the scale (folded in) and our B matrices."""
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    width, mlp, rank = 3072, 12288, 2
    alpha = 2 * rank  # scale 2, which the converter folds into A (an exact doubling)
    shapes = {  # module: (out_features, in_features)
        "transformer_blocks.0.attn.to_q": (width, width), "transformer_blocks.0.attn.to_k": (width, width),
        "transformer_blocks.0.attn.to_v": (width, width), "transformer_blocks.0.attn.to_out.0": (width, width),
        "transformer_blocks.0.attn.add_q_proj": (width, width), "transformer_blocks.0.attn.add_k_proj": (width, width),
        "transformer_blocks.0.attn.add_v_proj": (width, width), "transformer_blocks.0.attn.to_add_out": (width, width),
        "transformer_blocks.0.ff.net.0.proj": (mlp, width), "transformer_blocks.0.ff.net.2": (width, mlp),
        "transformer_blocks.0.norm1.linear": (6 * width, width),
        "single_transformer_blocks.5.attn.to_q": (width, width),
        "single_transformer_blocks.5.attn.to_k": (width, width),
        "single_transformer_blocks.5.attn.to_v": (width, width), "single_transformer_blocks.5.proj_mlp": (mlp, width),
        "single_transformer_blocks.5.proj_out": (width, width + mlp),
    }
    layers = {name: random_layer(out, inp, rank, alpha, seed) for seed, (name, (out, inp)) in enumerate(shapes.items())}
    kohya, _ = lora_ops.layers_to_comfyui(layers)
    converted = _convert_kohya_flux_lora_to_diffusers(dict(kohya))
    assert set(converted) == {f"transformer.{name}.lora_{ab}.weight" for name in layers for ab in "AB"}
    for name, layer in layers.items():
        assert torch.equal(converted[f"transformer.{name}.lora_A.weight"], layer.down * layer.scale), name
        assert torch.equal(converted[f"transformer.{name}.lora_B.weight"], layer.up), name


# --- alpha, ranks and fused groups -----------------------------------------------------------------


def test_missing_alpha_and_metadata_mean_scale_one(full_lora, tmp_path):
    tensors, _ = tensors_of(full_lora)
    bare = tmp_path / "bare_diffusers.safetensors"
    save_file(tensors, str(bare))  # no lora_adapter_metadata: peft/diffusers use alpha = rank
    layers, _ = lora_ops.read_lora(bare)
    assert {layer.scale for layer in layers.values()} == {1.0}
    kohya, _ = tensors_of(lora_ops.write_lora(layers, tmp_path / "comfy.safetensors", "comfyui"))
    assert kohya["lora_unet_single_blocks_0_linear1.alpha"].item() == 4 * RANK

    without_alpha = tmp_path / "no_alpha.safetensors"
    save_file({k: v for k, v in kohya.items() if not k.endswith(".alpha")}, str(without_alpha))
    layers_back, source_format = lora_ops.read_lora(without_alpha)
    assert source_format == "comfyui" and {layer.scale for layer in layers_back.values()} == {1.0}
    # equal ranks and a block-diagonal up matrix: split exactly even without our metadata
    for name, layer in layers.items():
        assert torch.equal(layers_back[name].down, layer.down) and torch.equal(layers_back[name].up, layer.up)


def test_alpha_comes_from_the_adapter_config_like_peft_reads_it():
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, rank in (("transformer_blocks.0.attn.to_q", 4), ("single_transformer_blocks.1.proj_out", 8)):
        state[f"transformer.{name}.lora_A.weight"] = torch.randn(rank, NANO_WIDTH, generator=generator)
        state[f"transformer.{name}.lora_B.weight"] = torch.randn(NANO_WIDTH, rank, generator=generator)
    config = {"r": 4, "lora_alpha": 8, "rank_pattern": {"single_transformer_blocks.1.proj_out": 8},
              "alpha_pattern": {"single_transformer_blocks.1.proj_out": 2}}
    layers = lora_ops.layers_from_diffusers(state, config)
    assert layers["transformer_blocks.0.attn.to_q"].scale == 8 / 4
    assert layers["single_transformer_blocks.1.proj_out"].scale == 2 / 8
    rslora = lora_ops.layers_from_diffusers(state, {**config, "use_rslora": True})  # peft: alpha / sqrt(r)
    assert rslora["single_transformer_blocks.1.proj_out"].scale == pytest.approx(2 / 8**0.5)

    # Written back in the diffusers layout, the config reproduces both scales.
    _, metadata = lora_ops.layers_to_diffusers(layers)
    written = json.loads(metadata["lora_adapter_metadata"])
    assert (written["transformer.r"], written["transformer.lora_alpha"]) in ((4, 8), (8, 2))
    reread = lora_ops.layers_from_diffusers(state, {k.removeprefix("transformer."): v for k, v in written.items()})
    scales = lambda found: {name: layer.scale for name, layer in found.items()}  # noqa: E731
    assert scales(reread) == scales(layers)


def test_fused_members_with_different_ranks_round_trip():
    layers = {
        "transformer_blocks.0.attn.to_q": random_layer(NANO_WIDTH, NANO_WIDTH, 2, 2, seed=0),
        "transformer_blocks.0.attn.to_k": random_layer(NANO_WIDTH, NANO_WIDTH, 3, 3, seed=1),
        "transformer_blocks.0.attn.to_v": random_layer(NANO_WIDTH, NANO_WIDTH, 5, 5, seed=2),
        "single_transformer_blocks.0.attn.to_k": random_layer(NANO_WIDTH, NANO_WIDTH, 4, 6, seed=3),  # q, v, mlp absent
    }
    kohya, metadata = lora_ops.layers_to_comfyui(layers)
    assert kohya["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"].shape == (10, NANO_WIDTH)
    assert kohya["lora_unet_single_blocks_0_linear1.lora_up.weight"].shape == (3 * NANO_WIDTH + NANO_MLP, 4)
    assert kohya["lora_unet_single_blocks_0_linear1.alpha"].item() == 6
    back = lora_ops.layers_from_comfyui(kohya, metadata)
    assert set(back) == set(layers)
    for name, layer in layers.items():
        assert torch.equal(back[name].down, layer.down) and torch.equal(back[name].up, layer.up)
        assert back[name].alpha == layer.alpha

    # Without the member ranks (a file re-saved elsewhere), 10 is not 3 equal ranks: the members share
    # the whole down matrix. Different tensors, the same updates.
    shared = lora_ops.layers_from_comfyui(kohya)
    for name in ("transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_v"):
        assert shared[name].rank == 10
        torch.testing.assert_close(shared[name].delta(), layers[name].delta())


def test_comfyui_dotted_diffusion_model_keys_are_read_too():
    layers = {"single_transformer_blocks.1.proj_out": random_layer(NANO_WIDTH, NANO_WIDTH + NANO_MLP, 4, 2, seed=0),
              "transformer_blocks.1.attn.add_k_proj": random_layer(NANO_WIDTH, NANO_WIDTH, 4, 2, seed=1)}
    kohya, metadata = lora_ops.layers_to_comfyui(layers)
    # ComfyUI's own spelling of the same modules: diffusion_model.<BFL name with dots>
    dotted_names = {"lora_unet_single_blocks_1_linear2": "diffusion_model.single_blocks.1.linear2",
                    "lora_unet_double_blocks_1_txt_attn_qkv": "diffusion_model.double_blocks.1.txt_attn.qkv"}
    dotted = {}
    for key, tensor in kohya.items():
        module, _, kind = key.partition(".")
        dotted[f"{dotted_names[module]}.{kind}"] = tensor
    back = lora_ops.layers_from_comfyui(dotted, metadata)
    for name, layer in layers.items():
        assert torch.equal(back[name].down, layer.down) and torch.equal(back[name].up, layer.up)
        assert back[name].alpha == layer.alpha


def test_a_lora_trained_on_a_fused_layer_splits_into_exact_member_updates():
    generator = torch.Generator().manual_seed(0)
    down = torch.randn(6, NANO_WIDTH, generator=generator)
    up = torch.randn(3 * NANO_WIDTH + NANO_MLP, 6, generator=generator)  # dense: not block-diagonal
    kohya = {"lora_unet_single_blocks_2_linear1.lora_down.weight": down,
             "lora_unet_single_blocks_2_linear1.lora_up.weight": up,
             "lora_unet_single_blocks_2_linear1.alpha": torch.tensor(3.0)}
    layers = lora_ops.layers_from_comfyui(kohya)
    fused_update = 3.0 / 6 * up @ down
    rows = [NANO_WIDTH, NANO_WIDTH, NANO_WIDTH, NANO_MLP]
    for member, expected in zip(FUSED_SINGLE_MEMBERS, torch.split(fused_update, rows)):
        torch.testing.assert_close(layers[f"single_transformer_blocks.2.{member}"].delta(), expected)


def test_fused_members_with_different_scales_are_refused():
    layers = {
        "transformer_blocks.0.attn.to_q": random_layer(NANO_WIDTH, NANO_WIDTH, 4, 4, seed=0),
        "transformer_blocks.0.attn.to_k": random_layer(NANO_WIDTH, NANO_WIDTH, 4, 8, seed=1),
    }
    with pytest.raises(lora_ops.LoraFileError, match=r"img_attn_qkv.*scales differ.*--format diffusers"):
        lora_ops.layers_to_comfyui(layers)
    lora_ops.layers_to_diffusers(layers)  # the diffusers layout keeps one alpha per layer


# --- merging -----------------------------------------------------------------------------------------


def test_merged_transformer_matches_base_plus_lora(full_lora, tmp_path):
    with_lora = nano_pipe()
    with_lora.load_lora_weights(full_lora)
    inputs = transformer_inputs()
    expected = transformer_output(with_lora.transformer, inputs)

    merged = nano_pipe().transformer
    layers, _ = lora_ops.read_lora(full_lora)
    assert len(lora_ops.merge_lora_into_transformer(merged, layers)) == len(layers)
    torch.testing.assert_close(transformer_output(merged, inputs), expected, rtol=0, atol=1e-5)
    assert (expected - transformer_output(nano_pipe().transformer, inputs)).abs().max() > 1e-2

    # The command line writes the same merged weights; they load into a fresh nano transformer.
    output = tmp_path / "merged.safetensors"
    assert export.main(["--lora_weights", str(full_lora.parent), "--merge_into_transformer", "nano",
                        "--output", str(output)]) == 0
    reloaded = nano_pipe().transformer
    reloaded.load_state_dict(load_file(str(output)))
    torch.testing.assert_close(transformer_output(reloaded, inputs), expected, rtol=0, atol=1e-5)

    wrong_size = {"transformer_blocks.0.attn.to_q": random_layer(3072, 3072, 2, 2, seed=0)}
    with pytest.raises(lora_ops.LoraFileError, match="another size"):
        lora_ops.merge_lora_into_transformer(nano_pipe().transformer, wrong_size)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_merge_is_diffusers_fuse_lora_rounded_once(full_lora, dtype):
    """Why the merge is not `fuse_lora`: in float32 the two give identical weights, but in bf16
    (FLUX.1's dtype) peft adds an update that was already rounded to bf16, so about one weight in
    ten ends one bf16 step away from ``round(W + s B A)``, which is what this merge stores."""
    layers, _ = lora_ops.read_lora(full_lora)
    base = nano_pipe().transformer.to(dtype)
    ours = nano_pipe().transformer.to(dtype)
    lora_ops.merge_lora_into_transformer(ours, layers, strength=0.7)

    fused = nano_pipe().transformer.to(dtype)
    # Loaded without its metadata, diffusers takes alpha = rank (scale 1): the scale goes into lora_scale.
    fused.load_lora_adapter(load_file(str(full_lora)), prefix="transformer", adapter_name="merge")
    fused.fuse_lora(lora_scale=0.7 * ALPHA / RANK)
    fused.unload_lora()

    exact = {name: (base.get_submodule(name).weight.float() + 0.7 * layer.delta()).to(dtype)
             for name, layer in layers.items()}
    differing = 0
    for name in layers:
        assert torch.equal(ours.get_submodule(name).weight, exact[name])  # rounded once
        differing += int((fused.get_submodule(name).weight != exact[name]).sum())
    if dtype == torch.float32:
        assert differing == 0
    else:
        total = sum(exact[name].numel() for name in layers)
        assert 0.01 < differing / total < 0.5  # measured on nano: 0.11


# --- command line and bad input ----------------------------------------------------------------------


def test_cli_converts_never_overwrites_and_dispatches_from_kontext_lora(full_lora, tmp_path, capsys):
    from kontext_lora_helpers.cli import main as kontext_lora

    output = tmp_path / "comfy.safetensors"
    argv = ["--lora_weights", str(full_lora.parent), "--format", "comfyui", "--output", str(output)]
    assert export.main(argv) == 0 and output.is_file()
    assert "comfyui" in capsys.readouterr().out
    first = output.read_bytes()

    assert export.main(argv) == 1
    assert "already exists" in capsys.readouterr().err and output.read_bytes() == first
    assert export.main([*argv, "--overwrite"]) == 0

    back = tmp_path / "back.safetensors"
    assert kontext_lora(["export", "--lora_weights", str(output), "--format", "diffusers", "--output", str(back)]) == 0
    original, _ = tensors_of(full_lora)
    returned, _ = tensors_of(back)
    assert all(torch.equal(returned[key], tensor) for key, tensor in original.items())

    with pytest.raises(SystemExit):  # --format is required for a plain conversion
        export.main(["--lora_weights", str(full_lora), "--output", str(tmp_path / "x.safetensors")])


def bad_file(tmp_path, name, tensors=None, text=None):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    else:
        save_file(tensors, str(path))
    return path


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", r"do not exist.*pytorch_lora_weights\.safetensors"),
        ("not_safetensors", r"not a readable safetensors file"),
        ("full_weights", r"no LoRA matrices.*full model weights"),
        ("sdxl_kohya", r"do not match FLUX\.1 block names.*'lora_unet_down_blocks_0"),
        ("wan_diffusers", r"do not match FLUX\.1 block names.*another model"),
        ("outside_blocks", r"do not match FLUX\.1 block names.*x_embedder"),
        ("text_encoder", r"text encoder"),
        ("rank_mismatch", r"inconsistent ranks.*rank 4.*rank 8"),
        ("kohya_rank_mismatch", r"lora_unet_single_blocks_0_linear2.*inconsistent ranks"),
        ("missing_partner", r"no lora_B matrix"),
        ("not_flux_linear1", r"linear1 has 384 output rows for input width 128"),
    ],
)
def test_bad_lora_input_gives_one_clear_error(tmp_path, case, expected):
    small = lambda *shape: torch.zeros(*shape)  # noqa: E731
    files = {
        "missing": lambda: tmp_path / "nowhere.safetensors",
        "not_safetensors": lambda: bad_file(tmp_path, "notes.safetensors", text="not weights"),
        "full_weights": lambda: bad_file(
            tmp_path, "t.safetensors", {"transformer_blocks.0.attn.to_q.weight": small(8, 8)}),
        "sdxl_kohya": lambda: bad_file(tmp_path, "s.safetensors", {
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": small(4, 8),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": small(8, 4)}),
        "wan_diffusers": lambda: bad_file(tmp_path, "w.safetensors", {
            "transformer.blocks.0.attn1.to_q.lora_A.weight": small(4, 8),
            "transformer.blocks.0.attn1.to_q.lora_B.weight": small(8, 4)}),
        "outside_blocks": lambda: bad_file(tmp_path, "x.safetensors", {
            "transformer.x_embedder.lora_A.weight": small(4, 8), "transformer.x_embedder.lora_B.weight": small(8, 4)}),
        "text_encoder": lambda: bad_file(tmp_path, "te.safetensors", {
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": small(4, 8),
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": small(8, 4)}),
        "rank_mismatch": lambda: bad_file(tmp_path, "r.safetensors", {
            "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": small(4, 8),
            "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": small(8, 8)}),
        "kohya_rank_mismatch": lambda: bad_file(tmp_path, "k.safetensors", {
            "lora_unet_single_blocks_0_linear2.lora_down.weight": small(4, 8),
            "lora_unet_single_blocks_0_linear2.lora_up.weight": small(8, 2)}),
        "missing_partner": lambda: bad_file(tmp_path, "m.safetensors", {
            "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": small(4, 8)}),
        "not_flux_linear1": lambda: bad_file(tmp_path, "l.safetensors", {
            "lora_unet_single_blocks_0_linear1.lora_down.weight": small(4, 128),
            "lora_unet_single_blocks_0_linear1.lora_up.weight": small(384, 4)}),
    }
    path = files[case]()
    with pytest.raises(lora_ops.LoraFileError, match=expected) as raised:
        lora_ops.read_lora(path)
    assert str(path.name) in str(raised.value)  # the message names the file


def test_bad_output_paths_are_refused(full_lora, tmp_path, capsys):
    layers, _ = lora_ops.read_lora(full_lora)
    with pytest.raises(lora_ops.LoraFileError, match=r"is a directory; pass a file path"):
        lora_ops.write_lora(layers, tmp_path, "comfyui")
    with pytest.raises(lora_ops.LoraFileError, match=r"must end in \.safetensors"):
        lora_ops.write_lora(layers, tmp_path / "lora.pt", "comfyui")
    with pytest.raises(lora_ops.LoraFileError, match="format must be one of diffusers, comfyui"):
        lora_ops.write_lora(layers, tmp_path / "lora.safetensors", "kohya")
    assert export.main(["--lora_weights", str(full_lora), "--format", "comfyui", "--output", str(tmp_path)]) == 1
    assert "is a directory" in capsys.readouterr().err
    assert export.main(["--lora_weights", str(tmp_path / "nothing"), "--format", "comfyui",
                        "--output", str(tmp_path / "out.safetensors")]) == 1
    assert "do not exist" in capsys.readouterr().err
