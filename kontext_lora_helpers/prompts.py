"""Prompts for restoration: one fixed instruction, or one that says what went wrong.

Kontext is an *editing* model: the prompt is an instruction about the control image. The original
guide trains with one fixed instruction for every pair ("Restore this degraded photograph to high
fidelity"), so the LoRA has to work out from the pixels what to undo. Several restorers instead
describe the degradation in the text, in words ("remove heavy noise") or numbers, which lets the
user steer the repair at inference time ("only remove the JPEG artifacts").

:func:`restoration_prompt` builds either kind from a degradation record (the list of dicts that
``degradations.sample_degradation_steps`` returns):

* ``mode="plain"`` (the original guide's behaviour, the default): the instance prompt, unchanged.
* ``mode="described"``: the instance prompt, a dash, and one binned phrase per kind of damage, e.g.
  ``"Restore this degraded photograph to high fidelity — remove noise, remove blur, undo 4x
  downsampling, remove JPEG artifacts"``. Levels are binned (``light`` / plain / ``heavy``) so the
  vocabulary stays small enough for a user to type at inference.
* ``mode="numeric"``: the same phrases with the numbers, e.g. ``"remove noise (sigma 0.05)"``.

Phrases always come in the same order (scratches, colours, noise, grain, blur, resolution, JPEG)
whatever order the operations ran in, and several steps of one kind (a second-order pipeline
blurs twice) become one phrase at the strongest level. The output is a pure function of the
inputs, so the same record always gives the same prompt.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["DEFAULT_INSTANCE_PROMPT", "PROMPT_MODES", "describe_degradations", "restoration_prompt"]

#: The original guide's instance prompt.
DEFAULT_INSTANCE_PROMPT = "Restore this degraded photograph to high fidelity"

#: Accepted values of ``mode``.
PROMPT_MODES: tuple[str, ...] = ("plain", "described", "numeric")

# Standard deviation (0-1 scale) of Poisson noise of scale 1 at mid-grey: sqrt(0.5 / 255).
_POISSON_STD_PER_SCALE = math.sqrt(0.5 / 255.0)


def _level(value: float, light_below: float, heavy_above: float) -> str:
    """``"light "``, ``""`` or ``"heavy "`` for a strength; bins chosen so the original guide's
    defaults are plain."""
    if value < light_below:
        return "light "
    if value > heavy_above:
        return "heavy "
    return ""


def _format(value: float, digits: int = 2) -> str:
    """Short number text: 8 -> "8", 2.5 -> "2.5", 0.0500 -> "0.05"."""
    if abs(value - round(value)) < 1e-9:
        return str(int(round(value)))
    return f"{value:.{digits}f}".rstrip("0").rstrip(".")


def _strongest(record: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The strongest value of each kind of damage in ``record`` (absent kinds are missing).

    Kinds: noise (std, 0-1 scale, Gaussian and Poisson combined), blur (sigma px, isotropic and
    anisotropic), motion (streak length px), downsample (factor), jpeg (lowest quality), fade,
    cast, scratches, dust, grain (strength). No-op steps (noise 0, factor 1, ...) are ignored.
    """
    strongest: dict[str, float] = {}

    def keep(kind: str, value: float, lowest: bool = False) -> None:
        if kind not in strongest:
            strongest[kind] = value
        else:
            strongest[kind] = min(strongest[kind], value) if lowest else max(strongest[kind], value)

    for step in record:
        op = step.get("op")
        if op == "noise" and step["noise_level"] > 0:
            keep("noise", float(step["noise_level"]))
        elif op == "poisson_noise" and step["poisson_scale"] > 0:
            keep("noise", float(step["poisson_scale"]) * _POISSON_STD_PER_SCALE)
        elif op == "blur" and step["blur_radius"] > 0:
            keep("blur", float(step["blur_radius"]))
        elif op == "aniso_blur" and max(step["aniso_sigma_x"], step["aniso_sigma_y"]) > 0:
            keep("blur", float(max(step["aniso_sigma_x"], step["aniso_sigma_y"])))
        elif op == "motion_blur" and step["motion_blur_length"] > 1:
            keep("motion", float(step["motion_blur_length"]))
        elif op == "downsample" and step["lr_scale"] > 1:
            keep("downsample", float(step["lr_scale"]))
        elif op == "jpeg":
            keep("jpeg", float(step["jpeg_quality"]), lowest=True)
        elif op == "fade":
            if step["fade_strength"] > 0:
                keep("fade", float(step["fade_strength"]))
            if step["color_cast_strength"] > 0:
                keep("cast", float(step["color_cast_strength"]))
        elif op == "scratches":
            if step["scratch_count"] > 0:
                keep("scratches", float(step["scratch_count"]))
            if step["dust_count"] > 0:
                keep("dust", float(step["dust_count"]))
        elif op == "grain" and step["grain_strength"] > 0:
            keep("grain", float(step["grain_strength"]))
    return strongest


