"""Notebook 05's helpers (``kontext_lora_helpers.viz_restoration``): the before/after wipe and its
widget, headless; the LoRA scale sweep on nano with two denoising steps; PNGs for evaluation."""

from __future__ import annotations

import io

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from kontext_lora_helpers import metrics, restore
from kontext_lora_helpers.evaluate import index_images
from kontext_lora_helpers.models import load_pipeline
from kontext_lora_helpers.viz_restoration import (
    BeforeAfter,
    ScalePoint,
    divider_column,
    lora_scale_sweep,
    plot_scale_sweep,
    save_pngs,
    vae_ceiling_psnr,
    wipe,
)


STEPS = 2  # the sweep's bookkeeping is under test, not the quality of a restoration
RED, BLUE = (200, 30, 30), (30, 30, 200)


def solid(color, size=(10, 4)) -> Image.Image:
    return Image.new("RGB", size, color)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# wipe and BeforeAfter
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("position, red_columns", [(0.0, 0), (0.3, 3), (0.5, 5), (1.0, 10)])
def test_wipe_shows_before_left_of_the_divider_and_after_right_of_it(position, red_columns):
    joined = wipe(solid(RED), solid(BLUE), position, divider_color=None)
    assert joined.size == (10, 4) and joined.mode == "RGB"
    values = pixels(joined)
    assert (values[:, :red_columns] == RED).all()
    assert (values[:, red_columns:] == BLUE).all()


def test_wipe_draws_a_one_pixel_divider_only_where_both_images_show():
    joined = pixels(wipe(solid(RED), solid(BLUE), 0.5, divider_color=(0, 255, 0)))
    assert (joined[:, 5] == (0, 255, 0)).all()
    assert (joined[:, :5] == RED).all() and (joined[:, 6:] == BLUE).all()
    # At the ends the picture is one image, unmarked.
    assert (pixels(wipe(solid(RED), solid(BLUE), 0.0)) == BLUE).all()
    assert (pixels(wipe(solid(RED), solid(BLUE), 1.0)) == RED).all()


def test_wipe_leaves_its_inputs_alone_and_converts_modes():
    before, after = solid(RED).convert("RGBA"), solid(BLUE)
    joined = wipe(before, after, 0.5)
    assert joined.mode == "RGB"
    assert (pixels(after) == BLUE).all() and (pixels(before) == RED).all()


@pytest.mark.parametrize("position", [-0.01, 1.5])
def test_wipe_refuses_a_position_outside_0_1(position):
    with pytest.raises(ValueError, match="between 0 and 1"):
        wipe(solid(RED), solid(BLUE), position)


def test_wipe_refuses_images_of_different_sizes():
    with pytest.raises(ValueError, match="same size"):
        wipe(solid(RED, (10, 4)), solid(BLUE, (10, 5)), 0.5)


def test_divider_column_rounds_to_the_nearest_column():
    assert [divider_column(64, p) for p in (0, 0.25, 0.5, 0.999, 1)] == [0, 16, 32, 64, 64]


def test_before_after_widget_redraws_when_the_slider_moves():
    viewer = BeforeAfter(solid(RED), solid(BLUE), position=0.5, zoom=3, before_label="degraded", after_label="LoRA")
    assert viewer.slider.continuous_update is False
    assert viewer.slider.description == "degraded | LoRA"
    shown = Image.open(io.BytesIO(viewer.image.value))
    assert shown.size == (30, 12)  # enlarged 3x before joining
    assert (pixels(shown)[:, :15] == RED).all() and (pixels(shown)[:, 16:] == BLUE).all()

    viewer.slider.value = 1.0  # what releasing the handle at the right end does
    assert (pixels(Image.open(io.BytesIO(viewer.image.value))) == RED).all()
    viewer.slider.value = 0.0
    assert (pixels(Image.open(io.BytesIO(viewer.image.value))) == BLUE).all()
    assert viewer.render() == viewer.image.value


def test_before_after_picture_matches_wipe_of_the_enlarged_images():
    before = Image.fromarray(np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3))
    after = Image.fromarray(255 - np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3))
    viewer = BeforeAfter(before, after, position=0.25, zoom=2)
    expected = wipe(before.resize((12, 8), Image.Resampling.NEAREST), after.resize((12, 8), Image.Resampling.NEAREST), 0.25)
    assert (pixels(viewer.picture()) == pixels(expected)).all()


@pytest.mark.parametrize("options, message", [
    (dict(zoom=0), "zoom"), (dict(zoom=1.5), "zoom"), (dict(position=2.0), "between 0 and 1"),
])
def test_before_after_refuses_bad_settings(options, message):
    with pytest.raises(ValueError, match=message):
        BeforeAfter(solid(RED), solid(BLUE), **options)


# ---------------------------------------------------------------------------------------------
# save_pngs
# ---------------------------------------------------------------------------------------------


