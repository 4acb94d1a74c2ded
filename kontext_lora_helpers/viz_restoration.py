"""Looking at restorations: a before/after wipe, PSNR against the LoRA's scale, the VAE's ceiling.

For notebook 05. Presentation only: the core modules never import this one. Images are 8-bit RGB
``PIL.Image.Image`` throughout.

* :func:`wipe`: two same-size images joined at a vertical divider, the picture a before/after
  slider shows. A plain function, so tests and scripts call it without a browser.
* :class:`BeforeAfter`: the widget, an ``ipywidgets.Image`` plus a slider that moves the divider.
  Setting ``slider.value`` from code redraws exactly as dragging it does.
* :func:`lora_scale_sweep` and :func:`plot_scale_sweep`: restore the same images with the loaded
  LoRAs at several multiples of their scales (through ``restore.restore_images``) and plot the
  mean PSNR against the multiple. Scale 0 is the base model, 1 the LoRA as trained.
* :func:`vae_ceiling_psnr`: PSNR of each clean image after a round trip through the pipeline's
  VAE, roughly the best score any restoration that ends in that VAE's decoder can reach.
* :func:`save_pngs`: write images as PNGs named after their photos, the layout
  ``evaluate.evaluate_folders`` matches by name.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from . import metrics

__all__ = [
    "DEFAULT_SCALES",
    "BeforeAfter",
    "ScalePoint",
    "divider_column",
    "lora_scale_sweep",
    "plot_method_comparison",
    "plot_scale_sweep",
    "save_pngs",
    "vae_ceiling_psnr",
    "wipe",
]

DEFAULT_SCALES: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25)
"""Multiples of the LoRA's scale a sweep visits: off, partly on, as trained, and a little beyond."""

# Yellow reads on photos of every colour and is what the other viewers use for their zoom boxes.
_DIVIDER_COLOR = (255, 220, 0)


# ---------------------------------------------------------------------------------------------
# The before/after wipe
# ---------------------------------------------------------------------------------------------


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def divider_column(width: int, position: float) -> int:
    """The first column that shows the *after* image: ``round(position * width)``, in [0, width]."""
    if not 0.0 <= float(position) <= 1.0:
        raise ValueError(f"position must be between 0 and 1; got {position}")
    return int(round(float(position) * width))


def wipe(
    before: Image.Image,
    after: Image.Image,
    position: float,
    divider_color: tuple[int, int, int] | None = _DIVIDER_COLOR,
) -> Image.Image:
    """``before`` left of a vertical divider, ``after`` right of it.

    Args:
        before, after: images of the same size (converted to RGB).
        position: where the divider stands, as a fraction of the width: 0 shows only ``after``,
            1 only ``before``, 0.5 the left half of ``before`` and the right half of ``after``.
        divider_color: colour of the one-pixel line drawn on the divider column (only when both
            images show), or None for no line.

    Returns:
        A new RGB image of the inputs' size.

    Raises:
        ValueError: the sizes differ, or ``position`` is outside [0, 1].
    """
    before, after = _rgb(before), _rgb(after)
    if before.size != after.size:
        raise ValueError(f"before and after must have the same size; got {before.size} and {after.size}")
    width, height = before.size
    column = divider_column(width, position)
    joined = after.copy()
    if column > 0:
        joined.paste(before.crop((0, 0, column, height)), (0, 0))
    if divider_color is not None and 0 < column < width:
        ImageDraw.Draw(joined).line([(column, 0), (column, height - 1)], fill=tuple(divider_color), width=1)
    return joined


def _enlarged(image: Image.Image, zoom: int) -> Image.Image:
    """Nearest-neighbour enlargement, so the pixels of a 64 px image stay visible squares."""
    if zoom == 1:
        return image
    return image.resize((image.width * zoom, image.height * zoom), Image.Resampling.NEAREST)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # fast enough to redraw on every slider move
    return buffer.getvalue()


