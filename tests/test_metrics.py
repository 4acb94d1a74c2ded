"""PSNR and SSIM against values known in closed form, and against scikit-image where it is installed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from kontext_lora_helpers import metrics


def noisy_pair(sigma: float, seed: int = 0, size: int = 48):
    """A smooth 8-bit RGB image and a copy with Gaussian noise of `sigma` levels (clipped, rounded)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    clean = np.stack([128 + 60 * np.sin(x / 5.0), 128 + 60 * np.cos(y / 7.0), 100 + x + y], axis=-1)
    clean = np.clip(clean, 0, 255).round().astype(np.uint8)
    noisy = np.clip(clean + rng.normal(0, sigma, clean.shape), 0, 255).round().astype(np.uint8)
    return clean, noisy


def test_identical_images_give_infinite_psnr_and_ssim_one():
    clean, _ = noisy_pair(0)
    assert metrics.psnr(clean, clean) == math.inf
    assert metrics.ssim(clean, clean) == pytest.approx(1.0, abs=1e-12)
    assert metrics.ssim(clean, clean, y_channel=True) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("offset", [1, 5, 20])
def test_a_constant_offset_gives_the_analytic_psnr(offset):
    base = np.full((16, 16, 3), 100, dtype=np.uint8)
    shifted = base + np.uint8(offset)
    assert metrics.psnr(base, shifted) == pytest.approx(10 * math.log10(255**2 / offset**2))
    # The luma of an equal RGB shift moves by offset * (65.481 + 128.553 + 24.966) / 255 = offset * 219 / 255.
    y_offset = offset * 219 / 255
    assert metrics.psnr(base, shifted, y_channel=True) == pytest.approx(10 * math.log10(255**2 / y_offset**2))


def test_y_channel_follows_bt601():
    white, black = np.full((1, 1, 3), 255.0), np.zeros((1, 1, 3))
    assert metrics.rgb_to_y(white).item() == pytest.approx(235.0)
    assert metrics.rgb_to_y(black).item() == pytest.approx(16.0)


def test_ssim_is_symmetric_below_one_for_noise_and_drops_as_noise_grows():
    clean, light = noisy_pair(5)
    _, heavy = noisy_pair(25)
    assert metrics.ssim(clean, light) == pytest.approx(metrics.ssim(light, clean), abs=1e-12)
    assert metrics.ssim(clean, heavy) < metrics.ssim(clean, light) < 1.0
    assert metrics.psnr(clean, heavy) < metrics.psnr(clean, light)


def test_ssim_matches_scikit_image_with_the_gaussian_window():
    structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity
    clean, noisy = noisy_pair(12, seed=3)
    expected = structural_similarity(clean, noisy, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False, data_range=255)
    assert metrics.ssim(clean, noisy) == pytest.approx(expected, abs=1e-9)


def test_pil_numpy_and_tensors_agree():
    clean, noisy = noisy_pair(10)
    as_tensor = lambda a: torch.from_numpy(a).permute(2, 0, 1).float() / 127.5 - 1  # noqa: E731
    from_arrays = metrics.psnr(clean, noisy), metrics.ssim(clean, noisy)
    from_pil = metrics.psnr(Image.fromarray(clean), Image.fromarray(noisy)), metrics.ssim(Image.fromarray(clean), Image.fromarray(noisy))
    from_tensors = metrics.psnr(as_tensor(clean), as_tensor(noisy)), metrics.ssim(as_tensor(clean), as_tensor(noisy))
    assert from_pil == pytest.approx(from_arrays) and from_tensors == pytest.approx(from_arrays)


def test_a_batch_gives_the_mean_of_its_images_or_each_one():
    clean, light = noisy_pair(5)
    _, heavy = noisy_pair(25)
    batch_a, batch_b = np.stack([clean, clean]), np.stack([light, heavy])
    each = metrics.psnr(batch_a, batch_b, reduction="none")
    assert each == pytest.approx([metrics.psnr(clean, light), metrics.psnr(clean, heavy)])
    assert metrics.psnr(batch_a, batch_b) == pytest.approx(np.mean(each))


def test_crop_border_ignores_the_edges():
    clean, _ = noisy_pair(0)
    damaged = clean.copy()
    damaged[:2] = 0  # only the top two rows differ
    assert metrics.psnr(clean, damaged, crop_border=2) == math.inf
    assert metrics.psnr(clean, damaged) < 30


def test_mismatched_sizes_are_refused():
    with pytest.raises(ValueError, match="differ in size"):
        metrics.psnr(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)))
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))
