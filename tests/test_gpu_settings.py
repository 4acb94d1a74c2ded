"""The per-GPU training settings for the real model (notebook 04's table)."""

import re
import shlex
from pathlib import Path

import pytest
import torch

from kontext_lora_helpers import gpu_settings
from kontext_lora_helpers.models import choose_device_and_dtype
from kontext_lora_helpers.train import RESTORATION_STEPS, TrainConfig, command_line, parse_args


def test_weight_memory_is_parameters_times_bytes():
    # 11.9 B parameters: 23.8 GB in bf16, about 6.7 GB in NF4 with its float32 scale per 64 weights
    assert gpu_settings.weight_memory_gb("transformer", "bf16") == pytest.approx(23.8)
    assert gpu_settings.weight_memory_gb("transformer", "nf4") == pytest.approx(6.69, abs=0.01)


@pytest.mark.parametrize("name", list(gpu_settings.GPU_SETTINGS))
def test_each_gpu_setting_fits_its_card_and_is_a_valid_command(name):
    entry = gpu_settings.GPU_SETTINGS[name]
    assert entry.expected_peak_gb[1] < entry.memory_gb, "the expected peak must leave headroom"
    assert entry.transformer_weights_gb < entry.expected_peak_gb[0]
    assert entry.settings["resolution"] % 16 == 0
    assert entry.settings["gradient_checkpointing"]
    # bf16 only where the card computes it natively (the same rule the model loader applies)
    assert (entry.settings["mixed_precision"] == "bf16") == entry.native_bf16
    config = gpu_settings.settings_for_gpu(name, hr_root="my_photos", output_dir="outputs/run")
    assert parse_args(shlex.split(command_line(config, "accelerate launch -m"))[4:]) == config
    assert any(key in entry.basis for key in gpu_settings.SOURCES) or "computed" in entry.basis


