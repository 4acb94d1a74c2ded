"""Degradations: how a clean photograph is turned into the damaged one the LoRA learns to repair.

A restoration LoRA is trained on pairs (degraded *control*, clean *target*). We rarely own real
pairs, so we synthesise the degraded half. What the model can repair is exactly what we show it
here, so this module is the first design decision of the course.

The original guide's recipe has four operations, applied in this order (:data:`ORIGINAL_GUIDE_ORDER`):

============  ================  =========================================================
operation     parameter         meaning
============  ================  =========================================================
downsample    ``lr_scale``      shrink by this factor (bicubic), then enlarge back to the
                                original size (bicubic): fine detail is gone, size is kept
noise         ``noise_level``   standard deviation of Gaussian noise on the 0-1 scale
                                (0.05 is about 13 grey levels out of 255)
blur          ``blur_radius``   Gaussian blur; PIL's radius *is* the standard deviation, px
jpeg          ``jpeg_quality``  JPEG round trip at this quality (1 worst - 100 best)
============  ================  =========================================================

Going further, every parameter may be a fixed value or a ``(low, high)`` range drawn anew for each
image, and there are more operations (:data:`DEGRADATION_TYPES`): ``aniso_blur`` (an elliptical,
rotated Gaussian), ``motion_blur`` (a line kernel), ``poisson_noise`` (shot noise that grows with
brightness), gray (luminance-only) noise through ``gray_noise_prob``, and the old-photo family
``fade`` (washed-out colours and a colour cast), ``scratches`` (scratches and dust) and ``grain``
(film grain). :data:`PRESETS` bundles them: ``"original_guide"``, a Real-ESRGAN-style
second-order pipeline (``"realesrgan"``) and ``"old_photo"``.

The code follows BasicSR's split between *choosing* and *applying*:

1. :func:`sample_degradation_steps` draws concrete parameters from a :class:`DegradationConfig`
   with a ``numpy.random.Generator`` and returns a **record**: a JSON-serialisable list of dicts
   such as ``{"op": "noise", "noise_level": 0.05, "gray": False, "seed": 1234}``. Operations that
   need randomness get their own derived ``seed`` in the record.
2. :func:`apply_degradation_steps` applies a record to an image with the pure ``apply_*``
   functions. The same record on the same image gives byte-identical output, so a record stored
   next to a training pair (or shown in a widget, or turned into a caption by ``prompts.py``) is a
   complete description of what happened.

:func:`apply_degradation` does both in one call. Images go in and out as 8-bit RGB
``PIL.Image.Image``; the numeric work happens in float32 on the 0-255 scale.
"""

from __future__ import annotations

import argparse
import colorsys
import io
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .images import to_rgb

__all__ = [
    "DEGRADATION_ORDERS",
    "DEGRADATION_TYPES",
    "OP_PARAMETERS",
    "ORIGINAL_GUIDE_ORDER",
    "PARAMETER_SPECS",
    "PIPELINE_ORDER",
    "PRESETS",
    "PRESET_ALIASES",
    "SEED_ORDER",
    "DegradationConfig",
    "ParameterSpec",
    "add_degradation_arguments",
    "anisotropic_gaussian_kernel",
    "apply_aniso_blur",
    "apply_blur",
    "apply_degradation",
    "apply_degradation_steps",
    "degrade_each",
    "apply_downsample",
    "apply_fade",
    "apply_grain",
    "apply_jpeg",
    "apply_motion_blur",
    "apply_noise",
    "apply_poisson_noise",
    "apply_scratches",
    "config_from_args",
    "motion_blur_kernel",
    "parse_parameter",
    "preset_name",
    "sample_degradation_steps",
]

#: A parameter is either one value or an inclusive ``(low, high)`` range drawn per image.
Parameter = float | int | tuple[float, float] | tuple[int, int]

#: The original guide's four operations in the guide's order.
ORIGINAL_GUIDE_ORDER: tuple[str, ...] = ("downsample", "noise", "blur", "jpeg")
SEED_ORDER = ORIGINAL_GUIDE_ORDER  # the old name, kept for existing imports

#: Every operation name accepted in ``degradation_types`` (the original guide's four first).
DEGRADATION_TYPES: tuple[str, ...] = ORIGINAL_GUIDE_ORDER + (
    "aniso_blur",
    "motion_blur",
    "poisson_noise",
    "fade",
    "scratches",
    "grain",
)

#: The order used when ``degradation_order="fixed"`` (the default). It follows the life of an old
#: photograph: the print fades, carries film grain and collects scratches; then it is captured
#: (downsampled, noisy, blurred) and saved as a JPEG. The original guide's four keep the guide's order.
PIPELINE_ORDER: tuple[str, ...] = (
    "fade",
    "grain",
    "scratches",
    "downsample",
    "noise",
    "poisson_noise",
    "blur",
    "aniso_blur",
    "motion_blur",
    "jpeg",
)

#: ``"fixed"``: :data:`PIPELINE_ORDER`; ``"listed"``: the order of ``degradation_types``;
#: ``"shuffled"``: a random order per image (BSRGAN's shuffled degradations).
DEGRADATION_ORDERS: tuple[str, ...] = ("fixed", "listed", "shuffled")

#: The parameters each operation reads, named exactly like the config fields, the command-line
#: flags, the keys of a record step and the keyword arguments of the ``apply_*`` function.
OP_PARAMETERS: dict[str, tuple[str, ...]] = {
    "downsample": ("lr_scale",),
    "noise": ("noise_level",),
    "blur": ("blur_radius",),
    "jpeg": ("jpeg_quality",),
    "aniso_blur": ("aniso_sigma_x", "aniso_sigma_y", "aniso_angle"),
    "motion_blur": ("motion_blur_length", "motion_blur_angle"),
    "poisson_noise": ("poisson_scale",),
    "fade": ("fade_strength", "color_cast_strength", "color_cast_hue"),
    "scratches": ("scratch_count", "dust_count"),
    "grain": ("grain_strength", "grain_size"),
}

# Operations that draw random numbers while applied: their record step carries a derived "seed".
_RANDOM_OPS = frozenset({"noise", "poisson_noise", "scratches", "grain"})
# Operations whose record step also says whether the noise was gray (luminance-only).
_NOISE_OPS = frozenset({"noise", "poisson_noise"})
# BT.601 luma weights, the convention of JPEG and of most restoration papers.
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class ParameterSpec:
    """Valid range and meaning of one degradation parameter (also what a widget slider needs)."""

    name: str
    low: float
    high: float
    integer: bool
    description: str

    def check(self, value: Any, *, owner: str = "", label: str | None = None) -> int | float:
        """``value`` as a Python int/float if it is a number inside ``[low, high]``, else ValueError.

        The message starts with ``label`` (default: ``owner`` + the parameter name).
        """
        label = label if label is not None else f"{owner}{self.name}"
        if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.integer, np.floating)
        ):
            raise ValueError(f"{label} must be a number in {self.range_text()}; got {value!r}")
        number = float(value)
        if math.isnan(number) or not (self.low <= number <= self.high):
            raise ValueError(
                f"{label} must be in {self.range_text()} ({self.description}); got {_format_number(value)}"
            )
        if self.integer:
            if number != int(number):
                raise ValueError(f"{label} must be a whole number in {self.range_text()}; got {value!r}")
            return int(number)
        return int(value) if isinstance(value, (int, np.integer)) else number

    def range_text(self) -> str:
        return f"[{_format_number(self.low)}, {_format_number(self.high)}]"


