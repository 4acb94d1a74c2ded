"""Nano Kontext: load time and 20-step inference time at the native 64x64 size.

    python tests/benchmarks/bench_nano.py [--repeats 5]

Load: `models.load_pipeline("nano")` (components built from code + shipped safetensors) against
plain `FluxKontextPipeline.from_pretrained` of the same pipeline exported to a folder, in one run
(the package imports are paid once, before either is timed, and reported separately).
Inference: one 64x64 image, 20 steps, batch 1, and a batch of 8 (images per second).
Targets (issue: nano): load < 5 s, one 20-step inference < 10 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

IMPORT_START = time.perf_counter()
import torch  # noqa: E402
from diffusers import FluxKontextPipeline  # noqa: E402
from PIL import Image  # noqa: E402

from kontext_lora_helpers.models import call_kwargs, load_pipeline  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - IMPORT_START


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    ours = _median_seconds(lambda: load_pipeline("nano"), args.repeats)
    pipe = load_pipeline("nano")
    with tempfile.TemporaryDirectory() as folder:
        pipe.save_pretrained(folder)
        plain = _median_seconds(lambda: FluxKontextPipeline.from_pretrained(folder), args.repeats)

    image = Image.new("RGB", (64, 64), (90, 140, 200))
    kwargs = dict(num_inference_steps=20, **call_kwargs(pipe, 64, 64))

    def run(batch: int):
        pipe(image=[image] * batch, prompt=["Keep the image unchanged"] * batch,
             generator=torch.Generator().manual_seed(0), **kwargs)

    single = _median_seconds(lambda: run(1), args.repeats)
    batched = _median_seconds(lambda: run(8), max(2, args.repeats // 2))
    print(f"threads: {torch.get_num_threads()}")
    print(f"package imports (torch, diffusers, transformers): {IMPORT_SECONDS:.2f} s, paid once per process")
    print(f"load nano, load_pipeline('nano'):            {ours:.3f} s (median of {args.repeats})")
    print(f"load nano, from_pretrained(exported folder): {plain:.3f} s   ratio ours / plain = {ours / plain:.2f}x")
    print(f"inference, 64x64, 20 steps, batch 1: {single:.3f} s  ({1 / single:.1f} images/s)")
    print(f"inference, 64x64, 20 steps, batch 8: {batched:.3f} s  ({8 / batched:.1f} images/s, "
          f"{(8 / batched) / (1 / single):.2f}x batch-1 throughput)")


if __name__ == "__main__":
    main()
