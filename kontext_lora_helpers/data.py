"""Training pairs: a degraded *control* image and the clean *target*, pixel for pixel aligned.

FLUX.1 Kontext reads the control image as a second set of tokens next to the image it generates,
and the LoRA learns "given this damaged photo, produce that clean one". Two things make or break
that lesson, and this module takes care of both:

* **Alignment.** Control and target must show the same pixels: the same crop, the same flip, the
  same size. So the clean photo is resized and cropped *first*, and only the crop is degraded.
  (Degrading the whole photo and cropping afterwards would also work for noise, but a blur or JPEG
  block grid would then straddle the crop border differently from the target.) Downsampling goes
  down and back *up to the crop size*, so nothing shifts.
* **Reproducibility.** Item ``i`` of epoch ``e`` depends only on ``(seed, i, e)``: its crop, its
  flip and its degradation are drawn from a generator seeded with exactly those three numbers. Call
  :meth:`DegDataset.set_epoch` at the start of each epoch to get fresh crops and degradations;
  with ``DataLoader(num_workers>0)`` keep ``persistent_workers=False`` (the default) so the
  workers see the new epoch.

Two datasets share one item format (default ``torch`` collate stacks it into a batch):

* :class:`DegDataset` (the original guide's class) synthesises the control from clean photos with
  ``degradations.py``;
* :class:`PairedDataset` reads real pairs: a folder of degraded photos and a folder of clean ones,
  matched by relative path without extension (``scans/001.jpg`` <-> ``clean/001.png``).

Each item is a dict:

============  ======================================================================
``control``   degraded image, ``torch.float32`` (3, R, R), values in [-1, 1]
``target``    clean image, same shape, dtype and range, same crop and flip
``prompts``   the text prompt (``str``; the original guide's key name)
``record``    JSON text of the degradation record that made ``control`` (``"[]"`` for
              real pairs)
``path``      the clean image's file path (``str``); ``index``: the item index (``int``)
============  ======================================================================

Size policy (``R`` = ``resolution``, a multiple of 16 because FLUX packs 8x-downsampled
latents in 2x2 patches): the short side of each photo is resized to ``R`` (bicubic) and an
``R x R`` square is cropped (random, or central with ``center_crop=True``). Photos whose short side
is smaller than ``R`` are enlarged the same way; the dataset warns once, listing them, because
enlarged photos teach the LoRA that soft images are "clean".
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .degradations import DegradationConfig, apply_degradation_steps, sample_degradation_steps
from .images import ImageInfo, UnusableImageError, find_usable_images, load_rgb
from .prompts import PROMPT_MODES, restoration_prompt

__all__ = [
    "ChangedImageWarning",
    "DegDataset",
    "PairedDataset",
    "UnmatchedPairWarning",
    "UpscaledImageWarning",
    "check_resolution",
    "pil_to_tensor",
    "tensor_to_pil",
]

# Sides must be multiples of 2 * vae_scale_factor (FLUX: 2 * 8) so the latents pack into 2x2 patches.
RESOLUTION_MULTIPLE = 16


class UpscaledImageWarning(UserWarning):
    """Some photos are smaller than ``resolution`` and will be enlarged (and so look soft)."""


class ChangedImageWarning(UserWarning):
    """A training photo became unreadable after the dataset was built (deleted, truncated or
    replaced while a run trains); another photo stands in for it. Given once per photo."""


class UnmatchedPairWarning(UserWarning):
    """Some files of a :class:`PairedDataset` folder have no partner in the other folder."""


def check_resolution(resolution: int) -> int:
    """``resolution`` as an int if it is a positive multiple of 16, else ValueError."""
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution <= 0:
        raise ValueError(
            f"resolution must be a positive multiple of {RESOLUTION_MULTIPLE}; got {resolution!r}"
        )
    if resolution % RESOLUTION_MULTIPLE:
        lower = resolution // RESOLUTION_MULTIPLE * RESOLUTION_MULTIPLE
        hint = f"{lower} or {lower + RESOLUTION_MULTIPLE}" if lower else str(RESOLUTION_MULTIPLE)
        raise ValueError(
            f"resolution must be a multiple of {RESOLUTION_MULTIPLE} (FLUX packs 8x-downsampled latents "
            f"in 2x2 patches); got {resolution}, try {hint}"
        )
    return int(resolution)


def check_crop_scale(crop_scale: Any) -> tuple[float, float]:
    """``crop_scale`` as ``(low, high)``: the fraction of a photo's short side one training square
    covers, drawn log-uniformly per item. ``1`` (the original guide's behaviour) resizes the short side to the
    resolution and crops; ``(0.25, 1)`` also shows close-ups of a quarter of the short side."""
    if isinstance(crop_scale, str):
        crop_scale = [float(part) for part in crop_scale.split(",")]
    if isinstance(crop_scale, (int, float)):
        crop_scale = (crop_scale, crop_scale)
    crop_scale = tuple(float(value) for value in crop_scale)
    if len(crop_scale) != 2 or not 0 < crop_scale[0] <= crop_scale[1] <= 1:
        raise ValueError(f"crop_scale must be a fraction in (0, 1] or a range 'low,high' inside it; got {crop_scale!r}")
    return crop_scale


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image (W x H) -> ``torch.float32`` tensor (3, H, W) in [-1, 1] (0 -> -1, 255 -> 1)."""
    pixels = np.asarray(image.convert("RGB") if image.mode != "RGB" else image, dtype=np.float32)
    pixels = pixels / np.float32(127.5) - np.float32(1.0)
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def tensor_to_pil(tensor: torch.Tensor) -> Image.Image:
    """Inverse of :func:`pil_to_tensor`: (3, H, W) in [-1, 1] (clipped) -> 8-bit RGB PIL image."""
    if tensor.ndim != 3 or tensor.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) tensor; got shape {tuple(tensor.shape)}")
    pixels = ((tensor.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).numpy(), mode="RGB")


