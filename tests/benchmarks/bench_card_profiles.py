"""Full-size dry runs of every card profile of `gpu_settings`, for one big GPU (an H100 or H200).

For each profile (T4: 16 GB, fp16, NF4 base, 8-bit Adam; L4: 24 GB, bf16, NF4; A100: 40 GB, bf16;
and 1024 px on 80 GB), with and without ``--perceptual_loss`` (random VGG weights: the same cost as
ImageNet's), the pre-flight runs in a fresh process, capped at the card's memory
(``--preflight_memory_gb``, i.e. ``torch.cuda.set_per_process_memory_fraction``), on
``random-kontext``, FLUX.1-Kontext-dev's architecture with random weights. Each row holds the peak
memory, the seconds per step and the step's model-FLOPs utilisation against the dense matmul peak
measured on this GPU first (`bench_gpu_training.transformer_flops` counts the FLOPs). The cap limits
memory, not speed: the s/step are this GPU's, and a T4 is several times slower.

    python tests/benchmarks/bench_card_profiles.py                 # on the GPU; writes results/card_profiles.json
    python tests/benchmarks/bench_card_profiles.py --tiny --json /tmp/profiles.json   # CPU, shallow twin

``--tiny`` runs the same code on the CPU with ``random-kontext-shallow`` at 64 px (int8 base,
gradient checkpointing, the VGG term), one profile, two steps (``tests/test_benchmark_scripts.py``
runs it). The README's and notebook 04's tables are to be
made from the JSON file a GPU run writes, with the device it names.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu_training import measure_matmul_peak, transformer_flops  # noqa: E402
from machine import describe_machine, machine_info  # noqa: E402

from kontext_lora_helpers import gpu_settings, random_kontext  # noqa: E402
from kontext_lora_helpers.course import data_samples  # noqa: E402
from kontext_lora_helpers.fileio import write_json_atomically  # noqa: E402
from kontext_lora_helpers.train import TrainConfig, command_line  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "card_profiles.json"
VAE_FACTOR = 8


def profiles(tiny: bool) -> list[tuple[str, float | None, dict]]:
    """(name, memory cap in GB or None, TrainConfig settings) for every profile to run."""
    if tiny:
        return [("cpu (tiny)", None, dict(
            pretrained_model_name_or_path=random_kontext.RANDOM_KONTEXT_SHALLOW, resolution=64, train_batch_size=1,
            gradient_accumulation_steps=1, rank=4, mixed_precision="no", gradient_checkpointing=True,
            quantize="int8", validation_inference_steps=2, max_train_steps=1000, validation_steps=250))]
    rows = [(name, float(entry.memory_gb), dict(entry.settings)) for name, entry in gpu_settings.GPU_SETTINGS.items()]
    a100 = dict(gpu_settings.GPU_SETTINGS["A100-40GB"].settings)
    rows.append(("80GB-1024px", 80.0, dict(a100, resolution=1024)))
    return rows


def run_profile(name: str, memory_gb: float | None, settings: dict, perceptual: bool, steps: int,
                peak_flops: float, twin: str) -> dict:
    config = TrainConfig(**{**settings, "pretrained_model_name_or_path": twin}, hr_root=str(data_samples()),
                         perceptual_loss=perceptual, vgg_weights="random", num_validation_images=1)
    words = shlex.split(command_line(config))[3:]  # after "python -m kontext_lora_helpers.train"
    with tempfile.TemporaryDirectory() as scratch:
        report_path = Path(scratch) / "report.json"
        command = [sys.executable, "-m", "kontext_lora_helpers.preflight", *words,
                   "--preflight_steps", str(steps), "--preflight_json", str(report_path)]
        if memory_gb is not None:
            command += ["--preflight_memory_gb", f"{memory_gb:g}"]
        result = subprocess.run(command, capture_output=True, text=True)
        row = {"profile": name, "memory_cap_gb": memory_gb, "perceptual_loss": perceptual,
               "command": shlex.join(command[1:])}
        if not report_path.is_file():
            lines = (result.stderr or result.stdout).strip().splitlines()
            status = "out of memory" if "out of GPU memory" in result.stderr else "failed"
            return {**row, "status": status, "error": lines[-1] if lines else ""}
        report = json.loads(report_path.read_text())
    per_image = (config.resolution or 512) // VAE_FACTOR // 2
    tokens = 2 * per_image * per_image  # target + control
    text = random_kontext.TEXT_LENGTHS[twin]
    flops = transformer_flops(random_kontext.transformer_config(twin), tokens, text, config.rank,
                              config.train_batch_size)
    step_flops = flops["model"] * config.gradient_accumulation_steps
    return {**row, "status": "ok", **report, "model_flops_per_step": step_flops,
            "mfu": step_flops / report["seconds_per_step"] / peak_flops}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU, random-kontext-shallow, one profile, 2 steps")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 4; tiny 2)")
    parser.add_argument("--json", type=Path, default=None, help=f"where to write the results (default {RESULTS})")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.tiny:
        parser.error("no CUDA GPU here: run with --tiny, or on a GPU")
    twin = random_kontext.RANDOM_KONTEXT_SHALLOW if args.tiny else random_kontext.RANDOM_KONTEXT
    steps = args.steps or (2 if args.tiny else 4)
    dtype = torch.float32 if args.tiny else torch.bfloat16
    peak = measure_matmul_peak(device, dtype, 512 if args.tiny else 8192)
    results = {"machine": describe_machine(machine_info()), "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU",
               "twin": twin, "matmul_peak_flops_per_second": peak["flops_per_second"], "rows": []}
    output = args.json or RESULTS
    for name, memory_gb, settings in profiles(args.tiny):
        for perceptual in ((True,) if args.tiny else (False, True)):  # tiny: the VGG term, the longer path
            row = run_profile(name, memory_gb, settings, perceptual, steps, peak["flops_per_second"], twin)
            results["rows"].append(row)
            write_json_atomically(output, results)
            timing = (f"{row['seconds_per_step']:.2f} s/step, peak {row['peak_memory_gb']:.1f} GB, "
                      f"MFU {100 * row['mfu']:.1f} %" if row["status"] == "ok" else row["status"])
            print(f"{name}{' + VGG' if perceptual else ''}: {timing}", flush=True)
    return results


if __name__ == "__main__":
    main()