def _spec(name: str, low: float, high: float, description: str, integer: bool = False) -> ParameterSpec:
    return ParameterSpec(name=name, low=low, high=high, integer=integer, description=description)


#: Every parameter with its valid range. Ranges ``(low, high)`` must lie inside these bounds.
#: Angles are in degrees, counter-clockwise from the horizontal as seen on screen.
PARAMETER_SPECS: dict[str, ParameterSpec] = {
    spec.name: spec
    for spec in (
        _spec("lr_scale", 1, 64, "downsampling factor; 1 leaves the image unchanged"),
        _spec("noise_level", 0, 1, "Gaussian noise standard deviation on the 0-1 scale"),
        _spec("blur_radius", 0, 50, "Gaussian blur standard deviation in pixels (PIL radius)"),
        _spec("jpeg_quality", 1, 100, "JPEG quality, 1 = worst, 100 = best", integer=True),
        _spec("aniso_sigma_x", 0, 50, "anisotropic blur standard deviation along the angle, px"),
        _spec("aniso_sigma_y", 0, 50, "anisotropic blur standard deviation across the angle, px"),
        _spec("aniso_angle", 0, 180, "direction of aniso_sigma_x in degrees"),
        _spec("motion_blur_length", 1, 201, "length of the motion blur streak in pixels", integer=True),
        _spec("motion_blur_angle", 0, 180, "direction of the motion in degrees"),
        _spec("poisson_scale", 0, 10, "Poisson (shot) noise strength; 1 = 255 photons at white"),
        _spec("fade_strength", 0, 1, "washed-out look: less saturation and contrast, lifted blacks"),
        _spec("color_cast_strength", 0, 1, "strength of the colour cast"),
        _spec("color_cast_hue", 0, 360, "hue of the colour cast in degrees (30 orange/sepia, 55 yellow)"),
        _spec("scratch_count", 0, 200, "number of scratches", integer=True),
        _spec("dust_count", 0, 5000, "number of dust specks", integer=True),
        _spec("grain_strength", 0, 1, "film grain standard deviation on the 0-1 scale at mid-grey"),
        _spec("grain_size", 1, 16, "film grain size in pixels"),
    )
}

# Probabilities are plain numbers (never ranges).
_PROBABILITY_SPEC = _spec("probability", 0, 1, "a probability")


def _format_number(value: Any) -> str:
    """Shortest exact text for a number: ``8``, ``0.05``, ``0.1176...``; used in flags and messages."""
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value))  # repr round-trips exactly and keeps "1.0" a float when parsed back
    return repr(value)


# ---------------------------------------------------------------------------------------------
# The configuration
# ---------------------------------------------------------------------------------------------


def _normalize_types(value: Any) -> tuple[str, ...]:
    if value is None:
        return ORIGINAL_GUIDE_ORDER
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("", "none"):
            return ()
        value = [part.strip() for part in text.split(",") if part.strip()]
    if not isinstance(value, Iterable):
        raise ValueError(
            f"degradation_types must be a comma-separated string or a list of names; got {value!r}"
        )
    names = tuple(str(name).strip() for name in value)
    for name in names:
        if name not in DEGRADATION_TYPES:
            raise ValueError(
                f"unknown degradation type {name!r} in degradation_types; "
                f"choose from: {', '.join(DEGRADATION_TYPES)}"
            )
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(
            f"degradation_types lists {', '.join(duplicates)} more than once; "
            "use second_order to apply an operation twice"
        )
    return names


def _normalize_parameter(name: str, value: Any, owner: str = "") -> Parameter:
    """A checked fixed value or ``(low, high)`` tuple for parameter ``name``."""
    spec = PARAMETER_SPECS[name]
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(
                f"{owner}{name} range must be (low, high) with two numbers in {spec.range_text()}; "
                f"got {value!r}"
            )
        low = spec.check(value[0], owner=owner)
        high = spec.check(value[1], owner=owner)
        if low > high:
            raise ValueError(
                f"{owner}{name} range ({_format_number(low)}, {_format_number(high)}) has low > high; "
                f"write it as (low, high) with low <= high inside {spec.range_text()}"
            )
        return (low, high)
    return spec.check(value, owner=owner)


def _normalize_probabilities(value: Any, owner: str = "") -> dict[str, float]:
    if value is None:
        return {}
    if isinstance(value, str):
        value = parse_probabilities(value)
    if not isinstance(value, Mapping):
        raise ValueError(
            f"{owner}degradation_probabilities must map degradation types to probabilities; got {value!r}"
        )
    result = {}
    for name, probability in value.items():
        if name not in DEGRADATION_TYPES:
            raise ValueError(
                f"unknown degradation type {name!r} in {owner}degradation_probabilities; "
                f"choose from: {', '.join(DEGRADATION_TYPES)}"
            )
        label = f"{owner}degradation_probabilities[{name!r}]"
        result[str(name)] = float(_PROBABILITY_SPEC.check(probability, label=label))
    return result


