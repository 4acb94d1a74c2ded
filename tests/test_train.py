"""The training run on nano: outputs, prompt caching, checkpoints, resume after a kill, refusals, DDP.

Every run here is a few optimizer steps at 64x64 with batch 2 and rank 4; the checks are about the
mechanics (files, equality of runs, messages), never about how well nano restores.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kontext_lora_helpers import models, objective
from kontext_lora_helpers import train as train_module
from kontext_lora_helpers.train import config as train_config
from kontext_lora_helpers.degradations import DegradationConfig
from kontext_lora_helpers.lora import LORA_WEIGHT_NAME
from kontext_lora_helpers.prompts import DEFAULT_INSTANCE_PROMPT
from kontext_lora_helpers.train import (
    EMA_WEIGHT_NAME,
    MODEL_RECIPES,
    RESTORATION_STEPS,
    ConfigError,
    TrainConfig,
    TrainingDiverged,
    check_config,
    latest_checkpoint,
    list_checkpoints,
    parse_args,
    train,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = REPO_ROOT / "data_samples"
HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Nano-sized ops run fastest on one thread; the subprocesses get OMP_NUM_THREADS=1 to match,
    so in-process and subprocess runs compute bit-for-bit the same numbers."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def quick_config(output_dir, **changes) -> TrainConfig:
    """A run of a few seconds: 4 steps of batch 2 at 64 px, rank 4, no validation unless asked."""
    settings = dict(
        hr_root=str(DATA), output_dir=str(output_dir), resolution=64, train_batch_size=2, rank=4,
        max_train_steps=4, checkpointing_steps=2, validation_dir="none", validation_steps=0,
        num_validation_images=2, validation_inference_steps=3, mixed_precision="no",
    )
    settings.update(changes)
    return TrainConfig(**settings)


def lora_tensors(output_dir) -> dict[str, torch.Tensor]:
    return load_file(str(Path(output_dir) / LORA_WEIGHT_NAME))


# Adam divides each gradient element by its running RMS, so an element whose gradient is close to
# zero turns float rounding (a different summation order) into a visible, bounded change: at most
# about one learning rate per step. Runs that split the same batch differently are compared within
# 5% of one step's size; a resumed run repeats the very same operations and must match to 1e-6.
SPLIT_WORK_TOLERANCE = 0.05 * MODEL_RECIPES["nano"]["learning_rate"]


def assert_same_lora(first_dir, second_dir, atol=1e-6):
    first, second = lora_tensors(first_dir), lora_tensors(second_dir)
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=atol, msg=key)


def subprocess_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
            "MPLBACKEND": "Agg"}


def cli_flags(config: TrainConfig) -> list[str]:
    """The command-line flags of a `quick_config` (the settings it changes from the defaults)."""
    return [
        "--hr_root", config.hr_root, "--output_dir", config.output_dir, "--resolution", str(config.resolution),
        "--train_batch_size", str(config.train_batch_size), "--rank", str(config.rank),
        "--max_train_steps", str(config.max_train_steps), "--checkpointing_steps", str(config.checkpointing_steps),
        "--validation_dir", config.validation_dir, "--validation_steps", str(config.validation_steps),
        "--num_validation_images", str(config.num_validation_images),
        "--validation_inference_steps", str(config.validation_inference_steps),
        "--gradient_accumulation_steps", str(config.gradient_accumulation_steps),
    ]


# --- settings -----------------------------------------------------------------------------------


def test_the_seeds_command_parses_with_its_meanings(tmp_path):
    config = parse_args([
        "--pretrained_model_name_or_path=nano", f"--hr_root={DATA}", f"--output_dir={tmp_path}",
        "--instance_prompt=Restore this degraded photograph to high fidelity", "--resolution=512",
        "--train_batch_size=4", "--gradient_accumulation_steps=4", "--max_train_steps=3000",
        "--learning_rate=1e-4", "--lr_scheduler=constant", "--lr_warmup_steps=0",
        "--degradation_types=downsample,noise,blur", "--noise_level=0.03", "--blur_radius=1.2",
        "--perceptual_loss",
    ])
    assert (config.resolution, config.train_batch_size, config.gradient_accumulation_steps) == (512, 4, 4)
    assert (config.max_train_steps, config.learning_rate, config.lr_scheduler) == (3000, 1e-4, "constant")
    assert config.perceptual_loss and config.instance_prompt == DEFAULT_INSTANCE_PROMPT
    assert config.degradation.degradation_types == ("downsample", "noise", "blur")
    assert (config.degradation.noise_level, config.degradation.blur_radius) == (0.03, 1.2)
    assert config.degradation.lr_scale == 8  # the original guide's default when the flag is absent


def test_defaults_fill_in_for_nano_and_the_config_round_trips_through_json(tmp_path):
    config = parse_args([f"--hr_root={DATA}", f"--output_dir={tmp_path}", "--preset=old_photo", "--sigma_shift=0.8"])
    resolved = check_config(config)
    assert resolved.resolution == 64 and resolved.mixed_precision == "no" and resolved.sigma_shift == 0.8
    # nano's recipe fills what was left unset; a flag given (the shift above) wins
    assert (resolved.learning_rate, resolved.objective, resolved.crop_scale) == (3e-3, "posterior_mean", (0.25, 1.0))
    flux = check_config(parse_args([f"--hr_root={DATA}", f"--output_dir={tmp_path / 'flux'}",
                                    "--pretrained_model_name_or_path=black-forest-labs/FLUX.1-Kontext-dev"]))
    assert (flux.resolution, flux.learning_rate, flux.objective, flux.sigma_shift, flux.crop_scale) == (
        512, 1e-4, "flow_matching", "auto", (1.0, 1.0))
    assert resolved.degradation == DegradationConfig().__class__.from_dict(resolved.degradation.to_dict())
    path = resolved.save_json(tmp_path / "config.json")
    assert TrainConfig.load_json(path) == resolved
    with pytest.raises(ValueError, match="unknown training setting"):
        TrainConfig.from_dict({**resolved.to_dict(), "learning_rat": 1})


REFUSALS = [
    (dict(hr_root=None), "--hr_root is required"),
    (dict(hr_root="/no/such/photos"), "does not exist"),
    (dict(hr_root="EMPTY"), "nothing to train on"),
    (dict(resolution=72), "multiple of 16"),
    (dict(sigma_shift="sometimes"), "--sigma_shift"),
    (dict(objective="sharpest"), "--objective must be one of flow_matching, posterior_mean"),
    (dict(ema_decay=1.0), "--ema_decay must be in"),
    (dict(ema_decay=-0.1), "--ema_decay must be in"),
    (dict(pretrained_model_name_or_path="not/a/real/model/path"), "Unknown model"),
]
if not HAS_CUDA:
    REFUSALS += [
        (dict(mixed_precision="fp16"), "fp16 needs a CUDA GPU"),
        (dict(quantize="nf4"), "nf4 needs bitsandbytes on a CUDA GPU"),
        (dict(use_8bit_adam=True), "8bit_adam needs bitsandbytes on a CUDA GPU"),
    ]


@pytest.mark.parametrize("changes, message", REFUSALS, ids=[m for _, m in REFUSALS])
def test_impossible_settings_are_refused_before_any_model_loads(tmp_path, monkeypatch, changes, message):
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded although the settings should have been refused")

    monkeypatch.setattr(models, "load_pipeline", no_loading)
    if changes.get("hr_root") == "EMPTY":
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "notes.txt").write_text("no photos here")
        changes = {**changes, "hr_root": str(tmp_path / "empty")}
    with pytest.raises(ConfigError, match=re.escape(message)):
        train(quick_config(tmp_path / "out", **changes))


def test_the_command_prints_a_refusal_and_exits_with_1(tmp_path, capsys):
    assert train_module.main(["--hr_root", str(tmp_path / "missing"), "--output_dir", str(tmp_path)]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_another_runs_checkpoints_are_refused_unless_resuming(tmp_path):
    other = quick_config(tmp_path, learning_rate=5e-4)
    (tmp_path / "checkpoint-2").mkdir()
    state = {"global_step": 2, "config": check_config(other).to_dict()}
    (tmp_path / "checkpoint-2" / "training_state.json").write_text(json.dumps(state))
    with pytest.raises(ConfigError, match="learning_rate"):
        check_config(quick_config(tmp_path))
    check_config(quick_config(tmp_path, resume_from_checkpoint="latest"))  # resuming is allowed
    check_config(quick_config(tmp_path, learning_rate=5e-4, checkpointing_steps=7))  # bookkeeping may differ
    # a checkpoint from before a setting existed ran with what the trainer did then (whole-side crops)
    del state["config"]["crop_scale"]
    (tmp_path / "checkpoint-2" / "training_state.json").write_text(json.dumps(state))
    check_config(quick_config(tmp_path, learning_rate=5e-4, crop_scale=1.0))
    with pytest.raises(ConfigError, match="crop_scale"):
        check_config(quick_config(tmp_path, learning_rate=5e-4))  # nano's recipe crops 1/4 to 1 now
    # ... and without an average and with the flow-matching objective
    del state["config"]["ema_decay"], state["config"]["objective"]
    (tmp_path / "checkpoint-2" / "training_state.json").write_text(json.dumps(state))
    with pytest.raises(ConfigError, match="ema_decay: 0.0 -> 0.99.*objective: 'flow_matching' -> 'posterior_mean'"):
        check_config(quick_config(tmp_path, learning_rate=5e-4, crop_scale=1.0))
    check_config(quick_config(tmp_path, learning_rate=5e-4, crop_scale=1.0, ema_decay=0, objective="flow_matching"))
    # resuming that run keeps what it was started with where nothing is given, not today's recipe
    resumed = check_config(quick_config(tmp_path, resume_from_checkpoint="latest"))
    assert (resumed.learning_rate, resumed.objective, resumed.ema_decay, resumed.crop_scale) == (
        5e-4, "flow_matching", 0.0, (1.0, 1.0))
    # the same photo folder spelled as a relative path is the same run
    check_config(quick_config(tmp_path, learning_rate=5e-4, crop_scale=1.0, ema_decay=0, objective="flow_matching",
                              hr_root=os.path.relpath(other.hr_root)))
    with pytest.raises(ConfigError, match="not a complete checkpoint"):
        check_config(quick_config(tmp_path, resume_from_checkpoint="checkpoint-9"))


# --- one short run with validation, shared by several tests ------------------------------------


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """4 steps, checkpoints at 2 and 4, validation (2 held-out images, 3 denoising steps) at 0, 2, 4;
    encode_prompt calls are counted."""
    from diffusers import FluxKontextPipeline

    output_dir = tmp_path_factory.mktemp("short_run")
    encoded: list[str] = []
    original = FluxKontextPipeline.encode_prompt

    def counting_encode_prompt(self, prompt, *args, **kwargs):
        if prompt is not None:
            encoded.extend([prompt] if isinstance(prompt, str) else list(prompt))
        return original(self, prompt, *args, **kwargs)

    steps, validations = [], []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FluxKontextPipeline, "encode_prompt", counting_encode_prompt)
        result = train(
            quick_config(output_dir, validation_dir=None, validation_steps=2),
            on_step=steps.append, on_validation=validations.append, progress_bar=False,
        )
    return dict(result=result, output_dir=output_dir, encoded=encoded, steps=steps, validations=validations)


def test_a_run_writes_every_output(short_run):
    output_dir, result = short_run["output_dir"], short_run["result"]
    assert result["status"] == "completed" and result["global_step"] == 4
    for name in (LORA_WEIGHT_NAME, "training_config.json", "loss_curve.png", "metrics.json"):
        assert (output_dir / name).is_file(), name
    assert [p.name for p in list_checkpoints(output_dir)] == ["checkpoint-2", "checkpoint-4"]
    assert sorted(p.name for p in (output_dir / "validation").iterdir()) == [
        "step-000000.png", "step-000002.png", "step-000004.png"]
    assert [s["step"] for s in short_run["steps"]] == [1, 2, 3, 4] and result["steps"] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(s["loss"])) for s in short_run["steps"])
    assert [v["step"] for v in short_run["validations"]] == [0, 2, 4]


def test_the_exported_lora_is_the_weight_average(short_run):
    """nano's recipe averages the LoRA weights: the exported file is the last checkpoint's average,
    not its trained weights (which resuming continues from)."""
    output_dir = short_run["output_dir"]
    last = output_dir / "checkpoint-4"
    exported, average = lora_tensors(output_dir), load_file(str(last / EMA_WEIGHT_NAME))
    trained = load_file(str(last / LORA_WEIGHT_NAME))
    assert exported.keys() == average.keys() == trained.keys()
    assert all(torch.equal(exported[key], average[key]) for key in exported)
    assert any(not torch.equal(exported[key], trained[key]) for key in exported)


def test_the_saved_config_is_the_resolved_one_and_round_trips(short_run):
    saved = TrainConfig.load_json(short_run["output_dir"] / "training_config.json")
    assert saved == check_config(quick_config(short_run["output_dir"], validation_dir=None, validation_steps=2))
    assert saved.resolution == 64 and saved.sigma_shift == MODEL_RECIPES["nano"]["sigma_shift"]
    assert saved.objective == "posterior_mean" and saved.crop_scale == (0.25, 1.0)


def test_the_lora_loads_with_diffusers_load_lora_weights(short_run):
    pipe = models.load_pipeline("nano")
    pipe.load_lora_weights(str(short_run["output_dir"]))
    loaded = {name: p for name, p in pipe.transformer.named_parameters() if "lora_" in name}
    saved = lora_tensors(short_run["output_dir"])
    assert len(loaded) == len(saved) > 0
    some_key = next(k for k in saved if "lora_B" in k)
    module_name = some_key.removeprefix("transformer.").replace(".weight", "")
    loaded_b = next(p for n, p in loaded.items() if n.startswith(module_name))
    torch.testing.assert_close(loaded_b.detach().float(), saved[some_key])
    assert saved[some_key].abs().sum() > 0  # B moved away from zero: the LoRA trained


def test_metrics_json_has_lora_base_and_degraded_numbers_on_the_same_images(short_run):
    report = json.loads((short_run["output_dir"] / "metrics.json").read_text())
    assert report["step"] == 4 and report["num_images"] == 2 and len(report["images"]) == 2
    for entry in ("lora", "base", "degraded"):
        assert set(report[entry]) >= {"psnr", "ssim"}, entry
        assert len(report[entry]["psnr_per_image"]) == 2
        assert 0 < report[entry]["psnr"] < 100 and -1 <= report[entry]["ssim"] <= 1
    assert report["lora_gain_over_base_db"] == pytest.approx(report["lora"]["psnr"] - report["base"]["psnr"])
    assert [h["step"] for h in report["history"]] == [0, 2, 4]
    assert report["num_inference_steps"] == 3 and report["resolution"] == 64


def test_the_lora_file_records_its_objectives_restoration_steps_and_validation_defaults_to_them(short_run, tmp_path):
    from kontext_lora_helpers.lora import check_lora_fits

    pipe = models.load_pipeline("nano")
    recorded = check_lora_fits(pipe.transformer, short_run["output_dir"])["restoration_steps"]
    assert recorded == RESTORATION_STEPS["posterior_mean"] < RESTORATION_STEPS["flow_matching"] == 28
    resolved = {objective: check_config(quick_config(tmp_path / objective, objective=objective,
                                                     validation_inference_steps=None))
                for objective in RESTORATION_STEPS}
    assert {objective: config.validation_inference_steps for objective, config in resolved.items()} == RESTORATION_STEPS


def test_a_model_card_is_written_beside_the_lora_and_a_readme_of_the_users_is_left_alone(short_run, tmp_path):
    card = (short_run["output_dir"] / "README.md").read_text()
    report = json.loads((short_run["output_dir"] / "metrics.json").read_text())
    assert card.startswith("---\nbase_model: nano") and "kontext-lora-helpers" in card.split("---")[1]
    assert f'pipe.load_lora_weights("{short_run["output_dir"]}")' in card and 'load_pipeline("nano")' in card
    assert f"num_inference_steps={RESTORATION_STEPS['posterior_mean']}" in card
    assert "python -m kontext_lora_helpers.train" in card and "--lr_scale" in card
    assert f"{report['lora']['psnr']:.2f} ± " in card  # the validation table, with its spread
    snippet = card.split("```python\n")[1].split("```")[0].replace("old.jpg", str(DATA / "held_out" / "chelsea.jpg"))
    namespace: dict = {}
    exec(snippet, namespace)  # the card's own code runs as written
    assert namespace["restored"].size == (64, 64)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("my notes\n")
    train(quick_config(mine, max_train_steps=1, checkpointing_steps=0), progress_bar=False)
    assert (mine / "README.md").read_text() == "my notes\n"


def test_one_fixed_prompt_is_encoded_exactly_once(short_run):
    assert short_run["encoded"] == [DEFAULT_INSTANCE_PROMPT]


def test_held_out_photos_are_never_trained_on(tmp_path):
    from kontext_lora_helpers.course import held_out_dir

    config = check_config(quick_config(tmp_path))
    excluded = train_config._training_excludes(config)
    assert held_out_dir().resolve() in [p.resolve() for p in excluded]


def test_precision_memory_and_objective_options_run_on_the_cpu(tmp_path):
    """bf16 autocast over a bf16 base, an int8 (optimum-quanto) transformer, gradient checkpointing,
    the perceptual term (random VGG: no download), a warm-up + cosine schedule, other sigma
    densities and weightings, the posterior-mean objective, numeric prompts, and pruning to the
    newest checkpoint."""
    pytest.importorskip("optimum.quanto")
    config = quick_config(
        tmp_path, mixed_precision="bf16", quantize="int8", gradient_checkpointing=True,
        perceptual_loss=True, vgg_weights="random", perceptual_gate="threshold",
        lr_scheduler="cosine", lr_warmup_steps=1, sigma_sampling="mode", weighting_scheme="cosmap",
        objective="posterior_mean",
        sigma_shift="none", prompt_mode="numeric", max_train_steps=3, checkpointing_steps=1,
        checkpoints_total_limit=1,
    )
    with pytest.warns(UserWarning, match="random VGG features"):
        result = train(config, progress_bar=False)
    assert result["status"] == "completed" and all(map(math.isfinite, result["losses"]))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-3"]
    assert all(t.dtype == torch.float32 for t in lora_tensors(tmp_path).values())  # fp32 LoRA over bf16


def test_a_bf16_run_validates(tmp_path):
    """Under mixed precision the prepared transformer returns float32 latents to a bf16 VAE; the
    validation restorations must still decode (they crashed before any step on CPU and GPU alike)."""
    config = quick_config(tmp_path, mixed_precision="bf16", max_train_steps=1, validation_dir=str(DATA / "held_out"),
                          num_validation_images=1, validation_inference_steps=2)
    result = train(config, progress_bar=False)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert result["status"] == "completed" and math.isfinite(metrics["lora"]["psnr"]), metrics


# --- loading order: the prompts before the transformer ------------------------------------------


@pytest.fixture
def loading_events(monkeypatch):
    """What happens to the models, in order: "<model> created" when its weights exist (a model
    built on the meta device counts when `random_kontext` fills it in), "<model> freed" when it is
    garbage, "encoded" for each `encode_prompt` call; <model> is CLIP, T5, VAE or transformer."""
    import functools
    import weakref

    from diffusers import AutoencoderKL, FluxKontextPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    from kontext_lora_helpers import random_kontext

    names = {CLIPTextModel: "CLIP", T5EncoderModel: "T5", AutoencoderKL: "VAE", FluxTransformer2DModel: "transformer"}
    events: list[str] = []

    def created(module) -> None:
        name = names[type(module)]
        events.append(f"{name} created")
        weakref.finalize(module, events.append, f"{name} freed").atexit = False

    def recording_init(original):
        @functools.wraps(original)  # keeps the signature diffusers' config machinery reads
        def init(self, *args, **kwargs):
            original(self, *args, **kwargs)
            if type(self) in names and not any(parameter.is_meta for parameter in self.parameters()):
                created(self)
        return init

    for model_class in names:
        monkeypatch.setattr(model_class, "__init__", recording_init(model_class.__init__))
    original_materialise = random_kontext._materialise

    def recording_materialise(module, *args, **kwargs):
        original_materialise(module, *args, **kwargs)
        created(module)

    monkeypatch.setattr(random_kontext, "_materialise", recording_materialise)
    original_encode = FluxKontextPipeline.encode_prompt

    def recording_encode(self, *args, **kwargs):
        events.append("encoded")
        return original_encode(self, *args, **kwargs)

    monkeypatch.setattr(FluxKontextPipeline, "encode_prompt", recording_encode)
    return events


@pytest.mark.parametrize("model", ["nano", "random-kontext-shallow"])
def test_prompts_are_cached_and_the_text_encoders_freed_before_the_transformer_is_created(
        model, loading_events, tmp_path):
    """On a T4 the NF4 transformer (6.7 GB) and T5 (9.5 GB in fp16) do not fit together: with
    every prompt known up front, the encoders come, encode and go before the transformer exists."""
    config = check_config(quick_config(tmp_path, pretrained_model_name_or_path=model,
                                       mixed_precision="no" if model == "nano" else "bf16"))
    pipe, cache = train_module.load_pipeline_and_prompt_cache(config, torch.device("cpu"), ["Validate this."])
    assert loading_events == ["CLIP created", "T5 created", "encoded", "CLIP freed", "T5 freed",
                              "VAE created", "transformer created"]
    assert pipe.text_encoder is None and pipe.text_encoder_2 is None
    assert len(cache) == 2 and cache.max_sequence_length == models.max_sequence_length_for(pipe)
    assert train_module.loading_order(config).endswith("text encoders freed -> transformer + VAE")


def test_described_prompts_are_encoded_before_the_transformer_loads_and_new_ones_during_training(
        loading_events, tmp_path):
    """Phrasings that name the damage appear during training, so the encoders stay (on the CPU),
    but out of the transformer's way: they are done with the GPU before it loads."""
    config = check_config(quick_config(tmp_path, prompt_mode="described"))
    pipe, cache = train_module.load_pipeline_and_prompt_cache(config, torch.device("cpu"))
    assert loading_events == ["CLIP created", "T5 created", "encoded", "VAE created", "transformer created"]
    assert pipe.text_encoder is None and pipe.text_encoder_2 is None
    cache.batch(["Remove the noise from this photo."])  # a phrasing met during training
    assert loading_events[-1] == "encoded" and len(cache) == 2


