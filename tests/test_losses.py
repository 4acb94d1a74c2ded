"""VGGPerceptualLoss and the gated perceptual term (random VGG features: no weights are downloaded)."""

from __future__ import annotations

import urllib.error
import warnings

import pytest
import torch

from kontext_lora_helpers import latents as latent_ops
from kontext_lora_helpers import losses
from kontext_lora_helpers.nano import build_nano_pipeline




@pytest.fixture(scope="module")
def vgg():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return losses.VGGPerceptualLoss(resize=False, weights=None)


def _images(batch=2, side=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, side, side, generator=generator) * 2 - 1


def test_zero_for_identical_images_positive_and_differentiable_otherwise(vgg):
    target = _images()
    assert vgg(target, target.clone()).item() == 0.0
    prediction = _images(seed=1).requires_grad_(True)
    loss = vgg(prediction, target)
    assert loss.item() > 0
    loss.backward()
    assert prediction.grad is not None and prediction.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in vgg.parameters())
    assert not vgg.training and not vgg.train().training  # stays in eval mode


def test_per_sample_reduction_and_layer_weights(vgg, monkeypatch):
    target, prediction = _images(), _images(seed=1)
    prediction[1] = target[1]
    per_sample = vgg(prediction, target, reduction="none")
    assert per_sample.shape == (2,) and per_sample[0] > 0 and per_sample[1] == 0
    all_blocks = vgg(prediction, target)
    monkeypatch.setattr(vgg, "layer_weights", (1.0, 0.0, 0.0, 0.0))
    assert 0 < vgg(prediction, target) < all_blocks
    with pytest.raises(ValueError, match="layer_weights"):
        losses.VGGPerceptualLoss(weights=None, layer_weights=(1, 1))


def test_inputs_in_minus_one_one_are_imagenet_normalised(vgg):
    grey = torch.zeros(1, 3, 4, 4)  # mid-grey in [-1, 1] is 0.5 in [0, 1]
    expected = (0.5 - torch.tensor(losses.IMAGENET_MEAN)) / torch.tensor(losses.IMAGENET_STD)
    torch.testing.assert_close(vgg.normalize(grey)[0, :, 0, 0], expected)


def test_resize_goes_to_224(vgg, monkeypatch):
    monkeypatch.setattr(vgg, "resize", True)
    seen = []
    handle = vgg.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    try:
        with torch.no_grad():
            vgg(_images(batch=1, side=16), _images(batch=1, side=16, seed=1))
    finally:
        handle.remove()
    assert seen[0][-2:] == (224, 224)


def test_random_crop_and_max_batch():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cropping = losses.VGGPerceptualLoss(resize=False, weights=None, random_crop=16, max_batch=2)
    seen = []
    cropping.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    target = _images(batch=4, side=32)
    prediction = target.clone()
    per_sample = cropping(prediction, target, reduction="none")
    assert per_sample.shape == (2,)  # max_batch: only the first two samples enter VGG
    assert seen[0].shape == (2, 3, 16, 16) and seen[1].shape == (2, 3, 16, 16)
    assert torch.equal(per_sample, torch.zeros(2))  # the same window for input and target
    # A difference outside the first two samples is invisible with max_batch=2.
    prediction[2:] = -target[2:]
    assert cropping(prediction, target).item() == 0.0


def test_weights_none_warns_once_with_a_one_line_notice():
    with pytest.warns(UserWarning, match="random VGG features"):
        losses.VGGPerceptualLoss(weights=None)


def test_imagenet_weights_offline_raise_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_download(*args, **kwargs):
        raise AssertionError("must not try to download while offline")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    with pytest.raises(RuntimeError) as error:
        losses.VGGPerceptualLoss()
    message = str(error.value)
    assert "vgg16-397923af.pth" in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert "TORCH_HOME" in message and "HF_HUB_OFFLINE" in message