class BeforeAfter:
    """A before/after comparison: one picture, and a slider that moves the divider between the two.

    End a notebook cell with it to show it. The images are enlarged ``zoom`` times (nearest
    neighbour) before they are joined, so the divider stays one screen pixel wide at any zoom.

    Args:
        before, after: images of the same size, e.g. a degraded photo and its restoration.
        position: where the divider starts (0: only ``after``, 1: only ``before``).
        zoom: whole-number enlargement for display (1 = actual size).
        before_label, after_label: the slider's description reads "before_label | after_label".

    Attributes:
        slider: the ``FloatSlider`` (``continuous_update=False``: the picture is redrawn when the
            handle is released, not for every pixel it passes).
        image: the ``widgets.Image`` showing the joined picture; its ``value`` is PNG bytes.
        widget: both in a ``VBox``.
    """

    def __init__(
        self,
        before: Image.Image,
        after: Image.Image,
        position: float = 0.5,
        zoom: int = 1,
        before_label: str = "before",
        after_label: str = "after",
    ):
        import ipywidgets as widgets

        if isinstance(zoom, bool) or not isinstance(zoom, int) or zoom < 1:
            raise ValueError(f"zoom must be a whole number >= 1; got {zoom!r}")
        before, after = _rgb(before), _rgb(after)
        if before.size != after.size:
            raise ValueError(f"before and after must have the same size; got {before.size} and {after.size}")
        divider_column(before.width, position)  # refuses a position outside [0, 1] before any widget exists
        # Enlarged once here: a slider move then costs one paste and one PNG encoding.
        self.before, self.after = _enlarged(before, zoom), _enlarged(after, zoom)
        self.zoom = zoom
        self.image = widgets.Image(format="png", width=self.before.width, height=self.before.height)
        self.slider = widgets.FloatSlider(
            value=position, min=0.0, max=1.0, step=0.01, continuous_update=False,
            description=f"{before_label} | {after_label}", readout_format=".2f",
            style={"description_width": "initial"}, layout=widgets.Layout(width=f"{max(300, self.before.width)}px"),
        )
        self.slider.observe(self._moved, names="value")
        self.widget = widgets.VBox([self.image, self.slider])
        self.render()

    def picture(self, position: float | None = None) -> Image.Image:
        """The joined (enlarged) picture for ``position`` (default: the slider's)."""
        return wipe(self.before, self.after, self.slider.value if position is None else position)

    def render(self) -> bytes:
        """Redraw the picture for the slider's position; returns the PNG bytes shown."""
        self.image.value = _png(self.picture())
        return self.image.value

    def _moved(self, _change: Any) -> None:
        self.render()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


# ---------------------------------------------------------------------------------------------
# Files for evaluate_folders
# ---------------------------------------------------------------------------------------------


