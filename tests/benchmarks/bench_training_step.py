"""Time the project's LoRA training step against diffusers' own Kontext step, on nano, in one run.

    python tests/benchmarks/bench_training_step.py                       # 20 timed steps, batch 4
    python tests/benchmarks/bench_training_step.py --steps 50 --json out.json

Both arrangements train the same rank-16 LoRA (`lora.add_lora`) on the same nano transformer, on
the same batches: 64x64 crops of the photos in ``data_samples/`` (held-out photos left out), each
paired with a freshly degraded copy by `data.DegDataset`, batch 4. The batches are drawn before the
timing starts, so only the step itself is timed:

* **project**: what one optimizer step of `train.train` runs, in its order:
  `train.training_loss` (VAE encode, per-sample sigma and noise, prompt embeddings from the
  `PromptEmbeddingCache`, `objective.kontext_flow_matching_step`), the finiteness check, backward,
  ``clip_grad_norm_`` over the LoRA parameters, AdamW step, ``zero_grad``, the loss read back for
  the log, the LR scheduler step.
* **diffusers reference**: `diffusers_reference_step.reference_training_step`, the step of
  diffusers' ``train_dreambooth_lora_flux_kontext.py`` (see that module for the transcription).

The two alternate step by step, and which one goes first alternates too, so that background load
on a shared machine hits both alike; the median over the timed steps is reported. Before any
optimizer step, both compute the loss of the first batch on identical inputs (the reference's own
sigma draw, snapped to its 1000-step schedule, and its noise, passed to
`objective.kontext_flow_matching_step`), and their loss and LoRA gradients are compared: they must
agree to float32 rounding.

Single-process equivalents stand in for accelerate's wrappers in both (``accelerator.backward`` and
``clip_grad_norm_`` are plain ``backward`` and ``torch.nn.utils.clip_grad_norm_`` in one fp32
process). Peak RSS is the process's high-water mark (both arrangements share the process).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing
sys.path.insert(0, str(BENCH_DIR))  # diffusers_reference_step, whichever way this file is started
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nano is built from shipped files; never download

import torch  # noqa: E402

import diffusers_reference_step as reference  # noqa: E402
from machine import add_run_arguments, describe_machine, machine_info, write_report  # noqa: E402
from kontext_lora_helpers import latents as latent_ops  # noqa: E402
from kontext_lora_helpers import lora as lora_ops  # noqa: E402
from kontext_lora_helpers import objective, train  # noqa: E402
from kontext_lora_helpers.data import DegDataset  # noqa: E402

DATA_SAMPLES = REPO_ROOT / "data_samples"
RESOLUTION = 64  # nano's native size




def peak_rss_mb() -> float:
    """The process's peak resident set size (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def draw_batches(config: train.TrainConfig, count: int) -> list[tuple[int, dict]]:
    """`count` (epoch, batch) pairs from the training data, in the loop's form (collated `DegDataset`
    items), cycling through epochs so that every batch has its own crops and degradations."""
    dataset = DegDataset(
        config.hr_root, config.instance_prompt, config=config.degradation, resolution=config.resolution,
        seed=config.seed, exclude=[DATA_SAMPLES / "held_out"],
    )
    if len(dataset) < config.train_batch_size:
        raise SystemExit(f"{config.hr_root} holds {len(dataset)} usable photos; "
                         f"batch {config.train_batch_size} needs more.")
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.train_batch_size, shuffle=False, drop_last=True)
    batches, epoch = [], 0
    while len(batches) < count:
        dataset.set_epoch(epoch)
        batches.extend((epoch, batch) for batch in loader)
        epoch += 1
    return batches[:count]


def make_project_step(transformer, vae, cache, config: train.TrainConfig, mu, guidance, device):
    """One optimizer step as `train.train` runs it (one process, no accumulation); the weight dtype
    follows ``config.mixed_precision`` as in the loop."""
    from diffusers.optimization import get_scheduler

    optimizer = train.make_optimizer(lora_ops.lora_parameters(transformer), config)
    lr_scheduler = get_scheduler(config.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=config.lr_warmup_steps, num_training_steps=config.max_train_steps)

    def step(epoch: int, batch: dict) -> float:
        loss = train.training_loss(batch, epoch, transformer, vae, cache, None, config, mu, guidance, device)
        if not torch.isfinite(loss):
            raise RuntimeError("project step: the loss is not finite")
        loss.backward()
        if config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(lora_ops.lora_parameters(transformer), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach().float().mean())
        lr_scheduler.step()
        return value

    return step


