"""Nano Kontext: offline loading, deterministic tokenizers, export to plain diffusers, and the
measured figures of the shipped weights on photos no nano component trained on."""

import importlib.util
import json

import pytest
import torch
from diffusers import FluxKontextPipeline

from kontext_lora_helpers.nano import (
    NANO_MAX_SEQUENCE_LENGTH,
    WEIGHTS_DIR,
    build_clip_tokenizer,
    build_nano_pipeline,
    build_t5_tokenizer,
)
from kontext_lora_helpers.nano.__main__ import main as nano_main
from kontext_lora_helpers.inference import default_num_inference_steps
from kontext_lora_helpers.models import call_kwargs
from kontext_lora_helpers.nano.evaluate import evaluate_nano, tensor_to_pils
from kontext_lora_helpers.nano.pool import default_image_paths, held_out_batch, held_out_stems
from kontext_lora_helpers.prompts import DEFAULT_INSTANCE_PROMPT as DEFAULT_PROMPT

PROMPT = "Restore this degraded photograph to high fidelity — remove noise"


@pytest.fixture(scope="module")
def pipe():
    pipe = build_nano_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def figures(pipe):
    # These are properties of the model, not of the sampler: at 6 denoising steps every figure is
    # within 0.4 dB of its value at 20 (e.g. flip 17.33 against 17.21 dB, identity 35.98 against
    # 35.89), in 28.5 s instead of 70.8 s on 2 CPU cores.
    return evaluate_nano(pipe, steps=6)


def test_tokenizers_are_deterministic_and_round_trip(tmp_path):
    clip_a, clip_b = build_clip_tokenizer(), build_clip_tokenizer()
    t5_a, t5_b = build_t5_tokenizer(), build_t5_tokenizer()
    assert clip_a.get_vocab() == clip_b.get_vocab() and t5_a.get_vocab() == t5_b.get_vocab()
    ids = t5_a(PROMPT).input_ids
    assert ids == t5_b(PROMPT).input_ids
    # known words are whole pieces; unknown text still tokenizes, through characters
    assert "▁degraded" in t5_a.convert_ids_to_tokens(ids)
    assert t5_a.unk_token_id not in t5_a("zebra").input_ids
    t5_a.save_pretrained(tmp_path / "t5")
    clip_a.save_pretrained(tmp_path / "clip")
    reloaded = type(t5_a).from_pretrained(tmp_path / "t5")
    assert reloaded(PROMPT).input_ids == ids and reloaded.model_max_length == NANO_MAX_SEQUENCE_LENGTH
    assert type(clip_a).from_pretrained(tmp_path / "clip")(PROMPT).input_ids == clip_a(PROMPT).input_ids


def test_shipped_weights_are_small_and_complete():
    files = sorted(WEIGHTS_DIR.glob("*.safetensors"))
    assert {f.name for f in files} == {"transformer.safetensors", "vae.safetensors", "text_encoder.safetensors",
                                      "text_encoder_2.safetensors"}
    assert sum(f.stat().st_size for f in files) < 30e6
    factors = json.loads((WEIGHTS_DIR / "vae_latent_factors.json").read_text())
    assert factors["scaling_factor"] > 0


def test_nano_keeps_flux_interfaces(pipe):
    assert pipe.transformer.config.in_channels == 64 and pipe.vae.config.latent_channels == 16
    assert pipe.transformer.config.guidance_embeds
    assert pipe.scheduler.config.use_dynamic_shifting
    assert pipe.vae_scale_factor == 2


def test_measured_latent_factors_normalise_held_out_latents(pipe):
    from kontext_lora_helpers.latents import encode

    z = encode(pipe.vae, held_out_batch(64))
    assert abs(float(z.mean())) < 0.35 and 0.6 < float(z.std()) < 1.5


def test_training_pool_excludes_held_out_photos():
    with_skimage = importlib.util.find_spec("skimage") is not None  # its photos join the pool when present
    stems = {p.stem for p in default_image_paths(use_skimage=with_skimage)}
    assert stems and not stems & held_out_stems()


def test_export_loads_in_plain_diffusers_and_matches(tmp_path, pipe):
    folder = tmp_path / "nano"
    assert nano_main(["export", str(folder)]) == 0
    plain = FluxKontextPipeline.from_pretrained(folder)
    plain.set_progress_bar_config(disable=True)
    image = tensor_to_pils(held_out_batch(64)[:1])[0]
    kwargs = dict(image=image, prompt=PROMPT, num_inference_steps=4, output_type="np", **call_kwargs(pipe, 64, 64))
    a = plain(generator=torch.Generator().manual_seed(0), **kwargs).images
    b = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
    assert a.shape == (1, 64, 64, 3) and abs(a - b).max() < 1e-5
    # never overwrite a folder someone filled
    with pytest.raises(SystemExit, match="not empty"):
        nano_main(["export", str(folder)])


