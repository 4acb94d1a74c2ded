"""Pipeline loading: nano offline, device/dtype choice, quantization, and one clear error per bad input."""

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from kontext_lora_helpers import models
from kontext_lora_helpers.models import ModelLoadError, call_kwargs, choose_device_and_dtype, load_pipeline


def test_nano_loads_offline_and_reports(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = load_pipeline("nano")
    report = models.describe_pipeline(pipe)
    assert report["components"]["transformer"]["dtype"] == "float32"
    assert report["components"]["transformer"]["device"] == "cpu"
    assert 1.0 < report["components"]["transformer"]["parameters_m"] < 5.0
    assert report["max_sequence_length"] == 32
    assert "transformer" in models.format_description(report)


def test_dtype_rules(monkeypatch):
    assert choose_device_and_dtype("cpu").dtype == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    # a T4 reports bf16 as supported (emulated); capability decides
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert choose_device_and_dtype("cuda").dtype == torch.float16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert choose_device_and_dtype("cuda").dtype == torch.bfloat16
    assert choose_device_and_dtype("cuda", "float32").dtype == torch.float32
    with pytest.raises(ValueError, match="dtype"):
        choose_device_and_dtype("cpu", "float8")


@pytest.mark.parametrize("name", ["nanoo", "not a model", "./missing-folder"])
def test_unknown_names(name):
    with pytest.raises(ModelLoadError, match="Unknown model"):
        load_pipeline(name)


def test_folder_that_is_not_a_pipeline(tmp_path):
    with pytest.raises(ModelLoadError, match="model_index.json"):
        load_pipeline(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file"):
        load_pipeline(tmp_path / "weights.bin")


def test_nf4_on_cpu_is_refused_before_loading():
    with pytest.raises(ModelLoadError, match="NF4.*CUDA"):
        load_pipeline("nano", quantize="nf4", device="cpu")
    with pytest.raises(ValueError, match="quantize"):
        load_pipeline("nano", quantize="int4")


def test_hub_id_offline_says_how_to_get_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache: nothing to find, nothing downloaded
    with pytest.raises(ModelLoadError, match="not on this machine"):
        load_pipeline("black-forest-labs/FLUX.1-Kontext-dev", device="cpu")


def test_gated_model_message(monkeypatch):
    from diffusers import FluxKontextPipeline
    from huggingface_hub.errors import GatedRepoError

    def refuse(*args, **kwargs):
        raise GatedRepoError("401 gated", response=SimpleNamespace(headers={}, status_code=401, request=None))

    monkeypatch.setattr(FluxKontextPipeline, "from_pretrained", refuse)
    with pytest.raises(ModelLoadError, match="huggingface-cli login"):
        load_pipeline("black-forest-labs/FLUX.1-Kontext-dev", device="cpu")


def test_int8_quantized_nano_runs_on_cpu():
    pytest.importorskip("optimum.quanto")
    pipe = load_pipeline("nano", quantize="int8")
    layer = pipe.transformer.transformer_blocks[0].attn.to_q
    assert type(layer).__name__ == "QLinear" and "int8" in str(layer.weight_qtype)
    image = Image.new("RGB", (64, 64), (120, 90, 60))
    out = pipe(image=image, prompt="Keep the image unchanged", num_inference_steps=2, **call_kwargs(pipe, 64, 64))
    assert out.images[0].size == (64, 64)


def test_call_kwargs_pin_the_working_size():
    pipe = load_pipeline("nano")
    kwargs = call_kwargs(pipe, 48, 80)
    assert kwargs == dict(height=48, width=80, max_area=48 * 80, _auto_resize=False, max_sequence_length=32)


@pytest.mark.parametrize("source", ["nano", "folder"])
def test_the_text_encoders_and_the_rest_load_apart_as_the_whole_pipeline_has_them(source, tmp_path):
    """`load_text_encoders` and ``load_pipeline(text_encoders=False)`` split one pipeline in two,
    for the built-in nano and for a diffusers folder (the path FLUX.1-Kontext-dev takes), with the
    same weights and the same prompt embeddings as the whole pipeline."""
    from kontext_lora_helpers.nano import build_nano_pipeline

    name = "nano"
    if source == "folder":
        name = tmp_path / "nano"
        build_nano_pipeline().save_pretrained(name, safe_serialization=True)
    whole = load_pipeline(name)
    encoders = models.load_text_encoders(name)
    rest = load_pipeline(name, text_encoders=False)
    assert encoders.transformer is None and encoders.vae is None
    assert rest.text_encoder is None and rest.text_encoder_2 is None and rest.tokenizer_2 is not None
    for part, loaded in (("text_encoder", encoders), ("text_encoder_2", encoders), ("vae", rest), ("transformer", rest)):
        expected, actual = getattr(whole, part).state_dict(), getattr(loaded, part).state_dict()
        assert expected.keys() == actual.keys() and all(torch.equal(expected[k], actual[k]) for k in expected), part
    assert models.max_sequence_length_for(encoders) == models.max_sequence_length_for(rest) == 32
    prompts = ["Restore this photograph", "Remove the noise"]
    for expected, actual in zip(whole.encode_prompt(prompt=prompts, prompt_2=None, max_sequence_length=32),
                                encoders.encode_prompt(prompt=prompts, prompt_2=None, max_sequence_length=32)):
        assert torch.equal(expected, actual)
