"""PSNR and SSIM between a restored image and its clean reference, measured as BasicSR measures them.

Both metrics work on 8-bit pixel values (0-255) and need no downloaded weights:

* **PSNR** (peak signal-to-noise ratio, dB): ``10 * log10(255^2 / MSE)``. Every 8-bit level of
  error costs the same; +1 dB is about 21% less squared error (a factor 10^-0.1). Identical images give ``inf``.
* **SSIM** (structural similarity, Wang et al. 2004): compares local means, contrasts and
  correlations in an 11x11 Gaussian window (sigma 1.5), with ``C1 = (0.01 * 255)^2`` and
  ``C2 = (0.03 * 255)^2``; 1.0 for identical images, lower as structure is lost. Only windows that
  fit inside the image are used (a 5-pixel margin is left out), as in BasicSR and scikit-image.

Options shared by both, following the super-resolution literature:

* ``y_channel=True`` measures the luma only: ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255``
  (ITU-R BT.601, MATLAB's ``rgb2ycbcr``; Y in [16, 235]), not rounded, as BasicSR does.
  Restoration papers usually report Y-channel numbers; RGB numbers are lower for colour errors.
* ``crop_border=k`` drops ``k`` pixels on every side first (border pixels of an upscaled image
  depend on the padding convention, not on the method).

Accepted images (both arguments the same kind of size):

* PIL images (converted to RGB), or a list of same-size PIL images (a batch);
* numpy arrays (H, W, 3) or (N, H, W, 3) holding 0-255 values (uint8 or float);
* torch tensors (3, H, W) or (B, 3, H, W) in [-1, 1], the package's pixel convention. They are
  clamped and rounded to the 256 levels an image file would hold, so a tensor and the PNG saved from
  it score the same.

For a batch the result is the mean of the per-image values (``reduction="none"`` gives the list):
PSNR per image first, then the mean, as BasicSR reports it (not the PSNR of the pooled squared
error, which weights the worst images less). Every figure of the course is measured this way:
training validation, ``nano check-lora``, nano's own figures, ``evaluate`` and the notebooks.

A mean over a handful of images says little without its spread: `spread` gives the mean, the
standard deviation over the images and the standard error of the mean, and `paired_spread` the
same for the per-image difference of two methods on the same images (the right spread for "A beats
B": most of the variation between images is shared by both methods and cancels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Spread", "gaussian_window", "paired_spread", "psnr", "rgb_to_y", "score_images", "spread",
           "to_pixel_array"]

PEAK = 255.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
_SSIM_C1 = (0.01 * PEAK) ** 2
_SSIM_C2 = (0.03 * PEAK) ** 2
_BT601_Y = (65.481, 128.553, 24.966)


def to_pixel_array(image) -> np.ndarray:
    """Any accepted image or batch -> float64 array (N, H, W, 3) of 0-255 values.

    Args:
        image: PIL image or list of them; numpy (H, W, 3) / (N, H, W, 3) with 0-255 values; torch (3, H, W) /
            (B, 3, H, W) in [-1, 1] (clamped, then rounded to 8-bit levels).
    """
    if isinstance(image, torch.Tensor):
        if image.ndim == 3:
            image = image.unsqueeze(0)
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"tensor images must be (3, H, W) or (B, 3, H, W) in [-1, 1]; got {tuple(image.shape)}")
        levels = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
        return levels.permute(0, 2, 3, 1).double().numpy()
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        return np.asarray(image.convert("RGB"), dtype=np.float64)[None]
    if isinstance(image, (list, tuple)) and image and all(hasattr(item, "convert") for item in image):
        return np.concatenate([to_pixel_array(item) for item in image])
    array = np.asarray(image, dtype=np.float64)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"array images must be (H, W, 3) or (N, H, W, 3) with 0-255 values; got {array.shape}")
    return array


def rgb_to_y(pixels: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) RGB 0-255 -> (N, H, W, 1) BT.601 luma in [16, 235] (float, not rounded)."""
    return (pixels @ np.asarray(_BT601_Y) / PEAK + 16.0)[..., None]


def _prepare(a, b, y_channel: bool, crop_border: int) -> tuple[np.ndarray, np.ndarray]:
    first, second = to_pixel_array(a), to_pixel_array(b)
    if first.shape != second.shape:
        raise ValueError(f"images differ in size: {first.shape[1:3]} vs {second.shape[1:3]} (or batch sizes differ)")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0; got {crop_border}")
    if crop_border:
        if 2 * crop_border >= min(first.shape[1:3]):
            raise ValueError(f"crop_border {crop_border} leaves nothing of a {first.shape[1]}x{first.shape[2]} image")
        window = (slice(None), slice(crop_border, -crop_border), slice(crop_border, -crop_border))
        first, second = first[window], second[window]
    if y_channel:
        first, second = rgb_to_y(first), rgb_to_y(second)
    return first, second


def _reduce(values: list[float], reduction: str):
    if reduction == "none":
        return values
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'none'; got {reduction!r}")
    return float(np.mean(values))


