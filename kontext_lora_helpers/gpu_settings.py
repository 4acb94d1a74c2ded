"""Training settings for FLUX.1-Kontext-dev on the GPUs people have: Colab's T4 and L4, and an A100.

Each entry says which `TrainConfig` settings fit the card and how much memory to expect, and marks
every figure with where it comes from:

* **computed**: parameter count x bytes per parameter (weights only; exact up to quantization
  block overhead). FLUX.1 Kontext's transformer has 11.9 B parameters, T5-XXL's encoder 4.76 B,
  CLIP-L's text model 0.12 B, the VAE 0.08 B.
* **reported**: a peak that others measured for a comparable run (see `SOURCES`); Kontext trains
  on target + control tokens, so a 512x512 Kontext step has about as many image tokens (2 x 1024)
  as a 512x768 text-to-image FLUX step (1536) plus the 512 text tokens.
* **estimate**: our extrapolation from the two above; treat it as a starting point and read the
  real peak from ``torch.cuda.max_memory_allocated()`` (the GPU benchmark in ``tests/benchmarks/``
  measures it for the full-size architecture).

What makes a card fit:

* ``quantize="nf4"`` stores the frozen transformer in 4 bits plus one float32 scale per block of 64
  weights (0.5625 bytes a parameter, as `models.load_pipeline` configures bitsandbytes): 23.8 GB of
  bf16 weights become about 6.7 GB (`weight_memory_gb("transformer", "nf4")`). The LoRA stays
  float32.
* Cached prompt embeddings, before the transformer loads: the trainer loads CLIP and T5-XXL alone,
  encodes every prompt it knows (the instance prompt and the validation prompts), frees them
  (``prompt_mode="plain"``; described/numeric prompts keep them on the CPU for new phrasings) and
  only then loads the transformer and the VAE (`train.loop.load_pipeline_and_prompt_cache`). So
  T5-XXL (9.5 GB in bf16/fp16) never shares the GPU with the transformer, not even while loading:
  on a T4 the 6.7 GB NF4 transformer and T5 come one after the other, not 16.5 GB at once.
* ``gradient_checkpointing=True`` keeps one activation per block instead of every intermediate.
* ``use_8bit_adam=True`` halves and quarters the optimizer state; it is small for a LoRA either way.
* The T4 (compute capability 7.5) has no native bf16: it computes in fp16 (`models.choose_device_and_dtype`
  decides by compute capability, because ``torch.cuda.is_bf16_supported()`` says True on a T4).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "CPU_TWIN_SETTINGS", "GPU_SETTINGS", "NOTEBOOK_TWIN_STEPS", "SOURCES", "GpuSettings", "detect_gpu",
    "notebook_lora", "notebook_settings", "run_settings", "settings_for_gpu", "settings_table", "weight_memory_gb",
]

PARAMETERS = {
    "transformer": 11.9e9,
    "t5_xxl_encoder": 4.76e9,
    "clip_l_text": 0.123e9,
    "vae": 0.084e9,
}
"""Parameter counts of FLUX.1-Kontext-dev's components."""

BYTES_PER_PARAMETER = {"bf16": 2.0, "fp16": 2.0, "int8": 1.0, "nf4": 0.5 + 4 / 64}
"""Storage per parameter; nf4 is 4 bits plus bitsandbytes' float32 scale per block of 64 weights
(no double quantization, as `models.load_pipeline` configures it). Counting every transformer
parameter as quantized slightly overstates it (norms and biases stay in bf16, a few MB)."""

SOURCES = {
    "qlora-4090": "FLUX.1-dev QLoRA (NF4 base, 8-bit AdamW, checkpointing, cached latents and embeddings, "
                  "rank 4, 512x768): about 9 GB peak on an RTX 4090, about 3.5 s/step; about 4 h for the "
                  "same run on a Colab T4 (Hugging Face blog, 'Fine-tuning FLUX.1-dev on consumer hardware').",
    "kontext-1024": "Kontext LoRA at 1024 px (4096 + 4096 + 512 tokens): about 24 GB with an int8 base; about "
                    "40 GB unquantized with gradient checkpointing; 'may OOM at 1024 with 24 GB' "
                    "(community trainers' issue threads; ai-toolkit's 24 GB example trains at 512-768 px).",
}


def weight_memory_gb(component: str, precision: str) -> float:
    """Memory for one component's weights in GB (1e9 bytes): parameters x bytes per parameter."""
    return PARAMETERS[component] * BYTES_PER_PARAMETER[precision] / 1e9


