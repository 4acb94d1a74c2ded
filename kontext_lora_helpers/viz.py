"""Pictures for the notebooks: image rows, grids, latent channels, the Kontext token sequence.

Presentation only (matplotlib); the core modules never import this one, so training runs headless.
Every function returns its `Figure` so a notebook cell shows it and a script can save it.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image

from .data import tensor_to_pil


def to_pil(image) -> Image.Image:
    """A PIL RGB image from a PIL image, a (3, H, W) / (1, 3, H, W) tensor in [-1, 1], or an
    (H, W, 3) uint8 array."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        return tensor_to_pil(image[0] if image.ndim == 4 else image)
    return Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")


def show_images(images, titles=None, scale: float = 2.6, zoom_box=None, suptitle: str | None = None):
    """One row of images with titles; optional second row with the same crop of each.

    Args:
        images: PIL images or tensors (see `to_pil`), shown without interpolation so pixels stay pixels.
        titles: one string per image.
        zoom_box: (left, top, right, bottom) in pixels of the first image; adds a zoomed row.
    """
    pictures = [to_pil(im) for im in images]
    rows = 2 if zoom_box else 1
    fig, axes = plt.subplots(rows, len(pictures), figsize=(scale * len(pictures), scale * rows), squeeze=False)
    for i, picture in enumerate(pictures):
        axes[0, i].imshow(picture, interpolation="nearest")
        axes[0, i].set_title(titles[i] if titles else "", fontsize=9)
        if zoom_box:
            sx, sy = picture.width / pictures[0].width, picture.height / pictures[0].height
            box = (zoom_box[0] * sx, zoom_box[1] * sy, zoom_box[2] * sx, zoom_box[3] * sy)
            axes[0, i].add_patch(plt.Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1],
                                               fill=False, edgecolor="yellow", linewidth=1))
            axes[1, i].imshow(picture.crop(tuple(int(round(v)) for v in box)), interpolation="nearest")
            axes[1, i].set_title("zoom", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def image_grid(rows, row_titles=None, col_titles=None, scale: float = 1.8):
    """A grid of images: `rows` is a list of lists (same length each)."""
    n_rows, n_cols = len(rows), len(rows[0])
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(scale * n_cols, scale * n_rows), squeeze=False)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            axes[r, c].imshow(to_pil(image), interpolation="nearest")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0 and col_titles:
                axes[r, c].set_title(col_titles[c], fontsize=9)
            if c == 0 and row_titles:
                axes[r, c].set_ylabel(row_titles[r], fontsize=9)
    fig.tight_layout()
    return fig


def show_latent_channels(latents: torch.Tensor, title: str = "latent channels", scale: float = 1.2):
    """The channels of one latent (C, h, w) or (1, C, h, w) as a grid of gray maps, shared colour scale."""
    latent = latents.detach().float().cpu()
    if latent.ndim == 4:
        latent = latent[0]
    channels = latent.shape[0]
    cols = 8 if channels >= 8 else channels
    rows = int(np.ceil(channels / cols))
    limit = float(latent.abs().max())
    fig, axes = plt.subplots(rows, cols, figsize=(scale * cols, scale * rows + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < channels:
            ax.imshow(latent[i], cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
            ax.set_title(f"ch {i}", fontsize=7)
    fig.suptitle(f"{title}  (blue < 0 < red, |max| = {limit:.2f})", fontsize=9)
    fig.tight_layout()
    return fig


def plot_token_sequence(num_text: int, target_hw: tuple[int, int], control_hw: tuple[int, int], img_ids: torch.Tensor):
    """The sequence the Kontext transformer reads: text tokens, then target tokens (frame 0), then
    control tokens (frame 1), with each image token's (row, col) id drawn on its grid."""
    n_target = target_hw[0] * target_hw[1]
    n_control = control_hw[0] * control_hw[1]
    fig = plt.figure(figsize=(10, 4.2))
    bar = fig.add_axes([0.05, 0.78, 0.9, 0.12])
    spans = [(0, num_text, "#bbbbbb", f"text: {num_text} T5 tokens, ids (0, 0, 0)"),
             (num_text, n_target, "#4c78a8", f"target: {n_target} tokens, frame 0"),
             (num_text + n_target, n_control, "#f58518", f"control: {n_control} tokens, frame 1")]
    total = num_text + n_target + n_control
    for start, length, colour, label in spans:
        bar.barh(0, length, left=start, color=colour, edgecolor="white")
        bar.text(start + length / 2, 0, label, ha="center", va="center", fontsize=8, color="black")
    bar.set_xlim(0, total)
    bar.set_yticks([])
    bar.set_xlabel("position in the joint attention sequence (the loss uses only the target span)", fontsize=8)
    ids = img_ids.detach().cpu()
    for k, (offset, hw, colour, name) in enumerate([(0, target_hw, "#4c78a8", "target ids"),
                                                      (n_target, control_hw, "#f58518", "control ids")]):
        ax = fig.add_axes([0.12 + 0.45 * k, 0.05, 0.3, 0.58])
        block = ids[offset: offset + hw[0] * hw[1]]
        ax.scatter(block[:, 2], block[:, 1], s=60, c=colour, marker="s")
        for row in block[:: max(1, len(block) // 12)]:
            ax.annotate(f"({int(row[0])},{int(row[1])},{int(row[2])})", (row[2], row[1]), fontsize=6,
                        ha="center", va="bottom")
        ax.invert_yaxis()
        ax.set_title(f"{name}: (frame, row, col)", fontsize=9)
        ax.set_xlabel("col")
        ax.set_ylabel("row")
    return fig


def plot_curve(xs, ys, xlabel: str, ylabel: str, title: str = "", label: str | None = None, ax=None):
    """A simple line plot; pass `ax` to add curves to one axis."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3.2))
    else:
        fig = ax.figure
    ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    if label:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