def make_reference_step(transformer, vae, prompt, args: reference.ReferenceArgs, device, weight_dtype=torch.float32):
    """One optimizer step of diffusers' Kontext trainer, with its own optimizer and scheduler copy.

    `prompt` holds the instance prompt's embeddings (batch 1), encoded once as the script does."""
    noise_scheduler_copy = reference.make_noise_scheduler_copy()
    optimizer, lr_scheduler = reference.make_optimizer_and_lr_scheduler(transformer, args)

    def step(epoch: int, batch: dict) -> float:
        return reference.reference_training_step(
            transformer, vae, optimizer, lr_scheduler, batch["target"].to(device), batch["control"].to(device),
            prompt.prompt_embeds, prompt.pooled_prompt_embeds, prompt.text_ids, noise_scheduler_copy, args,
            weight_dtype, device,
        )

    return step


def lora_gradients(transformer) -> torch.Tensor:
    return torch.cat([p.grad.detach().flatten().clone() for p in lora_ops.lora_parameters(transformer)])


def check_same_loss(transformer, vae, cache, prompt, config, args, batch, device, seed: int) -> dict:
    """Both arrangements on identical inputs (the reference's sigmas and noise): loss and LoRA
    gradients. Runs before any optimizer step, so both see the same LoRA weights."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the reference's randn_like noise
    ref = reference.reference_loss(
        transformer, vae, batch["target"].to(device), batch["control"].to(device), prompt.prompt_embeds,
        prompt.pooled_prompt_embeds, prompt.text_ids, reference.make_noise_scheduler_copy(), args, torch.float32,
        device, generator=generator,
    )
    ref.loss.backward()
    reference_grads = lora_gradients(transformer)
    transformer.zero_grad(set_to_none=True)

    target_latents, control_latents = objective.encode_pair(vae, batch["target"], batch["control"])
    text = cache.batch(list(batch["prompts"]), device=device, dtype=torch.float32)
    ours = objective.kontext_flow_matching_step(
        transformer, target_latents, control_latents, text, ref.sigmas, ref.noise,
        guidance_scale=config.guidance_scale, weighting_scheme=config.weighting_scheme,
    )
    ours.loss.backward()
    project_grads = lora_gradients(transformer)
    transformer.zero_grad(set_to_none=True)

    project_loss, reference_loss = float(ours.loss.detach()), float(ref.loss.detach())
    gradient_difference = float((project_grads - reference_grads).abs().max())
    return {
        "sigmas": [round(s, 4) for s in ref.sigmas.tolist()],
        "latents_max_abs_diff": float((target_latents - ref.model_input).abs().max()),
        "project_loss": project_loss,
        "reference_loss": reference_loss,
        "loss_abs_diff": abs(project_loss - reference_loss),
        "loss_rel_diff": abs(project_loss - reference_loss) / max(abs(reference_loss), 1e-12),
        "lora_grad_max_abs_diff": gradient_difference,
        "lora_grad_rel_diff": gradient_difference / max(float(reference_grads.abs().max()), 1e-12),
    }


def summarize(times_s: list[float]) -> dict:
    ms = [1000 * t for t in times_s]
    return {
        "ms_per_step_median": statistics.median(ms),
        "ms_per_step_mean": statistics.fmean(ms),
        "ms_per_step_min": min(ms),
        "ms_per_step_all": [round(t, 2) for t in ms],
    }


def markdown_table(report: dict) -> str:
    rows = [
        "| arrangement | ms/step (median) | mean | min |",
        "|---|---|---|---|",
    ]
    for name, label in (("project", "project (`train.training_loss` + the loop's optimizer step)"),
                        ("diffusers_reference", "diffusers reference (`train_dreambooth_lora_flux_kontext.py`)")):
        result = report["results"][name]
        rows.append(f"| {label} | {result['ms_per_step_median']:.1f} | {result['ms_per_step_mean']:.1f} | "
                    f"{result['ms_per_step_min']:.1f} |")
    rows.append(f"| ratio project / reference (medians) | {report['ratio_project_over_reference']:.3f}x | | |")
    rows.append(f"| ratio project / reference (median of step pairs) | {report['ratio_paired_median']:.3f}x | | |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per arrangement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per arrangement first")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--rank", type=int, default=16)
    add_run_arguments(parser, work="step")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1:
        parser.error("--steps and --batch_size must be >= 1, --warmup >= 0")
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")

    config = train.TrainConfig(
        pretrained_model_name_or_path="nano", hr_root=str(DATA_SAMPLES), resolution=RESOLUTION,
        train_batch_size=args.batch_size, rank=args.rank, mixed_precision="no", seed=args.seed,
        validation_dir="none", checkpointing_steps=0,
        learning_rate=1e-4, objective="flow_matching",  # what the reference script does by default
    )
    reference_args = reference.ReferenceArgs()
    batches = draw_batches(config, args.warmup + args.steps)

    # The loop's set-up: pipeline with a fresh LoRA, prompt cache, shift and guidance.
    pipe = train.load_training_pipeline(config, device)
    transformer, vae = pipe.transformer, pipe.vae
    cache = train.cache_prompt_embeddings(pipe, config)  # drops the text encoders, as the loop does
    num_target_tokens = (config.resolution // latent_ops.vae_scale_factor(vae) // 2) ** 2
    mu = objective.calculate_shift(num_target_tokens, pipe.scheduler.config)
    guidance = config.guidance_scale if transformer.config.guidance_embeds else None
    # The script encodes the instance prompt once, batch 1; the same embeddings serve both.
    instance_prompt = cache.batch([config.instance_prompt], device=device, dtype=torch.float32)

    loss_check = check_same_loss(transformer, vae, cache, instance_prompt, config, reference_args,
                                 batches[0][1], device, args.seed)

    arrangements = {
        "project": make_project_step(transformer, vae, cache, config, mu, guidance, device),
        "diffusers_reference": make_reference_step(transformer, vae, instance_prompt, reference_args, device),
    }
    names = list(arrangements)
    for epoch, batch in batches[: args.warmup]:
        for name in names:
            arrangements[name](epoch, batch)
    times: dict[str, list[float]] = {name: [] for name in names}
    losses: dict[str, list[float]] = {name: [] for name in names}
    for index, (epoch, batch) in enumerate(batches[args.warmup:]):
        for name in names if index % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            losses[name].append(arrangements[name](epoch, batch))
            times[name].append(time.perf_counter() - start)

    results = {name: {**summarize(times[name]), "losses": [round(v, 5) for v in losses[name]]} for name in names}
    report = {
        "benchmark": "nano LoRA training step: project vs diffusers' Kontext trainer",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(),
        "settings": {"steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size,
                     "resolution": RESOLUTION, "rank": args.rank, "threads": args.threads,
                     "reference_script": f"{reference.SCRIPT} @ {reference.SCRIPT_COMMIT}"},
        "results": results,
        "ratio_project_over_reference": results["project"]["ms_per_step_median"]
        / results["diffusers_reference"]["ms_per_step_median"],
        # Steps i of both ran back to back under the same background load: their ratio is steadier.
        "ratio_paired_median": statistics.median(p / r for p, r in zip(times["project"], times["diffusers_reference"])),
        "loss_check": loss_check,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }

    print(f"nano LoRA training step, batch {args.batch_size} at {RESOLUTION}x{RESOLUTION}, rank {args.rank}, "
          f"{args.steps} timed steps after {args.warmup} warm-up, alternating")
    print(describe_machine(report["machine"]))
    print()
    print(markdown_table(report))
    print()
    print(f"same inputs (sigmas {loss_check['sigmas']}, same noise): loss project {loss_check['project_loss']:.7f}, "
          f"reference {loss_check['reference_loss']:.7f}, |diff| {loss_check['loss_abs_diff']:.2e} "
          f"(relative {loss_check['loss_rel_diff']:.2e}); LoRA gradients max |diff| "
          f"{loss_check['lora_grad_max_abs_diff']:.2e} (relative {loss_check['lora_grad_rel_diff']:.2e})")
    print(f"peak RSS of the process: {report['peak_rss_mb']:.0f} MB")
    write_report(report, args.json)
    return report


if __name__ == "__main__":
    main()