@dataclass(frozen=True)
class _Geometry:
    """Where one item's square comes from: resize to ``resized``, crop ``box``, maybe mirror."""

    resized: tuple[int, int]
    box: tuple[int, int, int, int]
    flip: bool

    def apply(self, image: Image.Image) -> Image.Image:
        if image.size != self.resized:
            image = image.resize(self.resized, Image.Resampling.BICUBIC)
        image = image.crop(self.box)
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if self.flip else image


def _short_side_size(size: tuple[int, int], resolution: int) -> tuple[int, int]:
    """(width, height) scaled so that the short side is exactly ``resolution``."""
    width, height = size
    if width <= height:
        return resolution, max(resolution, round(height * resolution / width))
    return max(resolution, round(width * resolution / height)), resolution


class _PairDatasetBase(Dataset):
    """What both datasets share: size policy, epochs, per-item generators and the item format."""

    def __init__(self, resolution: int, repeats: int, seed: int, random_flip: bool, center_crop: bool,
                 crop_scale: Any = 1.0):
        self.resolution = check_resolution(resolution)
        self.crop_scale = check_crop_scale(crop_scale)
        if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
            raise ValueError(f"repeats must be a whole number >= 1; got {repeats!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a whole number >= 0; got {seed!r}")
        self.repeats = int(repeats)
        self.seed = int(seed)
        self.random_flip = bool(random_flip)
        self.center_crop = bool(center_crop)
        self.epoch = 0

    # -- epochs and randomness ----------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose crops, flips and degradations ``__getitem__`` returns (>= 0)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be a whole number >= 0; got {epoch!r}")
        self.epoch = int(epoch)

    def _item_generators(self, index: int) -> tuple[np.random.Generator, np.random.Generator]:
        """Two independent generators for item ``index``: geometry and degradation.

        Both come from ``SeedSequence([seed, epoch, index])``, so an item never depends on which
        items were read before it, in which worker, or in what order. Keeping geometry and
        degradation apart means switching ``random_flip`` off does not change the degradations.
        """
        geometry_seed, degradation_seed = np.random.SeedSequence([self.seed, self.epoch, index]).spawn(2)
        return np.random.default_rng(geometry_seed), np.random.default_rng(degradation_seed)

    def _check_index(self, index: int) -> int:
        length = len(self)
        if index < 0:
            index += length
        if not 0 <= index < length:
            raise IndexError(f"index {index} out of range for a dataset of {length} items")
        return int(index)

    # -- size policy ---------------------------------------------------------------------------

    def _geometry(self, size: tuple[int, int], rng: np.random.Generator) -> _Geometry:
        low, high = self.crop_scale
        if not self.center_crop and low < 1:
            # A window of `fraction` x the short side becomes the R x R item: resize the photo so
            # the window is R pixels wide. Never below R pixels of the original (no enlarging).
            short = min(size)
            fraction = low if low == high else float(np.exp(rng.uniform(np.log(low), np.log(high))))
            window = max(float(self.resolution), fraction * short)
            resized = _short_side_size(size, max(self.resolution, round(short * self.resolution / window)))
        else:
            resized = _short_side_size(size, self.resolution)
        spare_x, spare_y = resized[0] - self.resolution, resized[1] - self.resolution
        if self.center_crop:
            left, top = spare_x // 2, spare_y // 2
        else:
            left, top = int(rng.integers(0, spare_x + 1)), int(rng.integers(0, spare_y + 1))
        flip = self.random_flip and bool(rng.random() < 0.5)
        return _Geometry(resized, (left, top, left + self.resolution, top + self.resolution), flip)

    def _warn_about_small_images(self, images: Iterable[ImageInfo]) -> None:
        small = [info for info in images if info.short_side < self.resolution]
        if small:
            names = ", ".join(f"{info.path.name} ({info.width}x{info.height})" for info in small[:8])
            more = f" and {len(small) - 8} more" if len(small) > 8 else ""
            warnings.warn(
                f"{len(small)} image(s) have a short side below resolution={self.resolution} and will be "
                f"enlarged (bicubic), which looks soft: {names}{more}",
                UpscaledImageWarning,
                stacklevel=3,
            )

    @staticmethod
    def _item(
        control: Image.Image, target: Image.Image, prompt: str, record: list, path: Path, index: int
    ) -> dict[str, Any]:
        return {
            "control": pil_to_tensor(control),
            "target": pil_to_tensor(target),
            "prompts": prompt,
            "record": json.dumps(record),
            "path": str(path),
            "index": index,
        }


