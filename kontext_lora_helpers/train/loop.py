"""The training loop: `train` runs the optimizer steps described in `kontext_lora_helpers.train`,
with checkpoints, validation, Ctrl-C and NaN handling, on one process or many (accelerate, DDP).
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import latents as latent_ops
from .. import lora as lora_ops
from ..faults import fault_point
from .. import objective
from ..fileio import (
    DiskFullError,
    disk_full_message,
    folder_lock,
    is_disk_full,
    write_json_atomically,
    write_text_atomically,
)
from ..lora import LORA_WEIGHT_NAME
from .checkpoints import (
    CHECKPOINT_PREFIX,
    TrainingProgress,
    checkpoint_to_resume,
    list_checkpoints,
    prune_checkpoints,
    resume_from,
    saved_settings,
    write_checkpoint,
)
from .config import (
    RESTORATION_STEPS,
    TrainConfig,
    _differences,
    _training_excludes,
    check_config,
    check_distributed_type,
    resolve_validation_dir,
)
from .card import MODEL_CARD_FILE, MODEL_CARD_TAG, model_card
from .validation import Validator, build_validation_set

__all__ = [
    "CONFIG_FILE",
    "LOSS_CURVE_FILE",
    "METRICS_FILE",
    "EpochShuffleSampler",
    "TrainingDiverged",
    "cache_prompt_embeddings",
    "load_pipeline_and_prompt_cache",
    "load_training_pipeline",
    "loading_order",
    "make_optimizer",
    "sample_generator",
    "save_loss_curve",
    "sigmas_and_noise",
    "train",
    "training_loss",
]

CONFIG_FILE = "training_config.json"
METRICS_FILE = "metrics.json"
LOSS_CURVE_FILE = "loss_curve.png"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the message names the step and the last good checkpoint."""


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


def save_loss_curve(steps, losses, path, validation_history=None) -> Path:
    """Write the loss per step (and its moving average) as a PNG; validation PSNR on a second axis
    (`viz_training.loss_curve_figure`, which needs no display)."""
    from ..viz_training import loss_curve_figure

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