def test_imagenet_weights_download_failure_raises_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    attempts = []

    def failing_download(url, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", failing_download)
    with pytest.raises(RuntimeError, match="vgg16-397923af.pth") as error:
        losses.VGGPerceptualLoss()
    assert attempts and attempts[0].endswith("vgg16-397923af.pth")
    assert "URLError" in str(error.value) and "TORCH_HOME" in str(error.value)


def test_imagenet_weights_are_read_from_the_hub_cache(monkeypatch, tmp_path):
    """A file in torch.hub.get_dir()/checkpoints is used without any download."""
    from torchvision.models.vgg import cfgs, make_layers

    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(5)
    reference = make_layers(cfgs["D"])  # the `features` of a VGG16, saved as torchvision names them
    torch.save({f"features.{k}": v for k, v in reference.state_dict().items()}, checkpoints / "vgg16-397923af.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("downloaded"))
    loaded = losses.VGGPerceptualLoss()
    assert torch.equal(loaded.blocks[0][0].weight, reference[0].weight)
    assert torch.equal(loaded.blocks[3][-2].weight, reference[21].weight)  # the conv before relu4_3


# --- the gated term through the VAE ------------------------------------------------------------------


@pytest.fixture(scope="module")
def vae():
    return build_nano_pipeline(allow_missing=True).vae


def test_gate_weights():
    sigmas = torch.tensor([0.0, 0.3, 0.5, 0.9])
    torch.testing.assert_close(losses.perceptual_gate_weights(sigmas, "linear"), 1 - sigmas)
    assert losses.perceptual_gate_weights(sigmas, "threshold", 0.5).tolist() == [1, 1, 0, 0]
    assert losses.perceptual_gate_weights(sigmas, "none").tolist() == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="gate"):
        losses.perceptual_gate_weights(sigmas, "cosine")


def test_perceptual_term_reaches_x0_hat_and_not_the_vae(vgg, vae):
    target_pixels = _images(batch=3, side=16)
    target_latents = latent_ops.encode(vae, target_pixels)
    x0_hat = (target_latents + 0.5 * torch.randn_like(target_latents)).requires_grad_(True)
    sigmas = torch.tensor([0.2, 0.6, 0.9])

    term = losses.perceptual_term(vgg, vae, x0_hat, target_pixels, sigmas, gate="threshold", sigma_threshold=0.5)
    term.backward()
    assert term.item() > 0
    assert x0_hat.grad[0].abs().sum() > 0
    assert x0_hat.grad[1:].abs().sum() == 0  # samples above the threshold are not even decoded
    assert all(p.grad is None for p in vae.parameters())

    # Linear gate: every sample contributes, scaled by 1 - sigma.
    x0_hat.grad = None
    linear = losses.perceptual_term(vgg, vae, x0_hat, target_pixels, sigmas, gate="linear")
    decoded = latent_ops.decode(vae, x0_hat)
    expected = ((1 - sigmas) * vgg(decoded, target_pixels, reduction="none")).mean()
    torch.testing.assert_close(linear, expected)


def test_perceptual_term_when_every_sample_is_gated_out(vgg, vae):
    target_pixels = _images(batch=2, side=16)
    x0_hat = latent_ops.encode(vae, target_pixels).requires_grad_(True)
    term = losses.perceptual_term(vgg, vae, x0_hat, target_pixels, torch.tensor([0.8, 0.9]), gate="threshold")
    assert term.item() == 0.0 and term.requires_grad
    term.backward()
    assert x0_hat.grad.abs().sum() == 0


class IdentityVAE:
    """A VAE stand-in whose latents are the pixels: isolates the measurement from the VAE's quality."""

    config = type("Config", (), {"shift_factor": 0.0, "scaling_factor": 1.0})()
    device, dtype = torch.device("cpu"), torch.float32

    def decode(self, latents):
        return type("Decoded", (), {"sample": latents})()


def test_perceptual_loss_by_sigma_measures_x0_hat_along_the_path(vgg, data_samples):
    import numpy as np
    from PIL import Image

    names = ("coffee.jpg", "chelsea.jpg")
    photos = [Image.open(data_samples / "held_out" / name).convert("RGB").resize((32, 32)) for name in names]
    pixels = torch.from_numpy(np.stack([np.asarray(p, dtype=np.float32) for p in photos]))
    pixels = pixels.permute(0, 3, 1, 2) / 127.5 - 1  # (2, 3, 32, 32) in [-1, 1]
    noise = torch.randn(pixels.shape, generator=torch.Generator().manual_seed(0))
    vae = IdentityVAE()
    oracle = lambda noisy, sigmas: pixels  # noqa: E731 - a perfect predictor scores 0 at every sigma
    assert losses.perceptual_loss_by_sigma(vgg, vae, pixels, pixels, noise, [0.1, 0.9], oracle).abs().max() == 0
    wiener = lambda noisy, sigmas: losses.spectral_wiener_x0(noisy, sigmas, pixels)  # noqa: E731
    curve = losses.perceptual_loss_by_sigma(vgg, vae, pixels, pixels, noise, [0.0, 0.5, 1.0], wiener)
    assert curve[0] < 1e-4  # sigma 0: x_t is x0 and the filter passes it unchanged
    assert curve[0] < curve[1] < curve[2]  # blurrier, then the mean image
    at_one = losses.spectral_wiener_x0(noise, torch.ones(2), pixels)
    torch.testing.assert_close(at_one, pixels.mean(dim=(0, 2, 3), keepdim=True).expand_as(pixels))


def test_weights_notice_says_how_to_get_imagenet_features(vgg):
    notice = losses.vgg_weights_notice(vgg)
    assert "RANDOM" in notice and "vgg16-397923af.pth" in notice and "weights='imagenet'" in notice
