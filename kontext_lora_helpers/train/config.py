"""A training run's settings: `TrainConfig`, the command line built from it, and the checks that
refuse impossible settings before any model is loaded (`check_config`).

Every setting is one field of `TrainConfig` whose metadata holds its flag's help text, group and
type, so the dataclass, ``--help`` and `command_line` cannot drift apart. Settings whose good value
depends on the model (learning rate, objective, ...) default to None and take their model's entry of
`MODEL_RECIPES` in `check_config`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from .. import degradations as degradation_ops
from ..objective import OBJECTIVES, SIGMA_SCHEMES, WEIGHTING_SCHEMES
from ..cli import non_negative_int, positive_int
from ..data import check_crop_scale, check_resolution
from ..fileio import write_json_atomically
from ..degradations import DegradationConfig
from ..losses import GATES
from ..models import COMPILE_BACKENDS, GUIDANCE_SCALE, QUANTIZE_CHOICES
from ..nano.model import NANO_RESOLUTION
from ..prompts import DEFAULT_INSTANCE_PROMPT, PROMPT_MODES
from .checkpoints import (
    CHECKPOINT_STATE_FILE,
    checkpoint_to_resume,
    list_checkpoints,
    resolve_checkpoint_path,
    saved_settings,
    verify_checkpoint,
)

__all__ = [
    "ConfigError",
    "MODEL_RECIPES",
    "NANO_RECIPE_MEASUREMENTS",
    "RESTORATION_STEPS",
    "RecipeMeasurement",
    "TrainConfig",
    "build_parser",
    "check_config",
    "check_distributed_type",
    "command_line",
    "parse_args",
    "parse_sigma_shift",
    "resolve_validation_dir",
]

MIXED_PRECISION_CHOICES = ("no", "fp16", "bf16")
REPORT_TO_CHOICES = ("none", "tensorboard")
VGG_WEIGHT_CHOICES = ("imagenet", "random")
LR_SCHEDULER_CHOICES = (
    "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
)
REAL_MODEL_RESOLUTION = 512
MODEL_RECIPES: dict[str, dict[str, Any]] = {
    "nano": dict(resolution=NANO_RESOLUTION, learning_rate=3e-3, objective="posterior_mean",
                 sigma_shift=-1.5, crop_scale=(0.25, 1.0), ema_decay=0.99),
    "flux": dict(resolution=REAL_MODEL_RESOLUTION, learning_rate=1e-4, objective="flow_matching",
                 sigma_shift="auto", crop_scale=(1.0, 1.0), ema_decay=0.0),
}
"""The settings whose default depends on the model: a `TrainConfig` field left at None takes its
model's value here ("nano", or "flux" for every other model), filled in by `check_config`.

* nano, each choice made on the validation photos (`tests/benchmarks/bench_recipe.py`: the
  README's command, 500 steps, then `nano check-lora --photos validation`: 24 crops, 28-step
  restorations): every one-setting change validated lower (see `NANO_RECIPE_MEASUREMENTS`).
  ``posterior_mean`` ends the sampler at the average restoration, which PSNR rewards;
  ``sigma_shift -1.5`` puts half the training noise levels below 0.18, where the sampler's last
  steps refine that average; 3e-3 learns more in 500 steps than 1e-3; the weight average and the
  crops of a quarter to all of the short side add a few hundredths of a decibel, about their spread.
* FLUX.1-Kontext-dev: the original guide's learning rate and resolution, and the objective and
  shift it was trained with (``posterior_mean`` is untested at that scale), with the guide's
  whole-side crops.
"""



RESTORATION_STEPS: dict[str, int] = {"posterior_mean": 4, "flow_matching": 28}
"""The denoising steps a LoRA restores with, by its training objective: validation during training
uses them, the saved LoRA file records them (`lora.RESTORATION_STEPS_METADATA_KEY`), and ``restore``
and ``nano check-lora`` default to what the file records.

* ``posterior_mean``: 4, the fewest steps whose restorations of the 24 validation crops score within
  0.1 dB of 28 steps with nano's recipe (`tests/benchmarks/bench_steps.py`, results in
  `tests/benchmarks/results/bench_steps.json`: -0.09 dB, paired std 0.12 dB; 2 steps -0.30, 1 step
  -1.94). The objective trains every point of the sampler's path to aim at one image, so the
  restoration is settled after a few steps. On the 16 test crops, reported only: -0.01 dB against
  28 steps, and the 16 crops restore 5.4x faster than the original guide's snippet.
