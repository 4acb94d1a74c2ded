"""Training a FLUX.1 Kontext restoration LoRA: one loop for the command line and the notebooks.

Run it as the seed does (every flag of its command means what it meant there)::

    python -m kontext_lora_helpers.train --pretrained_model_name_or_path nano --hr_root data_samples \\
        --output_dir outputs/nano-restore
    accelerate launch -m kontext_lora_helpers.train --pretrained_model_name_or_path PATH ...  # GPUs
    kontext-lora train ...                                                                 # same thing

or from Python: ``train(TrainConfig(hr_root="data_samples", output_dir="outputs/run"))``.

One optimizer step, in order (each stage is a named function of `objective`, `losses`, `latents`):

1. **encode**: the batch holds the clean photo (target) and its degraded copy (control), both
   (B, 3, R, R) in [-1, 1]; the frozen VAE turns each into (B, 16, R/f, R/f) latents
   (`objective.encode_pair`). Degradations are random every epoch, so nothing is cached here.
2. **sample sigma**: one noise level per sample in (0, 1), logit-normal by default and shifted with
   the ``mu`` the pipeline uses for this many target tokens (`objective.sample_sigmas`,
   `objective.calculate_shift`), so training visits the noise levels inference visits; nano's
   recipe shifts toward low noise instead (``--sigma_shift -1.5``, `MODEL_RECIPES`).
3. **noise**: Gaussian noise shaped like the target latents, ``x_t = (1 - sigma) x0 + sigma noise``.
   Sigma and noise come from a generator seeded by (seed, epoch, sample index): the draw belongs to
   the sample, not to the step, the process or the batch it lands in.
4. **pack**: both latents become 2x2-patch tokens; the control tokens go after the target tokens,
   with frame id 1 (`objective.build_transformer_inputs`).
5. **forward**: the transformer with its LoRA predicts a velocity for every token; the prompt
   embeddings come from a cache filled once per distinct prompt (`objective.PromptEmbeddingCache`).
6. **slice**: only the first N_target tokens are the prediction; the control tokens are context.
7. **loss**: mean of ``weighting * (v_hat - (noise - x0))^2`` over the target tokens, plus, with
   ``--perceptual_loss``, a sigma-gated VGG term on the decoded ``x0_hat`` (`losses.perceptual_term`).
8. **backward**: accelerate scales for gradient accumulation (and fp16), clips the LoRA gradients
   to ``--max_grad_norm``, and the optimizer updates the LoRA (float32) only.
9. **average** (``--ema_decay``, on for nano): the moving average of the LoRA weights takes the new
   weights in (`lora.LoraEMA`); validation and the exported file use the average.

(Steps 3 and 7 are those of ``--objective flow_matching``; ``posterior_mean`` puts the noisy target
on the line from the model's own clean estimate to the noise and regresses the clean latents.)

Around the step:

* **Checkpoints** (``checkpoint-N/``, every ``--checkpointing_steps``): LoRA weights (loadable for
  inference as they are) and their average when there is one, optimizer, learning-rate scheduler, random states and the position in
  the data (epoch and batches already used). Each is written into ``checkpoint-N.tmp/`` and renamed
  when complete, so a kill during a save leaves no checkpoint that looks complete but is not.
  ``--resume_from_checkpoint latest`` continues exactly: an interrupted and resumed run ends with
  the same LoRA as an uninterrupted one (tested with a real kill).
* **Validation** (every ``--validation_steps`` and at the end): held-out photos are degraded once,
  deterministically, with the training flags; the pipeline restores them with the LoRA (and once
  without it, the base model); PSNR and SSIM against the clean photos are logged and a grid
  ``degraded | base | LoRA | clean`` is saved. ``metrics.json`` holds the final numbers for the LoRA,
  the base model and the degraded inputs on the same images.
* **Failure**: a NaN or inf loss stops the run, naming the step; the last checkpoint stays. Ctrl-C
  saves a checkpoint at the last finished step and stops. Impossible settings are refused before any
  model is loaded (`check_config`).
* **Distributed** (DDP): the prepared data loader shards every epoch's order over the processes;
  the noise belongs to the sample, so N processes with batch b give the same LoRA as one process
  with batch N*b (tested on the CPU with gloo). Only the main process writes files. Launch with::

      accelerate launch --multi_gpu --num_processes 4 -m kontext_lora_helpers.train ...   # 4 GPUs
      accelerate launch --multi_gpu --num_machines 2 --num_processes 16 --machine_rank R \\
          --main_process_ip HOST --main_process_port 29500 -m kontext_lora_helpers.train ...  # 2 nodes
      ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m ...         # 2 CPU processes

  (accelerate 1.x's ``--cpu`` flag alone starts a single process; several CPU processes need its
  multi-process launcher, as above, or ``torchrun``.) The checkpoints here save one unsharded
  optimizer state, which is what DDP has; FSDP and DeepSpeed ZeRO shard it and are not supported.

Outputs in ``--output_dir``: ``pytorch_lora_weights.safetensors`` (diffusers format, for
``FluxKontextPipeline.load_lora_weights(output_dir)``; the weight average when ``--ema_decay`` is
on), ``training_config.json``, ``loss_curve.png``,
``metrics.json``, ``validation/step-NNNNNN.png`` grids, ``checkpoint-N/`` and, with
``--report_to tensorboard``, ``logs/``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import degradations as degradation_ops
from . import latents as latent_ops
from . import lora as lora_ops
from . import metrics, objective
from .cli import non_negative_int, positive_int
from .data import check_crop_scale, check_resolution
from .degradations import DegradationConfig
from .prompts import DEFAULT_INSTANCE_PROMPT, PROMPT_MODES

__all__ = [
    "ConfigError",
    "EpochShuffleSampler",
    "MODEL_RECIPES",
    "TrainConfig",
    "TrainingDiverged",
    "TrainingProgress",
    "ValidationSet",
    "Validator",
    "build_parser",
    "build_validation_set",
    "cache_prompt_embeddings",
    "check_config",
    "check_distributed_type",
    "command_line",
    "comparison_grid",
    "latest_checkpoint",
    "list_checkpoints",
    "load_lora_weights_into",
    "load_training_pipeline",
    "main",
    "parse_args",
    "prune_checkpoints",
    "restore_validation_images",
    "resume_from",
    "save_loss_curve",
    "score_images",
    "sigmas_and_noise",
    "train",
    "training_loss",
    "write_checkpoint",
]

MIXED_PRECISION_CHOICES = ("no", "fp16", "bf16")
QUANTIZE_CHOICES = ("none", "nf4", "int8")
REPORT_TO_CHOICES = ("none", "tensorboard")
VGG_WEIGHT_CHOICES = ("imagenet", "random")
LR_SCHEDULER_CHOICES = (
    "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
)
NANO_RESOLUTION = 64
REAL_MODEL_RESOLUTION = 512
MODEL_RECIPES: dict[str, dict[str, Any]] = {
    "nano": dict(resolution=NANO_RESOLUTION, learning_rate=3e-3, objective="posterior_mean",
                 sigma_shift=-1.5, crop_scale=(0.25, 1.0), ema_decay=0.99),
    "flux": dict(resolution=REAL_MODEL_RESOLUTION, learning_rate=1e-4, objective="flow_matching",
                 sigma_shift="auto", crop_scale=(1.0, 1.0), ema_decay=0.0),
}
"""The settings whose default depends on the model: a `TrainConfig` field left at None takes its
model's value here ("nano", or "flux" for every other model), filled in by `check_config`.

* nano, each choice measured with the README's command on `nano check-lora`'s held-out crops
  (500 steps, 28-step restorations; the base model gives 23.5 dB): ``posterior_mean`` ends the
  sampler at the average restoration, which PSNR rewards (24.8 dB, against 24.1 for the best
  flow-matching recipe); ``sigma_shift -1.5`` puts half the training noise levels below 0.18,
  where the sampler's last steps refine that average (25.0 dB; the pipeline's own shift 24.8);
  the weight average adds 0.07-0.09 dB (three runs); 3e-3 learns more in 500 steps than 1e-3
  (+0.13 dB); crops of a quarter to all of a photo's short side show more textures at the scale
  the model restores (+0.1 dB).
* FLUX.1-Kontext-dev: the seed's learning rate and resolution, and the objective and shift it was
  trained with (``posterior_mean`` is untested at that scale), with the seed's whole-side crops.
