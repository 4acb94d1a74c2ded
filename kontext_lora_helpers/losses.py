"""The optional pixel-space term: a VGG perceptual loss on the decoded x0 prediction.

The flow-matching loss (`objective.flow_matching_loss`) compares velocities in latent space. A
perceptual loss compares what the prediction *looks like*: the transformer's velocity gives an
estimate of the clean latent, ``x0_hat = x_t - sigma * v_hat``; the frozen VAE decodes it to pixels
and a frozen VGG16 compares its features with those of the clean target photo:

    pixels (B, 3, H, W) in [-1, 1]
      -> [0, 1] -> ImageNet normalisation -> (optional crop, subset, 224x224 resize)
      -> VGG16 blocks ending at relu1_2, relu2_2, relu3_3, relu4_3
      -> L1 between input and target features, per block, weighted and summed

This is the loss of the original guide's `VGGPerceptualLoss` (the well-known "VGG perceptual loss
in PyTorch" gist: the same four blocks, the same bilinear 224x224 resize, L1 between features).

Why gate it by the noise level: at high sigma ``x_t`` is mostly noise, so the best a velocity
predictor can do is return the *average* of the images compatible with it, and ``x0_hat`` is a
blurry, greyish image. A perceptual loss there asks the model to produce texture it cannot know, and
its gradient mostly fights the noise; at low sigma ``x0_hat`` is sharp and the perceptual term
rewards the right details. `perceptual_term` therefore weights each sample by ``1 - sigma``
("linear") or keeps only samples below a threshold ("threshold"); measurements are in its docstring,
and `perceptual_loss_by_sigma` repeats them for any model.

The VGG weights: ``weights="imagenet"`` (the default) loads torchvision's
``VGG16_Weights.IMAGENET1K_V1`` from the torch hub cache, downloading it when allowed, and raises a
`RuntimeError` that says how to provide the file when it cannot. ``weights=None`` gives random VGG
features, only when asked for explicitly, with a warning: good for tests and CPU demos, useless as a
perceptual prior.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import latents as latent_ops
from .models import GUIDANCE_SCALE, hub_offline

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

VGG16_BLOCK_ENDS = (4, 9, 16, 23)
"""`torchvision.models.vgg16().features` is cut after these indices: the four blocks end at
relu1_2, relu2_2, relu3_3 and relu4_3 (the layers of the classic perceptual loss)."""

VGG16_BLOCK_NAMES = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")

GATES = ("linear", "threshold", "none")





def imagenet_vgg16_checkpoint() -> tuple[str, Path]:
    """(download URL, local path) of torchvision's VGG16 ImageNet weights in the torch hub cache.

    The path is ``torch.hub.get_dir()/checkpoints/vgg16-397923af.pth``; `torch.hub.get_dir()` is
    ``$TORCH_HOME/hub`` (default ``~/.cache/torch/hub``).
    """
    from torchvision.models import VGG16_Weights

    url = VGG16_Weights.IMAGENET1K_V1.url
    return url, Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _missing_weights_message(reason: str) -> str:
    url, path = imagenet_vgg16_checkpoint()
    return (
        f"VGGPerceptualLoss(weights='imagenet') needs torchvision's VGG16 ImageNet weights "
        f"(VGG16_Weights.IMAGENET1K_V1, file {path.name}, about 528 MB) and could not get them: {reason}.\n"
        f"To provide them: download {url} on a machine with network access and put it at {path} "
        f"(that is torch.hub.get_dir()/checkpoints), or put it in <folder>/hub/checkpoints/ and set "
        f"TORCH_HOME=<folder>; or allow the download (unset HF_HUB_OFFLINE, have network access).\n"
        f"For tests or CPU demos only, VGGPerceptualLoss(weights=None) builds random features explicitly."
    )


def load_imagenet_vgg16_features_state() -> dict:
    """The state dict of torchvision's ImageNet VGG16, from the hub cache or downloaded.

    Raises:
        RuntimeError: the file is not cached and downloading is disabled (HF_HUB_OFFLINE) or fails;
            the message names the file, the folder to put it in and the TORCH_HOME variable.
    """
    url, path = imagenet_vgg16_checkpoint()
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    if hub_offline():
        raise RuntimeError(_missing_weights_message(f"{path} does not exist and HF_HUB_OFFLINE is set"))
    try:
        return torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=False, check_hash=True, weights_only=True
        )
    except Exception as error:  # network errors come in many types (URLError, OSError, HTTPError, ...)
        raise RuntimeError(_missing_weights_message(f"downloading failed ({type(error).__name__}: {error})")) from error


def build_vgg16_blocks(weights: str | None = "imagenet", seed: int = 0) -> nn.ModuleList:
    """VGG16's `features` up to relu4_3, split into the four classic blocks, frozen and in eval mode.

    Only the convolutional layers that are used are built (VGG16's classifier holds 124 M of its
    138 M parameters and is never needed here).

    Args:
        weights: "imagenet" for torchvision's ImageNet weights, or None for random ones
            (torchvision's VGG initialisation, seeded with `seed`, global random state untouched).
    """
    from torchvision.models.vgg import cfgs, make_layers

    if weights not in ("imagenet", None):
        raise ValueError(f"weights must be 'imagenet' or None; got {weights!r}.")
    num_layers = VGG16_BLOCK_ENDS[-1]
    features = make_layers(cfgs["D"], batch_norm=False)[:num_layers]
    if weights == "imagenet":
        state = load_imagenet_vgg16_features_state()
        features.load_state_dict(
            {k[len("features."):]: v for k, v in state.items()
             if k.startswith("features.") and int(k.split(".")[1]) < num_layers}
        )
    else:
        generator = torch.Generator().manual_seed(seed)
        for module in features:
            if isinstance(module, nn.Conv2d):  # as torchvision's VGG.__init__ initialises them
                std = (2.0 / (module.out_channels * module.kernel_size[0] * module.kernel_size[1])) ** 0.5
                with torch.no_grad():
                    module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
                    module.bias.zero_()
    starts = (0,) + VGG16_BLOCK_ENDS[:-1]
    blocks = nn.ModuleList(features[start:end] for start, end in zip(starts, VGG16_BLOCK_ENDS))
    return blocks.eval().requires_grad_(False)


class VGGPerceptualLoss(nn.Module):
    """L1 distance between VGG16 features of two image batches (the original guide's perceptual
    loss).

    Args:
        resize: resize both images to 224x224 (bilinear) before VGG, the scale VGG was trained at,
            as the classic gist does. At nano's 64 px this costs 12x the compute of `resize=False`.
        weights: "imagenet" (default; torchvision's VGG16_Weights.IMAGENET1K_V1, see
            `load_imagenet_vgg16_features_state` for where the file comes from) or None for random
            features (explicit opt-in, warns: a random network is no perceptual prior).
        layer_weights: four weights for the relu1_2, relu2_2, relu3_3, relu4_3 terms (default all 1).
        random_crop: crop side in pixels; one random window, the same for input and target (so the
            features stay aligned), is cut from every image before VGG. Saves memory at 512-1024 px;
            combine with `resize=False`, since resizing brings the crop back to 224x224.
        max_batch: only the first `max_batch` samples enter VGG (memory); None uses all.
        seed: seeds the random VGG weights (weights=None) and the crop positions.

    The module is frozen (no parameter requires grad) and stays in eval mode; gradients flow to the
    *input* images only. Target features are computed without a graph unless the target itself
    requires grad.
    """

    def __init__(
        self,
        resize: bool = True,
        weights: str | None = "imagenet",
        layer_weights=None,
        random_crop: int | None = None,
        max_batch: int | None = None,
        seed: int = 0,
    ):
        super().__init__()
        if layer_weights is None:
            layer_weights = (1.0,) * len(VGG16_BLOCK_ENDS)
        layer_weights = tuple(float(w) for w in layer_weights)
        if len(layer_weights) != len(VGG16_BLOCK_ENDS):
            raise ValueError(f"layer_weights needs {len(VGG16_BLOCK_ENDS)} values ({', '.join(VGG16_BLOCK_NAMES)}).")
        if random_crop is not None and random_crop < 16:
            raise ValueError(f"random_crop must be at least 16 pixels (VGG pools 3 times); got {random_crop}.")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be positive; got {max_batch}.")
        if weights is None:
            warnings.warn(
                "VGGPerceptualLoss(weights=None): the perceptual term uses random VGG features "
                "(fine for tests and CPU demos; use weights='imagenet' for training).",
                stacklevel=2,
            )
        self.blocks = build_vgg16_blocks(weights, seed=seed)
        self.weights_name = weights
        self.layer_weights = layer_weights
        self.resize = resize
        self.random_crop = random_crop
        self.max_batch = max_batch
        self._crop_generator = torch.Generator().manual_seed(seed)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.eval()

    def train(self, mode: bool = True):
        # VGG has no dropout/batch-norm in `features`, but stay in eval whatever the caller does.
        return super().train(False)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """[-1, 1] pixels -> [0, 1] -> ImageNet mean/std normalisation, in VGG's dtype."""
        pixels = pixels.to(self.mean.dtype)
        return ((pixels + 1) / 2 - self.mean) / self.std

    def _crop(self, input: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = input.shape[-2:]
        size_h, size_w = min(self.random_crop, height), min(self.random_crop, width)
        top = int(torch.randint(0, height - size_h + 1, (1,), generator=self._crop_generator))
        left = int(torch.randint(0, width - size_w + 1, (1,), generator=self._crop_generator))
        window = (..., slice(top, top + size_h), slice(left, left + size_w))
        return input[window], target[window]

    def forward(self, input: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Perceptual distance between `input` and `target`.

        Args:
            input, target: (B, 3, H, W) float images in [-1, 1] (the VAE's pixel range); same shape.
            reduction: "mean" -> scalar; "none" -> (B',) float32 per sample, B' = min(B, max_batch).

        Returns:
            sum over blocks of ``layer_weight * mean |VGG_block(input) - VGG_block(target)|``;
            0 for identical images, non-negative.
        """
        if input.shape != target.shape or input.ndim != 4 or input.shape[1] != 3:
            raise ValueError(
                "input and target must be (B, 3, H, W) with the same shape; "
                f"got {tuple(input.shape)} and {tuple(target.shape)}."
            )
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none'; got {reduction!r}.")
        if self.max_batch is not None:
            input, target = input[: self.max_batch], target[: self.max_batch]
        if self.random_crop is not None:
            input, target = self._crop(input, target)
        x, y = self.normalize(input), self.normalize(target)
        if self.resize:
            x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
            y = F.interpolate(y, size=(224, 224), mode="bilinear", align_corners=False)
        per_sample = torch.zeros(x.shape[0], device=x.device, dtype=torch.float32)
        target_needs_graph = target.requires_grad
        for block, layer_weight in zip(self.blocks, self.layer_weights):
            x = block(x)
            with torch.set_grad_enabled(target_needs_graph and torch.is_grad_enabled()):
                y = block(y)
            per_sample = per_sample + layer_weight * (x - y).abs().float().mean(dim=(1, 2, 3))
        return per_sample.mean() if reduction == "mean" else per_sample


# --- the perceptual term in training ----------------------------------------------------------------


def perceptual_gate_weights(sigmas: torch.Tensor, gate: str = "linear", sigma_threshold: float = 0.5) -> torch.Tensor:
    """Per-sample weights (B,) float32 of the perceptual term, from the noise levels (B,) in [0, 1].

    linear: ``1 - sigma`` (full weight on clean samples, none on pure noise);
    threshold: 1 where ``sigma < sigma_threshold``, else 0; none: 1 everywhere.
    """
    if gate not in GATES:
        raise ValueError(f"gate must be one of {', '.join(GATES)}; got {gate!r}.")
    sigmas = sigmas.float()
    if gate == "linear":
        return 1 - sigmas
    if gate == "threshold":
        return (sigmas < sigma_threshold).float()
    return torch.ones_like(sigmas)


def perceptual_term(
    vgg: VGGPerceptualLoss,
    vae,
    x0_hat_latents: torch.Tensor,
    target_pixels: torch.Tensor,
    sigmas: torch.Tensor,
    gate: str = "linear",
    sigma_threshold: float = 0.5,
) -> torch.Tensor:
    """The gated perceptual loss of the model's clean-image estimate, for adding to the L2 loss.

    Args:
        vgg: a `VGGPerceptualLoss` (its `max_batch` also limits how many samples are decoded).
        vae: the frozen `AutoencoderKL`; `latents.decode` runs with autograd on, so the gradient
            reaches `x0_hat_latents` (and through it the transformer's LoRA) but no VAE weight.
        x0_hat_latents: (B, 16, h, w) ``x_t - sigma * v_hat`` (e.g. `StepOutput.x0_hat_latents()`).
        target_pixels: (B, 3, h*f, w*f) the clean target photos in [-1, 1]. Because the target is
            the photo and not its VAE reconstruction, a perfect latent still scores the VAE's
            reconstruction error: that floor carries no gradient worth following.
        sigmas: (B,) the noise level of each sample.
        gate: "linear" weights each sample by ``1 - sigma``; "threshold" keeps samples with
            ``sigma < sigma_threshold``; "none" weights all samples equally.

    Returns:
        scalar float32: mean over the evaluated samples of ``gate_weight * perceptual_loss``.
        Samples with weight 0 are never decoded (the threshold gate saves their VAE + VGG cost);
        when none is left the result is a 0 that still belongs to the graph.

    Why a gate. The gradient this term sends into ``v_hat`` is ``-sigma`` times its gradient on
    ``x0_hat``, so without a gate it is strongest where ``x0_hat`` can only be a blurry guess.
    Measured with `perceptual_loss_by_sigma` on the first nano (a 4x VAE with a 22 dB round trip; the
    shipped nano's 2x VAE reconstructs at 36 dB, so its floor is lower), 4 held-out photos at 64x64,
    one fixed noise draw, random-feature VGG at native size, and the best linear
    denoiser `spectral_wiener_x0` standing in for a converged model: the loss above the VAE floor
    (0.074) is 0.002 at sigma 0.1, 0.020 at 0.3, 0.049 at 0.5, 0.086 at 0.7, 0.146 at 0.9 and
    0.173 at 1.0, where the estimate is the mean image. Over an even sigma grid, samples with
    sigma >= 0.6 carry 84% of the ungated term: mostly the blur any estimate from that much noise
    has, not an error the LoRA can fix. The linear gate cuts their share to 57% (and scales the
    velocity gradient by ``sigma (1 - sigma)``, at most 0.25); the threshold gate at 0.5 removes
    it and skips decoding those samples.
    Notebook 03 repeats the measurement with the shipped weights and the nano transformer itself.
    """
    weights = perceptual_gate_weights(sigmas, gate, sigma_threshold).to(x0_hat_latents.device)
    selected = torch.nonzero(weights > 0).flatten()
    if vgg.max_batch is not None:
        selected = selected[: vgg.max_batch]
    if selected.numel() == 0:
        return x0_hat_latents.sum().float() * 0.0
    decoded = latent_ops.decode(vae, x0_hat_latents[selected])
    target = target_pixels[selected.to(target_pixels.device)].to(decoded.device)
    per_sample = vgg(decoded, target, reduction="none")
    return (weights[selected] * per_sample).mean()


# --- measuring what the gate does ---------------------------------------------------------------------


def spectral_wiener_x0(
    noisy_latents: torch.Tensor, sigmas: torch.Tensor, clean_reference: torch.Tensor
) -> torch.Tensor:
    """The best *linear* estimate of x0 from ``x_t = (1 - sigma) x0 + sigma noise``: a Wiener filter.

    A stand-in for a converged velocity predictor that needs no training: per channel and spatial
    frequency it keeps ``gain = (1 - sigma) P / ((1 - sigma)^2 P + sigma^2)`` of the signal, where
    P is the latents' power spectrum. Natural images put little power in high frequencies, so as sigma
    grows the fine detail is filtered out first: x0_hat goes blurry, then flat (the mean).

    Args:
        noisy_latents: (B, C, h, w) x_t; sigmas: (B,) in [0, 1].
        clean_reference: (B_ref, C, h, w) clean latents from which the mean and spectrum are measured.

    Returns:
        (B, C, h, w) float32 x0 estimates.
    """
    reference = clean_reference.float()
    mean = reference.mean(dim=(0, 2, 3), keepdim=True)
    height, width = reference.shape[-2:]
    # |FFT|^2 / (h w) puts white unit-variance noise at power 1 in every frequency.
    power = torch.fft.fft2(reference - mean).abs().pow(2).mean(dim=0, keepdim=True) / (height * width)
    s = sigmas.float().view(-1, 1, 1, 1)
    gain = (1 - s) * power / ((1 - s) ** 2 * power + s**2)
    centred = noisy_latents.float() - (1 - s) * mean
    return mean + torch.fft.ifft2(gain * torch.fft.fft2(centred)).real


def transformer_x0_predictor(transformer, control_latents: torch.Tensor, text, guidance_scale: float | None = GUIDANCE_SCALE):
    """A ``predict_x0(noisy_latents, sigmas) -> x0_hat_latents`` callable that runs the Kontext transformer.

    Args:
        control_latents: (B, 16, h_c, w_c) condition latents; text: `objective.PromptEmbeddings`.
    """
    from . import objective

    def predict_x0(noisy: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        inputs = objective.build_transformer_inputs(noisy, control_latents, text, sigmas, guidance_scale)
        num_target_tokens = latent_ops.token_count(*noisy.shape[-2:])
        velocity = objective.predict_velocity(transformer, inputs, num_target_tokens)
        tokens = objective.x0_from_velocity(latent_ops.pack(noisy), sigmas, velocity)
        return latent_ops.unpack(tokens, *noisy.shape[-2:])

    return predict_x0


@torch.no_grad()
def perceptual_loss_by_sigma(
    vgg: VGGPerceptualLoss,
    vae,
    target_pixels: torch.Tensor,
    target_latents: torch.Tensor,
    noise: torch.Tensor,
    sigma_grid,
    predict_x0,
) -> torch.Tensor:
    """The perceptual loss of ``x0_hat`` against the clean photos, for one fixed batch at each sigma.

    Args:
        target_pixels: (B, 3, H, W) clean photos in [-1, 1]; target_latents: their (B, 16, h, w) latents.
        noise: (B, 16, h, w) one fixed noise draw, reused at every sigma so only sigma changes.
        sigma_grid: iterable of S noise levels in [0, 1].
        predict_x0: ``(noisy_latents, sigmas) -> x0_hat_latents``, e.g. `transformer_x0_predictor(...)`
            or ``lambda noisy, s: spectral_wiener_x0(noisy, s, target_latents)``.

    Returns:
        (S,) float32: batch-mean perceptual loss at each sigma.
    """
    from . import objective

    losses = []
    for sigma in sigma_grid:
        sigmas = torch.full((target_latents.shape[0],), float(sigma))
        noisy = objective.noisy_latents(target_latents, noise, sigmas)
        decoded = latent_ops.decode(vae, predict_x0(noisy, sigmas)).clamp(-1, 1)
        losses.append(vgg(decoded, target_pixels.to(decoded.device), reduction="mean").float().cpu())
    return torch.stack(losses)


def vgg_weights_notice(vgg: VGGPerceptualLoss) -> str:
    """A plain-language line about which VGG features `vgg` uses and how to get ImageNet ones."""
    if vgg.weights_name == "imagenet":
        return "VGG16 features: ImageNet (torchvision VGG16_Weights.IMAGENET1K_V1)."
    url, path = imagenet_vgg16_checkpoint()
    return (
        "VGG16 features here are RANDOM (weights=None): the numbers show the mechanics, not a perceptual prior.\n"
        f"On a GPU machine use VGGPerceptualLoss() (weights='imagenet'): it reads {path.name} from "
        f"torch.hub.get_dir()/checkpoints or downloads it from {url}."
    )
