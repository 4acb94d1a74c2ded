"""The degradation explorer, headless: setting a widget's ``.value`` fires its observers as a click does."""

from __future__ import annotations

import io
import json
import shlex

import numpy as np
import pytest
from PIL import Image

from kontext_lora_helpers.degradations import (
    DEGRADATION_TYPES,
    PARAMETER_SPECS,
    PRESETS,
    DegradationConfig,
    config_from_args,
)
from kontext_lora_helpers.degrade import build_parser
from kontext_lora_helpers.images import load_rgb
from kontext_lora_helpers.viz_degradations import prepare_photo, zoom_box
from kontext_lora_helpers.widgets import (
    SLIDER_SETTINGS,
    DegradationExplorer,
    ParameterControl,
    degradation_explorer,
    degrade_command,
    export_config,
    python_snippet,
    render_preview,
)

# Small previews keep every render a few milliseconds; 128 is not a menu choice, so this also
# covers a resolution the explorer has to add to its menu.
RESOLUTION = 128


@pytest.fixture
def explorer(data_samples) -> DegradationExplorer:
    return degradation_explorer(photos=data_samples, resolution=RESOLUTION)


@pytest.fixture
def photo(data_samples) -> Image.Image:
    return prepare_photo(load_rgb(data_samples / "held_out" / "coffee.jpg"), 96)


def decoded(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png)).convert("RGB")


def parsed_flags(flags: list[str]) -> DegradationConfig:
    """What the degrade command (and so the training command) makes of these flags."""
    args = build_parser().parse_args(["--input", "in", "--output", "out", *flags])
    return config_from_args(args)


# ---------------------------------------------------------------------------------------------
# render_preview, the plain function behind the widget
# ---------------------------------------------------------------------------------------------


def test_render_preview_is_deterministic_for_a_seed(photo):
    first = render_preview(photo, PRESETS["old_photo"], seed=3)
    again = render_preview(photo, PRESETS["old_photo"], seed=3)
    other = render_preview(photo, PRESETS["old_photo"], seed=4)
    assert first.degraded_png == again.degraded_png
    assert first.degraded_zoom_png == again.degraded_zoom_png
    assert first.record == again.record
    assert other.degraded_png != first.degraded_png
    assert first.clean_png == other.clean_png  # the clean side does not depend on the recipe


def test_render_preview_contents(photo):
    config = DegradationConfig(degradation_types="noise,jpeg", noise_level=0.1, jpeg_quality=30)
    result = render_preview(photo, config, seed=0, zoom=4, zoom_center=(0.25, 0.75))
    assert [step["op"] for step in result.record] == ["noise", "jpeg"]
    assert result.degraded.size == photo.size
    assert decoded(result.degraded_png).size == photo.size
    assert result.zoom_box == zoom_box(photo.size, 4, (0.25, 0.75)) == (12, 60, 36, 84)
    # The zoomed crop is enlarged back to full size with nearest-neighbour: 4x4 blocks of one colour.
    zoomed = np.asarray(decoded(result.degraded_zoom_png))
    assert zoomed.shape == (96, 96, 3)
    assert np.array_equal(zoomed[:4, :4], np.broadcast_to(zoomed[0, 0], (4, 4, 3)))
    assert np.array_equal(zoomed[::4, ::4], np.asarray(result.degraded.crop(result.zoom_box)))
    assert result.prompt == "Restore this degraded photograph to high fidelity"
    assert "heavy noise" in result.described_prompt and "JPEG" in result.described_prompt
    assert "sigma 0.1" in result.numeric_prompt
    assert result.flags == config.to_cli_flags()
    assert result.flags_text == shlex.join(config.to_cli_flags())
    assert DegradationConfig.from_dict(json.loads(result.config_json)) == config
    assert 10 < result.psnr_db < 30


def test_render_preview_without_degradation_returns_the_photo(photo):
    result = render_preview(photo, PRESETS["none"], seed=0, include_clean=False)
    assert result.record == [] and result.psnr_db == float("inf")
    assert result.degraded.tobytes() == photo.tobytes()
    assert result.clean_png is None and result.clean_zoom_png is None


def test_render_preview_rejects_a_negative_seed(photo):
    with pytest.raises(ValueError, match="seed"):
        render_preview(photo, None, seed=-1)


# ---------------------------------------------------------------------------------------------
# Ways out: Python snippet, commands, export
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_python_snippet_rebuilds_the_config(name):
    namespace: dict = {}
    exec(python_snippet(PRESETS[name]), namespace)
    assert namespace["config"] == PRESETS[name]


def test_degrade_command_flags_round_trip():
    config = PRESETS["realesrgan"]
    words = shlex.split(degrade_command(config, "in dir", "out", seed=5))
    assert words[:3] == ["python", "-m", "kontext_lora_helpers.degrade"]
    args = build_parser().parse_args(words[3:])
    assert (args.input, args.seed) == ("in dir", 5)
    assert config_from_args(args) == config