"""
VALIDATION_SEED = 2024
"""Seeds the validation degradations and the validation denoising noise, whatever ``--seed`` is,
so runs with different seeds are compared on the same degraded images."""

CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_STATE_FILE = "training_state.json"
"""Written last inside a checkpoint: a checkpoint folder without it is incomplete."""
EMA_WEIGHT_NAME = "ema_lora_weights.safetensors"
"""A checkpoint's averaged LoRA weights (`lora.LoraEMA`); its ``pytorch_lora_weights.safetensors``
holds the trained ones, which resuming continues from."""
CONFIG_FILE = "training_config.json"
METRICS_FILE = "metrics.json"
LOSS_CURVE_FILE = "loss_curve.png"

# Settings that do not change which LoRA a run produces; another run that differs only in these is
# "the same run" for the output-folder check.
BOOKKEEPING_FIELDS = frozenset({
    "output_dir", "resume_from_checkpoint", "report_to", "dataloader_num_workers", "validation_steps",
    "num_validation_images", "validation_dir", "validation_inference_steps", "checkpointing_steps",
    "checkpoints_total_limit",
})


class ConfigError(ValueError):
    """Settings that cannot work; raised by `check_config` before any model is loaded."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the message names the step and the last good checkpoint."""


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Every setting of a training run; the command line's flags have the same names and meanings
    (``python -m kontext_lora_helpers.train --help`` describes each).

    The defaults train nano on a 2-core laptop CPU in about four minutes: batch 4, rank 16, 500
    steps, and nano's entry of `MODEL_RECIPES` (64 px, learning rate 3e-3, ``posterior_mean``,
    sigma shift -1.5, crops of 1/4 to all of the short side, weight average 0.99). Fields left at
    None take their model's recipe value when `check_config` resolves the config: the real model
    gets the seed's 512 px and 1e-4, the flow-matching objective and no average. For
    FLUX.1-Kontext-dev also set the seed's
    ``gradient_accumulation_steps=4, mixed_precision="bf16"`` and see notebook 04 for memory settings.

    ``resolution=None`` means the model's usual training size: 64 for nano, 512 otherwise (the same
    for ``learning_rate``, ``objective``, ``sigma_shift``, ``crop_scale`` and ``ema_decay``:
    `MODEL_RECIPES`).
    ``mixed_precision=None`` takes accelerate's setting (``accelerate config`` / ``launch``), else "no".
    ``validation_dir=None`` uses the course's held-out photos when they exist; "none" turns
    validation off. ``sigma_shift``: "auto" (the pipeline's mu for the target token count), "none"
    (unshifted) or a number mu (negative: more low noise levels). ``objective``: "flow_matching" (diffusers' Kontext objective: the
    sampler draws a plausible restoration) or "posterior_mean" (it ends at the model's estimate of
    the average one: higher PSNR; see `objective`).
    """

    # model and data (the seed's flags)
    pretrained_model_name_or_path: str = "nano"
    hr_root: str | None = None
    output_dir: str = "outputs/kontext-restoration-lora"
    instance_prompt: str = DEFAULT_INSTANCE_PROMPT
    resolution: int | None = None
    repeats: int = 1
    crop_scale: tuple[float, float] | None = None
    degradation: DegradationConfig = field(default_factory=DegradationConfig)
    prompt_mode: str = "plain"
    dataloader_num_workers: int = 0
    # optimisation (the seed's flags)
    train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_train_steps: int = 500
    learning_rate: float | None = None
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_weight_decay: float = 1e-4
    max_grad_norm: float = 1.0
    seed: int = 0
    # LoRA
    rank: int = 16
    lora_alpha: float | None = None
    ema_decay: float | None = None
    # objective
    objective: str | None = None
    sigma_sampling: str = "logit_normal"
    sigma_shift: str | float | None = None
    weighting_scheme: str = "none"
    guidance_scale: float = 3.5
    perceptual_loss: bool = False
    perceptual_weight: float = 0.1
    perceptual_gate: str = "linear"
    vgg_weights: str = "imagenet"
    # memory and precision
    mixed_precision: str | None = None
    gradient_checkpointing: bool = False
    quantize: str = "none"
    use_8bit_adam: bool = False
    # checkpoints
    checkpointing_steps: int = 100
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None
    # validation and logging
    validation_steps: int = 100
    num_validation_images: int = 4
    validation_dir: str | None = None
    validation_inference_steps: int = 20
    report_to: str = "none"

    def __post_init__(self):
        if isinstance(self.degradation, dict):
            self.degradation = DegradationConfig.from_dict(self.degradation)
        if self.crop_scale is not None:
            self.crop_scale = check_crop_scale(self.crop_scale)
        if self.quantize is None:
            self.quantize = "none"
        for name in ("hr_root", "output_dir", "validation_dir", "resume_from_checkpoint"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                setattr(self, name, os.fspath(value))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable settings (the degradation config as its own dict)."""
        result = {item.name: getattr(self, item.name) for item in dataclasses.fields(self)}
        result["degradation"] = self.degradation.to_dict()
        return result

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of `to_dict`; unknown keys are an error that names them."""
        known = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s): {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some settings changed."""
        return dataclasses.replace(self, **changes)

    def save_json(self, path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load_json(cls, path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def build_parser() -> argparse.ArgumentParser:
    """The command line: the seed's flags, diffusers' usual ones and the course's options."""
    d = TrainConfig()
    parser = argparse.ArgumentParser(
        # `kontext-lora train` names itself (cli.py sets argv[0]); `python -m` would show "train.py".
        prog=None if os.path.basename(sys.argv[0] if sys.argv else "").startswith("kontext-lora")
        else "python -m kontext_lora_helpers.train",
        description="Train a FLUX.1 Kontext LoRA that restores degraded photographs (nano or the real model).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    g = parser.add_argument_group("model and data")
    g.add_argument("--pretrained_model_name_or_path", default=d.pretrained_model_name_or_path,
                   help="'nano', a diffusers FLUX.1 Kontext folder, or a hub id such as black-forest-labs/FLUX.1-Kontext-dev")
    g.add_argument("--hr_root", default=None, help="folder of clean (high-quality) photos, searched recursively (required)")
    g.add_argument("--output_dir", default=d.output_dir, help="where weights, checkpoints, metrics and plots go")
    g.add_argument("--instance_prompt", default=d.instance_prompt, help="the restoration instruction given with every pair")
    g.add_argument("--resolution", type=int, default=None,
                   help="square crop side in pixels, a multiple of 16 (default: 64 for nano, 512 otherwise)")
    g.add_argument("--repeats", type=positive_int, default=d.repeats, help="times each photo appears per epoch")
    g.add_argument("--crop_scale", default=None,
                   help="fraction of a photo's short side one training square covers, or a range 'low,high' "
                        "drawn per item (random-resized crops); 1 is the seed's whole-short-side square "
                        "(default: 0.25,1 for nano, 1 otherwise)")
    g.add_argument("--prompt_mode", choices=PROMPT_MODES, default=d.prompt_mode,
                   help="plain: the instance prompt; described/numeric: it also names the damage done")
    g.add_argument("--dataloader_num_workers", type=non_negative_int, default=d.dataloader_num_workers)
    g = parser.add_argument_group("optimisation")
    g.add_argument("--train_batch_size", type=positive_int, default=d.train_batch_size, help="pairs per process per micro-batch")
    g.add_argument("--gradient_accumulation_steps", type=positive_int, default=d.gradient_accumulation_steps)
    g.add_argument("--max_train_steps", type=positive_int, default=d.max_train_steps, help="optimizer steps")
    g.add_argument("--learning_rate", type=float, default=None,
                   help="AdamW learning rate (default: 3e-3 for nano, the seed's 1e-4 otherwise)")
    g.add_argument("--lr_scheduler", choices=LR_SCHEDULER_CHOICES, default=d.lr_scheduler)
    g.add_argument("--lr_warmup_steps", type=non_negative_int, default=d.lr_warmup_steps)
    g.add_argument("--adam_weight_decay", type=float, default=d.adam_weight_decay)
    g.add_argument("--max_grad_norm", type=float, default=d.max_grad_norm, help="gradient clipping norm (0: off)")
    g.add_argument("--seed", type=non_negative_int, default=d.seed)
    g.add_argument("--use_8bit_adam", action="store_true", help="bitsandbytes AdamW8bit (CUDA only)")
    g = parser.add_argument_group("LoRA")
    g.add_argument("--rank", type=positive_int, default=d.rank)
    g.add_argument("--lora_alpha", type=float, default=None, help="scale numerator (default: the rank, scale 1)")
    g.add_argument("--ema_decay", type=float, default=None,
                   help="export and validate an exponential moving average of the LoRA weights with this "
                        "decay; 0 turns it off (default: 0.99 for nano, 0 otherwise)")
    g = parser.add_argument_group("objective")
    g.add_argument("--objective", choices=objective.OBJECTIVES, default=None,
                   help="flow_matching: the sampler draws a plausible clean image (diffusers' objective); "
                        "posterior_mean: it returns the model's estimate of the average one (higher PSNR, "
                        "smoother; one more forward per step). See kontext_lora_helpers.objective "
                        "(default: posterior_mean for nano, flow_matching otherwise)")
    g.add_argument("--sigma_sampling", choices=objective.SIGMA_SCHEMES, default=d.sigma_sampling,
                   help="training noise-level density")
    g.add_argument("--sigma_shift", default=None,
                   help="'auto' (the pipeline's shift for this resolution), 'none', or a number mu; negative "
                        "favours low noise levels (default: -1.5 for nano, auto otherwise)")
    g.add_argument("--weighting_scheme", choices=objective.WEIGHTING_SCHEMES, default=d.weighting_scheme)
    g.add_argument("--guidance_scale", type=float, default=d.guidance_scale,
                   help="FLUX-dev's distilled guidance input, in training and validation")
    g.add_argument("--perceptual_loss", action="store_true", help="add the seed's VGG perceptual term")
    g.add_argument("--perceptual_weight", type=float, default=d.perceptual_weight)
    g.add_argument("--perceptual_gate", choices=("linear", "threshold", "none"), default=d.perceptual_gate,
                   help="how the perceptual term is weighted by sigma (see losses.perceptual_term)")
    g.add_argument("--vgg_weights", choices=VGG_WEIGHT_CHOICES, default=d.vgg_weights,
                   help="imagenet: torchvision's VGG16 (downloaded once); random: offline CPU demos only")
    g = parser.add_argument_group("memory and precision")
    g.add_argument("--mixed_precision", choices=MIXED_PRECISION_CHOICES, default=None,
                   help="base-model precision and autocast (default: accelerate's config, else no)")
    g.add_argument("--gradient_checkpointing", action="store_true", help="recompute activations in backward")
    g.add_argument("--quantize", choices=QUANTIZE_CHOICES, default=d.quantize,
                   help="quantize the frozen transformer: nf4 (CUDA, bitsandbytes) or int8 (optimum-quanto)")
    g = parser.add_argument_group("checkpoints")
    g.add_argument("--checkpointing_steps", type=non_negative_int, default=d.checkpointing_steps, help="0: never")
    g.add_argument("--checkpoints_total_limit", type=positive_int, default=None, help="keep only the newest N")
    g.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint folder")
    g = parser.add_argument_group("validation and logging")
    g.add_argument("--validation_steps", type=non_negative_int, default=d.validation_steps,
                   help="validate every N steps (0: only before and after training)")
    g.add_argument("--num_validation_images", type=positive_int, default=d.num_validation_images)
    g.add_argument("--validation_dir", default=None,
                   help="held-out clean photos (default: data_samples/held_out); 'none' turns validation off")
    g.add_argument("--validation_inference_steps", type=positive_int, default=d.validation_inference_steps)
    g.add_argument("--report_to", choices=REPORT_TO_CHOICES, default=d.report_to)
    degradation_ops.add_degradation_arguments(parser)
    del add
    return parser


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Command-line flags -> `TrainConfig` (argparse errors exit with status 2, as usual)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        degradation = degradation_ops.config_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    names = {item.name for item in dataclasses.fields(TrainConfig)} - {"degradation"}
    try:
        return TrainConfig(degradation=degradation, **{name: getattr(args, name) for name in names})
    except ValueError as error:
        parser.error(str(error))


_SWITCHES = ("perceptual_loss", "gradient_checkpointing", "use_8bit_adam")
"""Settings that are on/off flags on the command line (``--perceptual_loss``, not ``--perceptual_loss True``)."""


def command_line(config: TrainConfig, launcher: str = "python -m") -> str:
    """The shell command that runs `config`: the model, data and output flags always, every other
    setting only where it differs from the default, and the degradation flags (the seed's five
    always). ``parse_args(shlex.split(command)[3:])`` gives `config` back.

    Args:
        launcher: "python -m" or "accelerate launch -m" (for GPUs and several processes).
    """
    import shlex

    defaults = TrainConfig()
    words = [*shlex.split(launcher), "kontext_lora_helpers.train"]
    for item in dataclasses.fields(TrainConfig):
        name, value = item.name, getattr(config, item.name)
        always = name in ("pretrained_model_name_or_path", "hr_root", "output_dir")
        if name == "degradation" or value is None or (not always and value == getattr(defaults, name)):
            continue
        if name in _SWITCHES:
            words += [f"--{name}"] if value else []
        elif isinstance(value, tuple):
            words += [f"--{name}", ",".join(f"{v:g}" for v in value)]
        else:
            words += [f"--{name}", os.fspath(value) if isinstance(value, os.PathLike) else str(value)]
    return shlex.join(words + config.degradation.to_cli_flags())


# ---------------------------------------------------------------------------------------------
# Checking settings before anything heavy happens
# ---------------------------------------------------------------------------------------------


def check_distributed_type(distributed_type) -> None:
    """Refuse launchers that shard the model (FSDP, DeepSpeed): the checkpoints here hold one
    unsharded LoRA and optimizer state, which is what plain data parallelism (DDP) has."""
    name = str(getattr(distributed_type, "value", distributed_type)).upper()
    if name in ("FSDP", "DEEPSPEED"):
        raise ConfigError(
            f"this trainer runs data-parallel (DDP) only, and accelerate is configured for {name}. "
            "A LoRA's trainable part is small and every GPU can hold the (quantized) base: launch with "
            "`accelerate launch --multi_gpu --num_processes N -m kontext_lora_helpers.train ...` "
            "(or answer 'no' to FSDP/DeepSpeed in `accelerate config`)."
        )


def _will_run_on_cpu() -> bool:
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "false").strip().lower() in ("1", "true", "yes")
    return use_cpu or not torch.cuda.is_available()


def parse_sigma_shift(value) -> str | float:
    """'auto', 'none' or a float, from a flag or a config value."""
    if value is None:
        return "none"
    if isinstance(value, str) and value.strip().lower() in ("auto", "none"):
        return value.strip().lower()
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--sigma_shift must be 'auto', 'none' or a number; got {value!r}") from None


def _default_validation_dir() -> Path | None:
    from .course import held_out_dir

    try:
        folder = held_out_dir()
    except FileNotFoundError:
        return None
    return folder if folder.is_dir() else None


def resolve_validation_dir(config: TrainConfig) -> Path | None:
    """The held-out folder this run validates on, or None for no validation."""
    value = config.validation_dir
    if value is None or str(value).strip().lower() == "auto":
        return _default_validation_dir()
    if str(value).strip().lower() == "none":
        return None
    return Path(value).expanduser()


def _is_inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _training_excludes(config: TrainConfig) -> list[Path]:
    """Held-out folders under --hr_root, left out of training: the validation folder and the
    course's ``data_samples/held_out`` (even with validation off, it is never trained on)."""
    if not config.hr_root:
        return []
    folders = [resolve_validation_dir(config), _default_validation_dir()]
    excludes = []
    for folder in folders:
        if folder is not None and folder not in excludes and _is_inside(folder, Path(config.hr_root)):
            excludes.append(folder)
    return excludes


def check_config(config: TrainConfig) -> TrainConfig:
    """Refuse settings that cannot work, with one clear message each, before any model is loaded.

    Returns:
        the config with automatic values filled in: the model's `MODEL_RECIPES` entry for the
        settings left at None, mixed_precision, and sigma_shift as 'auto', 'none' or a float.

    Raises:
        ConfigError: missing or empty --hr_root; resolution not a multiple of 16; fp16 on the CPU;
            NF4 or 8-bit Adam without CUDA; TensorBoard not installed; a resume checkpoint that
            does not exist; an output folder holding another run's checkpoints with other settings
            (unless resuming); out-of-range numbers; an unknown model name.
    """
    from .images import find_usable_images
    from .models import ModelLoadError, model_source, is_nano

    try:
        model_source(config.pretrained_model_name_or_path)
    except ModelLoadError as error:
        raise ConfigError(str(error)) from None

    recipe = MODEL_RECIPES["nano" if is_nano(config.pretrained_model_name_or_path) else "flux"]
    # A resumed run keeps what it was started with, even if the recipe changed since.
    resumed = _saved_settings(_checkpoint_to_resume(config))
    if resumed:
        recipe = {name: resumed.get(name, _BEFORE_THE_SETTING_EXISTED.get(name, value)) for name, value in recipe.items()}
    changes: dict[str, Any] = {name: value for name, value in recipe.items() if getattr(config, name) is None}
    config = config.replace(**changes)
    try:
        changes["resolution"] = check_resolution(config.resolution)
    except ValueError as error:
        raise ConfigError(f"--resolution: {error}") from None

    mixed_precision = config.mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION", "no") or "no"
    if mixed_precision not in MIXED_PRECISION_CHOICES:
        raise ConfigError(f"--mixed_precision must be one of {', '.join(MIXED_PRECISION_CHOICES)}; got {mixed_precision!r}")
    changes["mixed_precision"] = mixed_precision
    on_cpu = _will_run_on_cpu()
    if mixed_precision == "fp16" and on_cpu:
        raise ConfigError(
            "--mixed_precision fp16 needs a CUDA GPU and this run is on the CPU; use --mixed_precision no "
            "(or bf16, which the CPU supports, slowly)."
        )
    if config.quantize not in QUANTIZE_CHOICES:
        raise ConfigError(f"--quantize must be one of {', '.join(QUANTIZE_CHOICES)}; got {config.quantize!r}")
    if config.quantize == "nf4" and on_cpu:
        raise ConfigError(
            "--quantize nf4 needs bitsandbytes on a CUDA GPU and this run is on the CPU; use --quantize int8 "
            "(optimum-quanto, works on the CPU) or --quantize none."
        )
    if config.use_8bit_adam:
        if on_cpu:
            raise ConfigError("--use_8bit_adam needs bitsandbytes on a CUDA GPU; drop the flag on the CPU.")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ConfigError("--use_8bit_adam needs bitsandbytes: pip install bitsandbytes") from None
    if config.report_to not in REPORT_TO_CHOICES:
        raise ConfigError(f"--report_to must be one of {', '.join(REPORT_TO_CHOICES)}; got {config.report_to!r}")
    if config.report_to == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            try:
                import tensorboardX  # noqa: F401
            except ImportError:
                raise ConfigError("--report_to tensorboard needs TensorBoard: pip install tensorboard") from None

    for name, choices in (("prompt_mode", PROMPT_MODES), ("objective", objective.OBJECTIVES),
                          ("sigma_sampling", objective.SIGMA_SCHEMES),
                          ("weighting_scheme", objective.WEIGHTING_SCHEMES), ("lr_scheduler", LR_SCHEDULER_CHOICES),
                          ("perceptual_gate", ("linear", "threshold", "none")), ("vgg_weights", VGG_WEIGHT_CHOICES)):
        if getattr(config, name) not in choices:
            raise ConfigError(f"--{name} must be one of {', '.join(choices)}; got {getattr(config, name)!r}")
    for name in ("train_batch_size", "gradient_accumulation_steps", "max_train_steps", "rank", "repeats",
                 "num_validation_images", "validation_inference_steps"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"--{name} must be a whole number >= 1; got {value!r}")
    for name in ("checkpointing_steps", "validation_steps", "lr_warmup_steps", "dataloader_num_workers", "seed"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"--{name} must be a whole number >= 0; got {value!r}")
    if not config.learning_rate > 0:
        raise ConfigError(f"--learning_rate must be positive; got {config.learning_rate}")
    if not 0 <= config.ema_decay < 1:
        raise ConfigError(f"--ema_decay must be in [0, 1) (0: no averaging); got {config.ema_decay}")
    if config.perceptual_weight < 0 or config.max_grad_norm < 0 or config.guidance_scale < 0:
        raise ConfigError("--perceptual_weight, --max_grad_norm and --guidance_scale must not be negative")
    changes["sigma_shift"] = parse_sigma_shift(config.sigma_shift)

    if not config.hr_root:
        raise ConfigError("--hr_root is required: a folder of clean photos to train on (e.g. data_samples).")
    hr_root = Path(config.hr_root).expanduser()
    if not hr_root.exists():
        raise ConfigError(f"--hr_root {str(hr_root)!r} does not exist.")
    try:
        find_usable_images(hr_root, _training_excludes(config))
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(f"--hr_root {str(hr_root)!r} has nothing to train on: {error}") from None
    validation_dir = resolve_validation_dir(config)
    if config.validation_dir not in (None, "auto", "none") and (validation_dir is None or not validation_dir.is_dir()):
        raise ConfigError(f"--validation_dir {config.validation_dir!r} is not a folder (use 'none' to skip validation).")

    resolved = config.replace(**changes)
    _check_output_dir(resolved)
    return resolved


def _checkpoint_to_resume(config: TrainConfig) -> Path | None:
    """The checkpoint `--resume_from_checkpoint` names ('latest': the newest complete one), or None."""
    if not config.resume_from_checkpoint:
        return None
    output_dir = Path(config.output_dir)
    if config.resume_from_checkpoint == "latest":
        return latest_checkpoint(output_dir)
    return _resolve_checkpoint_path(output_dir, config.resume_from_checkpoint)


def _saved_settings(checkpoint: Path | None) -> dict:
    """The config a checkpoint was written with, or {} (no checkpoint, or an incomplete one)."""
    state_file = checkpoint / CHECKPOINT_STATE_FILE if checkpoint is not None else None
    if state_file is None or not state_file.is_file():
        return {}
    return json.loads(state_file.read_text()).get("config", {})


def _defining_settings(config_dict: dict) -> dict:
    settings = {key: value for key, value in config_dict.items() if key not in BOOKKEEPING_FIELDS}
    # The same photo folder written as "../data_samples" or "/home/me/course/data_samples" is the
    # same run (both resolved from the working folder of the check); JSON has no tuples.
    if isinstance(settings.get("hr_root"), str):
        settings["hr_root"] = os.path.realpath(settings["hr_root"])
    if "crop_scale" in settings:
        settings["crop_scale"] = list(check_crop_scale(settings["crop_scale"]))
    return settings


# What a run did before these settings existed (their defaults now depend on the model).
_BEFORE_THE_SETTING_EXISTED = {"crop_scale": (1.0, 1.0), "objective": "flow_matching", "ema_decay": 0.0}


def _differences(old: dict, new: dict) -> list[str]:
    # A checkpoint written before a setting existed ran with what the trainer did then: that
    # setting's default, or `_BEFORE_THE_SETTING_EXISTED`.
    old = {**TrainConfig().to_dict(), **_BEFORE_THE_SETTING_EXISTED, **old}
    old, new = _defining_settings(old), _defining_settings(new)
    return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key)]


def _check_output_dir(config: TrainConfig) -> None:
    output_dir = Path(config.output_dir)
    resume = config.resume_from_checkpoint
    if resume and resume != "latest":
        path = _resolve_checkpoint_path(output_dir, resume)
        if not (path / CHECKPOINT_STATE_FILE).is_file():
            raise ConfigError(
                f"--resume_from_checkpoint {resume!r}: {path} is not a complete checkpoint "
                f"(no {CHECKPOINT_STATE_FILE}); use 'latest' or one of {[p.name for p in list_checkpoints(output_dir)]}."
            )
    checkpoints = list_checkpoints(output_dir)
    if not checkpoints or resume:
        return
    previous = json.loads((checkpoints[-1] / CHECKPOINT_STATE_FILE).read_text()).get("config", {})
    differences = _differences(previous, config.to_dict())
    if differences:
        raise ConfigError(
            f"{output_dir} holds checkpoints of another run with different settings "
            f"({'; '.join(differences[:6])}{' ...' if len(differences) > 6 else ''}). Use another --output_dir, "
            "add --resume_from_checkpoint latest to continue that run, or delete its checkpoint-* folders."
        )


# ---------------------------------------------------------------------------------------------
# Data order and per-sample randomness
# ---------------------------------------------------------------------------------------------


class EpochShuffleSampler(torch.utils.data.Sampler):
    """A random order of ``range(length)`` that depends only on (seed, epoch).

    Set the epoch with `set_epoch` before iterating; accelerate's sharding then hands every
    process its part of the same order, and a resumed run sees the order it would have seen.
    """

    def __init__(self, length: int, seed: int):
        self.length = length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0]))
        return iter(torch.randperm(self.length, generator=generator).tolist())


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A CPU generator for one sample's sigma and noise, seeded by (seed, epoch, sample index)."""
    state = np.random.SeedSequence([seed, epoch, index, 1]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def sigmas_and_noise(
    indices, epoch: int, seed: int, latent_shape: tuple[int, ...], scheme: str, shift: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One sigma and one noise tensor per sample, each drawn from the sample's own generator.

    Args:
        indices: (B,) dataset indices of the batch's samples.
        latent_shape: (C, h, w) of one sample's latents.

    Returns:
        sigmas (B,) float32 in (0, 1) and noise (B, C, h, w) float32, on the CPU.
    """
    sigmas, noise = [], []
    for index in [int(i) for i in indices]:
        generator = sample_generator(seed, epoch, index)
        sigmas.append(objective.sample_sigmas(1, scheme, shift=shift, generator=generator))
        noise.append(torch.randn((1, *latent_shape), generator=generator))
    return torch.cat(sigmas), torch.cat(noise)


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def _checkpoint_step(path: Path) -> int | None:
    match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", path.name)
    return int(match.group(1)) if match else None


def list_checkpoints(output_dir) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first (unfinished ``.tmp`` folders are ignored)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir()
             if p.is_dir() and _checkpoint_step(p) is not None and (p / CHECKPOINT_STATE_FILE).is_file()]
    return sorted(found, key=_checkpoint_step)


def latest_checkpoint(output_dir) -> Path | None:
    """The newest complete checkpoint, or None."""
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def _resolve_checkpoint_path(output_dir: Path, name: str) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() or path.exists() else output_dir / name


def _random_states() -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _restore_random_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def write_checkpoint(output_dir, step: int, transformer, optimizer, lr_scheduler, state: dict, grad_scaler=None,
                     ema: lora_ops.LoraEMA | None = None) -> Path:
    """Write ``checkpoint-<step>/`` atomically: everything goes into ``checkpoint-<step>.tmp/``,
    ``training_state.json`` last, then one rename makes it visible.

    A kill before the rename leaves only the ``.tmp`` folder, which `list_checkpoints` ignores and the
    next save replaces; an existing ``checkpoint-<step>/`` is swapped out only once the new one is
    complete.

    Args:
        transformer: the (unwrapped) transformer with its LoRA adapter.
        ema: the run's weight average, if any: written as ``ema_lora_weights.safetensors``, in the
            same diffusers format (``load_lora_weights(folder, weight_name="ema_lora_weights.safetensors")``).
        state: JSON-serialisable training state (step, epoch, position in the epoch, loss history,
            the config).
    """
    output_dir = Path(output_dir)
    final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    staging = output_dir / f"{final.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    lora_ops.save_lora(transformer, staging)
    if ema is not None:
        with ema.applied():
            lora_ops.save_lora(transformer, staging, weight_name=EMA_WEIGHT_NAME)
    torch.save(optimizer.state_dict(), staging / "optimizer.pt")
    torch.save(lr_scheduler.state_dict(), staging / "scheduler.pt")
    torch.save(_random_states(), staging / "random_states.pt")
    if grad_scaler is not None:
        torch.save(grad_scaler.state_dict(), staging / "grad_scaler.pt")
    (staging / CHECKPOINT_STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")
    replaced = None
    if final.exists():
        replaced = final.with_name(final.name + ".old")
        shutil.rmtree(replaced, ignore_errors=True)
        os.replace(final, replaced)
    os.replace(staging, final)
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
    return final


def load_lora_weights_into(transformer, folder, weight_name: str = lora_ops.LORA_WEIGHT_NAME) -> None:
    """Load ``folder/<weight_name>`` (our diffusers-format file, by default
    ``pytorch_lora_weights.safetensors``) into the transformer's existing "default" adapter,
    exactly (float32 in, float32 out)."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    saved = load_file(str(Path(folder) / weight_name))
    state = {key.removeprefix("transformer."): value for key, value in saved.items()}
    result = set_peft_model_state_dict(transformer, state, adapter_name="default")
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise RuntimeError(f"checkpoint {folder} has LoRA weights this model lacks: {unexpected[:3]} ...")


def prune_checkpoints(output_dir, keep: int | None) -> list[Path]:
    """Delete the oldest complete checkpoints beyond `keep`; returns what was deleted."""
    if not keep:
        return []
    removed = list_checkpoints(output_dir)[:-keep]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


@dataclass
class ValidationSet:
    """Held-out pairs, degraded once: PIL images of side `resolution`, their prompts and names."""

    degraded: list
    clean: list
    prompts: list[str]
    names: list[str]


def build_validation_set(config: TrainConfig, validation_dir: Path) -> ValidationSet:
    """Centre crops of the first `num_validation_images` held-out photos, degraded with the
    training flags by a fixed seed (`VALIDATION_SEED`), the same in every run."""
    from .data import DegDataset, tensor_to_pil

    dataset = DegDataset(
        validation_dir, config.instance_prompt, config=config.degradation, resolution=config.resolution,
        seed=VALIDATION_SEED, prompt_mode=config.prompt_mode, random_flip=False, center_crop=True,
    )
    count = min(config.num_validation_images, len(dataset.images))
    items = [dataset[i] for i in range(count)]
    return ValidationSet(
        degraded=[tensor_to_pil(item["control"]) for item in items],
        clean=[tensor_to_pil(item["target"]) for item in items],
        prompts=[item["prompts"] for item in items],
        names=[Path(item["path"]).name for item in items],
    )


@torch.no_grad()
def restore_validation_images(pipe, validation: ValidationSet, cache, config: TrainConfig, batch_size: int) -> list:
    """Run the pipeline (with whatever adapter state the transformer has) on the degraded images.

    Uses the cached prompt embeddings (the text encoders may be gone), the training resolution and
    text length (`models.call_kwargs`), ``config.validation_inference_steps`` steps and the
    configured guidance; the noise is seeded by `VALIDATION_SEED` so every validation starts from
    the same noise. Returns PIL images.
    """
    from .models import call_kwargs

    restored = []
    dtype = pipe.transformer.dtype
    device = pipe.vae.device
    for start in range(0, len(validation.degraded), batch_size):
        prompts = validation.prompts[start:start + batch_size]
        text = cache.batch(prompts, device=device, dtype=dtype)
        output = pipe(
            image=validation.degraded[start:start + batch_size],
            prompt_embeds=text.prompt_embeds,
            pooled_prompt_embeds=text.pooled_prompt_embeds,
            guidance_scale=config.guidance_scale,
            num_inference_steps=config.validation_inference_steps,
            generator=torch.Generator().manual_seed(VALIDATION_SEED + start),
            output_type="pil",
            **call_kwargs(pipe, config.resolution, config.resolution),
        )
        restored.extend(output.images)
    return restored


def score_images(images, references) -> dict:
    """{"psnr": mean dB, "ssim": mean, "psnr_per_image": [...], "ssim_per_image": [...]} on RGB 0-255."""
    psnrs = [metrics.psnr(a, b) for a, b in zip(images, references)]
    ssims = [metrics.ssim(a, b) for a, b in zip(images, references)]
    return {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims)),
            "psnr_per_image": psnrs, "ssim_per_image": ssims}


