"""Restoration prompts: the original guide's fixed instruction and the degradation-aware variants."""

from __future__ import annotations

import json

import pytest

from kontext_lora_helpers.degradations import PRESETS, DegradationConfig, sample_degradation_steps
from kontext_lora_helpers.prompts import DEFAULT_INSTANCE_PROMPT, describe_degradations, restoration_prompt

GUIDE_RECORD_X4 = [
    {"op": "downsample", "lr_scale": 4},
    {"op": "noise", "noise_level": 0.05, "gray": False, "seed": 1},
    {"op": "blur", "blur_radius": 1.0},
    {"op": "jpeg", "jpeg_quality": 75},
]


def test_plain_mode_is_the_original_guides_fixed_prompt():
    assert DEFAULT_INSTANCE_PROMPT == "Restore this degraded photograph to high fidelity"
    assert restoration_prompt(GUIDE_RECORD_X4) == DEFAULT_INSTANCE_PROMPT
    assert restoration_prompt(None, "Fix it") == "Fix it"


def test_described_mode_says_what_was_done():
    assert restoration_prompt(GUIDE_RECORD_X4, mode="described") == (
        "Restore this degraded photograph to high fidelity — remove noise, remove blur, "
        "undo 4x downsampling, remove JPEG artifacts"
    )


def test_levels_are_binned():
    light = [
        {"op": "noise", "noise_level": 0.01, "gray": False, "seed": 0},
        {"op": "jpeg", "jpeg_quality": 92},
    ]
    heavy = [
        {"op": "noise", "noise_level": 0.15, "gray": False, "seed": 0},
        {"op": "jpeg", "jpeg_quality": 20},
    ]
    assert describe_degradations(light) == ["remove light noise", "remove light JPEG artifacts"]
    assert describe_degradations(heavy) == ["remove heavy noise", "remove heavy JPEG artifacts"]
    assert describe_degradations([{"op": "blur", "blur_radius": 3.0}]) == ["remove heavy blur"]
    assert describe_degradations([{"op": "downsample", "lr_scale": 2.5}]) == ["undo 2.5x downsampling"]


def test_numeric_mode_gives_the_numbers():
    prompt = restoration_prompt(GUIDE_RECORD_X4, "Restore", mode="numeric")
    assert prompt == (
        "Restore — remove noise (sigma 0.05), remove blur (sigma 1 px), undo 4x downsampling, "
        "remove JPEG artifacts (quality 75)"
    )


def test_no_op_steps_and_empty_records_add_nothing():
    nothing = [
        {"op": "downsample", "lr_scale": 1},
        {"op": "noise", "noise_level": 0.0, "gray": False, "seed": 0},
        {"op": "blur", "blur_radius": 0.0},
    ]
    assert restoration_prompt(nothing, mode="described") == DEFAULT_INSTANCE_PROMPT
    assert restoration_prompt([], mode="described") == DEFAULT_INSTANCE_PROMPT
    assert restoration_prompt([], "Restore this.", mode="described") == "Restore this."


def test_kinds_are_merged_and_ordered_whatever_the_record_order():
    record = sample_degradation_steps(PRESETS["realesrgan"], 3)
    phrases = describe_degradations(record)
    assert len(phrases) == len(set(phrases))
    assert sum("blur" in phrase for phrase in phrases) <= 1
    assert phrases[-1].endswith("JPEG artifacts")
    reversed_record = list(reversed(GUIDE_RECORD_X4))
    assert describe_degradations(reversed_record) == describe_degradations(GUIDE_RECORD_X4)


def test_old_photo_and_extra_blurs_are_described():
    record = [
        {"op": "fade", "fade_strength": 0.5, "color_cast_strength": 0.4, "color_cast_hue": 30.0},
        {"op": "grain", "grain_strength": 0.05, "grain_size": 1.5, "seed": 1},
        {"op": "scratches", "scratch_count": 3, "dust_count": 10, "seed": 2},
        {"op": "motion_blur", "motion_blur_length": 9, "motion_blur_angle": 10.0},
        {"op": "poisson_noise", "poisson_scale": 1.0, "gray": True, "seed": 3},
    ]
    assert describe_degradations(record) == [
        "remove scratches and dust",
        "restore faded colors",
        "remove the color cast",
        "remove noise",
        "remove film grain",
        "remove motion blur",
    ]


def test_prompts_are_deterministic_and_accept_json_text():
    config = DegradationConfig(noise_level=(0.0, 0.2), lr_scale=(1, 8), jpeg_quality=(10, 100))
    for seed in range(20):
        record = sample_degradation_steps(config, seed)
        prompt = restoration_prompt(record, mode="described")
        assert prompt == restoration_prompt(json.dumps(record), mode="described")
        assert prompt == restoration_prompt(json.loads(json.dumps(record)), mode="described")


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="prompt mode must be one of plain, described, numeric"):
        restoration_prompt(GUIDE_RECORD_X4, mode="verbose")
