"""Measure restored images against their clean references: PSNR, SSIM and (when possible) LPIPS.

From Python (a notebook)::

    result = evaluate_folders("outputs/restored", "data_samples/held_out",
                              degraded="outputs/degraded", base="outputs/restored_base")
    print(format_table(result))

From the command line (``kontext-lora evaluate`` is the same command)::

    python -m kontext_lora_helpers.evaluate --restored outputs/restored --reference data_samples/held_out \\
        --degraded outputs/degraded --base outputs/restored_base --y_channel --crop_border 4

With a classical yardstick (`classical`: non-local means or total variation restoring the degraded
inputs), its strength tuned on *validation* pairs, never on the images evaluated here::

    python -m kontext_lora_helpers.evaluate --restored outputs/restored --reference data_samples/held_out \\
        --degraded outputs/degraded --classical nlm \\
        --classical_tune_degraded outputs/val_degraded --classical_tune_reference outputs/val_clean

(or ``--classical_strength S`` with a strength already chosen on validation images).

Files are matched by their path relative to each folder **without the extension**, so
``restored/sub/cat.png`` is compared with ``reference/sub/cat.jpg``. Only names present in every
given folder are measured (the others are listed as unmatched), so every mean is over the same
images. Every image must have its reference's exact size.

Measured per image and as a mean, for each of the restored images (the LoRA's output) and, when
given, the degraded inputs, the classical restoration of the degraded inputs and the base model's
output:

* PSNR and SSIM in both conventions (``metrics.py``): RGB, and BT.601 luma (``_y``), after
  dropping ``crop_border`` pixels on every side. ``y_channel`` picks the convention the table and
  the headline gains use; the CSV and JSON always hold both.
* PSNR gains in dB of the restored images over the degraded inputs, the classical method and the
  base model (positive: the restored image is closer to the reference).
* LPIPS (lower is better) only when its weights are already on this machine: the ``lpips``
  package (which ships its linear layers) and torchvision's AlexNet weights in the torch hub cache.
  Otherwise it is reported as "skipped (no local weights)". Nothing is ever downloaded, and LPIPS
  is never computed with random weights: a distance from an untrained network means nothing.

Reports: ``metrics.csv`` (one row per image, then the mean) and ``metrics.json`` (the same plus
the settings, the LPIPS status, the classical method with its strength and where that strength
was chosen, and the unmatched files; infinite PSNRs, for identical images, are
written as the string ``"inf"`` so the file stays strict JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import classical as classical_methods
from . import metrics
from .fileio import write_text_atomically
from .images import UnusableImageError, list_images, load_rgb

__all__ = [
    "LPIPS_SKIPPED",
    "METHODS",
    "EvaluationError",
    "build_parser",
    "check_classical_arguments",
    "describe_classical",
    "evaluate_folders",
    "format_table",
    "index_images",
    "load_local_lpips",
    "main",
    "tune_classical_on_folders",
    "write_reports",
]

METHODS = ("degraded", "classical", "base", "restored")
"""Columns, in the order a table shows them: the input, the classical yardstick (`classical`), the
model without LoRA, the LoRA's output."""

LPIPS_SKIPPED = "skipped (no local weights)"
_REPORT_NAMES = ("metrics.csv", "metrics.json")


class EvaluationError(ValueError):
    """The folders cannot be evaluated as given; the message names the folder or file."""


# ---------------------------------------------------------------------------------------------
# Matching files
# ---------------------------------------------------------------------------------------------