def comparison_grid(columns: dict[str, list], scale: int = 1):
    """A PIL grid: one row per image, one labelled column per entry of `columns` (equal-sized images).

    Args:
        columns: {"degraded": [...], "base": [...], "LoRA": [...], "clean": [...]} of PIL images.
        scale: nearest-neighbour enlargement (small nano images are easier to judge at 2-4x).
    """
    from PIL import Image, ImageDraw

    names = list(columns)
    rows = len(columns[names[0]])
    width, height = columns[names[0]][0].size
    width, height = width * scale, height * scale
    header, gap = 14, 2
    grid = Image.new("RGB", (len(names) * (width + gap) - gap, header + rows * (height + gap) - gap), "white")
    draw = ImageDraw.Draw(grid)
    for column, name in enumerate(names):
        x = column * (width + gap)
        draw.text((x + 2, 1), name, fill="black")
        for row, image in enumerate(columns[name]):
            tile = image.convert("RGB").resize((width, height), Image.Resampling.NEAREST)
            grid.paste(tile, (x, header + row * (height + gap)))
    return grid


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------


def save_loss_curve(steps, losses, path, validation_history=None) -> Path:
    """Write the loss per step (and its moving average) as a PNG; validation PSNR on a second axis
    (`viz_training.loss_curve_figure`, which needs no display)."""
    from .viz_training import loss_curve_figure

    loss_curve_figure(steps, losses, validation_history).savefig(path)
    return Path(path)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


