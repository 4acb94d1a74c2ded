"""The training-step benchmarks run, and what they report is sound.

pytest does not collect ``tests/benchmarks`` (``norecursedirs``), so the scripts are imported from
there and their ``main`` is called with short settings: the nano comparison with 2 timed steps, the
GPU benchmark with ``--tiny`` (the same code on the CPU). The FLOP formulas the GPU benchmark's
utilisation rests on are checked against PyTorch's own FLOP counter on a small config.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parent / "benchmarks"


def import_benchmark(name: str):
    """A benchmark module from tests/benchmarks (they import each other by name, so the folder is on
    the path while it imports)."""
    import importlib

    sys.path.insert(0, str(BENCH_DIR))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH_DIR))


@pytest.fixture(scope="module")
def benchmarks():
    """The benchmark modules the timing tests share."""
    return {"step": import_benchmark("bench_training_step"), "gpu": import_benchmark("bench_gpu_training"),
            "restore": import_benchmark("bench_restore")}


def test_nano_step_benchmark_times_both_and_they_compute_the_same_loss(benchmarks, tmp_path, capsys):
    json_path = tmp_path / "step.json"
    benchmarks["step"].main(["--steps", "2", "--warmup", "1", "--json", str(json_path)])
    report = json.loads(json_path.read_text())

    for name in ("project", "diffusers_reference"):
        result = report["results"][name]
        assert len(result["ms_per_step_all"]) == 2
        assert 0 < result["ms_per_step_median"] < 60_000
        assert all(math.isfinite(loss) for loss in result["losses"])
    assert report["ratio_project_over_reference"] > 0 and report["ratio_paired_median"] > 0
    check = report["loss_check"]
    assert check["latents_max_abs_diff"] == 0.0  # same VAE encode, same images
    assert check["loss_rel_diff"] < 1e-5, check
    assert check["lora_grad_rel_diff"] < 1e-4, check
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["torch"] == torch.__version__
    assert report["peak_rss_mb"] > 0
    printed = capsys.readouterr().out
    assert "| ratio project / reference (medians) |" in printed and "same inputs" in printed


def test_gpu_benchmark_tiny_runs_every_arrangement_on_the_cpu(benchmarks, tmp_path):
    gpu = benchmarks["gpu"]
    gpu.main(["--tiny", "--output", str(tmp_path)])
    report = json.loads((tmp_path / gpu.JSON_NAME).read_text())
    table = (tmp_path / gpu.MARKDOWN_NAME).read_text()

    rows = {(row["resolution"], row["arrangement"], row["base"]): row for row in report["rows"]}
    assert len(rows) == len(report["rows"]) == 6
    for resolution in (64, 128):
        tokens = (resolution // 16) ** 2
        for arrangement in ("project", "diffusers_reference"):
            row = rows[(resolution, arrangement, "fp32")]
            assert row["status"] == "ok", row["status"]
            assert row["tokens"] == {"target": tokens, "control": tokens, "text": 16, "total": 2 * tokens + 16}
            assert len(row["seconds"]) == 2 and all(0 < s < 60 for s in row["seconds"])
            assert math.isfinite(row["seconds_per_step"]) and row["seconds_per_step"] > 0
            assert row["losses_finite"]
            assert 0 < row["mfu"] < row["hfu"] and row["peak_memory_gib"] is None
        nf4 = rows[(resolution, "project", "nf4")]
        assert nf4["status"].startswith("skipped") and "CUDA" in nf4["status"]
        assert f"| {resolution} | {tokens} + {tokens} + 16 = {2 * tokens + 16} | project | nf4 | skipped" in table
    assert table.count("| diffusers reference | fp32 |") == 2
    assert report["matmul_peak"]["flops_per_second"] > 0


@pytest.mark.parametrize("double_blocks, single_blocks", [(2, 3), (0, 2)])
def test_flop_formulas_match_torch_flop_counter(benchmarks, double_blocks, single_blocks):
    """Forward, forward + backward of a LoRA step, and the same with gradient checkpointing."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from kontext_lora_helpers import lora as lora_ops

    gpu = benchmarks["gpu"]
    config = dict(gpu.TINY_TRANSFORMER_CONFIG, num_layers=double_blocks, num_single_layers=single_blocks)
    transformer = gpu.build_random(gpu.FluxTransformer2DModel, config, torch.device("cpu"), torch.float32)
    rank, image_tokens, text_tokens = 4, 32, 8
    lora_ops.add_lora(transformer, rank=rank)
    transformer.train()
    inputs = dict(
        hidden_states=torch.randn(1, image_tokens, 64),
        encoder_hidden_states=torch.randn(1, text_tokens, config["joint_attention_dim"]),
        pooled_projections=torch.randn(1, config["pooled_projection_dim"]),
        timestep=torch.tensor([0.5]), guidance=torch.tensor([3.5]),
        img_ids=torch.zeros(image_tokens, 3), txt_ids=torch.zeros(text_tokens, 3), return_dict=False,
    )
    expected = gpu.transformer_flops(config, image_tokens, text_tokens, rank)

    def counted(backward: bool) -> int:
        # The math backend spells attention out as matmuls, which the counter sees on the CPU.
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            prediction = transformer(**inputs)[0]
            if backward:
                prediction.pow(2).mean().backward()
        transformer.zero_grad(set_to_none=True)
        return counter.get_total_flops()

    assert counted(backward=False) == expected["forward"]
    assert counted(backward=True) == expected["model"]
    transformer.enable_gradient_checkpointing()
    assert counted(backward=True) == expected["hardware"]


