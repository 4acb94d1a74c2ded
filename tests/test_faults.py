"""Nothing lost when things go wrong: kills at chosen moments, damaged checkpoints, a full disk, two
runs in one folder, photos that change under a run.

The kills are real SIGKILLs (`faults.fault_point`, set through `faults.FAULT_VARIABLE`) of a forked
child process that runs `train.train`, so each cycle costs a second or two rather than a fresh
interpreter. The full disk is `RLIMIT_FSIZE` in the child (with SIGXFSZ ignored, a write past the
limit fails with EFBIG, as one past a full disk fails with ENOSPC).
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import random
import resource
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from kontext_lora_helpers import faults
from kontext_lora_helpers.data import ChangedImageWarning
from kontext_lora_helpers.fileio import LOCK_FILE, FolderLockedError, folder_lock
from kontext_lora_helpers.lora import LORA_WEIGHT_NAME
from kontext_lora_helpers.train import (
    ConfigError,
    TrainConfig,
    latest_checkpoint,
    list_checkpoints,
    train,
)
from kontext_lora_helpers.train import main as train_main
from kontext_lora_helpers.train.checkpoints import MANIFEST_FILE, verify_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = REPO_ROOT / "data_samples"
SOAK_SEED = 20261208  # the soak's random kill moments; a failure names it, so it reproduces
KILLED = -signal.SIGKILL


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One thread in the parent, so forked children never inherit a running thread pool."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def small_config(output_dir, **changes) -> TrainConfig:
    """8 steps of batch 2 at 64 px, rank 4, a checkpoint every 2 steps, no validation."""
    settings = dict(hr_root=str(DATA), output_dir=str(output_dir), resolution=64, train_batch_size=2, rank=4,
                    max_train_steps=8, checkpointing_steps=2, validation_dir="none", validation_steps=0,
                    mixed_precision="no")
    settings.update(changes)
    return TrainConfig(**settings)


def _child(target, fault: str | None, file_size_limit: int | None, log_path: str) -> None:
    """Runs in the forked child: stdout and stderr to `log_path`, the fault and the size limit set."""
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    sys.stdout, sys.stderr = io.TextIOWrapper(os.fdopen(1, "wb", 0), write_through=True), \
        io.TextIOWrapper(os.fdopen(2, "wb", 0), write_through=True)
    os.environ.pop(faults.FAULT_VARIABLE, None)
    if fault:
        os.environ[faults.FAULT_VARIABLE] = fault
    if file_size_limit is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
    code = 0
    try:
        code = target()
    except BaseException as error:  # noqa: BLE001 - reported through the log and the exit code
        print(f"child failed: {type(error).__name__}: {error}", file=sys.stderr)
        code = 3
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code or 0))


def in_child(target, tmp_path, fault: str | None = None, file_size_limit: int | None = None) -> tuple[int, str]:
    """Run `target()` (returning an exit status or None) in a forked child; (exit code, its output)."""
    log_path = tmp_path / f"child-{random.getrandbits(32):08x}.log"
    process = multiprocessing.get_context("fork").Process(
        target=_child, args=(target, fault, file_size_limit, str(log_path)))
    process.start()
    process.join(300)
    if process.is_alive():
        process.kill()
        pytest.fail(f"the child did not finish in 300 s:\n{log_path.read_text()}")
    return process.exitcode, log_path.read_text() if log_path.exists() else ""


def train_in_child(config: TrainConfig, tmp_path, **kwargs) -> tuple[int, str]:
    return in_child(lambda: train(config, progress_bar=False) and 0, tmp_path, **kwargs)


def assert_same_lora(first_dir, second_dir, atol=1e-6):
    first, second = load_file(str(Path(first_dir) / LORA_WEIGHT_NAME)), load_file(str(Path(second_dir) / LORA_WEIGHT_NAME))
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=atol, msg=key)


def checkpoint_step(path: Path) -> int:
    return int(path.name.removeprefix("checkpoint-"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: the same 8-step run without faults, in a child like the soak's."""
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    code, log = train_in_child(small_config(tmp_path / "run"), tmp_path)
    assert code == 0, log
    return tmp_path / "run"


# --- kill and resume ------------------------------------------------------------------------------