def test_export_writes_a_model_card_whose_snippet_runs_as_the_course_calls_nano(tmp_path, pipe, lora_dir, monkeypatch):
    import re

    import numpy as np
    from PIL import Image

    from kontext_lora_helpers.inference import default_num_inference_steps
    from kontext_lora_helpers.models import GUIDANCE_SCALE
    from kontext_lora_helpers.nano import NANO_RESOLUTION, model_card_text

    folder = tmp_path / "nano"
    assert nano_main(["export", str(folder)]) == 0
    card = (folder / "README.md").read_text()
    assert card == model_card_text(str(folder))
    for argument in (f"max_sequence_length={NANO_MAX_SEQUENCE_LENGTH}", f"guidance_scale={GUIDANCE_SCALE}",
                     f"height={NANO_RESOLUTION}, width={NANO_RESOLUTION}", f'from_pretrained("{folder}")'):
        assert argument in card

    # The card's snippet, run as a reader would (2 steps instead of the default to stay fast), gives
    # exactly what the course's own call (`models.call_kwargs`) gives.
    snippet = re.search(r"```python\n(.*?)```", card, re.DOTALL).group(1)
    steps = f"num_inference_steps={default_num_inference_steps(pipe)}"
    assert steps in snippet
    snippet = snippet.replace(steps, "num_inference_steps=2")
    monkeypatch.chdir(tmp_path)
    photo = tensor_to_pils(held_out_batch(NANO_RESOLUTION)[:1])[0]
    photo.save("photo.png")
    exec(compile(snippet, "README.md", "exec"), {})
    from_card = np.asarray(Image.open("result.png"))
    expected = pipe(image=photo, prompt=DEFAULT_PROMPT, num_inference_steps=2, guidance_scale=GUIDANCE_SCALE,
                    generator=torch.Generator().manual_seed(0), **call_kwargs(pipe, NANO_RESOLUTION, NANO_RESOLUTION)
                    ).images[0]
    assert from_card.shape == (NANO_RESOLUTION, NANO_RESOLUTION, 3)
    assert np.abs(from_card.astype(int) - np.asarray(expected).astype(int)).max() <= 1

    # Its LoRA line, uncommented, loads a LoRA saved by the course's code and changes the output.
    lora_line = next(line for line in snippet.splitlines() if "load_lora_weights" in line)
    with_lora = snippet.replace(lora_line, f"pipe.load_lora_weights({str(lora_dir)!r})")
    exec(compile(with_lora, "README.md", "exec"), {})
    assert np.abs(np.asarray(Image.open("result.png")).astype(int) - from_card.astype(int)).max() > 2


def test_vae_round_trip_on_unseen_photos(figures):
    assert figures["vae_round_trip_psnr"] >= 35.0  # 2x down: it keeps noise and fine detail


def test_editor_returns_input_for_an_unseen_instruction(figures):
    assert figures["identity_psnr_unseen_instruction"] >= 30.0


@pytest.mark.parametrize("edit", ["flip", "grayscale", "brighten"])
def test_editor_follows_trained_edits(figures, edit):
    # the output must be clearly closer to the edited image than to the unedited input
    assert figures[f"{edit}_psnr_vs_edited"] >= figures[f"{edit}_psnr_vs_input"] + 2.0
    # a rough flip (a 2.4 M-parameter editor moves every pixel) still lands 5 dB closer to the target
    assert figures[f"{edit}_psnr_vs_edited"] >= 15.0


def test_base_does_not_restore(figures):
    # A base that already restored would make the LoRA's before/after comparison dishonest. Its
    # output is a copy of the degraded input as the VAE represents it, and adds nothing beyond that.
    assert figures["base_on_degraded_vs_its_input_psnr"] >= 23.0
    assert figures["base_on_degraded_psnr"] <= figures["degraded_vae_round_trip_psnr"] + 0.5


def test_check_lora_runs_the_original_guides_snippet_in_plain_diffusers(tmp_path, pipe):
    """The quality check's plumbing: a zero LoRA restores exactly like the base, a nonzero one does not."""
    from kontext_lora_helpers import lora as lora_ops
    from kontext_lora_helpers.nano.evaluate import check_restoration_lora

    pipe.save_pretrained(tmp_path / "nano", safe_serialization=True)
    transformer = FluxKontextPipeline.from_pretrained(tmp_path / "nano").transformer
    lora_ops.add_lora(transformer, rank=2)
    lora_ops.save_lora(transformer, tmp_path / "zero")
    # 4 steps: this checks the plumbing (these files record no steps, so `nano check-lora` would run 28)
    assert default_num_inference_steps(FluxKontextPipeline) == 28
    zero = check_restoration_lora(tmp_path / "zero", pipeline_dir=tmp_path / "nano", num_inference_steps=4)
    assert zero["num_images"] == 16 and zero["num_inference_steps"] == 4
    assert zero["lora_psnr"] == pytest.approx(zero["base_psnr"], abs=1e-6)
    assert zero["degraded_psnr"] < zero["base_psnr"]  # the VAE alone smooths some of the noise
    with torch.no_grad():
        for name, parameter in transformer.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    lora_ops.save_lora(transformer, tmp_path / "random")
    random = check_restoration_lora(tmp_path / "random", pipeline_dir=tmp_path / "nano", num_inference_steps=4)
    assert abs(random["lora_psnr"] - random["base_psnr"]) > 0.05


def test_nano_is_built_from_its_own_ten_photos():
    """The LoRA trains on all of data_samples/; nano's own pool stays the photos its weights came from."""
    from kontext_lora_helpers.nano.pool import NANO_PHOTOS, REPO_DATA_SAMPLES

    assert len(NANO_PHOTOS) == 10 and all((REPO_DATA_SAMPLES / name).is_file() for name in NANO_PHOTOS)
    pool = {p.name for p in default_image_paths(use_skimage=False)}
    assert pool == set(NANO_PHOTOS)
    everything = {p.name for p in default_image_paths([REPO_DATA_SAMPLES], use_skimage=False)}
    assert pool < everything and "raccoon.jpg" in everything - pool
