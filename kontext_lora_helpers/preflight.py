"""Pre-flight: memory and time of a training run on this machine, before any weights are downloaded.

Give it the training command's flags; it builds the random-weight twin of the named model on this
machine (`random_kontext`: ``random-kontext`` for FLUX.1-Kontext-dev or any other FLUX.1 Kontext
folder or hub id, a ``random-kontext*`` name as given, nano as nano), runs a few real optimizer
steps and one validation restoration with exactly the settings given (precision, quantized base,
8-bit Adam, gradient checkpointing, resolution, batch and accumulation, perceptual term) through
the trainer's own `train`, so in its loading order too (text encoders alone, prompts cached,
encoders freed, then transformer and VAE: `train.loading_order`), and prints the peak memory, the
seconds per step, the estimated time of the whole run, and whether it fits this card::

    python -m kontext_lora_helpers.preflight --pretrained_model_name_or_path black-forest-labs/FLUX.1-Kontext-dev \\
        --hr_root photos --mixed_precision fp16 --quantize nf4 --use_8bit_adam --gradient_checkpointing \\
        --train_batch_size 1 --gradient_accumulation_steps 4 --max_train_steps 1000
    kontext-lora preflight ...                                   # the same

The twin has the real architecture and random weights, so its memory and time are the real
model's; its outputs are noise (the validation PSNR it prints means nothing). On a GPU the peak is
PyTorch's own count (``torch.cuda.max_memory_reserved``); on a CPU it is the process's peak
resident memory, which includes Python and the libraries. With ``--quantize`` the twin's random
transformer is first written to ``$KONTEXT_LORA_CACHE`` (default ``~/.cache/kontext_lora_helpers``;
23.8 GB in bf16 for ``random-kontext``) and reused by later pre-flights.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import torch

from .cli import fail, positive_int
from .fileio import write_json_atomically
from .models import ModelLoadError, is_nano
from .random_kontext import RANDOM_KONTEXT, is_random_kontext
from .train import (
    ConfigError,
    TrainConfig,
    TrainingDiverged,
    build_parser,
    check_config,
    loading_order,
    parse_args,
    train,
)

__all__ = ["PreflightReport", "format_report", "main", "preflight", "twin_of"]

FITS_FRACTION = 0.95
"""A run "fits" when its peak stays under this share of the card's memory (the rest is the CUDA
context, fragmentation and what other processes hold)."""


def twin_of(name_or_path: str) -> str:
    """The model a pre-flight builds for `name_or_path`: nano as nano, a random twin as named, and
    ``random-kontext`` for everything else (FLUX.1-Kontext-dev by hub id or folder)."""
    if is_nano(name_or_path) or is_random_kontext(name_or_path):
        return str(name_or_path).strip().lower()
    return RANDOM_KONTEXT


@dataclass
class PreflightReport:
    """What `preflight` measured. Memory in GB (10^9 bytes), times in seconds."""

    model: str
    twin: str
    device: str
    settings: str
    steps_run: int
    seconds_per_step: float
    validation_seconds: float | None
    """One validation of the planned run (the trial's, scaled to --num_validation_images)."""
    planned_steps: int
    planned_validations: int
    estimated_run_seconds: float
    peak_memory_gb: float
    peak_memory_kind: str
    device_memory_gb: float | None
    fits: bool | None
    loading_order: str
    """The order the trial loaded the models in (`train.loading_order`): the peak depends on it."""


def _device_name(device: torch.device) -> tuple[str, float | None]:
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        return properties.name, properties.total_memory / 1e9
    return "CPU", None


def _peak_cpu_memory_gb() -> float:
    import resource

    # ru_maxrss is in kilobytes on Linux (bytes on macOS)
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e9


def _settings_line(config: TrainConfig) -> str:
    precision = "fp32" if config.mixed_precision == "no" else f"{config.mixed_precision} mixed precision"
    parts = [precision, f"{config.quantize} base" if config.quantize != "none" else "unquantized base",
             f"{config.resolution} px", f"batch {config.train_batch_size} x {config.gradient_accumulation_steps}",
             f"rank {config.rank}", config.objective]
    parts += [name.replace("_", " ") for name in ("use_8bit_adam", "gradient_checkpointing", "perceptual_loss")
              if getattr(config, name)]
    return ", ".join(parts)


def preflight(config: TrainConfig, steps: int = 3, memory_gb: float | None = None, say=print) -> PreflightReport:
    """Run `steps` optimizer steps and one validation restoration of `config` on its model's twin.

    Args:
        config: the training settings as the user gave them (any model name).
        steps: optimizer steps to run (at least 2: the first, which warms up, is not timed).
        memory_gb: on a GPU, let PyTorch use only this much of it
            (`torch.cuda.set_per_process_memory_fraction`), to try a smaller card's budget on a
            bigger one; "fits" then compares against it. Speed stays the bigger card's.

    Raises:
        ConfigError: settings the trainer refuses (checked before anything is built).
    """
    if steps < 2:
        raise ValueError(f"a pre-flight needs at least 2 steps (the first is not timed); got {steps}")
    twin = twin_of(config.pretrained_model_name_or_path)
    with tempfile.TemporaryDirectory(prefix="preflight-check-") as scratch:
        # the run as planned, with its recipe filled in (and refused here if it cannot work)
        planned = check_config(config.replace(output_dir=scratch, resume_from_checkpoint=None))
    step_times: list[float] = []
    validation_times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="preflight-") as scratch:
        # Validation restores `train_batch_size` images per call: the trial restores one such call.
        trial_images = max(1, min(planned.num_validation_images, planned.train_batch_size))
        trial = config.replace(
            pretrained_model_name_or_path=twin, output_dir=scratch, max_train_steps=steps,
            checkpointing_steps=0, validation_steps=0, num_validation_images=trial_images,
            resume_from_checkpoint=None, report_to="none",
        )
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            if memory_gb is not None:
                total = torch.cuda.get_device_properties(device).total_memory
                torch.cuda.set_per_process_memory_fraction(min(1.0, memory_gb * 1e9 / total), device)
        say(f"pre-flight: {twin} (FLUX.1 Kontext's architecture with random weights; outputs are noise) "
            f"standing in for {config.pretrained_model_name_or_path}")
        last = [time.perf_counter()]

        def on_step(info: dict) -> None:
            now = time.perf_counter()
            step_times.append(now - last[0])
            last[0] = now

        def on_validation(info: dict) -> None:
            now = time.perf_counter()
            validation_times.append(now - last[0])
            last[0] = now

        try:
            result = train(trial, on_step=on_step, on_validation=on_validation, progress_bar=False)
        finally:
            if device.type == "cuda" and memory_gb is not None:
                torch.cuda.set_per_process_memory_fraction(1.0, device)  # the cap was for the trial only
        if result["status"] != "completed":
            raise KeyboardInterrupt
    name, total_gb = _device_name(device)
    if memory_gb is not None and total_gb is not None:
        name, total_gb = f"{name} capped at {memory_gb:g} GB", min(total_gb, memory_gb)
    if device.type == "cuda":
        peak, kind = torch.cuda.max_memory_reserved(device) / 1e9, "GPU memory reserved by PyTorch"
    else:
        peak, kind = _peak_cpu_memory_gb(), "process peak resident memory"
    # Step 1 includes the first compilation and allocation; a validation before it is the base
    # model's restoration and it resets the clock for the first step.
    timed = step_times[1:] if len(step_times) > 1 else step_times
    seconds_per_step = statistics.median(timed)
    # The trial restores `trial_images` at once; the run restores `num_validation_images` each time.
    validation_seconds = (validation_times[-1] * planned.num_validation_images / trial_images
                          if validation_times else None)
    validations = 0
    if validation_seconds is not None:
        # one base-model run, one per --validation_steps, one at the end
        validations = 2 + (planned.max_train_steps - 1) // planned.validation_steps if planned.validation_steps else 2
    estimate = seconds_per_step * planned.max_train_steps + validations * (validation_seconds or 0.0)
    return PreflightReport(
        model=str(config.pretrained_model_name_or_path), twin=twin, device=name, settings=_settings_line(planned),
        steps_run=len(step_times), seconds_per_step=seconds_per_step, validation_seconds=validation_seconds,
        planned_steps=planned.max_train_steps, planned_validations=validations, estimated_run_seconds=estimate,
        peak_memory_gb=peak, peak_memory_kind=kind, device_memory_gb=total_gb,
        fits=None if total_gb is None else peak < FITS_FRACTION * total_gb,
        loading_order=loading_order(trial),
    )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def format_report(report: PreflightReport) -> str:
    """The report as the command prints it."""
    lines = [
        f"model     {report.model} (measured on its twin {report.twin})",
        f"device    {report.device}" + (f", {report.device_memory_gb:.1f} GB" if report.device_memory_gb else ""),
        f"settings  {report.settings}",
        f"loading   {report.loading_order}",
        f"memory    peak {report.peak_memory_gb:.1f} GB ({report.peak_memory_kind})"
        + ("" if report.fits is None else
           f": {'fits' if report.fits else 'does NOT fit'} this card "
           f"({100 * report.peak_memory_gb / report.device_memory_gb:.0f}% of it)"),
        f"speed     {report.seconds_per_step:.2f} s/step (median of {max(1, report.steps_run - 1)} step(s) after the first)",
    ]
    validation = ""
    if report.planned_validations and report.validation_seconds is not None:
        validation = (f" + {report.planned_validations} validations x {report.validation_seconds:.0f} s")
    lines.append(f"estimate  {report.planned_steps} steps x {report.seconds_per_step:.2f} s/step{validation} = "
                 f"{_duration(report.estimated_run_seconds)} for the whole run")
    return "\n".join(lines)


