"""One LoRA training step of the full-size FLUX.1 Kontext transformer on one GPU, in a few minutes.

    python tests/benchmarks/bench_gpu_training.py --output outputs/bench_gpu       # H100 / H200
    python tests/benchmarks/bench_gpu_training.py --resolutions 512 --skip_nf4 --output DIR
    python tests/benchmarks/bench_gpu_training.py --tiny --output DIR              # CPU, seconds

Nothing is downloaded. The transformer is FLUX.1-dev's architecture (`FluxTransformer2DModel`,
19 double + 38 single blocks, 24 heads x 128, in_channels 64, joint_attention_dim 4096,
pooled_projection_dim 768, guidance embedding, RoPE axes (16, 56, 56); 11.9 B parameters) with
**random weights**: it is created directly on the GPU in bf16 under ``torch.device("cuda")`` and a
bf16 default dtype, so PyTorch's default initialisation runs on the GPU (seconds) and no fp32 copy
ever exists. FLUX.1's VAE (random weights too) encodes the images, and random tensors shaped like
T5-XXL / CLIP-L outputs stand in for the text encoders (512 text tokens). A step costs the same
whatever the weights' values.

The step, batch 1, at each resolution R (target and control each (R/16)^2 tokens, plus 512 text
tokens), with a rank-16 LoRA (`lora.add_lora`), gradient checkpointing on and bf16 mixed precision
(the transformer's forward under ``torch.autocast``, as accelerate runs it):

* **project, bf16 base**: one optimizer step of `train.train`: `train.training_loss` (VAE encode,
  sigma and noise, cached prompt embeddings, `objective.kontext_flow_matching_step`), backward,
  clip, AdamW, scheduler (the same closure as ``bench_training_step.py``);
* **project, NF4 base**: the same on a 4-bit NormalFloat base (bitsandbytes through diffusers'
  ``BitsAndBytesConfig``, the project's `models` settings). bitsandbytes quantizes weights while
  `from_pretrained` loads them, so the random bf16 base is first written to a temporary folder
  (``--workdir``, ~24 GB) and read back quantized: the same path `models.load_pipeline(...,
  quantize="nf4")` takes. The copy costs disk traffic (its seconds are in the JSON), outside the
  timings;
* **diffusers reference, bf16 base**: the step of diffusers' ``train_dreambooth_lora_flux_kontext.py``
  (`diffusers_reference_step`), on the same transformer and LoRA.

Reported per row: seconds per step (median of ``--steps`` after ``--warmup``), peak GPU memory
(``torch.cuda.max_memory_allocated``, weights included, reset before each arrangement), and FLOP
utilisation against the bf16 matmul peak measured on the same card at the start (8192^3
``torch.matmul``s, the median of 20 timings of 5).

FLOPs are counted analytically from the config (`transformer_flops`), per sample, with
D = heads x head_dim (3072), M = 4D (the MLP width), r the LoRA rank, N image tokens (target +
control), T text tokens, S = N + T, L = double + single blocks:

* block matmuls: every double block applies 12 D^2 weights per token *of its own stream* (image
  and text streams have separate weights: q, k, v, out and a D-4D-D MLP each), every single block
  12 D^2 per token (q, k, v, proj_mlp D->4D, proj_out 5D->D): 2 x 12 D^2 x S x L. (2 x parameters
  x tokens would count the double blocks twice, as each token meets only half of their weights.)
* attention: QK^T and PV over the joint sequence: 4 x S^2 x D per block.
* LoRA: 2 r (in + out) per adapted layer and token; embedders, AdaLN modulation (per sample, not
  per token) and the output projection are counted too (under 0.1 %). The VAE encode, part of
  both steps, is not counted (about 5 TFLOP per 1024 px image, 2.5-3 % of the step's model
  FLOPs), so the utilisation is slightly understated.

**model FLOPs** (MFU) = forward + the backward this LoRA step needs: the frozen base's matmuls need
only input gradients (1x their forward, no weight gradients), attention 2x, LoRA 2x (input and
weight gradients); the embedders get no backward at all, nor do the first block's input
projections (nothing trainable comes before them). **hardware FLOPs** (HFU) add the forward
that gradient checkpointing recomputes in the backward (the blocks' forward once more; the
attention kernel's own recompute of the softmax in its backward is not counted). The common
"3 x forward" convention assumes all weights train; for a frozen base it overstates the work (by
1.4x at 512 px, 1.3x at 1024 px, where attention, which has no weights, weighs more), so it is
reported in the JSON (``mfu_3x_forward``) but not used in the table. On a tiny config these
formulas match ``torch.utils.flop_counter.FlopCounterMode`` exactly (forward, forward + backward,
and with checkpointing; ``tests/test_benchmark_scripts.py``).

``--tiny`` runs the same code on the CPU in float32 with a tiny config (1 double + 1 single block,
2 heads x 16, 16 text tokens, a 4-level VAE with 8 channels) at 64 and 128 px, in seconds; NF4 is
then reported as skipped (bitsandbytes' 4-bit kernels need CUDA). Outputs: ``gpu_training.json``
and ``gpu_training.md`` in ``--output``, rewritten after every row, so a run cut short keeps what
it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing
sys.path.insert(0, str(BENCH_DIR))  # diffusers_reference_step and bench_training_step
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights only: never download

import torch  # noqa: E402
from diffusers import AutoencoderKL, FluxTransformer2DModel  # noqa: E402

import diffusers_reference_step as reference  # noqa: E402
from bench_training_step import make_project_step, make_reference_step  # noqa: E402
from kontext_lora_helpers import lora as lora_ops  # noqa: E402
from kontext_lora_helpers import objective, random_kontext, train  # noqa: E402
from kontext_lora_helpers.prompts import DEFAULT_INSTANCE_PROMPT  # noqa: E402

FLUX1_DEV_TRANSFORMER_CONFIG = random_kontext.TRANSFORMER_CONFIG
"""``transformer/config.json`` of FLUX.1-dev, which FLUX.1-Kontext-dev shares."""
FLUX1_VAE_CONFIG = random_kontext.VAE_CONFIG
"""``vae/config.json`` of FLUX.1-dev: 8x down, 16 latent channels."""

TINY_TRANSFORMER_CONFIG = dict(
    FLUX1_DEV_TRANSFORMER_CONFIG, num_layers=1, num_single_layers=1, attention_head_dim=16,
    num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6),
)
TINY_VAE_CONFIG = dict(FLUX1_VAE_CONFIG, block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=8,
                       sample_size=128)

PROMPT = DEFAULT_INSTANCE_PROMPT
JSON_NAME, MARKDOWN_NAME = "gpu_training.json", "gpu_training.md"


@dataclass
class Setup:
    """Where and at which size the benchmark runs."""

    tiny: bool
    device: torch.device
    weight_dtype: torch.dtype
    mixed_precision: str  # TrainConfig's name for it: "bf16" or "no"
    transformer_config: dict
    vae_config: dict
    text_tokens: int
    matmul_size: int
    default_resolutions: tuple[int, ...]
    default_steps: int
    default_warmup: int


def setup_for(tiny: bool) -> Setup:
    if tiny:
        return Setup(True, torch.device("cpu"), torch.float32, "no", TINY_TRANSFORMER_CONFIG, TINY_VAE_CONFIG,
                     text_tokens=16, matmul_size=256, default_resolutions=(64, 128), default_steps=2,
                     default_warmup=1)
    return Setup(False, torch.device("cuda"), torch.bfloat16, "bf16", FLUX1_DEV_TRANSFORMER_CONFIG, FLUX1_VAE_CONFIG,
                 text_tokens=512, matmul_size=8192, default_resolutions=(512, 1024), default_steps=3,
                 default_warmup=1)


# --- building ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_random(model_class, config: dict, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A frozen model with random weights, created on `device` in `dtype` from the start."""
    torch.manual_seed(seed)
    with torch.device(device), default_dtype(dtype):
        model = model_class(**config)
    return model.eval().requires_grad_(False)


