"""The degradation explorer: tune a degradation recipe on real photos, then take it to training.

A degradation recipe is easier to judge by eye than by number: is ``noise_level=0.05`` a little
grain or a snowstorm at 512 px? Does ``lr_scale=8`` leave a face recognisable? The explorer shows a
clean photo and its degraded copy side by side, with a zoomed crop of both, and updates them when a
control changes. What you see is exactly what training will do, because the explorer builds a
``DegradationConfig`` from its controls and calls the same ``apply_degradation`` as ``DegDataset``.

Everything a ``DegradationConfig`` holds has a control: a checkbox and an "apply with probability"
slider per operation, a slider per parameter (with a *range* toggle that turns it into a
``(low, high)`` range drawn anew for every image), the gray-noise probability, the order, and the
optional second round as JSON. A preset menu fills the controls; a seed box picks the random draw.
Below the pictures it prints the record of what was applied, the restoration prompt (plain and
described), the command-line flags for ``python -m kontext_lora_helpers.degrade`` and the training
command, and the config as JSON and as Python; an *export* button writes the JSON to a file.

The pieces, from plain to interactive:

* :func:`render_preview`: photo + config + seed -> :class:`PreviewResult` (PNG bytes, record,
  prompts, flags, PSNR). A plain function: tests and scripts call it without a browser.
* :func:`python_snippet`, :func:`degrade_command`, :func:`train_command`, :func:`export_config`:
  the ways a tuned config leaves the explorer.
* :class:`ParameterControl`: one parameter's slider / range slider pair.
* :class:`DegradationExplorer` (and :func:`degradation_explorer`): the widget itself. Its controls
  are public attributes; setting their ``.value`` from code re-renders exactly as a click does.

Presentation only: this module imports ipywidgets; the core modules never import it.
"""

from __future__ import annotations

import html
import io
import json
import os
import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import ipywidgets as widgets
from PIL import Image, ImageDraw

from .course import HELD_OUT_DIRNAME, data_samples
from .fileio import write_text_atomically
from .data import check_resolution
from .degradations import (
    DEGRADATION_ORDERS,
    DEGRADATION_TYPES,
    OP_PARAMETERS,
    PARAMETER_SPECS,
    PRESETS,
    DegradationConfig,
    apply_degradation,
    preset_name,
)
from .images import list_images, load_rgb
from .prompts import DEFAULT_INSTANCE_PROMPT, restoration_prompt
from .viz_degradations import encode_png, image_psnr, prepare_photo, zoom_box

__all__ = [
    "RESOLUTION_CHOICES",
    "SLIDER_SETTINGS",
    "DegradationExplorer",
    "ParameterControl",
    "PreviewResult",
    "degradation_explorer",
    "degrade_command",
    "export_config",
    "python_snippet",
    "render_preview",
    "train_command",
]

#: ``(min, max, step)`` of each parameter's slider. The valid ranges in ``PARAMETER_SPECS`` are far
#: wider (a blur sigma of 50 px is allowed but useless), so the sliders cover the useful part;
#: a value outside it (from a preset or ``set_config``) widens the slider, never beyond the spec.
SLIDER_SETTINGS: dict[str, tuple[float, float, float]] = {
    "lr_scale": (1, 16, 0.5),
    "noise_level": (0, 0.3, 0.005),
    "blur_radius": (0, 8, 0.1),
    "jpeg_quality": (1, 100, 1),
    "aniso_sigma_x": (0, 8, 0.1),
    "aniso_sigma_y": (0, 8, 0.1),
    "aniso_angle": (0, 180, 1),
    "motion_blur_length": (1, 51, 1),
    "motion_blur_angle": (0, 180, 1),
    "poisson_scale": (0, 5, 0.05),
    "fade_strength": (0, 1, 0.01),
    "color_cast_strength": (0, 1, 0.01),
    "color_cast_hue": (0, 360, 1),
    "scratch_count": (0, 40, 1),
    "dust_count": (0, 500, 1),
    "grain_strength": (0, 0.3, 0.005),
    "grain_size": (1, 8, 0.1),
}

#: Preview sizes offered by the explorer: ``(label, resolution)``; 0 keeps the photo's own size.
#: The other sizes crop a centre square as ``DegDataset`` does, since parameters are in pixels.
RESOLUTION_CHOICES: tuple[tuple[str, int], ...] = (
    ("photo's own size", 0),
    ("256 px", 256),
    ("384 px", 384),
    ("512 px", 512),
    ("768 px", 768),
    ("1024 px", 1024),
)

_ZOOM_CHOICES = (("off", 1), ("2x", 2), ("4x", 4), ("8x", 8))
_CUSTOM = "custom"
# Yellow reads on photos of every colour and is what viz.show_images uses for its zoom boxes.
_OUTLINE_COLOR = (255, 220, 0)


