"""The loss curve the training loop saves and the notebook redraws live."""

import io
import shlex

import numpy as np
from PIL import Image

from kontext_lora_helpers.degradations import DegradationConfig
from kontext_lora_helpers.train import TrainConfig, command_line, parse_args
from kontext_lora_helpers.viz_training import LiveTrainingPlot, loss_curve_figure, moving_average


def test_moving_average_of_a_ramp():
    assert np.allclose(moving_average([0, 1, 2, 3, 4], 3), [1, 2, 3])


def test_loss_curve_has_loss_average_and_validation_lines():
    steps = list(range(1, 41))
    figure = loss_curve_figure(steps, [1.0 / s for s in steps], [{"step": 20, "psnr": 24.0}, {"step": 40, "psnr": 25.0}])
    loss_axis, psnr_axis = figure.axes
    assert len(loss_axis.lines) == 2  # per step and its moving average
    assert list(psnr_axis.lines[0].get_ydata()) == [24.0, 25.0]


def test_live_plot_redraws_every_n_steps_and_after_validation(monkeypatch):
    shown = []

    class Handle:
        def update(self, picture):
            shown.append(picture)

    def fake_display(picture, display_id=False):
        shown.append(picture)
        return Handle()

    monkeypatch.setattr("IPython.display.display", fake_display)
    live = LiveTrainingPlot(every=5, total_steps=10)
    for step in range(1, 11):
        live.on_step({"step": step, "loss": 1.0 / step, "lr": 1e-3})
    assert len(shown) == 2  # steps 5 and 10
    live.on_validation({"step": 10, "psnr": 25.5, "ssim": 0.7})
    assert len(shown) == 3
    assert "step 10 / 10" in live.title() and "25.50 dB" in live.title()
    assert Image.open(io.BytesIO(shown[-1].data)).format == "PNG"


def test_command_line_round_trips_through_the_parser():
    config = TrainConfig(
        hr_root="data_samples", output_dir="outputs/x", learning_rate=3e-4, lora_alpha=8.0,
        gradient_checkpointing=True, perceptual_loss=True,
        degradation=DegradationConfig(degradation_types=["downsample", "noise", "blur"], lr_scale=2,
                                      noise_level=0.1, blur_radius=0.5),
    )
    command = command_line(config)
    assert command.startswith("python -m kontext_lora_helpers.train --pretrained_model_name_or_path nano")
    assert "--perceptual_loss" in command and "--max_train_steps" not in command  # defaults are left out
    assert parse_args(shlex.split(command)[3:]) == config


def test_metrics_table_reads_metrics_json():
    from kontext_lora_helpers.viz_training import metrics_table

    metrics = {"num_images": 4, "resolution": 64, "num_inference_steps": 20, "guidance_scale": 3.5,
               "degraded": {"psnr": 22.26, "ssim": 0.547}, "base": {"psnr": 24.08, "ssim": 0.71},
               "lora": {"psnr": 25.9, "ssim": 0.8}, "lora_gain_over_base_db": 1.82, "lora_gain_over_degraded_db": 3.64}
    table = metrics_table(metrics)
    assert "| base + LoRA | 25.90 | 0.800 |" in table and "LoRA vs base: +1.82 dB" in table