class RandomTextEncoders:
    """Stands in for CLIP-L and T5-XXL: random embeddings of their output shapes, fixed per seed.

    `objective.PromptEmbeddingCache` needs only ``encode_prompt(prompt=..., prompt_2=...,
    max_sequence_length=..., device=...)`` and ``text_encoder.device``.
    """

    def __init__(self, joint_attention_dim: int, pooled_projection_dim: int, seed: int = 0):
        self.joint_attention_dim = joint_attention_dim
        self.pooled_projection_dim = pooled_projection_dim
        self.seed = seed
        self.text_encoder = SimpleNamespace(device=torch.device("cpu"))

    def encode_prompt(self, prompt, prompt_2=None, max_sequence_length: int = 512, device=None):
        generator = torch.Generator().manual_seed(self.seed)
        count = len(prompt)
        embeds = torch.randn(count, max_sequence_length, self.joint_attention_dim, generator=generator)
        pooled = torch.randn(count, self.pooled_projection_dim, generator=generator)
        return embeds, pooled, torch.zeros(max_sequence_length, 3)


def run_forward_under_autocast(model, device_type: str, dtype: torch.dtype) -> None:
    """Mixed precision as accelerate applies it to a prepared model: its forward under autocast."""
    forward = model.forward

    @functools.wraps(forward)
    def forward_under_autocast(*args, **kwargs):
        with torch.autocast(device_type=device_type, dtype=dtype):
            return forward(*args, **kwargs)

    model.forward = forward_under_autocast