@pytest.mark.parametrize("prompt_mode", ["plain", "described"])
def test_embeddings_cached_before_the_model_loads_equal_those_of_the_whole_pipeline(prompt_mode, tmp_path):
    config = check_config(quick_config(tmp_path, prompt_mode=prompt_mode))
    prompts = [config.instance_prompt, "Validate this.", "Remove the noise from this photo."]
    whole = train_module.load_training_pipeline(config, torch.device("cpu"))
    everything_at_once = train_module.cache_prompt_embeddings(whole, config, prompts[1:2])
    pipe, encoders_first = train_module.load_pipeline_and_prompt_cache(config, torch.device("cpu"), prompts[1:2])
    assert encoders_first.max_sequence_length == everything_at_once.max_sequence_length == 32
    known = prompts if prompt_mode == "described" else prompts[:2]  # described: the last one is new
    expected, actual = everything_at_once.batch(known), encoders_first.batch(known)
    for field in ("prompt_embeds", "pooled_prompt_embeds", "text_ids"):
        assert torch.equal(getattr(expected, field), getattr(actual, field)), field
    assert all(torch.equal(a, b) for a, b in zip(whole.transformer.state_dict().values(),
                                                 pipe.transformer.state_dict().values()))


def test_loading_the_text_encoders_first_trains_and_validates_exactly_as_loading_everything_at_once(
        tmp_path, monkeypatch):
    """The same LoRA and the same validation numbers, bit for bit, as the order used before: the
    whole pipeline at once, then the prompts (`load_training_pipeline` + `cache_prompt_embeddings`).
    Validation restores with the cached embeddings: the trained pipeline never has text encoders."""
    from kontext_lora_helpers.train import loop

    def run(output_dir):
        result = train(quick_config(output_dir, validation_dir=None, max_train_steps=2, checkpointing_steps=0),
                       progress_bar=False)
        assert result["status"] == "completed" and result["validation"]["step"] == 2
        return result

    def everything_at_once(config, device, extra_prompts=()):
        pipe = loop.load_training_pipeline(config, device)
        return pipe, loop.cache_prompt_embeddings(pipe, config, extra_prompts)

    validated_with: list[tuple] = []

    class RecordingValidator(loop.Validator):
        def __init__(self, pipe, *args, **kwargs):
            validated_with.append((pipe.text_encoder, pipe.text_encoder_2))
            super().__init__(pipe, *args, **kwargs)

    monkeypatch.setattr(loop, "Validator", RecordingValidator)
    encoders_first = run(tmp_path / "encoders_first")
    assert validated_with == [(None, None)]
    monkeypatch.setattr(loop, "load_pipeline_and_prompt_cache", everything_at_once)
    at_once = run(tmp_path / "at_once")
    assert encoders_first["losses"] == at_once["losses"]
    assert_same_lora(tmp_path / "encoders_first", tmp_path / "at_once", atol=0)
    for entry in ("lora", "base", "degraded"):
        assert encoders_first["validation"][entry] == at_once["validation"][entry], entry