def load_training_pipeline(config: TrainConfig, device, text_encoders: bool = True):
    """The pipeline with a fresh trainable LoRA on its transformer, ready for `train`.

    The frozen base (transformer, VAE and, unless ``text_encoders=False``, the text encoders) is in
    the mixed-precision dtype; the LoRA parameters are float32 (`lora.add_lora`), A seeded by
    ``config.seed``, B zero. `train` loads it without text encoders, after the prompts are cached
    (`load_pipeline_and_prompt_cache`).
    """
    from accelerate.utils import set_seed

    from ..models import load_pipeline

    pipe = load_pipeline(
        config.pretrained_model_name_or_path, device=device, dtype=_weight_dtype(config.mixed_precision),
        quantize=config.quantize, text_encoders=text_encoders,
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
    dropped from `pipe` (T5-XXL alone is 9.5 GB in bf16). Prompts that describe the damage
    vary with the degradations: the encoders stay, moved to the CPU, and each new phrasing is
    encoded the first time it appears and kept by its text.

    Args:
        pipe: a pipeline whose text encoders are loaded: only its text side
            (`models.load_text_encoders`, as `train` does) or the whole pipeline.
    """
    from ..models import max_sequence_length_for

    cache = objective.PromptEmbeddingCache(pipe, max_sequence_length_for(pipe))
    cache.add([config.instance_prompt, *extra_prompts])
    if config.prompt_mode == "plain":
        cache.release_encoders()
        pipe.text_encoder = None
        pipe.text_encoder_2 = None
    else:
        pipe.text_encoder.to("cpu")
        pipe.text_encoder_2.to("cpu")
    # Hand the encoders' device memory back now, before the transformer asks for its own.
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return cache


def load_pipeline_and_prompt_cache(config: TrainConfig, device, extra_prompts=()):
    """The prompt embeddings first, then the model: what `train` loads, in this order.

    1. CLIP and T5 alone, on `device` (`models.load_text_encoders`);
    2. the instance prompt and `extra_prompts` (the validation prompts) encoded and cached;
    3. the encoders freed (``prompt_mode="plain"``: every prompt is known now) or moved to the CPU
       (described/numeric prompts: new phrasings appear during training), `cache_prompt_embeddings`;
    4. the transformer with a fresh LoRA, and the VAE (`load_training_pipeline`, no text encoders).

    So T5 (9.5 GB in fp16/bf16) and the transformer are never on the GPU together: a T4 (15 GB)
    holds the NF4 transformer (6.7 GB) and T5 one after the other, not both (16.5 GB). The
    embeddings are those the whole pipeline would give (same encoders, same precision, same
    `models.max_sequence_length_for`; one exception in `models.load_text_encoders`), and the LoRA
    starts from the same seed, so a run gives the same LoRA as when everything was loaded at once.

    Returns:
        (pipe, cache): the pipeline, its ``text_encoder`` and ``text_encoder_2`` None; the
        `objective.PromptEmbeddingCache` holding every prompt known so far.
    """
    from ..models import load_text_encoders

    encoders = load_text_encoders(config.pretrained_model_name_or_path, device=device,
                                  dtype=_weight_dtype(config.mixed_precision))
    cache = cache_prompt_embeddings(encoders, config, extra_prompts)
    del encoders  # plain prompts: nothing refers to the encoders any more; otherwise the cache does
    pipe = load_training_pipeline(config, device, text_encoders=False)
    return pipe, cache


def loading_order(config: TrainConfig) -> str:
    """`load_pipeline_and_prompt_cache`'s order for `config`, in words (the pre-flight prints it)."""
    encoders = "freed" if config.prompt_mode == "plain" else f"kept on the CPU for new {config.prompt_mode} prompts"
    return f"text encoders -> prompts cached -> text encoders {encoders} -> transformer + VAE"


def make_optimizer(parameters, config: TrainConfig):
    """AdamW (or bitsandbytes' 8-bit AdamW with ``--use_8bit_adam``) over the LoRA parameters."""
    if config.use_8bit_adam:
        import bitsandbytes as bnb

        optimizer_class = bnb.optim.AdamW8bit
    else:
        optimizer_class = torch.optim.AdamW
    return optimizer_class(parameters, lr=config.learning_rate, betas=(0.9, 0.999),
                           weight_decay=config.adam_weight_decay, eps=1e-8)


def _is_main_launch_process() -> bool:
    """Whether this process is rank 0 of its launch (``accelerate launch`` and torchrun set RANK)."""
    return os.environ.get("RANK", "0") == "0"


def train(
    config: TrainConfig,
    *,
    on_step: Callable[[dict], None] | None = None,
    on_validation: Callable[[dict], None] | None = None,
    progress_bar: bool = True,
) -> dict:
    """Train a restoration LoRA; the one training loop of the course (see the module docstring).

    The run holds its output folder (`fileio.folder_lock`): a second run started into a folder
    that a live run holds is refused, and the lock of a run that was killed is taken over.

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
        "checkpoint" (the newest one, or None), "seconds", "steps_per_second", "unreadable_photos"
        (training photos that could no longer be read during the run; others stood in for them)}.

    Raises:
        ConfigError: refused settings. TrainingDiverged: a NaN or inf loss. FolderLockedError: a
        live run holds the output folder. DiskFullError: a checkpoint or the final LoRA did not fit
        on the disk (earlier checkpoints are intact; the message says how much room is needed).
    """
    config = check_config(config)
    if not _is_main_launch_process():
        return _train_holding_the_folder(config, on_step, on_validation, progress_bar)
    from tqdm.auto import tqdm

    with folder_lock(config.output_dir, what=f"a training run ({config.pretrained_model_name_or_path})",
                     say=tqdm.write):
        return _train_holding_the_folder(config, on_step, on_validation, progress_bar)


def _train_holding_the_folder(config: TrainConfig, on_step, on_validation, progress_bar: bool) -> dict:
    """`train`'s body, for a `config` that `check_config` has resolved."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    from .. import losses as loss_ops
    from ..data import DegDataset

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

    pipe, cache = load_pipeline_and_prompt_cache(config, accelerator.device,
                                                 validation.prompts if validation else ())
    transformer, vae = pipe.transformer, pipe.vae
    say(f"LoRA rank {config.rank}: {lora_ops.describe_parameters(transformer)}")
    if config.compile:  # in place: the module, its parameters and its adapter stay what they are
        transformer.compile(backend=config.compile_backend)
        say(f"transformer compiled with torch.compile (backend {config.compile_backend}); the first steps and the "
            "first validation wait for the compiler")
    if vgg is not None:
        vgg.to(accelerator.device)

    optimizer = make_optimizer(lora_ops.lora_parameters(transformer), config)
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
    num_target_tokens = latent_ops.image_token_count(vae, config.resolution, config.resolution)
    mu = {"auto": objective.calculate_shift(num_target_tokens, pipe.scheduler.config), "none": None}.get(
        config.sigma_shift, config.sigma_shift)
    guidance = config.guidance_scale if transformer.config.guidance_embeds else None

    progress = TrainingProgress()
    last_checkpoint: Path | None = None
    if config.resume_from_checkpoint:
        path = checkpoint_to_resume(config, say=say)
        if path is None:
            say(f"No checkpoint in {output_dir} to resume from; starting a new run.")
        else:
            saved_config = saved_settings(path)
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
            # `accelerator.prepare` makes the transformer return float32 under mixed precision, and
            # the pipeline hands those latents to the bf16/fp16 VAE: the training step's autocast
            # lets its decoder take them, as it lets the transformer take float32 LoRA outputs.
            with averaged(), accelerator.autocast():
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
            try:
                last_checkpoint = write_checkpoint(output_dir, progress.global_step, transformer, optimizer,
                                                   lr_scheduler, state, grad_scaler, ema)
            except OSError as error:
                if not is_disk_full(error):
                    raise
                raise DiskFullError(error.errno, disk_full_message(
                    output_dir / f"{CHECKPOINT_PREFIX}{progress.global_step}", error,
                    _folder_bytes(last_checkpoint)) + f" The last good checkpoint is {last_checkpoint}.") from error
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
    unreadable: set[str] = set()  # training photos that could no longer be read (`DegDataset`)
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
                    unreadable.update(path for path in batch.get("replaced", ()) if path)
                    batches_in_epoch += 1
                    if not accelerator.sync_gradients:
                        continue
                    # One optimizer step is done.
                    lr_scheduler.step()
                    steps_this_run += 1
                    progress.global_step += 1
                    if ema is not None:
                        ema.update()
                    fault_point("train_step")
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
              "steps_per_second": steps_this_run / seconds if seconds > 0 else 0.0,
              "unreadable_photos": sorted(unreadable)}
    if unreadable:
        say(f"{len(unreadable)} training photo(s) could no longer be read during the run; other photos stood in "
            f"for them: {', '.join(sorted(unreadable))}")
    if status == "interrupted":
        if progress.global_step > 0 and saved_step != progress.global_step:
            checkpoint()
        say(f"Interrupted at step {progress.global_step}; checkpoint: {last_checkpoint}. "
            "Continue with --resume_from_checkpoint latest.")
    else:
        if validator is not None:
            if validator.last is None or validator.last["step"] != progress.global_step:
                validate(progress.global_step)
            report = {**validator.report(progress.validation_history), "unreadable_photos": sorted(unreadable)}
            write_json_atomically(output_dir / METRICS_FILE, report)
            result["validation"] = report
            say(f"final: LoRA {report['lora']['psnr']:.2f} dB / {report['lora']['ssim']:.4f}, base "
                f"{report['base']['psnr']:.2f} dB / {report['base']['ssim']:.4f}, degraded inputs "
                f"{report['degraded']['psnr']:.2f} dB / {report['degraded']['ssim']:.4f}")
        if is_main:
            try:
                with averaged():
                    result["lora_path"] = str(lora_ops.save_lora(
                        transformer, output_dir, restoration_steps=RESTORATION_STEPS[config.objective]))
            except OSError as error:
                if not is_disk_full(error):
                    raise
                needed = last_checkpoint / LORA_WEIGHT_NAME if last_checkpoint is not None else None
                raise DiskFullError(error.errno, disk_full_message(
                    output_dir / LORA_WEIGHT_NAME, error, needed.stat().st_size if needed else None)
                    + f" The last checkpoint, {last_checkpoint}, holds the trained LoRA; --resume_from_checkpoint "
                    "latest saves it again.") from error
            card = output_dir / MODEL_CARD_FILE
            if card.exists() and MODEL_CARD_TAG not in card.read_text(errors="replace"):
                say(f"left {card} as it is (not a model card of this package); the LoRA's card was not written")
            else:
                write_text_atomically(card, model_card(config, RESTORATION_STEPS[config.objective],
                                                       result["validation"]))
            say(f"LoRA saved to {result['lora_path']} ({progress.global_step} steps, "
                f"{result['steps_per_second']:.2f} steps/s)")
    if is_main and progress.losses:
        save_loss_curve(progress.loss_steps, progress.losses, output_dir / LOSS_CURVE_FILE,
                        progress.validation_history)
    result["checkpoint"] = str(last_checkpoint) if last_checkpoint else None
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def _folder_bytes(folder: Path | None) -> int | None:
    """The size of a checkpoint folder's files (what the next one needs about as much of), or None."""
    if folder is None or not folder.is_dir():
        return None
    return sum(file.stat().st_size for file in folder.iterdir() if file.is_file())


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
    from .. import losses as loss_ops

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
