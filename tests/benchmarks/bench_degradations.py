"""Benchmark: how fast is the original guide's degradation pipeline, and is the widget preview interactive?

Run from the repository root::

    python tests/benchmarks/bench_degradations.py [--rounds 5] [--images 64]

It measures two things on 512 x 512 crops of the colour photos in ``data_samples/``:

1. **Throughput** of the original guide's pipeline (downsample x8, Gaussian noise 0.05, blur
   radius 1.0, JPEG quality 75) in images per second, for ``kontext_lora_helpers.degradations``
   (sampling the record *and* applying it, as the dataset does) and for
   ``reference_guide_pipeline`` below: the straightforward implementation of the same four steps
   that the original guide's description suggests (PIL for resize, blur and JPEG; the noise with
   ``np.random.normal`` on a float copy, as it is usually written). The two run interleaved, round
   after round, so that load from other processes hits both alike; the ratio is ours / reference
   (target: >= 1.0).
2. **Widget preview latency**: median milliseconds for one 512 x 512 image through the original
   guide's pipeline with ``apply_degradation`` (target: well under 100 ms), and the same plus
   encoding the result as PNG (``compress_level=1``; the default level 6 alone takes ~100 ms at
   512 px), which is what an ``ipywidgets.Image`` needs.

This is not a pytest test (``tests/benchmarks`` is not collected); numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing

from kontext_lora_helpers.degradations import PRESETS, apply_degradation  # noqa: E402
from kontext_lora_helpers.images import find_usable_images, load_rgb  # noqa: E402

SIZE = 512


def reference_guide_pipeline(
    image: Image.Image,
    lr_scale: int = 8,
    noise_level: float = 0.05,
    blur_radius: float = 1.0,
    jpeg_quality: int = 75,
) -> Image.Image:
    """The original guide's four steps written the plain way (the baseline to beat)."""
    width, height = image.size
    image = image.resize((width // lr_scale, height // lr_scale), Image.BICUBIC)
    image = image.resize((width, height), Image.BICUBIC)
    pixels = np.array(image).astype(np.float32) / 255.0
    pixels = pixels + np.random.normal(0, noise_level, pixels.shape)
    pixels = np.clip(pixels, 0, 1)
    image = Image.fromarray((pixels * 255).astype(np.uint8))
    image = image.filter(ImageFilter.GaussianBlur(blur_radius))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=jpeg_quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def sample_photos(count: int) -> list[Image.Image]:
    """``count`` 512 x 512 RGB crops of the colour sample photos (cycled)."""
    photos = []
    for info in find_usable_images(REPO_ROOT / "data_samples"):
        image = load_rgb(info.path)
        if info.mode != "RGB":
            continue  # grayscale textures are not typical photos
        scale = SIZE / min(image.size)
        image = image.resize(
            (max(SIZE, round(image.width * scale)), max(SIZE, round(image.height * scale))), Image.BICUBIC
        )
        photos.append(image.crop((0, 0, SIZE, SIZE)))
    return [photos[i % len(photos)] for i in range(count)]


def throughput(rounds: int, count: int) -> tuple[float, float]:
    photos = sample_photos(count)
    config = PRESETS["original_guide"]
    np.random.seed(0)
    for photo in photos[:4]:  # warm-up: imports, caches, allocator
        reference_guide_pipeline(photo)
        apply_degradation(photo, config, seed=0)
    ours_seconds = reference_seconds = 0.0
    for round_index in range(rounds):
        start = time.perf_counter()
        for photo in photos:
            reference_guide_pipeline(photo)
        reference_seconds += time.perf_counter() - start
        start = time.perf_counter()
        for index, photo in enumerate(photos):
            apply_degradation(photo, config, seed=round_index * count + index)
        ours_seconds += time.perf_counter() - start
    total = rounds * count
    return total / ours_seconds, total / reference_seconds


def preview_latency(repeats: int) -> tuple[float, float]:
    photo = sample_photos(1)[0]
    config = PRESETS["original_guide"]
    plain, with_png = [], []
    for index in range(repeats):
        start = time.perf_counter()
        degraded, _ = apply_degradation(photo, config, seed=index)
        middle = time.perf_counter()
        degraded.save(io.BytesIO(), format="PNG", compress_level=1)  # fast PNG, as a preview wants
        end = time.perf_counter()
        plain.append(middle - start)
        with_png.append(end - start)
    return 1000 * statistics.median(plain), 1000 * statistics.median(with_png)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of each implementation")
    parser.add_argument("--images", type=int, default=64, help="512x512 images per round")
    parser.add_argument("--preview_repeats", type=int, default=41, help="calls timed for the preview median")
    args = parser.parse_args()

    ours, reference = throughput(args.rounds, args.images)
    print(f"original guide's pipeline on {SIZE}x{SIZE} photos, {args.rounds} rounds x {args.images} "
          "images")
    print(f"  kontext_lora_helpers.degradations: {ours:8.1f} images/s")
    print(f"  reference (plain PIL + np.random): {reference:8.1f} images/s")
    print(f"  ratio ours / reference:            {ours / reference:8.2f}x   (target >= 1.0)")
    plain_ms, png_ms = preview_latency(args.preview_repeats)
    print(f"widget preview, one {SIZE}x{SIZE} image, median of {args.preview_repeats}:")
    print(f"  apply_degradation:                 {plain_ms:8.1f} ms   (target well under 100 ms)")
    print(f"  apply_degradation + PNG encoding:  {png_ms:8.1f} ms   (compress_level=1)")


if __name__ == "__main__":
    main()
