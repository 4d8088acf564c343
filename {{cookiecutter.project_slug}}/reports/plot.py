"""The curves of metrics per epoch, one panel per metric and one line per row of the table
(matplotlib, drawn without a display)."""

import difflib
import io
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from reports.run_folder import Run
from reports.table import Row
from utils.errors import InputError, listed


def check_metrics(runs: list[Run], metrics: list[str]) -> None:
    """Refuse a metric that no run logged, naming those they did."""
    logged = list(dict.fromkeys(column for run in runs for column in run.columns if column != "epoch"))
    for metric in metrics:
        if not any(run.curve(metric) for run in runs):
            close = difflib.get_close_matches(metric, logged, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise InputError(f"--plot {metric}: no run logged it; their metrics.csv hold "
                             f"{listed(logged, None) or 'no epochs yet'}{hint}")


def plot_metrics(rows: list[Row], metrics: list[str]) -> Figure:
    """One panel per metric, one line per row in the table's order and colour: a run's value per
    epoch, or a group's mean with a band from its lowest to its highest run (with a few seeds a
    standard deviation says little, and the band shows every run)."""
    figure = Figure(figsize=(8, 0.5 + 3 * len(metrics)), layout="constrained")
    for axes, metric in zip(figure.subplots(len(metrics), 1, squeeze=False)[:, 0], metrics, strict=True):
        for index, row in enumerate(rows):
            curve = row.curve(metric)
            if curve is None:
                continue
            epochs, mean, low, high = curve
            colour = f"C{index % 10}"
            axes.plot(epochs, mean, color=colour, marker="o" if len(epochs) <= 30 else None, markersize=3,
                      label=row.legend)
            if len(row.runs) > 1:
                axes.fill_between(epochs, low, high, color=colour, alpha=0.2, linewidth=0)
        axes.set(title=metric, xlabel="epoch", ylabel=metric)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    return figure


def figure_bytes(figure: Figure, path: Path) -> bytes:
    """The figure as the file `path` names it (.png, .svg, .pdf, ...)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix.lstrip(".").lower(), dpi=120, bbox_inches="tight")  # no label cut off
    return buffer.getvalue()
