"""Checkpoints: a training run's complete state in ``checkpoint-N/``, written so that a kill never
leaves one that looks complete but is not, and read back so that a resumed run continues exactly.

A checkpoint holds the LoRA weights (``pytorch_lora_weights.safetensors``, loadable for inference as
they are) and their moving average when there is one (``ema_lora_weights.safetensors``), the
optimizer, learning-rate scheduler, grad-scaler and random states (``<name>.safetensors``, written by
`statefiles.save_state`: tensors and JSON, no pickle, so resuming a checkpoint someone else made
runs none of its code), and ``training_state.json``: the position in
the data (epoch and batches already used), the loss history and the config. Each is written into
``checkpoint-N.tmp/`` and renamed when complete; ``manifest.json`` (every file's size and SHA-256)
comes second to last and ``training_state.json`` last. A checkpoint whose files do not match its
manifest (a half-copied folder, a truncated file) is skipped with a message naming it, and
``latest`` falls back to the newest one that verifies. An interrupted and resumed run ends with
the same LoRA as an uninterrupted one: `tests/test_faults.py` kills the trainer with SIGKILL at
chosen moments, inside checkpoint writes and the final save included, and resumes each time.
"""

from __future__ import annotations

import dataclasses
import hashlib
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
from ..faults import fault_point
from ..statefiles import load_legacy_pickle, load_state, save_state

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = [
    "CHECKPOINT_PREFIX",
    "CHECKPOINT_STATE_FILE",
    "EMA_WEIGHT_NAME",
    "MANIFEST_FILE",
    "TrainingProgress",
    "checkpoint_to_resume",
    "latest_checkpoint",
    "list_checkpoints",
    "prune_checkpoints",
    "resolve_checkpoint_path",
    "resume_from",
    "saved_settings",
    "verify_checkpoint",
    "write_checkpoint",
]

CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_STATE_FILE = "training_state.json"
"""Written last inside a checkpoint: a checkpoint folder without it is incomplete."""
MANIFEST_FILE = "manifest.json"
"""Inside a checkpoint: {"files": {name: {"bytes": int, "sha256": hex}}} for every file but
``training_state.json`` (which is written after it, and parsed to be checked)."""
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checkpoint(path) -> str | None:
    """What is wrong with a complete-looking checkpoint, or None when it is whole.

    Checks that ``training_state.json`` parses and that every file of ``manifest.json`` is there
    with its recorded size and SHA-256. A checkpoint written before manifests existed (no
    ``manifest.json``) is accepted as it is.

    Returns:
        None, or one sentence naming the first problem (the file and what differs).
    """
    path = Path(path)
    try:
        json.loads((path / CHECKPOINT_STATE_FILE).read_text())
    except (OSError, ValueError) as error:
        return f"{CHECKPOINT_STATE_FILE} cannot be read ({type(error).__name__}: {error})"
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        return None
    try:
        files = json.loads(manifest_path.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{MANIFEST_FILE} cannot be read ({type(error).__name__}: {error})"
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != expected["bytes"]:
            return f"{name} has {size} bytes, the manifest says {expected['bytes']}"
        if _sha256(file) != expected["sha256"]:
            return f"{name} does not match its SHA-256 in the manifest (changed or damaged)"
    return None


def latest_checkpoint(output_dir, say=None) -> Path | None:
    """The newest complete checkpoint that verifies (`verify_checkpoint`), or None.

    Args:
        say: called with one message for each newer checkpoint that fails verification and is
            skipped (default: `warnings.warn`).
    """
    for checkpoint in reversed(list_checkpoints(output_dir)):
        problem = verify_checkpoint(checkpoint)
        if problem is None:
            return checkpoint
        message = f"skipping {checkpoint}: {problem}; resuming from the newest checkpoint that verifies instead"
        if say is None:
            import warnings

            warnings.warn(message, stacklevel=2)
        else:
            say(message)
    return None


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
    writers = [lambda: lora_ops.save_lora(transformer, staging)]
    if ema is not None:
        def save_average():
            with ema.applied():
                lora_ops.save_lora(transformer, staging, weight_name=EMA_WEIGHT_NAME)
        writers.append(save_average)
    writers += [lambda: save_state(optimizer.state_dict(), staging / "optimizer.safetensors"),
                lambda: save_state(lr_scheduler.state_dict(), staging / "scheduler.safetensors"),
                lambda: save_state(_random_states(), staging / "random_states.safetensors")]
    if grad_scaler is not None:
        writers.append(lambda: save_state(grad_scaler.state_dict(), staging / "grad_scaler.safetensors"))
    try:
        for write in writers:
            write()
            fault_point("checkpoint_file")
        files = {file.name: {"bytes": file.stat().st_size, "sha256": _sha256(file)}
                 for file in sorted(staging.iterdir()) if file.is_file()}
        (staging / MANIFEST_FILE).write_text(json.dumps({"files": files}, indent=1) + "\n")
        fault_point("checkpoint_file")
        (staging / CHECKPOINT_STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")
        fault_point("checkpoint_file")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a failed write (a full disk) leaves no half checkpoint
        raise
    replaced = None
    if final.exists():
        replaced = final.with_name(final.name + ".old")
        shutil.rmtree(replaced, ignore_errors=True)
        os.replace(final, replaced)
    os.replace(staging, final)
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
    fault_point("checkpoint_done")
    return final


def prune_checkpoints(output_dir, keep: int | None) -> list[Path]:
    """Delete the oldest complete checkpoints beyond `keep`; returns what was deleted."""
    if not keep:
        return []
    removed = list_checkpoints(output_dir)[:-keep]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def checkpoint_to_resume(config: TrainConfig, say=None) -> Path | None:
    """The checkpoint `--resume_from_checkpoint` names ('latest': the newest one that verifies,
    `latest_checkpoint`, which reports each one it skips through `say`), or None."""
    if not config.resume_from_checkpoint:
        return None
    output_dir = Path(config.output_dir)
    if config.resume_from_checkpoint == "latest":
        return latest_checkpoint(output_dir, say=say)
    return resolve_checkpoint_path(output_dir, config.resume_from_checkpoint)


def saved_settings(checkpoint: Path | None) -> dict:
    """The config a checkpoint was written with, or {} (no checkpoint, an incomplete or a damaged one)."""
    state_file = checkpoint / CHECKPOINT_STATE_FILE if checkpoint is not None else None
    if state_file is None or not state_file.is_file():
        return {}
    try:
        return json.loads(state_file.read_text()).get("config", {})
    except (OSError, ValueError):  # a damaged checkpoint: `verify_checkpoint` says what is wrong
        return {}


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
