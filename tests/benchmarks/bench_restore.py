"""Nano restoration speed: one image per pipeline call versus a batch, and whole versus tiled.

    python tests/benchmarks/bench_restore.py                      # 3 timed rounds, about a minute here
    python tests/benchmarks/bench_restore.py --rounds 5 --json outputs/bench_restore.json

Two comparisons, each of a candidate against its baseline in the same run, both through
`kontext_lora_helpers.restore` with nano, 20 denoising steps, no LoRA:

* **Batching**, at nano's native size: 8 different 64x64 photos (centre crops of ``data_samples/``,
  degraded with the course's recipe). Baseline: ``restore_batch`` called 8 times with one image
  each; candidate: one ``restore_batch`` call with all 8. Reported in images per second. Every
  image has its own seeded generator, so the two give the same pictures up to batched-matmul
  rounding; the largest pixel difference is reported as a check.
* **Tiling**, on a 128x128 photo (4x nano's native area). Baseline: ``restore_image`` whole, which
  runs the pipeline at the 64x64 working size and resizes the result back; candidate:
  ``restore_image(tile=True)``, 3x3 overlapping 64 px tiles at the photo's own resolution
  (``--tile_batch_size`` tiles per call, default 4 as in ``restore_image``). Reported in seconds per
  image, with each one's PSNR against the clean photo, since the tiles buy resolution with time.

One untimed warm-up round first; then the arrangements alternate round by round (and swap which
goes first) so that background load on a shared machine hits both alike; medians are reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # machine.py, whichever way this file is started
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nano is built from shipped files; never download

import numpy as np  # noqa: E402
import torch  # noqa: E402
from machine import add_run_arguments, describe_machine, machine_info, write_report  # noqa: E402

from kontext_lora_helpers import restore  # noqa: E402
from kontext_lora_helpers.degradations import DegradationConfig, apply_degradation  # noqa: E402
from kontext_lora_helpers.images import list_images, load_rgb  # noqa: E402
from kontext_lora_helpers.latents import pixel_multiple  # noqa: E402
from kontext_lora_helpers.metrics import psnr  # noqa: E402
from kontext_lora_helpers.models import load_pipeline  # noqa: E402
from kontext_lora_helpers.viz_degradations import prepare_photo  # noqa: E402

DATA_SAMPLES = REPO_ROOT / "data_samples"
NATIVE = 64  # nano's native side
LARGE = 128  # 4x the native area
BATCH = 8
# The degradation the course trains and measures with (notebooks 04 and 05).
DEGRADATION = DegradationConfig(degradation_types=["downsample", "noise", "blur"], lr_scale=2,
                                noise_level=0.1, blur_radius=0.5)




def benchmark_images(seed: int):
    """(8 degraded 64x64 photos, a degraded 128x128 photo, its clean original)."""
    paths = list_images(DATA_SAMPLES)
    if len(paths) < BATCH:
        raise SystemExit(f"{DATA_SAMPLES} holds {len(paths)} photos; the batch needs {BATCH}")
    small = [apply_degradation(prepare_photo(load_rgb(path), NATIVE), DEGRADATION, seed=seed + i)[0]
             for i, path in enumerate(paths[:BATCH])]
    large_clean = prepare_photo(load_rgb(DATA_SAMPLES / "held_out" / "coffee.jpg"), LARGE)
    large = apply_degradation(large_clean, DEGRADATION, seed=seed)[0]
    return small, large, large_clean


def timed(function):
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def max_pixel_difference(first, second) -> int:
    return int(max(np.abs(np.asarray(a, dtype=np.int64) - np.asarray(b, dtype=np.int64)).max()
                   for a, b in zip(first, second, strict=True)))


def markdown_table(report: dict) -> str:
    batching, tiling = report["batching"], report["tiling"]
    steps = report["settings"]["steps"]
    tiles = tiling["tiles"]
    rows = [
        "| comparison | baseline | candidate | candidate / baseline |",
        "|---|---|---|---|",
        f"| batching: {BATCH} images {NATIVE}x{NATIVE}, {steps} steps | batch 1, {BATCH} calls: "
        f"{batching['single_images_per_second']:.2f} images/s | batch {BATCH}, 1 call: "
        f"{batching['batched_images_per_second']:.2f} images/s | {batching['speedup']:.2f}x throughput |",
        f"| tiling: one {LARGE}x{LARGE} image, {steps} steps | whole ({NATIVE}x{NATIVE} working size): "
        f"{tiling['whole_seconds_per_image']:.2f} s/image, {tiling['whole_psnr']:.2f} dB | "
        f"tiled ({tiles['grid'][0]}x{tiles['grid'][1]} tiles of {tiles['tile_size'][0]} px, "
        f"{tiling['tile_batch_size']} per call): {tiling['tiled_seconds_per_image']:.2f} s/image, "
        f"{tiling['tiled_psnr']:.2f} dB | {tiling['time_ratio']:.2f}x the time |",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (after one warm-up round)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps per restoration")
    parser.add_argument("--tile_batch_size", type=int, default=4, help="tiles per pipeline call when tiling")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1 or args.tile_batch_size < 1:
        parser.error("--rounds, --steps and --tile_batch_size must be >= 1")
    torch.set_num_threads(args.threads)

    pipe = load_pipeline("nano", device="cpu")
    small, large, large_clean = benchmark_images(args.seed)
    options = dict(num_inference_steps=args.steps, seed=args.seed)
    arrangements = {
        "single": lambda: [restore.restore_batch(pipe, [image], **options)[0] for image in small],
        "batched": lambda: restore.restore_batch(pipe, small, **options),
        "whole": lambda: restore.restore_image(pipe, large, **options),
        "tiled": lambda: restore.restore_image(pipe, large, tile=True, batch_size=args.tile_batch_size, **options),
    }
    pairs = (("single", "batched"), ("whole", "tiled"))

    outputs = {name: arrangement() for name, arrangement in arrangements.items()}  # warm-up, kept for the checks
    seconds: dict[str, list[float]] = {name: [] for name in arrangements}
    for round_index in range(args.rounds):
        for pair in pairs:
            for name in pair if round_index % 2 == 0 else pair[::-1]:
                elapsed, _ = timed(arrangements[name])
                seconds[name].append(elapsed)

    median = {name: statistics.median(values) for name, values in seconds.items()}
    layout = restore.plan_tiles(LARGE, LARGE, NATIVE, pixel_multiple(pipe.vae))
    report = {
        "benchmark": "nano restoration: batch 1 vs batch 8 at 64x64; whole vs tiled at 128x128",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(),
        "settings": {"rounds": args.rounds, "steps": args.steps, "threads": args.threads, "seed": args.seed,
                     "batch": BATCH, "native": NATIVE, "large": LARGE, "lora": None},
        "seconds": {name: [round(value, 4) for value in values] for name, values in seconds.items()},
        "batching": {
            "single_images_per_second": BATCH / median["single"],
            "batched_images_per_second": BATCH / median["batched"],
            "speedup": median["single"] / median["batched"],
            # Per-image generators: batching may only change rounding, by at most a level or so.
            "max_pixel_difference": max_pixel_difference(outputs["single"], outputs["batched"]),
        },
        "tiling": {
            "whole_seconds_per_image": median["whole"],
            "tiled_seconds_per_image": median["tiled"],
            "time_ratio": median["tiled"] / median["whole"],
            "tiles": layout.to_dict(),
            "tile_batch_size": args.tile_batch_size,
            "whole_psnr": psnr(outputs["whole"], large_clean),
            "tiled_psnr": psnr(outputs["tiled"], large_clean),
            "degraded_psnr": psnr(large, large_clean),
        },
    }

    print(f"nano restoration, {args.steps} steps, {args.rounds} timed rounds after 1 warm-up, alternating")
    print(describe_machine(report["machine"]))
    print()
    print(markdown_table(report))
    print()
    print(f"batch 8 vs batch 1, largest pixel difference: {report['batching']['max_pixel_difference']} of 255 levels")
    print(f"128x128 degraded input: {report['tiling']['degraded_psnr']:.2f} dB against the clean photo")
    write_report(report, args.json)
    return report


if __name__ == "__main__":
    main()