# ---------------------------------------------------------------------------------------------
# Rendering: a plain function, testable without a browser
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreviewResult:
    """Everything the explorer shows for one (photo, config, seed).

    Attributes:
        clean_png, clean_zoom_png: the clean photo (with the zoom box drawn on it) and its zoomed
            crop as PNG bytes; ``None`` when rendered with ``include_clean=False``.
        degraded_png, degraded_zoom_png: the same two views of the degraded photo.
        degraded: the degraded photo itself, 8-bit RGB, same size as the input (no zoom box).
        record: the degradation record applied (list of step dicts, JSON-serialisable).
        prompt, described_prompt, numeric_prompt: ``restoration_prompt`` in its three modes.
        flags: ``config.to_cli_flags()``, the flags of ``degrade`` and ``train``.
        config, seed: what was rendered.
        zoom_box: ``(left, top, right, bottom)`` of the zoomed crop, in pixels.
        psnr_db: PSNR of the degraded photo against the clean one, dB (``inf`` if identical).
    """

    clean_png: bytes | None
    clean_zoom_png: bytes | None
    degraded_png: bytes
    degraded_zoom_png: bytes
    degraded: Image.Image
    record: list[dict[str, Any]]
    prompt: str
    described_prompt: str
    numeric_prompt: str
    flags: list[str]
    config: DegradationConfig
    seed: int
    zoom_box: tuple[int, int, int, int]
    psnr_db: float

    @property
    def flags_text(self) -> str:
        """The flags as one shell-quoted line, ready to paste after a command."""
        return shlex.join(self.flags)

    @property
    def config_json(self) -> str:
        """``config.to_dict()`` as indented JSON (what :func:`export_config` writes)."""
        return json.dumps(self.config.to_dict(), indent=2)


