"""Restoration with LoRAs (``kontext_lora_helpers.restore``): sizes, tiling, batching, LoRA loading, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kontext_lora_helpers import lora as lora_ops
from kontext_lora_helpers import inference, restore
from kontext_lora_helpers.lora import LoraFileError
from kontext_lora_helpers.models import GUIDANCE_SCALE, call_kwargs, load_pipeline
from kontext_lora_helpers.prompts import DEFAULT_INSTANCE_PROMPT


STEPS = 3  # enough to exercise the scheduler; the figures below do not need a good restoration
SEED = 5


def smooth_photo(width: int, height: int, phase: float = 0.0) -> Image.Image:
    """A smooth, photo-like RGB test image: no edges of its own, so any seam stands out."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = [128 + 60 * np.sin(x / 9.0 + phase), 128 + 60 * np.cos(y / 11.0), 128 + 40 * np.sin((x + y) / 13.0)]
    return Image.fromarray(np.stack(channels, -1).round().astype(np.uint8))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int64)


def seam_ratio(image: Image.Image, edges: tuple[int, ...]) -> float:
    """Mean step between neighbouring pixels across the given rows/columns, over the mean step anywhere."""
    values = np.asarray(image, dtype=np.float64)
    steps_x = np.abs(np.diff(values, axis=1)).mean(axis=(0, 2))  # steps_x[e - 1]: between columns e-1 and e
    steps_y = np.abs(np.diff(values, axis=0)).mean(axis=(1, 2))
    at_edges = np.mean([steps_x[e - 1] for e in edges] + [steps_y[e - 1] for e in edges])
    return float(at_edges / np.mean(np.r_[steps_x, steps_y]))


@pytest.fixture(scope="module")
def pipe():
    pipeline = load_pipeline("nano", device="cpu")
    yield pipeline


@pytest.fixture
def base_pipe(pipe):
    """The shared nano pipeline with no LoRA loaded, before and after the test."""
    pipe.unload_lora_weights()
    yield pipe
    pipe.unload_lora_weights()


@pytest.fixture(scope="module")
def exported_nano(tmp_path_factory) -> Path:
    """Nano written as a standard diffusers folder (`python -m kontext_lora_helpers.nano export`)."""
    from kontext_lora_helpers.nano.__main__ import main as nano_main

    folder = tmp_path_factory.mktemp("nano") / "pipeline"
    assert nano_main(["export", str(folder)]) == 0
    return folder


# --- sizes and tiles --------------------------------------------------------------------------


def test_working_size_keeps_the_aspect_ratio_within_the_native_area():
    assert restore.working_size(64, 64, 64, 8) == (64, 64)
    assert restore.working_size(32, 32, 64, 8) == (64, 64)  # small images run at the native area
    assert restore.working_size(250, 187, 64, 8) == (72, 56)
    assert restore.working_size(187, 250, 64, 8) == (56, 72)
    assert restore.working_size(4000, 3000, 1024, 16) == (1168, 880)
    assert restore.working_size(1000, 10, 64, 8) == (512, 8)  # a strip keeps one multiple of height
    for width, height in [(250, 187), (1000, 10), (33, 97), (4000, 3000), (640, 480)]:
        for native, multiple in [(64, 8), (1024, 16)]:
            w, h = restore.working_size(width, height, native, multiple)
            assert w % multiple == 0 and h % multiple == 0 and w * h <= native * native
            if max(width / height, height / width) < 4:  # ordinary photos: aspect within a few percent
                assert abs(np.log((w / h) / (width / height))) < 0.2


