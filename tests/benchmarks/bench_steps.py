"""How many denoising steps a nano restoration LoRA needs: PSNR and time against the step count.

Trains (or reuses) the README's main command with each objective (`bench_recipe.VARIANTS`
"recipe", which is ``posterior_mean``, and "flow_matching"), then restores the 24 validation crops
in plain diffusers (`nano check-lora --photos validation`'s code) at every step count of
``--steps``. For each objective it keeps the fewest steps whose paired PSNR loss against 28 steps
is at most ``--tolerance_db`` (0.1 dB) on the validation crops, and only then restores the 16 test
crops at that count and at 28 to report. (`train.RESTORATION_STEPS` records that count for
``posterior_mean``; for ``flow_matching`` it keeps 28, because that LoRA's PSNR rises as steps are
removed, a sign of blur, not of a free speed-up; the table shows both.)

It also times restoration of the 16 test crops with the LoRA: the original guide's snippet in
plain diffusers (``FluxKontextPipeline`` with ``load_lora_weights``, one image a call, 28 steps)
against the package's `inference.restore_batch` (one call for the batch) at the chosen steps, the
two alternating round by round; the ratio is the speed-up a user gets from the recorded default.

    python tests/benchmarks/bench_steps.py                 # trains what is missing (about 4 min a LoRA), then ~3 min
    python tests/benchmarks/bench_steps.py --tiny          # 4 training steps, steps 1 2: plumbing only

Results go to ``<work_dir>/steps.json`` (``--work_dir`` defaults to ``outputs/bench_recipe``, so
the recipe study's LoRAs are reused) and a markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_recipe import VARIANTS, train_variant  # noqa: E402
from machine import describe_machine, machine_info  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
STEP_COUNTS = (1, 2, 3, 4, 6, 8, 12, 16, 20, 28)
OBJECTIVE_VARIANTS = {"posterior_mean": "recipe", "flow_matching": "flow_matching"}
"""Each objective's LoRA: the `bench_recipe.VARIANTS` entry that trains it."""


def fewest_good_steps(per_step: dict[int, list[float]], reference: list[float], tolerance_db: float) -> int:
    """The smallest step count whose mean paired PSNR change against `reference` is >= -tolerance_db.

    Args:
        per_step: {steps: per-crop LoRA PSNRs (dB)}; reference: the per-crop PSNRs at the most steps.
    """
    from kontext_lora_helpers.metrics import paired_spread

    for steps in sorted(per_step):
        if paired_spread(per_step[steps], reference).mean >= -tolerance_db:
            return steps
    return max(per_step)


