"""Pictures of a training run: the loss curve (saved by the training loop, redrawn live in notebooks).

`loss_curve_figure` draws on matplotlib's Agg canvas without pyplot, so the training loop can save
``loss_curve.png`` on a headless GPU server; `LiveTrainingPlot` redraws the same figure in a notebook
while `train.train` runs, through its ``on_step`` / ``on_validation`` callbacks.
"""

from __future__ import annotations

import io

import numpy as np

__all__ = ["LiveTrainingPlot", "figure_png", "loss_curve_figure", "metrics_table", "moving_average"]


def moving_average(values, window: int) -> np.ndarray:
    """Mean of each run of `window` consecutive values: ``len(values) - window + 1`` floats."""
    values = np.asarray(values, dtype=float)
    return np.convolve(values, np.ones(window) / window, mode="valid")


def loss_curve_figure(steps, losses, validation_history=None, title: str | None = None):
    """The loss per optimizer step, its moving average, and validation PSNR on a second axis.

    Args:
        steps, losses: equal-length sequences (step numbers, flow-matching loss per step).
        validation_history: [{"step": int, "psnr": float dB, ...}, ...] or None.

    Returns:
        a `matplotlib.figure.Figure` on the Agg canvas (no display needed).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 3.5), dpi=100)
    FigureCanvasAgg(figure)
    axis = figure.add_subplot(1, 1, 1)
    steps, losses = list(steps), list(losses)
    axis.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="loss per step")
    if len(losses) >= 5:
        # The per-step loss is dominated by the noise level drawn for the batch; the mean shows the trend.
        window = max(5, len(losses) // 20)
        axis.plot(steps[window - 1:], moving_average(losses, window), color="tab:blue", linewidth=2,
                  label=f"mean of {window}")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("flow-matching loss")
    if losses and min(losses) > 0:
        axis.set_yscale("log")
    axis.grid(alpha=0.3)
    handles, labels = axis.get_legend_handles_labels()
    legend_axis = axis
    if validation_history:
        twin = axis.twinx()  # drawn over the loss axis, so the one legend goes on it
        twin.plot([h["step"] for h in validation_history], [h["psnr"] for h in validation_history],
                  "o-", color="tab:orange", label="validation PSNR")
        twin.set_ylabel("validation PSNR (dB)", color="tab:orange")
        more_handles, more_labels = twin.get_legend_handles_labels()
        handles, labels, legend_axis = handles + more_handles, labels + more_labels, twin
    if handles:
        legend_axis.legend(handles, labels, loc="best", fontsize=8, framealpha=0.9)
    if title:
        axis.set_title(title, fontsize=10)
    figure.tight_layout()
    return figure


def recipe_measurements_figure(measurements):
    """A bar per recipe choice: the PSNR it gained over the best alternative measured.

    Args:
        measurements: `train.NANO_RECIPE_MEASUREMENTS`-like records with setting, chosen,
            alternative and gain_db (low, high) in dB; a range is drawn as an error bar.

    Returns:
        the pyplot ``Figure`` (shown by a notebook cell that ends with it).
    """
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 0.55 * len(measurements) + 1.0))
    labels = [f"{m.setting} {m.chosen}\n(instead of {m.alternative})" for m in measurements]
    middles = [(m.gain_db[0] + m.gain_db[1]) / 2 for m in measurements]
    spreads = [(m.gain_db[1] - m.gain_db[0]) / 2 for m in measurements]
    rows = np.arange(len(measurements))
    axis.barh(rows, middles, xerr=spreads, color="tab:green", alpha=0.8, capsize=3)
    for row, middle, m in zip(rows, middles, measurements):
        low, high = m.gain_db
        text = f"+{low:g} dB" if low == high else f"+{low:g} to +{high:g} dB"
        axis.text(middle + max(middles) * 0.02, row, text, va="center", fontsize=8)
    axis.set_yticks(rows, labels, fontsize=8)
    axis.invert_yaxis()
    axis.set_xlim(0, max(middles) * 1.3)
    axis.set_xlabel("PSNR gained over the alternative (dB, 500-step runs)")
    axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return figure


def figure_png(figure) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def show_figure(figure) -> None:
    """Display a figure made on the Agg canvas (not through pyplot), such as `loss_curve_figure`,
    as a PNG in the notebook; pyplot's figures display by themselves."""
    from IPython.display import Image, display

    display(Image(figure_png(figure)))


class LiveTrainingPlot:
    """A loss curve that redraws itself in a notebook while `train.train` runs.

    Pass its methods as the training callbacks::

        live = LiveTrainingPlot(every=25)
        train(config, on_step=live.on_step, on_validation=live.on_validation, progress_bar=False)

    The picture is one display that is updated in place (``display_id``), so the notebook keeps a
    single figure rather than one per update, and nothing is written to stderr.

    Args:
        every: redraw after every `every` optimizer steps (and after every validation).
        total_steps: shown in the title as "step N / total".
    """

    def __init__(self, every: int = 25, total_steps: int | None = None):
        if every < 1:
            raise ValueError(f"every must be >= 1; got {every}")
        self.every = every
        self.total_steps = total_steps
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.validation_history: list[dict] = []
        self._handle = None

    def on_step(self, record: dict) -> None:
        """`train`'s on_step callback: {"step", "loss", "lr", ...}."""
        self.steps.append(int(record["step"]))
        self.losses.append(float(record["loss"]))
        if record["step"] % self.every == 0:
            self.refresh()

    def on_validation(self, record: dict) -> None:
        """`train`'s on_validation callback: {"step", "psnr", "ssim", ...}."""
        self.validation_history.append({"step": int(record["step"]), "psnr": float(record["psnr"])})
        self.refresh()

    def title(self) -> str:
        step = self.steps[-1] if self.steps else 0
        text = f"step {step}" + (f" / {self.total_steps}" if self.total_steps else "")
        if self.losses:
            text += f"   loss {self.losses[-1]:.4f}"
        if self.validation_history:
            text += f"   validation PSNR {self.validation_history[-1]['psnr']:.2f} dB"
        return text

    def png(self) -> bytes:
        """The current picture as PNG bytes."""
        figure = loss_curve_figure(self.steps, self.losses, self.validation_history, title=self.title())
        return figure_png(figure)

    def refresh(self) -> None:
        """Draw (first call) or update (later calls) the one displayed picture."""
        from IPython.display import Image, display

        picture = Image(data=self.png(), format="png")
        if self._handle is None:
            self._handle = display(picture, display_id=True)
        else:
            self._handle.update(picture)


def metrics_table(metrics: dict) -> str:
    """``metrics.json`` (written by `train.train`) as a markdown table: degraded inputs, the base
    model and the LoRA on the same held-out images, with the LoRA's gains in dB."""
    rows = [("degraded input", metrics["degraded"]), ("base model", metrics["base"]), ("base + LoRA", metrics["lora"])]
    lines = [
        f"| {metrics['num_images']} held-out images at {metrics['resolution']} px | PSNR (dB) | SSIM |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {scores['psnr']:.2f} | {scores['ssim']:.3f} |" for name, scores in rows]
    lines.append(
        f"\nLoRA vs base: {metrics['lora_gain_over_base_db']:+.2f} dB; "
        f"LoRA vs degraded input: {metrics['lora_gain_over_degraded_db']:+.2f} dB "
        f"({metrics['num_inference_steps']} steps, guidance {metrics['guidance_scale']})."
    )
    return "\n".join(lines)
