"""Nano's recipe, chosen on the validation photos and reported on the test photos.

Trains the README's main command (nano, the sample photos, the course's degradation) once as it is
and once per one-setting change, checks every LoRA on the 24 validation crops (`nano check-lora
--photos validation`: plain diffusers, 28 steps), keeps for each setting the value that validates
best, and reports the recipe on the 16 test crops only at the end. Each figure is a mean over crops
with its spread; a change is "clearly better" only when its paired gain exceeds two standard errors.

    python tests/benchmarks/bench_recipe.py                     # every variant: about 6 min each on 2 cores
    python tests/benchmarks/bench_recipe.py --variants recipe flow_matching
    python tests/benchmarks/bench_recipe.py --tiny              # 4 steps a run, 4 sampler steps: plumbing only

Results go to ``outputs/bench_recipe/results.json`` (one entry per variant, written as each
finishes, so an interrupted study resumes where it stopped) and a markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine, machine_info  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

README_COMMAND = [
    "--pretrained_model_name_or_path", "nano", "--hr_root", "data_samples",
    "--degradation_types", "downsample,noise,blur", "--lr_scale", "2", "--noise_level", "0.1", "--blur_radius", "0.5",
]
"""The README's main training command, less its --output_dir."""

VARIANTS: dict[str, list[str]] = {
    "recipe": [],
    "flow_matching": ["--objective", "flow_matching"],
    "pipeline_shift": ["--sigma_shift", "auto"],
    "no_weight_average": ["--ema_decay", "0"],
    "learning_rate_1e-3": ["--learning_rate", "1e-3"],
    "whole_side_crops": ["--crop_scale", "1,1"],
    "seed_1": ["--seed", "1"],
    "seed_2": ["--seed", "2"],
}
"""One-setting changes of nano's recipe (`train.MODEL_RECIPES["nano"]`), by name; "recipe" is the README's command
(seed 0). The "seed_*" runs are the recipe itself with other seeds (crops, degradations, noise and the LoRA's
initialisation all follow the seed): their spread is how far a setting's gain must reach to be more than luck."""

SEED_VARIANTS = ("recipe", "seed_1", "seed_2")


def train_variant(name: str, flags: list[str], work: Path, tiny: bool) -> tuple[Path, float]:
    output_dir = work / name
    command = [sys.executable, "-m", "kontext_lora_helpers.train", *README_COMMAND, *flags,
               "--output_dir", str(output_dir), "--validation_dir", "none"]
    if tiny:
        command += ["--max_train_steps", "4", "--checkpointing_steps", "0"]
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return output_dir, time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--work_dir", type=Path, default=REPO / "outputs" / "bench_recipe")
    parser.add_argument("--tiny", action="store_true", help="4 training steps and 4 sampler steps: plumbing only")
    args = parser.parse_args(argv)

    import torch
    from diffusers import FluxKontextPipeline

    from kontext_lora_helpers.metrics import Spread
    from kontext_lora_helpers.nano.evaluate import check_restoration_lora
    from kontext_lora_helpers.nano.model import build_nano_pipeline

    torch.manual_seed(0)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    results_path = args.work_dir / ("results-tiny.json" if args.tiny else "results.json")
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    pipeline_dir = args.work_dir / "nano-pipeline"
    if not pipeline_dir.exists():
        build_nano_pipeline().save_pretrained(pipeline_dir, safe_serialization=True)
    pipe = FluxKontextPipeline.from_pretrained(pipeline_dir)
    steps = 4 if args.tiny else 28  # the pipeline's default, whatever the LoRA records (bench_steps.py measures fewer)
    for name in args.variants:
        if name in results:
            continue
        output_dir, seconds = train_variant(name, VARIANTS[name], args.work_dir, args.tiny)
        check = check_restoration_lora(output_dir, pipe=pipe, photo_set="validation", num_inference_steps=steps)
        results[name] = {"flags": VARIANTS[name], "train_seconds": seconds, "validation": check}
        if name == "recipe":
            results[name]["test"] = check_restoration_lora(output_dir, pipe=pipe, photo_set="test",
                                                           num_inference_steps=steps)
        results_path.write_text(json.dumps(results, indent=2))
        print(f"{name}: validation LoRA {check['lora_psnr']:.2f} dB ({seconds:.0f} s of training)", flush=True)

    print(f"\n{describe_machine(machine_info())}\n")
    print("| variant | flags | validation LoRA PSNR (mean ± std, 24 crops) | gain over the recipe (paired, ± 2 s.e.) |")
    print("|---|---|---|---|")
    recipe = results.get("recipe")
    from kontext_lora_helpers.metrics import paired_spread, spread

    for name, entry in results.items():
        validation = entry["validation"]
        lora = Spread(**validation["spread"]["lora_psnr"])
        if recipe is not None and name != "recipe":
            gain = paired_spread(validation["per_image"]["lora"], recipe["validation"]["per_image"]["lora"])
            gain_text = f"{gain.mean:+.2f} ± {2 * gain.sem:.2f} dB"
        else:
            gain_text = ""
        print(f"| {name} | `{' '.join(entry['flags']) or 'the README command'}` | {lora} dB | {gain_text} |")
    seeds = [results[name]["validation"]["lora_psnr"] for name in SEED_VARIANTS if name in results]
    if len(seeds) > 1:
        over_seeds = spread(seeds)
        print(f"\nthe recipe over {len(seeds)} seeds: validation LoRA PSNR {over_seeds} dB (mean ± std of the "
              "24-crop means)")
    if recipe is not None and "test" in recipe:
        test = recipe["test"]
        print("\nthe recipe on the 16 test crops (reported, chosen on nothing):")
        for key in ("degraded_psnr", "base_psnr", "lora_psnr", "lora_minus_base_db", "lora_minus_degraded_db"):
            print(f"  {key:24s} {Spread(**test['spread'][key])} dB (± {Spread(**test['spread'][key]).sem:.2f} s.e.)")
    base = next(iter(results.values()))["validation"]
    print(f"\nvalidation base model {Spread(**base['spread']['base_psnr'])} dB, degraded "
          f"{Spread(**base['spread']['degraded_psnr'])} dB")
    print(f"results: {results_path.relative_to(REPO) if results_path.is_relative_to(REPO) else results_path}")
    return results


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
