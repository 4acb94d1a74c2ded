"""`python -m kontext_lora_helpers.nano {export,train,info}` (also `kontext-lora nano ...`).

    export DIR             write nano as a standard diffusers folder (FluxKontextPipeline.from_pretrained(DIR))
                           with a model card, DIR/README.md, that gives the call nano needs
    train vae|editor|all   rebuild the shipped weights on a GPU or the CPU (resumable; see the README for times)
    info                   parameter counts and the files the weights come from
    check-lora DIR         the quality check of a restoration LoRA trained on nano, in plain diffusers
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cli import positive_int
from .model import COMPONENT_FILES, WEIGHTS_DIR


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kontext_lora_helpers.nano", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    export = sub.add_parser("export", help="write nano as a diffusers pipeline folder")
    export.add_argument("output_dir", type=Path)
    export.add_argument("--overwrite", action="store_true", help="replace an existing non-empty folder")

    train = sub.add_parser("train", help="train the nano weights on CPU")
    train.add_argument("stage", choices=["vae", "editor", "all"])
    train.add_argument("--work_dir", type=Path, default=Path("outputs/nano_train"),
                       help="checkpoints and logs; a rerun resumes from here")
    train.add_argument("--weights_dir", type=Path, default=WEIGHTS_DIR,
                       help="where the finished weights are written (default: the package's nano_weights/)")
    train.add_argument("--image_dirs", type=Path, nargs="*", default=None,
                       help="photo folders to crop from (default: the ten data_samples/ photos nano was built from, "
                            "NANO_PHOTOS, plus scikit-image's bundled photos when installed)")
    train.add_argument("--vae_steps", type=int, default=4000)
    train.add_argument("--vae_batch_size", type=int, default=32)
    train.add_argument("--vae_learning_rate", type=float, default=1e-3)
    train.add_argument("--vae_crop_size", type=int, default=32,
                       help="side of the VAE's training crops in pixels (it is fully convolutional)")
    train.add_argument("--vae_degraded_fraction", type=float, default=0.5,
                       help="share of the VAE's training crops degraded first (Real-ESRGAN-style preset), "
                            "so that a copy through the VAE keeps noise and blur")
    train.add_argument("--editor_steps", type=int, default=2500)
    train.add_argument("--editor_batch_size", type=int, default=32)
    train.add_argument("--editor_learning_rate", type=float, default=5e-4)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="auto",
                       help="cpu, cuda, cuda:1, ... (auto: the first GPU when there is one, else the CPU)")

    sub.add_parser("info", help="describe the nano components")

    check = sub.add_parser("check-lora", help="restore test (or validation) crops with and without a trained LoRA "
                           "(plain diffusers)")
    check.add_argument("lora_dir", type=Path, help="the training command's --output_dir")
    check.add_argument("--original_guide_flags", "--seed_flags", dest="original_guide_flags", action="store_true",
                       help="degrade with the original guide's flags (x8 down, noise 0.03, blur 1.2) instead of the "
                       "course's (--seed_flags: the old name)")
    check.add_argument("--photos", choices=("test", "validation"), default="test",
                       help="the 16 test crops (to report; default) or the 24 validation crops (to choose on)")
    check.add_argument("--num_inference_steps", type=positive_int, default=None,
                       help="denoising steps of both restorations (default: what the LoRA records, 4 for nano's "
                       "recipe; 28, the pipeline's default, for files that record none)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "export":
        return _export(args)
    if args.command == "train":
        return _train(args)
    if args.command == "check-lora":
        return _check_lora(args)
    return _info()


def _check_lora(args) -> int:
    from ..lora import LORA_WEIGHT_NAME
    from ..metrics import Spread
    from .evaluate import GUIDE_BAR, RESTORATION_BAR, check_restoration_lora

    if not (args.lora_dir / LORA_WEIGHT_NAME).is_file():
        sys.exit(f"error: {args.lora_dir} holds no {LORA_WEIGHT_NAME}; pass a training --output_dir.")
    result = check_restoration_lora(args.lora_dir, GUIDE_BAR if args.original_guide_flags else RESTORATION_BAR,
                                    photo_set=args.photos, num_inference_steps=args.num_inference_steps)
    spreads = result["spread"]
    print(f"{result['num_images']} {args.photos} crops, {result['num_inference_steps']} steps; "
          "PSNR mean ± std over the crops:")
    for name in ("degraded", "base", "lora"):
        print(f"  {name:9s} {Spread(**spreads[f'{name}_psnr'])} dB")
    for name in ("lora_minus_base_db", "lora_minus_degraded_db"):
        gain = Spread(**spreads[name])
        print(f"  {name:23s} {gain.mean:+.2f} dB (paired std {gain.std:.2f}, standard error {gain.sem:.2f})")
    print(json.dumps({key: value for key, value in result.items() if key != "per_image"}, indent=2))
    return 0


def _export(args) -> int:
    from ..fileio import write_text_atomically
    from .model import MODEL_CARD_NAME, build_nano_pipeline, model_card_text

    out = args.output_dir
    if out.exists() and not out.is_dir():
        sys.exit(f"error: {out} is a file; pass a folder path for the nano pipeline.")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        sys.exit(f"error: {out} is not empty; choose a new folder or pass --overwrite.")
    from transformers.utils import logging as transformers_logging

    pipe = build_nano_pipeline()
    bars_were_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # a bar per text encoder for a few MB
    try:
        pipe.save_pretrained(out, safe_serialization=True)
    finally:
        if bars_were_on:
            transformers_logging.enable_progress_bar()
    # The card travels with the folder: diffusers' defaults (1024 px, 512 tokens) silently give poor output.
    card = write_text_atomically(out / MODEL_CARD_NAME, model_card_text(str(out)))
    print(f"Wrote nano FluxKontextPipeline to {out} (load with FluxKontextPipeline.from_pretrained); "
          f"{card} gives the call nano needs.")
    return 0


def _train(args) -> int:
    import torch

    from .model import VAE_CONFIG, load_nano_components, save_nano_weights

    device = _training_device(args.device)
    vae_factor = 2 ** (len(VAE_CONFIG["block_out_channels"]) - 1)
    if args.vae_crop_size < 4 * vae_factor or args.vae_crop_size % vae_factor:
        sys.exit(f"error: --vae_crop_size must be a multiple of the VAE's factor {vae_factor} and at least "
                 f"{4 * vae_factor}; got {args.vae_crop_size}.")
    if not 0.0 <= args.vae_degraded_fraction <= 1.0:
        sys.exit(f"error: --vae_degraded_fraction is a share of the crops, in [0, 1]; got {args.vae_degraded_fraction}.")
    torch.manual_seed(args.seed)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    # Start from whatever is already trained in the work dir or weights dir (VAE before editor).
    components = load_nano_components(args.weights_dir, allow_missing=True)
    if args.stage in ("vae", "all"):
        from .train import train_vae

        result = train_vae(components, args.work_dir, steps=args.vae_steps, batch_size=args.vae_batch_size,
                           learning_rate=args.vae_learning_rate, seed=args.seed, image_dirs=args.image_dirs,
                           crop_size=args.vae_crop_size, degraded_fraction=args.vae_degraded_fraction,
                           device=device)
        save_nano_weights(components, args.weights_dir, parts=["vae", "text_encoder", "text_encoder_2"])
        print(json.dumps({"vae": result}, indent=2))
    if args.stage in ("editor", "all"):
        if not (args.weights_dir / COMPONENT_FILES["vae"]).exists():
            sys.exit("error: train the VAE first (`nano train vae`): the editor learns in its latent space.")
        from .train import train_editor

        components = load_nano_components(args.weights_dir, allow_missing=True)
        result = train_editor(components, args.work_dir, steps=args.editor_steps,
                              batch_size=args.editor_batch_size, learning_rate=args.editor_learning_rate,
                              seed=args.seed, image_dirs=args.image_dirs, device=device)
        save_nano_weights(components, args.weights_dir, parts=["transformer"])
        print(json.dumps({"editor": result}, indent=2))
    return 0


def _training_device(name: str) -> str:
    """`--device` as a torch device string (auto: the first GPU when there is one); exits with a
    message when it names no usable device."""
    import torch

    from ..models import ModelLoadError, choose_device_and_dtype

    try:
        return str(choose_device_and_dtype(None if name == "auto" else name, torch.float32).device)
    except ModelLoadError as error:  # a CUDA device without a GPU (a RuntimeError too: caught first)
        sys.exit(f"error: --device {name}: {error}")
    except RuntimeError:
        sys.exit(f"error: --device {name!r} is not a device; use cpu, cuda, cuda:N or auto.")


def _info() -> int:
    from .model import build_nano_components

    components = build_nano_components()
    for name in COMPONENT_FILES:
        count = sum(p.numel() for p in components[name].parameters())
        path = WEIGHTS_DIR / COMPONENT_FILES[name]
        status = f"{path.stat().st_size / 1e6:.1f} MB" if path.exists() else "missing"
        print(f"{name:15s} {count / 1e6:6.2f} M parameters   {path.name} ({status})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