# --- prompts that describe the damage ------------------------------------------------------------


def test_described_prompts_are_encoded_once_each_and_stay_with_their_samples(tmp_path, monkeypatch):
    from diffusers import FluxKontextPipeline

    encoded: list[str] = []
    original_encode = FluxKontextPipeline.encode_prompt

    def counting_encode_prompt(self, prompt, *args, **kwargs):
        if prompt is not None:
            encoded.extend([prompt] if isinstance(prompt, str) else list(prompt))
        return original_encode(self, prompt, *args, **kwargs)

    used: list[tuple[list[str], torch.Tensor]] = []
    original_batch = objective.PromptEmbeddingCache.batch

    def recording_batch(self, prompts, device=None, dtype=None):
        embeddings = original_batch(self, prompts, device=device, dtype=dtype)
        used.append((list(prompts), embeddings.prompt_embeds.detach().clone()))
        return embeddings

    monkeypatch.setattr(FluxKontextPipeline, "encode_prompt", counting_encode_prompt)
    monkeypatch.setattr(objective.PromptEmbeddingCache, "batch", recording_batch)
    varied = DegradationConfig(degradation_types="noise,blur,jpeg",
                               degradation_probabilities={"noise": 0.5, "blur": 0.5, "jpeg": 0.5})
    train(quick_config(tmp_path, prompt_mode="described", degradation=varied, train_batch_size=4,
                       max_train_steps=3, checkpointing_steps=0), progress_bar=False)

    prompts_used = {prompt for prompts, _ in used for prompt in prompts}
    assert len(prompts_used) > 1, "the degradations should have produced several prompts"
    assert len(encoded) == len(set(encoded)), "a prompt was encoded twice"
    assert prompts_used <= set(encoded)

    reference = models.load_pipeline("nano")
    expected = {}
    for prompt in prompts_used:
        expected[prompt] = reference.encode_prompt(prompt=[prompt], prompt_2=None, max_sequence_length=32)[0][0]
    for prompts, embeddings in used:
        for prompt, row in zip(prompts, embeddings):
            torch.testing.assert_close(row, expected[prompt], msg=f"wrong embedding for {prompt!r}")