def test_tiles_cover_each_side_with_at_least_the_overlap():
    assert restore.tile_starts(128, 64, 16) == [0, 32, 64]
    assert restore.tile_starts(64, 64, 16) == [0]
    for length, tile, overlap in [(250, 64, 16), (187, 64, 16), (100, 64, 0), (3000, 1024, 256)]:
        starts = restore.tile_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] + tile == length
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))
    assert restore.plan_tiles(64, 64, 64, 8) is None  # not larger than the native area: run whole
    # notebook 05's 250 x 187 photo with the real model (1024 px tiles): one tile, so no layout
    assert restore.plan_tiles(250, 187, 1024, 16) is None
    layout = restore.plan_tiles(250, 187, 64, 8)
    assert (layout.tile_width, layout.tile_height, layout.overlap) == (64, 64, 16)
    assert layout.count == len(layout.xs) * len(layout.ys) == 5 * 4
    with pytest.raises(ValueError, match="overlap"):
        restore.plan_tiles(250, 187, 64, 8, overlap=64)


def test_blending_reproduces_agreeing_tiles_and_fades_disagreeing_ones():
    width, height = 150, 100
    image = np.asarray(smooth_photo(width, height), dtype=np.float64) / 255
    layout = restore.plan_tiles(width, height, 64, 8)
    crops = [image[top:bottom, left:right] for left, top, right, bottom in layout.boxes()]
    # The weights are a partition of unity: tiles that agree give back the image itself.
    np.testing.assert_allclose(restore.blend_tiles(layout, crops, width, height), image, atol=1e-12)

    # Tiles that disagree by a constant (a brightness drift between tiles) meet without a step.
    offsets = [0.15 * (k % 2) for k in range(layout.count)]
    blended = restore.blend_tiles(layout, [c + o for c, o in zip(crops, offsets)], width, height) - image
    pasted = np.zeros_like(image)
    for (left, top, right, bottom), offset in zip(layout.boxes(), offsets):
        pasted[top:bottom, left:right] = offset
    largest_step = lambda a: max(np.abs(np.diff(a, axis=0)).max(), np.abs(np.diff(a, axis=1)).max())  # noqa: E731
    assert largest_step(pasted) == pytest.approx(0.15)
    assert largest_step(blended) < 0.15 / 4  # spread over the overlap instead of one pixel
    assert restore.blend_window(64, 64, 16).min() > 0  # every pixel keeps a weight


# --- restoring with the pipeline --------------------------------------------------------------


def test_any_input_size_comes_back_at_exactly_that_size(base_pipe):
    odd = smooth_photo(250, 187)
    restored = restore.restore_image(base_pipe, odd, num_inference_steps=STEPS, seed=SEED)
    assert restored.size == (250, 187) and restored.mode == "RGB"
    # Nano mostly keeps its input; a wrong orientation or a crop would drop far below this.
    from kontext_lora_helpers.metrics import psnr

    assert psnr(restored, odd) > 20
    tall = restore.restore_image(base_pipe, smooth_photo(37, 90).convert("L"), num_inference_steps=STEPS)
    assert tall.size == (37, 90) and tall.mode == "RGB"


def test_a_batch_equals_its_images_restored_one_by_one(base_pipe):
    first, second = smooth_photo(64, 64), smooth_photo(64, 64, phase=2.0)
    together = restore.restore_batch(base_pipe, [first, second], num_inference_steps=STEPS, seed=SEED)
    alone = restore.restore_batch(base_pipe, [second], num_inference_steps=STEPS, seed=SEED)[0]
    # Each image has its own generator, so only batched-matmul rounding may differ (<= 1 level).
    assert np.abs(pixels(together[1]) - pixels(alone)).max() <= 1
    assert np.abs(pixels(together[0]) - pixels(together[1])).mean() > 5  # the batch did not repeat one image
    with pytest.raises(ValueError, match="one size"):
        restore.restore_batch(base_pipe, [first, smooth_photo(48, 64)])
    mixed = restore.restore_images(base_pipe, [first, smooth_photo(48, 64), second], num_inference_steps=STEPS,
                                   seed=SEED, batch_size=2)
    assert [image.size for image in mixed] == [(64, 64), (48, 64), (64, 64)]
    assert np.abs(pixels(mixed[2]) - pixels(alone)).max() <= 1