def soak_schedule(output_name: str, rng: random.Random) -> list[str]:
    """The kill moments, in order: random occurrences of each point, arranged so that every
    "checkpoint_done" kill publishes one more checkpoint (2, 4, 6, 8) and the run progresses."""
    inside_a_checkpoint = lambda: f"checkpoint_file@{rng.randint(1, 7)}"  # noqa: E731 - 5 state files, manifest, state
    return [
        f"train_step@{rng.randint(1, 2)}",          # before any checkpoint exists
        inside_a_checkpoint(),                       # inside checkpoint-2's write
        "checkpoint_done@1",                         # checkpoint-2 just published
        f"train_step@{rng.randint(1, 2)}",
        f"write:checkpoint-4.tmp/{LORA_WEIGHT_NAME}@1",  # between a staged file's write and its rename
        inside_a_checkpoint(),
        "checkpoint_done@1",                         # checkpoint-4
        f"train_step@{rng.randint(1, 2)}",
        "checkpoint_done@1",                         # checkpoint-6
        inside_a_checkpoint(),
        "checkpoint_done@1",                         # checkpoint-8
        f"write:{output_name}/{LORA_WEIGHT_NAME}@1",    # inside the final save
    ]


def test_sigkill_at_a_dozen_moments_resumes_to_the_uninterrupted_lora(tmp_path, uninterrupted):
    output_dir = tmp_path / "soak"
    config = small_config(output_dir, resume_from_checkpoint="latest")
    schedule = soak_schedule(output_dir.name, random.Random(SOAK_SEED))
    assert len(schedule) >= 10 and sum(point.startswith("checkpoint_file") for point in schedule) >= 2
    complete_before: set[str] = set()
    newest_before = 0
    for moment in schedule:
        code, log = train_in_child(config, tmp_path, fault=moment)
        context = f"kill at {moment} (seed {SOAK_SEED}):\n{log}"
        assert code == KILLED, context
        complete = {path.name for path in list_checkpoints(output_dir)}
        assert complete_before <= complete, f"a good checkpoint was lost: {context}"
        for name in complete:  # whatever the kill interrupted, nothing half-written looks complete
            assert verify_checkpoint(output_dir / name) is None, f"{name} does not verify: {context}"
        latest = latest_checkpoint(output_dir)
        newest = checkpoint_step(latest) if latest else 0
        assert newest >= newest_before, context
        assert not (output_dir / LORA_WEIGHT_NAME).exists(), f"a final LoRA before the run finished: {context}"
        complete_before, newest_before = complete, newest
    assert newest_before == 8  # every checkpoint got published despite the kills

    code, log = train_in_child(config, tmp_path)  # the last resume: nothing left to train, the LoRA is saved
    assert code == 0, log
    assert "taking over" in log  # the killed child's lock
    assert not (output_dir / LOCK_FILE).exists()
    assert_same_lora(output_dir, uninterrupted)


def test_a_fault_variable_that_names_nothing_usable_is_refused():
    with pytest.raises(ValueError, match="checkpoint_file@3"):
        faults.parse_fault("checkpoint_file@none")
    assert faults.parse_fault("train_step") == ("train_step", 1)
    assert faults.parse_fault("write:a/b.safetensors@2") == ("write:a/b.safetensors", 2)


# --- damaged checkpoints ---------------------------------------------------------------------------


@pytest.fixture()
def four_checkpoints(tmp_path):
    """A killed-at-the-end run: checkpoints 2, 4, 6 and 8 and no final LoRA."""
    output_dir = tmp_path / "run"
    code, log = train_in_child(small_config(output_dir), tmp_path, fault=f"write:run/{LORA_WEIGHT_NAME}@1")
    assert code == KILLED, log
    assert [path.name for path in list_checkpoints(output_dir)] == [f"checkpoint-{n}" for n in (2, 4, 6, 8)]
    return output_dir


