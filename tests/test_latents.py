"""The latent helpers reproduce FluxKontextPipeline's private conventions exactly."""

import pytest
import torch
from diffusers import FluxKontextPipeline

from kontext_lora_helpers import latents as L
from kontext_lora_helpers.nano import build_nano_components


@pytest.fixture(scope="module")
def vae():
    return build_nano_components()["vae"]


def test_pack_matches_pipeline_and_round_trips():
    x = torch.randn(2, 16, 6, 10)
    tokens = L.pack(x)
    assert tokens.shape == (2, 15, 64)
    assert torch.equal(tokens, FluxKontextPipeline._pack_latents(x, 2, 16, 6, 10))
    assert torch.equal(L.unpack(tokens, 6, 10), x)
    # the pipeline unpacks from pixel sides: 6x10 latents are 24x40 pixels for a 4x VAE
    assert torch.equal(FluxKontextPipeline._unpack_latents(tokens, 24, 40, 4), x)


def test_pack_rejects_odd_sides_and_unpack_wrong_count():
    with pytest.raises(ValueError, match="even"):
        L.pack(torch.randn(1, 16, 5, 4))
    with pytest.raises(ValueError, match="tokens"):
        L.unpack(torch.randn(1, 10, 64), 4, 4)


def test_position_ids_match_pipeline_with_control_frame():
    ids = L.position_ids(6, 10)
    assert torch.equal(ids, FluxKontextPipeline._prepare_latent_image_ids(1, 3, 5, "cpu", torch.float32))
    control = L.position_ids(6, 10, frame=1)
    assert torch.equal(control[:, 1:], ids[:, 1:]) and (control[:, 0] == 1).all()
    # each token's id is its (row, col) in the packed grid, row-major
    assert control[7].tolist() == [1.0, 1.0, 2.0]


def test_kontext_sequence_order():
    target, control = torch.zeros(1, 4, 64), torch.ones(1, 6, 64)
    hidden, ids = L.kontext_sequence(target, control, (4, 4), (4, 6))
    assert torch.equal(hidden[:, :4], target) and torch.equal(hidden[:, 4:], control)
    assert ids.shape == (10, 3) and ids[:4, 0].eq(0).all() and ids[4:, 0].eq(1).all()


def test_encode_matches_pipeline_condition_encoding(vae):
    pipe = FluxKontextPipeline(**build_nano_components())
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    expected = pipe._encode_vae_image(x, generator=None)
    assert torch.allclose(L.encode(pipe.vae, x), expected)
    assert L.vae_scale_factor(pipe.vae) == 2 and L.pixel_multiple(pipe.vae) == 4


def test_decode_inverts_shift_and_scale(vae):
    vae.register_to_config(shift_factor=0.3, scaling_factor=2.0)
    z = torch.randn(1, 16, 4, 4)
    raw = vae.decode(z / 2.0 + 0.3).sample
    assert torch.allclose(L.decode(vae, z), raw)


def test_check_image_tensor_errors():
    with pytest.raises(ValueError, match="multiples of 8"):
        L.check_image_tensor(torch.zeros(1, 3, 30, 32), 8)
    with pytest.raises(ValueError, match="NaN"):
        L.check_image_tensor(torch.full((1, 3, 8, 8), float("nan")), 8)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        L.check_image_tensor(torch.zeros(3, 8, 8), 8)


def test_token_counts_and_statistics(vae):
    # FLUX.1 Kontext at 1024x1024: 128x128 latents, 4096 tokens; nano's 2x VAE at 64x64: 256
    assert L.token_count(128, 128) == 4096 and L.token_count(5, 7) == 2 * 3
    assert L.image_token_count(vae, 64, 64) == 256
    assert L.image_token_count(vae, 64, 32) == 128
    stats = L.latent_statistics(torch.randn(4, 16, 8, 8))
    assert len(stats["per_channel_mean"]) == 16 and abs(stats["std"] - 1) < 0.1