def prepare_for_training(transformer, setup: Setup, rank: int):
    """The training set-up of both scripts: LoRA (fp32, `add_lora`), gradient checkpointing, train
    mode and, on the GPU, bf16 autocast around the forward."""
    torch.manual_seed(0)
    lora_ops.add_lora(transformer, rank=rank)
    transformer.enable_gradient_checkpointing()
    transformer.train()
    if setup.mixed_precision == "bf16":
        run_forward_under_autocast(transformer, setup.device.type, torch.bfloat16)
    return transformer


def load_nf4_copy(folder: str, setup: Setup):
    """The base saved in `folder`, loaded 4-bit through diffusers' BitsAndBytesConfig (the project's
    NF4 settings: nf4, compute dtype bf16), placed on the GPU by the quantizer."""
    from kontext_lora_helpers.models import _DTYPE_ARGUMENT, _quantize_config, _quiet_diffusers

    quantization_config = _quantize_config("nf4", setup.device, setup.weight_dtype)
    with _quiet_diffusers():
        return FluxTransformer2DModel.from_pretrained(
            folder, quantization_config=quantization_config, **{_DTYPE_ARGUMENT: setup.weight_dtype}
        ).requires_grad_(False)


def nf4_unavailable_reason(setup: Setup, skip_nf4: bool) -> str | None:
    if skip_nf4:
        return "skipped: --skip_nf4"
    if setup.device.type != "cuda":
        return "skipped: NF4 needs CUDA (bitsandbytes 4-bit kernels); this run is on the CPU"
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return "skipped: bitsandbytes is not installed"
    return None


# --- FLOPs ------------------------------------------------------------------------------------------


