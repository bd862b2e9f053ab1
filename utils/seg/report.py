"""The check's outputs: per-case rows summarised per version and convention, the completed/real ratio, a figure."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from utils.eval.metrics import summarize_values
from utils.eval.plots import plt, save_figure
from utils.seg.cases import VERSIONS
from utils.seg.labels import CONVENTIONS, REGIONS


def metric_columns() -> list[str]:
    """dice_WT, dice_TC, dice_ET, hd95_WT, hd95_TC, hd95_ET."""
    return [f"{m}_{r}" for m in ("dice", "hd95") for r in REGIONS]


def _groups(rows: list[dict]) -> dict[str, list[dict]]:
    """All rows, and the rows of each dropped contrast when the cases lack more than one."""
    groups = {"all": rows}
    missing = sorted({r["missing"] for r in rows})
    if len(missing) > 1:
        groups.update({m: [r for r in rows if r["missing"] == m] for m in missing})
    return groups


def _ratio(completed: float | None, real: float | None) -> float | None:
    """completed / real, or None when either is missing or real is 0."""
    return completed / real if completed is not None and real else None


def summarise(rows: list[dict]) -> dict:
    """{group: {convention: {version: {column: mean/std/n}}, ratio_completed_to_real: {convention: {dice_R: r}}}}."""
    out = {}
    for group, members in _groups(rows).items():
        block: dict = {"cases": len({r["case"] for r in members})}
        for convention in CONVENTIONS:
            block[convention] = {v: {col: summarize_values(r[col] for r in members if r["version"] == v
                                                            and r["convention"] == convention).as_dict()
                                     for col in metric_columns()} for v in VERSIONS}
        block["ratio_completed_to_real"] = {
            c: {f"dice_{r}": _ratio(block[c]["completed"][f"dice_{r}"]["mean"], block[c]["real"][f"dice_{r}"]["mean"])
                for r in REGIONS} for c in CONVENTIONS}
        out[group] = block
    return out


def table(summary: dict) -> str:
    """Mean Dice and HD95 of every version (all cases), one block per label convention, and the ratio."""
    block = summary["all"]
    lines = []
    for convention in CONVENTIONS:
        lines.append(f"  {convention} labels" + "".join(f"{col:>10}" for col in metric_columns()))
        for version in VERSIONS:
            cells = [block[convention][version][col]["mean"] for col in metric_columns()]
            lines.append(f"  {version:12}" + "".join(f"{c:>10.3f}" if c is not None else f"{'n/a':>10}"
                                                     for c in cells))
        ratios = block["ratio_completed_to_real"][convention]
        lines.append("  completed/real Dice: " + ", ".join(
            f"{r} {ratios[f'dice_{r}']:.3f}" if ratios[f"dice_{r}"] is not None else f"{r} n/a" for r in REGIONS))
    return "\n".join(lines)


def plot_dice(summary: dict, path: Path) -> None:
    """Bars of the mean Dice (± std over cases) per region and input version, one panel per label convention."""
    block = summary["all"]
    fig, axes = plt.subplots(1, len(CONVENTIONS), figsize=(5.2 * len(CONVENTIONS), 3.6), squeeze=False)
    width = 0.8 / len(VERSIONS)
    x = np.arange(len(REGIONS))
    for ax, convention in zip(axes[0], CONVENTIONS):
        for k, version in enumerate(VERSIONS):
            stats = [block[convention][version][f"dice_{r}"] for r in REGIONS]
            means = [s["mean"] if s["mean"] is not None else math.nan for s in stats]
            stds = [s["std"] if s["std"] is not None else 0.0 for s in stats]
            ax.bar(x + (k - (len(VERSIONS) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=version)
        ax.set_xticks(x, list(REGIONS))
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("Dice")
        ax.set_title(f"BraTS {convention} labels ({block['cases']} cases)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8, ncol=4, loc="upper center")
    save_figure(fig, path, dpi=110)