def save_pngs(images: Sequence[Image.Image], names: Sequence[str | os.PathLike], folder: str | os.PathLike) -> list[Path]:
    """Write ``images`` into ``folder`` (created if missing) as ``<stem of name>.png``.

    PNG because it is lossless: a score then measures the model, not a JPEG encoder. Named after
    the photos (``coffee.jpg`` -> ``coffee.png``) because ``evaluate_folders`` matches files by
    name without the extension. Existing files of those names are replaced.

    Returns:
        The paths written, in the order of ``images``.
    """
    if len(images) != len(names):
        raise ValueError(f"{len(images)} image(s) but {len(names)} name(s)")
    stems = [Path(name).stem for name in names]
    if len(set(stems)) != len(stems):
        raise ValueError(f"two images would get the same file name: {sorted(stems)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for image, stem in zip(images, stems):
        path = folder / f"{stem}.png"
        _rgb(image).save(path, format="PNG")
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# The LoRA's scale against PSNR
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScalePoint:
    """One point of a scale sweep.

    Attributes:
        scale: the multiple of every loaded LoRA's own scale (0: base model, 1: as loaded).
        psnr, ssim: per image, against its clean reference (RGB, 0-255, as ``evaluate`` measures).
        images: the restored images, in the order of the inputs.
    """

    scale: float
    psnr: tuple[float, ...]
    ssim: tuple[float, ...]
    images: tuple[Image.Image, ...]

    @property
    def mean_psnr(self) -> float:
        return float(np.mean(self.psnr))

    @property
    def mean_ssim(self) -> float:
        return float(np.mean(self.ssim))


def lora_scale_sweep(
    pipe,
    loras: Sequence[Mapping[str, Any]],
    degraded: Sequence[Image.Image],
    clean: Sequence[Image.Image],
    scales: Sequence[float] = DEFAULT_SCALES,
    **restore_options: Any,
) -> list[ScalePoint]:
    """Restore ``degraded`` once per scale and measure the results against ``clean``.

    Args:
        pipe: a pipeline whose LoRAs were loaded (and left enabled) by ``restore.load_loras``.
        loras: what ``load_loras`` returned: each entry's ``adapter_name`` and ``scale``. At sweep
            value ``s`` every LoRA runs at ``s`` times its own scale, so several LoRAs keep their
            mix while the total strength changes.
        degraded, clean: equal-length lists of images; each restored image has its input's size,
            which must be its reference's size.
        scales: the multiples to visit, in order.
        **restore_options: passed to ``restore.restore_images`` (``num_inference_steps``,
            ``seed``, ``prompt``, ``guidance_scale``, ``tile``, ``batch_size``). Every scale uses
            the same seed, so the scale is the only thing that changes.

    Returns:
        One :class:`ScalePoint` per scale. Afterwards the LoRAs are back at their own scales.

    Raises:
        ValueError: no LoRA, no scale, or ``degraded`` and ``clean`` of different lengths.
    """
    from .restore import restore_images

    if not loras:
        raise ValueError("no LoRA to sweep: load one first with restore.load_loras(pipe, [path])")
    if not scales:
        raise ValueError("give at least one scale")
    if len(degraded) != len(clean):
        raise ValueError(f"{len(degraded)} degraded image(s) but {len(clean)} clean one(s)")
    names = [entry["adapter_name"] for entry in loras]
    own_scales = [float(entry["scale"]) for entry in loras]
    points = []
    try:
        for scale in scales:
            pipe.set_adapters(names, adapter_weights=[float(scale) * own for own in own_scales])
            restored = restore_images(pipe, list(degraded), **restore_options)
            points.append(ScalePoint(
                scale=float(scale),
                psnr=tuple(metrics.psnr(image, reference) for image, reference in zip(restored, clean)),
                ssim=tuple(metrics.ssim(image, reference) for image, reference in zip(restored, clean)),
                images=tuple(restored),
            ))
    finally:
        pipe.set_adapters(names, adapter_weights=own_scales)  # leave the pipeline as it was given
    return points


def plot_scale_sweep(points: Sequence[ScalePoint], references: Mapping[str, float] | None = None,
                     title: str | None = None):
    """Mean PSNR against the LoRA's scale, each image as a thin line, and reference levels.

    Args:
        points: from :func:`lora_scale_sweep`.
        references: horizontal dashed lines, e.g. ``{"degraded input": 22.3, "VAE ceiling": 26.0}``.
        title: the axis title (default: says where the best mean lies).

    Returns:
        The matplotlib ``Figure``.
    """
    import matplotlib.pyplot as plt

    scales = [point.scale for point in points]
    means = [point.mean_psnr for point in points]
    figure, axis = plt.subplots(figsize=(6, 3.4))
    per_image = np.array([point.psnr for point in points])  # (scales, images)
    for column in range(per_image.shape[1]):
        axis.plot(scales, per_image[:, column], color="0.75", linewidth=0.8,
                  label="each image" if column == 0 else None)
    axis.plot(scales, means, "o-", color="tab:blue", linewidth=2, label="mean")
    for (label, level), color in zip((references or {}).items(), ("tab:red", "tab:green", "tab:purple", "tab:brown")):
        axis.axhline(level, linestyle="--", linewidth=1, color=color, label=f"{label} ({level:.2f} dB)")
    if min(scales) <= 1.0 <= max(scales):
        axis.axvline(1.0, linestyle=":", color="0.4", linewidth=1)  # the LoRA as trained
    best = int(np.argmax(means))
    axis.set_xlabel("lora_scale (0 = base model, 1 = as trained)")
    axis.set_ylabel("PSNR against the clean photo (dB)")
    axis.set_title(title or f"best mean: {means[best]:.2f} dB at scale {scales[best]:g}", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="best", framealpha=0.9)
    figure.tight_layout()
    return figure


def plot_method_comparison(scores: Mapping[str, Mapping[str, float]], title: str | None = None):
    """Grouped bars: the mean PSNR of each method, one group per set of images.

    Args:
        scores: {group, e.g. a crop scale: {method: mean PSNR in dB}}; every group lists the same
            methods in the same order.
        title: the axis title.

    Returns:
        The matplotlib ``Figure``.
    """
    import matplotlib.pyplot as plt

    groups = list(scores)
    methods = list(scores[groups[0]])
    width = 0.8 / len(methods)
    figure, axis = plt.subplots(figsize=(7, 3.4))
    lowest = min(value for group in scores.values() for value in group.values())
    for index, method in enumerate(methods):
        positions = np.arange(len(groups)) + (index - (len(methods) - 1) / 2) * width
        values = [scores[group][method] for group in groups]
        bars = axis.bar(positions, values, width * 0.95, label=method)
        axis.bar_label(bars, labels=[f"{value:.1f}" for value in values], fontsize=7, padding=1)
    axis.set_xticks(np.arange(len(groups)), groups, fontsize=8)
    axis.set_ylim(lowest - 2, None)  # the differences are what matters; the bars start near the lowest
    axis.set_ylabel("mean PSNR (dB)")
    if title:
        axis.set_title(title, fontsize=10)
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=7, loc="upper left", framealpha=0.9)
    figure.tight_layout()
    return figure


# ---------------------------------------------------------------------------------------------
# What the VAE allows
# ---------------------------------------------------------------------------------------------


def vae_ceiling_psnr(pipe, clean: Sequence[Image.Image]) -> list[float]:
    """PSNR of each clean image after encoding and decoding it with ``pipe.vae``.

    Every image the pipeline returns comes out of this VAE's decoder, so a restoration scores
    about this much even when the transformer's latent is perfect: the number tells how much of a
    gap to the clean photo is the model's to close. (The decoder may do slightly better from a
    latent the encoder would not produce, so it is a guide, not a hard bound.)
    """
    import torch

    from .data import pil_to_tensor, tensor_to_pil
    from .latents import round_trip

    scores = []
    parameter = next(pipe.vae.parameters())
    for image in clean:
        pixels = pil_to_tensor(_rgb(image))[None].to(device=parameter.device, dtype=parameter.dtype)
        with torch.no_grad():
            reconstruction, _ = round_trip(pipe.vae, pixels)
        scores.append(metrics.psnr(tensor_to_pil(reconstruction[0]), image))
    return scores