def test_tiled_restoration_keeps_the_size_and_leaves_no_seams(base_pipe):
    image = smooth_photo(128, 128)  # 4x nano's native area: 3 x 3 tiles of 64 sharing 32 pixels
    layout = restore.plan_tiles(128, 128, 64, 8)
    assert layout.xs == layout.ys == (0, 32, 64)
    tiled = restore.restore_image(base_pipe, image, num_inference_steps=STEPS, seed=SEED, tile=True, batch_size=9)
    whole = restore.restore_image(base_pipe, image, num_inference_steps=STEPS, seed=SEED)
    assert tiled.size == whole.size == (128, 128)
    tile_edges = (32, 64, 96)
    # The same tiles pasted side by side (each pixel from the last tile over it) show the seams
    # that blending must hide.
    crops = [image.crop(box) for box in layout.boxes()]
    tiles = inference.run_at_size(base_pipe, crops, [DEFAULT_INSTANCE_PROMPT] * len(crops), STEPS, GUIDANCE_SCALE, SEED)
    pasted = np.zeros((128, 128, 3))
    for (left, top, right, bottom), tile in zip(layout.boxes(), tiles):
        pasted[top:bottom, left:right] = tile
    pasted_ratio, tiled_ratio = seam_ratio(inference.float_to_pil(pasted), tile_edges), seam_ratio(tiled, tile_edges)
    assert pasted_ratio > 1.3 > tiled_ratio  # measured on nano: 1.42 and 0.97
    # The blend of exactly these tiles, nothing else.
    assert np.array_equal(pixels(tiled), pixels(inference.float_to_pil(restore.blend_tiles(layout, tiles, 128, 128))))
    from kontext_lora_helpers.metrics import psnr

    assert psnr(tiled, whole) > 20  # the same picture; tiles keep the full resolution, so not identical


def test_lora_scale_zero_is_the_base_model_and_one_changes_it(base_pipe, lora_dir):
    image = smooth_photo(64, 64)
    base = restore.restore_batch(base_pipe, [image], num_inference_steps=STEPS, seed=SEED)[0]
    loaded = restore.load_loras(base_pipe, [lora_dir], [0.0])
    assert loaded[0]["ranks"] == [4] and loaded[0]["layers"] == 44 and loaded[0]["scale"] == 0.0
    off = restore.restore_batch(base_pipe, [image], num_inference_steps=STEPS, seed=SEED)[0]
    restore.load_loras(base_pipe, [lora_dir], [1.0])
    on = restore.restore_batch(base_pipe, [image], num_inference_steps=STEPS, seed=SEED)[0]
    assert np.array_equal(pixels(off), pixels(base))
    assert np.abs(pixels(on) - pixels(base)).mean() > 2
    # Two copies at 0.5 each add up to one copy at 1.0.
    base_pipe.unload_lora_weights()
    restore.load_loras(base_pipe, [lora_dir, lora_dir / lora_ops.LORA_WEIGHT_NAME], [0.5, 0.5])
    halves = restore.restore_batch(base_pipe, [image], num_inference_steps=STEPS, seed=SEED)[0]
    assert np.abs(pixels(halves) - pixels(on)).max() <= 1
    with pytest.raises(ValueError, match="one scale per LoRA"):
        restore.load_loras(base_pipe, [lora_dir], [1.0, 2.0])