def test_full_size_flops_are_in_the_expected_range(benchmarks):
    """FLUX.1 at 1024 px: ~1.7e14 forward FLOPs (11.9 B parameters, 8704 tokens, double blocks
    counted per stream), so the table's utilisation is not off by an order of magnitude."""
    gpu = benchmarks["gpu"]
    flops = gpu.transformer_flops(gpu.FLUX1_DEV_TRANSFORMER_CONFIG, 2 * 4096, 512, 16)
    assert 1.5e14 < flops["forward"] < 1.8e14
    assert flops["forward"] < flops["model"] < flops["three_x_forward"] < flops["hardware"]


def test_restore_benchmark_times_batching_and_tiling(benchmarks, tmp_path):
    json_path = tmp_path / "restore.json"
    benchmarks["restore"].main(["--rounds", "1", "--steps", "2", "--json", str(json_path)])
    report = json.loads(json_path.read_text())
    assert report["batching"]["single_images_per_second"] > 0 and report["batching"]["speedup"] > 0
    assert report["batching"]["max_pixel_difference"] <= 2  # per-image generators: batching only rounds
    tiling = report["tiling"]
    assert tiling["tiled_seconds_per_image"] > 0 and tiling["whole_seconds_per_image"] > 0
    assert tiling["tiles"]["grid"][0] * tiling["tiles"]["grid"][1] > 1
    assert all(math.isfinite(tiling[key]) for key in ("whole_psnr", "tiled_psnr", "degraded_psnr"))