def transformer_flops(config: dict, image_tokens: int, text_tokens: int, lora_rank: int, batch_size: int = 1) -> dict:
    """Analytic FLOPs of one forward, and of one LoRA training step, of a FluxTransformer2DModel.

    Args:
        config: the transformer's config (FLUX1_DEV_TRANSFORMER_CONFIG's keys).
        image_tokens: target + control tokens (N); text_tokens: T.
        lora_rank: r of the adapters `lora.add_lora` adds (0: no LoRA).

    Returns:
        dict of totals for the batch: "forward", "model" (forward + the backward a LoRA step needs),
        "hardware" (model + the recomputed forward of gradient checkpointing), "three_x_forward",
        and "forward_parts" (block_linear, attention, lora, embed_and_output, conditioning).
        The module docstring gives the formulas.
    """
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    mlp = 4 * dim
    channels = config["in_channels"] * config["patch_size"] ** 2
    double, single = config["num_layers"], config["num_single_layers"]
    sequence = image_tokens + text_tokens
    # Per token of its stream: q, k, v, out (4 D^2) + MLP D->M->D; the same per token in single
    # blocks: q, k, v (3 D^2), proj_mlp D->M, proj_out (D+M)->D.
    double_weights_per_token = 4 * dim * dim + 2 * dim * mlp
    single_weights_per_token = 3 * dim * dim + dim * mlp + (dim + mlp) * dim
    block_linear = 2 * sequence * (double * double_weights_per_token + single * single_weights_per_token)
    attention = 4 * sequence * sequence * dim * (double + single)
    # LoRA adds 2 r (in + out) per adapted layer and token (`lora.DOUBLE_BLOCK_TARGETS`, `SINGLE_BLOCK_TARGETS`).
    double_lora_width = 4 * (dim + dim) + (dim + mlp) + (mlp + dim)
    single_lora_width = 3 * (dim + dim) + (dim + mlp) + (dim + mlp + dim)
    lora = 2 * lora_rank * sequence * (double * double_lora_width + single * single_lora_width)
    embed_and_output = (2 * image_tokens * channels * dim  # x_embedder
                        + 2 * text_tokens * config["joint_attention_dim"] * dim  # context_embedder
                        + 2 * image_tokens * dim * channels)  # proj_out
    # Per sample: timestep, guidance and pooled-text MLPs, AdaLN modulation of every block and the output.
    embedders = 2 * (256 * dim + dim * dim) * (2 if config.get("guidance_embeds") else 1)
    embedders += 2 * (config["pooled_projection_dim"] * dim + dim * dim)
    block_modulation = 2 * dim * (double * 2 * 6 * dim + single * 3 * dim)
    conditioning = embedders + block_modulation + 2 * dim * 2 * dim  # + the output norm's modulation
    forward = block_linear + attention + lora + embed_and_output + conditioning
    # Backward of a LoRA step: frozen matmuls need input gradients only; attention 2x; LoRA 2x;
    # the embedders and the modulation have nothing trainable upstream. The first block's input
    # projections read what the embedders made, so they need no input gradient either (neither
    # their base weights nor their LoRA A): in a double block q, k, v of both streams, in a single
    # block q, k, v and proj_mlp.
    first_block_inputs = [dim] * 3 if double else [dim] * 3 + [mlp]
    no_input_gradient = sum(2 * sequence * dim * out + 2 * lora_rank * sequence * dim for out in first_block_inputs)
    output_projection = 2 * image_tokens * dim * channels
    backward = block_linear + output_projection + 2 * attention + 2 * lora - no_input_gradient
    # Gradient checkpointing runs every block's forward again during the backward.
    recompute = block_linear + attention + lora + block_modulation
    totals = {
        "forward": forward,
        "model": forward + backward,
        "hardware": forward + backward + recompute,
        "three_x_forward": 3 * forward,
    }
    result = {name: value * batch_size for name, value in totals.items()}
    result["forward_parts"] = {name: value * batch_size for name, value in (
        ("block_linear", block_linear), ("attention", attention), ("lora", lora),
        ("embed_and_output", embed_and_output), ("conditioning", conditioning))}
    return result


def measure_matmul_peak(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 20,
                        per_timing: int = 5) -> dict:
    """The card's (or CPU's) achievable dense matmul rate: the median over `repeats` timings of
    `per_timing` back-to-back `size`^3 matmuls (several per timing, so that the synchronisation
    around them is negligible)."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    for _ in range(3):
        torch.matmul(a, b)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(per_timing):
            torch.matmul(a, b)
        synchronize(device)
        times.append((time.perf_counter() - start) / per_timing)
    seconds = statistics.median(times)
    del a, b
    return {"size": size, "dtype": str(dtype).replace("torch.", ""), "seconds": seconds,
            "flops_per_second": 2 * size**3 / seconds}


# --- timing -----------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def pixel_batch(resolution: int, batch_size: int, device: torch.device, seed: int) -> dict:
    """A training batch in the loop's form, already on the device (as accelerate's prepared loader
    delivers it): random target and control images in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch_size, 3, resolution, resolution)
    return {
        "target": (torch.rand(shape, generator=generator) * 2 - 1).to(device),
        "control": (torch.rand(shape, generator=generator) * 2 - 1).to(device),
        "prompts": [PROMPT] * batch_size,
        "index": torch.arange(batch_size),
    }


