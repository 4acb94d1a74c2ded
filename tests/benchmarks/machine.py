"""What a benchmark's numbers were measured on: CPU, threads, load and library versions."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch


def machine_info() -> dict:
    """CPU model and counts, 1-minute load average, torch threads, Python/torch/diffusers/peft versions."""
    cpu_model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import diffusers
    import peft

    return {
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "peft": peft.__version__,
    }


def add_run_arguments(parser: argparse.ArgumentParser, work: str = "call") -> None:
    """The options every CPU benchmark takes: --threads (default 1), --seed, --json."""
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: nano-sized ops are fastest on one thread, and "
                             f"threads waiting on a busy CPU make every {work} far slower)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")


def describe_machine(machine: dict) -> str:
    """One line for a report's header from `machine_info()`'s dict."""
    return (f"machine: {machine['cpu_model'] or 'CPU'}, {machine['cpus_available']} of {machine['cpu_count']} CPUs, "
            f"load {machine['load_average_1min']}, torch {machine['torch']} with {machine['torch_threads']} thread(s), "
            f"diffusers {machine['diffusers']}")


def write_report(report: dict, path: Path | None) -> None:
    """Write a benchmark's report as JSON to `path` (folders created), when a path was given."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
