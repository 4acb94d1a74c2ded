"""Helpers for the course on training FLUX.1 Kontext LoRAs that restore degraded photographs.

The package follows the path of the data, in the order the notebooks teach it; each stage imports
only the stages before it (``tests/test_architecture.py`` keeps it so):

=====  ===========================  =============================================================
stage  modules                      what they hold
=====  ===========================  =============================================================
base   `course`, `fileio`,          where the course's files are; writing files atomically; reading
       `images`, `metrics`, `cli`   photos safely; the one PSNR/SSIM; shared command-line helpers
01     `degradations`, `prompts`,   pure degradation operations, their sampler and presets; the
       `degrade`                    restoration instruction; the ``degrade`` command
02     `data`, `pairs`, `models`,   degraded/clean pairs (`DegDataset`); loading a pipeline (nano,
       `latents`, `nano`,           FLUX.1 Kontext); pixels to tokens; nano Kontext itself; running
       `inference`                  the pipeline on photos (`restore_batch`, the one inference call)
03     `objective`, `losses`,       flow matching and the posterior-mean objective; the VGG term;
       `lora`                       the LoRA: adapter, files, kohya/ComfyUI layout, merging
04     `train`, `gpu_settings`      the training command (config, checkpoints, validation, loop);
                                    settings per GPU
05     `restore`, `classical`,      restoring any size (tiles) with LoRAs; the classical yardstick
       `evaluate`, `export`         (non-local means, TV); scoring folders; exporting for ComfyUI
tools  `nano.train`,                building and checking nano's weights
       `nano.evaluate`
=====  ===========================  =============================================================

Presentation (matplotlib and ipywidgets) lives apart, in `viz`, `viz_degradations`,
`viz_objective`, `viz_training`, `viz_restoration` and `widgets`; no other module imports them at
import time, so the trainer runs headless.

The original guide's names (``docs/original_guide.md``) and the main entry points are importable
from here; each is loaded on first use, so ``import kontext_lora_helpers`` stays cheap::

    from kontext_lora_helpers import DegDataset, apply_degradation, VGGPerceptualLoss
    from kontext_lora_helpers import load_pipeline, TrainConfig, train_lora, restore_image
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> the module that owns it (one home per name; this table only points there).
_INDEX = {
    # 01 degradations
    "DegradationConfig": "degradations",
    "apply_degradation": "degradations",
    "sample_degradation_steps": "degradations",
    "apply_degradation_steps": "degradations",
    "PRESETS": "degradations",
    "restoration_prompt": "prompts",
    # 02 pairs, the model, latents, inference
    "DegDataset": "data",
    "PairedDataset": "data",
    "load_pipeline": "models",
    "GUIDANCE_SCALE": "models",
    "encode": "latents",
    "decode": "latents",
    "pack": "latents",
    "unpack": "latents",
    "restore_batch": "inference",
    # 03 objective, loss, LoRA
    "kontext_flow_matching_step": "objective",
    "kontext_posterior_mean_step": "objective",
    "VGGPerceptualLoss": "losses",
    "add_lora": "lora",
    "save_lora": "lora",
    "read_lora": "lora",
    "convert_lora_file": "lora",
    # 04 training
    "TrainConfig": "train",
    "train_lora": "train",  # `train.train`; the name `train` is the subpackage
    # 05 restoration and metrics
    "load_loras": "restore",
    "restore_image": "restore",
    "restore_images": "restore",
    "evaluate_folders": "evaluate",
    "classical_restore": "classical",
    "psnr": "metrics",
    "ssim": "metrics",
}

_ALIASES = {"train_lora": "train"}

__all__ = sorted(_INDEX)


def __getattr__(name: str):
    """Load an indexed name from its module on first use (PEP 562)."""
    module_name = _INDEX.get(name)
    if module_name is None:
        raise AttributeError(f"module 'kontext_lora_helpers' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module_name}", __name__), _ALIASES.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_INDEX))