@dataclass(frozen=True)
class DegradationConfig:
    """Everything that decides how clean photos are degraded; immutable, validated on creation.

    Parameters of the operations (see :data:`PARAMETER_SPECS` for valid ranges) are either a fixed
    value or an inclusive ``(low, high)`` range drawn uniformly for every image (whole numbers for
    ``jpeg_quality``, ``motion_blur_length``, ``scratch_count`` and ``dust_count``). Only the
    parameters of operations listed in ``degradation_types`` matter.

    Attributes:
        degradation_types: operations to apply, a tuple of names from :data:`DEGRADATION_TYPES`
            (a comma string such as ``"downsample,noise"`` or ``"none"`` is accepted too).
        lr_scale, noise_level, blur_radius, jpeg_quality: the original guide's parameters and defaults.
        degradation_order: ``"fixed"`` (:data:`PIPELINE_ORDER`, the original guide's order for
            its four), ``"listed"`` (as listed) or ``"shuffled"`` (random per image).
        degradation_probabilities: probability of applying each listed operation (missing: 1).
        gray_noise_prob: probability that ``noise`` / ``poisson_noise`` is gray (the same value on
            all three channels, so only brightness is disturbed) instead of per channel colour noise.
        poisson_scale: Poisson noise strength; ``aniso_*``, ``motion_blur_*``: the extra blurs;
            ``fade_strength``, ``color_cast_*``, ``scratch_count``, ``dust_count``, ``grain_*``:
            the old-photo operations.
        second_order: an optional second config applied after this one (Real-ESRGAN's
            "second-order" degradation), with probability ``second_order_prob``.

    Change a field with :meth:`replace` (the result is validated): ``config.replace(noise_level=0.1)``.
    """

    degradation_types: tuple[str, ...] = ORIGINAL_GUIDE_ORDER
    lr_scale: Parameter = 8
    noise_level: Parameter = 0.05
    blur_radius: Parameter = 1.0
    jpeg_quality: Parameter = 75
    degradation_order: str = "fixed"
    degradation_probabilities: dict[str, float] = field(default_factory=dict)
    gray_noise_prob: float = 0.0
    poisson_scale: Parameter = 1.0
    aniso_sigma_x: Parameter = 2.0
    aniso_sigma_y: Parameter = 0.5
    aniso_angle: Parameter = (0.0, 180.0)
    motion_blur_length: Parameter = 9
    motion_blur_angle: Parameter = (0.0, 180.0)
    fade_strength: Parameter = 0.4
    color_cast_strength: Parameter = 0.3
    color_cast_hue: Parameter = (20.0, 50.0)
    scratch_count: Parameter = 4
    dust_count: Parameter = 20
    grain_strength: Parameter = 0.05
    grain_size: Parameter = 1.5
    second_order: DegradationConfig | None = None
    second_order_prob: float = 1.0

    def __post_init__(self) -> None:
        # Normalise convenient inputs (strings, lists, numpy numbers, dicts) into the canonical
        # immutable form, checking every value on the way; frozen dataclasses need object.__setattr__.
        self._normalize(owner="")

    def _normalize(self, owner: str) -> None:
        set_field = object.__setattr__
        set_field(self, "degradation_types", _normalize_types(self.degradation_types))
        for name in PARAMETER_SPECS:
            set_field(self, name, _normalize_parameter(name, getattr(self, name), owner))
        if self.degradation_order not in DEGRADATION_ORDERS:
            raise ValueError(
                f"{owner}degradation_order must be one of {', '.join(DEGRADATION_ORDERS)}; "
                f"got {self.degradation_order!r}"
            )
        set_field(
            self, "degradation_probabilities", _normalize_probabilities(self.degradation_probabilities, owner)
        )
        for name in ("gray_noise_prob", "second_order_prob"):
            probability = _PROBABILITY_SPEC.check(getattr(self, name), label=f"{owner}{name}")
            set_field(self, name, float(probability))
        second = self.second_order
        if isinstance(second, Mapping):
            second = DegradationConfig.from_dict(second)
        if second is not None and not isinstance(second, DegradationConfig):
            raise ValueError(
                f"{owner}second_order must be a DegradationConfig, a dict or None; got {second!r}"
            )
        set_field(self, "second_order", second)

    def __hash__(self) -> int:
        # The generated hash would fail on the dict field; hashing the JSON form keeps configs
        # usable as cache keys (a widget can memoise previews per config).
        # Numbers become floats first, since 8 == 8.0 and equal configs must hash equally.
        def canonical(value: Any) -> Any:
            if isinstance(value, dict):
                return {key: canonical(item) for key, item in value.items()}
            if isinstance(value, list):
                return [canonical(item) for item in value]
            if isinstance(value, int) and not isinstance(value, bool):
                return float(value)
            return value

        return hash(json.dumps(canonical(self.to_dict()), sort_keys=True))

    def validate(self) -> DegradationConfig:
        """Check every field again (raises ValueError naming the field and its valid range); returns self."""
        self._normalize(owner="")
        if self.second_order is not None:
            self.second_order._normalize(owner="second_order.")
        return self

    def replace(self, **changes: Any) -> DegradationConfig:
        """A validated copy with some fields changed, e.g. ``config.replace(noise_level=(0.01, 0.1))``."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise ValueError(f"unknown DegradationConfig field(s): {', '.join(unknown)}")
        return replace(self, **changes)

    # -- serialisation ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (ranges as two-item lists); :meth:`from_dict` reverses it."""
        result: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "second_order":
                value = None if value is None else value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, dict):
                value = dict(value)
            result[item.name] = value
        return result

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DegradationConfig:
        """Build a config from :meth:`to_dict` output (missing keys take their defaults)."""
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown DegradationConfig field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**dict(data))

    def to_cli_flags(self) -> list[str]:
        """Command-line flags that rebuild this config in ``degrade`` or ``train``.

        The original guide's five flags are always written; the others only where they differ from
        the defaults. ``config_from_args(parser.parse_args(config.to_cli_flags()))`` equals ``config``
        for a parser set up with :func:`add_degradation_arguments`. Join with ``shlex.join`` to
        print a shell command.
        """
        defaults = DegradationConfig()
        flags = ["--degradation_types", ",".join(self.degradation_types) or "none"]
        for item in fields(self):
            name = item.name
            value = getattr(self, name)
            if name == "degradation_types":
                continue
            always = name in ("lr_scale", "noise_level", "blur_radius", "jpeg_quality")
            if not always and value == getattr(defaults, name):
                continue
            if name == "second_order":
                text = "none" if value is None else json.dumps(value.to_dict(), separators=(",", ":"))
            elif name == "degradation_probabilities":
                text = ",".join(f"{key}={_format_number(p)}" for key, p in value.items())
            elif isinstance(value, tuple):
                text = f"{_format_number(value[0])},{_format_number(value[1])}"
            elif isinstance(value, str):
                text = value
            else:
                text = _format_number(value)
            flags += [f"--{name}", text]
        return flags


# ---------------------------------------------------------------------------------------------
# Kernels and small helpers
# ---------------------------------------------------------------------------------------------


def _as_float_pixels(image: Image.Image) -> np.ndarray:
    """RGB PIL image -> float32 array (H, W, 3) with values 0-255."""
    return np.asarray(image, dtype=np.float32)


def _to_image(pixels: np.ndarray) -> Image.Image:
    """float32 array (H, W, 3) on the 0-255 scale -> RGB PIL image (clipped, rounded half up)."""
    np.clip(pixels, 0.0, 255.0, out=pixels)
    pixels += 0.5  # truncation after +0.5 rounds to nearest and is faster than np.rint
    return Image.fromarray(pixels.astype(np.uint8), mode="RGB")


def _check_rgb(image: Any) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL.Image.Image, got {type(image).__name__}")
    return image if image.mode == "RGB" else to_rgb(image)


def _check(name: str, value: Any) -> int | float:
    return PARAMETER_SPECS[name].check(value)