* ``flow_matching``: 28, FluxKontextPipeline's own default. Nano's flow-matching LoRA scores *higher*
  at fewer steps (22.9 dB at 1 step, 21.5 at 28 on the validation crops): a few coarse steps
  average over the images it could draw instead of drawing one, and PSNR rewards the blur. For a
  LoRA that draws, as on FLUX.1-Kontext-dev, fewer steps trade sharpness for fidelity; that is a
  choice for its user, not a free speed-up.
"""


@dataclass(frozen=True)
class RecipeMeasurement:
    """One choice of nano's recipe and what it measured (see `NANO_RECIPE_MEASUREMENTS`).

    Attributes:
        setting: the `TrainConfig` field, e.g. "objective".
        chosen, alternative: the value in the recipe and the best alternative measured.
        gain_db: (low, high) PSNR gain of the chosen value over the alternative, dB; low == high for
            a single pair of runs.
        evidence: how it was measured, in a sentence.
    """

    setting: str
    chosen: str
    alternative: str
    gain_db: tuple[float, float]
    evidence: str


NANO_RECIPE_MEASUREMENTS: tuple[RecipeMeasurement, ...] = (
    RecipeMeasurement("objective", "posterior_mean", "flow_matching", (3.74, 4.60),
                      "validation: 25.62 against 21.45 dB (flow matching with the recipe's other settings; "
                      "one draw per restoration)"),
    RecipeMeasurement("sigma_shift", "-1.5", "the pipeline's shift (auto)", (0.17, 0.49),
                      "validation: 25.62 against 25.30 dB"),
    RecipeMeasurement("learning_rate", "3e-3", "1e-3", (0.16, 0.28), "validation: 25.62 against 25.40 dB"),
    RecipeMeasurement("ema_decay", "0.99", "0, no average", (0.02, 0.10),
                      "validation: 25.62 against 25.56 dB; earlier runs on other crops gave 0.07-0.09"),
    RecipeMeasurement("crop_scale", "0.25-1", "1, the whole short side", (-0.02, 0.08),
                      "validation: 25.62 against 25.59 dB, within the spread"),
)
"""What each choice of nano's recipe (`MODEL_RECIPES["nano"]`) measured on the **validation**
photos: the README's command (500 steps of batch 4 at 64 px) once as it is and once with one
setting changed, each LoRA restoring the 24 validation crops in 28 steps (`nano check-lora --photos
validation`, PSNR per crop then the mean). ``gain_db`` is the paired gain of the chosen value over
the alternative, mean ± two standard errors over the 24 crops. Measured by
`tests/benchmarks/bench_recipe.py` on 2 CPU cores (results in
`tests/benchmarks/results/bench_recipe.json`); the test photos report the chosen recipe only
(README). None of these is measured on FLUX.1-Kontext-dev, which trains with flow matching
(`MODEL_RECIPES["flux"]`)."""

# Settings that do not change which LoRA a run produces; another run that differs only in these is
# "the same run" for the output-folder check.
BOOKKEEPING_FIELDS = frozenset({
    "output_dir", "resume_from_checkpoint", "report_to", "dataloader_num_workers", "validation_steps",
    "num_validation_images", "validation_dir", "validation_inference_steps", "checkpointing_steps",
    "checkpoints_total_limit", "compile", "compile_backend",
})


class ConfigError(ValueError):
    """Settings that cannot work; raised by `check_config` before any model is loaded."""


# ---------------------------------------------------------------------------------------------
# The settings: one field per flag, its help text in the field's metadata
# ---------------------------------------------------------------------------------------------


def _format_recipe_value(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _setting(default: Any = None, help: str = "", *, group: str, type: Any = None, choices=None,
             switch: bool = False, recipe: bool = False, default_factory=None):
    """A `TrainConfig` field with its command-line flag described in its metadata.

    Args:
        group: the ``--help`` section. type: argparse's converter. choices: allowed values.
        switch: an on/off flag (``--gradient_checkpointing``, no value).
        recipe: the default (None) depends on the model: `MODEL_RECIPES` fills it in, and
            ``--help`` says each model's value.
    """
    metadata = dict(help=help, group=group, type=type, choices=choices, switch=switch, recipe=recipe)
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


_data = partial(_setting, group="model and data")
_optimisation = partial(_setting, group="optimisation")
_lora = partial(_setting, group="LoRA")
_objective = partial(_setting, group="objective")
_memory = partial(_setting, group="memory and precision")
_checkpoints = partial(_setting, group="checkpoints")
_validation = partial(_setting, group="validation and logging")


@dataclass
class TrainConfig:
    """Every setting of a training run; the command line's flags have the same names and meanings
    (``python -m kontext_lora_helpers.train --help`` prints each field's help text).

    The defaults train nano on a 2-core laptop CPU in about four minutes: batch 4, rank 16, 500
    steps, and nano's entry of `MODEL_RECIPES` (64 px, learning rate 3e-3, ``posterior_mean``,
    sigma shift -1.5, crops of 1/4 to all of the short side, weight average 0.99). Fields left at
    None take their model's recipe value when `check_config` resolves the config: the real model
    gets the original guide's 512 px and 1e-4, the flow-matching objective and no average. For
    FLUX.1-Kontext-dev also set the guide's ``gradient_accumulation_steps=4,
    mixed_precision="bf16"`` and see notebook 04 for memory settings.

    ``mixed_precision=None`` takes accelerate's setting (``accelerate config`` / ``launch``), else "no".
    ``validation_dir=None`` uses the course's validation photos when they exist; "none" turns
    validation off. ``sigma_shift``: "auto" (the pipeline's mu for the target token count), "none"
    (unshifted) or a number mu (negative: more low noise levels). ``objective``: "flow_matching"
    (diffusers' Kontext objective: the sampler draws a plausible restoration) or "posterior_mean"
    (it ends at the model's estimate of the average one: higher PSNR; see `objective`).
    """

    # model and data (the original guide's flags)
    pretrained_model_name_or_path: str = _data(
        "nano", "'nano', a diffusers FLUX.1 Kontext folder, or a hub id such as black-forest-labs/FLUX.1-Kontext-dev")
    hr_root: str | None = _data(None, "folder of clean (high-quality) photos, searched recursively (required)")
    output_dir: str = _data("outputs/kontext-restoration-lora", "where weights, checkpoints, metrics and plots go")
    instance_prompt: str = _data(DEFAULT_INSTANCE_PROMPT, "the restoration instruction given with every pair")
    resolution: int | None = _data(None, "square crop side in pixels, a multiple of 16", type=int, recipe=True)
    repeats: int = _data(1, "times each photo appears per epoch", type=positive_int)
    crop_scale: tuple[float, float] | None = _data(
        None, "fraction of a photo's short side one training square covers, or a range 'low,high' drawn per "
        "item (random-resized crops); 1 is a square of the whole short side", recipe=True)
    degradation: DegradationConfig = field(default_factory=DegradationConfig)  # its own flags: degradations.py
    prompt_mode: str = _data("plain", "plain: the instance prompt; described/numeric: it also names the damage done",
                             choices=PROMPT_MODES)
    dataloader_num_workers: int = _data(0, "data-loading worker processes", type=non_negative_int)
    # optimisation (the original guide's flags)
    train_batch_size: int = _optimisation(4, "pairs per process per micro-batch", type=positive_int)
    gradient_accumulation_steps: int = _optimisation(1, "micro-batches per optimizer step", type=positive_int)
    max_train_steps: int = _optimisation(500, "optimizer steps", type=positive_int)
    learning_rate: float | None = _optimisation(None, "AdamW learning rate", type=float, recipe=True)
    lr_scheduler: str = _optimisation("constant", "learning-rate schedule (diffusers' get_scheduler)",
                                      choices=LR_SCHEDULER_CHOICES)
    lr_warmup_steps: int = _optimisation(0, "steps of linear warm-up", type=non_negative_int)
    adam_weight_decay: float = _optimisation(1e-4, "AdamW weight decay", type=float)
    max_grad_norm: float = _optimisation(1.0, "gradient clipping norm (0: off)", type=float)
    seed: int = _optimisation(0, "random seed of the LoRA's initialisation, the crops, sigmas and noise",
                              type=non_negative_int)
    use_8bit_adam: bool = _optimisation(False, "bitsandbytes AdamW8bit (CUDA only)", switch=True)
    # LoRA
    rank: int = _lora(16, "LoRA rank r", type=positive_int)
    lora_alpha: float | None = _lora(None, "scale numerator alpha, the update is scaled by alpha / r "
                                     "(default: the rank, scale 1)", type=float)
    ema_decay: float | None = _lora(None, "export and validate an exponential moving average of the LoRA "
                                    "weights with this decay; 0 turns it off", type=float, recipe=True)
    # objective
    objective: str | None = _objective(
        None, "flow_matching: the sampler draws a plausible clean image (diffusers' objective); "
        "posterior_mean: it returns the model's estimate of the average one (higher PSNR, smoother; one "
        "more forward per step). See kontext_lora_helpers.objective", choices=OBJECTIVES, recipe=True)
    sigma_sampling: str = _objective("logit_normal", "training noise-level density", choices=SIGMA_SCHEMES)
    sigma_shift: str | float | None = _objective(
        None, "'auto' (the pipeline's shift for this resolution), 'none', or a number mu; negative favours "
        "low noise levels", recipe=True)
    weighting_scheme: str = _objective("none", "loss weight per noise level", choices=WEIGHTING_SCHEMES)
    guidance_scale: float = _objective(GUIDANCE_SCALE, "FLUX-dev's distilled guidance input, in training and "
                                       "validation", type=float)
    perceptual_loss: bool = _objective(False, "add the original guide's VGG perceptual term", switch=True)
    perceptual_weight: float = _objective(0.1, "weight of the perceptual term", type=float)
    perceptual_gate: str = _objective("linear", "how the perceptual term is weighted by sigma "
                                      "(see losses.perceptual_term)", choices=GATES)
    vgg_weights: str = _objective("imagenet", "imagenet: torchvision's VGG16 (downloaded once); random: offline "
                                  "CPU demos only", choices=VGG_WEIGHT_CHOICES)
    # memory and precision
    mixed_precision: str | None = _memory(None, "base-model precision and autocast (default: accelerate's "
                                          "config, else no)", choices=MIXED_PRECISION_CHOICES)
    gradient_checkpointing: bool = _memory(False, "recompute activations in backward", switch=True)
    compile: bool = _memory(False, "torch.compile the transformer before training (on 2 CPU cores with nano: "
                            "1.16x faster steps after a 30 s compile, paid back after about 290 steps, before the "
                            "validations' own compile; tests/benchmarks/bench_compile.py)", switch=True)
    compile_backend: str = _memory("inductor", "torch.compile backend: inductor generates fused code; aot_eager "
                                   "only traces (checks that the model compiles, quickly)", choices=COMPILE_BACKENDS)
    quantize: str = _memory("none", "quantize the frozen transformer: nf4 (CUDA, bitsandbytes) or int8 "
                            "(optimum-quanto)", choices=QUANTIZE_CHOICES)
    # checkpoints
    checkpointing_steps: int = _checkpoints(100, "save a checkpoint every N steps (0: never)", type=non_negative_int)
    checkpoints_total_limit: int | None = _checkpoints(None, "keep only the newest N checkpoints", type=positive_int)
    resume_from_checkpoint: str | None = _checkpoints(None, "'latest' or a checkpoint folder")
    # validation and logging
    validation_steps: int = _validation(100, "validate every N steps (0: only before and after training)",
                                        type=non_negative_int)
    num_validation_images: int = _validation(4, "validation photos restored at each validation", type=positive_int)
    validation_dir: str | None = _validation(None, "clean photos never trained on (default: the course's "
                                             "data_samples/validation); 'none' turns validation off")
    validation_inference_steps: int | None = _validation(
        None, "denoising steps of each validation restoration (default: the objective's measured count, "
        "train.RESTORATION_STEPS: 4 for posterior_mean, 28 for flow_matching)", type=positive_int)
    report_to: str = _validation("none", "where to log losses besides the console", choices=REPORT_TO_CHOICES)

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
        return write_json_atomically(path, self.to_dict())

    @classmethod
    def load_json(cls, path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))



class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" except where the field's help already says what None means."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _invoked_as() -> str | None:
    # `kontext-lora train` names itself (cli.py sets argv[0]); `python -m` would show "__main__.py".
    return None if os.path.basename(sys.argv[0] if sys.argv else "").startswith("kontext-lora") \
        else "python -m kontext_lora_helpers.train"


def build_parser() -> argparse.ArgumentParser:
    """The command line, built from `TrainConfig`'s fields: the original guide's flags, diffusers'
    usual ones and the course's options, then the degradation flags."""
    parser = argparse.ArgumentParser(
        prog=_invoked_as(),
        description="Train a FLUX.1 Kontext LoRA that restores degraded photographs (nano or the real model).",
        formatter_class=_HelpFormatter,
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for item in dataclasses.fields(TrainConfig):
        meta = item.metadata
        if "group" not in meta:
            continue
        group = groups.get(meta["group"]) or groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        flag, help_text = f"--{item.name}", meta["help"]
        if meta["recipe"]:
            nano, flux = (_format_recipe_value(MODEL_RECIPES[model][item.name]) for model in ("nano", "flux"))
            help_text = f"{help_text} (default: {nano} for nano, {flux} otherwise)"
        if meta["switch"]:
            group.add_argument(flag, action="store_true", help=help_text)
        else:
            group.add_argument(flag, type=meta["type"], choices=meta["choices"], default=item.default,
                               help=help_text)
    degradation_ops.add_degradation_arguments(parser)
    return parser


def parse_args(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> TrainConfig:
    """Command-line flags -> `TrainConfig` (argparse errors exit with status 2, as usual).

    Args:
        parser: `build_parser()` by default; a command that adds flags of its own to it (the
            pre-flight) passes its parser, and its extra flags are ignored here.
    """
    parser = build_parser() if parser is None else parser
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


def command_line(config: TrainConfig, launcher: str = "python -m") -> str:
    """The shell command that runs `config`: the model, data and output flags always, every other
    setting only where it differs from the default, and the degradation flags (the original guide's five
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
        if item.metadata.get("switch"):
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


def _course_folder(which) -> Path | None:
    try:
        folder = which()
    except FileNotFoundError:
        return None
    return folder if folder.is_dir() else None


def _default_validation_dir() -> Path | None:
    from ..course import validation_dir

    return _course_folder(validation_dir)


def resolve_validation_dir(config: TrainConfig) -> Path | None:
    """The folder this run validates on (default: the course's validation photos), or None for no validation."""
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
    """Folders under --hr_root left out of training: the validation folder and the course's
    validation and test photos (``data_samples/validation``, ``data_samples/held_out``; even with
    validation off, neither is ever trained on)."""
    from ..course import test_dir

    if not config.hr_root:
        return []
    folders = [resolve_validation_dir(config), _default_validation_dir(), _course_folder(test_dir)]
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
    from ..images import find_usable_images
    from ..models import ModelLoadError, model_source, is_nano

    try:
        model_source(config.pretrained_model_name_or_path)
    except ModelLoadError as error:
        raise ConfigError(str(error)) from None

    recipe = MODEL_RECIPES["nano" if is_nano(config.pretrained_model_name_or_path) else "flux"]
    # A resumed run keeps what it was started with, even if the recipe changed since.
    resumed = saved_settings(checkpoint_to_resume(config, say=lambda message: None))  # the loop reports skips
    if resumed:
        recipe = {name: resumed.get(name, _BEFORE_THE_SETTING_EXISTED.get(name, value)) for name, value in recipe.items()}
    changes: dict[str, Any] = {name: value for name, value in recipe.items() if getattr(config, name) is None}
    if config.validation_inference_steps is None:
        changes["validation_inference_steps"] = RESTORATION_STEPS.get(changes.get("objective", config.objective),
                                                                      RESTORATION_STEPS["flow_matching"])
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

    for name, choices in (("prompt_mode", PROMPT_MODES), ("objective", OBJECTIVES),
                          ("sigma_sampling", SIGMA_SCHEMES),
                          ("weighting_scheme", WEIGHTING_SCHEMES), ("lr_scheduler", LR_SCHEDULER_CHOICES),
                          ("perceptual_gate", GATES), ("vgg_weights", VGG_WEIGHT_CHOICES)):
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
    if config.output_dir and _is_inside(Path(config.output_dir).expanduser(), hr_root):
        raise ConfigError(
            f"--output_dir {config.output_dir!r} is inside the training photos (--hr_root {str(hr_root)!r}): its "
            "validation images would become training photos of the next run. Choose a folder outside it.")
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
        path = resolve_checkpoint_path(output_dir, resume)
        if not (path / CHECKPOINT_STATE_FILE).is_file():
            raise ConfigError(
                f"--resume_from_checkpoint {resume!r}: {path} is not a complete checkpoint "
                f"(no {CHECKPOINT_STATE_FILE}); use 'latest' or one of {[p.name for p in list_checkpoints(output_dir)]}."
            )
        problem = verify_checkpoint(path)
        if problem is not None:
            raise ConfigError(f"--resume_from_checkpoint {resume!r}: {path} is damaged ({problem}); use 'latest', "
                              "which skips checkpoints that do not verify, or another checkpoint folder.")
    checkpoints = list_checkpoints(output_dir)
    if not checkpoints or resume:
        return
    # the newest checkpoint whose settings can be read (a damaged one is skipped when resuming too)
    previous = next((settings for checkpoint in reversed(checkpoints) if (settings := saved_settings(checkpoint))), None)
    if previous is None:
        return
    differences = _differences(previous, config.to_dict())
    if differences:
        raise ConfigError(
            f"{output_dir} holds checkpoints of another run with different settings "
            f"({'; '.join(differences[:6])}{' ...' if len(differences) > 6 else ''}). Use another --output_dir, "
            "add --resume_from_checkpoint latest to continue that run, or delete its checkpoint-* folders."
        )
