"""Time one nano LoRA training step: the L2 flow-matching loss alone versus L2 + the VGG term.

    python tests/benchmarks/bench_objective.py               # batch 4 at 64x64, 10 timed steps
    python tests/benchmarks/bench_objective.py --threads 1   # steadier on a busy machine

Each step is the objective's forward and backward with a rank-16 LoRA on the nano transformer
(encoding the images is done once, outside the timing, as a latent cache would). The VGG variants
decode x0_hat through the nano VAE, run VGGPerceptualLoss with the linear sigma gate and
backpropagate through both. VGG runs with **random weights** (weights=None): the benchmark must not
download anything, and the cost of a forward/backward does not depend on the weights' values.
The variants alternate step by step so that background load hits them alike; the median is reported.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from kontext_lora_helpers import latents as latent_ops
from kontext_lora_helpers import lora, losses, objective
from kontext_lora_helpers.nano import WEIGHTS_DIR, build_nano_pipeline
from kontext_lora_helpers.nano.pool import held_out_batch


def make_step(transformer, vae, batch, vgg=None):
    """A closure that runs one loss + backward and returns the loss value."""

    def step():
        transformer.zero_grad(set_to_none=True)
        out = objective.kontext_flow_matching_step(
            transformer, batch["target_latents"], batch["control_latents"], batch["text"], batch["sigmas"], batch["noise"]
        )
        loss = out.loss
        if vgg is not None:
            loss = loss + 0.1 * losses.perceptual_term(vgg, vae, out.x0_hat_latents(), batch["target_pixels"], batch["sigmas"])
        loss.backward()
        return float(loss.detach())

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--skip_resize", action="store_true", help="skip the slow 224x224 VGG variant")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    trained = (WEIGHTS_DIR / "transformer.safetensors").exists()
    pipe = build_nano_pipeline(allow_missing=True)  # timing does not depend on the weights' values
    transformer = lora.add_lora(pipe.transformer, rank=args.rank)
    pixels = held_out_batch(64, crops_per_image=max(1, -(-args.batch // 4)))[: args.batch]
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        embeds, pooled, text_ids = pipe.encode_prompt(prompt=["Restore this photo"] * args.batch, prompt_2=None, max_sequence_length=32)
    target_latents = latent_ops.encode(pipe.vae, pixels)
    batch = dict(
        target_pixels=pixels,
        target_latents=target_latents,
        control_latents=latent_ops.encode(pipe.vae, pixels.flip(-1)),  # any control of the right shape
        text=objective.PromptEmbeddings(embeds, pooled, text_ids),
        sigmas=objective.sample_sigmas(args.batch, "logit_normal", generator=generator),
        noise=torch.randn(target_latents.shape, generator=generator),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-features notice; stated in the output instead
        variants = {"L2": make_step(transformer, pipe.vae, batch)}
        variants["L2 + VGG, native 64 px (resize=False)"] = make_step(
            transformer, pipe.vae, batch, losses.VGGPerceptualLoss(resize=False, weights=None)
        )
        if not args.skip_resize:
            variants["L2 + VGG, 224 px (resize=True, the gist's default)"] = make_step(
                transformer, pipe.vae, batch, losses.VGGPerceptualLoss(resize=True, weights=None)
            )

    for _ in range(args.warmup):
        for step in variants.values():
            step()
    times = {name: [] for name in variants}
    for _ in range(args.steps):
        for name, step in variants.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)

    print(f"nano LoRA step, batch {args.batch} at 64x64, LoRA rank {args.rank}, {torch.get_num_threads()} torch threads,")
    print(f"nano transformer weights: {'trained' if trained else 'random (trained weights not built yet)'}; "
          "VGG16 weights: random (weights=None), same cost as ImageNet ones")
    baseline = statistics.median(times["L2"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:<52s} {1000 * median:8.1f} ms/step   x{median / baseline:5.2f}")


if __name__ == "__main__":
    main()