@dataclass(frozen=True)
class GpuSettings:
    """One GPU's recommended settings and the memory to expect.

    Attributes:
        name: short name ("T4", "L4", "A100-40GB").
        memory_gb: the card's memory.
        compute_capability: (major, minor); bf16 is native from 8.0.
        settings: `TrainConfig` fields for FLUX.1-Kontext-dev on this card.
        transformer_weights_gb: computed from `PARAMETERS` and the quantization.
        expected_peak_gb: (low, high) estimate of the training peak.
        basis: how `expected_peak_gb` was obtained, naming a `SOURCES` key.
    """

    name: str
    memory_gb: int
    compute_capability: tuple[int, int]
    settings: dict = field(default_factory=dict)
    expected_peak_gb: tuple[float, float] = (0.0, 0.0)
    basis: str = ""

    @property
    def native_bf16(self) -> bool:
        return self.compute_capability[0] >= 8

    @property
    def transformer_weights_gb(self) -> float:
        precision = self.settings.get("quantize", "none")
        if precision == "none":
            precision = self.settings.get("mixed_precision", "bf16")
        return weight_memory_gb("transformer", precision)


_COMMON = dict(
    pretrained_model_name_or_path="black-forest-labs/FLUX.1-Kontext-dev",
    train_batch_size=1,
    gradient_accumulation_steps=4,
    learning_rate=1e-4,
    gradient_checkpointing=True,
    rank=16,
    max_train_steps=1000,
    checkpointing_steps=250,
    validation_steps=250,
)

GPU_SETTINGS: dict[str, GpuSettings] = {
    "T4": GpuSettings(
        "T4", 16, (7, 5),
        dict(_COMMON, resolution=512, mixed_precision="fp16", quantize="nf4", use_8bit_adam=True),
        expected_peak_gb=(9.0, 12.0),
        basis="estimate from 'qlora-4090' (same NF4 + 8-bit Adam + checkpointing recipe, a similar token "
              f"count at 512 px); the weights are {weight_memory_gb('transformer', 'nf4'):.1f} GB (computed). "
              "Expect hours: the source's whole 700-step text-to-image run took about 4 h on a T4, and a "
              "Kontext step reads twice the image tokens of a text-to-image step at the same size.",
    ),
    "L4": GpuSettings(
        "L4", 24, (8, 9),
        dict(_COMMON, resolution=512, mixed_precision="bf16", quantize="nf4", use_8bit_adam=True),
        expected_peak_gb=(9.0, 12.0),
        basis="estimate from 'qlora-4090' at 512 px; 768 px fits with the same settings, 1024 px is at the "
              "limit ('kontext-1024': about 24 GB even with an int8 base).",
    ),
    "A100-40GB": GpuSettings(
        "A100-40GB", 40, (8, 0),
        dict(_COMMON, resolution=512, mixed_precision="bf16", quantize="none"),
        expected_peak_gb=(27.0, 32.0),
        basis="computed 23.8 GB of bf16 transformer weights plus activations with checkpointing; "
              "'kontext-1024' reports about 40 GB unquantized at 1024 px, so stay at 512-768 px or use "
              "quantize='int8' for 1024 px.",
    ),
}


def settings_for_gpu(name: str, **overrides):
    """A `train.TrainConfig` with `GPU_SETTINGS[name]`'s settings and `overrides` on top.

    Example: ``settings_for_gpu("T4", hr_root="my_photos", output_dir="outputs/t4-run")``.
    """
    from .train import TrainConfig

    try:
        entry = GPU_SETTINGS[name]
    except KeyError:
        raise ValueError(f"no settings for GPU {name!r}; known: {', '.join(GPU_SETTINGS)}") from None
    return TrainConfig(**{**entry.settings, **overrides})


def detect_gpu() -> str | None:
    """The `GPU_SETTINGS` key for the visible CUDA GPU (by its name), or None (no GPU, or another card)."""
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0).upper()
    if "T4" in name:
        return "T4"
    if "L4" in name:
        return "L4"
    if "A100" in name:
        return "A100-40GB"
    return None


