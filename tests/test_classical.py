"""The classical yardstick (``kontext_lora_helpers.classical``): non-local means and total variation
remove noise, strength 0 is the identity, tuning picks the best strength of its own table."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("skimage.restoration")
pytest.importorskip("pywt")

from kontext_lora_helpers import classical  # noqa: E402
from kontext_lora_helpers.classical import (  # noqa: E402
    CLASSICAL_METHODS,
    DEFAULT_STRENGTHS,
    classical_restore,
    denoise,
    estimate_noise_level,
    tune_strength,
)
from kontext_lora_helpers.degradations import DegradationConfig, apply_degradation  # noqa: E402
from kontext_lora_helpers.metrics import psnr  # noqa: E402

NOISE_ONLY = DegradationConfig(degradation_types=("noise",), noise_level=0.08)
"""Colour Gaussian noise of 0.08 on the 0-1 scale (about 20 grey levels), nothing else."""


def clean_image(width: int = 64, height: int = 64, phase: float = 0.0) -> Image.Image:
    """A photo-like test image: smooth colour gradients and a bright disc with a sharp edge."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    red = 60 + 120 * x + 30 * np.sin(6 * y + phase)
    green = 80 + 100 * y
    blue = 140 - 60 * x + 20 * np.cos(5 * x + phase)
    pixels = np.stack([red, green, blue], axis=-1)
    disc = (x - 0.55) ** 2 + (y - 0.45) ** 2 < 0.06
    pixels[disc] = (230, 210, 90)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


def noisy(image: Image.Image, seed: int = 0) -> Image.Image:
    return apply_degradation(image, NOISE_ONLY, seed=seed)[0]


@pytest.mark.parametrize("method, strength", [("nlm", 1.0), ("tv", 0.06)])
def test_each_method_raises_the_psnr_of_a_noisy_image(method, strength):
    clean = clean_image()
    degraded = noisy(clean)
    restored = denoise(degraded, method, strength)
    # measured: 22.0 dB degraded; NLM 35.8 dB, TV 34.0 dB
    assert psnr(restored, clean) > psnr(degraded, clean) + 8.0


@pytest.mark.parametrize("method, tiny", [("nlm", 0.05), ("tv", 0.0005)])
def test_strength_zero_returns_the_input_and_a_tiny_strength_nearly_so(method, tiny):
    degraded = noisy(clean_image())
    unchanged = denoise(degraded, method, 0)
    assert np.array_equal(np.asarray(unchanged), np.asarray(degraded)) and unchanged is not degraded
    assert psnr(denoise(degraded, method, tiny), degraded) > 40.0
    # and a stronger setting moves the output further from its input
    weak, strong = (psnr(denoise(degraded, method, s), degraded) for s in DEFAULT_STRENGTHS[method][2:4])
    assert weak > strong


@pytest.mark.parametrize("method", list(CLASSICAL_METHODS))
def test_output_keeps_each_input_size_as_8_bit_rgb(method):
    images = [noisy(clean_image(37, 23)), noisy(clean_image(20, 48)).convert("L")]
    restored = classical_restore(images, method, DEFAULT_STRENGTHS[method][3])
    assert [image.size for image in restored] == [(37, 23), (20, 48)]
    assert all(image.mode == "RGB" and np.asarray(image).dtype == np.uint8 for image in restored)
    assert len(classical_restore(images[0], method, 0.5)) == 1  # a single image gives a one-item list


def test_noise_estimate_reads_the_added_noise_level():
    assert estimate_noise_level(noisy(clean_image(96, 96))) == pytest.approx(NOISE_ONLY.noise_level, rel=0.2)
    assert estimate_noise_level(clean_image(96, 96)) < 0.02


@pytest.mark.parametrize("method", list(CLASSICAL_METHODS))
def test_tuning_returns_the_argmax_of_its_table(method):
    clean = [clean_image(48, 48, phase) for phase in (0.0, 1.5)]
    degraded = [noisy(image, seed) for seed, image in enumerate(clean)]
    best, table = tune_strength(degraded, clean, method)
    assert list(table) == sorted(DEFAULT_STRENGTHS[method])
    assert best == max(table, key=table.get) and best > 0
    assert table[best] > table[0.0] + 3.0  # the denoiser beats the noisy input by far
    # each entry is the mean PSNR of that strength's restorations
    expected = np.mean([psnr(denoise(bad, method, best), good) for bad, good in zip(degraded, clean)])
    assert table[best] == pytest.approx(expected, abs=1e-9)


def test_tuning_on_clean_inputs_picks_no_denoising():
    clean = [clean_image(32, 32)]
    best, table = tune_strength(clean, clean, "tv", strengths=[0.1, 0.0, 0.02])
    assert best == 0.0 and table[0.0] == float("inf") and list(table) == [0.0, 0.02, 0.1]


def test_bad_method_strength_or_pairs_give_clear_errors():
    image = clean_image(16, 16)
    with pytest.raises(ValueError, match=r"unknown classical method 'bm3d'.*'nlm'.*'tv'"):
        denoise(image, "bm3d", 1.0)
    with pytest.raises(ValueError, match="unknown classical method"):
        tune_strength([image], [image], "median")
    with pytest.raises(ValueError, match=">= 0"):
        denoise(image, "tv", -0.1)
    with pytest.raises(ValueError, match="finite"):
        classical_restore([image], "nlm", float("nan"))
    with pytest.raises(ValueError, match="same number"):
        tune_strength([image, image], [image], "nlm")
    with pytest.raises(ValueError, match="pair 0: degraded image is 16x16 but clean is 20x48"):
        tune_strength([image], [clean_image(20, 48)], "nlm")
    with pytest.raises(ValueError, match="strengths is empty"):
        tune_strength([image], [image], "nlm", strengths=[])
    assert set(CLASSICAL_METHODS) == set(DEFAULT_STRENGTHS) == {"nlm", "tv"}
    assert classical.check_method("tv") == "tv"