# --- failures --------------------------------------------------------------------------------------


def test_a_nan_loss_stops_the_run_naming_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    original = objective.kontext_flow_matching_step
    calls = {"count": 0}

    def poisoned_step(*args, **kwargs):
        output = original(*args, **kwargs)
        calls["count"] += 1
        if calls["count"] == 3:
            output.loss = output.loss * float("nan")
        return output

    monkeypatch.setattr(objective, "kontext_flow_matching_step", poisoned_step)
    with pytest.raises(TrainingDiverged, match=r"at step 3 .*checkpoint-2"):
        train(quick_config(tmp_path, max_train_steps=5, objective="flow_matching"), progress_bar=False)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2"]
    assert not (tmp_path / LORA_WEIGHT_NAME).exists()


def test_a_crash_during_a_save_leaves_no_complete_looking_checkpoint(tmp_path, monkeypatch):
    from kontext_lora_helpers.train import checkpoints

    real_save = checkpoints.save_state

    def failing_save(obj, path, *args, **kwargs):
        if str(path).endswith("scheduler.safetensors"):
            raise OSError("disk full (simulated)")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoints, "save_state", failing_save)
    with pytest.raises(OSError, match="disk full"):
        train(quick_config(tmp_path, max_train_steps=2), progress_bar=False)
    monkeypatch.setattr(checkpoints, "save_state", real_save)

    folders = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint-"))
    assert folders == []  # the failed write removed its staging folder: no half checkpoint at all
    assert latest_checkpoint(tmp_path) is None
    # The next run starts afresh and saves properly.
    train(quick_config(tmp_path, max_train_steps=2, resume_from_checkpoint="latest"), progress_bar=False)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-2"]
    assert (tmp_path / "checkpoint-2" / "training_state.json").is_file()


