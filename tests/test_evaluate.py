"""The evaluate command (``kontext_lora_helpers.evaluate``): matching, exact PSNR figures, reports, LPIPS policy."""

from __future__ import annotations

import csv
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kontext_lora_helpers import evaluate
from kontext_lora_helpers.evaluate import EvaluationError, evaluate_folders, format_table, main, write_reports


# A constant offset of d levels on every pixel and channel gives MSE d^2 exactly:
#   PSNR = 10 log10(255^2 / d^2);  on luma the offset is d * 219 / 255 (BT.601 weights sum to 219/255).
OFFSETS = {"restored": 5, "base": 10, "degraded": 20}


def psnr_of_offset(d: float, y_channel: bool = False) -> float:
    return 20 * math.log10(255 / (d * 219 / 255 if y_channel else d))


def save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(path)


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    """Two references (a textured 40x32 PNG and a flat grey 24x24 BMP in a subfolder) and, for each
    method, the same images shifted by its constant offset, saved as PNG."""
    rng = np.random.default_rng(0)
    references = {"photo": rng.integers(30, 200, size=(32, 40, 3)), "sub/flat": np.full((24, 24, 3), 100)}
    roots = {role: tmp_path / role for role in ("reference", *OFFSETS)}
    for name, reference in references.items():
        extension = ".bmp" if name == "sub/flat" else ".png"  # matched by name, whatever the extension
        save(reference, roots["reference"] / f"{name}{extension}")
        for method, offset in OFFSETS.items():
            save(reference + offset, roots[method] / f"{name}.png")
    return roots


