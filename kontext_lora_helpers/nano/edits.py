"""The edits nano's editor learned (and the instructions that must leave an image unchanged).

Nano's transformer was pretrained as a small editor in Kontext's layout: it follows three prompted
edits and returns its input for any other instruction, including the restoration instruction it
never saw. `nano.train` teaches these; `nano.evaluate` measures how well they are followed.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["EDITS", "apply_edit", "random_identity_prompt"]

# Words the identity prompts are drawn from: neither the edits' trigger words nor any restoration
# vocabulary, so "Restore this degraded photograph ..." stays an instruction nano never saw.
_IDENTITY_WORDS = """
a an the this that of to in on at for with and or is it image photo photograph picture scene
please just keep leave same original copy unchanged as do nothing change edit make texture face
portrait cat cup temple sky night day from by into over under very all every more less detail
colour color red green blue yellow warm cool tint contrast saturation sharp quality high
""".split()
_IDENTITY_PHRASES = ("Keep the image unchanged", "Copy this photo", "Leave it as it is", "")

EDITS = {
    "flip": ("Flip the image horizontally", "Mirror the image left to right", "Flip it horizontally"),
    "grayscale": ("Make it black and white", "Convert the photo to grayscale", "Make the image monochrome"),
    "brighten": ("Make the image brighter", "Brighten the photo", "Make it lighter"),
}
"""The prompted edits nano learns, with the phrasings it was trained on."""


def apply_edit(pixels: torch.Tensor, edit: str) -> torch.Tensor:
    """Apply one of `EDITS` (or "identity") to (B, 3, H, W) images in [-1, 1]."""
    if edit == "identity":
        return pixels
    if edit == "flip":
        return pixels.flip(-1)
    if edit == "grayscale":  # BT.601 luma, repeated on the three channels
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=pixels.dtype).view(1, 3, 1, 1)
        return (pixels * weights).sum(1, keepdim=True).expand_as(pixels).contiguous()
    if edit == "brighten":  # lift the tones: 1 - 0.6 (1 - x) on the [0, 1] scale
        unit = (pixels + 1) / 2
        return (1 - 0.6 * (1 - unit)) * 2 - 1
    raise ValueError(f"unknown edit {edit!r}; choose from identity, {', '.join(EDITS)}.")


def random_identity_prompt(rng: np.random.Generator) -> str:
    """An instruction that should leave the image unchanged: a stock phrase or 2-8 random words."""
    if rng.random() < 0.3:
        return _IDENTITY_PHRASES[rng.integers(len(_IDENTITY_PHRASES))]
    words = rng.choice(_IDENTITY_WORDS, size=int(rng.integers(2, 9)))
    return " ".join(words).capitalize()
