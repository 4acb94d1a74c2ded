"""Nano's recipe record says what its study measured, on the photos it says.

`train.NANO_RECIPE_MEASUREMENTS` quotes `tests/benchmarks/bench_recipe.py`'s results: each gain is
the paired gain of the recipe over one changed setting on the validation crops, mean ± two
standard errors. This test recomputes them from the stored results, so the record cannot drift
from the measurement, and checks that no choice was made on the test crops.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kontext_lora_helpers.metrics import paired_spread
from kontext_lora_helpers.train import MODEL_RECIPES, NANO_RECIPE_MEASUREMENTS

RESULTS = Path(__file__).parent / "benchmarks" / "results" / "bench_recipe.json"
VARIANT_OF_SETTING = {"objective": "flow_matching", "sigma_shift": "pipeline_shift",
                      "learning_rate": "learning_rate_1e-3", "ema_decay": "no_weight_average",
                      "crop_scale": "whole_side_crops"}


@pytest.fixture(scope="module")
def results() -> dict:
    return json.loads(RESULTS.read_text())


@pytest.mark.parametrize("measurement", NANO_RECIPE_MEASUREMENTS, ids=lambda m: m.setting)
def test_each_recorded_gain_is_the_studys_paired_gain_on_validation(results, measurement):
    recipe = results["recipe"]["validation"]
    variant = results[VARIANT_OF_SETTING[measurement.setting]]["validation"]
    assert recipe["photo_set"] == variant["photo_set"] == "validation"
    assert recipe["num_images"] == 24 and recipe["num_inference_steps"] == 28
    gain = paired_spread(recipe["per_image"]["lora"], variant["per_image"]["lora"])
    low, high = measurement.gain_db
    assert low == pytest.approx(gain.mean - 2 * gain.sem, abs=0.011)
    assert high == pytest.approx(gain.mean + 2 * gain.sem, abs=0.011)
    assert gain.mean > 0  # the recipe's value validated best


def test_the_study_trained_the_recipe_it_records(results):
    assert results["recipe"]["flags"] == []
    nano = MODEL_RECIPES["nano"]
    assert (nano["objective"], nano["sigma_shift"], nano["ema_decay"]) == ("posterior_mean", -1.5, 0.99)
    assert results["recipe"]["test"]["photo_set"] == "test"
    assert all("test" not in entry for name, entry in results.items() if name != "recipe")  # one test report only
