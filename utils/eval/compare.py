"""Side-by-side scores of a synthesis and its baselines (the quickstart's table and the quality benchmark's)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from utils.core.artifacts import output_stack
from utils.core.errors import UserError
from utils.eval.metrics import Summary, plain_metrics, summarize, summarize_values
from utils.eval.results import evaluate_set, load_results_folder

# Rows of the comparison table: (key, title). brain_plain is the plain metric restricted to the brain mask.
TABLE_ROWS = (
    ("brain_plain", "inside the brain, plain [0, 1] (no rescaling)"),
    ("brain", "whole brain, paper protocol"),
    ("lesion", "lesion, paper protocol"),
    ("plain", "whole slice, plain [0, 1]"),
)


def score_folder(folder: str | Path) -> dict[str, Summary]:
    """Every protocol's summary for a folder test.py wrote: `<protocol>_<metric>` keys, plus `brain_plain_*`."""
    data = load_results_folder(folder)
    summary = summarize(evaluate_set(data, progress=False))
    if data.brain_masks is not None:
        masked = [plain_metrics(r, s, m) for r, s, m in zip(data.real, data.synth, data.brain_masks)]
        for metric in ("psnr", "ssim", "mae"):
            summary[f"brain_plain_{metric}"] = summarize_values(row[metric] for row in masked)
    return summary


# Truth above the linear baseline by more than this (on the [0, 1] scale test.py writes) counts as enhancement the
# conditions do not show pixel by pixel: on the phantom, the enhancing rim.
ENHANCEMENT_THRESHOLD = 0.1


def enhancement_drawn(folder: str | Path, baseline: str | Path, threshold: float = ENHANCEMENT_THRESHOLD
                      ) -> float | None:
    """Share of the enhancement a synthesis draws: mean(synth - linear) / mean(truth - linear) over the pixels where
    the truth exceeds the linear baseline by more than `threshold` (0: none of it, like the baseline; 1: all of it);
    None when no pixel does (no enhancing lesion in these slices)."""
    synth, real = np.load(Path(folder) / output_stack("synth")), np.load(Path(folder) / output_stack("real"))
    linear = np.load(Path(baseline) / output_stack("synth"))
    if linear.shape != real.shape:
        raise UserError(f"{baseline} holds {len(linear)} slices and {folder} {len(real)}: synthesise the same split")
    enhanced = (real - linear) > threshold
    if not enhanced.any():
        return None
    return float((synth - linear)[enhanced].mean() / (real - linear)[enhanced].mean())


def comparison_table(scores: Mapping[str, Mapping[str, Summary]], metrics: Sequence[str] = ("psnr", "ssim")
                     ) -> str:
    """A text table: one line per (protocol, method) with the mean ± std of each metric."""
    lines = [f"{'':48s}" + "".join(f"{m.upper():>18s}" for m in metrics)]
    for key, title in TABLE_ROWS:
        if not any(f"{key}_{metrics[0]}" in s for s in scores.values()):
            continue
        lines.append(title)
        for method, summary in scores.items():
            cells = "".join(f"{str(summary.get(f'{key}_{m}', 'n/a')):>18s}" for m in metrics)
            lines.append(f"  {method:46s}{cells}")
    return "\n".join(lines)


def as_json(scores: Mapping[str, Mapping[str, Summary]]) -> dict:
    """The comparison as plain JSON types."""
    return {method: {k: v.as_dict() for k, v in summary.items()} for method, summary in scores.items()}


def max_swing(values: Sequence[float], skip_fraction: float = 0.25) -> float:
    """Largest change between consecutive values after the first `skip_fraction` of them (NaN if fewer than 2)."""
    tail = np.asarray(values[int(len(values) * skip_fraction):], dtype=np.float64)
    return float(np.abs(np.diff(tail)).max()) if tail.size >= 2 else float("nan")