def describe_degradations(record: Sequence[Mapping[str, Any]] | str, numeric: bool = False) -> list[str]:
    """One phrase per kind of damage in ``record``, in a fixed order; ``[]`` if nothing was done.

    Args:
        record: degradation record (list of step dicts) or its JSON text.
        numeric: add the numbers in brackets ("remove noise (sigma 0.05)") instead of binning.
    """
    if isinstance(record, str):
        record = json.loads(record)
    strongest = _strongest(record)
    phrases: list[str] = []

    def add(words: str, number: str = "") -> None:
        phrases.append(f"{words} ({number})" if numeric and number else words)

    if "scratches" in strongest and "dust" in strongest:
        add(
            "remove scratches and dust",
            f"{_format(strongest['scratches'])} scratches, {_format(strongest['dust'])} specks",
        )
    elif "scratches" in strongest:
        add("remove scratches", f"{_format(strongest['scratches'])} scratches")
    elif "dust" in strongest:
        add("remove dust", f"{_format(strongest['dust'])} specks")
    if "fade" in strongest:
        level = (
            ""
            if numeric
            else _level(strongest["fade"], 0.25, 0.6)
            .replace("light ", "slightly ")
            .replace("heavy ", "badly ")
        )
        add(f"restore {level}faded colors", f"strength {_format(strongest['fade'])}")
    if "cast" in strongest:
        add("remove the color cast", f"strength {_format(strongest['cast'])}")
    if "noise" in strongest:
        level = "" if numeric else _level(strongest["noise"], 0.02, 0.08)
        add(f"remove {level}noise", f"sigma {_format(strongest['noise'], 3)}")
    if "grain" in strongest:
        level = "" if numeric else _level(strongest["grain"], 0.03, 0.08)
        add(f"remove {level}film grain", f"strength {_format(strongest['grain'], 3)}")
    if "blur" in strongest:
        level = "" if numeric else _level(strongest["blur"], 0.7, 2.0).replace("light ", "slight ")
        add(f"remove {level}blur", f"sigma {_format(strongest['blur'])} px")
    if "motion" in strongest:
        add("remove motion blur", f"{_format(strongest['motion'])} px")
    if "downsample" in strongest:
        factor = strongest["downsample"]
        shown = _format(factor, 0) if abs(factor - round(factor)) < 0.05 else _format(factor, 1)
        add(f"undo {shown}x downsampling")
    if "jpeg" in strongest:
        level = "" if numeric else _level(100 - strongest["jpeg"], 15.5, 65.5)
        add(f"remove {level}JPEG artifacts", f"quality {_format(strongest['jpeg'])}")
    return phrases


def restoration_prompt(
    record: Sequence[Mapping[str, Any]] | str | None,
    instance_prompt: str = DEFAULT_INSTANCE_PROMPT,
    mode: str = "plain",
) -> str:
    """The text prompt for one training pair (or for restoring an image with known damage).

    Args:
        record: the degradation record of the pair (list of step dicts or JSON text); ignored in
            ``"plain"`` mode and may then be ``None``.
        instance_prompt: the fixed instruction (the original guide's ``--instance_prompt``).
        mode: ``"plain"`` (return ``instance_prompt``), ``"described"`` (binned phrases) or
            ``"numeric"`` (phrases with numbers); see the module docstring.

    Returns:
        ``instance_prompt`` alone, or ``instance_prompt + " — " + ", ".join(phrases)``. A record
        with nothing to undo also returns ``instance_prompt`` alone. A trailing full stop of the
        instance prompt is dropped before the dash.
    """
    if mode not in PROMPT_MODES:
        raise ValueError(f"prompt mode must be one of {', '.join(PROMPT_MODES)}; got {mode!r}")
    if mode == "plain":
        return instance_prompt
    phrases = describe_degradations(record or [], numeric=(mode == "numeric"))
    if not phrases:
        return instance_prompt
    return f"{instance_prompt.rstrip().rstrip('.')} — {', '.join(phrases)}"