@dataclass(frozen=True)
class Spread:
    """A mean over images with its spread.

    Attributes:
        mean: the mean value. std: the standard deviation over the images (ddof 1; 0 for one image).
        sem: the standard error of the mean, ``std / sqrt(n)``: about two of them either side of the
            mean make a 95 % interval. n: the number of images.
    """

    mean: float
    std: float
    sem: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f}"

    def describe(self, unit: str = "dB") -> str:
        """E.g. ``"25.27 ± 1.92 dB (std over 16 images; mean ± 0.48 standard error)"``."""
        return f"{self.mean:.2f} ± {self.std:.2f} {unit} (std over {self.n} images; mean ± {self.sem:.2f} standard error)"

    def clearly_above(self, threshold: float = 0.0) -> bool:
        """True when the mean exceeds `threshold` by more than two standard errors (about 95 %)."""
        return self.mean - 2 * self.sem > threshold

    def as_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "sem": self.sem, "n": self.n}


def spread(values) -> Spread:
    """`Spread` of per-image values (e.g. ``psnr(a, b, reduction="none")``).

    Raises:
        ValueError: for no values, or a non-finite one (identical images give an infinite PSNR,
            which has no spread; compare such images another way).
    """
    array = np.asarray(list(values), dtype=np.float64)
    if array.size == 0:
        raise ValueError("spread of no values")
    if not np.all(np.isfinite(array)):
        raise ValueError("spread of a non-finite value (an identical image pair gives an infinite PSNR)")
    std = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return Spread(float(array.mean()), std, std / math.sqrt(array.size), int(array.size))


def paired_spread(values, baseline_values) -> Spread:
    """`Spread` of the per-image differences ``values - baseline_values`` (same images, same order).

    Raises:
        ValueError: when the two lists differ in length.
    """
    first, second = list(values), list(baseline_values)
    if len(first) != len(second):
        raise ValueError(f"paired values need the same images: {len(first)} against {len(second)}")
    return spread(np.asarray(first, dtype=np.float64) - np.asarray(second, dtype=np.float64))


def psnr(a, b, *, y_channel: bool = False, crop_border: int = 0, reduction: str = "mean"):
    """Peak signal-to-noise ratio in dB on the 0-255 scale (``inf`` for identical images).

    Args:
        a, b: the two images or batches (see the module docstring); order does not matter.
        y_channel: measure BT.601 luma only. crop_border: pixels dropped on every side.
        reduction: "mean" -> float (mean over the batch); "none" -> list of per-image floats.
    """
    first, second = _prepare(a, b, y_channel, crop_border)
    values = []
    for x, y in zip(first, second):
        mse = float(np.mean((x - y) ** 2))
        values.append(math.inf if mse == 0 else 10 * math.log10(PEAK**2 / mse))
    return _reduce(values, reduction)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """(size, size) float64 Gaussian weights summing to 1 (OpenCV's ``getGaussianKernel`` outer product)."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    line = torch.exp(-(offsets**2) / (2 * sigma**2))
    line = line / line.sum()
    return line[:, None] * line[None, :]


def _ssim_one(x: np.ndarray, y: np.ndarray) -> float:
    """Mean SSIM of one (H, W, C) pair over channels and valid window positions."""
    if min(x.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels; got {x.shape[0]}x{x.shape[1]}")
    # Channels become the batch so one conv filters each of them with the same window.
    first = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[:, None]
    second = torch.from_numpy(np.ascontiguousarray(y.transpose(2, 0, 1)))[:, None]
    window = gaussian_window()[None, None]
    blur = lambda image: F.conv2d(image, window)  # noqa: E731  'valid': windows inside the image only
    mu_x, mu_y = blur(first), blur(second)
    var_x = blur(first * first) - mu_x**2
    var_y = blur(second * second) - mu_y**2
    covariance = blur(first * second) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + _SSIM_C1) * (2 * covariance + _SSIM_C2)) / (
        (mu_x**2 + mu_y**2 + _SSIM_C1) * (var_x + var_y + _SSIM_C2)
    )
    return float(ssim_map.mean())


def ssim(a, b, *, y_channel: bool = False, crop_border: int = 0, reduction: str = "mean"):
    """Structural similarity (Gaussian 11x11 window, sigma 1.5) on the 0-255 scale; 1.0 when identical.

    RGB images are measured per channel and averaged (BasicSR's convention). Symmetric in a and b.

    Args:
        a, b: the two images or batches (see the module docstring), at least 11x11 after cropping.
        y_channel, crop_border, reduction: as for `psnr`.
    """
    first, second = _prepare(a, b, y_channel, crop_border)
    return _reduce([_ssim_one(x, y) for x, y in zip(first, second)], reduction)


def score_images(images, references) -> dict:
    """PSNR and SSIM of each image against its reference, and their means.

    Args:
        images, references: equal-length sequences of images in any accepted form; each pair has
            one size, pairs may differ.

    Returns:
        {"psnr": mean dB, "ssim": mean, "psnr_per_image": [...], "ssim_per_image": [...]}.
    """
    images, references = list(images), list(references)
    if len(images) != len(references):
        raise ValueError(f"{len(images)} images for {len(references)} references")
    psnrs = [psnr(image, reference) for image, reference in zip(images, references)]
    ssims = [ssim(image, reference) for image, reference in zip(images, references)]
    return {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims)),
            "psnr_per_image": psnrs, "ssim_per_image": ssims}