class _StopRequest:
    """Ctrl-C during training asks the loop to stop at the next step boundary (a second Ctrl-C
    interrupts at once). Only installed in the main thread, and only over Python's default handler."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nStopping after this step and saving a checkpoint (Ctrl-C again to stop at once).", flush=True)

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]


def _fresh_accelerator_state() -> None:
    """Let a second `train` call in one Python process (a notebook) choose another precision or
    accumulation: accelerate keeps these in process-wide singletons. Never touched under a
    multi-process launch, where the state belongs to the launcher."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    if PartialState._shared_state and PartialState().num_processes > 1:
        return
    AcceleratorState._reset_state()
    GradientState._reset_state()


@dataclass
class TrainingProgress:
    """Where a run stands; saved in every checkpoint and restored on resume.

    ``epoch`` and ``batches_in_epoch`` locate the last *finished* optimizer step in the data order
    (batches counted per process), so a resumed run skips exactly the batches already used.
    """

    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    loss_steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    validation_history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _prepare_output_dir(config: TrainConfig, say) -> None:
    """Main process: create the folder, clear half-written saves, replace an earlier identical
    run's checkpoints when not resuming (a different run's were refused by `check_config`)."""
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for leftover in output_dir.glob(f"{CHECKPOINT_PREFIX}*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)  # a save that was killed half-way
    old_checkpoints = list_checkpoints(output_dir)
    if old_checkpoints and not config.resume_from_checkpoint:
        say(f"Starting over: removing {len(old_checkpoints)} checkpoint(s) of an earlier run with the same "
            "settings (add --resume_from_checkpoint latest to continue it instead).")
        for old in old_checkpoints:
            shutil.rmtree(old)
    config.save_json(output_dir / CONFIG_FILE)


def load_training_pipeline(config: TrainConfig, device):
    """The pipeline with a fresh trainable LoRA on its transformer, ready for `train`.

    The frozen base (transformer, VAE, text encoders) is in the mixed-precision dtype; the LoRA
    parameters are float32 (`lora.add_lora`), A seeded by ``config.seed``, B zero.
    """
    from accelerate.utils import set_seed

    from .models import load_pipeline

    pipe = load_pipeline(
        config.pretrained_model_name_or_path, device=device, dtype=_weight_dtype(config.mixed_precision),
        quantize=None if config.quantize == "none" else config.quantize,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.vae.requires_grad_(False).eval()
    set_seed(config.seed)
    lora_ops.add_lora(pipe.transformer, rank=config.rank, lora_alpha=config.lora_alpha)
    if config.gradient_checkpointing:
        pipe.transformer.enable_gradient_checkpointing()
    pipe.transformer.train()
    return pipe


def cache_prompt_embeddings(pipe, config: TrainConfig, extra_prompts=()):
    """Encode the instance prompt (and `extra_prompts`, e.g. the validation prompts) once each.

    With ``prompt_mode="plain"`` nothing else will ever be needed, so the text encoders are then
    dropped from the pipeline (T5-XXL alone is 9.5 GB in bf16). Prompts that describe the damage
    vary with the degradations: the encoders stay, moved to the CPU, and each new phrasing is
    encoded the first time it appears and kept by its text.
    """
    from .models import max_sequence_length_for

    cache = objective.PromptEmbeddingCache(pipe, max_sequence_length_for(pipe))
    cache.add([config.instance_prompt, *extra_prompts])
    if config.prompt_mode == "plain":
        cache.release_encoders()
        pipe.text_encoder = None
        pipe.text_encoder_2 = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    else:
        pipe.text_encoder.to("cpu")
        pipe.text_encoder_2.to("cpu")
    return cache


def _make_optimizer(parameters, config: TrainConfig):
    if config.use_8bit_adam:
        import bitsandbytes as bnb

        optimizer_class = bnb.optim.AdamW8bit
    else:
        optimizer_class = torch.optim.AdamW
    return optimizer_class(parameters, lr=config.learning_rate, betas=(0.9, 0.999),
                           weight_decay=config.adam_weight_decay, eps=1e-8)


def resume_from(path: Path, transformer, optimizer, lr_scheduler, grad_scaler=None,
                ema: lora_ops.LoraEMA | None = None) -> TrainingProgress:
    """Load a checkpoint written by `write_checkpoint` into the run; returns its progress.

    A run with `ema` resumed from a checkpoint that has no average (written without one) starts
    the average from the checkpoint's weights."""
    state = json.loads((path / CHECKPOINT_STATE_FILE).read_text())
    if ema is not None and (path / EMA_WEIGHT_NAME).is_file():
        with ema.applied():  # load the file through the adapter, read it back as the average
            load_lora_weights_into(transformer, path, EMA_WEIGHT_NAME)
            ema.load_state_dict({name: p.detach() for name, p in ema.parameters.items()})
    load_lora_weights_into(transformer, path)
    if ema is not None and not (path / EMA_WEIGHT_NAME).is_file():
        ema.load_state_dict({name: p.detach() for name, p in ema.parameters.items()})
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False))
    lr_scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    if grad_scaler is not None and (path / "grad_scaler.pt").exists():
        grad_scaler.load_state_dict(torch.load(path / "grad_scaler.pt", weights_only=False))
    # Our own files; they hold numpy and Python random states, which weights_only=True refuses.
    _restore_random_states(torch.load(path / "random_states.pt", weights_only=False))
    fields = {item.name for item in dataclasses.fields(TrainingProgress)}
    return TrainingProgress(**{key: value for key, value in state.items() if key in fields})