def test_project_lora_in_plain_diffusers_gives_the_same_pixels_as_the_command(lora_dir, exported_nano, tmp_path):
    from diffusers import FluxKontextPipeline

    source = tmp_path / "in" / "portrait.png"
    source.parent.mkdir()
    smooth_photo(64, 64).save(source)
    out = tmp_path / "out"
    assert restore.main(["--lora_weights", str(lora_dir), "--input", str(source), "--output", str(out),
                         "--num_inference_steps", str(STEPS), "--seed", str(SEED)]) == 0

    plain = FluxKontextPipeline.from_pretrained(exported_nano)
    plain.set_progress_bar_config(disable=True)
    plain.load_lora_weights(lora_dir)
    expected = plain(image=Image.open(source).convert("RGB"), prompt=DEFAULT_INSTANCE_PROMPT,
                     num_inference_steps=STEPS, guidance_scale=3.5,
                     generator=torch.Generator().manual_seed(SEED), **call_kwargs(plain, 64, 64)).images[0]
    written = Image.open(out / "portrait.png")
    assert np.array_equal(pixels(written), pixels(expected))

    plain.disable_lora()  # and the LoRA matters: without it the pixels differ
    without = plain(image=Image.open(source).convert("RGB"), prompt=DEFAULT_INSTANCE_PROMPT,
                    num_inference_steps=STEPS, generator=torch.Generator().manual_seed(SEED),
                    **call_kwargs(plain, 64, 64)).images[0]
    assert np.abs(pixels(written) - pixels(without)).mean() > 2

    record = json.loads((out / "portrait.json").read_text())
    assert record["model"] == "nano" and record["prompt"] == DEFAULT_INSTANCE_PROMPT
    assert (record["num_inference_steps"], record["guidance_scale"], record["seed"]) == (STEPS, 3.5, SEED)
    assert [(entry["path"], entry["scale"], entry["ranks"]) for entry in record["loras"]] == [(str(lora_dir), 1.0, [4])]
    assert record["input_size"] == record["output_size"] == [64, 64] and record["working_size"] == [64, 64]
    assert record["tiling"] == {"enabled": False, "used": False}


def test_folder_mode_skips_a_broken_file_tiles_large_images_and_keeps_names(tmp_path, capsys):
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    smooth_photo(250, 187).save(inputs / "wide.jpg", quality=95)
    smooth_photo(64, 64).save(inputs / "sub" / "small.png")
    (inputs / "broken.png").write_bytes(b"not a png at all")
    out = tmp_path / "out"
    assert restore.main(["--input", str(inputs), "--output", str(out), "--num_inference_steps", "2",
                         "--tile", "--batch_size", "8"]) == 0
    assert "broken.png" in capsys.readouterr().err
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["sub/small.json", "sub/small.png", "wide.json", "wide.png"]
    assert Image.open(out / "wide.png").size == (250, 187)
    wide = json.loads((out / "wide.json").read_text())
    assert wide["tiling"]["used"] and wide["tiling"]["grid"] == [5, 4] and wide["tiling"]["tile_size"] == [64, 64]
    assert wide["loras"] == [] and wide["num_inference_steps"] == 2
    small = json.loads((out / "sub" / "small.json").read_text())
    assert small["tiling"] == {"enabled": True, "used": False} and small["working_size"] == [64, 64]

    # A second run refuses to replace what is there, and names a file.
    assert restore.main(["--input", str(inputs), "--output", str(out), "--num_inference_steps", "2"]) == 1
    assert "--overwrite" in capsys.readouterr().err


# --- errors -----------------------------------------------------------------------------------


def _write_lora(folder: Path, tensors: dict, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / lora_ops.LORA_WEIGHT_NAME), metadata=metadata)
    return folder


@pytest.fixture(scope="module")
def misfit_loras(lora_dir, tmp_path_factory) -> dict:
    from safetensors.torch import load_file

    good = load_file(str(lora_dir / lora_ops.LORA_WEIGHT_NAME))
    root = tmp_path_factory.mktemp("misfits")
    wider = {k: torch.zeros(v.shape[0], v.shape[1] * 2) if ".lora_A." in k else v for k, v in good.items()}
    rank = {k: torch.zeros(8, v.shape[1]) if ".lora_A." in k else v for k, v in good.items()}
    extra = dict(good, **{"transformer.transformer_blocks.18.attn.to_q.lora_A.weight": torch.zeros(4, 128),
                          "transformer.transformer_blocks.18.attn.to_q.lora_B.weight": torch.zeros(128, 4)})
    stable_diffusion = {"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.zeros(4, 320),
                        "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight": torch.zeros(320, 4)}
    garbage = root / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 16)
    return {
        "another architecture": (_write_lora(root / "sd", stable_diffusion), "another architecture"),
        "wider layers": (_write_lora(root / "wider", wider), "this model's is 128 -> 128"),
        "rank mismatch": (_write_lora(root / "rank", rank), "rank mismatch"),
        "missing layers": (_write_lora(root / "extra", extra), "do not exist in this model"),
        "not safetensors": (garbage, "not a readable safetensors file"),
    }


