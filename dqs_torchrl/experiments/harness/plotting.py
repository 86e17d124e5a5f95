"""Learning curves written next to the logs (matplotlib's Agg canvas; pyplot and the global
backend are not touched, so importing this changes nothing for the user's own plots)."""

from __future__ import annotations

import csv
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["agg_figure", "read_eval_csv", "plot_learning_curve"]


def agg_figure(figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """A figure rendered by the Agg canvas, and its one axes: no display, no pyplot, and the
    global backend untouched, whatever backend the user's own plots use.

    Examples:
        >>> fig, ax = agg_figure((2, 2))
        >>> type(fig.canvas).__name__
        'FigureCanvasAgg'
    """
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def read_eval_csv(path: str | Path) -> dict[str, list[float]]:
    """Columns of an `eval.csv` written by the harness, as lists of floats."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    return {k: [float(r[k]) for r in rows] for k in rows[0]}


def plot_learning_curve(eval_csv: str | Path, path: str | Path, title: str = "") -> Path:
    """Plot evaluation return (mean, with min/max over episodes) against frames."""
    data = read_eval_csv(eval_csv)
    fig, ax = agg_figure((5, 3.5))
    if data:
        ax.plot(data["frames"], data["return_mean"], marker="o", label="mean")
        ax.fill_between(
            data["frames"],
            data["return_min"],
            data["return_max"],
            alpha=0.25,
            label="min/max over episodes",
        )
        ax.legend(loc="best")
    ax.set_xlabel("environment frames")
    ax.set_ylabel("evaluation return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)
