"""Training curves and sample grids as PNG files (written atomically)."""
from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot is imported)
import numpy as np  # noqa: E402

from utils.core.fileio import atomic_path  # noqa: E402


def save_figure(fig: plt.Figure, path: str | os.PathLike, dpi: int) -> None:
    """Lay the figure out, write it atomically as PNG, and free it."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    plt.close(fig)


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over `window` points, ignoring NaN (the first points average what exists so far)."""
    data = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(data)
    sums = np.cumsum(np.where(finite, data, 0.0))
    counts = np.cumsum(finite)
    sums[window:] = sums[window:] - sums[:-window]
    counts[window:] = counts[window:] - counts[:-window]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def plot_curves(steps: Sequence[float], losses: Mapping[str, Sequence[float]], epochs: Sequence[float],
                metrics: Mapping[str, Sequence[float]], path: str | os.PathLike) -> None:
    """Save one panel per loss term (per iteration, with a moving average) and per validation metric (per epoch)."""
    panels = [(name, "iteration", steps, values) for name, values in losses.items()]
    panels += [(f"val {name}", "epoch", epochs, values) for name, values in metrics.items()]
    cols = 4
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    window = max(1, len(steps) // 50)
    for ax, (title, xlabel, x, y) in zip(axes.flat, panels):
        # Terms logged only on some iterations (the lazy R1 penalty) are NaN elsewhere: plot the logged points.
        y = np.asarray(y, dtype=np.float64)
        finite = np.isfinite(y)
        x, y = np.asarray(x, dtype=np.float64)[finite], y[finite]
        if xlabel == "iteration":
            ax.plot(x, y, lw=0.5, alpha=0.35, color="tab:blue")
            ax.plot(x, moving_average(y, max(1, min(window, len(y) // 10))), lw=1.2, color="tab:blue")
        else:
            ax.plot(x, y, marker="o", ms=3, color="tab:orange")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    save_figure(fig, path, 90)


def save_sample_grid(columns: Mapping[str, np.ndarray], path: str | os.PathLike, title: str = "") -> None:
    """Save a grid with one row per slice and one column per named image stack (N, H, W) in [0, 1]."""
    names = list(columns)
    count = min(len(v) for v in columns.values())
    fig, axes = plt.subplots(count, len(names), figsize=(2.0 * len(names), 2.0 * count + 0.4), squeeze=False)
    for col, name in enumerate(names):
        for row in range(count):
            ax = axes[row, col]
            ax.imshow(np.clip(columns[name][row], 0.0, 1.0), cmap="gray", vmin=0.0, vmax=1.0,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, path, 80)