def _config_property(name: str) -> property:
    """A dataset attribute that reads (and, through ``config.replace``, writes) a config field."""

    def getter(self: DegDataset) -> Any:
        return getattr(self.config, name)

    def setter(self: DegDataset, value: Any) -> None:
        self.config = self.config.replace(**{name: value})

    return property(getter, setter, doc=f"``config.{name}`` (setting it replaces the config, validated).")


_ORIGINAL_GUIDE_DEFAULTS = {
    "degradation_types": None,
    "lr_scale": 8,
    "noise_level": 0.05,
    "blur_radius": 1.0,
    "jpeg_quality": 75,
}


class DegDataset(_PairDatasetBase):
    """Clean photos from a folder, each paired with a freshly degraded copy of itself.

    Args:
        hr_data_root: folder of clean ("high resolution") photos, read recursively; unusable
            files are skipped with a warning each (see ``images.find_usable_images``).
        instance_prompt: the text prompt of every item (the original guide's ``--instance_prompt``).
        lr_scale, noise_level, blur_radius, jpeg_quality: the original guide's degradation
            parameters, each a value or a ``(low, high)`` range.
        repeats: how many times each photo appears per epoch (``len = n_images * repeats``);
            repeats get different crops and degradations.
        degradation_types: comma string (``"downsample,noise,blur"``) or list; ``None`` = the
            original guide's four, ``"none"`` or ``[]`` = no degradation (control == target).
        resolution: side of the square items in pixels; a multiple of 16.
        seed: base seed; item ``i`` of epoch ``e`` depends only on ``(seed, i, e)``.
        config: a complete :class:`DegradationConfig` (e.g. ``PRESETS["old_photo"]``) instead of
            the individual degradation arguments (combining both is an error).
        prompt_mode: ``"plain"`` (the instance prompt), ``"described"`` or ``"numeric"``
            (the prompt also says what was done; see ``prompts.restoration_prompt``).
        exclude: files or folders under ``hr_data_root`` to leave out (e.g. held-out photos).
        random_flip: mirror half of the items left-right. ``center_crop``: crop the centre
            instead of a random square.
        crop_scale: fraction of the short side a square covers, or a ``(low, high)`` range drawn
            per item (random-resized crops: more distinct training images from few photos); 1 is
            a square of the whole short side. Ignored with ``center_crop``.
        **degradation_options: any other :class:`DegradationConfig` field, e.g.
            ``gray_noise_prob=0.4`` or ``fade_strength=(0.2, 0.6)``.

    The original guide's attribute names work as before (``dataset.lr_scale``, ``dataset.degradation_types``,
    ...); they read ``dataset.config``, and assigning them replaces the config after validation.
    """

    lr_scale = _config_property("lr_scale")
    noise_level = _config_property("noise_level")
    blur_radius = _config_property("blur_radius")
    jpeg_quality = _config_property("jpeg_quality")
    degradation_types = _config_property("degradation_types")

    def __init__(
        self,
        hr_data_root: str | os.PathLike,
        instance_prompt: str,
        lr_scale: Any = 8,
        repeats: int = 1,
        degradation_types: Any = None,
        noise_level: Any = 0.05,
        blur_radius: Any = 1.0,
        jpeg_quality: Any = 75,
        resolution: int = 512,
        seed: int = 0,
        *,
        config: DegradationConfig | None = None,
        prompt_mode: str = "plain",
        exclude: Iterable[str | os.PathLike] = (),
        random_flip: bool = True,
        center_crop: bool = False,
        crop_scale: Any = 1.0,
        **degradation_options: Any,
    ):
        super().__init__(resolution, repeats, seed, random_flip, center_crop, crop_scale)
        self.unreadable: set[Path] = set()  # photos that became unreadable during the run (`_load_clean`)
        known_fields = {item.name for item in fields(DegradationConfig)}
        unknown = sorted(set(degradation_options) - known_fields)
        if unknown:
            raise TypeError(f"DegDataset got unexpected keyword argument(s): {', '.join(unknown)}")
        if prompt_mode not in PROMPT_MODES:
            raise ValueError(f"prompt_mode must be one of {', '.join(PROMPT_MODES)}; got {prompt_mode!r}")

        guide_style = {
            "degradation_types": degradation_types,
            "lr_scale": lr_scale,
            "noise_level": noise_level,
            "blur_radius": blur_radius,
            "jpeg_quality": jpeg_quality,
        }
        if config is None:
            config = DegradationConfig(**guide_style, **degradation_options)
        else:
            if not isinstance(config, DegradationConfig):
                raise TypeError(f"config must be a DegradationConfig; got {type(config).__name__}")
            both = [name for name, value in guide_style.items() if value != _ORIGINAL_GUIDE_DEFAULTS[name]]
            both += sorted(degradation_options)
            if both:
                raise ValueError(
                    "pass degradation settings either as config=... or as arguments, not both "
                    f"(got config and {', '.join(both)}); use config.replace({both[0]}=...) instead"
                )
        self.config: DegradationConfig = config
        self.hr_data_root = Path(hr_data_root)
        self.instance_prompt = instance_prompt
        self.prompt_mode = prompt_mode
        self.images: list[ImageInfo] = find_usable_images(self.hr_data_root, exclude)
        self._warn_about_small_images(self.images)
        # Random source for the guide-style ``apply_degradation(img)`` calls (widgets, notebooks).
        self._preview_rng = np.random.default_rng(self.seed)

    @property
    def paths(self) -> list[Path]:
        """The usable image files, in item order."""
        return [info.path for info in self.images]

    def __len__(self) -> int:
        return len(self.images) * self.repeats

    def __repr__(self) -> str:
        types = ", ".join(self.config.degradation_types) or "none"
        return (
            f"DegDataset({len(self.images)} images x {self.repeats} repeats from {str(self.hr_data_root)!r}, "
            f"resolution {self.resolution}, degradations: {types}, epoch {self.epoch})"
        )

    def apply_degradation(
        self,
        img: Image.Image,
        return_record: bool = False,
        seed: None | int | np.random.Generator = None,
    ) -> Image.Image | tuple[Image.Image, list[dict[str, Any]]]:
        """Degrade ``img`` with this dataset's config (the original guide's method).

        Args:
            img: a PIL image of any size (converted to RGB).
            return_record: also return the degradation record.
            seed: ``None`` draws from the dataset's own generator (a different result each call,
                like the original guide's method); an int or Generator makes the call reproducible.

        Returns:
            The degraded 8-bit RGB image (same size), or ``(image, record)``.
        """
        steps = sample_degradation_steps(self.config, self._preview_rng if seed is None else seed)
        degraded, record = apply_degradation_steps(img, steps)
        return (degraded, record) if return_record else degraded

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        info, clean, replaced = self._load_clean(index)
        geometry_rng, degradation_rng = self._item_generators(index)
        target = self._geometry(clean.size, geometry_rng).apply(clean)
        # Degrade after cropping, so control and target share every pixel position.
        control, record = apply_degradation_steps(
            target, sample_degradation_steps(self.config, degradation_rng)
        )
        prompt = restoration_prompt(record, self.instance_prompt, self.prompt_mode)
        item = self._item(control, target, prompt, record, info.path, index)
        item["replaced"] = str(replaced) if replaced is not None else ""
        return item

    def _load_clean(self, index: int) -> tuple[ImageInfo, Image.Image, Path | None]:
        """Item `index`'s photo, or, when it became unreadable since the dataset was built, the next
        readable one (one `ChangedImageWarning` per photo). Returns (info, RGB image, the unreadable
        photo's path or None)."""
        photo = index % len(self.images)
        for offset in range(len(self.images)):
            info = self.images[(photo + offset) % len(self.images)]
            try:
                image = load_rgb(info.path, min_short_side=self.resolution)
                return info, image, self.images[photo].path if offset else None
            except (UnusableImageError, OSError) as error:
                if info.path not in self.unreadable:
                    self.unreadable.add(info.path)
                    reason = getattr(error, "reason", None) or f"{type(error).__name__}: {error}"
                    warnings.warn(f"{info.path} can no longer be read ({reason}); another training photo "
                                  "stands in for it from now on", ChangedImageWarning, stacklevel=3)
        raise RuntimeError(f"none of the {len(self.images)} training photos can be read any more "
                           f"(all changed since the run started); check {self.images[0].path.parent}")


