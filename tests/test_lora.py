"""LoRA on the nano transformer: what trains, how it starts, its precision, and the saved file."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from kontext_lora_helpers import lora, objective
from kontext_lora_helpers.nano import build_nano_pipeline

RANK = 4




def fresh_transformer():
    return build_nano_pipeline(allow_missing=True).transformer  # random weights are fine here


def tiny_batch(batch=2, side=8, text_tokens=8, dtype=torch.float32, seed=0):
    """Latents of a 32x32 image (8x8 latent, 16 tokens) and random text conditioning for nano."""
    generator = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=generator).to(dtype)  # noqa: E731
    text_ids = torch.zeros(text_tokens, 3, dtype=dtype)
    text = objective.PromptEmbeddings(make(batch, text_tokens, 64), make(batch, 64), text_ids)
    return dict(
        target_latents=make(batch, 16, side, side),
        control_latents=make(batch, 16, side, side),
        text=text,
        sigmas=torch.tensor([0.3, 0.8][:batch]),
        noise=make(batch, 16, side, side),
    )


def transformer_output(transformer, batch: dict) -> torch.Tensor:
    noisy = objective.noisy_latents(batch["target_latents"], batch["noise"], batch["sigmas"])
    inputs = objective.build_transformer_inputs(noisy, batch["control_latents"], batch["text"], batch["sigmas"])
    with torch.no_grad():
        return transformer(**inputs)[0]


def test_default_targets_are_the_block_projections_only():
    transformer = fresh_transformer()
    targets = lora.default_target_modules(transformer)
    double = [t for t in targets if t.startswith("transformer_blocks.")]
    single = [t for t in targets if t.startswith("single_transformer_blocks.")]
    assert len(double) == 2 * len(lora.DOUBLE_BLOCK_TARGETS) and len(single) == 4 * len(lora.SINGLE_BLOCK_TARGETS)
    assert "proj_out" not in targets  # the final output layer shares the name with the blocks' proj_out
    assert not any("norm" in t or "embed" in t for t in targets)


def test_lora_starts_as_the_identity_with_b_at_zero():
    transformer = fresh_transformer()
    batch = tiny_batch()
    before = transformer_output(transformer, batch)
    lora.add_lora(transformer, rank=RANK)
    b_matrices = [p for n, p in transformer.named_parameters() if "lora_B" in n]
    a_matrices = [p for n, p in transformer.named_parameters() if "lora_A" in n]
    assert b_matrices and all(torch.count_nonzero(b) == 0 for b in b_matrices)
    assert all(a.abs().sum() > 0 for a in a_matrices)  # A is random, so B's gradient is not zero
    assert torch.equal(transformer_output(transformer, batch), before)


def test_gradients_reach_only_lora_parameters():
    transformer = lora.add_lora(fresh_transformer(), rank=RANK)
    step = objective.kontext_flow_matching_step(transformer, **tiny_batch())
    step.loss.backward()
    for name, parameter in transformer.named_parameters():
        if "lora_" in name:
            assert parameter.requires_grad and parameter.grad is not None, name
        else:
            assert not parameter.requires_grad and parameter.grad is None, name
    # At the start B = 0, so A's gradient (which goes through B) is zero and B's is not.
    b_grads = [p.grad for n, p in transformer.named_parameters() if "lora_B" in n]
    assert all(g.abs().sum() > 0 for g in b_grads)
    assert {id(p) for p in lora.lora_parameters(transformer)} == {
        id(p) for n, p in transformer.named_parameters() if "lora_" in n
    }


def test_lora_is_float32_on_a_bfloat16_base():
    transformer = fresh_transformer().to(torch.bfloat16)
    lora.add_lora(transformer, rank=RANK)
    dtypes = {n: p.dtype for n, p in transformer.named_parameters()}
    assert all(d == torch.float32 for n, d in dtypes.items() if "lora_" in n)
    assert all(d == torch.bfloat16 for n, d in dtypes.items() if "lora_" not in n)
    step = objective.kontext_flow_matching_step(transformer, **tiny_batch(dtype=torch.bfloat16))
    assert step.predicted_velocity.dtype == torch.bfloat16  # peft casts the LoRA branch back
    step.loss.backward()
    assert all(p.grad.dtype == torch.float32 for p in lora.lora_parameters(transformer))


def test_parameter_counts():
    transformer = fresh_transformer()
    base_total = lora.count_parameters(transformer)["total"]
    assert lora.count_parameters(transformer)["trainable"] == 0  # nano ships frozen
    lora.add_lora(transformer, rank=RANK)
    counts = lora.count_parameters(transformer)
    # Each adapted Linear(in, out) gains r * (in + out) numbers. Nano (width 128, MLP 512): a double
    # block has 8 attention projections (128 + 128) and 4 feed-forward layers (128 + 512), a single
    # block 3 attention projections, proj_mlp (128 + 512) and proj_out (640 + 128).
    per_rank = 2 * (8 * 256 + 4 * 640) + 4 * (3 * 256 + 640 + 768)
    assert counts["trainable"] == per_rank * RANK == 71_680
    assert counts["total"] == base_total + counts["trainable"]
    assert counts["fraction"] == pytest.approx(counts["trainable"] / counts["total"])
    description = lora.describe_parameters(transformer)
    assert description.startswith("trainable 71.68 k of ") and "%" in description


def test_save_and_load_round_trip(tmp_path):
    transformer = lora.add_lora(fresh_transformer(), rank=RANK, lora_alpha=2 * RANK)  # scale 2
    with torch.no_grad():  # stand in for training: a non-zero update
        generator = torch.Generator().manual_seed(0)
        for name, parameter in transformer.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)

    state = lora.lora_state_dict(transformer)
    assert state and all(k.startswith("transformer.") and ".lora_" in k and ".default." not in k for k in state)
    assert all(v.dtype == torch.float32 for v in state.values())

    path = lora.save_lora(transformer, tmp_path)
    assert path == tmp_path / "pytorch_lora_weights.safetensors" and path.is_file()
    with safe_open(str(path), "pt") as saved:
        assert set(saved.keys()) == set(state)

    fresh = build_nano_pipeline(allow_missing=True)
    fresh.load_lora_weights(tmp_path)
    batch = tiny_batch()
    expected = transformer_output(transformer, batch)
    torch.testing.assert_close(transformer_output(fresh.transformer, batch), expected, rtol=0, atol=1e-6)
    assert not torch.equal(expected, transformer_output(fresh_transformer(), batch))  # the LoRA matters


def test_a_saved_lora_records_its_restoration_steps_and_restore_defaults_to_them(tmp_path):
    from kontext_lora_helpers import restore

    transformer = lora.add_lora(fresh_transformer(), rank=RANK)
    recorded = lora.save_lora(transformer, tmp_path / "recorded", restoration_steps=5)
    plain = lora.save_lora(transformer, tmp_path / "plain")  # as a file from elsewhere: no record
    with safe_open(str(recorded), "pt") as saved:
        metadata = saved.metadata()
    assert metadata[lora.RESTORATION_STEPS_METADATA_KEY] == "5"
    assert lora.adapter_metadata(metadata)["r"] == RANK  # diffusers' own entry is still there
    assert not list((tmp_path / "recorded").glob("*.partial"))  # written whole, then renamed
    pipe = build_nano_pipeline(allow_missing=True)
    assert lora.check_lora_fits(pipe.transformer, recorded)["restoration_steps"] == 5
    assert lora.check_lora_fits(pipe.transformer, plain)["restoration_steps"] is None
    assert restore.restoration_steps(pipe, [recorded]) == 5
    assert restore.restoration_steps(pipe, [plain]) == restore.default_num_inference_steps(pipe) == 28
    assert restore.restoration_steps(pipe, []) == 28
    loaded = restore.load_loras(pipe, [recorded, plain])
    assert restore.restoration_steps(pipe, loaded) == 5
    loaded[0]["scale"] = 0.0  # a LoRA switched off does not choose the steps
    assert restore.restoration_steps(pipe, loaded) == 28
    assert lora.recorded_restoration_steps({lora.RESTORATION_STEPS_METADATA_KEY: "many"}) is None


def test_one_layer_follows_w_plus_scaled_b_a():
    transformer = lora.add_lora(fresh_transformer(), rank=RANK, lora_alpha=8)
    layer = transformer.transformer_blocks[0].attn.to_q
    parts = lora.lora_layer_parts(layer)
    assert parts["A"].shape == (RANK, 128) and parts["B"].shape == (128, RANK) and parts["scale"] == 8 / RANK
    with torch.no_grad():
        parts["B"].normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
        x = torch.randn(3, 128, generator=torch.Generator().manual_seed(1))
        by_hand = x @ parts["W"].T + parts["bias"] + parts["scale"] * (x @ parts["A"].T) @ parts["B"].T
        torch.testing.assert_close(layer(x), by_hand)
    with pytest.raises(ValueError, match="no LoRA adapter"):
        lora.lora_layer_parts(fresh_transformer().transformer_blocks[0].attn.to_q)


def test_gradient_census_and_norm():
    transformer = lora.add_lora(fresh_transformer(), rank=RANK)
    assert lora.lora_gradient_norm(transformer) == 0.0
    objective.kontext_flow_matching_step(transformer, **tiny_batch()).loss.backward()
    census = lora.gradient_census(transformer)
    lora_tensors = 2 * len(lora.default_target_modules(transformer))
    assert census["lora with grad"] == lora_tensors and census["lora without grad"] == 0
    assert census["base with grad"] == 0 and census["base without grad"] > 0
    assert lora.lora_gradient_norm(transformer) > 0


def test_ema_follows_the_recurrence_and_swaps_weights_in_and_out():
    transformer = lora.add_lora(fresh_transformer(), rank=RANK)
    ema = lora.LoraEMA(transformer, decay=0.9)
    names = list(ema.parameters)
    start = {name: p.detach().clone() for name, p in ema.parameters.items()}
    assert [ema.decay_at(k) for k in (1, 2, 100)] == [2 / 11, 3 / 12, 0.9]  # warm-up, then the decay

    # Three "optimizer steps" that set every LoRA weight to a known value; the average must be the
    # hand-computed recurrence ema <- d ema + (1 - d) w.
    expected = {name: start[name].clone() for name in names}
    for step, value in enumerate((1.0, -2.0, 0.5), start=1):
        with torch.no_grad():
            for name in names:
                ema.parameters[name].fill_(value)
        ema.update()
        d = ema.decay_at(step)
        expected = {name: d * expected[name] + (1 - d) * value for name in names}
    assert ema.step == 3
    for name in names:
        torch.testing.assert_close(ema.shadow[name], expected[name], rtol=0, atol=1e-6)

    trained = {name: p.detach().clone() for name, p in ema.parameters.items()}
    with ema.applied():
        assert all(torch.equal(ema.parameters[name], ema.shadow[name]) for name in names)
    assert all(torch.equal(ema.parameters[name], trained[name]) for name in names)  # restored exactly

    copy = lora.LoraEMA(transformer, decay=0.9)
    copy.load_state_dict(ema.state_dict(), step=ema.step)
    assert all(torch.equal(copy.shadow[name], ema.shadow[name]) for name in names)
    assert copy.step == 3 and copy.decay_at(copy.step + 1) == ema.decay_at(4)
    with pytest.raises(ValueError, match="does not match"):
        copy.load_state_dict({"unrelated.lora_A": torch.zeros(1)})
    with pytest.raises(ValueError, match="decay"):
        lora.LoraEMA(transformer, decay=1.0)
