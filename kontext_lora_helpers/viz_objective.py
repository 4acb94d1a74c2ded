"""Pictures for notebook 03: the rectified-flow path, the velocity, x0 estimates, LoRA matrices, sigma.

Presentation only (matplotlib); the computations live in `objective`, `losses` and `lora`. Every
function returns its `Figure`.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from . import latents as latent_ops
from . import objective
from .losses import perceptual_gate_weights
from .viz import show_images


@torch.no_grad()
def decode_to_pixels(vae, latents: torch.Tensor) -> torch.Tensor:
    """(B, 16, h, w) latents -> (B, 3, H, W) float32 pixels in [-1, 1] (clamped), on the CPU."""
    return latent_ops.decode(vae, latents).clamp(-1, 1).float().cpu()


def show_flow_path(vae, clean_latents: torch.Tensor, noise: torch.Tensor, sigmas=(0.0, 0.25, 0.5, 0.75, 1.0)):
    """One image along the straight path ``x_t = (1 - sigma) x0 + sigma noise``, decoded at each sigma.

    Args:
        clean_latents, noise: (1, 16, h, w) (only the first sample is drawn).
    """
    rows = [objective.noisy_latents(clean_latents[:1], noise[:1], torch.tensor([float(s)])) for s in sigmas]
    pixels = decode_to_pixels(vae, torch.cat(rows))
    titles = [f"sigma = {s:.2f}" + (" (x0)" if s == 0 else " (noise)" if s == 1 else "") for s in sigmas]
    return show_images(list(pixels), titles, scale=2.0, suptitle="decoded x_t along the rectified-flow path")


def plot_straight_paths(clean_latents: torch.Tensor, noise: torch.Tensor, num_values: int = 5, seed: int = 0):
    """A few latent values as functions of sigma: straight lines from x0 (sigma 0) to the noise
    (sigma 1), each with the constant slope ``v = noise - x0``, the velocity the model learns."""
    generator = np.random.default_rng(seed)
    flat_clean, flat_noise = clean_latents.flatten().float(), noise.flatten().float()
    picks = generator.choice(flat_clean.numel(), size=num_values, replace=False)
    sigma_axis = np.linspace(0, 1, 21)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for k, index in enumerate(picks):
        x0, n = float(flat_clean[index]), float(flat_noise[index])
        line = ax.plot(sigma_axis, (1 - sigma_axis) * x0 + sigma_axis * n, label=f"v = {n - x0:+.2f}")
        ax.plot([0], [x0], "o", color=line[0].get_color())
        ax.plot([1], [n], "s", color=line[0].get_color())
    ax.set_xlabel("sigma (0 = clean latent, 1 = pure noise)")
    ax.set_ylabel("value of one latent element")
    ax.set_title("x_t moves on straight lines; the slope is the velocity v = noise - x0", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_sigma_densities(samples: dict, bins: int = 40):
    """Histograms of sampled noise levels, one per entry of `samples` ({label: (N,) tensor in (0, 1)})."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for label, values in samples.items():
        values = values.detach().float().cpu().numpy()
        ax.hist(values, bins=bins, range=(0, 1), density=True, histtype="step", linewidth=1.5,
                label=f"{label} (median {np.median(values):.2f})")
    ax.set_xlabel("sigma")
    ax.set_ylabel("density")
    ax.set_title("where training spends its steps", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def show_x0_estimates(vae, target_pixels: torch.Tensor, noisy_by_sigma: dict, x0_hat_by_sigma: dict):
    """Two rows: the noisy input x_t and the model's clean estimate x0_hat at each sigma, next to the target.

    Args:
        target_pixels: (1, 3, H, W) in [-1, 1].
        noisy_by_sigma, x0_hat_by_sigma: {sigma: (1, 16, h, w) latents}.
    """
    sigmas = list(x0_hat_by_sigma)
    noisy = decode_to_pixels(vae, torch.cat([noisy_by_sigma[s] for s in sigmas]))
    estimates = decode_to_pixels(vae, torch.cat([x0_hat_by_sigma[s] for s in sigmas]))
    columns = len(sigmas) + 1
    fig, axes = plt.subplots(2, columns, figsize=(1.9 * columns, 4.1), squeeze=False)
    pictures = [[target_pixels[0]] + list(noisy), [target_pixels[0]] + list(estimates)]
    for r, (row, name) in enumerate(zip(pictures, ("input x_t", "estimate x0_hat"))):
        for c, image in enumerate(row):
            axes[r, c].imshow(((image.float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy(), interpolation="nearest")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            axes[r, c].set_title("target" if c == 0 else f"sigma = {sigmas[c - 1]:.2f}", fontsize=8)
        axes[r, 1].set_ylabel(name, fontsize=9)
    fig.suptitle("x0_hat = x_t - sigma * v_hat at four noise levels", fontsize=10)
    fig.tight_layout()
    return fig


def show_lora_matrices(parts: dict, max_side: int = 128):
    """Heatmaps of one LoRA layer: A (r x in), B (out x r) and the update (alpha / r) B A (out x in).

    Args:
        parts: as returned by `lora.lora_layer_parts`.
    """
    A, B = parts["A"].detach().float().cpu(), parts["B"].detach().float().cpu()
    update = parts["scale"] * B @ A
    panels = [("A (r x in), random", A), ("B (out x r), zero at start", B), ("(alpha/r) B A (out x in)", update)]
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2), gridspec_kw={"width_ratios": [3, 1.3, 3]})
    for ax, (title, matrix) in zip(axes, panels):
        matrix = matrix[:max_side, :max_side]
        largest = float(matrix.abs().max())
        limit = largest if largest > 0 else 1.0  # an all-zero matrix: any symmetric scale shows white
        image = ax.imshow(matrix, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
        ax.set_title(f"{title}\n|max| = {largest:.3g}", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def plot_perceptual_by_sigma(sigma_grid, curves: dict, gates=("linear", "threshold"), sigma_threshold: float = 0.5):
    """Left: perceptual loss of x0_hat against sigma ({label: (S,) values}). Right: the weight of each
    gate (`losses.perceptual_gate_weights`) and the scale it leaves on the velocity's gradient,
    sigma * weight (since d x0_hat / d v_hat = -sigma)."""
    sigma_grid = np.asarray(list(sigma_grid), dtype=float)
    panels = 2 if gates else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 3.4), squeeze=False)
    for label, values in curves.items():
        axes[0, 0].plot(sigma_grid, np.asarray(values, dtype=float), marker="o", markersize=3, label=label)
    axes[0, 0].set_xlabel("sigma")
    axes[0, 0].set_ylabel("perceptual loss of x0_hat")
    axes[0, 0].set_title("the higher the noise, the further x0_hat is from the photo", fontsize=9)
    fine = torch.linspace(0, 1, 401)
    for gate in gates:
        weights = perceptual_gate_weights(fine, gate, sigma_threshold).numpy()
        label = gate if gate != "threshold" else f"threshold {sigma_threshold:g}"
        line = axes[0, 1].plot(fine.numpy(), weights, label=f"{label}: weight")
        axes[0, 1].plot(fine.numpy(), fine.numpy() * weights, linestyle="--", color=line[0].get_color(),
                        label=f"{label}: sigma x weight (on v_hat)")
    if gates:
        axes[0, 1].set_xlabel("sigma")
        axes[0, 1].set_title("gates, and what reaches the velocity", fontsize=9)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