@pytest.fixture
def interactive_ctrl_c():
    """Python's own Ctrl-C handler, as in a terminal or a notebook: a test run started in the
    background (`cmd &`, nohup) inherits SIGINT ignored, and training leaves that alone."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_saves_a_checkpoint_and_resuming_finishes_the_run(tmp_path, interactive_ctrl_c):
    def press_ctrl_c_at_step_3(event):
        if event["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)

    result = train(quick_config(tmp_path, max_train_steps=6), on_step=press_ctrl_c_at_step_3, progress_bar=False)
    assert result["status"] == "interrupted" and result["global_step"] == 3
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-3"]
    assert not (tmp_path / LORA_WEIGHT_NAME).exists()
    finished = train(quick_config(tmp_path, max_train_steps=6, resume_from_checkpoint="latest"), progress_bar=False)
    assert finished["status"] == "completed" and finished["steps"] == [1, 2, 3, 4, 5, 6]


# --- equal results from differently split work ---------------------------------------------------


@pytest.fixture(scope="module")
def batch_of_two_run(tmp_path_factory):
    """The reference: one process, batch 2, no accumulation, 3 steps."""
    output_dir = tmp_path_factory.mktemp("batch_of_two")
    train(quick_config(output_dir, max_train_steps=3, checkpointing_steps=0), progress_bar=False)
    return output_dir


def test_gradient_accumulation_gives_the_same_lora_as_a_larger_batch(batch_of_two_run, tmp_path):
    train(quick_config(tmp_path, train_batch_size=1, gradient_accumulation_steps=2, max_train_steps=3,
                       checkpointing_steps=0), progress_bar=False)
    assert_same_lora(batch_of_two_run, tmp_path, atol=SPLIT_WORK_TOLERANCE)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_with_batch_1_match_one_process_with_batch_2(batch_of_two_run, tmp_path):
    """DDP over gloo on the CPU. accelerate 1.x starts several CPU processes through its multi-GPU
    launcher with ACCELERATE_USE_CPU set (its `--cpu` flag alone runs one process)."""
    config = quick_config(tmp_path, train_batch_size=1, max_train_steps=3, checkpointing_steps=0)
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()), "-m", "kontext_lora_helpers.train", *cli_flags(config),
    ]
    env = {**subprocess_env(), "ACCELERATE_USE_CPU": "true"}
    finished = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert "LoRA saved" in finished.stdout
    assert_same_lora(batch_of_two_run, tmp_path, atol=SPLIT_WORK_TOLERANCE)


def test_sharding_launchers_are_refused_with_the_ddp_command():
    from accelerate.utils import DistributedType

    from kontext_lora_helpers.train import ConfigError, check_distributed_type

    for allowed in (DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU):
        check_distributed_type(allowed)
    for refused in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        with pytest.raises(ConfigError, match="--multi_gpu --num_processes N"):
            check_distributed_type(refused)


def test_a_trained_lora_restores_the_same_pixels_in_plain_diffusers_and_the_restore_command(short_run, tmp_path):
    """Issue 6's promise end to end: the training command's output folder, loaded by plain diffusers
    from an exported nano folder, gives the restore command's pixels for the same seed."""
    import numpy as np
    from diffusers import FluxKontextPipeline
    from PIL import Image

    from kontext_lora_helpers import restore
    from kontext_lora_helpers.nano import build_nano_pipeline

    source = tmp_path / "in" / "china.png"
    source.parent.mkdir()
    Image.open(DATA / "held_out" / "china.jpg").convert("RGB").resize((64, 64)).save(source)
    assert restore.main(["--lora_weights", str(short_run["output_dir"]), "--input", str(source),
                         "--output", str(tmp_path / "out"), "--num_inference_steps", "3", "--seed", "7"]) == 0
    build_nano_pipeline().save_pretrained(tmp_path / "nano", safe_serialization=True)
    plain = FluxKontextPipeline.from_pretrained(tmp_path / "nano")
    plain.set_progress_bar_config(disable=True)
    plain.load_lora_weights(short_run["output_dir"])
    expected = plain(image=Image.open(source), prompt=DEFAULT_INSTANCE_PROMPT, guidance_scale=3.5,
                     num_inference_steps=3, generator=torch.Generator().manual_seed(7),
                     **models.call_kwargs(plain, 64, 64)).images[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "china.png")), np.asarray(expected))