def anisotropic_gaussian_kernel(sigma_x: float, sigma_y: float, angle: float) -> np.ndarray:
    """An elliptical Gaussian blur kernel, float32 (k, k), k odd, summing to 1.

    ``sigma_x`` is the standard deviation (px) along the direction ``angle`` degrees
    counter-clockwise from the horizontal *as seen on screen* (image rows grow downwards),
    ``sigma_y`` the one across it. Equal sigmas give an ordinary isotropic Gaussian. The kernel
    reaches 3 sigma in each direction, as Real-ESRGAN's does.
    """
    sigma_x = max(float(sigma_x), 1e-3)
    sigma_y = max(float(sigma_y), 1e-3)
    radius = max(1, math.ceil(3.0 * max(sigma_x, sigma_y)))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    dx, dy = np.meshgrid(offsets, offsets)  # dy grows downwards, like image rows
    theta = math.radians(angle)
    along = dx * math.cos(theta) - dy * math.sin(theta)
    across = dx * math.sin(theta) + dy * math.cos(theta)
    kernel = np.exp(-0.5 * ((along / sigma_x) ** 2 + (across / sigma_y) ** 2))
    return (kernel / kernel.sum()).astype(np.float32)


def motion_blur_kernel(length: int, angle: float) -> np.ndarray:
    """A straight motion-blur streak, float32 (k, k), k odd, summing to 1.

    The streak is ``length`` pixels long, centred, in the direction ``angle`` degrees
    counter-clockwise from the horizontal. It is drawn anti-aliased (many points along the line
    splatted bilinearly), so every angle gives the same total length. ``length`` 1 is the identity.
    """
    length = int(length)
    if length <= 1:
        return np.ones((1, 1), dtype=np.float32)
    size = length if length % 2 == 1 else length + 1
    centre = size // 2
    kernel = np.zeros((size + 1, size + 1), dtype=np.float64)  # one spare row/column for splatting
    half = (length - 1) / 2.0
    positions = np.linspace(-half, half, 8 * length)
    theta = math.radians(angle)
    xs = centre + positions * math.cos(theta)
    ys = centre - positions * math.sin(theta)  # minus: rows grow downwards on screen
    x0 = np.floor(xs).astype(int)
    y0 = np.floor(ys).astype(int)
    fx = xs - x0
    fy = ys - y0
    for ox, oy, weight in (
        (0, 0, (1 - fx) * (1 - fy)),
        (1, 0, fx * (1 - fy)),
        (0, 1, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        np.add.at(kernel, (y0 + oy, x0 + ox), weight)
    kernel = kernel[:size, :size]
    return (kernel / kernel.sum()).astype(np.float32)


def _next_fast_length(n: int) -> int:
    """Smallest m >= n whose only prime factors are 2, 3 and 5 (sizes FFTs are fast at)."""
    while True:
        m = n
        for factor in (2, 3, 5):
            while m % factor == 0:
                m //= factor
        if m == 1:
            return n
        n += 1


def _convolve(image: Image.Image, kernel: np.ndarray) -> Image.Image:
    """Convolve each RGB channel with a centred, point-symmetric kernel (k_h, k_w).

    PIL only has fixed 3x3 / 5x5 kernels, so general kernels go through numpy's FFT. The image is
    mirror-padded first so the borders are not darkened by zeros (Real-ESRGAN pads the same way).
    """
    if kernel.shape == (1, 1):
        return image.copy()
    pixels = _as_float_pixels(image)
    height, width = pixels.shape[:2]
    pad_y, pad_x = kernel.shape[0] // 2, kernel.shape[1] // 2
    padded = np.pad(pixels, ((pad_y, pad_y), (pad_x, pad_x), (0, 0)), mode="reflect")
    fft_shape = (
        _next_fast_length(padded.shape[0] + kernel.shape[0] - 1),
        _next_fast_length(padded.shape[1] + kernel.shape[1] - 1),
    )
    spectrum = np.fft.rfftn(padded, s=fft_shape, axes=(0, 1))
    spectrum *= np.fft.rfftn(kernel.astype(np.float32), s=fft_shape, axes=(0, 1))[..., None]
    full = np.fft.irfftn(spectrum, s=fft_shape, axes=(0, 1))
    # The "valid" part of the full convolution lines up with the original pixels.
    top, left = kernel.shape[0] - 1, kernel.shape[1] - 1
    result = np.ascontiguousarray(full[top : top + height, left : left + width], dtype=np.float32)
    return _to_image(result)


# ---------------------------------------------------------------------------------------------
# The operations: pure functions of (image, parameters[, random generator])
# ---------------------------------------------------------------------------------------------


def apply_downsample(image: Image.Image, lr_scale: float) -> Image.Image:
    """Shrink by ``lr_scale`` and enlarge back to the original size, both bicubic (the original
    guide's op).

    The small size is ``(width // lr_scale, height // lr_scale)`` exactly as in the original guide
    (at least 1 px); the way back goes to the *original* size so control and target stay
    pixel-aligned (the guide multiplies the small size by ``lr_scale`` instead).
    ``lr_scale`` 1 returns an identical copy; 8 keeps 1/64 of the pixels' worth of detail.
    """
    lr_scale = _check("lr_scale", lr_scale)
    image = _check_rgb(image)
    width, height = image.size
    small_size = (max(1, int(width // lr_scale)), max(1, int(height // lr_scale)))
    if small_size == (width, height):
        return image.copy()
    small = image.resize(small_size, Image.Resampling.BICUBIC)
    return small.resize((width, height), Image.Resampling.BICUBIC)


def apply_noise(
    image: Image.Image, noise_level: float, rng: np.random.Generator, gray: bool = False
) -> Image.Image:
    """Add Gaussian noise with standard deviation ``noise_level`` on the 0-1 scale (the original
    guide's op).

    ``gray=False`` draws independent noise per channel (coloured speckles, like a phone sensor);
    ``gray=True`` adds the same value to R, G and B, which disturbs brightness only. Values are
    clipped to the valid range afterwards, so near black or white the measured spread is smaller.
    """
    noise_level = _check("noise_level", noise_level)
    image = _check_rgb(image)
    if noise_level == 0:
        return image.copy()
    pixels = _as_float_pixels(image)
    height, width = pixels.shape[:2]
    # float32 normals from a Generator are several times faster than np.random.normal's float64.
    noise = rng.standard_normal((height, width, 1 if gray else 3), dtype=np.float32)
    noise *= np.float32(noise_level * 255.0)
    pixels += noise
    return _to_image(pixels)


def apply_poisson_noise(
    image: Image.Image, poisson_scale: float, rng: np.random.Generator, gray: bool = False
) -> Image.Image:
    """Add Poisson (shot) noise: brighter pixels get *more* noise, as in a real sensor.

    Each value ``x`` in 0-1 is treated as ``255 * x`` photon counts; the noise is
    ``(Poisson(255 x) / 255 - x) * poisson_scale``, whose standard deviation is
    ``poisson_scale * sqrt(x / 255)`` (about 0.044 at mid-grey for scale 1). Real-ESRGAN uses
    scales 0.05-3. ``gray=True`` computes the noise on luminance and adds it to all channels.
    """
    poisson_scale = _check("poisson_scale", poisson_scale)
    image = _check_rgb(image)
    if poisson_scale == 0:
        return image.copy()
    pixels = _as_float_pixels(image)
    base = (pixels @ _LUMA_WEIGHTS)[..., None] if gray else pixels  # 0-255 = expected photon counts
    counts = rng.poisson(base).astype(np.float32)
    pixels += (counts - base) * np.float32(poisson_scale)
    return _to_image(pixels)


def apply_blur(image: Image.Image, blur_radius: float) -> Image.Image:
    """Gaussian blur with standard deviation ``blur_radius`` pixels (PIL's radius, the original
    guide's op).

    PIL's ``GaussianBlur`` approximates the Gaussian with three box blurs, which is fast and within
    a fraction of a grey level of the exact kernel; ``blur_radius`` 0 returns a copy.
    """
    blur_radius = _check("blur_radius", blur_radius)
    image = _check_rgb(image)
    if blur_radius == 0:
        return image.copy()
    return image.filter(ImageFilter.GaussianBlur(blur_radius))


def apply_aniso_blur(
    image: Image.Image, aniso_sigma_x: float, aniso_sigma_y: float, aniso_angle: float
) -> Image.Image:
    """Anisotropic Gaussian blur: an ellipse ``aniso_sigma_x`` px long in direction ``aniso_angle``
    (degrees, counter-clockwise from horizontal) and ``aniso_sigma_y`` px across it.

    Lenses, focus errors and camera shake rarely blur equally in every direction; Real-ESRGAN
    draws kernels like this one. Both sigmas 0 return a copy.
    """
    aniso_sigma_x = _check("aniso_sigma_x", aniso_sigma_x)
    aniso_sigma_y = _check("aniso_sigma_y", aniso_sigma_y)
    aniso_angle = _check("aniso_angle", aniso_angle)
    image = _check_rgb(image)
    if aniso_sigma_x == 0 and aniso_sigma_y == 0:
        return image.copy()
    return _convolve(image, anisotropic_gaussian_kernel(aniso_sigma_x, aniso_sigma_y, aniso_angle))


def apply_motion_blur(image: Image.Image, motion_blur_length: int, motion_blur_angle: float) -> Image.Image:
    """Linear motion blur: average along a ``motion_blur_length`` px streak at ``motion_blur_angle``
    degrees (counter-clockwise from horizontal). Length 1 returns a copy."""
    motion_blur_length = _check("motion_blur_length", motion_blur_length)
    motion_blur_angle = _check("motion_blur_angle", motion_blur_angle)
    image = _check_rgb(image)
    return _convolve(image, motion_blur_kernel(motion_blur_length, motion_blur_angle))


def apply_jpeg(image: Image.Image, jpeg_quality: int) -> Image.Image:
    """Save as JPEG at ``jpeg_quality`` (1-100) in memory and decode again (the original guide's op).

    This is the real codec, so the artifacts are the real ones: 8x8 blocking, ringing near edges
    and smeared colour (PIL's default 4:2:0 chroma subsampling). libjpeg is deterministic.
    """
    jpeg_quality = _check("jpeg_quality", jpeg_quality)
    image = _check_rgb(image)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=jpeg_quality)
    buffer.seek(0)
    decoded = Image.open(buffer)
    decoded.load()
    return decoded


def apply_fade(
    image: Image.Image, fade_strength: float, color_cast_strength: float, color_cast_hue: float
) -> Image.Image:
    """Make colours look like an aged print: washed out, low contrast, tinted.

    ``fade_strength`` (0-1) pulls colours towards grey (saturation x ``1 - 0.7 s``), squeezes the
    tonal range (blacks rise to ``0.2 s``, whites drop to ``1 - 0.15 s``). ``color_cast_strength``
    (0-1) tints the picture towards the hue ``color_cast_hue`` (degrees: 30 orange/sepia,
    55 yellow, 180 cyan): channels missing from that hue are dimmed and the shadows take on the tint.
    """
    fade_strength = _check("fade_strength", fade_strength)
    color_cast_strength = _check("color_cast_strength", color_cast_strength)
    color_cast_hue = _check("color_cast_hue", color_cast_hue)
    image = _check_rgb(image)
    if fade_strength == 0 and color_cast_strength == 0:
        return image.copy()
    pixels = _as_float_pixels(image) / np.float32(255.0)
    if fade_strength > 0:
        luminance = (pixels @ _LUMA_WEIGHTS)[..., None]
        pixels = luminance + (pixels - luminance) * np.float32(1.0 - 0.7 * fade_strength)
        pixels = pixels * np.float32(1.0 - 0.35 * fade_strength) + np.float32(0.2 * fade_strength)
    if color_cast_strength > 0:
        tint = np.array(colorsys.hsv_to_rgb(color_cast_hue / 360.0, 1.0, 1.0), dtype=np.float32)
        gains = 1.0 - 0.5 * color_cast_strength * (1.0 - tint)
        pixels = pixels * gains + np.float32(0.08 * color_cast_strength) * tint
    return _to_image(pixels * np.float32(255.0))


def apply_scratches(
    image: Image.Image, scratch_count: int, dust_count: int, rng: np.random.Generator
) -> Image.Image:
    """Draw ``scratch_count`` thin scratches and ``dust_count`` dust specks.

    Most scratches are light (the emulsion is scraped off) and long, either near-vertical (film
    running through a projector) or in any direction (a handled print); they wander slightly.
    Dust specks are small light or dark blobs. Sizes scale with the image (designed at 512 px).
    """
    scratch_count = _check("scratch_count", scratch_count)
    dust_count = _check("dust_count", dust_count)
    image = _check_rgb(image)
    if scratch_count == 0 and dust_count == 0:
        return image.copy()
    width, height = image.size
    scale = max(min(width, height) / 512.0, 0.25)
    light_marks = Image.new("L", image.size, 0)
    dark_marks = Image.new("L", image.size, 0)
    draw_light, draw_dark = ImageDraw.Draw(light_marks), ImageDraw.Draw(dark_marks)

    for _ in range(scratch_count):
        draw = draw_light if rng.random() < 0.8 else draw_dark
        if rng.random() < 0.6:
            angle = math.radians(90.0 + rng.uniform(-12.0, 12.0))
        else:
            angle = math.radians(rng.uniform(0.0, 180.0))
        length = rng.uniform(0.2, 0.9) * max(width, height)
        start_x, start_y = rng.uniform(0, width), rng.uniform(0, height)
        direction = np.array([math.cos(angle), -math.sin(angle)])
        sideways = np.array([math.sin(angle), math.cos(angle)])
        steps = np.linspace(0.0, length, 8)
        wander = np.cumsum(rng.normal(0.0, 1.5 * scale, size=8))
        points = [
            (
                float(start_x + d * direction[0] + w * sideways[0]),
                float(start_y + d * direction[1] + w * sideways[1]),
            )
            for d, w in zip(steps, wander, strict=True)
        ]
        line_width = max(1, round(scale * (1 + (rng.random() < 0.3))))
        draw.line(points, fill=int(rng.uniform(120, 255)), width=line_width, joint="curve")

    for _ in range(dust_count):
        draw = draw_light if rng.random() < 0.5 else draw_dark
        centre_x, centre_y = rng.uniform(0, width), rng.uniform(0, height)
        radius_x, radius_y = rng.uniform(0.4, 2.2, size=2) * scale
        draw.ellipse(
            (centre_x - radius_x, centre_y - radius_y, centre_x + radius_x, centre_y + radius_y),
            fill=int(rng.uniform(150, 255)),
        )

    # A slight blur makes the marks look photographed rather than drawn with a 1-px pen.
    softness = ImageFilter.GaussianBlur(0.5 * scale)
    light = np.asarray(light_marks.filter(softness), dtype=np.float32)[..., None] / np.float32(255.0)
    dark = np.asarray(dark_marks.filter(softness), dtype=np.float32)[..., None] / np.float32(255.0)
    pixels = _as_float_pixels(image)
    pixels = pixels * (1.0 - light) + np.float32(245.0) * light
    pixels = pixels * (1.0 - dark) + np.float32(20.0) * dark
    return _to_image(pixels)


def apply_grain(
    image: Image.Image, grain_strength: float, grain_size: float, rng: np.random.Generator
) -> Image.Image:
    """Add monochrome film grain: correlated noise ``grain_size`` px across, strongest in mid-tones.

    Unlike sensor noise, grain is made of clumps larger than a pixel (white noise drawn at
    ``1 / grain_size`` resolution and enlarged bicubically) and is the same on all channels. Its
    standard deviation is ``grain_strength`` (0-1 scale) at mid-grey, falling to 35% of that in
    pure black or white, where film has little or all of its silver.
    """
    grain_strength = _check("grain_strength", grain_strength)
    grain_size = _check("grain_size", grain_size)
    image = _check_rgb(image)
    if grain_strength == 0:
        return image.copy()
    width, height = image.size
    grain_shape = (max(1, round(height / grain_size)), max(1, round(width / grain_size)))
    grain = rng.standard_normal(grain_shape, dtype=np.float32)
    if grain_shape != (height, width):
        grain = np.asarray(Image.fromarray(grain, mode="F").resize((width, height), Image.Resampling.BICUBIC))
        spread = float(grain.std())
        grain = grain / np.float32(spread if spread > 0 else 1.0)  # enlarging smooths; restore unit spread
    pixels = _as_float_pixels(image)
    luminance = (pixels @ _LUMA_WEIGHTS) / np.float32(255.0)
    weight = np.float32(0.35) + np.float32(2.6) * luminance * (np.float32(1.0) - luminance)
    pixels += (grain * weight * np.float32(grain_strength * 255.0))[..., None]
    return _to_image(pixels)


#: The ``apply_*`` function of each operation.
APPLY_FUNCTIONS: dict[str, Callable[..., Image.Image]] = {
    "downsample": apply_downsample,
    "noise": apply_noise,
    "blur": apply_blur,
    "jpeg": apply_jpeg,
    "aniso_blur": apply_aniso_blur,
    "motion_blur": apply_motion_blur,
    "poisson_noise": apply_poisson_noise,
    "fade": apply_fade,
    "scratches": apply_scratches,
    "grain": apply_grain,
}


# ---------------------------------------------------------------------------------------------
# Sampling parameters -> record, applying a record
# ---------------------------------------------------------------------------------------------


def _as_generator(seed: None | int | np.random.Generator | np.random.SeedSequence) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or isinstance(seed, (int, np.integer, np.random.SeedSequence)):
        return np.random.default_rng(seed)
    raise TypeError(
        f"seed must be None, an int, a numpy SeedSequence or Generator; got {type(seed).__name__}"
    )


def _draw(name: str, value: Parameter, rng: np.random.Generator) -> int | float:
    """A concrete value for one parameter: the fixed value, or a uniform draw from (low, high)."""
    if not isinstance(value, tuple):
        return value
    low, high = value
    if low == high:
        return low
    if PARAMETER_SPECS[name].integer:
        return int(rng.integers(low, high + 1))  # both ends included
    return float(rng.uniform(low, high))


def _ordered_types(config: DegradationConfig, rng: np.random.Generator) -> list[str]:
    if config.degradation_order == "listed":
        return list(config.degradation_types)
    if config.degradation_order == "shuffled":
        return [config.degradation_types[i] for i in rng.permutation(len(config.degradation_types))]
    return sorted(config.degradation_types, key=PIPELINE_ORDER.index)


def _draw_with_probability(probability: float, rng: np.random.Generator) -> bool:
    # Certain outcomes draw nothing, so the original guide's pipeline consumes random numbers only
    # for its noise.
    if probability >= 1.0:
        return True
    if probability <= 0.0:
        return False
    return bool(rng.random() < probability)


def sample_degradation_steps(
    config: DegradationConfig | None, rng: None | int | np.random.Generator
) -> list[dict[str, Any]]:
    """Choose what will be done to one image: the record that :func:`apply_degradation_steps` applies.

    Args:
        config: the recipe (``None`` = the original guide's defaults).
        rng: a ``numpy.random.Generator`` (or an int seed / ``None`` for fresh entropy).

    Returns:
        A list of dicts, one per operation, in the order they will run, e.g.
        ``[{"op": "downsample", "lr_scale": 8}, {"op": "noise", "noise_level": 0.05, "gray": False,
        "seed": 3051924131}, ...]``. Every value is a plain Python number/bool, so the record
        survives ``json.dumps``/``json.loads`` unchanged. Operations skipped by
        ``degradation_probabilities`` do not appear; second-order steps follow the first-order ones.
    """
    if config is None:
        config = DegradationConfig()
    elif not isinstance(config, DegradationConfig):
        raise TypeError(f"config must be a DegradationConfig or None; got {type(config).__name__}")
    rng = _as_generator(rng)
    steps: list[dict[str, Any]] = []
    for op in _ordered_types(config, rng):
        if not _draw_with_probability(config.degradation_probabilities.get(op, 1.0), rng):
            continue
        step: dict[str, Any] = {"op": op}
        for name in OP_PARAMETERS[op]:
            step[name] = _draw(name, getattr(config, name), rng)
        if op in _NOISE_OPS:
            step["gray"] = _draw_with_probability(config.gray_noise_prob, rng)
        if op in _RANDOM_OPS:
            step["seed"] = int(rng.integers(0, 2**32))
        steps.append(step)
    if config.second_order is not None and _draw_with_probability(config.second_order_prob, rng):
        steps.extend(sample_degradation_steps(config.second_order, rng))
    return steps


def _checked_step(step: Mapping[str, Any], position: int) -> dict[str, Any]:
    """A clean copy of one record step, or ValueError saying what is wrong with it."""
    if not isinstance(step, Mapping) or "op" not in step:
        raise ValueError(f"record step {position} must be a dict with an 'op' key; got {step!r}")
    op = step["op"]
    if op not in APPLY_FUNCTIONS:
        raise ValueError(
            f"record step {position}: unknown op {op!r}; choose from: {', '.join(DEGRADATION_TYPES)}"
        )
    allowed = (
        {"op", *OP_PARAMETERS[op]}
        | ({"gray"} if op in _NOISE_OPS else set())
        | ({"seed"} if op in _RANDOM_OPS else set())
    )
    unknown = sorted(set(step) - allowed)
    if unknown:
        raise ValueError(
            f"record step {position} ({op}): unknown key(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
    clean: dict[str, Any] = {"op": op}
    for name in OP_PARAMETERS[op]:
        if name not in step:
            raise ValueError(f"record step {position} ({op}) is missing {name!r}")
        clean[name] = PARAMETER_SPECS[name].check(step[name], owner=f"record step {position} ({op}) ")
    if op in _NOISE_OPS:
        clean["gray"] = bool(step.get("gray", False))
    if op in _RANDOM_OPS:
        seed = step.get("seed")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(
                f"record step {position} ({op}) needs a non-negative integer 'seed'; got {seed!r}"
            )
        clean["seed"] = int(seed)
    return clean


def apply_degradation_steps(
    image: Image.Image, steps: Sequence[Mapping[str, Any]] | str
) -> tuple[Image.Image, list[dict[str, Any]]]:
    """Apply a record (from :func:`sample_degradation_steps`, or its JSON text) to ``image``.

    Args:
        image: PIL image; converted to RGB if it is not (see ``images.to_rgb``).
        steps: list of step dicts, or the same as a JSON string.

    Returns:
        ``(degraded, record)``: the degraded 8-bit RGB image, same size as ``image``, and the
        record as applied (validated, plain Python values). Applying that record again to the same
        image gives byte-identical pixels.
    """
    if isinstance(steps, str):
        steps = json.loads(steps)
    image = _check_rgb(image)
    applied: list[dict[str, Any]] = []
    for position, raw_step in enumerate(steps):
        step = _checked_step(raw_step, position)
        op = step["op"]
        arguments = {name: step[name] for name in OP_PARAMETERS[op]}
        if op in _NOISE_OPS:
            arguments["gray"] = step["gray"]
        if op in _RANDOM_OPS:
            arguments["rng"] = np.random.default_rng(step["seed"])
        image = APPLY_FUNCTIONS[op](image, **arguments)
        applied.append(step)
    if not applied:
        image = image.copy()  # callers may modify the result; never hand back their own object
    return image, applied


def apply_degradation(
    image: Image.Image,
    config: DegradationConfig | None = None,
    seed: None | int | np.random.Generator = None,
    **overrides: Any,
) -> tuple[Image.Image, list[dict[str, Any]]]:
    """Degrade one image in one call: sample a record from ``config`` and apply it.

    Args:
        image: PIL image (RGB, or anything :func:`kontext_lora_helpers.images.to_rgb` converts).
        config: the recipe; ``None`` = the original guide's defaults (``PRESETS["original_guide"]``).
        seed: ``None`` (different every call), an int (the same int gives byte-identical output)
            or a ``numpy.random.Generator`` (advanced by the call).
        **overrides: config fields to change for this call, e.g. ``noise_level=0.1``.

    Returns:
        ``(degraded, record)`` as :func:`apply_degradation_steps` returns them.

    Example:
        >>> degraded, record = apply_degradation(photo, seed=0, lr_scale=4)   # doctest: +SKIP
    """
    config = DegradationConfig() if config is None else config
    if overrides:
        config = config.replace(**overrides)
    steps = sample_degradation_steps(config, _as_generator(seed))
    return apply_degradation_steps(image, steps)


def degrade_each(images: Sequence[Image.Image], config: DegradationConfig | None = None) -> list[Image.Image]:
    """The degraded copy of each image, image ``i`` with seed ``i``: a fixed, reproducible test set.

    Args:
        images: 8-bit RGB images (any sizes).
        config: the recipe (``None``: the original guide's defaults).

    Returns:
        One degraded 8-bit RGB image per input, same size, in order (the records are dropped; call
        :func:`apply_degradation` for them).
    """
    return [apply_degradation(image, config, seed=index)[0] for index, image in enumerate(images)]


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------

_REALESRGAN_TYPES = ("aniso_blur", "downsample", "noise", "poisson_noise", "jpeg")

#: Ready-made recipes. ``"original_guide"``: the original guide's four operations and defaults.
#: ``"realesrgan"``: Real-ESRGAN's second-order pipeline (blur -> resize -> Gaussian *or* Poisson
#: noise, 40% gray -> JPEG 30-95, twice, the second round milder and its blur skipped 20% of the
#: time), adapted to pixel-aligned pairs: each resize goes down and back up, and the second
#: round's stronger downsampling plays the role of Real-ESRGAN's final resize to 1/4. Real-ESRGAN's
#: kernel families are approximated by one anisotropic Gaussian whose two sigmas are drawn
#: independently (equal sigmas = isotropic), "Gaussian or Poisson" by two independent 50% chances,
#: and the sinc (ringing) filter is left out. ``"old_photo"``: a faded, tinted, grainy, scratched
#: and dusty print, scanned softly and saved as JPEG. ``"course"``: the one degradation the course
#: trains and judges its LoRAs on (x2 down, noise 0.1, blur 0.5: the README's command, notebooks
#: 04 and 05, ``nano check-lora``'s quality bar). ``"original_guide_command"``: the flags of the
#: original guide's example command (x8, noise 0.03, blur 1.2; at nano's 64 px, an 8x8 image).
#: ``"none"``: no degradation (control == target), a sanity check for the training loop.
PRESETS: dict[str, DegradationConfig] = {
    "original_guide": DegradationConfig(),
    "realesrgan": DegradationConfig(
        degradation_types=_REALESRGAN_TYPES,
        degradation_order="listed",
        aniso_sigma_x=(0.2, 3.0),
        aniso_sigma_y=(0.2, 3.0),
        aniso_angle=(0.0, 180.0),
        lr_scale=(1.0, 4.0),
        noise_level=(1 / 255, 30 / 255),
        poisson_scale=(0.05, 3.0),
        gray_noise_prob=0.4,
        degradation_probabilities={"noise": 0.5, "poisson_noise": 0.5},
        jpeg_quality=(30, 95),
        second_order=DegradationConfig(
            degradation_types=_REALESRGAN_TYPES,
            degradation_order="listed",
            aniso_sigma_x=(0.2, 1.5),
            aniso_sigma_y=(0.2, 1.5),
            aniso_angle=(0.0, 180.0),
            lr_scale=(3.0, 8.0),
            noise_level=(1 / 255, 25 / 255),
            poisson_scale=(0.05, 2.5),
            gray_noise_prob=0.4,
            degradation_probabilities={"aniso_blur": 0.8, "noise": 0.5, "poisson_noise": 0.5},
            jpeg_quality=(30, 95),
        ),
    ),
    "old_photo": DegradationConfig(
        degradation_types=("fade", "grain", "scratches", "downsample", "noise", "blur", "jpeg"),
        fade_strength=(0.2, 0.7),
        color_cast_strength=(0.1, 0.6),
        color_cast_hue=(20.0, 50.0),
        grain_strength=(0.02, 0.08),
        grain_size=(1.0, 2.5),
        scratch_count=(0, 8),
        dust_count=(5, 60),
        lr_scale=(1.0, 3.0),
        noise_level=(0.0, 0.03),
        blur_radius=(0.3, 1.5),
        jpeg_quality=(60, 95),
    ),
    "course": DegradationConfig(
        degradation_types=("downsample", "noise", "blur"), lr_scale=2, noise_level=0.1, blur_radius=0.5,
    ),
    "original_guide_command": DegradationConfig(
        degradation_types=("downsample", "noise", "blur"), lr_scale=8, noise_level=0.03, blur_radius=1.2,
    ),
    "none": DegradationConfig(degradation_types=()),
}

#: Old preset names that ``--preset`` and the explorer still accept, mapped to the current name.
PRESET_ALIASES: dict[str, str] = {"seed": "original_guide"}  # "seed": the old name of the preset


def preset_name(name: str) -> str:
    """``name`` with an old preset name (:data:`PRESET_ALIASES`) replaced by the current one."""
    return PRESET_ALIASES.get(name, name)


# ---------------------------------------------------------------------------------------------
# Command-line flags shared by the degrade and train commands
# ---------------------------------------------------------------------------------------------


def _parse_number(text: str) -> int | float:
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        return float(text)  # raises ValueError for non-numbers


def parse_parameter(text: str) -> Parameter:
    """Command-line text -> parameter: ``"0.05"`` -> 0.05, ``"75"`` -> 75, ``"0.01,0.05"`` -> (0.01, 0.05)."""
    parts = [part for part in str(text).split(",")]
    try:
        if len(parts) == 1:
            return _parse_number(parts[0])
        if len(parts) == 2:
            return (_parse_number(parts[0]), _parse_number(parts[1]))
    except ValueError:
        pass
    raise ValueError(f"expected a number such as 0.05 or a range such as 0.01,0.05; got {text!r}")


def parse_probabilities(text: str) -> dict[str, float]:
    """``"noise=0.5,poisson_noise=0.5"`` -> ``{"noise": 0.5, "poisson_noise": 0.5}``."""
    result: dict[str, float] = {}
    for item in str(text).split(","):
        if not item.strip():
            continue
        name, separator, value = item.partition("=")
        if not separator:
            raise ValueError(f"expected type=probability pairs such as noise=0.5,blur=0.8; got {text!r}")
        try:
            result[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"probability for {name.strip()!r} is not a number: {value!r}") from None
    return result


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = parse.__name__
    return convert


def add_degradation_arguments(
    parser: argparse.ArgumentParser, *, include_preset: bool = True
) -> argparse._ArgumentGroup:
    """Add the degradation flags (the original guide's names plus the extended ones) to ``parser``.

    Every flag defaults to ``None`` meaning "not given", so that :func:`config_from_args` can start
    from ``--preset`` and override only what was typed. Parameter flags take a number or a
    ``low,high`` range.
    """
    defaults = DegradationConfig()
    group = parser.add_argument_group("degradation (see kontext_lora_helpers.degradations)")
    if include_preset:
        group.add_argument(
            "--preset",
            type=preset_name,
            choices=sorted(PRESETS),
            default=None,
            help="start from a ready-made recipe; the flags below override its fields "
            "(default: original_guide)",
        )
    group.add_argument(
        "--degradation_types",
        default=None,
        help=f"comma-separated operations from {', '.join(DEGRADATION_TYPES)}, or 'none' "
        f"(default: {','.join(defaults.degradation_types)})",
    )
    group.add_argument(
        "--degradation_order",
        choices=DEGRADATION_ORDERS,
        default=None,
        help="fixed: the pipeline order (the original guide's order for its four); listed: as listed; "
        "shuffled: random per image (default: fixed)",
    )
    group.add_argument(
        "--degradation_probabilities",
        type=_argparse_type(parse_probabilities),
        default=None,
        help="chance of applying each operation, e.g. noise=0.5,poisson_noise=0.5 (default: all 1)",
    )
    for name, spec in PARAMETER_SPECS.items():
        default = getattr(defaults, name)
        shown = f"{default[0]},{default[1]}" if isinstance(default, tuple) else default
        group.add_argument(
            f"--{name}",
            type=_argparse_type(parse_parameter),
            default=None,
            metavar="VALUE|LOW,HIGH",
            help=f"{spec.description}; valid {spec.range_text()} (default: {shown})",
        )
    for name, description in (
        ("gray_noise_prob", "probability that noise is gray (luminance only)"),
        ("second_order_prob", "probability of applying --second_order"),
    ):
        group.add_argument(
            f"--{name}",
            type=_argparse_type(_parse_number),
            default=None,
            help=f"{description}, 0-1 (default: {getattr(defaults, name)})",
        )
    group.add_argument(
        "--second_order",
        default=None,
        metavar="JSON|none",
        help="a second degradation round as DegradationConfig JSON (see to_dict), or 'none' (default: none)",
    )
    return group


def config_from_args(args: argparse.Namespace) -> DegradationConfig:
    """The :class:`DegradationConfig` described by flags added with :func:`add_degradation_arguments`.

    Starts from ``PRESETS[args.preset]`` (or the defaults) and applies every flag that was given.

    Raises:
        ValueError: a value outside its valid range, an unknown type, malformed ``--second_order``.
    """
    preset = getattr(args, "preset", None)
    base = PRESETS[preset_name(preset)] if preset else DegradationConfig()
    names = [
        "degradation_types",
        "degradation_order",
        "degradation_probabilities",
        "gray_noise_prob",
        "second_order_prob",
    ]
    names += list(PARAMETER_SPECS)
    changes = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    second_order = getattr(args, "second_order", None)
    if second_order is not None:
        if second_order.strip().lower() in ("", "none"):
            changes["second_order"] = None
        else:
            try:
                changes["second_order"] = DegradationConfig.from_dict(json.loads(second_order))
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"--second_order must be JSON (DegradationConfig.to_dict) or 'none': {error}"
                ) from None
    return base.replace(**changes)
