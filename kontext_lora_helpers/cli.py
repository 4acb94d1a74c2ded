"""The ``kontext-lora`` console command: one entry point for every stage of the course.

``kontext-lora <verb> [flags]`` runs ``python -m kontext_lora_helpers.<module> [flags]``:

=========  ===========================================  =====================================
verb       module                                        does
=========  ===========================================  =====================================
degrade    ``kontext_lora_helpers.degrade``             degrade photos, write PNG + JSON record
train      ``kontext_lora_helpers.train``               train a restoration LoRA
restore    ``kontext_lora_helpers.restore``             restore photos with a trained LoRA
evaluate   ``kontext_lora_helpers.evaluate``            PSNR/SSIM of restored vs reference
export     ``kontext_lora_helpers.export``              convert LoRA weights (diffusers/ComfyUI)
nano       ``kontext_lora_helpers.nano``                the tiny CPU model used by the notebooks
=========  ===========================================  =====================================

Modules are imported only when their verb is used, so ``kontext-lora degrade`` never loads the
training stack, and a verb whose module is missing says so instead of printing a traceback.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["VERBS", "fail", "main", "non_negative_int", "positive_int"]

#: verb -> (module, one-line description)
VERBS: dict[str, tuple[str, str]] = {
    "degrade": ("kontext_lora_helpers.degrade", "degrade photos and write PNGs with JSON records"),
    "train": ("kontext_lora_helpers.train", "train a restoration LoRA (the original guide's flags)"),
    "preflight": ("kontext_lora_helpers.preflight", "memory and s/step of a training run on this machine, no download"),
    "restore": ("kontext_lora_helpers.restore", "restore photos with a trained LoRA"),
    "evaluate": ("kontext_lora_helpers.evaluate", "measure restored images against references"),
    "export": ("kontext_lora_helpers.export", "convert LoRA weights for diffusers or ComfyUI"),
    "nano": ("kontext_lora_helpers.nano", "export or train the tiny CPU model"),
}


def fail(message: str) -> int:
    """Print ``error: message`` on stderr and return exit status 1 (each verb's ``main`` uses it)."""
    print(f"error: {message}", file=sys.stderr)
    return 1


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    import argparse

    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1; got {text}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: a whole number >= 0."""
    import argparse

    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0; got {text}")
    return value


def _usage() -> str:
    lines = ["usage: kontext-lora <verb> [flags]   (kontext-lora <verb> --help for the flags)", "", "verbs:"]
    lines += [f"  {verb:<9} {description}" for verb, (_, description) in VERBS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv[0]`` to its module's ``main(argv[1:])``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"kontext-lora: unknown verb {verb!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name = VERBS[verb][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name == module_name:
            print(
                f"kontext-lora: the '{verb}' command is not available in this version "
                f"(module {module_name} is not installed)",
                file=sys.stderr,
            )
        else:
            print(
                f"kontext-lora: the '{verb}' command needs the package {error.name!r}, which is not "
                "installed (pip install -e '.[dev]' installs everything the course uses)",
                file=sys.stderr,
            )
        return 2
    if not hasattr(module, "main"):
        print(f"kontext-lora: {module_name} has no main() function", file=sys.stderr)
        return 2
    # argparse names the program after sys.argv[0]; "kontext-lora degrade" makes usage lines right.
    program = sys.argv[0] if sys.argv else "kontext-lora"
    saved_argv0 = sys.argv[:1]
    sys.argv[:1] = [f"{program} {verb}"]
    try:
        result = module.main(rest)
    finally:
        sys.argv[:1] = saved_argv0
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
