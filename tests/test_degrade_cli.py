"""The degrade command (``python -m kontext_lora_helpers.degrade`` / ``kontext-lora degrade``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kontext_lora_helpers import cli
from kontext_lora_helpers.degradations import PRESETS, DegradationConfig, apply_degradation_steps
from kontext_lora_helpers.degrade import image_seed, main
from kontext_lora_helpers.images import SkippedImageWarning, load_rgb


def photo(size=(48, 40), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(30, 220, size=(size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    photo((48, 40), 1).save(root / "one.jpg", quality=95)
    photo((32, 32), 2).save(root / "sub" / "two.png")
    return root


def outputs_of(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_folder_is_degraded_to_pngs_with_json_records(inputs, tmp_path):
    out = tmp_path / "out"
    assert main(["--input", str(inputs), "--output", str(out), "--seed", "7", "--lr_scale", "2"]) == 0
    assert outputs_of(out) == ["one.json", "one.png", "sub/two.json", "sub/two.png"]
    for name, source in (("one", inputs / "one.jpg"), ("sub/two", inputs / "sub" / "two.png")):
        degraded = Image.open(out / f"{name}.png")
        description = json.loads((out / f"{name}.json").read_text())
        clean = load_rgb(source)
        assert degraded.size == clean.size and degraded.mode == "RGB"
        assert description["seed"] == 7 and description["image_seed"] == image_seed(
            7, Path(source).relative_to(inputs).as_posix()
        )
        assert description["size"] == list(clean.size)
        assert DegradationConfig.from_dict(description["config"]) == DegradationConfig(lr_scale=2)
        assert [step["op"] for step in description["record"]] == ["downsample", "noise", "blur", "jpeg"]
        # The record is complete: applying it again reproduces the PNG exactly.
        again, _ = apply_degradation_steps(clean, description["record"])
        assert again.tobytes() == degraded.convert("RGB").tobytes()


def test_existing_outputs_are_never_overwritten_without_the_flag(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--input", str(inputs), "--output", str(out), "--seed", "1"]) == 0
    before = (out / "one.png").read_bytes()
    assert main(["--input", str(inputs), "--output", str(out), "--seed", "2"]) == 1
    message = capsys.readouterr().err
    assert "already exist" in message and "pass --overwrite" in message
    assert (out / "one.png").read_bytes() == before
    assert main(["--input", str(inputs), "--output", str(out), "--seed", "2", "--overwrite"]) == 0
    assert (out / "one.png").read_bytes() != before


def test_output_that_is_an_existing_file_is_refused(inputs, tmp_path, capsys):
    existing = tmp_path / "file.txt"
    existing.write_text("keep me")
    with pytest.raises(SystemExit) as exit_info:
        main(["--input", str(inputs), "--output", str(existing)])
    assert exit_info.value.code == 2
    assert "is an existing file" in capsys.readouterr().err
    assert existing.read_text() == "keep me"


def test_single_file_ranges_and_presets(inputs, tmp_path):
    out = tmp_path / "single"
    args = [
        "--input",
        str(inputs / "one.jpg"),
        "--output",
        str(out),
        "--degradation_types",
        "noise,jpeg",
        "--noise_level",
        "0.01,0.05",
        "--jpeg_quality",
        "40,60",
        "--seed",
        "3",
    ]
    assert main(args) == 0
    assert outputs_of(out) == ["one.json", "one.png"]
    record = {step["op"]: step for step in json.loads((out / "one.json").read_text())["record"]}
    assert 0.01 <= record["noise"]["noise_level"] <= 0.05 and 40 <= record["jpeg"]["jpeg_quality"] <= 60
    preset_out = tmp_path / "old"
    assert main(["--input", str(inputs), "--output", str(preset_out), "--preset", "old_photo"]) == 0
    config = json.loads((preset_out / "one.json").read_text())["config"]
    assert DegradationConfig.from_dict(config) == PRESETS["old_photo"]


def test_same_seed_same_output_and_independent_of_other_files(inputs, tmp_path):
    assert main(["--input", str(inputs), "--output", str(tmp_path / "a"), "--seed", "5"]) == 0
    photo((40, 40), 9).save(inputs / "zzz_extra.png")
    assert main(["--input", str(inputs), "--output", str(tmp_path / "b"), "--seed", "5"]) == 0
    assert main(["--input", str(inputs), "--output", str(tmp_path / "c"), "--seed", "6"]) == 0
    assert (tmp_path / "a" / "one.png").read_bytes() == (tmp_path / "b" / "one.png").read_bytes()
    assert (tmp_path / "a" / "one.png").read_bytes() != (tmp_path / "c" / "one.png").read_bytes()


def test_bad_flags_and_bad_inputs(inputs, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--input", str(inputs), "--output", str(tmp_path / "x"), "--jpeg_quality", "101"])
    assert exit_info.value.code == 2 and "jpeg_quality must be in [1, 100]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--input", str(inputs), "--output", str(tmp_path / "x"), "--degradation_types", "sharpen"])
    assert "unknown degradation type 'sharpen'" in capsys.readouterr().err
    assert main(["--input", str(tmp_path / "missing"), "--output", str(tmp_path / "x")]) == 1
    (tmp_path / "empty").mkdir()
    assert main(["--input", str(tmp_path / "empty"), "--output", str(tmp_path / "x")]) == 1
    assert "no usable image" in capsys.readouterr().err
    (inputs / "broken.jpg").write_bytes(b"")
    with pytest.warns(SkippedImageWarning, match="broken.jpg: empty file"):
        assert main(["--input", str(inputs), "--output", str(tmp_path / "y")]) == 0
    assert outputs_of(tmp_path / "y") == ["one.json", "one.png", "sub/two.json", "sub/two.png"]


def test_output_inside_input_is_not_read_back(inputs):
    out = inputs / "degraded"
    assert main(["--input", str(inputs), "--output", str(out)]) == 0
    assert main(["--input", str(inputs), "--output", str(out), "--overwrite"]) == 0
    assert outputs_of(out) == ["one.json", "one.png", "sub/two.json", "sub/two.png"]


def test_console_command_dispatches_verbs(inputs, tmp_path, capsys, monkeypatch):
    assert cli.main(["degrade", "--input", str(inputs), "--output", str(tmp_path / "via_cli")]) == 0
    assert (tmp_path / "via_cli" / "one.png").exists()
    assert cli.main(["--help"]) == 0 and "degrade" in capsys.readouterr().out
    assert cli.main(["polish"]) == 2 and "unknown verb 'polish'" in capsys.readouterr().err
    monkeypatch.setitem(cli.VERBS, "future", ("kontext_lora_helpers.not_written_yet", "a later stage"))
    assert cli.main(["future"]) == 2
    assert "'future' command is not available" in capsys.readouterr().err


def test_python_dash_m_entry_point(inputs, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kontext_lora_helpers.degrade",
            "--input",
            str(inputs / "one.jpg"),
            "--output",
            str(tmp_path / "m"),
            "--preset",
            "original_guide",
            "--seed",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m" / "one.png").exists() and (tmp_path / "m" / "one.json").exists()
