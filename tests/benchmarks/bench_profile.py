"""Where the time of one training step goes: data, text, VAE, transformer, backward, optimizer.

    python tests/benchmarks/bench_profile.py                    # nano's recipe, batch 4, 10 timed steps
    python tests/benchmarks/bench_profile.py --objective flow_matching --steps 20
    python tests/benchmarks/bench_profile.py --steps 1 --warmup 0   # plumbing only

Runs the stages of `train.training_loss` and the loop's optimizer step one by one, each timed on
its own (with a CUDA synchronise when on a GPU), on nano with the trainer's own functions:

* **data**: one batch from `DegDataset` (load, crop, degrade, collate);
* **text**: the prompt embeddings from the `PromptEmbeddingCache` (encoded once, before the step);
* **VAE encode**: `objective.encode_pair` (target and control, no graph);
* **sigma and noise**: `train.sigmas_and_noise` (per sample, from seed, epoch and index);
* **transformer forward**: `objective.objective_step(objective)` (for ``posterior_mean``, both
  passes: the anchor without a graph and the training forward);
* **backward**; **optimizer**: gradient clipping, AdamW, ``zero_grad``.

Reports the median milliseconds of each stage over the timed steps and its share of their sum.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parents[1]))
sys.path.insert(0, str(BENCH_DIR))

import torch  # noqa: E402

from bench_training_step import DATA_SAMPLES  # noqa: E402
from machine import add_run_arguments, describe_machine, machine_info, write_report  # noqa: E402
from kontext_lora_helpers import latents as latent_ops  # noqa: E402
from kontext_lora_helpers import lora as lora_ops  # noqa: E402
from kontext_lora_helpers import objective, train  # noqa: E402
from kontext_lora_helpers.course import evaluation_dirs  # noqa: E402
from kontext_lora_helpers.data import DegDataset  # noqa: E402

STAGES = ("data", "text", "VAE encode", "sigma and noise", "transformer forward", "backward", "optimizer")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objective", default=None, choices=objective.OBJECTIVES, help="default: nano's recipe")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    add_run_arguments(parser, work="step")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = train.check_config(train.TrainConfig(
        pretrained_model_name_or_path="nano", hr_root=str(DATA_SAMPLES), train_batch_size=args.batch_size,
        objective=args.objective, mixed_precision="no", seed=args.seed, validation_dir="none",
        checkpointing_steps=0, output_dir=str(BENCH_DIR / "_unused")))
    dataset = DegDataset(config.hr_root, config.instance_prompt, config=config.degradation,
                         resolution=config.resolution, seed=config.seed, crop_scale=config.crop_scale,
                         exclude=evaluation_dirs())  # the validation and test photos are never trained on
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.train_batch_size, shuffle=True, drop_last=True)
    pipe = train.load_training_pipeline(config, device)
    cache = train.cache_prompt_embeddings(pipe, config)
    transformer, vae = pipe.transformer, pipe.vae
    optimizer = train.make_optimizer(lora_ops.lora_parameters(transformer), config)
    tokens = latent_ops.image_token_count(vae, config.resolution, config.resolution)
    mu = {"auto": objective.calculate_shift(tokens, pipe.scheduler.config), "none": None}.get(
        config.sigma_shift, config.sigma_shift)
    guidance = config.guidance_scale if transformer.config.guidance_embeds else None
    step_function = objective.objective_step(config.objective)

    def timed(name: str, times: dict, work):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        value = work()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times[name].append(time.perf_counter() - start)
        return value

    times: dict[str, list[float]] = {name: [] for name in STAGES}
    batches = iter(loader)
    for index in range(args.warmup + args.steps):
        step_times = times if index >= args.warmup else {name: [] for name in STAGES}
        try:
            batch = timed("data", step_times, lambda: next(batches))
        except StopIteration:
            batches = iter(loader)
            batch = timed("data", step_times, lambda: next(batches))
        text = timed("text", step_times, lambda: cache.batch(list(batch["prompts"]), device=device))
        target, control = timed("VAE encode", step_times,
                                lambda: objective.encode_pair(vae, batch["target"].to(device), batch["control"].to(device)))
        sigmas, noise = timed("sigma and noise", step_times, lambda: train.sigmas_and_noise(
            batch["index"], 0, config.seed, tuple(target.shape[1:]), config.sigma_sampling, mu))
        out = timed("transformer forward", step_times, lambda: step_function(
            transformer, target, control, text, sigmas.to(device), noise.to(device), guidance_scale=guidance,
            weighting_scheme=config.weighting_scheme))
        timed("backward", step_times, lambda: out.loss.backward())

        def optimize():
            torch.nn.utils.clip_grad_norm_(lora_ops.lora_parameters(transformer), config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        timed("optimizer", step_times, optimize)

    medians = {name: 1000 * statistics.median(values) for name, values in times.items()}
    total = sum(medians.values())
    report = {"benchmark": "where a nano training step's time goes", "objective": config.objective,
              "batch_size": config.train_batch_size, "machine": machine_info(), "ms_median": medians,
              "share": {name: value / total for name, value in medians.items()}, "ms_total": total}
    print(describe_machine(report["machine"]))
    print(f"nano, {config.objective}, batch {config.train_batch_size}: {total:.1f} ms a step, the sum of the medians")
    for name in STAGES:
        print(f"  {name:20s} {medians[name]:8.1f} ms  {100 * report['share'][name]:5.1f} %")
    write_report(report, args.json)
    return report


if __name__ == "__main__":
    main()