def test_t4_gets_fp16_like_the_loader_decides(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    assert gpu_settings.detect_gpu() == "T4"
    assert choose_device_and_dtype("cuda").dtype == torch.float16
    assert gpu_settings.settings_for_gpu("T4").mixed_precision == "fp16"


def test_unknown_gpu_names_the_known_ones():
    with pytest.raises(ValueError, match="T4, L4, A100-40GB"):
        gpu_settings.settings_for_gpu("V100")


def test_settings_table_has_a_row_per_gpu():
    table = gpu_settings.settings_table()
    assert table.count("\n") == len(gpu_settings.GPU_SETTINGS) + 1
    assert "| T4 | 16 GB | fp16 | nf4 | 512 px | 1 x 4 | 6.7 GB | 9-12 GB |" in table


def test_the_nf4_size_in_prose_is_the_computed_one():
    # one source for the figure: 4 bits + a float32 scale per 64 weights, as load_pipeline configures it
    size = f"{gpu_settings.weight_memory_gb('transformer', 'nf4'):.1f} GB"
    assert size == "6.7 GB"
    root = Path(__file__).resolve().parents[1]
    for path in (root / "README.md", root / "notebooks" / "04_training.py"):
        text = path.read_text()
        assert f"about {size}" in text and not re.search(r"\b6\.[0-689] GB", text), path.name


def test_notebook_settings_shorten_nano_and_pick_the_gpu_entry_otherwise(monkeypatch):
    monkeypatch.delenv(gpu_settings.NOTEBOOK_STEPS_VARIABLE, raising=False)
    nano = gpu_settings.notebook_settings("nano", hr_root="data_samples", output_dir="outputs/nb")
    assert nano.max_train_steps == gpu_settings.NOTEBOOK_NANO_STEPS < TrainConfig().max_train_steps
    assert nano == TrainConfig(hr_root="data_samples", output_dir="outputs/nb", max_train_steps=gpu_settings.NOTEBOOK_NANO_STEPS)
    monkeypatch.setattr(gpu_settings, "detect_gpu", lambda: "T4")
    real = gpu_settings.notebook_settings("black-forest-labs/FLUX.1-Kontext-dev", hr_root="p", output_dir="o")
    assert real == gpu_settings.settings_for_gpu("T4", hr_root="p", output_dir="o")
    monkeypatch.setattr(gpu_settings, "detect_gpu", lambda: None)  # no GPU recognised: the A100's entry
    assert gpu_settings.notebook_settings("some/model", hr_root="p", output_dir="o") == gpu_settings.settings_for_gpu(
        "A100-40GB", pretrained_model_name_or_path="some/model", hr_root="p", output_dir="o")


def test_the_shallow_twin_trains_at_cpu_sizes_without_a_gpu_and_at_the_card_s_with_one(monkeypatch):
    monkeypatch.delenv(gpu_settings.NOTEBOOK_STEPS_VARIABLE, raising=False)
    monkeypatch.setattr(gpu_settings, "detect_gpu", lambda: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    twin = gpu_settings.notebook_settings("random-kontext-shallow", hr_root="p", output_dir="o")
    run = gpu_settings.run_settings("random-kontext-shallow")
    # the training crops and batch are the ones run_settings gives notebooks 02 and 03 on a CPU
    assert (twin.resolution, twin.train_batch_size) == (run.resolution, run.batch_size) == (64, 1)
    assert twin.gradient_checkpointing and twin.gradient_accumulation_steps == 1
    assert twin.max_train_steps == gpu_settings.NOTEBOOK_TWIN_STEPS and twin.validation_steps == 0
    assert twin.pretrained_model_name_or_path == "random-kontext-shallow"
    monkeypatch.setenv(gpu_settings.NOTEBOOK_STEPS_VARIABLE, "2")
    assert gpu_settings.notebook_settings("random-kontext-shallow", hr_root="p", output_dir="o").max_train_steps == 2
    monkeypatch.setattr(gpu_settings, "detect_gpu", lambda: "L4")  # a GPU: the card's entry, as for the real model
    assert gpu_settings.notebook_settings("random-kontext-shallow", hr_root="p", output_dir="o") == \
        gpu_settings.settings_for_gpu("L4", pretrained_model_name_or_path="random-kontext-shallow", hr_root="p",
                                      output_dir="o")


def test_run_settings_fit_each_card_and_leave_nano_alone():
    real = "black-forest-labs/FLUX.1-Kontext-dev"
    nano = gpu_settings.run_settings("nano", gpu="T4")
    assert nano.pipeline_kwargs() == dict(quantize="none", text_encoder_offload=False, vae_slicing=False,
                                          vae_tiling=False) and nano.resolution is None
    t4, l4, a100 = (gpu_settings.run_settings(real, gpu=name) for name in ("T4", "L4", "A100-40GB"))
    # 16 and 24 GB: a 4-bit base, the text encoders visit the GPU only while they run, decode in slices
    assert t4.quantize == l4.quantize == "nf4" and t4.text_encoder_offload and t4.vae_slicing and t4.vae_tiling
    assert (t4.batch_size, l4.batch_size) == (1, 2)
    assert a100.quantize == "none" and a100.text_encoder_offload and a100.gradient_checkpointing
    assert all(settings.resolution == 512 for settings in (t4, l4, a100))
    on_cpu = gpu_settings.run_settings("random-kontext-shallow", gpu=None)
    assert (on_cpu.card, on_cpu.resolution, on_cpu.batch_size) == ("CPU", 64, 1)
    big = gpu_settings.run_settings(real, gpu="H100", memory_gb=80)
    assert big.quantize == "none" and big.card == "H100"
    assert "nf4 base" in str(t4) and "text_encoder_offload" in str(t4)


def test_the_test_suite_may_shorten_the_notebook_runs_but_never_lengthen_them(monkeypatch):
    monkeypatch.setenv(gpu_settings.NOTEBOOK_STEPS_VARIABLE, "20")
    shortened = gpu_settings.notebook_settings("nano", hr_root="d", output_dir="o")
    assert shortened.max_train_steps == 20
    assert shortened.validation_inference_steps == gpu_settings.SHORTENED_VALIDATION_STEPS < RESTORATION_STEPS[
        "posterior_mean"]
    monkeypatch.setenv(gpu_settings.NOTEBOOK_STEPS_VARIABLE, "100000")
    assert gpu_settings.notebook_nano_steps() == gpu_settings.NOTEBOOK_NANO_STEPS
    monkeypatch.setenv(gpu_settings.NOTEBOOK_STEPS_VARIABLE, "ten")
    with pytest.raises(ValueError, match=gpu_settings.NOTEBOOK_STEPS_VARIABLE):
        gpu_settings.notebook_nano_steps()