def time_steps(step, batch: dict, warmup: int, steps: int, device: torch.device) -> dict:
    """Run `warmup` + `steps` optimizer steps; seconds of the timed ones, their losses, peak memory."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds, losses = [], []
    for index in range(warmup + steps):
        synchronize(device)
        start = time.perf_counter()
        loss = step(index, batch)
        synchronize(device)
        if index >= warmup:
            seconds.append(time.perf_counter() - start)
            losses.append(loss)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"seconds": seconds, "losses": losses, "peak_memory_gib": peak}


def run_arrangement(make_step, batch: dict, warmup: int, steps: int, device: torch.device) -> dict:
    """Build the arrangement's step (its own optimizer), time it, free it; failures become a status."""
    try:
        step = make_step()
        measured = time_steps(step, batch, warmup, steps, device)
        del step
        status = "ok"
    except torch.cuda.OutOfMemoryError:
        measured, status = {}, "out of memory"
    except Exception as error:  # keep the other rows: one arrangement failing must not lose the run
        traceback.print_exc()
        measured, status = {}, f"error: {type(error).__name__}: {error}"
    free_memory(device)
    return {"status": status, **measured}


def finish_row(row: dict, flops: dict, peak_flops_per_second: float) -> dict:
    """Medians and utilisation from the measured seconds."""
    if row["status"] != "ok":
        return row
    seconds = statistics.median(row["seconds"])
    row["seconds_per_step"] = seconds
    row["losses_finite"] = all(math.isfinite(value) for value in row["losses"])
    row["model_tflop_per_step"] = flops["model"] / 1e12
    row["achieved_tflop_per_second"] = flops["model"] / seconds / 1e12
    row["mfu"] = flops["model"] / seconds / peak_flops_per_second
    row["hfu"] = flops["hardware"] / seconds / peak_flops_per_second
    row["mfu_3x_forward"] = flops["three_x_forward"] / seconds / peak_flops_per_second
    return row


# --- report -----------------------------------------------------------------------------------------

ARRANGEMENT_LABELS = {"project": "project", "diffusers_reference": "diffusers reference"}


