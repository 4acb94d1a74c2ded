"""The ``export`` command: a trained LoRA in the layout ComfyUI loads, back, or merged into the weights.

The formats and the conversion live in `kontext_lora_helpers.lora` (`lora.layouts` explains both
layouts and why ComfyUI gets the kohya one; `lora.merge` the merge); this module is the command.

Command line::

    python -m kontext_lora_helpers.export --lora_weights outputs/lora --format comfyui \\
        --output restoration_comfyui.safetensors
    kontext-lora export --lora_weights restoration_comfyui.safetensors --format diffusers \\
        --output back/pytorch_lora_weights.safetensors
    kontext-lora export --lora_weights outputs/lora --merge_into_transformer nano --output merged.safetensors
"""


from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli import fail
from .fileio import disk_full_message, is_disk_full
from .lora import (
    FORMATS,
    LORA_WEIGHT_NAME,
    LoraFileError,
    check_output_path,
    load_transformer_for_merge,
    merge_lora_into_transformer,
    read_lora,
    save_merged_transformer,
    write_lora,
)

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m kontext_lora_helpers.export``."""
    parser = argparse.ArgumentParser(
        usage="%(prog)s --lora_weights FILE_OR_DIR --format {diffusers,comfyui} --output FILE.safetensors "
        "[--merge_into_transformer MODEL] [--overwrite]",
        description="Convert FLUX.1 Kontext LoRA weights between diffusers' layout and ComfyUI's (kohya "
        "lora_unet_ keys, fused q/k/v), or merge them into the transformer's weights.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--lora_weights", required=True,
                        help=f"a LoRA .safetensors file (either layout) or the folder holding {LORA_WEIGHT_NAME}")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="layout to write: diffusers (lora_A/lora_B) or comfyui (kohya lora_unet_ keys); "
                        "required unless --merge_into_transformer is given")
    parser.add_argument("--output", required=True, help="the .safetensors file to write")
    parser.add_argument("--merge_into_transformer", metavar="MODEL", default=None,
                        help="instead of a LoRA file, write MODEL's transformer with the LoRA folded in "
                        "(MODEL: nano, a diffusers pipeline/transformer folder or a hub id)")
    parser.add_argument("--strength", type=float, default=1.0, help="LoRA multiplier when merging")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None,
                        help="dtype of the merged transformer; unset: float32 for nano, bfloat16 otherwise")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (0 success, 1 error; 2 for bad flags via argparse)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.merge_into_transformer is None and args.format is None:
        parser.error("--format is required (diffusers or comfyui) unless --merge_into_transformer is given")
    if args.merge_into_transformer is None and (args.strength != 1.0 or args.dtype is not None):
        parser.error("--strength and --dtype apply to --merge_into_transformer only; a converted LoRA keeps its scale")
    if args.merge_into_transformer is not None and args.format == "comfyui":
        parser.error(
            "--merge_into_transformer writes a whole transformer with diffusers parameter names, which "
            "ComfyUI's Load Diffusion Model also reads; drop --format or use --format diffusers"
        )
    try:
        layers, source_format = read_lora(args.lora_weights)
        if args.merge_into_transformer is None:
            try:
                output = write_lora(layers, args.output, args.format, overwrite=args.overwrite)
            except OSError as error:
                if not is_disk_full(error):
                    raise
                return fail(disk_full_message(args.output, error, Path(args.lora_weights).stat().st_size))
            ranks = sorted({layer.rank for layer in layers.values()})
            print(f"read {len(layers)} LoRA layers ({source_format} layout, rank {', '.join(map(str, ranks))}); "
                  f"wrote {output} in the {args.format} layout")
            return 0
        output = check_output_path(args.output, args.overwrite)  # fail before loading a large model
    except LoraFileError as error:
        return fail(str(error))
    # Imported here: it imports diffusers, which a plain conversion does not need.
    from .models import ModelLoadError

    try:
        transformer = load_transformer_for_merge(args.merge_into_transformer, args.dtype)
        merged = merge_lora_into_transformer(transformer, layers, strength=args.strength)
        save_merged_transformer(transformer, output, overwrite=args.overwrite)
    except (LoraFileError, ModelLoadError) as error:
        return fail(str(error))
    except OSError as error:
        if not is_disk_full(error):
            raise
        needed = sum(parameter.numel() * parameter.element_size() for parameter in transformer.parameters())
        return fail(disk_full_message(output, error, needed))
    print(f"merged {len(merged)} LoRA layers (strength {args.strength:g}) into the transformer of "
          f"{args.merge_into_transformer}; wrote {output}")
    return 0

if __name__ == "__main__":
    sys.argv[0] = "python -m kontext_lora_helpers.export"  # instead of "export.py" in usage lines
    raise SystemExit(main())
