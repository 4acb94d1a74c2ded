"""Data folders and datasets: bad files, colour modes, EXIF, alignment, determinism, real pairs."""

from __future__ import annotations

import json
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from kontext_lora_helpers import images
from kontext_lora_helpers.data import (
    DegDataset,
    PairedDataset,
    UnmatchedPairWarning,
    UpscaledImageWarning,
    pil_to_tensor,
    tensor_to_pil,
)
from kontext_lora_helpers.degradations import ORIGINAL_GUIDE_ORDER, PRESETS
from kontext_lora_helpers.images import (
    SkippedImageWarning,
    UnusableImageError,
    find_usable_images,
    list_images,
    load_rgb,
    to_rgb,
    validate_image,
)

PROMPT = "Restore this degraded photograph to high fidelity"

# ---------------------------------------------------------------------------------------------
# Building test folders
# ---------------------------------------------------------------------------------------------


def photo(size: tuple[int, int] = (80, 64), seed: int = 0) -> Image.Image:
    """A smooth colourful 'photo' with mid-range values (no clipping when noise is added)."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 6, size=3)
    channels = [128 + 60 * np.sin(x / (5 + 2 * c) + phase[c]) * np.cos(y / (7 + c)) for c in range(3)]
    return Image.fromarray(np.stack(channels, axis=2).round().astype(np.uint8))


def save(image: Image.Image, path: Path, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def png_bomb_bytes(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def truncated_file(path: Path, fmt: str) -> Path:
    """An image file cut in half, as an interrupted copy leaves it."""
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    save(noisy, path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    """Three good photos, one in a subfolder, plus files that must be ignored silently."""
    root = tmp_path / "photos"
    save(photo((80, 64), 1), root / "b.png")
    save(photo((64, 96), 2), root / "a.jpg", quality=95)
    save(photo((72, 72), 3), root / "sub" / "c.png")
    (root / "README.md").write_text("not an image")
    save(photo((64, 64), 4), root / ".git" / "d.png")  # hidden folder: not entered
    return root


def build_dataset(root: Path, **options) -> DegDataset:
    settings = {"resolution": 64, "seed": 0}
    settings.update(options)
    return DegDataset(root, PROMPT, **settings)


# ---------------------------------------------------------------------------------------------
# images.py: listing, bad files, modes, EXIF
# ---------------------------------------------------------------------------------------------


def test_list_images_is_recursive_sorted_and_skips_hidden_and_other_files(photo_folder):
    found = [p.relative_to(photo_folder).as_posix() for p in list_images(photo_folder)]
    assert found == ["a.jpg", "b.png", "sub/c.png"]
    assert list_images(photo_folder, exclude=[photo_folder / "sub"]) == [
        photo_folder / "a.jpg",
        photo_folder / "b.png",
    ]
    assert list_images(photo_folder, exclude=["sub"]) == [photo_folder / "a.jpg", photo_folder / "b.png"]
    assert list_images(photo_folder / "a.jpg") == [photo_folder / "a.jpg"]


def test_missing_empty_and_unusable_folders_are_errors_naming_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_usable_images(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no usable image in .*empty"):
        find_usable_images(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"")
    with (
        pytest.warns(SkippedImageWarning),
        pytest.raises(ValueError, match="no usable image in .*bad.*1 image files"),
    ):
        DegDataset(tmp_path / "bad", PROMPT, resolution=64)
    with pytest.raises(FileNotFoundError):
        DegDataset(tmp_path / "nowhere", PROMPT, resolution=64)


def test_every_bad_file_is_skipped_with_one_warning_and_good_ones_are_kept(tmp_path):
    root = tmp_path / "data"
    save(photo((64, 64), 1), root / "good1.png")
    save(photo((64, 64), 2), root / "good2.jpg")
    (root / "zero.jpg").write_bytes(b"")
    truncated_file(root / "truncated.png", "PNG")
    truncated_file(root / "truncated.jpg", "JPEG")
    (root / "notes.jpg").write_text("this is a text file, not a JPEG\n" * 10)
    (root / "bomb.png").write_bytes(png_bomb_bytes())
    frames = [Image.new("RGB", (32, 32), colour) for colour in ("red", "blue")]
    save(frames[0], root / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    save(photo((64, 64), 3), root / "._shadow.jpg")
    expected = {
        "zero.jpg": "empty file",
        "truncated.png": "corrupt or truncated",
        "truncated.jpg": "corrupt or truncated",
        "notes.jpg": "not an image",
        "bomb.png": "decompression bomb",
        "animated.gif": "animated image with 2 frames",
        "._shadow.jpg": "hidden file",
    }
    with pytest.warns(SkippedImageWarning) as caught:
        dataset = build_dataset(root)
    messages = [str(w.message) for w in caught if issubclass(w.category, SkippedImageWarning)]
    assert len(messages) == len(expected)
    for name, reason in expected.items():
        matching = [m for m in messages if f"/{name}:" in m]
        assert len(matching) == 1 and reason in matching[0], (name, messages)
    assert [p.name for p in dataset.paths] == ["good1.png", "good2.jpg"]
    assert len(dataset) == 2 and dataset[1]["target"].shape == (3, 64, 64)


def test_pixel_limit_is_configurable(tmp_path, monkeypatch):
    path = save(photo((64, 64)), tmp_path / "big.png")
    assert validate_image(path).width == 64
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(UnusableImageError, match="decompression bomb: 64 x 64 = 4,096 pixels"):
        validate_image(path)
    with pytest.raises(UnusableImageError, match="decompression bomb"):
        load_rgb(path)


def test_validate_image_reports_size_and_mode(tmp_path):
    info = validate_image(save(photo((80, 64)).convert("L"), tmp_path / "gray.png"))
    assert (info.width, info.height, info.mode, info.format, info.short_side) == (80, 64, "L", "PNG", 64)
    with pytest.raises(UnusableImageError, match="not a regular file"):
        validate_image(tmp_path)


@pytest.mark.parametrize(
    ("mode", "build", "expected"),
    [
        ("L", lambda: Image.new("L", (4, 4), 77), (77, 77, 77)),
        ("1", lambda: Image.new("1", (4, 4), 1), (255, 255, 255)),
        ("LA", lambda: Image.new("LA", (4, 4), (0, 0)), (255, 255, 255)),  # transparent -> white
        ("RGBA", lambda: Image.new("RGBA", (4, 4), (255, 0, 0, 0)), (255, 255, 255)),
        ("RGBA", lambda: Image.new("RGBA", (4, 4), (0, 0, 255, 255)), (0, 0, 255)),
        ("RGBA", lambda: Image.new("RGBA", (4, 4), (0, 0, 0, 128)), (127, 127, 127)),
        (
            "P",
            lambda: Image.new("RGB", (4, 4), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE),
            (10, 200, 30),
        ),
        ("I;16", lambda: Image.fromarray(np.full((4, 4), 65535, np.uint16)), (255, 255, 255)),
        ("I;16", lambda: Image.fromarray(np.full((4, 4), 32896, np.uint16)), (128, 128, 128)),
        ("I", lambda: Image.fromarray(np.full((4, 4), 51400, np.int32)), (200, 200, 200)),
        ("I", lambda: Image.fromarray(np.full((4, 4), 200, np.int32)), (200, 200, 200)),
        ("CMYK", lambda: Image.new("CMYK", (4, 4), (0, 0, 0, 0)), (255, 255, 255)),
        ("F", lambda: Image.fromarray(np.full((4, 4), 0.5, np.float32)), (128, 128, 128)),
    ],
)
def test_to_rgb_converts_every_mode(mode, build, expected):
    image = build()
    assert image.mode == mode
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (4, 4)
    assert rgb.getpixel((0, 0)) == pytest.approx(expected, abs=1)


def test_palette_transparency_is_composited_on_white():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0] * 256)
    image.info["transparency"] = 0
    assert to_rgb(image).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("name", "build", "options"),
    [
        ("gray.png", lambda: photo().convert("L"), {}),
        ("alpha.png", lambda: photo().convert("RGBA"), {}),
        ("gray_alpha.png", lambda: photo().convert("LA"), {}),
        ("palette.png", lambda: photo().convert("P"), {}),
        ("deep.png", lambda: Image.fromarray(np.asarray(photo().convert("L"), np.uint16) * 257), {}),
        ("print.jpg", lambda: photo().convert("CMYK"), {"quality": 95}),
        ("scan.tif", lambda: photo(), {}),
    ],
)
def test_files_in_any_mode_load_as_rgb_and_feed_the_dataset(tmp_path, name, build, options):
    save(build(), tmp_path / "data" / name, **options)
    loaded = load_rgb(tmp_path / "data" / name)
    assert loaded.mode == "RGB" and loaded.size == (80, 64)
    reference = np.asarray(photo().convert("L"), np.float64)
    assert np.abs(np.asarray(loaded.convert("L"), np.float64) - reference).mean() < 12
    item = build_dataset(tmp_path / "data")[0]
    assert item["target"].shape == (3, 64, 64)


def test_exif_orientation_is_applied(tmp_path):
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = save(stored, tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    info = validate_image(path)
    assert (info.width, info.height) == (20, 40)
    upright = load_rgb(path)
    assert upright.size == (20, 40)
    top, bottom = upright.getpixel((10, 5)), upright.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_jpeg_draft_decoding_keeps_at_least_the_requested_size(tmp_path):
    path = save(photo((400, 300)), tmp_path / "big.jpg", quality=90)
    small = load_rgb(path, min_short_side=64)
    assert min(small.size) >= 64 and small.size[0] < 400
    assert load_rgb(path).size == (400, 300)


# ---------------------------------------------------------------------------------------------
# DegDataset
# ---------------------------------------------------------------------------------------------


def test_items_have_the_documented_format_and_batch_with_default_collate(photo_folder):
    dataset = build_dataset(photo_folder, repeats=2)
    assert len(dataset) == 6
    item = dataset[0]
    assert set(item) >= {"control", "target", "prompts", "record", "path", "index"}
    for key in ("control", "target"):
        tensor = item[key]
        assert tensor.dtype == torch.float32 and tensor.shape == (3, 64, 64)
        assert tensor.min() >= -1 and tensor.max() <= 1
    assert item["prompts"] == PROMPT and item["index"] == 0 and item["path"].endswith("a.jpg")
    assert [step["op"] for step in json.loads(item["record"])] == list(ORIGINAL_GUIDE_ORDER)
    batch = next(iter(DataLoader(dataset, batch_size=4, shuffle=False)))
    assert batch["control"].shape == (4, 3, 64, 64) and batch["target"].shape == (4, 3, 64, 64)
    assert len(batch["prompts"]) == 4 and batch["index"].tolist() == [0, 1, 2, 3]
    assert dataset[-1]["index"] == 5
    with pytest.raises(IndexError):
        dataset[6]


@pytest.mark.parametrize("resolution", [16, 48, 64, 96, 128])
def test_sides_are_the_resolution_which_must_be_a_multiple_of_16(photo_folder, resolution):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UpscaledImageWarning)  # 96 and 128 enlarge the photos
        dataset = build_dataset(photo_folder, resolution=resolution)
    item = dataset[2]
    assert item["control"].shape == item["target"].shape == (3, resolution, resolution)


def test_resolution_not_a_multiple_of_16_is_an_error(photo_folder):
    for bad in (500, 0, -16, 64.0):
        with pytest.raises(ValueError, match="multiple of 16"):
            build_dataset(photo_folder, resolution=bad)


def test_small_images_are_enlarged_with_one_warning(tmp_path):
    save(photo((40, 30)), tmp_path / "small" / "tiny.png")
    save(photo((100, 90)), tmp_path / "small" / "fine.png")
    with pytest.warns(UpscaledImageWarning, match=r"1 image\(s\).*tiny.png \(40x30\)") as caught:
        dataset = build_dataset(tmp_path / "small")
    assert len([w for w in caught if issubclass(w.category, UpscaledImageWarning)]) == 1
    assert dataset[1]["target"].shape == (3, 64, 64)


def test_without_degradation_control_equals_target(photo_folder):
    for types in ("none", [], ()):
        dataset = build_dataset(photo_folder, degradation_types=types)
        for index in range(len(dataset)):
            item = dataset[index]
            assert torch.equal(item["control"], item["target"])
            assert item["record"] == "[]"
    dataset = build_dataset(photo_folder, config=PRESETS["none"])
    assert torch.equal(dataset[0]["control"], dataset[0]["target"])


def test_noise_only_control_is_target_plus_zero_mean_noise(photo_folder):
    dataset = build_dataset(
        photo_folder, degradation_types="noise", noise_level=0.05, resolution=64, repeats=4
    )
    for index in range(len(dataset)):  # every crop and flip: alignment must hold for all
        item = dataset[index]
        difference = item["control"] - item["target"]
        assert abs(difference.mean().item()) < 0.01
        assert difference.std().item() == pytest.approx(0.05 * 2, rel=0.1)  # 0-1 sigma -> [-1, 1] units
        # The structures coincide: the difference is unrelated to the picture.
        correlation = np.corrcoef(difference.flatten().numpy(), item["target"].flatten().numpy())[0, 1]
        assert abs(correlation) < 0.1
        assert np.corrcoef(item["control"].flatten().numpy(), item["target"].flatten().numpy())[0, 1] > 0.8


def test_downsample_only_keeps_the_picture_in_place(photo_folder):
    dataset = build_dataset(photo_folder, degradation_types="downsample", lr_scale=2)
    item = dataset[1]
    error = (item["control"] - item["target"]).abs().mean().item()
    shifted = (item["control"][:, :, 2:] - item["target"][:, :, :-2]).abs().mean().item()
    assert error < shifted


def test_items_depend_only_on_seed_index_and_epoch(photo_folder):
    first, second = build_dataset(photo_folder, repeats=2), build_dataset(photo_folder, repeats=2)
    late = second[4]  # read out of order, from a fresh instance
    for _ in range(3):
        second[0]
    early = first[4]
    assert torch.equal(early["control"], late["control"]) and torch.equal(early["target"], late["target"])
    assert early["record"] == late["record"]
    assert not torch.equal(first[0]["control"], first[3]["control"])  # repeats differ
    first.set_epoch(1)
    assert first[4]["record"] != early["record"]
    first.set_epoch(0)
    assert torch.equal(first[4]["control"], early["control"])
    other_seed = build_dataset(photo_folder, repeats=2, seed=1)
    assert other_seed[4]["record"] != early["record"]
    with pytest.raises(ValueError, match="epoch"):
        first.set_epoch(-1)


def test_degradation_types_accept_a_comma_string_a_list_or_none(photo_folder):
    ops = lambda dataset: [step["op"] for step in json.loads(dataset[0]["record"])]  # noqa: E731
    assert ops(build_dataset(photo_folder, degradation_types="downsample,noise,blur")) == [
        "downsample",
        "noise",
        "blur",
    ]
    assert ops(build_dataset(photo_folder, degradation_types=["jpeg", "noise"])) == ["noise", "jpeg"]
    assert ops(build_dataset(photo_folder)) == list(ORIGINAL_GUIDE_ORDER)


def test_original_guide_attributes_read_and_write_the_config(photo_folder):
    dataset = build_dataset(photo_folder, lr_scale=4, noise_level=0.03, blur_radius=0.5, jpeg_quality=60)
    assert (dataset.lr_scale, dataset.noise_level, dataset.blur_radius, dataset.jpeg_quality) == (
        4,
        0.03,
        0.5,
        60,
    )
    assert dataset.degradation_types == ORIGINAL_GUIDE_ORDER
    dataset.noise_level = (0.01, 0.02)
    assert dataset.config.noise_level == (0.01, 0.02)
    with pytest.raises(ValueError, match="noise_level"):
        dataset.noise_level = -1
    with pytest.raises(ValueError, match="jpeg_quality must be in"):
        build_dataset(photo_folder, jpeg_quality=0)


def test_config_presets_and_extended_options(photo_folder):
    dataset = build_dataset(photo_folder, config=PRESETS["old_photo"], prompt_mode="described")
    item = dataset[0]
    assert json.loads(item["record"])[0]["op"] == "fade"
    assert item["prompts"].startswith(PROMPT + " — ") and "faded colors" in item["prompts"]
    extended = build_dataset(photo_folder, degradation_types="noise", gray_noise_prob=1.0)
    assert json.loads(extended[0]["record"])[0]["gray"] is True
    with pytest.raises(ValueError, match="either as config=... or as arguments"):
        build_dataset(photo_folder, config=PRESETS["old_photo"], lr_scale=4)
    with pytest.raises(TypeError, match="unexpected keyword"):
        build_dataset(photo_folder, sharpness=3)
    with pytest.raises(ValueError, match="prompt_mode"):
        build_dataset(photo_folder, prompt_mode="fancy")


def test_exclude_leaves_held_out_photos_out(photo_folder, monkeypatch):
    assert len(build_dataset(photo_folder)) == 3
    assert [p.name for p in build_dataset(photo_folder, exclude=[photo_folder / "sub"]).paths] == [
        "a.jpg",
        "b.png",
    ]
    monkeypatch.chdir(photo_folder.parent)
    assert len(build_dataset("photos", exclude=["photos/sub"])) == 2


def test_guide_style_apply_degradation_method(photo_folder):
    dataset = build_dataset(photo_folder, lr_scale=2)
    image = photo((50, 40))
    degraded = dataset.apply_degradation(image)
    assert isinstance(degraded, Image.Image) and degraded.size == (50, 40)
    again, record = dataset.apply_degradation(image, return_record=True, seed=3)
    same, _ = dataset.apply_degradation(image, return_record=True, seed=3)
    assert again.tobytes() == same.tobytes() and [s["op"] for s in record] == list(ORIGINAL_GUIDE_ORDER)
    assert dataset.apply_degradation(image).tobytes() != dataset.apply_degradation(image).tobytes()


def test_flip_and_center_crop_options(tmp_path):
    save(photo((128, 64)), tmp_path / "wide" / "w.png")
    centred = build_dataset(tmp_path / "wide", center_crop=True, random_flip=False, degradation_types="none")
    expected = pil_to_tensor(photo((128, 64)).crop((32, 0, 96, 64)))
    assert torch.equal(centred[0]["target"], expected)
    flipping = build_dataset(tmp_path / "wide", center_crop=True, repeats=16, degradation_types="none")
    flips = {torch.equal(flipping[i]["target"], expected.flip(-1)) for i in range(16)}
    assert flips == {True, False}


def test_real_sample_photos_with_validation_and_test_photos_excluded(data_samples):
    from kontext_lora_helpers.course import evaluation_dirs

    dataset = DegDataset(data_samples, PROMPT, resolution=64, exclude=evaluation_dirs())
    assert len(dataset) == 23
    assert not any(part in str(p) for p in dataset.paths for part in ("held_out", "validation"))
    assert dataset[3]["control"].shape == (3, 64, 64)


def test_the_three_photo_sets_are_disjoint_and_the_trainer_leaves_out_two(data_samples, tmp_path):
    from kontext_lora_helpers.course import test_dir, validation_dir
    from kontext_lora_helpers.images import list_images
    from kontext_lora_helpers.train import TrainConfig
    from kontext_lora_helpers.train.config import _training_excludes, resolve_validation_dir

    validation, test = list_images(validation_dir()), list_images(test_dir())
    training = [p for p in list_images(data_samples) if p.parent == data_samples]
    assert (len(training), len(validation), len(test)) == (23, 6, 4)
    stems = [{p.stem for p in group} for group in (training, validation, test)]
    assert not (stems[0] & stems[1] or stems[0] & stems[2] or stems[1] & stems[2])
    config = TrainConfig(hr_root=str(data_samples), output_dir=str(tmp_path / "run"), validation_dir="none")
    assert {p.resolve() for p in _training_excludes(config)} == {validation_dir().resolve(), test_dir().resolve()}
    default = TrainConfig(hr_root=str(data_samples), output_dir=str(tmp_path / "run"))
    assert resolve_validation_dir(default).resolve() == validation_dir().resolve()  # the trainer validates there


def test_tensor_conversions_round_trip():
    image = photo((48, 32))
    tensor = pil_to_tensor(image)
    assert tensor.shape == (3, 32, 48) and tensor.dtype == torch.float32
    assert tensor_to_pil(tensor).tobytes() == image.tobytes()
    assert pil_to_tensor(Image.new("RGB", (2, 2), (0, 0, 0))).min() == -1
    assert pil_to_tensor(Image.new("RGB", (2, 2), (255, 255, 255))).max() == 1


# ---------------------------------------------------------------------------------------------
# PairedDataset
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def pair_folders(tmp_path: Path) -> tuple[Path, Path]:
    clean, degraded = tmp_path / "clean", tmp_path / "degraded"
    for name, seed in (("001", 1), ("002", 2), ("nested/003", 3)):
        save(photo((96, 80), seed), clean / f"{name}.png")
        save(photo((96, 80), seed), degraded / f"{name}.jpg", quality=40)
    save(photo((96, 80), 9), clean / "only_clean.png")
    save(photo((96, 80), 9), degraded / "only_degraded.jpg")
    return degraded, clean


def test_pairs_are_matched_by_relative_path_without_extension(pair_folders):
    degraded, clean = pair_folders
    with pytest.warns(UnmatchedPairWarning, match=r"2 file\(s\).*degraded/only_degraded.*clean/only_clean"):
        dataset = PairedDataset(degraded, clean, PROMPT, resolution=64)
    assert len(dataset) == 3
    keys = [
        (d.path.relative_to(degraded).with_suffix("").as_posix(), c.path.relative_to(clean).as_posix())
        for d, c in dataset.pairs
    ]
    assert keys == [("001", "001.png"), ("002", "002.png"), ("nested/003", "nested/003.png")]
    item = dataset[2]
    assert item["control"].shape == item["target"].shape == (3, 64, 64)
    assert item["record"] == "[]" and item["prompts"] == PROMPT
    assert item["control_path"].endswith("003.jpg") and item["path"].endswith("003.png")
    # Same crop and flip: a JPEG copy stays close to its original.
    assert (item["control"] - item["target"]).abs().mean() < 0.1
    batch = next(iter(DataLoader(dataset, batch_size=3)))
    assert batch["control"].shape == (3, 3, 64, 64)


def test_paired_dataset_errors(tmp_path, pair_folders):
    degraded, clean = pair_folders
    (tmp_path / "elsewhere").mkdir()
    save(photo(), tmp_path / "elsewhere" / "zzz.png")
    with pytest.raises(ValueError, match="no file in .*has a partner"):
        PairedDataset(degraded, tmp_path / "elsewhere", PROMPT, resolution=64)
    save(photo(), clean / "001.jpg")
    with pytest.raises(ValueError, match="share the name '001'"):
        PairedDataset(degraded, clean, PROMPT, resolution=64)


def test_paired_sizes_that_differ_are_resized_to_stay_aligned(tmp_path):
    save(photo((128, 96), 5), tmp_path / "clean" / "x.png")
    save(photo((128, 96), 5).resize((64, 48), Image.BICUBIC), tmp_path / "low" / "x.png")
    with pytest.warns(UserWarning, match="resized to the clean size"):
        dataset = PairedDataset(tmp_path / "low", tmp_path / "clean", PROMPT, resolution=64, center_crop=True)
    item = dataset[0]
    assert item["control"].shape == item["target"].shape == (3, 64, 64)
    assert (item["control"] - item["target"]).abs().mean() < 0.05


def test_crop_scale_sets_the_window_and_never_enlarges(data_samples):
    import numpy as np

    from kontext_lora_helpers.data import check_crop_scale

    def resized(crop_scale, size=(512, 384), seed=0):
        dataset = DegDataset(data_samples, "p", resolution=64, crop_scale=crop_scale, exclude=[data_samples / "held_out"])
        return dataset._geometry(size, np.random.default_rng(seed)).resized

    assert resized(1.0) == (85, 64)  # the original guide's behaviour: short side -> resolution
    assert resized((0.5, 0.5)) == (171, 128)  # a window of half the short side (192 px) becomes 64 px
    assert resized((0.05, 0.05)) == (512, 384)  # a 19 px window would be enlarged: 64 px of the original instead
    short_sides = {min(resized((0.25, 1.0), seed=seed)) for seed in range(50)}
    assert min(short_sides) >= 64 and max(short_sides) <= 256 and len(short_sides) > 20  # drawn per item
    assert check_crop_scale("0.25,1") == (0.25, 1.0)
    with pytest.raises(ValueError, match="crop_scale"):
        check_crop_scale((0.5, 0.2))
    item = DegDataset(data_samples, "p", resolution=64, crop_scale=(0.25, 1.0))[0]
    assert item["target"].shape == item["control"].shape == (3, 64, 64)


def test_centre_window_cuts_the_middle_without_resizing():
    pixels = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)
    window = images.centre_window(Image.fromarray(pixels), 4, 6)
    assert window.size == (4, 6)
    assert np.array_equal(np.asarray(window), pixels[2:8, 4:8])
    with pytest.raises(ValueError, match="does not fit"):
        images.centre_window(Image.fromarray(pixels), 13, 6)
