"""State files: nested training state round-trips exactly through safetensors + JSON, and
nothing in a file is executed."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from kontext_lora_helpers.statefiles import StateFileError, load_legacy_pickle, load_state, save_state


def test_optimizer_scheduler_and_random_states_round_trip_exactly(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    states = {
        "optimizer": optimizer.state_dict(),  # int keys, tuples, 0-d tensors
        "scheduler": scheduler.state_dict(),
        "random": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                   "pcg64": np.random.default_rng(3).bit_generator.state},  # uint32 arrays, 128-bit ints
        "plain": {"inf": float("inf"), "none": None, "flag": True, "text": "é", "__odd": 1},
    }
    for name, state in states.items():
        back = load_state(save_state(state, tmp_path / f"{name}.safetensors"))
        assert repr(back) == repr(state), name
    restored = torch.optim.AdamW(model.parameters(), lr=1e-3)
    restored.load_state_dict(load_state(tmp_path / "optimizer.safetensors"))
    assert torch.equal(restored.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def test_unstorable_values_and_damaged_files_get_clear_errors(tmp_path):
    with pytest.raises(TypeError, match="cannot store a object"):
        save_state({"x": object()}, tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()
    with pytest.raises(StateFileError, match="does not exist"):
        load_state(tmp_path / "missing.safetensors")
    (tmp_path / "torn.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(StateFileError, match="damaged"):
        load_state(tmp_path / "torn.safetensors")


def test_a_legacy_pickle_is_read_safely_and_a_malicious_one_refused(tmp_path):
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save(state, tmp_path / "random_states.pt")
    assert repr(load_legacy_pickle(tmp_path / "random_states.pt")) == repr(state)

    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(StateFileError, match="refusing to load"):
        load_legacy_pickle(tmp_path / "evil.pt")
    assert not marker.exists()
