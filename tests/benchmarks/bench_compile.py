"""What ``--compile`` buys: the project's training step with the transformer compiled against the
same step eager, in one process, on nano (or a twin of the real model).

    python tests/benchmarks/bench_compile.py                           # nano, inductor, 10 timed steps each
    python tests/benchmarks/bench_compile.py --model random-kontext-shallow --steps 3
    python tests/benchmarks/bench_compile.py --backend aot_eager --steps 2 --warmup 1   # plumbing only

Two copies of the same transformer with the same LoRA (one compiled in place with
``module.compile(backend=...)``, as `train.train` does with ``--compile``) run `train.training_loss`,
backward and AdamW on the same batches (`bench_training_step.draw_batches`, the README's recipe
objective). The first compiled steps are the compile: their time is reported as the compile cost.
Then the two alternate step by step; medians and the ratio are reported, with the steps a run
needs before the compile has paid for itself.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parents[1]))
sys.path.insert(0, str(BENCH_DIR))

import torch  # noqa: E402

from bench_training_step import DATA_SAMPLES, draw_batches, make_project_step  # noqa: E402
from machine import add_run_arguments, describe_machine, machine_info, write_report  # noqa: E402
from kontext_lora_helpers import objective, train  # noqa: E402
from kontext_lora_helpers import latents as latent_ops  # noqa: E402
from kontext_lora_helpers.models import COMPILE_BACKENDS  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nano", help="nano or random-kontext-shallow")
    parser.add_argument("--backend", default="inductor", choices=COMPILE_BACKENDS)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per arrangement")
    parser.add_argument("--warmup", type=int, default=3, help="compiled steps counted as the compile")
    add_run_arguments(parser, work="step")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    nano = args.model == "nano"
    config = train.check_config(train.TrainConfig(
        pretrained_model_name_or_path=args.model, hr_root=str(DATA_SAMPLES), resolution=64,
        train_batch_size=4 if nano else 1, rank=16, mixed_precision="no", seed=args.seed, validation_dir="none",
        checkpointing_steps=0, output_dir=str(BENCH_DIR / "_unused")))
    batches = draw_batches(config, args.warmup + 2 * args.steps)
    pipe = train.load_training_pipeline(config, device)
    cache = train.cache_prompt_embeddings(pipe, config)
    eager = pipe.transformer
    compiled = copy.deepcopy(eager)
    compiled.compile(backend=args.backend)
    tokens = latent_ops.image_token_count(pipe.vae, config.resolution, config.resolution)
    mu = {"auto": objective.calculate_shift(tokens, pipe.scheduler.config), "none": None}.get(
        config.sigma_shift, config.sigma_shift)
    guidance = config.guidance_scale if eager.config.guidance_embeds else None
    steps = {name: make_project_step(model, pipe.vae, cache, config, mu, guidance, device)
             for name, model in (("eager", eager), ("compiled", compiled))}

    started = time.perf_counter()
    for epoch, batch in batches[: args.warmup]:
        steps["compiled"](epoch, batch)
        steps["eager"](epoch, batch)
    warmup_seconds = time.perf_counter() - started
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    losses: dict[str, list[float]] = {"eager": [], "compiled": []}
    for index, (epoch, batch) in enumerate(batches[args.warmup: args.warmup + args.steps]):
        for name in ("eager", "compiled") if index % 2 == 0 else ("compiled", "eager"):
            start = time.perf_counter()
            losses[name].append(steps[name](epoch, batch))
            times[name].append(time.perf_counter() - start)
    eager_s, compiled_s = statistics.median(times["eager"]), statistics.median(times["compiled"])
    compile_seconds = max(warmup_seconds - args.warmup * (eager_s + compiled_s), 0.0)
    saved = eager_s - compiled_s
    report = {
        "benchmark": "training step: torch.compile against eager", "model": args.model, "backend": args.backend,
        "machine": machine_info(), "eager_ms_median": 1000 * eager_s, "compiled_ms_median": 1000 * compiled_s,
        "speedup": eager_s / compiled_s, "compile_seconds": compile_seconds,
        "break_even_steps": compile_seconds / saved if saved > 0 else None,
        "loss_max_rel_diff": max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses["compiled"], losses["eager"])),
    }
    print(describe_machine(report["machine"]))
    print(f"{args.model}, backend {args.backend}: eager {report['eager_ms_median']:.1f} ms/step, compiled "
          f"{report['compiled_ms_median']:.1f} ms/step ({report['speedup']:.3f}x); compile about "
          f"{compile_seconds:.0f} s, paid back after "
          + (f"{report['break_even_steps']:.0f} steps" if report["break_even_steps"] else "never (no gain)")
          + f"; loss difference {report['loss_max_rel_diff']:.1e} relative")
    write_report(report, args.json)
    return report


if __name__ == "__main__":
    main()