@pytest.fixture
def no_torch_hub_weights(tmp_path, monkeypatch):
    """An empty torch hub cache, whatever the machine has, so LPIPS must be skipped."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))


def test_constant_offsets_give_the_exact_psnr_and_gains(folders, no_torch_hub_weights):
    result = evaluate_folders(folders["restored"], folders["reference"], degraded=folders["degraded"],
                              base=folders["base"])
    assert result["methods"] == ["degraded", "base", "restored"]
    assert [row["name"] for row in result["images"]] == ["photo", "sub/flat"]
    assert result["images"][0]["size"] == [40, 32] and result["count"] == 2
    for row in result["images"]:
        for method, offset in OFFSETS.items():
            assert row["scores"][method]["psnr"] == pytest.approx(psnr_of_offset(offset), abs=1e-9)
            assert row["scores"][method]["psnr_y"] == pytest.approx(psnr_of_offset(offset, True), abs=1e-9)
        # Gains: 20 log10(20 / 5) = 12.04 dB over the degraded input, 20 log10(10 / 5) = 6.02 dB over the base.
        assert row["gains"]["psnr_vs_degraded"] == pytest.approx(20 * math.log10(4), abs=1e-9)
        assert row["gains"]["psnr_vs_base"] == pytest.approx(20 * math.log10(2), abs=1e-9)
        assert row["gains"]["psnr_y_vs_base"] == pytest.approx(20 * math.log10(2), abs=1e-9)
    # On a flat image every SSIM window sees means mu and mu + d and no variance:
    #   SSIM = (2 mu (mu + d) + C1) / (mu^2 + (mu + d)^2 + C1), C1 = (0.01 * 255)^2.
    c1 = (0.01 * 255) ** 2
    flat = result["images"][1]["scores"]
    for method, offset in OFFSETS.items():
        expected = (2 * 100 * (100 + offset) + c1) / (100**2 + (100 + offset) ** 2 + c1)
        assert flat[method]["ssim"] == pytest.approx(expected, abs=1e-12)
    photo = result["images"][0]["scores"]
    assert 1 > photo["restored"]["ssim"] > photo["base"]["ssim"] > photo["degraded"]["ssim"]
    assert result["mean"]["scores"]["restored"]["psnr"] == pytest.approx(psnr_of_offset(5), abs=1e-9)
    assert result["mean"]["gains"]["psnr_vs_degraded"] == pytest.approx(20 * math.log10(4), abs=1e-9)
    assert result["lpips"] == {"status": result["lpips"]["status"], "computed": False}
    assert result["lpips"]["status"].startswith("skipped (no local weights)")
    assert all(row["scores"]["restored"]["lpips"] is None for row in result["images"])


def test_reports_hold_every_figure_and_strict_json(folders, tmp_path, no_torch_hub_weights):
    result = evaluate_folders(folders["restored"], folders["reference"], degraded=folders["degraded"])
    csv_path, json_path = write_reports(result, tmp_path / "report")
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["name"] for row in rows] == ["photo", "sub/flat", "mean"]
    assert list(rows[0]) == ["name", "width", "height",
                             "degraded_psnr", "degraded_ssim", "degraded_psnr_y", "degraded_ssim_y",
                             "restored_psnr", "restored_ssim", "restored_psnr_y", "restored_ssim_y",
                             "gain_psnr_vs_degraded", "gain_psnr_y_vs_degraded"]  # no LPIPS column when skipped
    assert (rows[0]["width"], rows[0]["height"], rows[2]["width"]) == ("40", "32", "")
    assert float(rows[1]["restored_psnr"]) == pytest.approx(psnr_of_offset(5), abs=1e-6)
    assert float(rows[2]["gain_psnr_vs_degraded"]) == pytest.approx(20 * math.log10(4), abs=1e-6)

    def refuse_constants(name):
        raise AssertionError(f"{name} is not JSON")

    saved = json.loads(json_path.read_text(), parse_constant=refuse_constants)
    assert saved["images"][0]["scores"]["degraded"]["psnr"] == pytest.approx(psnr_of_offset(20))
    assert saved["lpips"]["status"].startswith("skipped (no local weights)")
    assert saved["settings"]["crop_border"] == 0 and saved["settings"]["base"] is None
    with pytest.raises(EvaluationError, match="--overwrite"):
        write_reports(result, tmp_path / "report")


def test_border_crop_and_identical_images_give_infinite_psnr_written_as_text(tmp_path, no_torch_hub_weights):
    rng = np.random.default_rng(1)
    reference = rng.integers(0, 256, size=(30, 30, 3))
    framed = reference.copy()
    framed[:2], framed[-2:], framed[:, :2], framed[:, -2:] = 0, 0, 0, 0  # damage only a 2-pixel frame
    save(reference, tmp_path / "reference" / "a.png")
    save(framed, tmp_path / "restored" / "a.png")
    save(framed, tmp_path / "restored" / "only_here.png")  # no reference: listed, not measured
    uncropped = evaluate_folders(tmp_path / "restored", tmp_path / "reference", lpips="off")
    cropped = evaluate_folders(tmp_path / "restored", tmp_path / "reference", crop_border=2, lpips="off")
    assert math.isfinite(uncropped["images"][0]["scores"]["restored"]["psnr"])
    assert cropped["images"][0]["scores"]["restored"]["psnr"] == math.inf
    assert cropped["images"][0]["scores"]["restored"]["ssim"] == pytest.approx(1.0)
    assert cropped["unmatched"] == {"restored": ["only_here"], "reference": []}
    _, json_path = write_reports(cropped, tmp_path / "report")
    saved = json.loads(json_path.read_text())
    assert saved["images"][0]["scores"]["restored"]["psnr"] == "inf"
    table = format_table(cropped)
    assert "2 px border cropped" in table and "inf" in table and "only_here" in table
    with pytest.raises(EvaluationError, match="leaves nothing"):
        evaluate_folders(tmp_path / "restored", tmp_path / "reference", crop_border=15, lpips="off")


def test_lpips_uses_a_given_scorer_and_never_downloads(folders, tmp_path, monkeypatch):
    def halves(a, b):
        return 0.5

    result = evaluate_folders(folders["restored"], folders["reference"], lpips=halves)
    assert result["lpips"]["computed"] and result["mean"]["scores"]["restored"]["lpips"] == 0.5
    assert "restored LPIPS" in format_table(result)

    # An lpips package whose linear weights and torchvision backbone are "on disk", but whose
    # construction tries to download: the download is refused and LPIPS reported skipped.
    import torch
    from torchvision import models

    package = tmp_path / "fake_lpips"
    (package / "weights" / "v0.1").mkdir(parents=True)
    (package / "weights" / "v0.1" / "alex.pth").write_bytes(b"")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / Path(models.AlexNet_Weights.IMAGENET1K_V1.url).name).write_bytes(b"")
    attempts = []

    class DownloadingLPIPS:
        def __init__(self, **kwargs):
            attempts.append(kwargs)
            torch.hub.download_url_to_file("https://example.invalid/weights.pth", str(tmp_path / "w.pth"))

    fake = types.ModuleType("lpips")
    fake.__file__ = str(package / "__init__.py")
    fake.LPIPS = DownloadingLPIPS
    monkeypatch.setitem(sys.modules, "lpips", fake)
    score, status = evaluate.load_local_lpips()
    assert score is None and attempts and attempts[0]["pretrained"] is True and attempts[0]["pnet_rand"] is False
    assert status.startswith("skipped (no local weights)") and "refused" in status
    assert not (tmp_path / "w.pth").exists()

    # Without the backbone file nothing is even built.
    (checkpoints / Path(models.AlexNet_Weights.IMAGENET1K_V1.url).name).unlink()
    attempts.clear()
    score, status = evaluate.load_local_lpips()
    assert score is None and not attempts and "weights are not in" in status


def test_clear_errors_name_the_folder_or_file(folders, tmp_path, no_torch_hub_weights):
    with pytest.raises(EvaluationError, match="does not exist"):
        evaluate_folders(tmp_path / "nowhere", folders["reference"])
    other = tmp_path / "other"
    save(np.zeros((16, 16, 3)), other / "unrelated.png")
    with pytest.raises(EvaluationError, match="no matching files"):
        evaluate_folders(other, folders["reference"])
    save(np.zeros((33, 41, 3)), tmp_path / "resized" / "photo.png")
    with pytest.raises(EvaluationError) as caught:
        evaluate_folders(tmp_path / "resized", folders["reference"])
    message = str(caught.value)
    assert "photo.png is 41x33" in message and "is 40x32" in message
    save(np.zeros((32, 40, 3)), folders["restored"] / "photo.bmp")
    with pytest.raises(EvaluationError, match="both photo.bmp and photo.png"):
        evaluate_folders(folders["restored"], folders["reference"])


def test_command_prints_the_table_and_writes_the_reports(folders, tmp_path, capsys, no_torch_hub_weights):
    report = tmp_path / "report"
    argv = ["--restored", str(folders["restored"]), "--reference", str(folders["reference"]),
            "--degraded", str(folders["degraded"]), "--base", str(folders["base"]), "--output", str(report)]
    assert main([*argv, "--y_channel"]) == 0
    printed = capsys.readouterr().out
    assert "restored PSNR-Y" in printed and "gain vs base (dB)" in printed
    assert "LPIPS: skipped (no local weights)" in printed
    mean_line = next(line for line in printed.splitlines() if line.startswith("mean"))
    assert f"{psnr_of_offset(5, True):.2f}" in mean_line and f"{20 * math.log10(4):.2f}" in mean_line
    assert (report / "metrics.csv").is_file() and json.loads((report / "metrics.json").read_text())["settings"]["y_channel"]

    assert main(argv) == 1  # reports exist
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    assert "restored PSNR " in capsys.readouterr().out  # RGB headline without --y_channel
    assert main(["--restored", str(tmp_path / "nowhere"), "--reference", str(folders["reference"]),
                 "--output", str(tmp_path / "r2")]) == 1
    assert "does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The classical column
# ---------------------------------------------------------------------------------------------


def smooth_photo(phase: float, size: int = 40) -> np.ndarray:
    """A smooth colour image (0-255 floats) that a denoiser can recover well from noise."""
    y, x = np.mgrid[0:size, 0:size] / size
    return np.stack([70 + 110 * x + 25 * np.sin(5 * y + phase), 90 + 90 * y, 150 - 70 * x], axis=-1)


@pytest.fixture
def noisy_folders(tmp_path: Path) -> dict[str, Path]:
    """Evaluated pairs (reference, noisy degraded, restored = reference + 2 levels) and validation
    pairs made from other images, in separate folders."""
    rng = np.random.default_rng(0)
    roots = {role: tmp_path / role for role in ("reference", "degraded", "restored", "val_reference", "val_degraded")}
    for prefix, phases in (("", (0.0, 1.0)), ("val_", (2.0, 3.0, 4.0))):
        for index, phase in enumerate(phases):
            clean = smooth_photo(phase)
            save(clean, roots[f"{prefix}reference"] / f"photo{index}.png")
            save(clean + rng.normal(0, 20, clean.shape), roots[f"{prefix}degraded"] / f"photo{index}.png")
            if not prefix:
                save(clean + 2, roots["restored"] / f"photo{index}.png")
    return roots


def test_classical_column_with_a_given_strength_scores_the_denoised_inputs(noisy_folders, no_torch_hub_weights):
    from kontext_lora_helpers.classical import classical_restore
    from kontext_lora_helpers.metrics import psnr

    pytest.importorskip("pywt")
    folders = noisy_folders
    result = evaluate_folders(folders["restored"], folders["reference"], degraded=folders["degraded"], lpips="off",
                              classical="tv", classical_strength=0.08)
    assert result["methods"] == ["degraded", "classical", "restored"]
    assert result["classical"] == {"method": "tv", "description": result["classical"]["description"],
                                   "strength": 0.08, "strength_source": "given", "tuned_on": None}
    degraded = [Image.open(folders["degraded"] / f"photo{i}.png").convert("RGB") for i in range(2)]
    clean = [Image.open(folders["reference"] / f"photo{i}.png").convert("RGB") for i in range(2)]
    expected = [psnr(image, reference) for image, reference in zip(classical_restore(degraded, "tv", 0.08), clean)]
    for row, value in zip(result["images"], expected):
        assert row["scores"]["classical"]["psnr"] == pytest.approx(value, abs=1e-9)
        assert row["gains"]["psnr_vs_classical"] == pytest.approx(row["scores"]["restored"]["psnr"] - value, abs=1e-9)
    mean = result["mean"]["scores"]
    assert mean["classical"]["psnr"] > mean["degraded"]["psnr"] + 5  # TV does remove the noise
    table = format_table(result)
    assert "classical PSNR" in table and "gain vs classical (dB)" in table
    assert "classical = tv, strength 0.08" in table and "as given" in table


def test_command_tunes_the_classical_strength_on_validation_folders_and_records_it(noisy_folders, tmp_path, capsys,
                                                                                   no_torch_hub_weights):
    pytest.importorskip("pywt")
    from kontext_lora_helpers.classical import DEFAULT_STRENGTHS

    folders, report = noisy_folders, tmp_path / "report"
    assert main(["--restored", str(folders["restored"]), "--reference", str(folders["reference"]),
                 "--degraded", str(folders["degraded"]), "--classical", "nlm", "--lpips", "off",
                 "--classical_tune_degraded", str(folders["val_degraded"]),
                 "--classical_tune_reference", str(folders["val_reference"]), "--output", str(report)]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((report / "metrics.json").read_text())
    record = saved["classical"]
    assert record["method"] == "nlm" and record["strength_source"] == "tuned"
    tuned_on = record["tuned_on"]
    assert tuned_on["count"] == 3 and tuned_on["degraded"] == str(folders["val_degraded"])
    table = {row["strength"]: row["psnr"] for row in tuned_on["mean_psnr_by_strength"]}
    assert list(table) == sorted(DEFAULT_STRENGTHS["nlm"])
    assert record["strength"] == max(table, key=table.get) > 0
    assert f"classical = nlm, strength {record['strength']:g}" in printed and "3 validation pair(s)" in printed
    with (report / "metrics.csv").open() as handle:
        columns = next(csv.reader(handle))
    assert "classical_psnr" in columns and "gain_psnr_vs_classical" in columns


def test_tuning_on_the_evaluated_folders_is_refused(noisy_folders, tmp_path, capsys, no_torch_hub_weights):
    folders = noisy_folders
    evaluated = dict(degraded=folders["degraded"], lpips="off", classical="nlm")
    with pytest.raises(EvaluationError, match=r"is \(or overlaps\) the evaluated degraded folder"):
        evaluate_folders(folders["restored"], folders["reference"], **evaluated,
                         classical_tune_degraded=folders["degraded"], classical_tune_reference=folders["val_reference"])
    # a folder inside the evaluated references, or one holding them, shares their images too
    for inside_or_around in (folders["reference"] / "sub", tmp_path):
        with pytest.raises(EvaluationError, match=r"classical_tune_reference .* is \(or overlaps\) the evaluated"):
            evaluate_folders(folders["restored"], folders["reference"], **evaluated,
                             classical_tune_degraded=folders["val_degraded"], classical_tune_reference=inside_or_around)
    report = tmp_path / "report"
    assert main(["--restored", str(folders["restored"]), "--reference", str(folders["reference"]),
                 "--degraded", str(folders["degraded"]), "--classical", "tv", "--output", str(report),
                 "--classical_tune_degraded", str(folders["degraded"]),
                 "--classical_tune_reference", str(folders["reference"])]) == 1
    assert "flatters the classical method" in capsys.readouterr().err and not report.exists()


def test_inconsistent_classical_arguments_give_clear_errors(noisy_folders, capsys):
    folders = noisy_folders
    run = lambda **kwargs: evaluate_folders(folders["restored"], folders["reference"], lpips="off", **kwargs)  # noqa: E731
    validation = dict(classical_tune_degraded=folders["val_degraded"], classical_tune_reference=folders["val_reference"])
    with pytest.raises(EvaluationError, match="unknown classical method 'median'"):
        run(degraded=folders["degraded"], classical="median", classical_strength=1.0)
    with pytest.raises(EvaluationError, match="restores the degraded inputs"):
        run(classical="nlm", classical_strength=1.0)
    with pytest.raises(EvaluationError, match="not both"):
        run(degraded=folders["degraded"], classical="nlm", classical_strength=1.0, **validation)
    with pytest.raises(EvaluationError, match="choose the classical strength on validation images"):
        run(degraded=folders["degraded"], classical="nlm")
    with pytest.raises(EvaluationError, match="classical_tune_reference is missing"):
        run(degraded=folders["degraded"], classical="nlm", classical_tune_degraded=folders["val_degraded"])
    with pytest.raises(EvaluationError, match="classical_strength: strength must be a finite number >= 0"):
        run(degraded=folders["degraded"], classical="tv", classical_strength=-1.0)
    with pytest.raises(EvaluationError, match="only apply"):
        run(degraded=folders["degraded"], classical_strength=1.0)
    with pytest.raises(SystemExit) as caught:
        main(["--restored", str(folders["restored"]), "--reference", str(folders["reference"]), "--classical", "bm3d"])
    assert caught.value.code == 2 and "invalid choice: 'bm3d'" in capsys.readouterr().err