def test_save_pngs_writes_lossless_files_named_for_evaluate(tmp_path):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    paths = save_pngs([image, solid(RED)], ["held_out/coffee.jpg", "chelsea.jpg"], tmp_path / "restored")
    assert [path.name for path in paths] == ["coffee.png", "chelsea.png"]
    assert (pixels(Image.open(paths[0])) == pixels(image)).all()
    assert set(index_images(tmp_path / "restored")) == {"coffee", "chelsea"}


def test_save_pngs_refuses_clashing_or_missing_names(tmp_path):
    with pytest.raises(ValueError, match="same file name"):
        save_pngs([solid(RED), solid(BLUE)], ["a.jpg", "a.png"], tmp_path)
    with pytest.raises(ValueError, match="name"):
        save_pngs([solid(RED)], [], tmp_path)


# ---------------------------------------------------------------------------------------------
# The scale sweep on nano
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline("nano", device="cpu")


@pytest.fixture(scope="module")
def photos():
    """Two small photo-like images (smooth gradients with a little texture) and 'clean' partners."""
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:64, 0:64]
    degraded, clean = [], []
    for phase in (0.0, 1.5):
        base = np.stack([128 + 60 * np.sin(x / 9 + phase), 128 + 60 * np.cos(y / 11), 128 + 40 * np.sin((x + y) / 13)], -1)
        clean.append(Image.fromarray(base.round().astype(np.uint8)))
        degraded.append(Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).round().astype(np.uint8)))
    return degraded, clean


def test_sweep_scale_0_is_the_base_model_and_scale_1_the_loaded_lora(pipe, lora_dir, photos):
    degraded, clean = photos
    pipe.unload_lora_weights()
    try:
        base = restore.restore_images(pipe, degraded, num_inference_steps=STEPS, seed=3)
        loras = restore.load_loras(pipe, [lora_dir], [0.8])
        as_loaded = restore.restore_images(pipe, degraded, num_inference_steps=STEPS, seed=3)
        points = lora_scale_sweep(pipe, loras, degraded, clean, scales=(0.0, 1.0, 1.25),
                                  num_inference_steps=STEPS, seed=3)

        assert [point.scale for point in points] == [0.0, 1.0, 1.25]
        assert all(isinstance(point, ScalePoint) and len(point.psnr) == len(point.ssim) == 2 for point in points)
        for restored, expected in zip(points[0].images, base):
            assert (pixels(restored) == pixels(expected)).all()  # scale 0: the LoRA contributes nothing
        for restored, expected in zip(points[1].images, as_loaded):
            assert (pixels(restored) == pixels(expected)).all()  # 1 x the loaded scale 0.8
        assert not all((pixels(a) == pixels(b)).all() for a, b in zip(points[2].images, as_loaded))
        assert points[1].psnr[0] == pytest.approx(metrics.psnr(as_loaded[0], clean[0]))
        assert points[1].mean_psnr == pytest.approx(np.mean(points[1].psnr))

        # The pipeline is left at the LoRA's own scale.
        again = restore.restore_images(pipe, degraded, num_inference_steps=STEPS, seed=3)
        assert all((pixels(a) == pixels(b)).all() for a, b in zip(again, as_loaded))
    finally:
        pipe.unload_lora_weights()


def test_sweep_refuses_what_it_cannot_sweep(pipe, photos):
    degraded, clean = photos
    with pytest.raises(ValueError, match="load_loras"):
        lora_scale_sweep(pipe, [], degraded, clean)
    with pytest.raises(ValueError, match="scale"):
        lora_scale_sweep(pipe, [{"adapter_name": "lora_0", "scale": 1.0}], degraded, clean, scales=())
    with pytest.raises(ValueError, match="clean"):
        lora_scale_sweep(pipe, [{"adapter_name": "lora_0", "scale": 1.0}], degraded, clean[:1])


def test_plot_scale_sweep_draws_mean_images_and_references():
    image = solid(RED, (4, 4))
    points = [ScalePoint(s, (20.0 + s, 22.0 + s), (0.5, 0.6), (image, image)) for s in (0.0, 0.5, 1.0)]
    figure = plot_scale_sweep(points, references={"degraded input": 19.5, "VAE ceiling": 26.0})
    axis = figure.axes[0]
    mean_line = next(line for line in axis.lines if line.get_label() == "mean")
    assert list(mean_line.get_ydata()) == [21.0, 21.5, 22.0]
    labels = [text.get_text() for text in axis.get_legend().get_texts()]
    assert "degraded input (19.50 dB)" in labels and "each image" in labels
    assert "22.00 dB at scale 1" in axis.get_title()
    plt.close(figure)


def test_vae_ceiling_is_finite_and_below_identity(pipe, photos):
    _, clean = photos
    scores = vae_ceiling_psnr(pipe, clean)
    assert len(scores) == 2 and all(10 < score < 60 for score in scores)
