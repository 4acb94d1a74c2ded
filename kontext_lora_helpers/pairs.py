"""Checks on (control, target) pairs before training on them.

A restoration pair must be pixel-aligned: the degraded control and the clean target show the same
crop, the same flip, the same size. A one-pixel shift teaches the model to move images, not to
restore them, so the course measures it instead of trusting it.
"""

from __future__ import annotations

import torch


def alignment_offset(control: torch.Tensor, target: torch.Tensor, max_shift: int = 3) -> tuple[int, int]:
    """The integer shift (dy, dx) that best lines the control up with the target.

    Both are (3, H, W) tensors in [-1, 1] of the same size. Each candidate shift within
    `max_shift` pixels is scored by the mean squared difference of the overlapping luminance (after
    removing each image's mean, so a brightness change does not count); (0, 0) means aligned.
    """
    if control.shape != target.shape:
        raise ValueError(f"control {tuple(control.shape)} and target {tuple(target.shape)} differ in size.")
    a = control.float().mean(0)
    b = target.float().mean(0)
    height, width = a.shape
    best, best_score = (0, 0), float("inf")
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            a_crop = a[max(dy, 0): height + min(dy, 0), max(dx, 0): width + min(dx, 0)]
            b_crop = b[max(-dy, 0): height + min(-dy, 0), max(-dx, 0): width + min(-dx, 0)]
            score = float(((a_crop - a_crop.mean()) - (b_crop - b_crop.mean())).pow(2).mean())
            if score < best_score - 1e-9:
                best, best_score = (dy, dx), score
    return best
