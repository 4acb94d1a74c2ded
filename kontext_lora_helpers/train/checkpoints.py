"""Checkpoints: a training run's complete state in ``checkpoint-N/``, written so that a kill never
leaves one that looks complete but is not, and read back so that a resumed run continues exactly.

A checkpoint holds the LoRA weights (``pytorch_lora_weights.safetensors``, loadable for inference as
they are) and their moving average when there is one (``ema_lora_weights.safetensors``), the
optimizer, learning-rate scheduler, grad-scaler and random states (``<name>.safetensors``, written by
`statefiles.save_state`: tensors and JSON, no pickle, so resuming a checkpoint someone else made
runs none of its code), and ``training_state.json``: the position in
the data (epoch and batches already used), the loss history and the config. Each is written into
``checkpoint-N.tmp/`` and renamed when complete (``training_state.json`` last). An interrupted and
resumed run ends with the same LoRA as an uninterrupted one (tested with a real kill).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .. import lora as lora_ops
from ..statefiles import load_legacy_pickle, load_state, save_state

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = [
    "CHECKPOINT_PREFIX",
    "CHECKPOINT_STATE_FILE",
    "EMA_WEIGHT_NAME",
    "TrainingProgress",
    "checkpoint_to_resume",
    "latest_checkpoint",
    "list_checkpoints",
    "prune_checkpoints",
    "resolve_checkpoint_path",
    "resume_from",
    "saved_settings",
    "write_checkpoint",
]

CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_STATE_FILE = "training_state.json"
"""Written last inside a checkpoint: a checkpoint folder without it is incomplete."""
EMA_WEIGHT_NAME = "ema_lora_weights.safetensors"
"""A checkpoint's averaged LoRA weights (`lora.LoraEMA`); its ``pytorch_lora_weights.safetensors``
holds the trained ones, which resuming continues from."""


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


def resolve_checkpoint_path(output_dir: Path, name: str) -> Path:
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
    save_state(optimizer.state_dict(), staging / "optimizer.safetensors")
    save_state(lr_scheduler.state_dict(), staging / "scheduler.safetensors")
    save_state(_random_states(), staging / "random_states.safetensors")
    if grad_scaler is not None:
        save_state(grad_scaler.state_dict(), staging / "grad_scaler.safetensors")
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


def prune_checkpoints(output_dir, keep: int | None) -> list[Path]:
    """Delete the oldest complete checkpoints beyond `keep`; returns what was deleted."""
    if not keep:
        return []
    removed = list_checkpoints(output_dir)[:-keep]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def checkpoint_to_resume(config: TrainConfig) -> Path | None:
    """The checkpoint `--resume_from_checkpoint` names ('latest': the newest complete one), or None."""
    if not config.resume_from_checkpoint:
        return None
    output_dir = Path(config.output_dir)
    if config.resume_from_checkpoint == "latest":
        return latest_checkpoint(output_dir)
    return resolve_checkpoint_path(output_dir, config.resume_from_checkpoint)


def saved_settings(checkpoint: Path | None) -> dict:
    """The config a checkpoint was written with, or {} (no checkpoint, or an incomplete one)."""
    state_file = checkpoint / CHECKPOINT_STATE_FILE if checkpoint is not None else None
    if state_file is None or not state_file.is_file():
        return {}
    return json.loads(state_file.read_text()).get("config", {})


def _has_state(checkpoint: Path, name: str) -> bool:
    return (checkpoint / f"{name}.safetensors").is_file() or (checkpoint / f"{name}.pt").is_file()


def _read_state(checkpoint: Path, name: str):
    """A checkpoint's ``<name>.safetensors``, or the ``<name>.pt`` of an earlier version of this
    package, read with `statefiles.load_legacy_pickle` (which refuses anything but a state)."""
    if (checkpoint / f"{name}.safetensors").is_file():
        return load_state(checkpoint / f"{name}.safetensors")
    if (checkpoint / f"{name}.pt").is_file():
        return load_legacy_pickle(checkpoint / f"{name}.pt")
    raise FileNotFoundError(f"checkpoint {checkpoint} has no {name}.safetensors: it is incomplete; resume from "
                            "another checkpoint or start without --resume_from_checkpoint")


def resume_from(path: Path, transformer, optimizer, lr_scheduler, grad_scaler=None,
                ema: lora_ops.LoraEMA | None = None) -> TrainingProgress:
    """Load a checkpoint written by `write_checkpoint` into the run; returns its progress.

    A run with `ema` resumed from a checkpoint that has no average (written without one) starts
    the average from the checkpoint's weights."""
    state = json.loads((path / CHECKPOINT_STATE_FILE).read_text())
    step = int(state.get("global_step", 0))
    if ema is not None and (path / EMA_WEIGHT_NAME).is_file():
        with ema.applied():  # load the file through the adapter, read it back as the average
            lora_ops.load_lora_into(transformer, path, EMA_WEIGHT_NAME)
            ema.load_state_dict({name: p.detach() for name, p in ema.parameters.items()}, step=step)
    lora_ops.load_lora_into(transformer, path)
    if ema is not None and not (path / EMA_WEIGHT_NAME).is_file():
        ema.load_state_dict({name: p.detach() for name, p in ema.parameters.items()}, step=step)
    optimizer.load_state_dict(_read_state(path, "optimizer"))
    lr_scheduler.load_state_dict(_read_state(path, "scheduler"))
    if grad_scaler is not None and _has_state(path, "grad_scaler"):
        grad_scaler.load_state_dict(_read_state(path, "grad_scaler"))
    _restore_random_states(_read_state(path, "random_states"))
    fields = {item.name for item in dataclasses.fields(TrainingProgress)}
    return TrainingProgress(**{key: value for key, value in state.items() if key in fields})