def settings_table() -> str:
    """The settings and memory figures of every GPU as a markdown table."""
    lines = [
        "| GPU | memory | precision | base | resolution | batch x accumulation | transformer weights (computed) | expected peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in GPU_SETTINGS.values():
        s = entry.settings
        lines.append(
            f"| {entry.name} | {entry.memory_gb} GB | {s['mixed_precision']} | {s['quantize']} | {s['resolution']} px "
            f"| {s['train_batch_size']} x {s['gradient_accumulation_steps']} | {entry.transformer_weights_gb:.1f} GB "
            f"| {entry.expected_peak_gb[0]:.0f}-{entry.expected_peak_gb[1]:.0f} GB |"
        )
    return "\n".join(lines)


NOTEBOOK_NANO_STEPS = 120
"""Steps of notebook 04's nano run: the recipe's settings in about 1.7 minutes on 2 CPU cores, so
the course stays quick to run; the README's command trains the recipe's full 500 steps."""

NOTEBOOK_STEPS_VARIABLE = "KONTEXT_LORA_NOTEBOOK_STEPS"
"""An environment variable that shortens the notebooks' nano training runs to this many steps (and
their validations to `SHORTENED_VALIDATION_STEPS` denoising steps). The test suite sets it
(`tests/conftest.py`) so that nbval executes every cell of the course in less time; the stored
notebooks and the README's times are full runs, without it."""


SHORTENED_VALIDATION_STEPS = 2
"""Denoising steps of each validation restoration in the runs `NOTEBOOK_STEPS_VARIABLE` shortens: a
LoRA of a few steps is barely trained, and its validation only has to run (fewer steps than the
recipe's `train.RESTORATION_STEPS`)."""


def notebook_runs_shortened() -> bool:
    """Whether `NOTEBOOK_STEPS_VARIABLE` shortens the notebooks' training runs (the test suite)."""
    import os

    return bool(os.environ.get(NOTEBOOK_STEPS_VARIABLE, ""))


def notebook_nano_steps() -> int:
    """`NOTEBOOK_NANO_STEPS`, or the smaller number `NOTEBOOK_STEPS_VARIABLE` asks for."""
    import os

    value = os.environ.get(NOTEBOOK_STEPS_VARIABLE, "")
    if not value:
        return NOTEBOOK_NANO_STEPS
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{NOTEBOOK_STEPS_VARIABLE} must be a whole number of steps >= 1; got {value!r}")
    return min(int(value), NOTEBOOK_NANO_STEPS)


NOTEBOOK_TWIN_STEPS = 4
"""Steps of notebook 04's run of ``random-kontext-shallow`` on a CPU. The twin has random weights, so
its run shows that every stage of the real model's training step works at the real width (and what
it costs), not what it learns; a few steps show that."""

CPU_TWIN_SETTINGS = dict(
    gradient_accumulation_steps=1, checkpointing_steps=0, validation_steps=0, num_validation_images=2,
    validation_inference_steps=4,
)
"""How notebooks 04 and 05 train ``random-kontext-shallow`` where there is no GPU, besides the crop
size, batch and gradient checkpointing of `run_settings` on a CPU (64 px, 1, on): no accumulation,
validation before and after the run only, on two photos with four denoising steps (each step of
the twin runs width 3072: seconds on a CPU)."""


def notebook_settings(model: str, **overrides):
    """The training settings notebooks 04 and 05 use (05 retrains with them when 04 has not run).

    nano: the recipe's defaults with `notebook_nano_steps()` steps (and, in runs the test suite
    shortens, `SHORTENED_VALIDATION_STEPS` per validation). ``random-kontext-shallow`` on a machine
    without a GPU: `CPU_TWIN_SETTINGS` for `NOTEBOOK_TWIN_STEPS` steps. Any other model: the entry
    of the GPU this machine has (`detect_gpu`), or the A100's when none is recognised.
    `overrides` go on top (``hr_root``, ``output_dir``, ``degradation``...).
    """
    from .models import is_nano
    from .random_kontext import is_shallow_twin
    from .train import TrainConfig

    overrides = {**overrides, "pretrained_model_name_or_path": model}
    if is_nano(model):
        shortened = {"validation_inference_steps": SHORTENED_VALIDATION_STEPS} if notebook_runs_shortened() else {}
        return TrainConfig(**{"max_train_steps": notebook_nano_steps(), **shortened, **overrides})
    run = run_settings(model)
    if is_shallow_twin(model) and run.card == "CPU":
        sizes = dict(resolution=run.resolution, train_batch_size=run.batch_size,
                     gradient_checkpointing=run.gradient_checkpointing)
        steps = min(NOTEBOOK_TWIN_STEPS, notebook_nano_steps())
        return TrainConfig(**{**_COMMON, **sizes, **CPU_TWIN_SETTINGS, "max_train_steps": steps, **overrides})
    return settings_for_gpu(detect_gpu() or "A100-40GB", **overrides)



def notebook_lora(model: str, lora_dir, degradation, hr_root=None):
    """The folder of notebook 04's LoRA, trained here first if it is not there yet.

    Each Colab notebook runs on a machine of its own, so notebook 05 (and the exercise solutions)
    may not find what notebook 04 trained. Then this trains it with exactly notebook 04's settings
    (`notebook_settings`) into the same folder and says so; an interrupted run there is continued
    from its last checkpoint. When the LoRA file exists, nothing is trained.

    Args:
        model: the notebook's `MODEL`.
        lora_dir: notebook 04's output folder (str or Path).
        degradation: the `DegradationConfig` notebook 04 trained on.
        hr_root: the training photos (default: the course's `data_samples/`).

    Returns:
        `lora_dir` as a Path.
    """
    from pathlib import Path

    from .course import data_samples
    from .lora import LORA_WEIGHT_NAME
    from .train import train

    lora_dir = Path(lora_dir)
    if not (lora_dir / LORA_WEIGHT_NAME).is_file():
        config = notebook_settings(model, hr_root=str(hr_root or data_samples()), output_dir=str(lora_dir),
                                   degradation=degradation)
        print(f"{lora_dir} holds no LoRA yet (notebook 04 has not run on this machine): training it "
              f"with notebook 04's settings, {config.max_train_steps} steps")
        train(config.replace(resume_from_checkpoint="latest"), progress_bar=False)
    return lora_dir

@dataclass(frozen=True)
class RunSettings:
    """How a notebook loads and runs its model on this machine, chosen by `run_settings`.

    Attributes:
        model: the `MODEL` the notebook names.
        card: the `GPU_SETTINGS` key of the detected GPU, "GPU" for another one, or "CPU".
        quantize: "none", "nf4" or "int8" (the frozen transformer; `models.QUANTIZE_CHOICES`).
        text_encoder_offload: CLIP and T5 stay on the CPU and visit the GPU only while they run.
        vae_slicing, vae_tiling: decode a batch image by image / a large image tile by tile.
        gradient_checkpointing: recompute activations in backward (notebook 03's backward passes).
        resolution: the side notebooks 02 and 03 crop their photos to (None: the model's native side).
        batch_size: images per batch in notebooks 02 and 03.
    """

    model: str
    card: str
    quantize: str = "none"
    text_encoder_offload: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    gradient_checkpointing: bool = False
    resolution: int | None = None
    batch_size: int = 4

    def pipeline_kwargs(self) -> dict:
        """The keyword arguments of `models.load_pipeline` (device and dtype are chosen there)."""
        return dict(quantize=self.quantize, text_encoder_offload=self.text_encoder_offload,
                    vae_slicing=self.vae_slicing, vae_tiling=self.vae_tiling)

    def __str__(self) -> str:
        options = [name for name in ("text_encoder_offload", "vae_slicing", "vae_tiling", "gradient_checkpointing")
                   if getattr(self, name)]
        return (f"{self.model} on {self.card}: {self.quantize} base, "
                f"{self.resolution or 'native'} px, batch {self.batch_size}"
                + (f", {', '.join(options)}" if options else ""))


def run_settings(model: str, gpu: str | None = "detect", memory_gb: float | None = None) -> RunSettings:
    """The `RunSettings` for `model` on this machine (or on the card named by `gpu`).

    nano (and the CPU-sized twin ``random-kontext-shallow``) run as they are. The real model:

    * 40 GB and more (A100, H100): bf16 base (23.8 GB), text encoders offloaded while training-size
      activations are about;
    * 20-40 GB (L4, RTX 4090): NF4 base (about 6.7 GB), text encoders offloaded, VAE slicing and tiling;
    * under 20 GB (T4): the same, batch 1.

    Args:
        gpu: "detect" (the visible GPU), a `GPU_SETTINGS` key, or None for no GPU.
        memory_gb: the card's memory when `gpu` is another name (read from the device when detected).
    """
    import torch

    from .models import is_nano
    from .random_kontext import is_shallow_twin

    if gpu == "detect":
        gpu = detect_gpu() or ("GPU" if torch.cuda.is_available() else None)
        if gpu == "GPU" and memory_gb is None:
            memory_gb = torch.cuda.get_device_properties(0).total_memory / 1e9
    if gpu in GPU_SETTINGS:
        memory_gb = GPU_SETTINGS[gpu].memory_gb
    card = gpu or "CPU"
    if is_nano(model):
        return RunSettings(model, card)
    if is_shallow_twin(model) or gpu is None:
        # on a CPU only the shallow twin is affordable: small crops, one image at a time
        return RunSettings(model, card, resolution=64, batch_size=1, gradient_checkpointing=True)
    if (memory_gb or 0) >= 40:
        return RunSettings(model, card, text_encoder_offload=True, gradient_checkpointing=True,
                           resolution=512, batch_size=2)
    return RunSettings(model, card, quantize="nf4", text_encoder_offload=True, vae_slicing=True, vae_tiling=True,
                       gradient_checkpointing=True, resolution=512, batch_size=1 if (memory_gb or 0) < 20 else 2)