# --- no pickles: checkpoints hold tensors and JSON --------------------------------------------------


def test_checkpoints_hold_no_pickles_and_resume_a_run_written_by_the_pickle_version_the_same(tmp_path, capsys):
    """A checkpoint's states are safetensors files (`statefiles`); a checkpoint of the earlier
    layout (``torch.save`` pickles) still resumes, read with weights_only=True, to the same LoRA."""
    from kontext_lora_helpers.statefiles import load_state

    first = tmp_path / "safetensors"
    train(quick_config(first, max_train_steps=2), progress_bar=False)
    checkpoint = first / "checkpoint-2"
    names = ("optimizer", "scheduler", "random_states")
    assert all((checkpoint / f"{name}.safetensors").is_file() for name in names)
    assert not list(checkpoint.glob("*.pt")) and not list(checkpoint.glob("*.bin"))

    legacy = tmp_path / "legacy"
    shutil.copytree(first, legacy)
    for name in names:  # rewrite the checkpoint as the earlier version wrote it
        torch.save(load_state(legacy / "checkpoint-2" / f"{name}.safetensors"), legacy / "checkpoint-2" / f"{name}.pt")
        (legacy / "checkpoint-2" / f"{name}.safetensors").unlink()
    (legacy / "checkpoint-2" / "manifest.json").unlink()  # that version wrote no manifest
    capsys.readouterr()
    for folder in (first, legacy):
        train(quick_config(folder, max_train_steps=4, resume_from_checkpoint="latest"), progress_bar=False)
        assert "Resumed from checkpoint-2: step 2" in capsys.readouterr().out, folder  # not a fresh start
    assert_same_lora(first, legacy, atol=0)