@pytest.mark.parametrize("case", ["another architecture", "wider layers", "rank mismatch", "missing layers",
                                  "not safetensors"])
def test_a_lora_that_does_not_fit_is_refused_by_name_and_leaves_the_pipeline_intact(base_pipe, misfit_loras, case):
    path, reason = misfit_loras[case]
    with pytest.raises(LoraFileError, match=reason) as caught:
        restore.load_loras(base_pipe, [path])
    assert str(path.name) in str(caught.value)
    assert base_pipe.get_list_adapters() == {} or not any(base_pipe.get_list_adapters().values())
    # diffusers would have widened the model's layers for "wider layers"; the check runs first.
    assert base_pipe.transformer.transformer_blocks[0].attn.to_q.in_features == 128


def test_a_failure_in_diffusers_takes_out_the_loras_loaded_before_it(base_pipe, lora_dir, tmp_path):
    # A kohya-layout file passes the first check (diffusers converts that layout itself) but names
    # layers FLUX does not have: diffusers refuses it after the good LoRA was already loaded.
    kohya = _write_lora(tmp_path / "kohya", {
        "lora_unet_no_such_layer.lora_down.weight": torch.zeros(4, 32),
        "lora_unet_no_such_layer.lora_up.weight": torch.zeros(32, 4),
        "lora_unet_no_such_layer.alpha": torch.tensor(4.0),
    })
    with pytest.raises(LoraFileError, match="diffusers could not load it") as caught:
        restore.load_loras(base_pipe, [lora_dir, kohya])
    assert str(kohya / lora_ops.LORA_WEIGHT_NAME) in str(caught.value)
    assert not any(base_pipe.get_list_adapters().values())


def test_command_line_errors_are_one_clear_line(tmp_path, misfit_loras, capsys):
    image = tmp_path / "photo.png"
    smooth_photo(64, 64).save(image)
    a_file = tmp_path / "taken.txt"
    a_file.write_text("x")
    assert restore.main(["--input", str(image), "--output", str(a_file)]) == 1
    assert "is an existing file" in capsys.readouterr().err

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert restore.main(["--input", str(broken), "--output", str(tmp_path / "out")]) == 1
    assert "cannot use --input" in capsys.readouterr().err and not (tmp_path / "out").exists()

    wider, _ = misfit_loras["wider layers"]
    assert restore.main(["--input", str(image), "--output", str(tmp_path / "out"), "--lora_weights", str(wider)]) == 1
    message = capsys.readouterr().err
    assert str(wider / lora_ops.LORA_WEIGHT_NAME) in message and "does not fit" in message

    assert restore.main(["--input", str(image), "--output", str(tmp_path / "out"), "--lora_weights",
                         str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        restore.main(["--input", str(image), "--output", str(tmp_path / "out"), "--lora_weights", str(wider),
                      "--lora_scale", "1", "2"])


def test_the_compile_flag_restores_the_same_pixels(lora_dir, tmp_path):
    """``--compile`` with the aot_eager backend (torch.compile's tracing without code generation,
    so it takes seconds) gives the pixels of the uncompiled command."""
    source = tmp_path / "in" / "portrait.png"
    source.parent.mkdir()
    smooth_photo(64, 64).save(source)
    written = {}
    for name, extra in (("plain", []), ("compiled", ["--compile", "--compile_backend", "aot_eager"])):
        assert restore.main(["--lora_weights", str(lora_dir), "--input", str(source), "--output", str(tmp_path / name),
                             "--num_inference_steps", "2", "--seed", str(SEED), *extra]) == 0
        written[name] = pixels(Image.open(tmp_path / name / "portrait.png"))
    assert np.abs(written["plain"].astype(int) - written["compiled"].astype(int)).max() <= 1
