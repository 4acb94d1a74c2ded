"""Command line: degrade a photo or a folder of photos and keep a record of what was done.

Use it to look at a degradation recipe on your own photos before training with it, or to build a
fixed, inspectable set of degraded inputs for evaluation::

    python -m kontext_lora_helpers.degrade --input data_samples/held_out --output outputs/degraded \\
        --degradation_types downsample,noise,blur,jpeg --lr_scale 4 --noise_level 0.01,0.05 --seed 0
    kontext-lora degrade --input photo.jpg --output outputs/old --preset old_photo --seed 1

The degradation flags are the training command's (``add_degradation_arguments`` defines both), so
a recipe tried here is pasted unchanged into ``train``. Every parameter takes a value or a
``low,high`` range; ``--preset`` starts from a ready-made recipe that other flags override.

For every input image ``IN/sub/name.ext`` two files are written:

* ``OUT/sub/name.png``: the degraded image (PNG, so nothing is added by saving), same size;
* ``OUT/sub/name.json``: the record of the operations applied with every drawn value, the
  config, the seeds and the equivalent flags. ``apply_degradation_steps(image, json["record"])``
  reproduces the PNG exactly.

Each image's randomness comes from ``--seed`` and its relative path, so an image gets the same
degradation whatever else is in the folder. Existing outputs are never overwritten unless
``--overwrite`` is given; unusable files are skipped with a warning each (see ``images.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .cli import fail
from .fileio import output_is_input_folder, overwrites_its_input, write_atomically, write_json_atomically
from .degradations import (
    DegradationConfig,
    add_degradation_arguments,
    apply_degradation_steps,
    config_from_args,
    sample_degradation_steps,
)
from .images import UnusableImageError, find_usable_images, load_rgb, validate_image

__all__ = ["build_parser", "degrade_image_file", "image_seed", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m kontext_lora_helpers.degrade``."""
    parser = argparse.ArgumentParser(
        usage="%(prog)s --input FILE_OR_DIR --output DIR [--preset NAME] [degradation flags] [--seed N]",
        description="Degrade an image or a folder of images; write PNGs and JSON records of what was done.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--input", required=True, help="an image file or a folder (searched recursively)")
    parser.add_argument("--output", required=True, help="folder for the degraded PNGs and their JSON records")
    parser.add_argument("--seed", type=int, default=0, help="base random seed (>= 0)")
    parser.add_argument(
        "--exclude", nargs="*", default=[], help="files or folders under --input to leave out"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_degradation_arguments(parser)
    return parser


def image_seed(seed: int, relative_path: str) -> int:
    """The seed for one image: a hash of the base seed and its relative path (POSIX form).

    A hash rather than the image's position in the folder, so adding or removing other files does
    not change how this one is degraded. ``hashlib`` is the same on every machine and Python run
    (the built-in ``hash`` of a string is not).
    """
    # surrogateescape: a file name that is not UTF-8 hashes as its own bytes (UTF-8 names are unchanged)
    digest = hashlib.sha256(f"{seed}/{relative_path}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # 63 bits: a plain JSON integer


def degrade_image_file(source: Path, config: DegradationConfig, seed: int):
    """Load ``source`` (upright RGB) and degrade it; returns ``(degraded, record, size)``."""
    clean = load_rgb(source)
    steps = sample_degradation_steps(config, np.random.default_rng(seed))
    degraded, record = apply_degradation_steps(clean, steps)
    return degraded, record, clean.size



def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (0 success, 1 error; 2 for bad flags via argparse)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    if args.seed < 0:
        parser.error(f"--seed must be >= 0; got {args.seed}")

    source_root = Path(args.input).expanduser()
    output_root = Path(args.output).expanduser()
    if output_root.exists() and not output_root.is_dir():
        parser.error(f"--output {str(output_root)!r} is an existing file; give a folder")
    if not source_root.exists():
        return fail(f"--input {str(source_root)!r} does not exist")
    if refusal := output_is_input_folder(source_root, output_root):
        return fail(refusal)

    if source_root.is_file():
        try:
            validate_image(source_root)
        except UnusableImageError as error:
            return fail(f"cannot use --input: {error}")
        sources = [(source_root, source_root.name)]
    else:
        # Leave the output folder out in case it lives inside the input folder (a second run would
        # otherwise degrade the degraded images).
        try:
            infos = find_usable_images(source_root, [*args.exclude, output_root])
        except ValueError as error:
            return fail(str(error))
        sources = [(info.path, info.path.relative_to(source_root).as_posix()) for info in infos]

    jobs = []
    claimed: dict[Path, str] = {}
    for source, relative in sources:
        image_path = output_root / Path(relative).with_suffix(".png")
        if refusal := overwrites_its_input(source, image_path):
            return fail(refusal)
        if image_path in claimed:
            return fail(
                f"{claimed[image_path]} and {relative} would both be written to {image_path}; rename one"
            )
        claimed[image_path] = relative
        jobs.append((source, relative, image_path, image_path.with_suffix(".json")))

    if not args.overwrite:
        existing = [str(path) for _, _, image, record in jobs for path in (image, record) if path.exists()]
        if existing:
            shown = ", ".join(existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
            return fail(
                f"{len(existing)} output file(s) already exist ({shown}); pass --overwrite to replace them"
            )

    output_root.mkdir(parents=True, exist_ok=True)
    progress = tqdm(jobs, desc="degrading", unit="image", disable=source_root.is_file())
    for source, relative, image_path, record_path in progress:
        seed = image_seed(args.seed, relative)
        try:
            degraded, record, size = degrade_image_file(source, config, seed)
        except UnusableImageError as error:  # changed on disk since it was checked
            return fail(str(error))
        image_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(image_path, lambda temporary: degraded.save(temporary, format="PNG"))
        description = {
            "source": str(source),
            "output": image_path.name,
            "size": list(size),
            "seed": args.seed,
            "image_seed": seed,
            "record": record,
            "config": config.to_dict(),
            "cli_flags": config.to_cli_flags(),
        }
        write_json_atomically(record_path, description)
    print(f"wrote {len(jobs)} degraded image(s) and their JSON records to {output_root}")
    return 0


if __name__ == "__main__":
    sys.argv[0] = "python -m kontext_lora_helpers.degrade"  # instead of "degrade.py" in usage lines
    raise SystemExit(main())