def test_export_config_refuses_to_overwrite(tmp_path):
    path = tmp_path / "sub" / "recipe.json"
    assert export_config(PRESETS["old_photo"], path) == path
    assert DegradationConfig.from_dict(json.loads(path.read_text())) == PRESETS["old_photo"]
    with pytest.raises(FileExistsError, match="already exists"):
        export_config(PRESETS["original_guide"], path)
    assert DegradationConfig.from_dict(json.loads(path.read_text())) == PRESETS["old_photo"]
    export_config(PRESETS["original_guide"], path, overwrite=True)
    assert DegradationConfig.from_dict(json.loads(path.read_text())) == PRESETS["original_guide"]
    with pytest.raises(IsADirectoryError):
        export_config(PRESETS["original_guide"], tmp_path)


# ---------------------------------------------------------------------------------------------
# One parameter control
# ---------------------------------------------------------------------------------------------


def test_every_parameter_has_a_slider_inside_its_valid_range():
    assert set(SLIDER_SETTINGS) == set(PARAMETER_SPECS)
    for name, (low, high, step) in SLIDER_SETTINGS.items():
        spec = PARAMETER_SPECS[name]
        assert spec.low <= low < high <= spec.high and step > 0, name


def test_parameter_control_values_and_range_toggle():
    changes = []
    control = ParameterControl("noise_level", 0.05, on_change=lambda: changes.append(1))
    assert control.value == 0.05 and control.box.children[0] is control.single
    control.range_toggle.value = True  # a click on "range"
    low, high = control.value
    assert low < 0.05 < high and control.box.children[0] is control.range
    control.range_toggle.value = False
    assert control.value == pytest.approx((low + high) / 2)
    assert len(changes) == 2  # one notification per click, not one per slider it touched
    # Values set from code come back exactly; slider noise from a browser is tidied.
    control.value = (1 / 255, 30 / 255)
    assert control.value == (1 / 255, 30 / 255)
    control.value = 0.35
    control.single.value = 0.35000000000000003
    assert control.value == 0.35
    lr_scale = ParameterControl("lr_scale", 8)
    lr_scale.single.value = 6.0  # a slider drag arrives as a float
    assert lr_scale.value == 6 and isinstance(lr_scale.value, int)  # so flags read --lr_scale 6
    # A value beyond the slider's default limits widens the slider instead of being clipped.
    lr_scale.value = 40
    assert lr_scale.value == 40 and lr_scale.single.max >= 40
    with pytest.raises(ValueError):
        lr_scale.value = 100  # outside PARAMETER_SPECS


# ---------------------------------------------------------------------------------------------
# The explorer
# ---------------------------------------------------------------------------------------------


def test_explorer_lists_training_and_held_out_photos(explorer):
    labels = [label for label, _ in explorer.photo.options]
    assert "astronaut.jpg" in labels and "held_out/coffee.jpg" in labels
    assert explorer.photo.label.startswith("held_out/")  # held-out photos are the ones to look at
    assert set(explorer.type_checkboxes) == set(DEGRADATION_TYPES)
    assert set(explorer.parameters) == set(PARAMETER_SPECS)
    assert explorer.preset.value == "original_guide" and explorer.config == PRESETS["original_guide"]
    assert decoded(explorer.degraded_image.value).size == (RESOLUTION, RESOLUTION)
    assert explorer._repr_mimebundle_()["application/vnd.jupyter.widget-view+json"]["model_id"]


def test_moving_a_slider_changes_the_preview_and_the_flags(explorer):
    clean, degraded = explorer.clean_image.value, explorer.degraded_image.value
    explorer.parameters["noise_level"].single.value = 0.2
    assert explorer.degraded_image.value != degraded
    assert explorer.clean_image.value == clean
    assert "--noise_level 0.2" in explorer.flags_view.value
    assert explorer.result.config.noise_level == 0.2
    assert explorer.preset.value == "custom"  # no longer the original_guide preset


def test_same_seed_gives_identical_bytes(explorer):
    first = explorer.degraded_image.value
    explorer.seed.value = 1
    assert explorer.degraded_image.value != first
    explorer.seed.value = 0
    assert explorer.degraded_image.value == first
    explorer.next_seed.click()
    assert explorer.seed.value == 1


def test_flags_round_trip_through_the_degrade_parser(explorer):
    explorer.preset.value = "realesrgan"
    explorer.parameters["jpeg_quality"].range_toggle.value = False
    explorer.type_checkboxes["poisson_noise"].value = False
    explorer.type_checkboxes["grain"].value = True
    explorer.probability_sliders["grain"].value = 0.3
    explorer.gray_noise_prob.value = 0.6
    config = explorer.config
    assert config.degradation_types[-1] == "grain"  # ticked last, listed last
    assert explorer.result.config == config
    assert parsed_flags(explorer.result.flags) == config
    assert parsed_flags(shlex.split(explorer.result.flags_text)) == config


