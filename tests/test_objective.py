"""The training objective builds exactly what FluxKontextPipeline builds at inference.

The proof of equivalence runs the nano pipeline (random weights are enough: the claim is about the
inputs, not the outputs) with a known starting noise, captures the keyword arguments of its first
transformer call with a forward pre-hook, and rebuilds them with `objective`. The other tests pin
the pieces of the loss: targets, inversion, weighting, sigma sampling and input validation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from kontext_lora_helpers import latents as latent_ops
from kontext_lora_helpers import objective
from kontext_lora_helpers.models import call_kwargs
from kontext_lora_helpers.nano import build_nano_pipeline
from kontext_lora_helpers.nano.model import VAE_CONFIG

PROMPT = "Restore this degraded photograph to high fidelity"
SIDE = 64
LATENT_SIDE = SIDE // 2 ** (len(VAE_CONFIG["block_out_channels"]) - 1)  # nano's VAE halves the sides
TARGET_TOKENS = (LATENT_SIDE // 2) ** 2  # 2x2 latent patches per token
GUIDANCE = 3.5




@pytest.fixture(scope="module")
def pipe():
    pipe = build_nano_pipeline(allow_missing=True)  # random weights suffice to compare inputs
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def control_image(data_samples) -> Image.Image:
    return Image.open(data_samples / "held_out" / "coffee.jpg").convert("RGB").resize((SIDE, SIDE), Image.BICUBIC)


def _tensor_kwargs(kwargs: dict) -> dict:
    return {k: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}


def run_pipeline_capturing(pipe, image, noise_tokens, num_inference_steps=2, sigmas=None):
    """Run the pipeline from `noise_tokens`; return (transformer kwargs per call, scheduler.step inputs)."""
    transformer_calls, scheduler_steps = [], []

    def capture(module, args, kwargs):
        transformer_calls.append(_tensor_kwargs(kwargs))

    original_step = pipe.scheduler.step

    def recording_step(model_output, timestep, sample, *args, **kwargs):
        scheduler_steps.append(dict(model_output=model_output.clone(), timestep=timestep, sample=sample.clone()))
        return original_step(model_output, timestep, sample, *args, **kwargs)

    handle = pipe.transformer.register_forward_pre_hook(capture, with_kwargs=True)
    pipe.scheduler.step = recording_step
    try:
        with torch.no_grad():
            pipe(
                image=image,
                prompt=PROMPT,
                latents=noise_tokens,
                num_inference_steps=num_inference_steps,
                sigmas=sigmas,
                guidance_scale=GUIDANCE,
                output_type="latent",
                generator=torch.Generator().manual_seed(0),
                **call_kwargs(pipe, SIDE, SIDE),
            )
    finally:
        handle.remove()
        del pipe.scheduler.step  # back to the class's method
    return transformer_calls, scheduler_steps


def our_inputs(pipe, image, noisy_latents, sigma):
    """Build the transformer kwargs with the training code from the same ingredients."""
    pixels = pipe.image_processor.preprocess(pipe.image_processor.resize(image, SIDE, SIDE), SIDE, SIDE)
    control_latents = latent_ops.encode(pipe.vae, pixels)
    with torch.no_grad():
        embeds, pooled, text_ids = pipe.encode_prompt(prompt=PROMPT, prompt_2=None, max_sequence_length=32)
    text = objective.PromptEmbeddings(embeds, pooled, text_ids)
    sigmas = torch.tensor([sigma], dtype=torch.float32)
    return objective.build_transformer_inputs(noisy_latents, control_latents, text, sigmas, GUIDANCE), control_latents


def assert_same_inputs(ours: dict, theirs: dict):
    for key in ("hidden_states", "img_ids", "txt_ids", "guidance", "encoder_hidden_states", "pooled_projections"):
        assert ours[key].shape == theirs[key].shape, key
        assert ours[key].dtype == theirs[key].dtype, key
        assert torch.equal(ours[key], theirs[key]), key
    # The pipeline passes t / 1000 with t = sigma * 1000 in float32: equal up to one rounding.
    torch.testing.assert_close(ours["timestep"], theirs["timestep"], rtol=0, atol=1e-6)
    assert ours["return_dict"] is theirs["return_dict"] is False


def test_training_inputs_equal_pipeline_inputs_at_first_step(pipe, control_image):
    noise = torch.randn(1, 16, LATENT_SIDE, LATENT_SIDE, generator=torch.Generator().manual_seed(1))
    calls, steps = run_pipeline_capturing(pipe, control_image, latent_ops.pack(noise), num_inference_steps=2)
    assert len(calls) == 2 and len(steps) == 2

    # The pipeline's schedule is linspace(1, 1/N, N) shifted with mu from the target token count.
    num_target_tokens = TARGET_TOKENS
    mu = objective.calculate_shift(num_target_tokens, pipe.scheduler.config)
    expected = objective.shift_sigmas(torch.tensor(np.linspace(1.0, 1 / 2, 2), dtype=torch.float32), mu)
    torch.testing.assert_close(pipe.scheduler.sigmas[:-1], expected, rtol=0, atol=1e-6)
    first_sigma = float(pipe.scheduler.sigmas[0])
    assert first_sigma == 1.0  # shift_sigmas(1, mu) = 1 for every mu: inference starts at pure noise

    # At sigma = 1 the noisy target is the noise, whatever the clean latent.
    noisy = objective.noisy_latents(torch.randn_like(noise), noise, torch.tensor([first_sigma]))
    ours, _ = our_inputs(pipe, control_image, noisy, first_sigma)
    assert_same_inputs(ours, calls[0])
    torch.testing.assert_close(calls[0]["timestep"], torch.tensor([first_sigma]), rtol=0, atol=1e-6)
    torch.testing.assert_close(calls[1]["timestep"], expected[1:], rtol=0, atol=1e-6)


def test_training_inputs_equal_pipeline_inputs_at_a_shifted_sigma(pipe, control_image):
    """With a custom schedule the first sigma is < 1: our shift and our noisy path must agree."""
    raw_sigma = 0.6
    mu = objective.calculate_shift(TARGET_TOKENS, pipe.scheduler.config)
    sigma = float(objective.shift_sigmas(torch.tensor([raw_sigma]), mu))
    assert raw_sigma < sigma < 1  # mu > 0 moves sigma toward noise

    generator = torch.Generator().manual_seed(2)
    clean = torch.randn(1, 16, LATENT_SIDE, LATENT_SIDE, generator=generator)
    noise = torch.randn(1, 16, LATENT_SIDE, LATENT_SIDE, generator=generator)
    noisy = objective.noisy_latents(clean, noise, torch.tensor([sigma]))
    calls, _ = run_pipeline_capturing(pipe, control_image, latent_ops.pack(noisy), sigmas=[raw_sigma, 0.2])

    torch.testing.assert_close(pipe.scheduler.sigmas[0], torch.tensor(sigma), rtol=0, atol=1e-6)
    ours, control_latents = our_inputs(pipe, control_image, noisy, sigma)
    assert_same_inputs(ours, calls[0])
    # The sequence is [target tokens, control tokens]; control ids carry frame 1, target ids frame 0.
    num_target_tokens = noisy.shape[-2] // 2 * noisy.shape[-1] // 2
    assert torch.equal(calls[0]["hidden_states"][:, num_target_tokens:], latent_ops.pack(control_latents))
    assert (calls[0]["img_ids"][:num_target_tokens, 0] == 0).all()
    assert (calls[0]["img_ids"][num_target_tokens:, 0] == 1).all()
    # encode_pair encodes the control exactly as the pipeline's _encode_vae_image does.
    pixels = pipe.image_processor.preprocess(pipe.image_processor.resize(control_image, SIDE, SIDE), SIDE, SIDE)
    assert torch.equal(objective.encode_pair(pipe.vae, pixels, pixels)[1], pipe._encode_vae_image(pixels, None))


def test_sliced_prediction_is_what_the_scheduler_consumes(pipe, control_image):
    noise = torch.randn(1, 16, LATENT_SIDE, LATENT_SIDE, generator=torch.Generator().manual_seed(3))
    calls, steps = run_pipeline_capturing(pipe, control_image, latent_ops.pack(noise), num_inference_steps=2)
    sigma = float(pipe.scheduler.sigmas[0])
    ours, _ = our_inputs(pipe, control_image, noise, sigma)
    num_target_tokens = TARGET_TOKENS
    with torch.no_grad():
        velocity = objective.predict_velocity(pipe.transformer, ours, num_target_tokens)
    assert velocity.shape == (1, num_target_tokens, 64)
    assert torch.equal(velocity, steps[0]["model_output"])
    assert torch.equal(steps[0]["sample"], latent_ops.pack(noise))
    # The Euler step moves along our velocity: x_next = x + (sigma_next - sigma) * v (v = noise - x0).
    next_sigma = float(pipe.scheduler.sigmas[1])
    expected_next = latent_ops.pack(noise) + (next_sigma - sigma) * velocity
    torch.testing.assert_close(calls[1]["hidden_states"][:, :num_target_tokens], expected_next)


# --- the loss and its pieces ---------------------------------------------------------------------------


class VelocityOracle(torch.nn.Module):
    """A stand-in transformer that returns the true velocity on target tokens and junk on control tokens."""

    def __init__(self, target_tokens: torch.Tensor):
        super().__init__()
        self.target_tokens = target_tokens

    def forward(self, hidden_states, **kwargs):
        junk = torch.full_like(hidden_states[:, self.target_tokens.shape[1]:], 1e3)
        return (torch.cat([self.target_tokens, junk], dim=1),)


class AimsAt(torch.nn.Module):
    """A stand-in transformer whose every prediction aims at the clean latents `aim`:
    v = (x_t - aim) / sigma on the target tokens, so x0_hat = aim at every noise level."""

    def __init__(self, aim_tokens: torch.Tensor):
        super().__init__()
        self.aim_tokens = aim_tokens
        self.calls = []

    def forward(self, hidden_states, timestep, **kwargs):
        self.calls.append((hidden_states.detach().clone(), timestep.detach().clone()))
        n = self.aim_tokens.shape[1]
        sigma = timestep.view(-1, 1, 1).to(hidden_states.dtype)
        velocity = (hidden_states[:, :n] - self.aim_tokens) / sigma
        return (torch.cat([velocity, torch.full_like(hidden_states[:, n:], 1e3)], dim=1),)


class MustNotRun(torch.nn.Module):
    def forward(self, *args, **kwargs):
        raise AssertionError("the model ran although the inputs were invalid")

    def encode(self, *args, **kwargs):
        raise AssertionError("the VAE ran although the inputs were invalid")


def _batch(batch=2, side=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    make = lambda: torch.randn(batch, 16, side, side, generator=generator)  # noqa: E731
    return make(), make(), make()


def _text(batch=2):
    return objective.PromptEmbeddings(torch.zeros(batch, 4, 8), torch.zeros(batch, 8), torch.zeros(4, 3))


def test_loss_is_zero_when_prediction_equals_target_and_control_tokens_carry_no_loss():
    target, control, noise = _batch()
    oracle = VelocityOracle(latent_ops.pack(objective.velocity_target(noise, target)))
    step = objective.kontext_flow_matching_step(oracle, target, control, _text(), torch.tensor([0.3, 0.9]), noise)
    assert step.loss.item() == 0.0
    assert torch.equal(step.per_sample_loss, torch.zeros(2))
    assert objective.flow_matching_loss(noise, noise, torch.ones(2)).abs().max().item() == 0.0
    # A wrong prediction gives the mean squared error per sample.
    wrong = objective.flow_matching_loss(noise + 2, noise, torch.ones(2))
    torch.testing.assert_close(wrong, torch.full((2,), 4.0))


def test_x0_from_velocity_inverts_the_noisy_path():
    target, _, noise = _batch()
    sigmas = torch.tensor([0.05, 0.95])
    noisy = objective.noisy_latents(target, noise, sigmas)
    recovered = objective.x0_from_velocity(noisy, sigmas, objective.velocity_target(noise, target))
    torch.testing.assert_close(recovered, target, rtol=0, atol=1e-5)
    # The oracle step's x0 estimate is the clean latent too (through packing and unpacking).
    oracle = VelocityOracle(latent_ops.pack(objective.velocity_target(noise, target)))
    step = objective.kontext_flow_matching_step(oracle, target, target, _text(), sigmas, noise)
    torch.testing.assert_close(step.x0_hat_latents(), target, rtol=0, atol=1e-5)


def test_loss_weighting_values():
    sigmas = torch.tensor([0.0, 0.25, 0.5, 1.0])
    assert torch.equal(objective.loss_weighting(sigmas, "none"), torch.ones(4))
    torch.testing.assert_close(objective.loss_weighting(sigmas[1:], "sigma_sqrt"), torch.tensor([16.0, 4.0, 1.0]))
    cosmap = objective.loss_weighting(sigmas, "cosmap")
    torch.testing.assert_close(cosmap, 2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas**2)))
    torch.testing.assert_close(cosmap[[0, 2]], torch.tensor([2 / math.pi, 4 / math.pi]))
    assert cosmap.argmax() == 2  # cosmap favours the middle of the path


def test_sample_sigmas_statistics():
    generator = torch.Generator().manual_seed(0)
    logit_normal = objective.sample_sigmas(20000, "logit_normal", generator=generator)
    assert logit_normal.dtype == torch.float32 and 0 < logit_normal.min() and logit_normal.max() < 1
    assert abs(logit_normal.median().item() - 0.5) < 0.02
    uniform = objective.sample_sigmas(20000, "uniform", generator=generator)
    assert abs(uniform.mean().item() - 0.5) < 0.01
    mode = objective.sample_sigmas(20000, "mode", generator=generator)
    assert 0 < mode.min() and mode.max() < 1

    # The shift is monotone, so it moves the median exactly as calculate_shift predicts:
    # median -> e^mu / (e^mu + 1), 0.76 for FLUX at 1024 px (4096 tokens), 0.62 for nano's 256.
    for tokens in (256, 1024, 4096):
        mu = objective.calculate_shift(tokens)
        shifted = objective.sample_sigmas(20000, "logit_normal", shift=mu, generator=torch.Generator().manual_seed(0))
        expected_median = math.exp(mu) / (math.exp(mu) + 1)
        assert abs(shifted.median().item() - expected_median) < 0.02
        assert shifted.median() > logit_normal.median()
    assert abs(objective.calculate_shift(4096) - 1.15) < 1e-9 and abs(objective.calculate_shift(256) - 0.5) < 1e-9


@pytest.mark.parametrize(
    "case",
    ["batch_mismatch", "odd_sides", "nan_target", "inf_noise", "noise_shape", "sigma_range", "weighting_name"],
)
def test_step_rejects_bad_inputs_before_any_model_call(case):
    target, control, noise = _batch()
    sigmas, weighting = torch.tensor([0.2, 0.7]), "none"
    if case == "batch_mismatch":
        control = control[:1]
    elif case == "odd_sides":
        target, control, noise = _batch(side=7)
    elif case == "nan_target":
        target[0, 0, 0, 0] = float("nan")
    elif case == "inf_noise":
        noise[1, 0, 0, 0] = float("inf")
    elif case == "noise_shape":
        noise = noise[:, :, :4]
    elif case == "sigma_range":
        sigmas = torch.tensor([0.2, 1.5])
    elif case == "weighting_name":
        weighting = "snr"
    with pytest.raises(ValueError):
        objective.kontext_flow_matching_step(
            MustNotRun(), target, control, _text(), sigmas, noise, weighting_scheme=weighting
        )


def test_encode_pair_rejects_bad_images_before_the_vae_runs():
    vae = MustNotRun()
    vae.config = type("Config", (), {"block_out_channels": (16, 32, 64)})()  # a 4x VAE: pixel multiple 8
    good = torch.zeros(2, 3, 64, 64)
    with pytest.raises(ValueError, match="differ in size"):
        objective.encode_pair(vae, good, good[:1])
    with pytest.raises(ValueError, match="multiples of 8"):
        objective.encode_pair(vae, torch.zeros(2, 3, 60, 64), good)
    bad = good.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        objective.encode_pair(vae, good, bad)


def test_unknown_sampling_and_weighting_names():
    with pytest.raises(ValueError, match="sigma sampling scheme"):
        objective.sample_sigmas(4, "cosine")
    with pytest.raises(ValueError, match="loss weighting scheme"):
        objective.loss_weighting(torch.tensor([0.5]), "min_snr")


# --- the posterior-mean objective ----------------------------------------------------------------------


def test_posterior_mean_trains_the_points_the_pipelines_sampler_visits(pipe, control_image):
    """While every prediction aims at one clean latent, FluxKontextPipeline's sampler moves on the
    straight line from the noise to it: the points `kontext_posterior_mean_step` trains on."""
    noise = torch.randn(1, 16, LATENT_SIDE, LATENT_SIDE, generator=torch.Generator().manual_seed(5))
    aim = torch.randn(1, 16, LATENT_SIDE, LATENT_SIDE, generator=torch.Generator().manual_seed(6))
    num_target_tokens = TARGET_TOKENS
    recorder = AimsAt(latent_ops.pack(aim))

    def aim_instead(module, args, kwargs, output):  # replace the nano transformer's prediction
        return recorder(kwargs["hidden_states"], kwargs["timestep"])

    handle = pipe.transformer.register_forward_hook(aim_instead, with_kwargs=True)
    try:
        with torch.no_grad():
            final = pipe(image=control_image, prompt=PROMPT, latents=latent_ops.pack(noise), num_inference_steps=6,
                         guidance_scale=GUIDANCE, output_type="latent", **call_kwargs(pipe, SIDE, SIDE)).images
    finally:
        handle.remove()
    assert len(recorder.calls) == 6
    for hidden_states, sigma in recorder.calls:
        on_the_line = objective.noisy_latents(aim, noise, sigma.float())
        torch.testing.assert_close(hidden_states[:, :num_target_tokens], latent_ops.pack(on_the_line),
                                   rtol=0, atol=1e-5)
    torch.testing.assert_close(final, latent_ops.pack(aim), rtol=0, atol=1e-5)  # the sampler ends at the aim
    assert float(recorder.calls[0][1]) == 1.0  # the first step is at sigma 1, where the anchor is taken


def test_posterior_mean_step_builds_x_t_from_the_models_own_sigma_one_estimate():
    target, control, noise = _batch()
    aim = torch.randn(target.shape, generator=torch.Generator().manual_seed(9))
    model = AimsAt(latent_ops.pack(aim))
    sigmas = torch.tensor([0.2, 0.7])
    anchor = objective.sigma_one_estimate(model, control, _text(), noise)
    torch.testing.assert_close(anchor, aim, rtol=0, atol=1e-5)
    assert not anchor.requires_grad
    model.calls.clear()
    step = objective.kontext_posterior_mean_step(model, target, control, _text(), sigmas, noise)
    (first_input, first_sigma), (second_input, second_sigma) = model.calls
    assert torch.equal(first_sigma, torch.ones(2))  # the anchor: the estimate at sigma 1 from the same noise
    torch.testing.assert_close(first_input[:, :16], latent_ops.pack(noise))
    torch.testing.assert_close(second_sigma, sigmas)
    torch.testing.assert_close(second_input[:, :16], latent_ops.pack(objective.noisy_latents(aim, noise, sigmas)),
                               rtol=0, atol=1e-5)
    # x0_hat is the aim at every sigma, so the loss is its squared error against the clean latents...
    expected = ((aim - target) ** 2).reshape(2, -1).mean(1)
    torch.testing.assert_close(step.per_sample_loss, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(step.x0_hat_latents(), aim, rtol=0, atol=1e-5)
    # ...and zero when the model aims at the clean latents.
    exact = objective.kontext_posterior_mean_step(AimsAt(latent_ops.pack(target)), target, control, _text(), sigmas, noise)
    assert exact.loss.item() < 1e-9


def test_posterior_mean_gradient_comes_from_the_second_forward_only():
    """The anchor is a target point: no gradient flows through it, so the step's gradient equals
    the gradient of the same loss with the anchor given as a constant."""
    torch.manual_seed(0)
    target, control, noise = _batch()
    sigmas = torch.tensor([0.4, 0.8])

    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.eye(64) * 0.5 + 0.01 * torch.randn(64, 64))

        def forward(self, hidden_states, **kwargs):
            return (hidden_states @ self.weight,)

    model = Linear()
    step = objective.kontext_posterior_mean_step(model, target, control, _text(), sigmas, noise)
    step.loss.backward()
    through_step = model.weight.grad.clone()
    model.weight.grad = None
    anchor = objective.sigma_one_estimate(model, control, _text(), noise)
    noisy = objective.noisy_latents(anchor, noise, sigmas)
    inputs = objective.build_transformer_inputs(noisy, control, _text(), sigmas)
    velocity = objective.predict_velocity(model, inputs, 16)
    x0_hat = objective.x0_from_velocity(latent_ops.pack(noisy), sigmas, velocity)
    ((x0_hat - latent_ops.pack(target)) ** 2).reshape(2, -1).mean(1).mean().backward()
    torch.testing.assert_close(through_step, model.weight.grad)
    assert through_step.abs().sum() > 0


def test_every_objective_has_a_step_and_unknown_names_are_refused():
    assert objective.objective_step("flow_matching") is objective.kontext_flow_matching_step
    assert objective.objective_step("posterior_mean") is objective.kontext_posterior_mean_step
    with pytest.raises(ValueError, match="objective"):
        objective.objective_step("sharpest")


@pytest.mark.parametrize("steps", [1, 4, 28])
def test_pipeline_sigmas_are_the_schedule_the_pipeline_steps_through(pipe, control_image, steps):
    """The hand-written schedule equals what the pipeline's scheduler holds after a call: the
    pipeline's linspace(1, 1/n, n), shifted with mu for 256 tokens, then 0 (not set_timesteps(n, mu))."""
    with torch.no_grad():
        pipe(image=control_image, prompt=PROMPT, num_inference_steps=steps, guidance_scale=GUIDANCE,
             output_type="latent", generator=torch.Generator().manual_seed(0), **call_kwargs(pipe, SIDE, SIDE))
    ours = objective.pipeline_sigmas(steps, TARGET_TOKENS, pipe.scheduler.config)
    assert ours.dtype == torch.float32 and len(ours) == steps + 1
    assert torch.equal(ours, pipe.scheduler.sigmas)
    if steps == 28:  # the tail notebook 03 quotes
        assert [round(v, 3) for v in ours[-4:].tolist()] == [0.165, 0.113, 0.058, 0.0]
        pipe.scheduler.set_timesteps(28, mu=objective.calculate_shift(TARGET_TOKENS))
        assert not torch.allclose(pipe.scheduler.sigmas, ours)  # the schedule set_timesteps alone gives differs