def test_resume_refuses_a_planted_pickle_that_would_run_code(tmp_path):
    from kontext_lora_helpers.statefiles import StateFileError

    train(quick_config(tmp_path, max_train_steps=2), progress_bar=False)
    checkpoint = tmp_path / "checkpoint-2"
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (checkpoint / "random_states.safetensors").unlink()
    torch.save({"python": Payload()}, checkpoint / "random_states.pt")
    # as an attacker would, the manifest is made to list the planted file, so the checkpoint verifies
    from kontext_lora_helpers.train import checkpoints

    manifest = json.loads((checkpoint / checkpoints.MANIFEST_FILE).read_text())
    del manifest["files"]["random_states.safetensors"]
    planted = checkpoint / "random_states.pt"
    manifest["files"]["random_states.pt"] = {"bytes": planted.stat().st_size, "sha256": checkpoints._sha256(planted)}
    (checkpoint / checkpoints.MANIFEST_FILE).write_text(json.dumps(manifest))
    assert checkpoints.verify_checkpoint(checkpoint) is None
    with pytest.raises(StateFileError, match="refusing to load .*random_states.pt"):
        train(quick_config(tmp_path, max_train_steps=4, resume_from_checkpoint="latest"), progress_bar=False)
    assert not marker.exists()


@pytest.mark.parametrize("model", ["nano", "random-kontext-shallow"])
def test_compile_trains_the_same_lora_as_the_uncompiled_run(model, tmp_path):
    """``--compile`` (here with the aot_eager backend, which traces forward and backward through
    torch.compile without generating code, so the test takes seconds) trains the same LoRA."""
    sizes = dict(max_train_steps=2, checkpointing_steps=0, train_batch_size=1, rank=2)
    if model != "nano":  # width 3072: one step is enough to compare
        sizes.update(pretrained_model_name_or_path=model, gradient_checkpointing=False, max_train_steps=1)
    plain = train(quick_config(tmp_path / "plain", **sizes), progress_bar=False)
    compiled = train(quick_config(tmp_path / "compiled", compile=True, compile_backend="aot_eager", **sizes),
                     progress_bar=False)
    assert plain["status"] == compiled["status"] == "completed"
    torch.testing.assert_close(torch.tensor(compiled["losses"]), torch.tensor(plain["losses"]), rtol=1e-5, atol=0)
    assert_same_lora(tmp_path / "plain", tmp_path / "compiled", atol=1e-6)
    with pytest.raises(SystemExit):
        parse_args(["--hr_root", str(DATA), "--compile", "--compile_backend", "nvfuser"])