def markdown_report(report: dict) -> str:
    peak = report["matmul_peak"]
    lines = [
        f"# LoRA training step, {report['model']}",
        "",
        f"device: {report['machine']['device']}; torch {report['machine']['torch']}, diffusers "
        f"{report['machine']['diffusers']}; batch {report['settings']['batch_size']}, LoRA rank "
        f"{report['settings']['rank']}, gradient checkpointing, {report['settings']['steps']} timed steps after "
        f"{report['settings']['warmup']} warm-up (median)",
        f"matmul peak: {peak['flops_per_second'] / 1e12:.1f} TFLOP/s ({peak['size']}^3 {peak['dtype']})",
        "",
        "| resolution | tokens (target + control + text) | arrangement | base | s/step | peak memory (GiB) "
        "| model TFLOP/step | TFLOP/s | MFU | HFU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        tokens = row["tokens"]
        token_text = f"{tokens['target']} + {tokens['control']} + {tokens['text']} = {tokens['total']}"
        label = ARRANGEMENT_LABELS[row["arrangement"]]
        if row["status"] != "ok":
            lines.append(f"| {row['resolution']} | {token_text} | {label} | {row['base']} | {row['status']} "
                         "| | | | | |")
            continue
        memory = f"{row['peak_memory_gib']:.2f}" if row["peak_memory_gib"] is not None else "n/a (CPU)"
        lines.append(
            f"| {row['resolution']} | {token_text} | {label} | {row['base']} | {row['seconds_per_step']:.3f} | "
            f"{memory} | {row['model_tflop_per_step']:.3g} | {row['achieved_tflop_per_second']:.3g} | "
            f"{100 * row['mfu']:.1f} % | {100 * row['hfu']:.1f} % |"
        )
    lines += [
        "",
        "MFU: model FLOPs (forward + the backward a frozen-base LoRA step needs) per second over the "
        "matmul peak; HFU adds the forward recomputed by gradient checkpointing. Formulas: "
        "`bench_gpu_training.py`'s docstring.",
    ]
    if report.get("notes"):
        lines += ["", *[f"- {note}" for note in report["notes"]]]
    return "\n".join(lines) + "\n"


def write_outputs(report: dict, output: Path | None) -> None:
    if output is None:
        return
    output.mkdir(parents=True, exist_ok=True)
    (output / JSON_NAME).write_text(json.dumps(report, indent=2) + "\n")
    (output / MARKDOWN_NAME).write_text(markdown_report(report))


def machine_info(setup: Setup) -> dict:
    import diffusers
    import peft

    info = {"device": "CPU", "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "diffusers": diffusers.__version__, "peft": peft.__version__}
    if setup.device.type == "cuda":
        properties = torch.cuda.get_device_properties(setup.device)
        info["device"] = f"{properties.name}, {properties.total_memory / 2**30:.0f} GiB"
        info["cuda"] = torch.version.cuda
        try:
            import bitsandbytes

            info["bitsandbytes"] = bitsandbytes.__version__
        except ImportError:
            info["bitsandbytes"] = None
    else:
        info["torch_threads"] = torch.get_num_threads()
    return info


# --- main -------------------------------------------------------------------------------------------


def parse_resolutions(text: str) -> list[int]:
    values = [int(part) for part in text.replace(" ", "").split(",") if part]
    if not values or any(value < 16 or value % 16 for value in values):
        raise argparse.ArgumentTypeError(f"resolutions must be multiples of 16 (VAE x 2x2 packing); got {text!r}")
    return values


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny config on the CPU in fp32: the code path, in seconds")
    parser.add_argument("--resolutions", type=parse_resolutions, default=None,
                        help="comma-separated sides in px (default 512,1024; --tiny: 64,128)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row (default 3; --tiny: 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1)")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--skip_nf4", action="store_true", help="leave out the NF4-quantized base")
    parser.add_argument("--skip_reference", action="store_true", help="leave out the diffusers reference step")
    parser.add_argument("--workdir", default=None,
                        help="folder for the temporary bf16 copy the NF4 load reads (~24 GB; default: system temp)")
    parser.add_argument("--output", type=Path, default=None, help="write gpu_training.json and gpu_training.md here")
    args = parser.parse_args(argv)

    setup = setup_for(args.tiny)
    if setup.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("the full-size benchmark needs a CUDA GPU; --tiny runs the same code on the CPU")
    resolutions = args.resolutions or list(setup.default_resolutions)
    steps = setup.default_steps if args.steps is None else args.steps
    warmup = setup.default_warmup if args.warmup is None else args.warmup
    if steps < 1 or warmup < 0 or args.batch_size < 1 or args.rank < 1:
        parser.error("--steps, --batch_size and --rank must be >= 1, --warmup >= 0")
    device = setup.device
    started = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f} s] {message}", flush=True)

    report = {
        "benchmark": "LoRA training step: project (bf16 and NF4 base) vs diffusers' Kontext trainer",
        "model": "FLUX.1 Kontext transformer, tiny config (CPU, fp32)" if setup.tiny
        else "FLUX.1 Kontext transformer (FLUX.1-dev architecture, random weights)",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(setup),
        "settings": {"resolutions": resolutions, "steps": steps, "warmup": warmup, "batch_size": args.batch_size,
                     "rank": args.rank, "text_tokens": setup.text_tokens, "gradient_checkpointing": True,
                     "mixed_precision": setup.mixed_precision, "transformer_config": setup.transformer_config,
                     "reference_script": f"{reference.SCRIPT} @ {reference.SCRIPT_COMMIT}"},
        "rows": [],
        "notes": [],
    }

    report["matmul_peak"] = measure_matmul_peak(device, setup.weight_dtype, setup.matmul_size)
    say(f"matmul peak {report['matmul_peak']['flops_per_second'] / 1e12:.1f} TFLOP/s")
    free_memory(device)

    base = build_random(FluxTransformer2DModel, setup.transformer_config, device, setup.weight_dtype)
    vae = build_random(AutoencoderKL, setup.vae_config, device, setup.weight_dtype, seed=1)
    report["transformer_parameters"] = sum(p.numel() for p in base.parameters())
    say(f"built the transformer ({report['transformer_parameters'] / 1e9:.2f} B parameters) and the VAE")

    encoders = RandomTextEncoders(setup.transformer_config["joint_attention_dim"],
                                  setup.transformer_config["pooled_projection_dim"])
    cache = objective.PromptEmbeddingCache(encoders, setup.text_tokens)
    cache.add([PROMPT])
    cache.release_encoders()  # what the loop does for a plain prompt
    instance_prompt = cache.batch([PROMPT], device=device, dtype=setup.weight_dtype)

    nf4_reason = nf4_unavailable_reason(setup, args.skip_nf4)
    nf4_folder = None
    if nf4_reason is None:
        # Before the LoRA is added: the saved copy must be the plain base model.
        nf4_folder = tempfile.TemporaryDirectory(dir=args.workdir, prefix="random-flux-transformer-")
        copy_start = time.perf_counter()
        base.save_pretrained(nf4_folder.name)
        report["nf4_copy_write_seconds"] = time.perf_counter() - copy_start
        say(f"wrote the bf16 base for the NF4 load in {report['nf4_copy_write_seconds']:.0f} s")

    config = train.TrainConfig(
        pretrained_model_name_or_path="random FLUX.1 architecture", train_batch_size=args.batch_size,
        rank=args.rank, learning_rate=1e-4, objective="flow_matching", mixed_precision=setup.mixed_precision,
        gradient_checkpointing=True,
        validation_dir="none", checkpointing_steps=0,
    )
    reference_args = reference.ReferenceArgs()
    guidance = config.guidance_scale if setup.transformer_config["guidance_embeds"] else None
    vae_factor = 2 ** (len(setup.vae_config["block_out_channels"]) - 1)

    def tokens_for(resolution: int) -> dict:
        per_image = (resolution // vae_factor // 2) ** 2
        return {"target": per_image, "control": per_image, "text": setup.text_tokens,
                "total": 2 * per_image + setup.text_tokens}

    def add_row(resolution: int, arrangement: str, base_name: str, row: dict) -> None:
        tokens = tokens_for(resolution)
        flops = transformer_flops(setup.transformer_config, tokens["target"] + tokens["control"], tokens["text"],
                                  args.rank, args.batch_size)
        row = finish_row({"resolution": resolution, "arrangement": arrangement, "base": base_name,
                          "tokens": tokens, "flops": flops, **row}, flops, report["matmul_peak"]["flops_per_second"])
        report["rows"].append(row)
        write_outputs(report, args.output)
        timing = f"{row['seconds_per_step']:.3f} s/step, MFU {100 * row['mfu']:.1f} %" if row["status"] == "ok" \
            else row["status"]
        say(f"{resolution} px, {arrangement}, {base_name} base: {timing}")

    def measure_all(transformer, base_name: str, arrangements: list[str]) -> None:
        for resolution in resolutions:
            batch = pixel_batch(resolution, args.batch_size, device, seed=resolution)
            mu = objective.calculate_shift(tokens_for(resolution)["target"], reference.FLUX1_SCHEDULER_CONFIG)
            for arrangement in arrangements:
                if arrangement == "project":
                    def make_step():
                        return make_project_step(transformer, vae, cache, config.replace(resolution=resolution),
                                                 mu, guidance, device)
                else:
                    def make_step():
                        return make_reference_step(transformer, vae, instance_prompt, reference_args, device,
                                                   setup.weight_dtype)
                add_row(resolution, arrangement, base_name, run_arrangement(make_step, batch, warmup, steps, device))

    bf16_name = "bf16" if setup.weight_dtype == torch.bfloat16 else "fp32"
    transformer = prepare_for_training(base, setup, args.rank)
    del base
    say(f"LoRA rank {args.rank}: {lora_ops.describe_parameters(transformer)}")
    measure_all(transformer, bf16_name, ["project"] + ([] if args.skip_reference else ["diffusers_reference"]))
    if args.skip_reference:
        for resolution in resolutions:
            add_row(resolution, "diffusers_reference", bf16_name, {"status": "skipped: --skip_reference"})
    del transformer
    free_memory(device)

    if nf4_reason is not None:
        for resolution in resolutions:
            add_row(resolution, "project", "nf4", {"status": nf4_reason})
    else:
        try:
            load_start = time.perf_counter()
            quantized = load_nf4_copy(nf4_folder.name, setup)
            report["nf4_load_seconds"] = time.perf_counter() - load_start
            say(f"loaded the NF4 base in {report['nf4_load_seconds']:.0f} s")
            nf4_folder.cleanup()
            quantized = prepare_for_training(quantized, setup, args.rank)
            measure_all(quantized, "nf4", ["project"])
            del quantized
        except Exception as error:  # the bf16 rows are already written; say why NF4 has none
            traceback.print_exc()
            for resolution in resolutions:
                add_row(resolution, "project", "nf4", {"status": f"error: {type(error).__name__}: {error}"})
        finally:
            nf4_folder.cleanup()
            free_memory(device)

    report["total_seconds"] = time.perf_counter() - started
    write_outputs(report, args.output)
    print()
    print(markdown_report(report))
    return report


if __name__ == "__main__":
    main()
