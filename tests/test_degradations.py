"""The degradation library: what each operation means, determinism, records, validation, flags."""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pytest
from PIL import Image, ImageFilter

from kontext_lora_helpers import degradations as deg
from kontext_lora_helpers.degradations import (
    DEGRADATION_TYPES,
    OP_PARAMETERS,
    ORIGINAL_GUIDE_ORDER,
    PIPELINE_ORDER,
    PRESETS,
    DegradationConfig,
    apply_degradation,
    apply_degradation_steps,
    sample_degradation_steps,
)

# ---------------------------------------------------------------------------------------------
# Test images, built in code
# ---------------------------------------------------------------------------------------------


def flat(value: int = 128, size: tuple[int, int] = (96, 96)) -> Image.Image:
    return Image.new("RGB", size, (value, value, value))


def texture(size: tuple[int, int] = (96, 96), seed: int = 0, low: int = 40, high: int = 215) -> Image.Image:
    """Random pixels in [low, high]: lots of high-frequency detail, away from clipping."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(low, high + 1, size=(size[1], size[0], 3), dtype=np.uint8))


def stripes(vertical: bool, period: int = 4, size: int = 96) -> Image.Image:
    """Black/white stripes; vertical stripes vary along x, horizontal ones along y."""
    ramp = ((np.arange(size) // (period // 2)) % 2 * 200 + 28).astype(np.uint8)
    pixels = np.tile(ramp[None, :], (size, 1)) if vertical else np.tile(ramp[:, None], (1, size))
    return Image.fromarray(np.repeat(pixels[..., None], 3, axis=2))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def detail_energy(image: Image.Image, axis: int | None = None) -> float:
    """Mean absolute difference between neighbouring pixels (along x: axis=1, y: axis=0, or both)."""
    values = pixels(image)
    axes = (0, 1) if axis is None else (axis,)
    return float(np.mean([np.abs(np.diff(values, axis=a)).mean() for a in axes]))


def exact_gaussian_blur(image: Image.Image, sigma: float) -> np.ndarray:
    """Reference: separable convolution with a sampled Gaussian of standard deviation ``sigma``."""
    radius = int(np.ceil(4 * sigma))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    values = np.pad(pixels(image), ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    values = np.apply_along_axis(lambda row: np.convolve(row, kernel, mode="valid"), 1, values)
    values = np.apply_along_axis(lambda col: np.convolve(col, kernel, mode="valid"), 0, values)
    return values


# ---------------------------------------------------------------------------------------------
# Names and defaults
# ---------------------------------------------------------------------------------------------


def test_type_names_start_with_the_original_guides_four_in_its_order():
    assert ORIGINAL_GUIDE_ORDER == ("downsample", "noise", "blur", "jpeg")
    assert deg.SEED_ORDER is ORIGINAL_GUIDE_ORDER  # the old name still imports
    assert DEGRADATION_TYPES[:4] == ORIGINAL_GUIDE_ORDER
    assert set(OP_PARAMETERS) == set(DEGRADATION_TYPES) == set(PIPELINE_ORDER)
    positions = [PIPELINE_ORDER.index(name) for name in ORIGINAL_GUIDE_ORDER]
    assert positions == sorted(positions)


def test_default_config_is_the_original_guide_recipe():
    config = DegradationConfig()
    assert config.degradation_types == ORIGINAL_GUIDE_ORDER
    assert (config.lr_scale, config.noise_level, config.blur_radius, config.jpeg_quality) == (
        8,
        0.05,
        1.0,
        75,
    )
    assert PRESETS["original_guide"] == config
    assert {"original_guide", "realesrgan", "old_photo"} <= set(PRESETS)
    steps = sample_degradation_steps(config, np.random.default_rng(0))
    assert [step["op"] for step in steps] == list(ORIGINAL_GUIDE_ORDER)
    assert steps[0] == {"op": "downsample", "lr_scale": 8}
    assert steps[2] == {"op": "blur", "blur_radius": 1.0}
    assert steps[3] == {"op": "jpeg", "jpeg_quality": 75}
    assert steps[1]["noise_level"] == 0.05 and steps[1]["gray"] is False and isinstance(steps[1]["seed"], int)


def test_original_guide_order_is_used_whatever_order_the_types_are_listed_in():
    config = DegradationConfig(degradation_types="jpeg,blur,noise,downsample")
    assert [s["op"] for s in sample_degradation_steps(config, 0)] == list(ORIGINAL_GUIDE_ORDER)
    listed = config.replace(degradation_order="listed")
    assert [s["op"] for s in sample_degradation_steps(listed, 0)] == ["jpeg", "blur", "noise", "downsample"]
    shuffled = config.replace(degradation_order="shuffled")
    orders = {tuple(s["op"] for s in sample_degradation_steps(shuffled, seed)) for seed in range(12)}
    assert len(orders) > 1 and all(sorted(order) == sorted(ORIGINAL_GUIDE_ORDER) for order in orders)


# ---------------------------------------------------------------------------------------------
# What each operation does
# ---------------------------------------------------------------------------------------------


def test_downsample_is_the_original_guides_bicubic_down_and_up():
    image = texture((96, 64))
    by_hand = image.resize((96 // 8, 64 // 8), Image.BICUBIC).resize((96, 64), Image.BICUBIC)
    assert deg.apply_downsample(image, 8).tobytes() == by_hand.tobytes()


def test_downsample_by_1_is_identity_and_by_8_loses_detail():
    image = texture()
    assert deg.apply_downsample(image, 1).tobytes() == image.tobytes()
    assert detail_energy(deg.apply_downsample(image, 8)) < 0.2 * detail_energy(image)
    assert detail_energy(deg.apply_downsample(image, 2)) > detail_energy(deg.apply_downsample(image, 8))


def test_downsample_returns_the_original_size_even_when_it_does_not_divide():
    image = texture((70, 45))
    for scale in (3, 2.5, 64):
        assert deg.apply_downsample(image, scale).size == (70, 45)


@pytest.mark.parametrize("noise_level", [0.02, 0.05, 0.1])
def test_noise_std_matches_noise_level_on_flat_gray(noise_level):
    image = flat(128, (128, 128))
    noisy = deg.apply_noise(image, noise_level, np.random.default_rng(1))
    difference = (pixels(noisy) - pixels(image)) / 255.0
    assert difference.std() == pytest.approx(noise_level, rel=0.05)
    assert abs(difference.mean()) < noise_level / 20
    # Colour noise: the three channels are drawn independently.
    correlation = np.corrcoef(difference[..., 0].ravel(), difference[..., 1].ravel())[0, 1]
    assert abs(correlation) < 0.05


def test_noise_level_zero_is_identity():
    image = texture()
    assert deg.apply_noise(image, 0.0, np.random.default_rng(0)).tobytes() == image.tobytes()


def test_gray_noise_is_equal_on_the_three_channels():
    image = flat(128)
    noisy = deg.apply_noise(image, 0.05, np.random.default_rng(2), gray=True)
    difference = pixels(noisy) - pixels(image)
    assert difference.std() > 5
    np.testing.assert_array_equal(difference[..., 0], difference[..., 1])
    np.testing.assert_array_equal(difference[..., 0], difference[..., 2])
    poisson = pixels(deg.apply_poisson_noise(image, 2.0, np.random.default_rng(2), gray=True)) - pixels(image)
    np.testing.assert_array_equal(poisson[..., 0], poisson[..., 2])


def test_poisson_noise_grows_with_brightness():
    dark, bright = flat(40, (128, 128)), flat(220, (128, 128))
    rng = np.random.default_rng(3)
    dark_std = (pixels(deg.apply_poisson_noise(dark, 1.0, rng)) - 40).std()
    bright_std = (pixels(deg.apply_poisson_noise(bright, 1.0, rng)) - 220).std()
    # Photon counts of 255 * x: the standard deviation is sqrt(value) grey levels at scale 1.
    assert dark_std == pytest.approx(np.sqrt(40), rel=0.1)
    assert bright_std == pytest.approx(np.sqrt(220), rel=0.1)
    assert deg.apply_poisson_noise(dark, 0.0, rng).tobytes() == dark.tobytes()


def test_blur_removes_high_frequencies_and_uses_pil_radius_as_sigma():
    image = texture()
    blurred = deg.apply_blur(image, 1.5)
    assert detail_energy(blurred) < 0.35 * detail_energy(image)
    assert blurred.tobytes() == image.filter(ImageFilter.GaussianBlur(1.5)).tobytes()
    # PIL's radius is the standard deviation: compare with an exact Gaussian, away from borders.
    inner = (slice(10, -10), slice(10, -10))
    exact = exact_gaussian_blur(image, 1.5)[inner]
    assert np.abs(pixels(blurred)[inner] - exact).mean() < 1.5
    assert (
        np.abs(exact_gaussian_blur(image, 3.0)[inner] - exact).mean()
        > 3 * np.abs(pixels(blurred)[inner] - exact).mean()
    )
    assert deg.apply_blur(image, 0).tobytes() == image.tobytes()


def test_isotropic_aniso_blur_matches_blur():
    image = texture()
    inner = (slice(8, -8), slice(8, -8))
    difference = (
        pixels(deg.apply_aniso_blur(image, 1.5, 1.5, 30.0))[inner] - pixels(deg.apply_blur(image, 1.5))[inner]
    )
    assert np.abs(difference).mean() < 1.0


def test_jpeg_error_grows_as_quality_drops():
    image = texture(seed=4).filter(ImageFilter.GaussianBlur(1.5))  # photo-like: smooth but detailed
    errors = [
        np.abs(pixels(deg.apply_jpeg(image, quality)) - pixels(image)).mean() for quality in (95, 60, 25, 5)
    ]
    assert errors == sorted(errors)
    assert errors[-1] > 2 * errors[0]


@pytest.mark.parametrize(
    "blur",
    [
        lambda image, angle: deg.apply_aniso_blur(image, 3.0, 0.2, angle),
        lambda image, angle: deg.apply_motion_blur(image, 9, angle),
    ],
    ids=["aniso_blur", "motion_blur"],
)
def test_directional_blurs_blur_along_their_angle_only(blur):
    varies_along_x, varies_along_y = stripes(vertical=True), stripes(vertical=False)
    # angle 0: the blur runs horizontally, so it wipes out vertical stripes and keeps horizontal ones.
    assert detail_energy(blur(varies_along_x, 0.0), axis=1) < 0.25 * detail_energy(varies_along_x, axis=1)
    assert detail_energy(blur(varies_along_y, 0.0), axis=0) > 0.9 * detail_energy(varies_along_y, axis=0)
    # angle 90: the other way round.
    assert detail_energy(blur(varies_along_y, 90.0), axis=0) < 0.25 * detail_energy(varies_along_y, axis=0)
    assert detail_energy(blur(varies_along_x, 90.0), axis=1) > 0.9 * detail_energy(varies_along_x, axis=1)


def test_kernels_are_normalised_and_point_symmetric():
    for kernel in (deg.anisotropic_gaussian_kernel(3.0, 0.5, 37.0), deg.motion_blur_kernel(10, 63.0)):
        assert kernel.dtype == np.float32 and kernel.shape[0] % 2 == 1
        assert kernel.sum() == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(kernel, kernel[::-1, ::-1], atol=1e-6)
    horizontal = deg.motion_blur_kernel(9, 0.0)
    assert np.count_nonzero(horizontal.sum(axis=1) > 1e-6) == 1  # a single row
    assert deg.apply_motion_blur(texture(), 1, 45.0).tobytes() == texture().tobytes()


def test_fade_washes_out_colours_and_color_cast_tints():
    colourful = Image.fromarray(
        np.array([[[230, 30, 30], [30, 200, 40], [20, 20, 20], [250, 250, 250]]], dtype=np.uint8).repeat(
            8, axis=0
        )
    )
    faded = pixels(deg.apply_fade(colourful, 0.8, 0.0, 30.0))
    original = pixels(colourful)
    saturation = lambda values: (values.max(axis=2) - values.min(axis=2)).mean()  # noqa: E731
    assert saturation(faded) < 0.6 * saturation(original)
    assert faded.std() < original.std()
    assert faded.min() > original.min() + 20  # blacks lifted
    tinted = pixels(deg.apply_fade(flat(128), 0.0, 0.8, 30.0))  # 30 degrees: orange
    red, green, blue = tinted[..., 0].mean(), tinted[..., 1].mean(), tinted[..., 2].mean()
    assert red > green > blue
    assert deg.apply_fade(colourful, 0.0, 0.0, 30.0).tobytes() == colourful.tobytes()


def test_scratches_and_dust_mark_a_small_part_of_the_image():
    image = flat(128, (128, 128))
    marked = pixels(deg.apply_scratches(image, 6, 40, np.random.default_rng(5)))
    changed = np.any(np.abs(marked - 128) > 8, axis=2)
    assert 0.002 < changed.mean() < 0.15
    assert deg.apply_scratches(image, 0, 0, np.random.default_rng(5)).tobytes() == image.tobytes()
    only_scratches = pixels(deg.apply_scratches(image, 5, 0, np.random.default_rng(6)))
    assert (only_scratches > 140).sum() > (only_scratches < 116).sum()  # mostly light scratches


def test_film_grain_is_monochrome_clumped_and_sized_by_strength():
    image = flat(128, (128, 128))
    fine = pixels(deg.apply_grain(image, 0.04, 1.0, np.random.default_rng(7))) - 128
    coarse = pixels(deg.apply_grain(image, 0.04, 3.0, np.random.default_rng(7))) - 128
    assert fine.std() == pytest.approx(0.04 * 255, rel=0.1)
    assert coarse.std() == pytest.approx(0.04 * 255, rel=0.15)
    np.testing.assert_array_equal(fine[..., 0], fine[..., 2])

    def neighbour_correlation(values):
        return np.corrcoef(values[:, :-1, 0].ravel(), values[:, 1:, 0].ravel())[0, 1]

    assert neighbour_correlation(coarse) > neighbour_correlation(fine) + 0.3


@pytest.mark.parametrize("name", DEGRADATION_TYPES)
def test_every_operation_keeps_size_and_mode_even_on_tiny_odd_images(name):
    for size in ((37, 23), (5, 3)):
        image = texture(size)
        degraded, record = apply_degradation(image, seed=0, degradation_types=[name], lr_scale=4)
        assert degraded.size == size and degraded.mode == "RGB"
        assert [step["op"] for step in record] == [name]


def test_non_rgb_input_is_converted():
    degraded, _ = apply_degradation(Image.new("L", (32, 32), 100), seed=0)
    assert degraded.mode == "RGB"
    with pytest.raises(TypeError):
        apply_degradation(np.zeros((8, 8, 3), np.uint8), seed=0)


# ---------------------------------------------------------------------------------------------
# Determinism and records
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["original_guide", "realesrgan", "old_photo"])
def test_same_seed_same_bytes_different_seed_different_bytes(preset):
    image = texture((64, 64))
    first, record_a = apply_degradation(image, PRESETS[preset], seed=11)
    second, record_b = apply_degradation(image, PRESETS[preset], seed=11)
    other, _ = apply_degradation(image, PRESETS[preset], seed=12)
    assert first.tobytes() == second.tobytes() and record_a == record_b
    assert first.tobytes() != other.tobytes()


@pytest.mark.parametrize("preset", ["original_guide", "realesrgan", "old_photo"])
def test_record_survives_json_and_reapplies_to_identical_bytes(preset):
    image = texture((64, 64), seed=3)
    degraded, record = apply_degradation(image, PRESETS[preset], seed=5)
    text = json.dumps(record)
    for value in (v for step in record for v in step.values()):
        assert type(value) in (str, int, float, bool)
    again, reapplied = apply_degradation_steps(image, json.loads(text))
    assert again.tobytes() == degraded.tobytes()
    assert reapplied == record
    assert apply_degradation_steps(image, text)[0].tobytes() == degraded.tobytes()


def test_generator_seed_advances_and_none_gives_fresh_randomness():
    image = flat(128, (32, 32))
    rng = np.random.default_rng(0)
    assert apply_degradation(image, seed=rng)[0].tobytes() != apply_degradation(image, seed=rng)[0].tobytes()
    assert (
        apply_degradation(image, seed=None)[0].tobytes() != apply_degradation(image, seed=None)[0].tobytes()
    )


def test_empty_record_returns_an_equal_copy():
    image = texture((32, 32))
    degraded, record = apply_degradation(image, PRESETS["none"], seed=0)
    assert record == [] and degraded.tobytes() == image.tobytes() and degraded is not image


def test_ranges_are_sampled_per_image_inside_their_bounds():
    config = DegradationConfig(
        degradation_types="downsample,noise,blur,jpeg,motion_blur",
        lr_scale=(2, 6),
        noise_level=(0.01, 0.05),
        blur_radius=(0.5, 2.0),
        jpeg_quality=(30, 90),
        motion_blur_length=(3, 15),
    )
    draws = [{s["op"]: s for s in sample_degradation_steps(config, seed)} for seed in range(60)]
    noise = [d["noise"]["noise_level"] for d in draws]
    quality = [d["jpeg"]["jpeg_quality"] for d in draws]
    assert all(0.01 <= v <= 0.05 for v in noise) and len(set(noise)) == 60
    assert all(2 <= d["downsample"]["lr_scale"] <= 6 for d in draws)
    assert all(isinstance(q, int) and 30 <= q <= 90 for q in quality) and len(set(quality)) > 10
    assert all(isinstance(d["motion_blur"]["motion_blur_length"], int) for d in draws)


def test_probabilities_and_second_order():
    never = DegradationConfig(degradation_types="noise,blur", degradation_probabilities={"noise": 0.0})
    always = never.replace(degradation_probabilities={"noise": 1.0})
    half = never.replace(degradation_probabilities={"noise": 0.5})
    assert all([s["op"] for s in sample_degradation_steps(never, seed)] == ["blur"] for seed in range(10))
    assert all(
        [s["op"] for s in sample_degradation_steps(always, seed)] == ["noise", "blur"] for seed in range(10)
    )
    counts = sum(len(sample_degradation_steps(half, seed)) - 1 for seed in range(200))
    assert 70 < counts < 130
    two_rounds = DegradationConfig(
        degradation_types="blur", second_order=DegradationConfig(degradation_types="jpeg")
    )
    assert [s["op"] for s in sample_degradation_steps(two_rounds, 0)] == ["blur", "jpeg"]
    one_round = two_rounds.replace(second_order_prob=0.0)
    assert [s["op"] for s in sample_degradation_steps(one_round, 0)] == ["blur"]
    realesrgan = [sample_degradation_steps(PRESETS["realesrgan"], seed) for seed in range(10)]
    assert all(sum(s["op"] == "jpeg" for s in record) == 2 for record in realesrgan)
    assert any(s.get("gray") for record in realesrgan for s in record)


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"noise_level": -0.1}, r"noise_level must be in \[0, 1\]"),
        ({"jpeg_quality": 0}, r"jpeg_quality must be in \[1, 100\]"),
        ({"jpeg_quality": 101}, r"jpeg_quality must be in \[1, 100\]"),
        ({"jpeg_quality": 50.5}, r"jpeg_quality must be a whole number in \[1, 100\]"),
        ({"lr_scale": 0.5}, r"lr_scale must be in \[1, 64\]"),
        ({"blur_radius": -1}, r"blur_radius must be in \[0, 50\]"),
        ({"noise_level": "loud"}, r"noise_level must be a number"),
        ({"noise_level": True}, r"noise_level must be a number"),
        ({"noise_level": float("nan")}, r"noise_level must be in"),
        ({"noise_level": (0.05, 0.01)}, r"noise_level range \(0.05, 0.01\) has low > high.*\[0, 1\]"),
        ({"noise_level": (0.01, 2.0)}, r"noise_level must be in \[0, 1\]"),
        ({"noise_level": (0.01, 0.02, 0.03)}, r"noise_level range must be \(low, high\)"),
        (
            {"degradation_types": "downsample,sharpen"},
            r"unknown degradation type 'sharpen'.*choose from: downsample, noise",
        ),
        ({"degradation_types": ["noise", "noise"]}, r"noise more than once"),
        ({"degradation_order": "random"}, r"degradation_order must be one of fixed, listed, shuffled"),
        ({"degradation_probabilities": {"sharpen": 0.5}}, r"unknown degradation type 'sharpen'"),
        (
            {"degradation_probabilities": {"noise": 1.5}},
            r"degradation_probabilities\['noise'\] must be in \[0, 1\]",
        ),
        ({"gray_noise_prob": 2}, r"gray_noise_prob must be in \[0, 1\]"),
        ({"motion_blur_length": 0}, r"motion_blur_length must be in \[1, 201\]"),
        ({"grain_size": 0.5}, r"grain_size must be in \[1, 16\]"),
        ({"second_order": {"noise_level": -1}}, r"noise_level must be in \[0, 1\]"),
    ],
)
def test_invalid_parameters_name_the_parameter_and_valid_range(changes, message):
    with pytest.raises(ValueError, match=message):
        DegradationConfig(**changes)
    with pytest.raises(ValueError, match=message):
        DegradationConfig().replace(**changes)


def test_apply_functions_and_records_validate_too():
    image = flat()
    with pytest.raises(ValueError, match=r"noise_level must be in \[0, 1\]"):
        deg.apply_noise(image, -0.1, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"jpeg_quality must be in \[1, 100\]"):
        deg.apply_jpeg(image, 0)
    with pytest.raises(ValueError, match="unknown op 'sharpen'"):
        apply_degradation_steps(image, [{"op": "sharpen"}])
    with pytest.raises(ValueError, match="missing 'noise_level'"):
        apply_degradation_steps(image, [{"op": "noise", "seed": 1}])
    with pytest.raises(ValueError, match="needs a non-negative integer 'seed'"):
        apply_degradation_steps(image, [{"op": "noise", "noise_level": 0.1}])
    with pytest.raises(ValueError, match="unknown key"):
        apply_degradation_steps(image, [{"op": "blur", "blur_radius": 1, "sigma": 2}])
    with pytest.raises(ValueError, match="unknown DegradationConfig field"):
        DegradationConfig().replace(noise=0.1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        DegradationConfig().noise_level = 0.2


def test_configs_are_hashable_and_equal_configs_hash_equally():
    assert hash(DegradationConfig(lr_scale=8)) == hash(DegradationConfig(lr_scale=8.0))
    cache = {PRESETS["realesrgan"]: "preview"}
    assert cache[DegradationConfig.from_dict(PRESETS["realesrgan"].to_dict())] == "preview"


def test_convenient_inputs_are_normalised():
    config = DegradationConfig(
        degradation_types="downsample, noise", noise_level=[0.01, 0.05], jpeg_quality=80.0
    )
    assert config.degradation_types == ("downsample", "noise")
    assert config.noise_level == (0.01, 0.05) and isinstance(config.jpeg_quality, int)
    assert DegradationConfig(degradation_types=None).degradation_types == ORIGINAL_GUIDE_ORDER
    assert DegradationConfig(degradation_types="none").degradation_types == ()
    assert DegradationConfig(degradation_types=[]).degradation_types == ()


# ---------------------------------------------------------------------------------------------
# Serialisation and command-line flags
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_dict_and_cli_flags_round_trip(preset):
    config = PRESETS[preset]
    assert DegradationConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    parser = argparse.ArgumentParser()
    deg.add_degradation_arguments(parser)
    flags = config.to_cli_flags()
    assert flags[:2] == ["--degradation_types", ",".join(config.degradation_types) or "none"]
    for guide_flag in ("--lr_scale", "--noise_level", "--blur_radius", "--jpeg_quality"):
        assert guide_flag in flags
    assert all(isinstance(flag, str) for flag in flags)
    assert deg.config_from_args(parser.parse_args(flags)) == config


def test_preset_flag_with_overrides_and_range_flags():
    parser = argparse.ArgumentParser()
    deg.add_degradation_arguments(parser)
    config = deg.config_from_args(parser.parse_args(["--preset", "old_photo", "--noise_level", "0.01,0.05"]))
    assert config == PRESETS["old_photo"].replace(noise_level=(0.01, 0.05))
    assert deg.config_from_args(parser.parse_args([])) == DegradationConfig()
    # "seed" is the old name of the "original_guide" preset; old command lines still work.
    assert parser.parse_args(["--preset", "seed"]).preset == "original_guide"
    assert deg.config_from_args(parser.parse_args(["--preset", "seed"])) == PRESETS["original_guide"]
    assert (
        deg.config_from_args(
            parser.parse_args(["--preset", "realesrgan", "--second_order", "none"])
        ).second_order
        is None
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["--noise_level", "abc"])
    with pytest.raises(ValueError, match="noise_level must be in"):
        deg.config_from_args(parser.parse_args(["--noise_level", "-0.5"]))


def test_parse_parameter():
    assert deg.parse_parameter("0.05") == 0.05
    assert deg.parse_parameter("75") == 75 and isinstance(deg.parse_parameter("75"), int)
    assert deg.parse_parameter("0.01,0.05") == (0.01, 0.05)
    with pytest.raises(ValueError, match="range such as 0.01,0.05"):
        deg.parse_parameter("1,2,3")
    with pytest.raises(ValueError):
        DegradationConfig.from_dict({"noise_level": 0.1, "sharpness": 2})


def test_degrade_each_gives_image_i_seed_i():
    from kontext_lora_helpers.degradations import degrade_each

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)) for _ in range(3)]
    config = PRESETS["course"]
    copies = degrade_each(images, config)
    assert [copy.size for copy in copies] == [image.size for image in images]
    for index, (image, copy) in enumerate(zip(images, copies)):
        assert copy.tobytes() == apply_degradation(image, config, seed=index)[0].tobytes()
    assert copies[0].tobytes() != apply_degradation(images[0], config, seed=1)[0].tobytes()