class Validator:
    """Restores the validation set, scores it against the clean photos and saves comparison grids.

    The base model (adapters disabled) is run once, at the first validation, and its images fill the
    "base" column of every grid. Runs on the main process only.
    """

    def __init__(self, pipe, validation: ValidationSet, cache, config: TrainConfig, say=print):
        self.pipe = pipe
        self.validation = validation
        self.cache = cache
        self.config = config
        self.say = say
        self.folder = Path(config.output_dir) / "validation"
        self.base_images: list | None = None
        self.base_scores: dict | None = None
        self.degraded_scores = score_images(validation.degraded, validation.clean)
        self.last: dict | None = None

    def _restore(self) -> list:
        return restore_validation_images(self.pipe, self.validation, self.cache, self.config,
                                         self.config.train_batch_size)

    def run(self, step: int) -> dict:
        """Validate the LoRA as it is at `step`; returns {"step", "psnr", "ssim", "grid_path", "images", "scores"}."""
        transformer = self.pipe.transformer
        was_training = transformer.training
        transformer.eval()
        try:
            if self.base_images is None:
                transformer.disable_adapters()
                try:
                    self.base_images = self._restore()
                finally:
                    transformer.enable_adapters()
                self.base_scores = score_images(self.base_images, self.validation.clean)
            # Before the first step B = 0 and the LoRA changes nothing: its images are the base's.
            restored = self.base_images if step == 0 else self._restore()
        finally:
            transformer.train(was_training)
        scores = score_images(restored, self.validation.clean)
        self.folder.mkdir(parents=True, exist_ok=True)
        grid_path = self.folder / f"step-{step:06d}.png"
        comparison_grid({"degraded": self.validation.degraded, "base": self.base_images, "LoRA": restored,
                         "clean": self.validation.clean}).save(grid_path)
        self.say(f"validation at step {step}: LoRA PSNR {scores['psnr']:.2f} dB, SSIM {scores['ssim']:.4f} "
                 f"(base {self.base_scores['psnr']:.2f} dB / {self.base_scores['ssim']:.4f}) -> {grid_path}")
        self.last = {"step": step, "psnr": scores["psnr"], "ssim": scores["ssim"], "grid_path": str(grid_path),
                     "images": restored, "scores": scores}
        return self.last

    def report(self, history: list[dict]) -> dict:
        """metrics.json: the last validation's LoRA numbers, the base model's and the degraded
        inputs', all on the same images with the same settings."""
        final = self.last["scores"]
        return {
            "step": self.last["step"],
            "num_images": len(self.validation.clean),
            "images": self.validation.names,
            "resolution": self.config.resolution,
            "num_inference_steps": self.config.validation_inference_steps,
            "guidance_scale": self.config.guidance_scale,
            "prompt_mode": self.config.prompt_mode,
            "lora": final,
            "base": self.base_scores,
            "degraded": self.degraded_scores,
            "lora_gain_over_base_db": final["psnr"] - self.base_scores["psnr"],
            "lora_gain_over_degraded_db": final["psnr"] - self.degraded_scores["psnr"],
            "grid": self.last["grid_path"],
            "history": history,
        }


