"""The model card a training run writes beside its LoRA (``README.md``), as diffusers' training
scripts do: what the LoRA restores, how to load it (plain diffusers and the ``restore`` command,
with the denoising steps the file records), how it was trained (the exact command) and what it
scored on the validation photos, with the spread over them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..kontext import GUIDANCE_SCALE
from ..metrics import spread

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = ["MODEL_CARD_FILE", "MODEL_CARD_TAG", "model_card"]

MODEL_CARD_FILE = "README.md"
"""The model card's name in the output folder (the Hugging Face Hub shows it as the model's page).
A ``README.md`` already there that is not such a card (no `MODEL_CARD_TAG`) is left alone."""
MODEL_CARD_TAG = "kontext-lora-helpers"
"""The tag in every card's YAML header: how a run knows a ``README.md`` is a card it may replace."""


def _scores_row(label: str, scores: dict) -> str:
    psnr = spread(scores["psnr_per_image"]) if scores.get("psnr_per_image") else None
    psnr_text = f"{psnr} dB" if psnr is not None else f"{scores['psnr']:.2f} dB"
    return f"| {label} | {psnr_text} | {scores['ssim']:.4f} |"


def _diffusers_snippet(config: TrainConfig, folder: Path, steps: int) -> list[str]:
    """Plain diffusers, as the original guide's inference snippet loads a LoRA."""
    return [
        "import torch",
        "from diffusers import FluxKontextPipeline",
        "from diffusers.utils import load_image",
        "",
        f'pipe = FluxKontextPipeline.from_pretrained("{config.pretrained_model_name_or_path}", '
        'torch_dtype=torch.bfloat16).to("cuda")',
        f'pipe.load_lora_weights("{folder}")',
        f'restored = pipe(image=load_image("old.jpg"), prompt="{config.instance_prompt}",',
        f"                guidance_scale={GUIDANCE_SCALE}, num_inference_steps={steps}).images[0]",
    ]


def _package_snippet(config: TrainConfig, folder: Path, steps: int) -> list[str]:
    """Nano and the random twins have no hub id: the package builds them (`models.load_pipeline`),
    and `models.call_kwargs` gives the size and text length they need."""
    side = config.resolution
    return [
        "from diffusers.utils import load_image",
        "from kontext_lora_helpers.models import call_kwargs, load_pipeline",
        "",
        f'pipe = load_pipeline("{config.pretrained_model_name_or_path}")  # a FluxKontextPipeline',
        f'pipe.load_lora_weights("{folder}")',
        f'photo = load_image("old.jpg").resize(({side}, {side}))',
        f'restored = pipe(image=photo, prompt="{config.instance_prompt}", guidance_scale={GUIDANCE_SCALE},',
        f"                num_inference_steps={steps}, **call_kwargs(pipe, {side}, {side})).images[0]",
    ]


def model_card(config: TrainConfig, restoration_steps: int, report: dict | None = None) -> str:
    """Markdown with a YAML header for the LoRA a run of `config` wrote.

    Args:
        config: the run's resolved settings (`check_config`'s result).
        restoration_steps: the denoising steps the LoRA file records.
        report: metrics.json's content, or None when the run did not validate.
    """
    from ..models import is_nano, model_source
    from .config import command_line

    nano = is_nano(config.pretrained_model_name_or_path)
    built_here = model_source(config.pretrained_model_name_or_path) in ("nano", "random")
    base_model = "nano (kontext_lora_helpers' tiny FLUX.1 Kontext)" if nano else config.pretrained_model_name_or_path
    folder = Path(config.output_dir)
    flags = " ".join(config.degradation.to_cli_flags())
    lines = [
        "---",
        f"base_model: {base_model}",
        "library_name: diffusers",
        *([] if nano else ["license: other", "license_name: flux-1-dev-non-commercial-license"]),
        f"tags: [flux, flux-kontext, lora, image-to-image, image-restoration, {MODEL_CARD_TAG}]",
        f'instance_prompt: "{config.instance_prompt}"',
        "---",
        "",
        f"# {folder.name}: a FLUX.1 Kontext LoRA that restores degraded photographs",
        "",
        f"Trained with `kontext_lora_helpers` on `{base_model}` for {config.max_train_steps} steps, on photos",
        f"degraded by `{flags}`. It restores photos damaged the same way; give it the prompt it was trained with.",
        "",
        "## Use it",
        "",
        "```bash",
        f"python -m kontext_lora_helpers.restore --pretrained_model_name_or_path {config.pretrained_model_name_or_path} "
        "\\",
        f"    --lora_weights {folder} --input photos/ --output restored/",
        "```",
        "",
        f"or in Python (`{restoration_steps}` is the number of denoising steps the LoRA file records):",
        "",
        "```python",
        *(_package_snippet(config, folder, restoration_steps) if built_here else
          _diffusers_snippet(config, folder, restoration_steps)),
        "```",
        "",
        "## Training",
        "",
        "```bash",
        command_line(config),
        "```",
        "",
        f"Objective `{config.objective}`, sigma shift `{config.sigma_shift}`, rank {config.rank}, learning rate "
        f"{config.learning_rate:g}, batch {config.train_batch_size} x {config.gradient_accumulation_steps} at "
        f"{config.resolution} px, weight average {config.ema_decay:g}, seed {config.seed}.",
    ]
    if report is not None:
        lines += [
            "",
            f"## Validation (step {report['step']}, {report['num_images']} validation photos, "
            f"{report['num_inference_steps']} steps)",
            "",
            "| | PSNR (mean ± std over the photos) | SSIM |",
            "|---|---|---|",
            _scores_row("degraded input", report["degraded"]),
            _scores_row("base model", report["base"]),
            _scores_row("base + this LoRA", report["lora"]),
            "",
            "These photos may have chosen settings of the run; a fair figure comes from photos that chose nothing.",
        ]
    return "\n".join(lines) + "\n"