def test_card_profile_script_runs_the_preflight_of_the_shallow_twin_in_tiny_mode(tmp_path, monkeypatch):
    """The script a GPU runs for every card profile, in its CPU mode: the pre-flight command in a
    fresh process trains the real-width twin with an int8 base (optimum-quanto, through the same
    from_pretrained path as the real checkpoint), gradient checkpointing, cached prompt embeddings
    and the VGG term, restores a validation image, and reports memory, speed and the estimate."""
    monkeypatch.setenv("KONTEXT_LORA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    bench_card_profiles = import_benchmark("bench_card_profiles")
    results = bench_card_profiles.main(["--tiny", "--json", str(tmp_path / "profiles.json")])
    assert json.loads((tmp_path / "profiles.json").read_text()) == results
    (row,) = results["rows"]
    assert results["device"] == "CPU" and row["status"] == "ok", row
    assert row["twin"] == "random-kontext-shallow" and row["device"] == "CPU" and row["fits"] is None
    assert "int8 base" in row["settings"] and "perceptual loss" in row["settings"]
    assert row["steps_run"] == 2 and row["seconds_per_step"] > 0 and row["peak_memory_gb"] > 1 and 0 < row["mfu"] < 1
    # 1000 steps; validations: the base model's, every 250 steps (3 before the end), the last
    assert row["planned_validations"] == 5
    expected = 1000 * row["seconds_per_step"] + 5 * row["validation_seconds"]
    assert row["estimated_run_seconds"] == pytest.approx(expected)


@pytest.fixture(scope="module")
def tiny_recipe_study(tmp_path_factory):
    """`bench_recipe.py --tiny` for the recipe only; `bench_steps.py --tiny` reuses its LoRA."""
    bench_recipe = import_benchmark("bench_recipe")
    work_dir = tmp_path_factory.mktemp("bench_recipe")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        results = bench_recipe.main(["--tiny", "--variants", "recipe", "--work_dir", str(work_dir)])
    return work_dir, results, printed.getvalue()


def test_recipe_study_tiny_chooses_on_validation_and_reports_the_recipe_on_test(tiny_recipe_study):
    work_dir, results, printed = tiny_recipe_study
    recipe = results["recipe"]
    assert recipe["validation"]["photo_set"] == "validation" and recipe["validation"]["num_images"] == 24
    assert recipe["test"]["photo_set"] == "test" and recipe["test"]["num_images"] == 16
    assert len(recipe["validation"]["per_image"]["lora"]) == 24
    assert json.loads((work_dir / "results-tiny.json").read_text()).keys() == {"recipe"}
    assert "the recipe on the 16 test crops" in printed


def test_steps_study_tiny_chooses_the_fewest_steps_on_validation_and_times_the_snippet(tiny_recipe_study, capsys):
    bench_steps = import_benchmark("bench_steps")
    # the rule itself: the fewest steps within the tolerance of the most steps' per-crop PSNRs
    reference = [30.0, 20.0]
    assert bench_steps.fewest_good_steps({1: [29.0, 19.0], 2: [29.95, 19.9], 4: [30.1, 20.0]}, reference, 0.1) == 2
    assert bench_steps.fewest_good_steps({1: [25.0, 15.0], 2: [29.0, 19.0]}, reference, 0.1) == 2  # none: the most

    work_dir = tiny_recipe_study[0]
    results = bench_steps.main(["--tiny", "--objectives", "posterior_mean", "--work_dir", str(work_dir)])
    entry = results["objectives"]["posterior_mean"]
    assert entry["lora_dir"] == str(work_dir / "recipe")  # the recipe study's LoRA, not trained again
    assert set(entry["validation_curve"]) == {1, 2}
    assert all(len(point["lora"]) == 24 for point in entry["validation_curve"].values())
    assert entry["chosen_steps"] in {1, 2} and set(entry["test"]) == {entry["chosen_steps"], 2}
    assert all(len(t["lora"]) == 16 for t in entry["test"].values())
    timing = entry["timing"]
    assert timing["images"] == 16 and timing["snippet_seconds"] > 0 and timing["package_seconds"] > 0
    assert json.loads((work_dir / "steps-tiny.json").read_text())["objectives"].keys() == {"posterior_mean"}
    assert "16 test crops" in capsys.readouterr().out


def test_compile_benchmark_times_both_steps_and_they_compute_the_same_loss(tmp_path):
    bench_compile = import_benchmark("bench_compile")
    report = bench_compile.main(["--backend", "aot_eager", "--steps", "1", "--warmup", "1",
                                 "--json", str(tmp_path / "compile.json")])
    assert report["eager_ms_median"] > 0 and report["compiled_ms_median"] > 0 and report["compile_seconds"] >= 0
    assert report["loss_max_rel_diff"] < 1e-5  # aot_eager traces; it computes what eager computes
    assert json.loads((tmp_path / "compile.json").read_text())["backend"] == "aot_eager"


def test_profile_benchmark_times_every_stage_of_a_step(tmp_path):
    bench_profile = import_benchmark("bench_profile")
    report = bench_profile.main(["--steps", "1", "--warmup", "0", "--batch_size", "2",
                                 "--json", str(tmp_path / "profile.json")])
    assert set(report["ms_median"]) == set(bench_profile.STAGES)
    assert all(value > 0 for value in report["ms_median"].values())
    assert sum(report["share"].values()) == pytest.approx(1.0)
    assert json.loads((tmp_path / "profile.json").read_text())["objective"] == "posterior_mean"