def train(
    config: TrainConfig,
    *,
    on_step: Callable[[dict], None] | None = None,
    on_validation: Callable[[dict], None] | None = None,
    progress_bar: bool = True,
) -> dict:
    """Train a restoration LoRA; the one training loop of the course (see the module docstring).

    Args:
        config: the settings; checked by `check_config` first (nothing is loaded if they are refused).
        on_step: called on the main process after every optimizer step with
            {"step", "loss", "lr", "epoch", "elapsed_s"} (e.g. a notebook's live loss plot).
        on_validation: called on the main process after every validation with {"step", "psnr",
            "ssim", "grid_path", "images" (the restored PIL images), "scores"}.
        progress_bar: show the tqdm bar (loss, lr, steps/s).

    Returns:
        {"status": "completed" | "interrupted", "output_dir", "lora_path" (None unless completed),
        "global_step", "steps", "losses", "validation" (metrics.json's content, or None),
        "checkpoint" (the newest one, or None), "seconds", "steps_per_second"}.

    Raises:
        ConfigError: refused settings. TrainingDiverged: a NaN or inf loss.
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    from . import losses as loss_ops
    from .data import DegDataset

    config = check_config(config)
    output_dir = Path(config.output_dir)
    _fresh_accelerator_state()
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    is_main = accelerator.is_main_process
    check_distributed_type(accelerator.distributed_type)

    def say(message: str) -> None:
        if is_main:
            tqdm.write(message)  # prints above the progress bar instead of through it


    # Data first: it touches no model and fails fast on unreadable photos.
    dataset = DegDataset(
        config.hr_root, config.instance_prompt, config=config.degradation, resolution=config.resolution,
        repeats=config.repeats, seed=config.seed, prompt_mode=config.prompt_mode,
        exclude=_training_excludes(config), crop_scale=config.crop_scale,
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=config.train_batch_size, sampler=EpochShuffleSampler(len(dataset), config.seed),
        num_workers=config.dataloader_num_workers, drop_last=False,
    )
    validation_dir = resolve_validation_dir(config)
    validation = build_validation_set(config, validation_dir) if validation_dir is not None else None
    vgg = None
    if config.perceptual_loss:  # before the big model, so a missing ImageNet file is reported at once
        vgg = loss_ops.VGGPerceptualLoss(resize=False, weights=None if config.vgg_weights == "random" else "imagenet")
    accelerator.wait_for_everyone()  # every process has read the folder (check_config) before it changes
    if is_main:
        _prepare_output_dir(config, say)
    accelerator.wait_for_everyone()

    pipe = load_training_pipeline(config, accelerator.device)
    transformer, vae = pipe.transformer, pipe.vae
    say(f"LoRA rank {config.rank}: {lora_ops.describe_parameters(transformer)}")
    cache = cache_prompt_embeddings(pipe, config, validation.prompts if validation else ())
    if vgg is not None:
        vgg.to(accelerator.device)

    optimizer = _make_optimizer(lora_ops.lora_parameters(transformer), config)
    # Stepped by hand once per optimizer step, so the schedule does not depend on the number of
    # processes (accelerate's prepared scheduler steps once per process).
    lr_scheduler = get_scheduler(config.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=config.lr_warmup_steps, num_training_steps=config.max_train_steps)
    # The average of the LoRA weights, when asked for: validation and the exported file use it.
    ema = lora_ops.LoraEMA(transformer, config.ema_decay) if config.ema_decay else None
    averaged = ema.applied if ema is not None else contextlib.nullcontext
    model, optimizer, loader = accelerator.prepare(transformer, optimizer, loader)
    grad_scaler = getattr(accelerator, "scaler", None)

    batches_per_epoch = len(loader)  # per process, after sharding
    num_epochs = math.ceil(config.max_train_steps / math.ceil(batches_per_epoch / config.gradient_accumulation_steps))
    num_target_tokens = (config.resolution // latent_ops.vae_scale_factor(vae) // 2) ** 2
    mu = {"auto": objective.calculate_shift(num_target_tokens, pipe.scheduler.config), "none": None}.get(
        config.sigma_shift, config.sigma_shift)
    guidance = config.guidance_scale if transformer.config.guidance_embeds else None

    progress = TrainingProgress()
    last_checkpoint: Path | None = None
    if config.resume_from_checkpoint:
        path = _checkpoint_to_resume(config)
        if path is None:
            say(f"No checkpoint in {output_dir} to resume from; starting a new run.")
        else:
            saved_config = _saved_settings(path)
            if _differences(saved_config, config.to_dict()):
                say(f"Resuming with changed settings: {'; '.join(_differences(saved_config, config.to_dict()))}")
            progress = resume_from(path, transformer, optimizer, lr_scheduler, grad_scaler, ema)
            last_checkpoint = path
            say(f"Resumed from {path.name}: step {progress.global_step}, epoch {progress.epoch}, "
                f"batch {progress.batches_in_epoch}.")
    if progress.batches_in_epoch >= batches_per_epoch:  # the checkpoint closed its epoch
        progress.epoch, progress.batches_in_epoch = progress.epoch + 1, 0
    if config.report_to != "none":
        accelerator.init_trackers("kontext-restoration-lora", config=_tracker_config(config))

    validator = Validator(pipe, validation, cache, config, say) if (validation is not None and is_main) else None

    def validate(step: int) -> None:
        if validator is not None:
            with averaged():
                result = validator.run(step)
            if not any(entry["step"] == step for entry in progress.validation_history):
                progress.validation_history.append({"step": step, "psnr": result["psnr"], "ssim": result["ssim"]})
            accelerator.log({"validation/psnr": result["psnr"], "validation/ssim": result["ssim"],
                             "validation/base_psnr": validator.base_scores["psnr"]}, step=step)
            if on_validation is not None:
                on_validation(result)
        accelerator.wait_for_everyone()

    def checkpoint() -> None:
        nonlocal last_checkpoint
        accelerator.wait_for_everyone()
        if is_main:
            state = {**progress.to_dict(), "config": config.to_dict()}
            last_checkpoint = write_checkpoint(output_dir, progress.global_step, transformer, optimizer,
                                               lr_scheduler, state, grad_scaler, ema)
            for removed in prune_checkpoints(output_dir, config.checkpoints_total_limit):
                say(f"removed {removed.name} (--checkpoints_total_limit {config.checkpoints_total_limit})")
        accelerator.wait_for_everyone()

    # -- the loop --------------------------------------------------------------------------------------
    if progress.global_step == 0:
        validate(0)
    bar = tqdm(total=config.max_train_steps, initial=progress.global_step, desc="training",
               disable=not (is_main and progress_bar), dynamic_ncols=True)
    status, started, steps_this_run = "completed", time.perf_counter(), 0
    saved_step = progress.global_step if last_checkpoint is not None else -1
    micro_losses: list[float] = []
    first_epoch, skip = progress.epoch, progress.batches_in_epoch
    with _StopRequest() as stop:
        try:
            for epoch in range(first_epoch, num_epochs):
                if progress.global_step >= config.max_train_steps:
                    break
                # accelerate's loader passes the epoch on to our sampler (the order) and to the dataset
                # (crops and degradations); left alone it would count its own iterations instead.
                loader.set_epoch(epoch)
                epoch_loader = accelerator.skip_first_batches(loader, skip) if epoch == first_epoch and skip else loader
                epoch_loader.set_epoch(epoch)
                batches_in_epoch = skip if epoch == first_epoch else 0
                for batch in epoch_loader:
                    with accelerator.accumulate(model):
                        loss = training_loss(batch, epoch, model, vae, cache, vgg, config, mu, guidance,
                                             accelerator.device)
                        diverged, stop_now = _agree_across_processes(accelerator, not torch.isfinite(loss), stop.requested)
                        if diverged:
                            raise TrainingDiverged(_divergence_message(loss, progress.global_step + 1, epoch,
                                                                       batches_in_epoch, last_checkpoint))
                        stop.requested = stop_now
                        accelerator.backward(loss)
                        if accelerator.sync_gradients and config.max_grad_norm > 0:
                            accelerator.clip_grad_norm_(lora_ops.lora_parameters(transformer), config.max_grad_norm)
                        optimizer.step()  # skipped by accelerate until the last accumulated micro-batch
                        optimizer.zero_grad(set_to_none=True)
                    micro_losses.append(_mean_over_processes(accelerator, loss.detach()))
                    batches_in_epoch += 1
                    if not accelerator.sync_gradients:
                        continue
                    # One optimizer step is done.
                    lr_scheduler.step()
                    steps_this_run += 1
                    progress.global_step += 1
                    if ema is not None:
                        ema.update(progress.global_step)
                    progress.epoch, progress.batches_in_epoch = epoch, batches_in_epoch
                    progress.loss_steps.append(progress.global_step)
                    progress.losses.append(float(np.mean(micro_losses)))
                    micro_losses.clear()
                    lr = lr_scheduler.get_last_lr()[0]
                    rate = steps_this_run / max(time.perf_counter() - started, 1e-9)
                    bar.update(1)
                    bar.set_postfix(loss=f"{progress.losses[-1]:.4f}", lr=f"{lr:.2e}", steps_per_s=f"{rate:.2f}")
                    accelerator.log({"loss": progress.losses[-1], "lr": lr}, step=progress.global_step)
                    if on_step is not None and is_main:
                        on_step({"step": progress.global_step, "loss": progress.losses[-1], "lr": lr,
                                 "epoch": epoch, "elapsed_s": time.perf_counter() - started})
                    if config.checkpointing_steps and progress.global_step % config.checkpointing_steps == 0:
                        checkpoint()
                        saved_step = progress.global_step
                    if (config.validation_steps and progress.global_step % config.validation_steps == 0
                            and progress.global_step < config.max_train_steps):
                        validate(progress.global_step)
                    if stop.requested or progress.global_step >= config.max_train_steps:
                        break
                if stop.requested:
                    status = "interrupted"
                    break
        except KeyboardInterrupt:  # a second Ctrl-C, or one outside the step (e.g. during validation)
            status = "interrupted"
        finally:
            bar.close()

    seconds = time.perf_counter() - started
    result = {"status": status, "output_dir": str(output_dir), "lora_path": None,
              "global_step": progress.global_step, "steps": progress.loss_steps, "losses": progress.losses,
              "validation": None, "checkpoint": None, "seconds": seconds,
              "steps_per_second": steps_this_run / seconds if seconds > 0 else 0.0}
    if status == "interrupted":
        if progress.global_step > 0 and saved_step != progress.global_step:
            checkpoint()
        say(f"Interrupted at step {progress.global_step}; checkpoint: {last_checkpoint}. "
            "Continue with --resume_from_checkpoint latest.")
    else:
        if validator is not None:
            if validator.last is None or validator.last["step"] != progress.global_step:
                validate(progress.global_step)
            report = validator.report(progress.validation_history)
            (output_dir / METRICS_FILE).write_text(json.dumps(report, indent=2) + "\n")
            result["validation"] = report
            say(f"final: LoRA {report['lora']['psnr']:.2f} dB / {report['lora']['ssim']:.4f}, base "
                f"{report['base']['psnr']:.2f} dB / {report['base']['ssim']:.4f}, degraded inputs "
                f"{report['degraded']['psnr']:.2f} dB / {report['degraded']['ssim']:.4f}")
        if is_main:
            with averaged():
                result["lora_path"] = str(lora_ops.save_lora(transformer, output_dir))
            say(f"LoRA saved to {result['lora_path']} ({progress.global_step} steps, "
                f"{result['steps_per_second']:.2f} steps/s)")
    if is_main and progress.losses:
        save_loss_curve(progress.loss_steps, progress.losses, output_dir / LOSS_CURVE_FILE,
                        progress.validation_history)
    result["checkpoint"] = str(last_checkpoint) if last_checkpoint else None
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def training_loss(batch: dict, epoch: int, model, vae, cache, vgg, config: TrainConfig, mu, guidance, device):
    """One micro-batch's loss, the stages of the module docstring in order.

    Args:
        batch: collated `DegDataset` items: "target" and "control" (B, 3, R, R) in [-1, 1],
            "prompts" (B strings), "index" (B,) dataset indices.
        model: the (possibly DDP-wrapped) transformer with its LoRA.
        mu: the sigma shift, or None. guidance: the guidance input, or None.

    Returns:
        scalar float32 loss (`config.objective`, plus the weighted perceptual term when `vgg` is given).
    """
    from . import losses as loss_ops

    weight_dtype = _weight_dtype(config.mixed_precision)
    # 1. encode: frozen VAE, no graph
    target_latents, control_latents = objective.encode_pair(vae, batch["target"], batch["control"])
    # 2-3. sigma and noise, drawn per sample from (seed, epoch, index)
    sigmas, noise = sigmas_and_noise(batch["index"], epoch, config.seed, tuple(target_latents.shape[1:]),
                                     config.sigma_sampling, mu)
    text = cache.batch(list(batch["prompts"]), device=device, dtype=weight_dtype)
    # 4-7. pack, forward, slice, loss on the target tokens (`config.objective`)
    step = objective.objective_step(config.objective)(
        model, target_latents.to(weight_dtype), control_latents.to(weight_dtype), text,
        sigmas.to(device), noise.to(device=device, dtype=weight_dtype),
        guidance_scale=guidance, weighting_scheme=config.weighting_scheme,
    )
    loss = step.loss
    if vgg is not None and config.perceptual_weight > 0:
        perceptual = loss_ops.perceptual_term(vgg, vae, step.x0_hat_latents(), batch["target"].to(device),
                                              step.sigmas, gate=config.perceptual_gate)
        loss = loss + config.perceptual_weight * perceptual
    return loss


def _agree_across_processes(accelerator, diverged: bool, stop: bool) -> tuple[bool, bool]:
    """Any process's NaN or Ctrl-C stops all of them at the same step (one small all-reduce);
    a process that stopped alone would leave the others waiting in the next gradient all-reduce."""
    if accelerator.num_processes == 1:
        return bool(diverged), bool(stop)
    flags = torch.tensor([float(diverged), float(stop)], device=accelerator.device)
    flags = accelerator.reduce(flags, "sum").cpu()
    return bool(flags[0] > 0), bool(flags[1] > 0)


def _divergence_message(loss, step: int, epoch: int, batch: int, last_checkpoint) -> str:
    where = f"the loss is {loss.item()} at step {step} (epoch {epoch}, batch {batch}); training stopped. "
    if last_checkpoint is not None:
        return where + (f"The last good checkpoint is {last_checkpoint}; resume from it with a lower "
                        "--learning_rate or --max_grad_norm.")
    return where + "No checkpoint was written yet; lower --learning_rate and start again."


def _mean_over_processes(accelerator, value: torch.Tensor) -> float:
    if accelerator.num_processes > 1:
        value = accelerator.reduce(value.float().reshape(1).to(accelerator.device), "mean")
    return float(value.float().mean())


def _tracker_config(config: TrainConfig) -> dict:
    """TensorBoard's hparams take numbers, strings and booleans only."""
    return {key: value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
            for key, value in config.to_dict().items()}


def main(argv: list[str] | None = None) -> int:
    """The command line: parse, train, report. Returns 0, 1 (refused or diverged) or 130 (Ctrl-C)."""
    config = parse_args(argv)
    try:
        result = train(config)
    except (ConfigError, TrainingDiverged) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 130 if result["status"] == "interrupted" else 0


if __name__ == "__main__":
    sys.exit(main())
