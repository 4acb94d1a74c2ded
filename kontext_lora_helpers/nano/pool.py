"""Natural-image crops for training the nano VAE and the nano editor.

The pool is, by default, the ten photos of the course's `data_samples/` that the shipped nano was
built from (`NANO_PHOTOS`; the LoRA trains on every photo there), or every photo under the folders
given; plus, when scikit-image is installed, the photographs bundled with it; never a validation or
test photo (`course.evaluation_dirs`).
Crops are taken at random scales (an S-pixel window up to the whole short side, resized to SxS),
flipped, rotated by multiples of 90 degrees and colour-jittered, so a handful of photos gives
millions of distinct training images.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data import pil_to_tensor
from ..course import EVALUATION_DIRNAMES, HELD_OUT_DIRNAME, PACKAGE_DIR, VALIDATION_DIRNAME
from ..images import list_images, load_rgb

REPO_DATA_SAMPLES = PACKAGE_DIR.parent / "data_samples"

# scikit-image's bundled photographs worth learning from (its textures and diagrams add little).
_SKIMAGE_PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "color.png",
    "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "motorcycle_left.png",
    "motorcycle_right.png", "retina.jpg", "rocket.jpg", "moon.png", "cell.png",
)


_STEM_ALIASES = {"ihc": "immunohistochemistry"}

# The photos of `data_samples/` the shipped nano weights were trained on. Photos added to the folder
# later are LoRA training data, like a real user's photos: nano never saw them, and a rebuild that
# uses this list describes the shipped weights.
NANO_PHOTOS = (
    "astronaut.jpg", "brick.png", "camera.png", "coins.png", "grace_hopper.jpg", "grass.png", "gravel.png",
    "hubble_deep_field.jpg", "immunohistochemistry.jpg", "rocket.jpg",
)


def held_out_stems(data_samples: Path = REPO_DATA_SAMPLES) -> set[str]:
    """File stems of the validation and test photos, which no nano component may train on."""
    stems: set[str] = set()
    for name in EVALUATION_DIRNAMES:
        folder = data_samples / name
        stems |= {p.stem for p in folder.iterdir()} if folder.is_dir() else set()
    return stems


def default_image_paths(image_dirs=None, use_skimage: bool = True) -> list[Path]:
    """Training photos for nano: every photo under `image_dirs` (without their `validation/` and `held_out/` folders),
    or by default the `NANO_PHOTOS` of `data_samples/`; plus scikit-image's bundled photos when that
    package is installed. Held-out stems are excluded."""
    excluded = held_out_stems()
    paths: list[Path] = []
    if image_dirs is None:
        paths += [REPO_DATA_SAMPLES / name for name in NANO_PHOTOS]
    for folder in map(Path, image_dirs or ()):
        paths += list_images(folder, exclude=[folder / name for name in EVALUATION_DIRNAMES])
    if use_skimage:
        try:
            import skimage.data

            skimage_dir = Path(skimage.data.__file__).parent
            paths += [skimage_dir / name for name in _SKIMAGE_PHOTOS if (skimage_dir / name).exists()]
        except ImportError:
            warnings.warn("scikit-image is not installed; training nano on the given photos only.", stacklevel=2)
    unique: dict[str, Path] = {}
    for path in paths:  # data_samples/ holds reduced copies of some scikit-image photos: keep one
        stem = _STEM_ALIASES.get(path.stem, path.stem)
        if stem not in excluded:
            unique.setdefault(stem, path)
    return list(unique.values())


class CropPool:
    """Random square crops of a set of photos, as (B, 3, S, S) float tensors in [-1, 1].

    Args:
        paths: photo files (loaded once, kept in memory as RGB uint8 arrays).
        size: side of the returned crops in pixels.
        seed: seeds the numpy generator that draws every crop, so a run is reproducible.
        max_side: photos are first reduced so their long side is at most this (keeps the range of
            scales close to what a 64-pixel model sees at inference).
    """

    def __init__(self, paths, size: int = 64, seed: int = 0, max_side: int = 512):
        self.size = size
        self.rng = np.random.default_rng(seed)
        self.images: list[Image.Image] = []
        for path in paths:
            image = load_rgb(path)
            if max(image.size) > max_side:
                image.thumbnail((max_side, max_side), Image.BICUBIC)
            self.images.append(image)
        if not self.images:
            raise ValueError("The nano training pool is empty: pass folders that contain photos.")

    def crop(self, rng: np.random.Generator | None = None) -> np.ndarray:
        """One augmented crop: (S, S, 3) uint8."""
        rng = rng or self.rng
        image = self.images[rng.integers(len(self.images))]
        short = min(image.size)
        # Log-uniform window size: as many whole-scene views as close-up textures.
        window = int(round(np.exp(rng.uniform(np.log(min(self.size, short)), np.log(short)))))
        left = rng.integers(0, image.width - window + 1)
        top = rng.integers(0, image.height - window + 1)
        crop = image.resize((self.size, self.size), Image.BICUBIC, box=(left, top, left + window, top + window))
        array = np.asarray(crop)
        if rng.random() < 0.5:
            array = array[:, ::-1]
        array = np.rot90(array, k=int(rng.integers(4)))
        if rng.random() < 0.5:  # channel permutation: the pool has many gray and few colourful photos
            array = array[..., rng.permutation(3)]
        if rng.random() < 0.3:  # saturation jitter around the luminance
            gray = array.mean(axis=2, keepdims=True)
            array = np.clip(gray + (array - gray) * rng.uniform(0.3, 1.6), 0, 255)
        return np.ascontiguousarray(array, dtype=np.uint8)

    def batch(self, batch_size: int, rng: np.random.Generator | None = None) -> torch.Tensor:
        """(B, 3, S, S) float32 in [-1, 1]."""
        crops = np.stack([self.crop(rng) for _ in range(batch_size)])
        return torch.from_numpy(crops).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def photo_crops(folder: Path, size: int = 64, crops_per_image: int = 4, seed: int = 1234) -> torch.Tensor:
    """Evaluation crops of every photo in `folder`: for each photo, the whole photo (centre square,
    resized) and `crops_per_image - 1` random square windows of a random side between `size` and the
    short side, resized to `size`. The same crops on every machine for one seed.

    Returns:
        (N, 3, S, S) float32 in [-1, 1], N = photos x crops_per_image, photo by photo in file order.
    """
    paths = list_images(folder)
    pool = CropPool(paths, size=size, seed=seed)
    rng = np.random.default_rng(seed)
    tensors = []
    for image in pool.images:
        short = min(image.size)
        left, top = (image.width - short) // 2, (image.height - short) // 2
        whole = image.resize((size, size), Image.BICUBIC, box=(left, top, left + short, top + short))
        tensors.append(pil_to_tensor(whole))
        for _ in range(crops_per_image - 1):
            window = int(rng.integers(size, short + 1))
            x, y = rng.integers(0, image.width - window + 1), rng.integers(0, image.height - window + 1)
            tensors.append(pil_to_tensor(image.resize((size, size), Image.BICUBIC, box=(x, y, x + window, y + window))))
    return torch.stack(tensors)


PHOTO_SETS = {"validation": VALIDATION_DIRNAME, "test": HELD_OUT_DIRNAME}
"""The evaluation sets by name (`course`): choices are made on "validation", figures reported on "test"."""


def evaluation_batch(photo_set: str = "test", size: int = 64, data_samples: Path = REPO_DATA_SAMPLES,
                     crops_per_image: int = 4, seed: int = 1234) -> torch.Tensor:
    """`photo_crops` of the course's validation or test photos: 24 validation crops (6 photos) or 16
    test crops (4 photos) at the defaults. (N, 3, S, S) in [-1, 1].

    Raises:
        ValueError: for a set other than "validation" or "test".
    """
    if photo_set not in PHOTO_SETS:
        raise ValueError(f"photo_set must be one of {sorted(PHOTO_SETS)}; got {photo_set!r} (the training "
                         "photos are never used to evaluate)")
    return photo_crops(data_samples / PHOTO_SETS[photo_set], size, crops_per_image, seed)


def held_out_batch(size: int = 64, data_samples: Path = REPO_DATA_SAMPLES, crops_per_image: int = 4, seed: int = 1234):
    """The test crops: `evaluation_batch("test", ...)`, 16 crops of the 4 test photos at the defaults."""
    return evaluation_batch("test", size, data_samples, crops_per_image, seed)