def test_preset_dropdown_fills_the_controls(explorer):
    explorer.preset.value = "old_photo"
    preset = PRESETS["old_photo"]
    assert explorer.config == preset
    assert {op for op, box in explorer.type_checkboxes.items() if box.value} == set(preset.degradation_types)
    fade = explorer.parameters["fade_strength"]
    assert fade.range_toggle.value and fade.range.value == (0.2, 0.7)
    assert "remove scratches" in explorer.prompt_view.value or "remove dust" in explorer.prompt_view.value

    explorer.preset.value = "realesrgan"
    assert explorer.config == PRESETS["realesrgan"]
    assert explorer.degradation_order.value == "listed"
    assert explorer.probability_sliders["noise"].value == 0.5
    assert DegradationConfig.from_dict(json.loads(explorer.second_order_json.value)) == PRESETS[
        "realesrgan"
    ].second_order

    explorer.preset.value = "none"
    assert not any(box.value for box in explorer.type_checkboxes.values())
    assert explorer.second_order_json.value == ""
    assert decoded(explorer.degraded_image.value).tobytes() == decoded(explorer.clean_image.value).tobytes()


def test_set_config_keeps_exact_values(explorer):
    config = DegradationConfig(
        degradation_types="blur,noise",
        degradation_order="listed",
        noise_level=(0.1 + 0.2, 0.4),
        blur_radius=60 / 7,  # beyond the slider's default limit of 8 px
        second_order=DegradationConfig(degradation_types="jpeg", jpeg_quality=(40, 80)),
        second_order_prob=0.25,
    )
    explorer.set_config(config)
    assert explorer.config == config
    assert explorer.result.config == config
    assert explorer.preset.value == "custom"


def test_invalid_second_order_shows_an_error_and_keeps_the_preview(explorer):
    shown = explorer.degraded_image.value
    explorer.second_order_json.value = '{"lr_scale": 500}'
    assert "second order" in explorer.status.value and "lr_scale" in explorer.status.value
    assert explorer.degraded_image.value == shown
    with pytest.raises(ValueError):
        explorer.config
    explorer.second_order_json.value = ""
    assert "PSNR" in explorer.status.value


def test_resolution_and_zoom_controls(explorer):
    explorer.resolution.value = 0  # the photo's own size
    assert decoded(explorer.clean_image.value).size == load_rgb(explorer.photo.value).size
    explorer.zoom.value = 1
    assert explorer.clean_zoom_image.layout.display == "none"
    explorer.zoom.value = 2
    assert explorer.clean_zoom_image.layout.display is None
    before = explorer.clean_zoom_image.value
    explorer.zoom_x.value = 0.1
    assert explorer.clean_zoom_image.value != before


def test_export_button_writes_json_and_never_overwrites_silently(explorer, tmp_path):
    path = tmp_path / "recipe.json"
    explorer.export_path.value = str(path)
    explorer.export_button.click()
    assert DegradationConfig.from_dict(json.loads(path.read_text())) == PRESETS["original_guide"]
    assert "wrote" in explorer.export_message.value

    explorer.preset.value = "old_photo"
    assert explorer.export() is None
    assert "already exists" in explorer.export_message.value
    assert DegradationConfig.from_dict(json.loads(path.read_text())) == PRESETS["original_guide"]

    explorer.export_overwrite.value = True
    assert explorer.export() == path
    assert DegradationConfig.from_dict(json.loads(path.read_text())) == PRESETS["old_photo"]


def test_explorer_options(data_samples):
    explorer = DegradationExplorer(
        photos=[data_samples / "astronaut.jpg", data_samples / "held_out" / "flower.jpg"],
        image="flower.jpg",
        preset="old_photo",
        seed=5,
        resolution=RESOLUTION,
        zoom=3,
    )
    assert explorer.photo.label == "flower.jpg"
    assert explorer.config == PRESETS["old_photo"] and explorer.preset.value == "old_photo"
    assert explorer.result.seed == 5 and explorer.zoom.value == 3
    old_name = DegradationExplorer(photos=data_samples, preset="seed", resolution=RESOLUTION)  # "seed": the old name
    assert old_name.config == PRESETS["original_guide"] and old_name.preset.value == "original_guide"
    with pytest.raises(ValueError, match="not among"):
        DegradationExplorer(photos=data_samples, image="missing.jpg", resolution=RESOLUTION)
    with pytest.raises(ValueError, match="either config or preset"):
        DegradationExplorer(photos=data_samples, config=PRESETS["original_guide"], preset="original_guide")


def test_picture_is_the_explorers_views_as_one_image(explorer):
    # the static picture shown where the widget is not live must be the views the widget shows
    result = explorer.render()
    picture = np.asarray(explorer.picture())
    degraded = np.asarray(Image.open(io.BytesIO(result.degraded_png)).convert("RGB"))
    height, width = degraded.shape[:2]
    assert picture.shape[1] == 2 * width + 4
    assert np.array_equal(picture[:height, width + 4:], degraded)
    explorer.zoom.value = 1
    assert np.asarray(explorer.picture()).shape[0] == height  # no zoom: no row of crops
