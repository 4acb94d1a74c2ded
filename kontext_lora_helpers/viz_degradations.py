"""Looking at degradations: preview-sized photos, zoom boxes, PSNR, one-operation examples, sweeps.

Presentation only, for notebook 01 and the degradation explorer (``widgets.py``); the core modules
never import this one. Images are 8-bit RGB ``PIL.Image.Image`` throughout.

The helpers answer the questions a reader asks while designing a degradation recipe:

* what does each operation do on its own? (:func:`operation_examples`, :func:`show_operations`)
* how fast does the photo fall apart as a parameter grows? (:func:`severity_sweep`,
  :func:`show_sweep`, with :func:`image_psnr` as the measured number)
* what do the fine details look like? (:func:`zoom_box`, a crop that ``viz.show_images`` enlarges)
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps

from . import viz
from .data import check_resolution
from .degradations import OP_PARAMETERS, DegradationConfig, apply_degradation
from .metrics import psnr

__all__ = [
    "SweepPoint",
    "encode_png",
    "image_psnr",
    "operation_examples",
    "prepare_photo",
    "severity_sweep",
    "show_operations",
    "show_sweep",
    "step_summary",
    "zoom_box",
]


def prepare_photo(image: Image.Image, resolution: int | None) -> Image.Image:
    """The square a training item would show: short side resized to ``resolution``, centre crop.

    Degradation parameters are in pixels (a blur sigma of 2 px, a JPEG block of 8 px), so a
    preview only tells the truth at the size training uses. This matches ``DegDataset`` with
    ``center_crop=True`` up to resampling details.

    Args:
        image: any PIL image (converted to RGB).
        resolution: side of the square in pixels, a multiple of 16 (see ``data.check_resolution``),
            or ``None`` to keep the photo's own size and shape.

    Returns:
        8-bit RGB image, ``resolution x resolution`` (or the original size for ``None``).
    """
    image = image if image.mode == "RGB" else image.convert("RGB")
    if resolution is None:
        return image.copy()
    side = check_resolution(resolution)
    return ImageOps.fit(image, (side, side), method=Image.Resampling.BICUBIC, centering=(0.5, 0.5))


def zoom_box(
    size: tuple[int, int], zoom: int = 4, center: tuple[float, float] = (0.5, 0.5)
) -> tuple[int, int, int, int]:
    """A ``(left, top, right, bottom)`` crop of ``1/zoom`` of each side, centred near ``center``.

    Args:
        size: ``(width, height)`` of the image in pixels.
        zoom: magnification, >= 1 (1 = the whole image).
        center: the crop's centre as fractions of width and height (0-1); the box is shifted
            inwards where it would cross the border.

    Returns:
        Integer pixel box with ``right - left = max(1, width // zoom)`` (same for the height).
    """
    if zoom < 1:
        raise ValueError(f"zoom must be >= 1; got {zoom}")
    width, height = size
    box_width, box_height = max(1, int(width // zoom)), max(1, int(height // zoom))
    left = round(center[0] * width - box_width / 2)
    top = round(center[1] * height - box_height / 2)
    left = min(max(left, 0), width - box_width)
    top = min(max(top, 0), height - box_height)
    return left, top, left + box_width, top + box_height


def image_psnr(degraded: Image.Image, clean: Image.Image) -> float:
    """PSNR in dB of ``degraded`` against ``clean`` (same size, 8-bit RGB; peak 255, all channels).

    ``inf`` for identical images; every 6 dB less means the error's amplitude doubled. The one
    PSNR of the course (`metrics.psnr`), which also scores the VAE round trip and every restoration.
    """
    if degraded.size != clean.size:
        raise ValueError(f"images differ in size: {degraded.size} vs {clean.size}")
    return psnr(degraded, clean)


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes for a preview; ``compress_level=1`` encodes a 512 px photo several times faster
    than PIL's default level 6, for files about 20% larger. PNG, not JPEG, so the preview of a
    degradation carries no compression artifacts of its own."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def step_summary(step: Mapping[str, Any], separator: str = ", ") -> str:
    """A record step as short text: ``{"op": "noise", "noise_level": 0.05, ...}`` -> ``"noise_level=0.05"``.

    Only the operation's parameters (and ``gray`` when it is true) are shown; derived seeds are not.
    """
    parts = [f"{name}={_format_value(step[name])}" for name in OP_PARAMETERS[step["op"]]]
    if step.get("gray"):
        parts.append("gray")
    return separator.join(parts)


def operation_examples(
    photo: Image.Image,
    operations: Iterable[str],
    config: DegradationConfig | None = None,
    seed: int = 0,
    **overrides: Any,
) -> tuple[list[Image.Image], list[str]]:
    """Each operation applied *alone* to ``photo``, with its parameters taken from ``config``.

    Args:
        photo: 8-bit RGB image.
        operations: names from ``degradations.DEGRADATION_TYPES``.
        config: where the parameter values come from (``None``: the defaults); ranges are drawn
            with ``seed``, so the titles show the values actually used.
        seed: random seed of every example (the same for each, so they are comparable).
        **overrides: config fields to change first, e.g. ``motion_blur_length=15``.

    Returns:
        ``(images, titles)``: one degraded image per operation (same size as ``photo``) and a title
        such as ``"noise\\nnoise_level=0.05"``.
    """
    config = (config or DegradationConfig()).replace(**overrides)
    images, titles = [], []
    for op in operations:
        # Probabilities and a second round would hide what the operation alone does.
        alone = config.replace(degradation_types=(op,), degradation_probabilities={}, second_order=None)
        degraded, record = apply_degradation(photo, alone, seed=seed)
        images.append(degraded)
        summary = step_summary(record[0], separator="\n") if record else "(nothing applied)"
        titles.append(f"{op}\n{summary}")
    return images, titles


def show_operations(
    photo: Image.Image,
    operations: Iterable[str],
    config: DegradationConfig | None = None,
    seed: int = 0,
    zoom: int = 4,
    center: tuple[float, float] = (0.5, 0.5),
    **overrides: Any,
):
    """A figure: the clean photo and each operation alone, with a zoomed crop below each.

    Arguments as :func:`operation_examples`, plus ``zoom`` and ``center`` for :func:`zoom_box`.
    Returns the matplotlib ``Figure``.
    """
    images, titles = operation_examples(photo, operations, config, seed, **overrides)
    return viz.show_images([photo, *images], ["clean", *titles], zoom_box=zoom_box(photo.size, zoom, center))


@dataclass(frozen=True)
class SweepPoint:
    """One step of a severity sweep: the parameter value, the degraded image and its PSNR (dB)."""

    value: Any
    image: Image.Image
    psnr_db: float


def severity_sweep(
    photo: Image.Image,
    parameter: str,
    values: Sequence[Any],
    config: DegradationConfig | None = None,
    seed: int = 0,
) -> list[SweepPoint]:
    """Degrade ``photo`` once per value of ``parameter`` (same seed, so only the value changes).

    Args:
        photo: 8-bit RGB image.
        parameter: a ``DegradationConfig`` field such as ``"noise_level"`` or ``"jpeg_quality"``.
        values: the values to try (fixed values or ranges, each valid for the parameter).
        config: the rest of the recipe; ``None`` means "only the operation that reads
            ``parameter``", so the sweep isolates it.
        seed: random seed used for every value.

    Returns:
        One :class:`SweepPoint` per value, in order; PSNR is measured against ``photo``.
    """
    if config is None:
        owner = next((op for op, names in OP_PARAMETERS.items() if parameter in names), None)
        if owner is None:
            raise ValueError(f"{parameter!r} is not a degradation parameter; see degradations.OP_PARAMETERS")
        config = DegradationConfig(degradation_types=(owner,))
    points = []
    for value in values:
        degraded, _ = apply_degradation(photo, config.replace(**{parameter: value}), seed=seed)
        points.append(SweepPoint(value=value, image=degraded, psnr_db=image_psnr(degraded, photo)))
    return points


def show_sweep(
    points: Sequence[SweepPoint],
    parameter: str,
    zoom: int = 4,
    center: tuple[float, float] = (0.5, 0.5),
):
    """A figure of a sweep: each degraded image titled with its value and PSNR, zoomed crops below."""
    titles = [f"{parameter}={_format_value(point.value)}\n{point.psnr_db:.1f} dB" for point in points]
    images = [point.image for point in points]
    return viz.show_images(images, titles, zoom_box=zoom_box(images[0].size, zoom, center))