@pytest.mark.parametrize("damage", ["truncated", "missing file", "changed bytes"])
def test_a_damaged_newest_checkpoint_is_skipped_by_name_and_resume_falls_back(four_checkpoints, tmp_path, damage,
                                                                             uninterrupted):
    newest = four_checkpoints / "checkpoint-8"
    optimizer = newest / "optimizer.safetensors"
    if damage == "truncated":  # a copy that stopped half way
        optimizer.write_bytes(optimizer.read_bytes()[: optimizer.stat().st_size // 2])
    elif damage == "missing file":
        optimizer.unlink()
    else:  # same size, other bytes: a flipped bit on a disk or in a transfer
        data = bytearray(optimizer.read_bytes())
        data[-1] ^= 0xFF
        optimizer.write_bytes(bytes(data))
    problem = verify_checkpoint(newest)
    assert problem is not None and "optimizer.safetensors" in problem
    with pytest.warns(UserWarning, match="skipping .*checkpoint-8: optimizer.safetensors"):
        assert latest_checkpoint(four_checkpoints).name == "checkpoint-6"
    with pytest.raises(ConfigError, match="checkpoint-8 is damaged .*optimizer.safetensors"):
        train(small_config(four_checkpoints, resume_from_checkpoint="checkpoint-8"), progress_bar=False)

    code, log = train_in_child(small_config(four_checkpoints, resume_from_checkpoint="latest"), tmp_path)
    assert code == 0, log
    assert "skipping" in log and "checkpoint-8" in log and "Resumed from checkpoint-6" in log
    assert verify_checkpoint(newest) is None  # step 8 was trained again and its checkpoint rewritten
    assert_same_lora(four_checkpoints, uninterrupted)


def test_every_checkpoint_file_is_in_its_manifest(four_checkpoints):
    checkpoint = four_checkpoints / "checkpoint-2"
    manifest = json.loads((checkpoint / MANIFEST_FILE).read_text())["files"]
    written = {path.name for path in checkpoint.iterdir()} - {MANIFEST_FILE, "training_state.json"}
    assert set(manifest) == written and len(written) >= 5
    assert all(entry["bytes"] == (checkpoint / name).stat().st_size for name, entry in manifest.items())


# --- one run per folder ------------------------------------------------------------------------------


def test_a_second_run_into_a_folder_a_live_run_holds_is_refused(tmp_path, capsys):
    output_dir = tmp_path / "run"
    with folder_lock(output_dir, what="a training run (nano)"):  # held by this live process
        with pytest.raises(FolderLockedError, match=f"in use by a training run .*process {os.getpid()}"):
            train(small_config(output_dir, max_train_steps=1), progress_bar=False)
        assert train_main(["--hr_root", str(DATA), "--output_dir", str(output_dir), "--max_train_steps", "1",
                           "--validation_dir", "none"]) == 1
        assert "in use by" in capsys.readouterr().err
    assert not (output_dir / LOCK_FILE).exists()  # released when the block ended
    assert not list(output_dir.glob("checkpoint-*"))  # the refused runs wrote nothing


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_message(tmp_path, capsys):
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)  # a process that has exited
    import socket

    (output_dir / LOCK_FILE).write_text(json.dumps({"pid": dead_pid, "host": socket.gethostname(),
                                                    "started": "earlier", "what": "a training run"}))
    result = train(small_config(output_dir, max_train_steps=1, checkpointing_steps=0), progress_bar=False)
    assert result["status"] == "completed"
    assert f"process {dead_pid}, which held it, is no longer running" in capsys.readouterr().out
    assert not (output_dir / LOCK_FILE).exists()


# --- a full disk ----------------------------------------------------------------------------------


def test_a_checkpoint_that_does_not_fit_fails_clearly_and_keeps_the_earlier_ones(tmp_path):
    output_dir = tmp_path / "run"
    code, log = train_in_child(small_config(output_dir, max_train_steps=4), tmp_path)
    assert code == 0, log
    lora_bytes = (output_dir / "checkpoint-4" / LORA_WEIGHT_NAME).stat().st_size
    optimizer_bytes = (output_dir / "checkpoint-4" / "optimizer.safetensors").stat().st_size
    assert lora_bytes < optimizer_bytes  # a limit between them lets the LoRA files through, not the optimizer
    before = {path.name: verify_checkpoint(path) for path in list_checkpoints(output_dir)}

    flags = ["--hr_root", str(DATA), "--output_dir", str(output_dir), "--resolution", "64", "--train_batch_size", "2",
             "--rank", "4", "--max_train_steps", "8", "--checkpointing_steps", "2", "--validation_dir", "none",
             "--resume_from_checkpoint", "latest"]
    code, log = in_child(lambda: train_main(flags), tmp_path, file_size_limit=(lora_bytes + optimizer_bytes) // 2)
    assert code == 1, log
    assert "error: could not write" in log and "checkpoint-6" in log and "free on that disk" in log, log
    assert "The last good checkpoint is" in log and "checkpoint-4" in log
    assert {path.name: verify_checkpoint(path) for path in list_checkpoints(output_dir)} == before  # intact
    assert not list(output_dir.glob("checkpoint-6*"))  # no half checkpoint left behind


def test_a_final_lora_that_does_not_fit_fails_clearly_and_resume_saves_it(tmp_path):
    output_dir = tmp_path / "run"
    config = small_config(output_dir, max_train_steps=2, checkpointing_steps=2)
    code, log = train_in_child(config, tmp_path, fault=f"write:run/{LORA_WEIGHT_NAME}@1")
    assert code == KILLED, log
    lora_bytes = (output_dir / "checkpoint-2" / LORA_WEIGHT_NAME).stat().st_size

    flags = ["--hr_root", str(DATA), "--output_dir", str(output_dir), "--resolution", "64", "--train_batch_size", "2",
             "--rank", "4", "--max_train_steps", "2", "--checkpointing_steps", "2", "--validation_dir", "none",
             "--resume_from_checkpoint", "latest"]
    code, log = in_child(lambda: train_main(flags), tmp_path, file_size_limit=lora_bytes // 2)
    assert code == 1, log
    assert f"could not write {output_dir / LORA_WEIGHT_NAME}" in log and "free on that disk" in log, log
    assert not (output_dir / LORA_WEIGHT_NAME).exists() and not list(output_dir.glob("*.partial"))
    assert verify_checkpoint(output_dir / "checkpoint-2") is None
    code, log = in_child(lambda: train_main(flags), tmp_path)  # room again: resuming saves it
    assert code == 0, log
    assert (output_dir / LORA_WEIGHT_NAME).is_file()


def test_restore_and_export_that_do_not_fit_fail_clearly_and_keep_what_was_there(tmp_path, four_checkpoints):
    from kontext_lora_helpers import export, restore

    photo = tmp_path / "photo.png"
    Image.effect_noise((64, 64), 60).convert("RGB").save(photo)
    out = tmp_path / "restored"
    code, log = in_child(lambda: restore.main(["--input", str(photo), "--output", str(out), "--num_inference_steps",
                                               "1"]), tmp_path, file_size_limit=1000)
    assert code == 1, log
    assert "could not write" in log and "photo.png" in log and "free on that disk" in log, log
    assert not list(out.glob("*.png"))

    lora_file = four_checkpoints / "checkpoint-8" / LORA_WEIGHT_NAME
    exported = tmp_path / "comfy.safetensors"
    code, log = in_child(lambda: export.main(["--lora_weights", str(lora_file), "--output", str(exported),
                                              "--format", "comfyui"]), tmp_path, file_size_limit=1000)
    assert code == 1, log
    assert f"could not write {exported}" in log and "it needs about" in log, log
    assert not exported.exists() and verify_checkpoint(four_checkpoints / "checkpoint-8") is None


# --- photos that change under a run ---------------------------------------------------------------


def test_a_photo_deleted_or_truncated_during_a_run_is_replaced_once_with_a_warning_and_counted(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    sources = sorted(p for p in DATA.iterdir() if p.suffix.lower() in {".jpg", ".png"})[:4]
    for source in sources:
        (photos / source.name).write_bytes(source.read_bytes())
    deleted, truncated = sorted(photos.iterdir())[:2]
    config = small_config(tmp_path / "run", hr_root=str(photos), max_train_steps=6, checkpointing_steps=0)
    steps_seen = []

    def change_the_photos(entry):
        steps_seen.append(entry["step"])
        if entry["step"] == 1:  # the run has started and listed its photos
            deleted.unlink()
            truncated.write_bytes(truncated.read_bytes()[:200])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(config, on_step=change_the_photos, progress_bar=False)
    assert result["status"] == "completed" and steps_seen == list(range(1, 7))
    assert result["unreadable_photos"] == sorted([str(deleted), str(truncated)])
    changed = [w for w in caught if issubclass(w.category, ChangedImageWarning)]
    assert sorted(str(w.message).split(" can no longer")[0] for w in changed) == sorted([str(deleted), str(truncated)])