def _stem_key(path: Path, root: Path) -> str:
    """Matching key: the relative path without extension, POSIX style (``"sub/001"``)."""
    relative = path.relative_to(root) if path != root else Path(path.name)
    return relative.with_suffix("").as_posix()


def _index_by_stem(images: list[ImageInfo], root: Path) -> dict[str, ImageInfo]:
    by_key: dict[str, ImageInfo] = {}
    for info in images:
        key = _stem_key(info.path, root)
        if key in by_key:
            raise ValueError(
                f"two files in {str(root)!r} share the name {key!r} (without extension): "
                f"{by_key[key].path.name} and {info.path.name}; rename one so pairs are unambiguous"
            )
        by_key[key] = info
    return by_key


class PairedDataset(_PairDatasetBase):
    """Real pairs: degraded photos in one folder, their clean versions in another.

    Files are matched by relative path without extension, so ``degraded/a/001.jpg`` pairs with
    ``clean/a/001.png``. Files without a partner are left out with one
    :class:`UnmatchedPairWarning` listing them; no match at all is a ValueError. A degraded photo
    whose size differs from its clean partner is resized (bicubic) to the clean size before the
    shared crop, with one warning, so the pair stays aligned. Items have the same format as
    :class:`DegDataset` (``record`` is ``"[]"``), plus ``control_path``, the degraded file.

    Args:
        degraded_root, clean_root: the two folders (searched recursively).
        instance_prompt: the text prompt of every item.
        resolution, repeats, seed, random_flip, center_crop, crop_scale, exclude: as for :class:`DegDataset`.
    """

    def __init__(
        self,
        degraded_root: str | os.PathLike,
        clean_root: str | os.PathLike,
        instance_prompt: str,
        resolution: int = 512,
        repeats: int = 1,
        seed: int = 0,
        *,
        exclude: Iterable[str | os.PathLike] = (),
        random_flip: bool = True,
        center_crop: bool = False,
        crop_scale: Any = 1.0,
    ):
        super().__init__(resolution, repeats, seed, random_flip, center_crop, crop_scale)
        self.degraded_root = Path(degraded_root)
        self.clean_root = Path(clean_root)
        self.instance_prompt = instance_prompt
        exclude = list(exclude) if not isinstance(exclude, (str, os.PathLike)) else [exclude]
        # Neither folder may swallow the other (degraded/ inside a clean/ data folder, say).
        for inner, outer in ((self.degraded_root, self.clean_root), (self.clean_root, self.degraded_root)):
            if inner.resolve() != outer.resolve() and outer.resolve() in inner.resolve().parents:
                exclude.append(inner)
        degraded = _index_by_stem(find_usable_images(self.degraded_root, exclude), self.degraded_root)
        clean = _index_by_stem(find_usable_images(self.clean_root, exclude), self.clean_root)

        matched = sorted(set(degraded) & set(clean))
        if not matched:
            raise ValueError(
                f"no file in {str(self.degraded_root)!r} has a partner with the same name "
                f"(relative path without extension) in {str(self.clean_root)!r}; "
                f"e.g. degraded {sorted(degraded)[:3]} vs clean {sorted(clean)[:3]}"
            )
        unmatched = [f"degraded/{key}" for key in sorted(set(degraded) - set(clean))]
        unmatched += [f"clean/{key}" for key in sorted(set(clean) - set(degraded))]
        if unmatched:
            shown = ", ".join(unmatched[:10]) + (
                f" and {len(unmatched) - 10} more" if len(unmatched) > 10 else ""
            )
            warnings.warn(
                f"{len(unmatched)} file(s) have no partner and are left out: {shown}",
                UnmatchedPairWarning,
                stacklevel=2,
            )
        self.pairs: list[tuple[ImageInfo, ImageInfo]] = [(degraded[key], clean[key]) for key in matched]

        resized = [d.path.name for d, c in self.pairs if (d.width, d.height) != (c.width, c.height)]
        if resized:
            warnings.warn(
                f"{len(resized)} degraded image(s) differ in size from their clean partner and are "
                f"resized to the clean size (bicubic) to stay aligned: {', '.join(resized[:8])}",
                UserWarning,
                stacklevel=2,
            )
        self._warn_about_small_images(clean for _, clean in self.pairs)

    def __len__(self) -> int:
        return len(self.pairs) * self.repeats

    def __repr__(self) -> str:
        return (
            f"PairedDataset({len(self.pairs)} pairs x {self.repeats} repeats, "
            f"degraded {str(self.degraded_root)!r}, clean {str(self.clean_root)!r}, "
            f"resolution {self.resolution}, epoch {self.epoch})"
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        degraded_info, clean_info = self.pairs[index % len(self.pairs)]
        geometry_rng, _ = self._item_generators(index)
        clean = load_rgb(clean_info.path, min_short_side=self.resolution)
        degraded = load_rgb(degraded_info.path)
        if degraded.size != clean.size:
            degraded = degraded.resize(clean.size, Image.Resampling.BICUBIC)
        geometry = self._geometry(clean.size, geometry_rng)
        item = self._item(
            geometry.apply(degraded), geometry.apply(clean), self.instance_prompt, [], clean_info.path, index
        )
        item["control_path"] = str(degraded_info.path)
        return item