def index_images(folder: str | os.PathLike, role: str = "folder") -> dict[str, Path]:
    """Image files under ``folder`` by their relative path without extension (POSIX form).

    Args:
        folder: searched recursively; hidden files and folders are left out (see `images.list_images`).
        role: how error messages name the folder ("--restored", "reference", ...).

    Raises:
        EvaluationError: the folder does not exist or is a file, or two files share a name
            (``a.png`` and ``a.jpg``), which would make the matching ambiguous.
    """
    import warnings

    root = Path(folder).expanduser()
    if not root.exists():
        raise EvaluationError(f"{role} folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise EvaluationError(f"{role} {str(root)!r} is a file; give a folder")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hidden files are not part of a result set
        paths = list_images(root)
    index: dict[str, Path] = {}
    for path in paths:
        stem = path.relative_to(root).with_suffix("").as_posix()
        if stem in index:
            raise EvaluationError(f"{role} folder has both {index[stem].name} and {path.name} for {stem!r}; keep one")
        index[stem] = path
    return index


def _describe(names) -> str:
    names = sorted(names)
    return "none" if not names else ", ".join(repr(n) for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


# ---------------------------------------------------------------------------------------------
# LPIPS from local weights only
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _downloads_forbidden():
    """Make any attempt of torch.hub to download fail instead of reaching the network."""
    import torch.hub

    def refuse(url, *args, **kwargs):
        raise RuntimeError(f"download of {url} refused: LPIPS only uses weights already on this machine")

    original = torch.hub.download_url_to_file
    torch.hub.download_url_to_file = refuse
    try:
        yield
    finally:
        torch.hub.download_url_to_file = original


def load_local_lpips(net: str = "alex") -> tuple[Callable | None, str]:
    """An LPIPS scorer built from weights already on this machine, or None and the reason.

    LPIPS needs two sets of trained weights: the backbone (torchvision's ImageNet AlexNet/VGG,
    looked for in ``torch.hub.get_dir()/checkpoints``) and the linear calibration layers (shipped
    inside the ``lpips`` package). Both are checked before anything is built, and downloads are
    refused while it is built.

    Returns:
        (score, status): ``score(a, b) -> float`` takes two same-size PIL RGB images (lower is
        more similar); ``status`` says what was used, or starts with "skipped (no local weights)".
    """
    import torch

    try:
        import lpips
    except ImportError:
        return None, f"{LPIPS_SKIPPED}: the lpips package is not installed"
    linear = Path(lpips.__file__).resolve().parent / "weights" / "v0.1" / f"{net}.pth"
    if not linear.is_file():
        return None, f"{LPIPS_SKIPPED}: {linear} is missing"
    from torchvision import models

    url = {"alex": models.AlexNet_Weights.IMAGENET1K_V1.url, "vgg": models.VGG16_Weights.IMAGENET1K_V1.url}[net]
    backbone = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if not backbone.is_file():
        return None, f"{LPIPS_SKIPPED}: torchvision's {net} weights are not in {backbone.parent}"
    try:
        with _downloads_forbidden(), contextlib.redirect_stdout(io.StringIO()):
            model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=False, verbose=False).eval()
    except Exception as error:  # noqa: BLE001 - any failure means "not available here"
        return None, f"{LPIPS_SKIPPED}: building LPIPS failed ({type(error).__name__}: {error})"

    @torch.no_grad()
    def score(a, b) -> float:
        to_tensor = lambda image: torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1  # noqa: E731
        return float(model(to_tensor(a), to_tensor(b)).mean())

    return score, f"computed (LPIPS {net}, local weights)"


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------


def _crop(image, border: int):
    if not border:
        return image
    width, height = image.size
    return image.crop((border, border, width - border, height - border))


def _scores(image, reference, crop_border: int, lpips_score: Callable | None) -> dict[str, float | None]:
    """PSNR/SSIM in RGB and Y, and LPIPS (None when not computed), of one image against its reference."""
    values = {
        "psnr": metrics.psnr(image, reference, crop_border=crop_border),
        "ssim": metrics.ssim(image, reference, crop_border=crop_border),
        "psnr_y": metrics.psnr(image, reference, crop_border=crop_border, y_channel=True),
        "ssim_y": metrics.ssim(image, reference, crop_border=crop_border, y_channel=True),
        "lpips": None,
    }
    if lpips_score is not None:
        values["lpips"] = float(lpips_score(_crop(image, crop_border), _crop(reference, crop_border)))
    return values


def _load(path: Path, role: str):
    try:
        return load_rgb(path)
    except UnusableImageError as error:
        raise EvaluationError(f"cannot read the {role} image {path}: {error.reason}") from None


def _mean(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


# ---------------------------------------------------------------------------------------------
# The classical yardstick: its strength comes from validation pairs, never from the evaluated ones
# ---------------------------------------------------------------------------------------------


def _overlaps(first: str | os.PathLike, second: str | os.PathLike) -> bool:
    """True when two folders are the same or one holds the other (then they share images)."""
    a, b = (Path(folder).expanduser().resolve() for folder in (first, second))
    return a == b or a in b.parents or b in a.parents


def check_classical_arguments(
    classical: str | None,
    classical_strength: float | None,
    classical_tune_degraded: str | os.PathLike | None,
    classical_tune_reference: str | os.PathLike | None,
    degraded: str | os.PathLike | None,
    reference: str | os.PathLike,
) -> None:
    """Refuse an inconsistent or self-serving choice of the classical column, before anything is measured.

    The strength is either given (``classical_strength``, chosen earlier on validation images) or
    tuned here on validation pairs (both ``classical_tune_*`` folders); never both, never neither.
    The tuning folders may not be, contain or lie inside the evaluated ``degraded`` or ``reference``
    folder: a strength picked on the images it is then scored on flatters the classical method.

    Raises:
        EvaluationError: naming the argument to change (the flag of the same name on the command line).
    """
    tuning = {"classical_tune_degraded": classical_tune_degraded, "classical_tune_reference": classical_tune_reference}
    if classical is None:
        given = [name for name, value in [("classical_strength", classical_strength), *tuning.items()] if value is not None]
        if given:
            raise EvaluationError(f"{', '.join(given)} only apply(ies) to a classical column; add classical "
                                  f"(--classical {'|'.join(classical_methods.CLASSICAL_METHODS)})")
        return
    try:
        classical_methods.check_method(classical)
    except ValueError as error:
        raise EvaluationError(str(error)) from None
    if degraded is None:
        raise EvaluationError("the classical method restores the degraded inputs: give their folder as degraded "
                              "(--degraded DIR)")
    missing = [name for name, value in tuning.items() if value is None]
    if classical_strength is not None:
        if len(missing) < 2:
            raise EvaluationError("give either classical_strength (a strength chosen on validation images) or the "
                                  "classical_tune_degraded/classical_tune_reference folders to tune it on, not both")
        try:
            classical_methods.check_strength(classical_strength)
        except ValueError as error:
            raise EvaluationError(f"classical_strength: {error}") from None
        return
    if len(missing) == 2:
        raise EvaluationError(
            "choose the classical strength on validation images: give classical_tune_degraded and "
            "classical_tune_reference (validation pairs, other photos than the evaluated ones), or "
            "classical_strength S chosen on validation images earlier"
        )
    if missing:
        raise EvaluationError(f"{missing[0]} is missing: tuning needs both the degraded validation images and "
                              "their clean references")
    evaluated = {"degraded": degraded, "reference": reference}
    for tune_name, tune_folder in tuning.items():
        for role, folder in evaluated.items():
            if _overlaps(tune_folder, folder):
                raise EvaluationError(
                    f"{tune_name} {str(tune_folder)!r} is (or overlaps) the evaluated {role} folder {str(folder)!r}: "
                    "a strength tuned on the images it is then scored on flatters the classical method. Tune on "
                    "validation pairs made from other photos (e.g. training photos degraded the same way)."
                )


def _load_pairs(degraded: str | os.PathLike, reference: str | os.PathLike, roles: tuple[str, str]) -> dict:
    """{name: (degraded image, reference image)} for the names both folders hold; sizes checked."""
    degraded_index, reference_index = index_images(degraded, roles[0]), index_images(reference, roles[1])
    common = sorted(set(degraded_index) & set(reference_index))
    if not common:
        raise EvaluationError(
            f"no matching files between {roles[0]} {str(degraded)!r} ({len(degraded_index)} images) and {roles[1]} "
            f"{str(reference)!r} ({len(reference_index)} images); files are matched by their relative path "
            "without the extension"
        )
    pairs = {}
    for name in common:
        bad, good = _load(degraded_index[name], roles[0]), _load(reference_index[name], roles[1])
        if bad.size != good.size:
            raise EvaluationError(f"{name}: the {roles[0]} image {degraded_index[name]} is {bad.size[0]}x{bad.size[1]} "
                                  f"but {reference_index[name]} is {good.size[0]}x{good.size[1]}")
        pairs[name] = (bad, good)
    return pairs


def tune_classical_on_folders(
    method: str,
    tune_degraded: str | os.PathLike,
    tune_reference: str | os.PathLike,
    strengths=None,
) -> dict:
    """Tune a classical method's strength on the validation pairs of two folders (`classical.tune_strength`).

    Files are matched as in `evaluate_folders`. The folders must hold **validation** photos, not
    the ones the strength is then scored on (`check_classical_arguments` refuses those).

    Returns:
        {"strength": the best, "tuned_on": {"degraded", "reference", "count", "mean_psnr_by_strength":
        [{"strength", "psnr"}, ...] ascending}}.
    """
    pairs = _load_pairs(tune_degraded, tune_reference, ("classical_tune_degraded", "classical_tune_reference"))
    degraded_images, clean_images = zip(*pairs.values())
    best, table = classical_methods.tune_strength(degraded_images, clean_images, method, strengths)
    return {
        "strength": best,
        "tuned_on": {
            "degraded": str(tune_degraded),
            "reference": str(tune_reference),
            "count": len(pairs),
            "mean_psnr_by_strength": [{"strength": strength, "psnr": psnr} for strength, psnr in table.items()],
        },
    }


def evaluate_folders(
    restored: str | os.PathLike,
    reference: str | os.PathLike,
    degraded: str | os.PathLike | None = None,
    base: str | os.PathLike | None = None,
    y_channel: bool = False,
    crop_border: int = 0,
    lpips: str | Callable = "auto",
    progress: bool = False,
    classical: str | None = None,
    classical_strength: float | None = None,
    classical_tune_degraded: str | os.PathLike | None = None,
    classical_tune_reference: str | os.PathLike | None = None,
) -> dict:
    """Score every restored image (and degraded / classical / base ones) against its reference.

    Args:
        restored: folder of restored images (the LoRA's output).
        reference: folder of clean references.
        degraded, base: optional folders of the degraded inputs and of the base model's output.
        classical: optional classical yardstick ("nlm" or "tv", see `classical`) that restores each
            degraded input (needs ``degraded``), with its strength either given
            (``classical_strength``, chosen earlier on validation images) or tuned here on the
            validation pairs ``classical_tune_degraded`` / ``classical_tune_reference`` (other photos
            than the evaluated ones; overlapping folders are refused).
        y_channel: make BT.601 luma the headline convention (table, gains); both are always measured.
        crop_border: pixels dropped on every side before measuring.
        lpips: "auto" (local weights if present, else skipped), "off", or a callable
            ``score(a, b) -> float`` on two PIL RGB images.
        progress: show a tqdm bar over the images.

    Returns:
        dict with ``settings``, ``methods`` (those measured, in `METHODS` order), ``lpips`` (status),
        ``classical`` (None, or {method, description, strength, strength_source ("given" or
        "tuned"), tuned_on (None, or as `tune_classical_on_folders` returns it)}), ``images`` (per
        image: ``name``, ``size`` [w, h], ``scores`` {method: {psnr, ssim, psnr_y, ssim_y,
        lpips}}, ``gains`` {psnr_vs_degraded, psnr_y_vs_degraded, psnr_vs_classical, ...,
        psnr_y_vs_base}, present where the method was measured), ``mean`` (same layout, over
        images), ``unmatched`` {role: [names]} and ``count``. PSNR of identical images is ``inf``.

    Raises:
        EvaluationError: a missing folder, no name common to all folders, an unreadable image,
            an image whose size differs from its reference (naming the file and both sizes), or
            an inconsistent classical choice (see `check_classical_arguments`).
    """
    if crop_border < 0:
        raise EvaluationError(f"crop_border must be >= 0; got {crop_border}")
    check_classical_arguments(classical, classical_strength, classical_tune_degraded, classical_tune_reference,
                              degraded, reference)
    folders = {"restored": restored, "reference": reference, "degraded": degraded, "base": base}
    indexes = {role: index_images(folder, role) for role, folder in folders.items() if folder is not None}
    for role, index in indexes.items():
        if not index:
            raise EvaluationError(f"{role} folder {str(folders[role])!r} holds no image files")
    common = set.intersection(*(set(index) for index in indexes.values()))
    if not common:
        details = "; ".join(f"{role} has {len(index)} (e.g. {_describe(list(index)[:1])})" for role, index in indexes.items())
        raise EvaluationError(
            f"no matching files: no name is in every folder ({details}). Files are matched by their path "
            "relative to each folder, without the extension."
        )
    unmatched = {role: sorted(set(index) - common) for role, index in indexes.items()}
    methods = [method for method in METHODS if method in indexes or (method == "classical" and classical)]

    classical_record = None
    if classical is not None:
        if classical_strength is not None:
            chosen = {"strength": float(classical_strength), "tuned_on": None}
        else:
            if progress:
                print(f"tuning the {classical} strength on the pairs of {classical_tune_degraded} and "
                      f"{classical_tune_reference} ...", file=sys.stderr)
            chosen = tune_classical_on_folders(classical, classical_tune_degraded, classical_tune_reference)
        classical_record = {"method": classical, "description": classical_methods.CLASSICAL_METHODS[classical],
                            "strength": chosen["strength"],
                            "strength_source": "given" if chosen["tuned_on"] is None else "tuned",
                            "tuned_on": chosen["tuned_on"]}

    if callable(lpips):
        lpips_score, lpips_status = lpips, "computed (given scorer)"
    elif lpips == "off":
        lpips_score, lpips_status = None, "off"
    elif lpips == "auto":
        lpips_score, lpips_status = load_local_lpips()
    else:
        raise ValueError(f"lpips must be 'auto', 'off' or a callable; got {lpips!r}")

    names = sorted(common)
    if progress:
        from tqdm.auto import tqdm

        names = tqdm(names, desc="evaluating", unit="image")
    rows = []
    for name in names:
        clean = _load(indexes["reference"][name], "reference")
        scores, images = {}, {}
        for method in methods:
            if method == "classical":  # METHODS puts "degraded" first, so its image is loaded already
                image = classical_methods.denoise(images["degraded"], classical, classical_record["strength"])
            else:
                image = _load(indexes[method][name], method)
            images[method] = image
            if image.size != clean.size:
                raise EvaluationError(
                    f"{name}: the {method} image {indexes[method][name]} is {image.size[0]}x{image.size[1]} but "
                    f"its reference {indexes['reference'][name]} is {clean.size[0]}x{clean.size[1]}"
                )
            try:
                scores[method] = _scores(image, clean, crop_border, lpips_score)
            except ValueError as error:  # e.g. a crop_border that leaves nothing, an image under 11 px
                raise EvaluationError(f"{name}: {error}") from None
        rows.append({"name": name, "size": list(clean.size), "scores": scores, "gains": _gains(scores)})

    mean_scores = {method: {metric: _mean([row["scores"][method][metric] for row in rows])
                            for metric in rows[0]["scores"][method]} for method in methods}
    return {
        "settings": {"restored": str(restored), "reference": str(reference),
                     "degraded": None if degraded is None else str(degraded),
                     "base": None if base is None else str(base),
                     "y_channel": bool(y_channel), "crop_border": int(crop_border)},
        "methods": methods,
        "lpips": {"status": lpips_status, "computed": lpips_score is not None},
        "classical": classical_record,
        "images": rows,
        "mean": {"scores": mean_scores, "gains": _gains(mean_scores)},
        "unmatched": unmatched,
        "count": len(rows),
    }


def _gains(scores: dict) -> dict[str, float]:
    """PSNR gains (dB) of the restored images over the degraded ones, the classical and the base model's."""
    gains = {}
    for other in ("degraded", "classical", "base"):
        if other in scores:
            for metric in ("psnr", "psnr_y"):
                gains[f"{metric}_vs_{other}"] = _difference(scores["restored"][metric], scores[other][metric])
    return gains


def _difference(a: float, b: float) -> float:
    if math.isinf(a) and math.isinf(b) and a == b:
        return 0.0  # both identical to the reference: no gain either way
    return a - b


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------


def _text(value, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    return f"{value:.{digits}f}"


def describe_classical(record: dict) -> str:
    """One line naming the classical column's method, strength and where the strength was chosen.

    Args:
        record: ``result["classical"]`` of `evaluate_folders`.
    """
    text = f"classical = {record['method']}, strength {record['strength']:g}: {record['description']}; "
    tuned_on = record["tuned_on"]
    if tuned_on is None:
        return text + "strength as given (chosen on validation images)"
    best = max(row["psnr"] for row in tuned_on["mean_psnr_by_strength"])
    return text + (f"tuned on {tuned_on['count']} validation pair(s) ({tuned_on['degraded']} vs "
                   f"{tuned_on['reference']}; mean PSNR {_text(best, 2)} dB there)")


def format_table(result: dict, y_channel: bool | None = None) -> str:
    """The result of `evaluate_folders` as an aligned text table: one row per image, then the mean.

    Args:
        y_channel: the convention to show; None uses the one the evaluation was run with.
    """
    y_channel = result["settings"]["y_channel"] if y_channel is None else y_channel
    suffix, label = ("_y", "-Y") if y_channel else ("", "")
    show_lpips = result["lpips"]["computed"]
    # (title, value of one row's scores and gains, digits)
    columns: list[tuple[str, Callable[[dict, dict], float | None], int]] = []
    for method in result["methods"]:
        columns.append((f"{method} PSNR{label}", lambda s, g, m=method: s[m][f"psnr{suffix}"], 2))
        columns.append((f"{method} SSIM{label}", lambda s, g, m=method: s[m][f"ssim{suffix}"], 4))
        if show_lpips:
            columns.append((f"{method} LPIPS", lambda s, g, m=method: s[m]["lpips"], 4))
    for other in ("degraded", "classical", "base"):
        if other in result["methods"]:
            columns.append((f"gain vs {other} (dB)", lambda s, g, o=other: g[f"psnr{suffix}_vs_{o}"], 2))

    def column_std(value_of) -> float | None:
        values = [value_of(row["scores"], row["gains"]) for row in result["images"]]
        if len(values) < 2 or any(v is None or not math.isfinite(v) for v in values):
            return None
        return metrics.spread(values).std

    body = [[row["name"], *(_text(value(row["scores"], row["gains"]), digits) for _, value, digits in columns)]
            for row in result["images"]]
    mean = ["mean", *(_text(value(result["mean"]["scores"], result["mean"]["gains"]), digits)
                      for _, value, digits in columns)]
    # The spread over images: for a gain column it is the paired spread, the one that says whether
    # one method beats another on these images.
    std = ["± std", *(_text(column_std(value), digits) for _, value, digits in columns)]
    header = ["image", *(title for title, _, _ in columns)]
    widths = [max(len(line[i]) for line in [header, *body, mean, std]) for i in range(len(header))]
    render = lambda line: "  ".join(  # noqa: E731
        cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(line)
    )
    settings = result["settings"]
    lines = [
        f"{result['count']} image(s); {'Y (BT.601 luma)' if y_channel else 'RGB'} PSNR/SSIM on 0-255"
        + (f", {settings['crop_border']} px border cropped" if settings["crop_border"] else "")
        + f"; LPIPS: {result['lpips']['status']}",
        render(header),
        "-" * len(render(header)),
        *(render(line) for line in body),
        "-" * len(render(header)),
        render(mean),
        render(std),
    ]
    if result.get("classical"):
        lines.insert(1, describe_classical(result["classical"]))
    for role, names in result["unmatched"].items():
        if names:
            lines.append(f"unmatched in {role} (not measured): {_describe(names)}")
    return "\n".join(lines)


def _csv_columns(result: dict) -> list[str]:
    metric_names = ["psnr", "ssim", "psnr_y", "ssim_y"] + (["lpips"] if result["lpips"]["computed"] else [])
    columns = ["name", "width", "height"]
    columns += [f"{method}_{metric}" for method in result["methods"] for metric in metric_names]
    columns += [f"gain_{key}" for key in result["mean"]["gains"]]
    return columns


def _csv_row(name: str, size, scores: dict, gains: dict, columns: list[str]) -> dict:
    row = {"name": name, "width": size[0] if size else "", "height": size[1] if size else ""}
    for method, values in scores.items():
        for metric, value in values.items():
            row[f"{method}_{metric}"] = _text(value, 6)
    for key, value in gains.items():
        row[f"gain_{key}"] = _text(value, 6)
    return {column: row.get(column, "") for column in columns}


def _strict_json(value):
    """Replace inf/nan (not JSON) by strings, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return _text(value, 0)
    if isinstance(value, dict):
        return {key: _strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(item) for item in value]
    return value


def write_reports(result: dict, output_dir: str | os.PathLike, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``metrics.csv`` and ``metrics.json`` into ``output_dir`` (created if missing).

    Raises:
        EvaluationError: ``output_dir`` is a file, or a report exists and ``overwrite`` is False.
    """
    folder = Path(output_dir).expanduser()
    if folder.exists() and not folder.is_dir():
        raise EvaluationError(f"output {str(folder)!r} is an existing file; give a folder")
    csv_path, json_path = (folder / name for name in _REPORT_NAMES)
    existing = [str(path) for path in (csv_path, json_path) if path.exists()]
    if existing and not overwrite:
        raise EvaluationError(f"{', '.join(existing)} already exist(s); pass --overwrite to replace")
    folder.mkdir(parents=True, exist_ok=True)

    columns = _csv_columns(result)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in result["images"]:
        writer.writerow(_csv_row(row["name"], row["size"], row["scores"], row["gains"], columns))
    writer.writerow(_csv_row("mean", None, result["mean"]["scores"], result["mean"]["gains"], columns))
    for path, text in ((csv_path, buffer.getvalue()), (json_path, json.dumps(_strict_json(result), indent=2) + "\n")):
        write_text_atomically(path, text)
    return csv_path, json_path


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m kontext_lora_helpers.evaluate``."""
    parser = argparse.ArgumentParser(
        usage="%(prog)s --restored DIR --reference DIR [--degraded DIR] [--base DIR] "
              "[--classical nlm|tv (--classical_strength S | --classical_tune_degraded DIR "
              "--classical_tune_reference DIR)] [options]",
        description="PSNR/SSIM (and LPIPS when its weights are on this machine) of restored images "
                    "against clean references; prints a table, writes metrics.csv and metrics.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--restored", required=True, help="folder of restored images (the LoRA's output)")
    parser.add_argument("--reference", required=True, help="folder of clean reference images")
    parser.add_argument("--degraded", default=None, help="folder of the degraded inputs, for gains over them")
    parser.add_argument("--base", default=None, help="folder of the base model's output, for gains over it")
    parser.add_argument("--classical", choices=list(classical_methods.CLASSICAL_METHODS), default=None,
                        help="add a classical yardstick that restores the --degraded inputs: nlm (non-local "
                             "means) or tv (total variation); its strength comes from one of the next flags")
    parser.add_argument("--classical_strength", type=float, default=None,
                        help="the classical strength, chosen earlier on validation images (never on these)")
    parser.add_argument("--classical_tune_degraded", default=None,
                        help="degraded validation images to tune the classical strength on (other photos "
                             "than --degraded's)")
    parser.add_argument("--classical_tune_reference", default=None,
                        help="clean references of --classical_tune_degraded, matched by name")
    parser.add_argument("--y_channel", action="store_true", help="headline numbers on BT.601 luma instead of RGB")
    parser.add_argument("--crop_border", type=int, default=0, help="pixels dropped on every side before measuring")
    parser.add_argument("--lpips", choices=["auto", "off"], default="auto",
                        help="auto: LPIPS when its weights are already on this machine (never downloaded)")
    parser.add_argument("--output", default=None, help="folder for metrics.csv and metrics.json; None means the --restored folder")
    parser.add_argument("--overwrite", action="store_true", help="replace existing reports")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (0 success, 1 error; 2 for bad flags via argparse)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.crop_border < 0:
        parser.error(f"--crop_border must be >= 0; got {args.crop_border}")
    output = Path(args.output if args.output is not None else args.restored).expanduser()
    try:
        if output.exists() and not output.is_dir():
            raise EvaluationError(f"--output {str(output)!r} is an existing file; give a folder")
        existing = [str(output / name) for name in _REPORT_NAMES if (output / name).exists()]
        if existing and not args.overwrite:  # checked before the (possibly long) measuring
            raise EvaluationError(f"{', '.join(existing)} already exist(s); pass --overwrite to replace")
        result = evaluate_folders(args.restored, args.reference, degraded=args.degraded, base=args.base,
                                  y_channel=args.y_channel, crop_border=args.crop_border, lpips=args.lpips,
                                  progress=True, classical=args.classical,
                                  classical_strength=args.classical_strength,
                                  classical_tune_degraded=args.classical_tune_degraded,
                                  classical_tune_reference=args.classical_tune_reference)
        csv_path, json_path = write_reports(result, output, overwrite=args.overwrite)
    except EvaluationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_table(result))
    print(f"wrote {csv_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.argv[0] = "python -m kontext_lora_helpers.evaluate"  # instead of "evaluate.py" in usage lines
    raise SystemExit(main())