def test_euler_sample_is_the_pipelines_sampler(pipe, control_image):
    """Noise, control latents and prompt in; the pipeline's final latents out, to float precision."""
    steps, seed = 6, 3
    with torch.no_grad():
        theirs = pipe(image=control_image, prompt=PROMPT, num_inference_steps=steps, guidance_scale=GUIDANCE,
                      output_type="latent", generator=torch.Generator().manual_seed(seed),
                      **call_kwargs(pipe, SIDE, SIDE)).images
    noise = torch.randn(1, 16, LATENT_SIDE, LATENT_SIDE, generator=torch.Generator().manual_seed(seed))
    pixels = pipe.image_processor.preprocess(control_image, SIDE, SIDE)
    control_latents = latent_ops.encode(pipe.vae, pixels)
    with torch.no_grad():
        embeds, pooled, text_ids = pipe.encode_prompt(prompt=PROMPT, prompt_2=None, max_sequence_length=32)
    text = objective.PromptEmbeddings(embeds, pooled, text_ids)
    sigmas = objective.pipeline_sigmas(steps, TARGET_TOKENS, pipe.scheduler.config)
    ours = objective.euler_sample(pipe.transformer, control_latents, text, noise, sigmas, GUIDANCE)
    assert ours.shape == noise.shape
    torch.testing.assert_close(latent_ops.pack(ours), theirs, rtol=0, atol=1e-5)
    assert (ours - noise).abs().mean() > 0.1  # it moved: the comparison is not of two copies of the noise


def test_pipeline_sigmas_refuses_schedules_it_does_not_reproduce():
    with pytest.raises(ValueError, match="exponential shift only"):
        objective.pipeline_sigmas(28, 256, {"use_karras_sigmas": True})
    with pytest.raises(ValueError, match="at least 1"):
        objective.pipeline_sigmas(0, 256)