def _outlined(image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """A copy of ``image`` with the zoom box drawn on it, so the reader knows where the crop is."""
    outlined = image.copy()
    width = max(1, min(image.size) // 200)
    ImageDraw.Draw(outlined).rectangle(
        (box[0], box[1], box[2] - 1, box[3] - 1), outline=_OUTLINE_COLOR, width=width
    )
    return outlined


def _enlarged_crop(image: Image.Image, box: tuple[int, int, int, int], zoom: int) -> Image.Image:
    """The crop ``box`` enlarged ``zoom`` times with nearest-neighbour, so pixels stay visible squares."""
    crop = image.crop(box)
    return crop.resize((crop.width * zoom, crop.height * zoom), Image.Resampling.NEAREST)


def _views(image: Image.Image, box: tuple[int, int, int, int], zoom: int) -> tuple[bytes, bytes]:
    """PNG bytes of the full view (zoom box outlined unless zoom is off) and of the zoomed crop."""
    full = _outlined(image, box) if zoom > 1 else image
    return encode_png(full), encode_png(_enlarged_crop(image, box, zoom))


def render_preview(
    image: Image.Image,
    config: DegradationConfig | None = None,
    seed: int = 0,
    *,
    zoom: int = 4,
    zoom_center: tuple[float, float] = (0.5, 0.5),
    instance_prompt: str = DEFAULT_INSTANCE_PROMPT,
    include_clean: bool = True,
) -> PreviewResult:
    """Degrade ``image`` with ``config`` and ``seed`` and prepare everything the explorer shows.

    Args:
        image: the clean photo, 8-bit RGB, already at preview size (see
            ``viz_degradations.prepare_photo``); other modes are converted.
        config: the recipe (``None``: the original guide's defaults).
        seed: random seed, an int >= 0; the same seed gives byte-identical PNGs.
        zoom: magnification of the zoomed crop (1, 2, 4, 8, ...; 1 shows the whole image again).
        zoom_center: centre of the crop as fractions (0-1) of width and height.
        instance_prompt: the fixed instruction the prompts start with.
        include_clean: also encode the clean views; the explorer skips them when only the
            recipe changed, since they depend on the photo and zoom alone.

    Returns:
        A :class:`PreviewResult`. A 512 x 512 preview of the original guide's recipe takes a few tens of
        milliseconds, most of it the degradation and the PNG encoding.
    """
    image = image if image.mode == "RGB" else image.convert("RGB")
    config = DegradationConfig() if config is None else config
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a whole number >= 0; got {seed!r}")
    degraded, record = apply_degradation(image, config, seed=seed)
    box = zoom_box(image.size, zoom, zoom_center)
    clean_png, clean_zoom_png = _views(image, box, zoom) if include_clean else (None, None)
    degraded_png, degraded_zoom_png = _views(degraded, box, zoom)
    return PreviewResult(
        clean_png=clean_png,
        clean_zoom_png=clean_zoom_png,
        degraded_png=degraded_png,
        degraded_zoom_png=degraded_zoom_png,
        degraded=degraded,
        record=record,
        prompt=restoration_prompt(record, instance_prompt, "plain"),
        described_prompt=restoration_prompt(record, instance_prompt, "described"),
        numeric_prompt=restoration_prompt(record, instance_prompt, "numeric"),
        flags=config.to_cli_flags(),
        config=config,
        seed=seed,
        zoom_box=box,
        psnr_db=image_psnr(degraded, image),
    )


# ---------------------------------------------------------------------------------------------
# Taking a config out of the explorer
# ---------------------------------------------------------------------------------------------


def _config_expression(config: DegradationConfig, indent: str) -> str:
    """``DegradationConfig(...)`` source text; the original guide's four fields always, others only
    if not default."""
    defaults = DegradationConfig()
    inner = indent + "    "
    lines = []
    for item in fields(config):
        value = getattr(config, item.name)
        always = item.name in ("degradation_types", "lr_scale", "noise_level", "blur_radius", "jpeg_quality")
        if not always and value == getattr(defaults, item.name):
            continue
        text = _config_expression(value, inner) if isinstance(value, DegradationConfig) else repr(value)
        lines.append(f"{inner}{item.name}={text},")
    return "DegradationConfig(\n" + "\n".join(lines) + f"\n{indent})"


def python_snippet(config: DegradationConfig, name: str = "config") -> str:
    """Python source that rebuilds ``config``: an import line and ``name = DegradationConfig(...)``.

    Fields equal to their defaults are left out (except the original guide's four); ranges are tuples.
    ``exec`` of the text defines ``name`` equal to ``config``.
    """
    return (
        "from kontext_lora_helpers.degradations import DegradationConfig\n\n"
        f"{name} = {_config_expression(config, '')}"
    )


def degrade_command(
    config: DegradationConfig,
    input_path: str | os.PathLike = "data_samples/held_out",
    output_path: str | os.PathLike = "outputs/degraded",
    seed: int = 0,
) -> str:
    """The shell command that degrades ``input_path`` with ``config`` (one line, shell-quoted)."""
    return shlex.join(
        [
            "python", "-m", "kontext_lora_helpers.degrade",
            "--input", str(input_path), "--output", str(output_path), "--seed", str(seed),
            *config.to_cli_flags(),
        ]
    )


def train_command(
    config: DegradationConfig,
    hr_root: str | os.PathLike = "data_samples",
    output_dir: str | os.PathLike = "outputs/restoration-lora",
    pretrained_model_name_or_path: str = "black-forest-labs/FLUX.1-Kontext-dev",
    instance_prompt: str = DEFAULT_INSTANCE_PROMPT,
    resolution: int = 512,
) -> str:
    """The original guide's training command with ``config``'s degradation flags (one line,
    shell-quoted).

    The model, data and output flags are the original guide's; append the other training flags you need.
    """
    return shlex.join(
        [
            "accelerate", "launch", "-m", "kontext_lora_helpers.train",
            "--pretrained_model_name_or_path", pretrained_model_name_or_path,
            "--hr_root", str(hr_root), "--output_dir", str(output_dir),
            "--instance_prompt", instance_prompt, "--resolution", str(resolution),
            *config.to_cli_flags(),
        ]
    )


def export_config(config: DegradationConfig, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``config.to_dict()`` as JSON to ``path``; read it back with ``DegradationConfig.from_dict``.

    Args:
        config: the recipe to save.
        path: the JSON file to write; missing parent folders are created.
        overwrite: replace an existing file. Without it an existing file is never touched.

    Returns:
        The path written.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
        IsADirectoryError: ``path`` is a folder.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name such as {path / 'degradation.json'}")
    text = json.dumps(config.to_dict(), indent=2) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    if overwrite:
        # Through a temporary file and a rename, so an interrupted write never leaves half a file.
        write_text_atomically(path, text)
        return path
    try:
        # Mode "x" creates the file only if it does not exist, in one step: nothing can slip in
        # between a check and the write.
        with open(path, "x") as file:
            file.write(text)
    except FileExistsError:
        raise FileExistsError(f"{path} already exists; choose overwrite to replace it") from None
    return path


# ---------------------------------------------------------------------------------------------
# One parameter: a slider that can become a range slider
# ---------------------------------------------------------------------------------------------


def _tidy(value: float) -> float | int:
    """A slider's float without the browser's rounding noise (0.35000000000000003 -> 0.35), and
    whole numbers as ints (8.0 -> 8) so flags read ``--lr_scale 8``. 15 significant digits keep
    every value a person can set."""
    number = float(f"{float(value):.15g}")
    return int(number) if number.is_integer() else number


class ParameterControl:
    """The control of one ``DegradationConfig`` parameter: a slider, or a range slider.

    ``.box`` is the widget to lay out: the active slider and a *range* toggle. ``.value`` reads
    and writes the parameter as the config holds it: a number, or a ``(low, high)`` tuple while
    the toggle is on. A value set from code is returned exactly as given (no rounding by the
    slider's step), so ``set_config(c)`` followed by reading the controls gives ``c`` back.

    Args:
        name: a key of ``PARAMETER_SPECS``.
        value: the initial value (number or ``(low, high)``).
        on_change: called with no arguments once per change of the value, whether from a slider,
            the toggle or the ``value`` setter.
    """

    def __init__(self, name: str, value: Any, on_change: Callable[[], None] | None = None):
        self.name = name
        self.spec = PARAMETER_SPECS[name]
        low, high, step = SLIDER_SETTINGS[name]
        self._default_limits = (low, high)
        integer = self.spec.integer
        options = dict(
            min=low,
            max=high,
            step=step,
            continuous_update=False,
            readout_format="d" if integer else ".4g",
            description=name,
            tooltip=f"{self.spec.description}; valid {self.spec.range_text()}",
            style={"description_width": "150px"},
            layout=widgets.Layout(width="460px"),
        )
        self.single = (widgets.IntSlider if integer else widgets.FloatSlider)(value=low, **options)
        self.range = (widgets.IntRangeSlider if integer else widgets.FloatRangeSlider)(
            value=(low, high), **options
        )
        self.range_toggle = widgets.ToggleButton(
            value=False,
            description="range",
            tooltip="draw a new value for every image from a (low, high) range",
            layout=widgets.Layout(width="70px"),
        )
        self.box = widgets.HBox([self.single, self.range_toggle])
        self._on_change: Callable[[], None] | None = None  # the initial value is no change
        self._quiet = False
        self._exact: Any = None
        self.single.observe(self._slider_moved, names="value")
        self.range.observe(self._slider_moved, names="value")
        self.range_toggle.observe(self._toggled, names="value")
        self.value = value
        self._on_change = on_change

    @contextmanager
    def _quietly(self) -> Iterator[None]:
        """Change the sliders without each change counting as a separate edit."""
        self._quiet, previous = True, self._quiet
        try:
            yield
        finally:
            self._quiet = previous

    def _notify(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def _show_active(self) -> None:
        self.box.children = (self.range if self.range_toggle.value else self.single, self.range_toggle)

    def _fit_limits(self, low: float, high: float) -> None:
        """Slider limits: the default ones, widened to include ``low``-``high`` if needed."""
        new_min = min(self._default_limits[0], low)
        new_max = max(self._default_limits[1], high)
        for slider in (self.single, self.range):
            # Held notifications validate min <= max only at the end, whatever the order here.
            with slider.hold_trait_notifications():
                slider.min, slider.max = new_min, new_max

    @property
    def value(self) -> Any:
        current = tuple(self.range.value) if self.range_toggle.value else self.single.value
        if self._exact is not None and current == self._exact:
            return self._exact
        if isinstance(current, tuple):
            return tuple(_tidy(number) for number in current)
        return _tidy(current)

    @value.setter
    def value(self, value: Any) -> None:
        if isinstance(value, list):
            value = tuple(value)
        is_range = isinstance(value, tuple)
        numbers = value if is_range else (value,)
        for number in numbers:
            self.spec.check(number)
        with self._quietly():
            self._fit_limits(min(numbers), max(numbers))
            if is_range:
                self.range.value = value
            else:
                self.single.value = value
            self.range_toggle.value = is_range
            self._show_active()
        self._exact = value
        self._notify()

    def _slider_moved(self, change: Any) -> None:
        if not self._quiet:
            self._notify()

    def _toggled(self, change: Any) -> None:
        if self._quiet:
            return
        spread = (self.single.max - self.single.min) / 10
        with self._quietly():
            if change.new:  # fixed -> a range around the fixed value
                centre = self.single.value
                if self.spec.integer:
                    spread = max(1, round(spread))
                low, high = max(self.range.min, centre - spread), min(self.range.max, centre + spread)
                self.range.value = (low, high)
            else:  # range -> its midpoint
                low, high = self.range.value
                middle = (low + high) / 2
                self.single.value = round(middle) if self.spec.integer else middle
            self._show_active()
        self._notify()


# ---------------------------------------------------------------------------------------------
# The explorer
# ---------------------------------------------------------------------------------------------

# Operations grouped as the notebook teaches them: the original guide's four, then the extended set.
_CONTROL_TABS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("guide's four", ("downsample", "noise", "blur", "jpeg")),
    ("more blur & noise", ("aniso_blur", "motion_blur", "poisson_noise")),
    ("old photo", ("fade", "scratches", "grain")),
)


@lru_cache(maxsize=16)
def _preview_photo(path: str, resolution: int) -> Image.Image:
    """The photo at ``path`` prepared for preview (cached: switching back and forth is instant)."""
    size = resolution or None
    return prepare_photo(load_rgb(path, min_short_side=size), size)


def _photo_options(photos: str | os.PathLike | Sequence[str | os.PathLike] | None) -> list[tuple[str, str]]:
    """``(label, path)`` for every photo: a folder is searched recursively, labels relative to it."""
    if photos is None or isinstance(photos, (str, os.PathLike)):
        root = data_samples() if photos is None else Path(photos)
        paths = list_images(root)
        options = [
            (path.relative_to(root).as_posix() if root.is_dir() else path.name, str(path)) for path in paths
        ]
    else:
        options = [(Path(path).name, str(path)) for path in photos]
    if not options:
        raise ValueError(f"no photos to explore in {photos!r}")
    return options


def _pre(text: str) -> str:
    return f"<pre style='white-space: pre-wrap; margin: 0'>{html.escape(text)}</pre>"


class DegradationExplorer:
    """Interactive degradation explorer; display it by ending a notebook cell with it.

    Args:
        photos: a folder (searched recursively) or a list of image files; default: the course's
            ``data_samples/`` (training photos and ``held_out/``).
        image: the photo shown first (a path, or its label such as ``"held_out/coffee.jpg"``);
            default: the first held-out photo.
        config: the recipe to start from; default ``PRESETS[preset]``.
        preset: name of the preset to start from when ``config`` is not given (default
            ``"original_guide"``; the old name ``"seed"`` is accepted too).
        seed: the random seed (int >= 0).
        resolution: preview size, a multiple of 16 (a centre square, as in training), or 0 / None
            for the photo's own size.
        zoom: magnification of the zoomed crop (1 = off, 2, 4, 8); ``zoom_center``: its centre as
            fractions (0-1) of width and height.
        instance_prompt: the fixed instruction of the prompts.
        export_path: the file the *export* button writes.

    Attributes (all ipywidgets unless said otherwise; set ``.value`` to drive the explorer):
        photo, resolution, seed, next_seed, preset, zoom, zoom_x, zoom_y: the top bar.
        type_checkboxes, probability_sliders: one per operation (dicts keyed by operation name).
        parameters: one :class:`ParameterControl` per parameter (dict keyed by parameter name).
        gray_noise_prob, degradation_order, second_order_json, second_order_prob: the rest of the
            config.
        clean_image, degraded_image, clean_zoom_image, degraded_zoom_image: ``widgets.Image``.
        status, record_view, prompt_view, flags_view, config_view: ``widgets.HTML`` read-outs.
        export_path, export_overwrite, export_button, export_message: the export row.
        widget: the whole explorer (a ``VBox``). result: the last :class:`PreviewResult`.
    """

    def __init__(
        self,
        photos: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        image: str | os.PathLike | None = None,
        config: DegradationConfig | None = None,
        preset: str | None = None,
        seed: int = 0,
        resolution: int = 512,
        zoom: int = 4,
        zoom_center: tuple[float, float] = (0.5, 0.5),
        instance_prompt: str = DEFAULT_INSTANCE_PROMPT,
        export_path: str | os.PathLike = "degradation_config.json",
    ):
        if config is not None and preset is not None:
            raise ValueError("give either config or preset, not both")
        if preset is not None and preset_name(preset) not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        config = PRESETS[preset_name(preset or "original_guide")] if config is None else config
        self.instance_prompt = instance_prompt
        self.result: PreviewResult | None = None
        self._pending = False
        self._clean_key: tuple | None = None
        self._type_order: list[str] = []  # ticked operations in the order "listed" runs them

        # Held: controls fire while they are being created; render once everything exists.
        self._hold_depth = 1
        self._build_top_bar(photos, image, seed, resolution, zoom, zoom_center)
        self._build_config_controls(config)
        self._build_views()
        self._build_export(export_path)
        self._hold_depth = 0
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.photo, self.resolution, self.preset]),
                widgets.HBox([self.seed, self.next_seed, self.zoom, self.zoom_x, self.zoom_y]),
                self._pictures,
                self.status,
                self._controls,
                self._readouts,
                widgets.HBox([self.export_path, self.export_overwrite, self.export_button]),
                self.export_message,
            ]
        )
        self.set_config(config)

    # -- building ------------------------------------------------------------------------------

    def _build_top_bar(self, photos, image, seed, resolution, zoom, zoom_center) -> None:
        options = _photo_options(photos)
        if image is None:
            held_out = [path for label, path in options if label.startswith(f"{HELD_OUT_DIRNAME}/")]
            chosen = held_out[0] if held_out else options[0][1]
        else:
            wanted = str(image)
            matches = [path for label, path in options if wanted in (label, path, Path(path).name)]
            matches += [path for _, path in options if Path(path).resolve() == Path(wanted).resolve()]
            if not matches:
                labels = ", ".join(label for label, _ in options)
                raise ValueError(f"image {wanted!r} is not among the photos: {labels}")
            chosen = matches[0]
        self.photo = widgets.Dropdown(options=options, value=chosen, description="photo")

        resolution = resolution or 0  # None, like 0, keeps the photo's own size
        choices = list(RESOLUTION_CHOICES)
        if resolution and resolution not in [value for _, value in choices]:
            choices.append((f"{check_resolution(resolution)} px", resolution))
        self.resolution = widgets.Dropdown(options=choices, value=resolution, description="resolution")
        self.preset = widgets.Dropdown(options=[*PRESETS, _CUSTOM], value=_CUSTOM, description="preset")
        self.seed = widgets.IntText(value=seed, description="seed", layout=widgets.Layout(width="180px"))
        self.next_seed = widgets.Button(description="next seed", tooltip="seed + 1: another random draw")
        zoom_choices = list(_ZOOM_CHOICES)
        if zoom not in [value for _, value in zoom_choices]:
            if isinstance(zoom, bool) or not isinstance(zoom, int) or zoom < 1:
                raise ValueError(f"zoom must be a whole number >= 1; got {zoom!r}")
            zoom_choices.append((f"{zoom}x", zoom))
        self.zoom = widgets.Dropdown(options=zoom_choices, value=zoom, description="zoom",
                                     layout=widgets.Layout(width="160px"))
        # A narrow label: with the default label width a 220 px slider keeps almost no track.
        slider = dict(
            min=0.0, max=1.0, step=0.01, continuous_update=False, layout=widgets.Layout(width="220px"),
            style={"description_width": "50px"},
        )
        self.zoom_x = widgets.FloatSlider(value=zoom_center[0], description="zoom x", **slider)
        self.zoom_y = widgets.FloatSlider(value=zoom_center[1], description="zoom y", **slider)

        for control in (self.photo, self.resolution, self.seed, self.zoom, self.zoom_x, self.zoom_y):
            control.observe(self._changed, names="value")
        self.preset.observe(self._preset_chosen, names="value")
        self.next_seed.on_click(self._next_seed_clicked)

    def _build_config_controls(self, config: DegradationConfig) -> None:
        self.type_checkboxes: dict[str, widgets.Checkbox] = {}
        self.probability_sliders: dict[str, widgets.FloatSlider] = {}
        self.parameters: dict[str, ParameterControl] = {}
        for op in DEGRADATION_TYPES:
            checkbox = widgets.Checkbox(value=False, description=op, indent=False,
                                        layout=widgets.Layout(width="150px"))
            checkbox.observe(lambda change, op=op: self._type_toggled(op, change.new), names="value")
            probability = widgets.FloatSlider(
                value=1.0, min=0.0, max=1.0, step=0.05, continuous_update=False, description="p(apply)",
                tooltip=f"probability that {op} is applied to an image",
                layout=widgets.Layout(width="300px"),
            )
            probability.observe(self._changed, names="value")
            self.type_checkboxes[op] = checkbox
            self.probability_sliders[op] = probability
            for name in OP_PARAMETERS[op]:
                self.parameters[name] = ParameterControl(name, getattr(config, name), on_change=self._changed)

        self.gray_noise_prob = widgets.FloatSlider(
            value=0.0, min=0.0, max=1.0, step=0.05, continuous_update=False, description="gray_noise_prob",
            tooltip="probability that noise / poisson_noise is gray (brightness only)",
            style={"description_width": "150px"}, layout=widgets.Layout(width="460px"),
        )
        self.degradation_order = widgets.Dropdown(options=DEGRADATION_ORDERS, description="order")
        self.second_order_json = widgets.Textarea(
            value="", continuous_update=False, description="second order",
            placeholder="empty: no second round; or DegradationConfig JSON (see to_dict), as the "
            "realesrgan preset fills in",
            layout=widgets.Layout(width="760px", height="160px"),
        )
        self.second_order_prob = widgets.FloatSlider(
            value=1.0, min=0.0, max=1.0, step=0.05, continuous_update=False, description="p(second)",
            tooltip="probability of applying the second round",
        )
        rest = (self.gray_noise_prob, self.degradation_order, self.second_order_json, self.second_order_prob)
        for control in rest:
            control.observe(self._changed, names="value")

        def section(op: str) -> widgets.VBox:
            header = widgets.HBox([self.type_checkboxes[op], self.probability_sliders[op]])
            rows = [self.parameters[name].box for name in OP_PARAMETERS[op]]
            return widgets.VBox([header, *rows], layout=widgets.Layout(margin="0 0 8px 0"))

        pages = []
        for _, ops in _CONTROL_TABS:
            pages.append(widgets.VBox([section(op) for op in ops]))
        pages[1].children += (self.gray_noise_prob,)
        order_help = widgets.HTML(
            "<small>fixed: the pipeline order (the original guide's order for its four); listed: the "
            "order the operations were ticked or the preset lists them; shuffled: a new order per "
            "image.</small>"
        )
        pages.append(
            widgets.VBox([self.degradation_order, order_help, self.second_order_json, self.second_order_prob])
        )
        self._controls = widgets.Tab(children=pages)
        self._controls.titles = tuple(title for title, _ in _CONTROL_TABS) + ("order & second round",)

    def _build_views(self) -> None:
        def picture() -> widgets.Image:
            return widgets.Image(format="png", layout=widgets.Layout(width="320px", height="auto"))

        self.clean_image, self.degraded_image = picture(), picture()
        self.clean_zoom_image, self.degraded_zoom_image = picture(), picture()

        def column(title: str, full: widgets.Image, zoomed: widgets.Image) -> widgets.VBox:
            return widgets.VBox([widgets.HTML(f"<b>{title}</b>"), full, zoomed])

        self._pictures = widgets.HBox(
            [column("clean", self.clean_image, self.clean_zoom_image),
             column("degraded", self.degraded_image, self.degraded_zoom_image)]
        )
        self.status = widgets.HTML()
        self.record_view = widgets.HTML()
        self.prompt_view = widgets.HTML()
        self.flags_view = widgets.HTML()
        self.config_view = widgets.HTML()
        self._readouts = widgets.Tab(
            children=[self.record_view, self.prompt_view, self.flags_view, self.config_view]
        )
        self._readouts.titles = ("record", "prompts", "flags & commands", "config (JSON / Python)")

    def _build_export(self, export_path: str | os.PathLike) -> None:
        self.export_path = widgets.Text(value=str(export_path), description="export to",
                                        layout=widgets.Layout(width="460px"))
        self.export_overwrite = widgets.Checkbox(
            value=False, description="overwrite an existing file", indent=False
        )
        self.export_button = widgets.Button(description="export config JSON", button_style="primary")
        self.export_button.on_click(lambda _button: self.export())
        self.export_message = widgets.HTML()

    # -- reading and writing the config ---------------------------------------------------------

    @property
    def config(self) -> DegradationConfig:
        """The ``DegradationConfig`` the controls describe (ValueError if they describe none)."""
        text = self.second_order_json.value.strip()
        try:
            second_order = (
                None if text.lower() in ("", "none") else DegradationConfig.from_dict(json.loads(text))
            )
        except (ValueError, TypeError) as error:
            raise ValueError(f"second order: {error}") from None
        probabilities = {
            op: _tidy(slider.value) for op, slider in self.probability_sliders.items() if slider.value != 1.0
        }
        return DegradationConfig(
            degradation_types=tuple(op for op in self._type_order if self.type_checkboxes[op].value),
            degradation_order=self.degradation_order.value,
            degradation_probabilities=probabilities,
            gray_noise_prob=_tidy(self.gray_noise_prob.value),
            second_order=second_order,
            second_order_prob=_tidy(self.second_order_prob.value),
            **{name: control.value for name, control in self.parameters.items()},
        )

    def set_config(self, config: DegradationConfig) -> None:
        """Fill every control from ``config`` and render once."""
        if not isinstance(config, DegradationConfig):
            raise TypeError(f"config must be a DegradationConfig; got {type(config).__name__}")
        with self._held():
            for op, checkbox in self.type_checkboxes.items():
                checkbox.value = op in config.degradation_types
                self.probability_sliders[op].value = config.degradation_probabilities.get(op, 1.0)
            # After the checkboxes, whose handlers append to the order as they are ticked.
            self._type_order = list(config.degradation_types)
            for name, control in self.parameters.items():
                control.value = getattr(config, name)
            self.gray_noise_prob.value = config.gray_noise_prob
            self.degradation_order.value = config.degradation_order
            second = config.second_order
            self.second_order_json.value = "" if second is None else json.dumps(second.to_dict(), indent=1)
            self.second_order_prob.value = config.second_order_prob
            self._pending = True  # render even if no control changed (the first fill, a re-apply)

    # -- events --------------------------------------------------------------------------------

    @contextmanager
    def _held(self) -> Iterator[None]:
        """Collect the changes made inside into one render at the end (e.g. filling from a preset)."""
        self._hold_depth += 1
        try:
            yield
        finally:
            self._hold_depth -= 1
        if self._hold_depth == 0 and self._pending:
            self.render()

    def _changed(self, change: Any = None) -> None:
        if self._hold_depth:
            self._pending = True
        else:
            self.render()

    def _type_toggled(self, op: str, checked: bool) -> None:
        # Newly ticked operations go last, which is where "listed" order runs them.
        if op in self._type_order:
            self._type_order.remove(op)
        if checked:
            self._type_order.append(op)
        self._changed()

    def _preset_chosen(self, change: Any) -> None:
        if self._hold_depth or change.new == _CUSTOM:
            return
        self.set_config(PRESETS[change.new])

    def _next_seed_clicked(self, _button: Any) -> None:
        self.seed.value = max(0, self.seed.value) + 1

    # -- rendering -----------------------------------------------------------------------------

    def _show_error(self, error: Exception) -> None:
        self.status.value = f"<span style='color: #b00020'>{html.escape(str(error))}</span>"

    def render(self) -> PreviewResult | None:
        """Rebuild the preview from the controls; returns the result (``None`` if they are invalid,
        in which case ``status`` says why and the last good preview stays on screen)."""
        self._pending = False
        try:
            config = self.config
            seed = self.seed.value
            if seed < 0:
                raise ValueError(f"seed must be >= 0; got {seed}")
            photo = _preview_photo(self.photo.value, self.resolution.value)
        except (ValueError, OSError) as error:  # includes images.UnusableImageError
            self._show_error(error)
            return None
        zoom, center = self.zoom.value, (self.zoom_x.value, self.zoom_y.value)
        clean_key = (self.photo.value, self.resolution.value, zoom, center)
        started = time.perf_counter()
        result = render_preview(
            photo, config, seed, zoom=zoom, zoom_center=center,
            instance_prompt=self.instance_prompt, include_clean=clean_key != self._clean_key,
        )
        milliseconds = (time.perf_counter() - started) * 1000
        if result.clean_png is not None:
            self.clean_image.value, self.clean_zoom_image.value = result.clean_png, result.clean_zoom_png
            self._clean_key = clean_key
        self.degraded_image.value = result.degraded_png
        self.degraded_zoom_image.value = result.degraded_zoom_png
        zoom_display = None if zoom > 1 else "none"
        self.clean_zoom_image.layout.display = self.degraded_zoom_image.layout.display = zoom_display
        self._show_text(result, photo, milliseconds)
        self._sync_preset(config)
        self.result = result
        return result

    def _show_text(self, result: PreviewResult, photo: Image.Image, milliseconds: float) -> None:
        steps = len(result.record)
        self.status.value = (
            f"{photo.width} x {photo.height} px · {steps} operation{'s' if steps != 1 else ''} applied · "
            f"PSNR {result.psnr_db:.1f} dB against the clean photo · rendered in {milliseconds:.0f} ms"
        )
        record = "\n".join(json.dumps(step) for step in result.record) or "[] (nothing applied)"
        self.record_view.value = _pre(record)
        self.prompt_view.value = _pre(
            f"plain (the guide's): {result.prompt}\n"
            f"described:           {result.described_prompt}\n"
            f"numeric:             {result.numeric_prompt}"
        )
        resolution = self.resolution.value or 512
        self.flags_view.value = _pre(
            f"degradation flags (degrade and train):\n{result.flags_text}\n\n"
            "try it on the held-out photos (each image's seed comes from --seed and its path, so the\n"
            f"draws differ from this preview):\n{degrade_command(result.config, seed=result.seed)}\n\n"
            f"train with it:\n{train_command(result.config, resolution=resolution)}"
        )
        self.config_view.value = _pre(
            f"JSON (what export writes; DegradationConfig.from_dict reads it):\n{result.config_json}\n\n"
            f"Python:\n{python_snippet(result.config)}"
        )

    def _sync_preset(self, config: DegradationConfig) -> None:
        """Show the preset the controls match, or "custom" once they match none."""
        name = next((name for name, preset in PRESETS.items() if preset == config), _CUSTOM)
        if self.preset.value != name:
            with self._held():  # the preset handler ignores changes made while held
                self.preset.value = name

    # -- export and display --------------------------------------------------------------------

    def picture(self) -> Image.Image:
        """The explorer's four views as one static picture: clean | degraded, with their zoomed crops
        below when zoom is on. For places where the widget is not live (a notebook read on GitHub).

        Returns:
            An 8-bit RGB image: the two full views side by side (the zoom box outlined), and under
            them the two enlarged crops, each scaled to the width of its full view.
        """
        result = self.result if self.result is not None else self.render()
        if result is None:
            raise ValueError(f"the explorer's controls are invalid: {self.status.value}")
        clean = Image.open(io.BytesIO(self.clean_image.value)).convert("RGB")
        degraded = Image.open(io.BytesIO(result.degraded_png)).convert("RGB")
        rows = [[clean, degraded]]
        if self.zoom.value > 1:
            zooms = [Image.open(io.BytesIO(png)).convert("RGB")
                     for png in (self.clean_zoom_image.value, result.degraded_zoom_png)]
            rows.append([crop.resize((clean.width, clean.width * crop.height // crop.width), Image.Resampling.NEAREST)
                         for crop in zooms])
        gap = 4
        width = 2 * clean.width + gap
        height = sum(row[0].height for row in rows) + gap * (len(rows) - 1)
        canvas = Image.new("RGB", (width, height), "white")
        top = 0
        for row in rows:
            for column, view in enumerate(row):
                canvas.paste(view, (column * (clean.width + gap), top))
            top += row[0].height + gap
        return canvas

    def export(self) -> Path | None:
        """Write the current config as JSON to ``export_path`` (what the export button does).

        An existing file is replaced only when ``export_overwrite`` is ticked. Returns the path
        written, or ``None`` with the reason in ``export_message``.
        """
        try:
            path = export_config(self.config, self.export_path.value, overwrite=self.export_overwrite.value)
        except (ValueError, OSError) as error:
            self.export_message.value = f"<span style='color: #b00020'>{html.escape(str(error))}</span>"
            return None
        self.export_message.value = (
            f"wrote {html.escape(str(path))} · load it with "
            "<code>DegradationConfig.from_dict(json.loads(Path(path).read_text()))</code>"
        )
        return path

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def degradation_explorer(**options: Any) -> DegradationExplorer:
    """Create a :class:`DegradationExplorer` (same arguments); end a notebook cell with it to show it.

    Example:
        >>> explorer = degradation_explorer(preset="old_photo", resolution=512)   # doctest: +SKIP
        >>> explorer                                                               # doctest: +SKIP
    """
    return DegradationExplorer(**options)
