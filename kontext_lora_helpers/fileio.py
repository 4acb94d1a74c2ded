"""Writing files so that an interrupted run never leaves a half-written one under the final name.

The files the package writes itself (restored and degraded images and their JSON records, metrics,
converted LoRA files, merged transformers, exported settings, training configs, nano's training
checkpoints) go through `write_atomically`: the content is written to ``<name>.partial`` in the same folder, then renamed
over the final name in one step (``os.replace`` is atomic within a file system). A kill during the
write leaves the previous file intact, or no file, plus a ``.partial`` that the next write replaces.
Training checkpoints are folders and are staged the same way in `train.checkpoints`; the LoRA
file a training run ends with is written by diffusers' ``save_lora_weights``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["PARTIAL_SUFFIX", "write_atomically", "write_json_atomically", "write_text_atomically"]

PARTIAL_SUFFIX = ".partial"


def write_atomically(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(temporary)`` on ``<path>.partial``, then rename it to ``path``.

    Args:
        path: the final file; its folder is created if needed.
        write: writes the whole content to the path it is given (for example
            ``lambda p: image.save(p, format="PNG")``: name the format, the suffix is ``.partial``).

    Returns:
        ``path`` as a `Path`. On any error (or Ctrl-C) the temporary file is removed and the error
        raised; a file already at ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + PARTIAL_SUFFIX)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """`write_atomically` for a text file (UTF-8)."""
    return write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def write_json_atomically(path: str | os.PathLike, data: Any, indent: int = 2) -> Path:
    """`write_atomically` for JSON, ending in a newline."""
    return write_text_atomically(path, json.dumps(data, indent=indent) + "\n")