def time_restorations(pipe, lora_dir: Path, steps: int, rounds: int, tiny: bool) -> dict:
    """Seconds to restore the 16 test crops: the guide's snippet (one image a call, 28 steps) against
    `inference.restore_batch` at `steps`, alternating, median of `rounds` after one warm-up round."""
    from kontext_lora_helpers.degradations import apply_degradation
    from kontext_lora_helpers.inference import restore_batch
    from kontext_lora_helpers.models import GUIDANCE_SCALE, call_kwargs
    from kontext_lora_helpers.nano.evaluate import RESTORATION_BAR, tensor_to_pils
    from kontext_lora_helpers.nano.pool import evaluation_batch
    from kontext_lora_helpers.prompts import DEFAULT_INSTANCE_PROMPT

    import torch

    degraded = [apply_degradation(image, RESTORATION_BAR, seed=i)[0]
                for i, image in enumerate(tensor_to_pils(evaluation_batch("test")))]
    snippet_steps = 2 if tiny else 28
    pipe.load_lora_weights(str(lora_dir))
    try:
        def snippet() -> None:
            for image in degraded:
                # the guide's call with nano's card arguments (its size and text length)
                pipe(image=image, prompt=DEFAULT_INSTANCE_PROMPT, guidance_scale=GUIDANCE_SCALE,
                     num_inference_steps=snippet_steps, generator=torch.Generator().manual_seed(0),
                     **call_kwargs(pipe, image.height, image.width))

        def package() -> None:
            restore_batch(pipe, degraded, DEFAULT_INSTANCE_PROMPT, steps, GUIDANCE_SCALE, 0)

        times: dict[str, list[float]] = {"snippet": [], "package": []}
        for round_index in range(rounds + 1):
            order = (("snippet", snippet), ("package", package))
            for name, run in order if round_index % 2 == 0 else order[::-1]:
                started = time.perf_counter()
                run()
                if round_index:  # the first round warms both up
                    times[name].append(time.perf_counter() - started)
    finally:
        pipe.unload_lora_weights()
    snippet_s, package_s = (statistics.median(times[name]) for name in ("snippet", "package"))
    return {"images": len(degraded), "snippet_steps": snippet_steps, "package_steps": steps,
            "snippet_seconds": snippet_s, "package_seconds": package_s, "speedup": snippet_s / package_s,
            "rounds": rounds}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", type=Path, default=REPO / "outputs" / "bench_recipe")
    parser.add_argument("--objectives", nargs="*", default=list(OBJECTIVE_VARIANTS), choices=list(OBJECTIVE_VARIANTS))
    parser.add_argument("--steps", type=int, nargs="*", default=list(STEP_COUNTS))
    parser.add_argument("--tolerance_db", type=float, default=0.1,
                        help="the largest mean PSNR loss against the most steps that still counts as free")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of the restoration timing")
    parser.add_argument("--tiny", action="store_true", help="4 training steps, step counts 1 2: plumbing only")
    args = parser.parse_args(argv)

    import torch
    from diffusers import FluxKontextPipeline

    from kontext_lora_helpers.lora import LORA_WEIGHT_NAME
    from kontext_lora_helpers.metrics import paired_spread, spread
    from kontext_lora_helpers.nano.evaluate import check_restoration_lora
    from kontext_lora_helpers.nano.model import build_nano_pipeline

    torch.manual_seed(0)
    torch.set_num_threads(1)  # nano-sized work is fastest on one thread (tests/benchmarks/README.md)
    step_counts = sorted(set((1, 2) if args.tiny else args.steps))
    most = step_counts[-1]
    args.work_dir.mkdir(parents=True, exist_ok=True)
    results_path = args.work_dir / ("steps-tiny.json" if args.tiny else "steps.json")
    pipeline_dir = args.work_dir / "nano-pipeline"
    if not pipeline_dir.exists():
        build_nano_pipeline().save_pretrained(pipeline_dir, safe_serialization=True)
    pipe = FluxKontextPipeline.from_pretrained(pipeline_dir)
    pipe.set_progress_bar_config(disable=True)

    results: dict = {"machine": machine_info(), "tolerance_db": args.tolerance_db, "objectives": {}}
    for objective in args.objectives:
        variant = OBJECTIVE_VARIANTS[objective]
        lora_dir = args.work_dir / variant
        if not (lora_dir / LORA_WEIGHT_NAME).is_file():  # bench_recipe.py's LoRA, when it trained one here
            lora_dir, _ = train_variant(variant, VARIANTS[variant], args.work_dir, args.tiny)
        curve = {}
        for steps in step_counts:
            started = time.perf_counter()
            check = check_restoration_lora(lora_dir, pipe=pipe, photo_set="validation", num_inference_steps=steps)
            curve[steps] = {"seconds": time.perf_counter() - started, "lora": check["per_image"]["lora"],
                            "base": check["per_image"]["base"]}
            print(f"{objective} {steps:2d} steps: validation LoRA {check['lora_psnr']:.2f} dB, "
                  f"base {check['base_psnr']:.2f} dB", flush=True)
        chosen = fewest_good_steps({s: c["lora"] for s, c in curve.items()}, curve[most]["lora"], args.tolerance_db)
        test = {steps: check_restoration_lora(lora_dir, pipe=pipe, photo_set="test", num_inference_steps=steps)
                for steps in sorted({chosen, most})}
        results["objectives"][objective] = {
            "lora_dir": str(lora_dir), "validation_curve": curve, "chosen_steps": chosen,
            "test": {steps: {"lora": t["per_image"]["lora"], "base": t["per_image"]["base"],
                             "degraded": t["per_image"]["degraded"]} for steps, t in test.items()},
            "timing": time_restorations(pipe, lora_dir, chosen, 1 if args.tiny else args.rounds, args.tiny),
        }
        results_path.write_text(json.dumps(results, indent=2))

    print(f"\n{describe_machine(results['machine'])}\n")
    header = " | ".join(f"{s}" for s in step_counts)
    from kontext_lora_helpers.train import RESTORATION_STEPS

    print(f"| objective (validation LoRA PSNR, dB, mean of 24 crops) | {header} | fewest within "
          f"{args.tolerance_db} dB | recorded (train.RESTORATION_STEPS) |")
    print("|---|" + "---|" * len(step_counts) + "---|---|")
    for objective, entry in results["objectives"].items():
        means = " | ".join(f"{statistics.fmean(entry['validation_curve'][s]['lora']):.2f}" for s in step_counts)
        print(f"| {objective} | {means} | {entry['chosen_steps']} | {RESTORATION_STEPS[objective]} |")
    for objective, entry in results["objectives"].items():
        chosen, test = entry["chosen_steps"], entry["test"]
        at_chosen, at_most = test[chosen]["lora"], test[most]["lora"]
        change = paired_spread(at_chosen, at_most)
        timing = entry["timing"]
        print(f"\n{objective}, 16 test crops: {chosen} steps {spread(at_chosen)} dB, "
              f"{most} steps {spread(at_most)} dB, paired change {change.mean:+.3f} dB "
              f"(s.e. {change.sem:.3f}); restoring them: the snippet ({timing['snippet_steps']} steps, one a call) "
              f"{timing['snippet_seconds']:.2f} s, restore_batch ({chosen} steps) {timing['package_seconds']:.2f} s, "
              f"{timing['speedup']:.2f}x")
    print(f"results: {results_path}")
    return results


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
