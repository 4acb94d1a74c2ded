"""Hostile inputs for every command: one corpus of awkward files, built here, through `degrade`,
`restore`, `evaluate`, `export` and the trainer. Each file gets a clear error or is skipped with a
warning, no command overwrites its input, and none crashes.

The corpus: a zero-byte file, a decompression bomb (a small PNG whose header claims 20,000 x 20,000
pixels), 16-bit and palette PNGs, a CMYK JPEG, an EXIF-rotated photo, an animated GIF, a symlink
loop, a file name that is not UTF-8, and two ordinary photos.
"""

from __future__ import annotations

import hashlib
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kontext_lora_helpers import degrade, evaluate, export, restore
from kontext_lora_helpers.train import ConfigError, TrainConfig, check_config

NOT_UTF8_NAME = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: Python keeps them as surrogate escapes


def photo(seed: int, size=(80, 64)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(30, 220, size=(size[1], size[0], 3), dtype=np.uint8))


def bomb_png(width: int, height: int) -> bytes:
    """A valid, tiny PNG header claiming width x height pixels, with one compressed row of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.fixture
def corpus(tmp_path) -> Path:
    root = tmp_path / "corpus"
    root.mkdir()
    photo(1).save(root / "plain.png")
    photo(2).save(root / "photo.jpg", quality=95)
    (root / "zero.png").write_bytes(b"")
    (root / "bomb.png").write_bytes(bomb_png(20000, 20000))
    Image.fromarray(np.linspace(0, 65535, 80 * 64, dtype=np.uint16).reshape(64, 80)).save(root / "sixteen_bit.png")
    photo(3).convert("P", palette=Image.Palette.ADAPTIVE).save(root / "palette.png")
    photo(4).convert("CMYK").save(root / "cmyk.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: "rotate 90 degrees clockwise to display"
    photo(5).save(root / "rotated.jpg", exif=exif.tobytes(), quality=95)
    frames = [photo(6), photo(7)]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    os.symlink("loop.png", root / "loop.png")  # points at itself
    photo(8).save(os.path.join(os.fsencode(root), os.fsencode(NOT_UTF8_NAME)))
    return root


def fingerprints(folder: Path) -> dict[str, str]:
    """SHA-256 of every regular file under `folder`, by relative path (symlinks are left out)."""
    found = {}
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            found[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


UNUSABLE = ("zero.png", "bomb.png", "animated.gif", "loop.png")
USABLE = ("plain.png", "photo.jpg", "sixteen_bit.png", "palette.png", "cmyk.jpg", "rotated.jpg", NOT_UTF8_NAME)


IMAGE_COMMANDS = {"degrade": (degrade.main, ["--preset", "course"]),
                  "restore": (restore.main, ["--num_inference_steps", "1", "--batch_size", "4"])}


@pytest.mark.parametrize("command", IMAGE_COMMANDS)
def test_image_commands_skip_the_unusable_files_by_name_and_never_write_into_their_input(command, corpus, tmp_path,
                                                                                         capsys):
    run, options = IMAGE_COMMANDS[command]
    before = fingerprints(corpus)
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run(["--input", str(corpus), "--output", str(out), *options]) == 0
    reported = " ".join(str(w.message) for w in caught) + capsys.readouterr().err
    for name in UNUSABLE:
        assert name in reported, name
    assert {path.stem for path in out.rglob("*.png")} == {Path(name).stem for name in USABLE}
    assert Image.open(out / "rotated.png").size == (64, 80)  # upright: the EXIF rotation was applied
    assert fingerprints(corpus) == before
    # the output folder is the input folder: refused before anything is written
    assert run(["--input", str(corpus), "--output", str(corpus), *options]) != 0
    assert "is the --input folder" in capsys.readouterr().err
    assert fingerprints(corpus) == before


def test_evaluate_scores_what_it_can_and_names_what_it_cannot(corpus, tmp_path, capsys):
    before = fingerprints(corpus)
    restored = tmp_path / "restored"
    restored.mkdir()
    for name in ("plain.png", "palette.png"):
        photo(9).save(restored / name)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        code = evaluate.main(["--restored", str(restored), "--reference", str(corpus), "--output", str(tmp_path / "scores")])
    assert code == 0, capsys.readouterr().err
    assert fingerprints(corpus) == before
    capsys.readouterr()
    code = evaluate.main(["--restored", str(corpus), "--reference", str(corpus), "--output", str(corpus)])
    assert fingerprints(corpus) == before  # whatever it answers, the folder it reads is not written


def test_export_refuses_files_that_are_not_loras(corpus, tmp_path, capsys):
    for name in ("zero.png", "bomb.png", "loop.png", NOT_UTF8_NAME):
        code = export.main(["--lora_weights", str(corpus / name), "--output", str(tmp_path / "out.safetensors"),
                            "--format", "comfyui"])
        assert code == 1, name
        assert "error" in capsys.readouterr().err.lower(), name
    assert not (tmp_path / "out.safetensors").exists()


def test_training_takes_the_usable_photos_and_refuses_an_output_folder_inside_its_photos(corpus, tmp_path):
    config = TrainConfig(hr_root=str(corpus), output_dir=str(tmp_path / "run"), resolution=64, max_train_steps=1,
                         validation_dir="none")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_config(config)
    from kontext_lora_helpers.data import DegDataset

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = DegDataset(str(corpus), "restore", resolution=64)
    assert sorted(info.path.name for info in dataset.images) == sorted(USABLE)
    assert all(name in " ".join(str(w.message) for w in caught) for name in UNUSABLE)
    with pytest.raises(ConfigError, match="inside the training photos"):
        check_config(config.replace(output_dir=str(corpus / "run")))
    with pytest.raises(ConfigError, match="inside the training photos"):
        check_config(config.replace(output_dir=str(corpus)))
