"""Training a FLUX.1 Kontext restoration LoRA: one loop for the command line and the notebooks.

Run it as the original guide does (every flag of its command means what it meant there)::

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
   embeddings come from a cache filled once per distinct prompt (`objective.PromptEmbeddingCache`),
   before the transformer is even loaded (`loop.load_pipeline_and_prompt_cache`).
6. **slice**: only the first N_target tokens are the prediction; the control tokens are context.
7. **loss**: mean of ``weighting * (v_hat - (noise - x0))^2`` over the target tokens, plus, with
   ``--perceptual_loss``, a sigma-gated VGG term on the decoded ``x0_hat`` (`losses.perceptual_term`).
8. **backward**: accelerate scales for gradient accumulation (and fp16), clips the LoRA gradients
   to ``--max_grad_norm``, and the optimizer updates the LoRA (float32) only.
9. **average** (``--ema_decay``, on for nano): the moving average of the LoRA weights takes the new
   weights in (`lora.LoraEMA`, diffusers' `EMAModel`); validation and the exported file use the average.

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
on), ``README.md`` (the model card: how to load it, the command, the validation scores;
`card.model_card`), ``training_config.json``, ``loss_curve.png``, ``metrics.json``, ``validation/step-NNNNNN.png`` grids, ``checkpoint-N/`` and, with
``--report_to tensorboard``, ``logs/``.

The package, by concern:

* `config`: `TrainConfig` (one field per flag, help text included), the command line, `check_config`
  and the per-model recipe `MODEL_RECIPES`;
* `checkpoints`: writing, listing, pruning and resuming ``checkpoint-N/``;
* `validation`: the held-out set, its restoration through `inference.restore_batch` and its scores;
* `loop`: `train` and `training_loss` (the step above), data order and per-sample noise;
* ``__main__``: ``python -m kontext_lora_helpers.train``.
"""

from __future__ import annotations

import sys

from .checkpoints import (
    CHECKPOINT_PREFIX,
    CHECKPOINT_STATE_FILE,
    EMA_WEIGHT_NAME,
    TrainingProgress,
    latest_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    resume_from,
    write_checkpoint,
)
from .config import (
    MODEL_RECIPES,
    NANO_RECIPE_MEASUREMENTS,
    RESTORATION_STEPS,
    RecipeMeasurement,
    ConfigError,
    TrainConfig,
    build_parser,
    check_config,
    check_distributed_type,
    command_line,
    parse_args,
    parse_sigma_shift,
    resolve_validation_dir,
)
from .loop import (
    CONFIG_FILE,
    LOSS_CURVE_FILE,
    METRICS_FILE,
    EpochShuffleSampler,
    TrainingDiverged,
    cache_prompt_embeddings,
    load_pipeline_and_prompt_cache,
    load_training_pipeline,
    loading_order,
    make_optimizer,
    sample_generator,
    save_loss_curve,
    sigmas_and_noise,
    train,
    training_loss,
)
from .validation import VALIDATION_SEED, ValidationSet, Validator, build_validation_set, comparison_grid

__all__ = [
    "CHECKPOINT_PREFIX", "CHECKPOINT_STATE_FILE", "CONFIG_FILE", "EMA_WEIGHT_NAME", "LOSS_CURVE_FILE",
    "METRICS_FILE", "MODEL_RECIPES", "NANO_RECIPE_MEASUREMENTS", "RESTORATION_STEPS", "RecipeMeasurement", "VALIDATION_SEED", "ConfigError", "EpochShuffleSampler", "TrainConfig",
    "TrainingDiverged", "TrainingProgress", "ValidationSet", "Validator", "build_parser",
    "build_validation_set", "cache_prompt_embeddings", "check_config", "check_distributed_type",
    "command_line", "comparison_grid", "latest_checkpoint", "list_checkpoints", "load_pipeline_and_prompt_cache",
    "load_training_pipeline", "loading_order", "make_optimizer",
    "main", "parse_args", "parse_sigma_shift", "prune_checkpoints", "resolve_validation_dir", "resume_from",
    "sample_generator", "save_loss_curve", "sigmas_and_noise", "train", "training_loss", "write_checkpoint",
]


def main(argv: list[str] | None = None) -> int:
    """The command line: parse, train, report. Returns 0, 1 (refused, diverged, the folder in use
    or the disk full) or 130 (Ctrl-C)."""
    from ..fileio import DiskFullError, FolderLockedError

    config = parse_args(argv)
    try:
        result = train(config)
    except (ConfigError, TrainingDiverged, FolderLockedError, DiskFullError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 130 if result["status"] == "interrupted" else 0
