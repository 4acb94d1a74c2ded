"""Training the nano weights: degraded crops for the VAE, short resumable runs of both stages, and the
`nano train` command's checks of its options (each refused before anything is loaded or written)."""

import json

import numpy as np
import pytest
import torch

from kontext_lora_helpers.statefiles import load_state

from kontext_lora_helpers.metrics import psnr
from kontext_lora_helpers.nano.__main__ import main as nano_main
from kontext_lora_helpers.nano.model import build_nano_components
from kontext_lora_helpers.nano.pool import CropPool, default_image_paths
from kontext_lora_helpers.nano.train import degrade_some, train_editor, train_vae


@pytest.fixture(scope="module")
def crops():
    return CropPool(default_image_paths(use_skimage=False), size=32, seed=0).batch(16)


def test_degrade_some_replaces_the_requested_share(crops):
    before = crops.clone()
    assert degrade_some(crops, 0.0, np.random.default_rng(0)) is crops
    everything = degrade_some(crops, 1.0, np.random.default_rng(0))
    assert torch.equal(crops, before), "the input batch must not be modified"
    changed = [not torch.equal(a, b) for a, b in zip(everything, crops)]
    assert all(changed)
    assert everything.min() >= -1 and everything.max() <= 1
    assert psnr(everything, crops) < 35  # visibly degraded, not a rounding difference
    half = degrade_some(crops, 0.5, np.random.default_rng(1))
    changed = sum(not torch.equal(a, b) for a, b in zip(half, crops))
    assert 2 <= changed <= 14
    again = degrade_some(crops, 0.5, np.random.default_rng(1))
    assert torch.equal(half, again), "the same generator state gives the same batch"


def test_train_vae_learns_checkpoints_and_resumes(tmp_path):
    components = build_nano_components()
    vae = components["vae"]
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    result = train_vae(components, tmp_path, steps=3, batch_size=2, learning_rate=1e-3, checkpoint_every=2,
                       crop_size=16, degraded_fraction=0.5, image_dirs=None)
    assert any(not torch.equal(before[k], v) for k, v in vae.state_dict().items())
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())
    assert np.isfinite(result["held_out_psnr_db"]) and result["scaling_factor"] > 0
    assert vae.config.scaling_factor == pytest.approx(result["scaling_factor"])
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 3]
    assert load_state(tmp_path / "vae_checkpoint.safetensors")["step"] == 3
    # Rerun with more steps: it continues from step 3 instead of starting over.
    train_vae(components, tmp_path, steps=4, batch_size=2, learning_rate=1e-3, checkpoint_every=2, crop_size=16)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 3, 4]


def test_train_editor_updates_the_transformer_and_checkpoints(tmp_path):
    components = build_nano_components()
    transformer = components["transformer"]
    before = {k: v.clone() for k, v in transformer.state_dict().items()}
    result = train_editor(components, tmp_path, steps=2, batch_size=2, checkpoint_every=1)
    assert result["steps"] == 2 and np.isfinite(result["final_loss_ema"])
    assert any(not torch.equal(before[k], v) for k, v in transformer.state_dict().items())
    assert not transformer.training and next(transformer.parameters()).device.type == "cpu"
    state = load_state(tmp_path / "editor_checkpoint.safetensors")
    assert state["step"] == 2


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--device", "nonsense"], "is not a device"),
        (["--vae_crop_size", "31"], "--vae_crop_size must be a multiple"),  # the VAE halves the sides
        (["--vae_degraded_fraction", "1.5"], "in [0, 1]"),
    ],
)
def test_nano_train_refuses_bad_options_before_writing(tmp_path, capsys, flags, message):
    work_dir = tmp_path / "work"
    with pytest.raises(SystemExit) as exit_info:
        nano_main(["train", "vae", "--work_dir", str(work_dir), "--weights_dir", str(tmp_path / "w"), *flags])
    assert message in str(exit_info.value)
    assert not work_dir.exists() and not (tmp_path / "w").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when no GPU is present")
def test_nano_train_explains_a_missing_gpu(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        nano_main(["train", "vae", "--work_dir", str(tmp_path / "work"), "--weights_dir", str(tmp_path / "w"),
                   "--device", "cuda"])
    assert "no CUDA GPU is visible" in str(exit_info.value)