def build_parser_with_preflight_flags() -> argparse.ArgumentParser:
    """The training command's parser plus the pre-flight's own flags."""
    parser = build_parser()
    if parser.prog.startswith("python -m"):  # not when `kontext-lora preflight` named itself
        parser.prog = "python -m kontext_lora_helpers.preflight"
    parser.description = ("Measure peak memory and seconds per step of a training run on this machine with the "
                          "model's random-weight twin, before downloading any weights. Takes the training flags.")
    group = parser.add_argument_group("pre-flight")
    group.add_argument("--preflight_steps", type=positive_int, default=3,
                       help="optimizer steps to run (the first is not timed)")
    group.add_argument("--preflight_json", default=None, help="also write the report as JSON to this file")
    group.add_argument("--preflight_memory_gb", type=float, default=None,
                       help="on a GPU, use at most this much memory: a smaller card's budget on a bigger card")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Returns 0 when the run fits (or on a CPU), 1 when refused, diverged or too big for the card."""
    parser = build_parser_with_preflight_flags()
    args = parser.parse_args(argv)
    config = parse_args(argv, parser)
    try:
        report = preflight(config, steps=args.preflight_steps, memory_gb=args.preflight_memory_gb)
    except (ConfigError, TrainingDiverged, ModelLoadError, ValueError) as error:
        return fail(str(error))
    except torch.cuda.OutOfMemoryError as error:
        budget = f"{args.preflight_memory_gb:g} GB" if args.preflight_memory_gb else "this card"
        return fail(f"does NOT fit {budget}: out of GPU memory ({str(error).splitlines()[0]})")
    print(format_report(report))
    if args.preflight_json:
        write_json_atomically(args.preflight_json, asdict(report))
    return 0 if report.fits in (True, None) else 1


if __name__ == "__main__":
    sys.exit(main())
