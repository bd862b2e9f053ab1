"""brasyn.py score: whole-volume SSIM/PSNR of completed cases against the held-back truth."""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage.metrics import structural_similarity
from tqdm import tqdm

from utils.brasyn.cases import (
    BASELINE_SOURCE,
    case_folders,
    pair_with_completed,
    read_case_folder,
    same_grid,
)
from utils.brasyn.complete import REPORT_NAME
from utils.core.errors import UserError
from utils.core.fileio import load_json, save_csv, save_json
from utils.data.brain import brain_mask
from utils.data.layouts import BRATS_CONTRASTS, Case
from utils.data.nifti_io import load_case_volume, load_label
from utils.eval.coherence import (
    COHERENCE_COLUMNS,
    COHERENCE_METRICS,
    RANGE_COLUMNS,
    coherence_metrics,
)
from utils.eval.metrics import SSIM_WINDOW, percentile_minmax, psnr, summarize_values

METRICS_NAME = "volume_metrics"  # score: <out>/volume_metrics.{csv,json}


REGIONS = ("brain", "tumour", "outside_tumour")


VOLUME_METRICS = {
    "normalisation": "each volume (truth and synthesis) separately, as pre_process.py normalises its inputs: clip to "
                     "the 1st/99th percentile of its voxels > 0, then min-max to [0, 1]",
    "brain": "voxels that are non-zero in any of the case's three acquired images (the mask the synthesis fills)",
    "tumour": "voxels of the brain with segmentation label > 0 (any tumour region, either label set)",
    "outside_tumour": "brain voxels with label 0",
    "ssim_<region>": "scikit-image structural_similarity of the 3-D volumes (7x7x7 uniform window, data_range 1, "
                     "K1 0.01, K2 0.03); its SSIM map averaged over the region's voxels",
    "psnr_<region>": "10 log10(1 / MSE) in dB, MSE over the region's voxels (data_range 1); inf when identical",
    "baseline_<metric>": "the same metric for the case's acquired image of the most similar contrast (T1 for T1ce, "
                         "T1ce for T1, FLAIR for T2, T2 for FLAIR), normalised the same way: no learning, no truth",
}


def _grown_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The mask's bounding box grown by `margin` voxels on every side, inside the volume."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + margin + 1, mask.shape[axis])))
    return tuple(box)


def volume_metrics(truth: np.ndarray, synth: np.ndarray, brain: np.ndarray, tumour: np.ndarray | None
                   ) -> dict[str, float]:
    """SSIM and PSNR per region (VOLUME_METRICS) of a synthesised volume against the truth; NaN for an empty region."""
    if min(truth.shape) < SSIM_WINDOW or not brain.any():
        raise ValueError(f"volumes of shape {truth.shape} (brain voxels: {int(brain.sum())}) cannot be scored")
    truth01, synth01 = percentile_minmax(truth), percentile_minmax(synth)
    # Voxels more than half a window outside the brain cannot reach a brain voxel's SSIM window: leave them out.
    box = _grown_box(brain, SSIM_WINDOW // 2)
    if any(s.stop - s.start < SSIM_WINDOW for s in box):
        box = tuple(slice(0, n) for n in truth.shape)
    _, ssim_map = structural_similarity(synth01[box], truth01[box], data_range=1.0, win_size=SSIM_WINDOW, full=True)
    tumour = np.zeros_like(brain) if tumour is None else tumour & brain
    masks = {"brain": brain, "tumour": tumour, "outside_tumour": brain & ~tumour}
    result = {}
    for region, mask in masks.items():
        inside = mask[box]
        result[f"ssim_{region}"] = float(ssim_map[inside].mean()) if inside.any() else math.nan
        result[f"psnr_{region}"] = psnr(truth01[box][inside], synth01[box][inside], 1.0) if inside.any() else math.nan
    return result


@dataclass
class ScoreJob:
    """One synthesis to score: the truth case's image and seg, and the completed case."""

    name: str
    contrast: str
    truth: Path
    done: Case
    label: Path | None


def _score_job(truth_case: Case, completed: Path) -> ScoreJob:
    """Pair a truth case with its completed folder, checking files and grids (headers only) before any scoring."""
    pair = pair_with_completed(truth_case, completed)
    name, contrast, done = pair.name, pair.contrast, pair.done
    if contrast not in done.images or len(done.images) < 2:
        raise UserError(f"completed case {name} in {done.folder} lacks the {contrast} synthesis or the acquired "
                        "images; run brasyn.py complete on it")
    job = ScoreJob(name, contrast, pair.truth_image, done, pair.label or done.label)
    files = {f"truth {contrast}": pair.truth_image, **{f"completed {c}": p for c, p in done.images.items()},
             **({"seg": job.label} if job.label else {})}
    shape = same_grid(name, files)
    if min(shape) < SSIM_WINDOW:
        raise UserError(f"case {name}: volumes of shape {'x'.join(map(str, shape))} are smaller than SSIM's "
                        f"{SSIM_WINDOW}-voxel window on some axis; score volumes at least {SSIM_WINDOW} voxels wide")
    return job


def trained_ranges(completed: Path) -> dict[str, list[int]]:
    """{target contrast: [first, last] trained axial slice} from complete's report in `completed`, where recorded."""
    report = completed / f"{REPORT_NAME}.json"
    if not report.exists():
        return {}
    models = load_json(report, "rerun brasyn.py complete, which writes it").get("models", {})
    return {target: model["train_slice_range"] for target, model in models.items()
            if isinstance(model.get("train_slice_range"), list)}


def _coherence(truth: np.ndarray, synth: np.ndarray, brain: np.ndarray, resolution: int | None,
               trained: list[int] | None) -> dict[str, float]:
    """COHERENCE_METRICS of a synthesis, both volumes normalised as for volume_metrics."""
    return coherence_metrics(percentile_minmax(truth), percentile_minmax(synth), brain, resolution, trained)


def _score_case(job: ScoreJob, resolution: int | None = None, trained: list[int] | None = None) -> dict:
    """One row of volume_metrics.csv: the synthesis against the truth, and the baseline against it."""
    truth = load_case_volume(job.truth, f"truth {job.name} {job.contrast}")[0]
    synth = load_case_volume(job.done.images[job.contrast], f"completed {job.name} {job.contrast}")[0]
    acquired = {c: load_case_volume(p, f"completed {job.name} {c}")[0] for c, p in job.done.images.items()
                if c != job.contrast}
    tumour = None if job.label is None else load_label(job.label, f"case {job.name} seg") > 0
    brain = brain_mask(list(acquired.values()))
    metrics = volume_metrics(truth, synth, brain, tumour)
    source = BASELINE_SOURCE[job.contrast]
    baseline = volume_metrics(truth, acquired[source], brain, tumour) if source in acquired else {}
    # Appended after the original columns, so those keep their places.
    coherence = _coherence(truth, synth, brain, resolution, trained)
    base_coherence = _coherence(truth, acquired[source], brain, resolution, trained) if source in acquired else {}
    return {"case": job.name, "contrast": job.contrast, "file": job.done.images[job.contrast].name,
            "seg": job.label.name if job.label else "", "brain_voxels": int(brain.sum()),
            "tumour_voxels": int((tumour & brain).sum()) if tumour is not None else "", **metrics,
            "baseline": source, **{f"baseline_{k}": baseline.get(k, math.nan) for k in metrics}, **coherence,
            **{f"baseline_{k}": base_coherence.get(k, math.nan) for k in coherence}}


def _metric_columns() -> list[str]:
    """ssim_brain, psnr_brain, ssim_tumour, ..., the coherence columns, then the same for the baseline."""
    plain = [f"{m}_{r}" for r in REGIONS for m in ("ssim", "psnr")] + list(COHERENCE_COLUMNS) + list(RANGE_COLUMNS)
    return plain + [f"baseline_{c}" for c in plain]


def _summary(rows: list[dict]) -> dict:
    """mean ± std (and counts) of every metric column, over all cases and per synthesised contrast."""
    groups = {"all": rows}
    groups.update({c: [r for r in rows if r["contrast"] == c] for c in BRATS_CONTRASTS
                   if any(r["contrast"] == c for r in rows)})
    return {group: {"cases": len(members),
                    **{col: summarize_values(r[col] for r in members).as_dict() for col in _metric_columns()}}
            for group, members in groups.items()}


def _table(summary: dict) -> str:
    """The summary as a printed table: one line per metric, one column per group."""
    groups = list(summary)
    titles = [f"{g} ({summary[g]['cases']})" for g in groups]
    width = max(28, *map(len, _metric_columns()))
    lines = [" " * (width + 2) + "".join(f"{t:>18}" for t in titles)]
    for col in _metric_columns():
        cells = []
        for g in groups:
            s = summary[g][col]
            cells.append(f"{s['mean']:.3f} ± {s['std']:.3f}" if s["mean"] is not None else "n/a")
        lines.append(f"  {col:{width}}" + "".join(f"{c:>18}" for c in cells))
    return "\n".join(lines)


def score_cases(args: argparse.Namespace) -> list[dict]:
    """Volume metrics of every truth case's synthesis: <out>/volume_metrics.csv (per case) and .json (summary)."""
    truth_root, completed, out = Path(args.truth), Path(args.completed), Path(args.out)
    if not completed.is_dir():
        raise UserError(f"--completed {completed} is not a folder")
    resolution = args.model_resolution
    if resolution is not None and resolution < SSIM_WINDOW:
        raise UserError(f"--model_resolution {resolution} is below SSIM's {SSIM_WINDOW}-pixel window; give the "
                        "model's --image_size (e.g. 64 or 256)")
    if args.slice_range is not None and not 0 <= args.slice_range[0] <= args.slice_range[1]:
        raise UserError(f"--slice_range {args.slice_range[0]} {args.slice_range[1]}: give FIRST <= LAST, both >= 0")
    jobs = [_score_job(read_case_folder(f), completed) for f in case_folders(truth_root, "--truth")]
    # A range given by hand serves every contrast; the report is read only without one.
    trained = (dict.fromkeys(BRATS_CONTRASTS, list(args.slice_range)) if args.slice_range is not None
               else trained_ranges(completed))
    with tqdm(jobs, desc="scoring", unit="case") as bar:
        rows = [_score_case(job, resolution, trained.get(job.contrast)) for job in bar]
    summary = _summary(rows)
    save_csv(rows, out / f"{METRICS_NAME}.csv")
    save_json({"definitions": {**VOLUME_METRICS, **COHERENCE_METRICS},
               "coherence_resolution": resolution or "native", "summary": summary}, out / f"{METRICS_NAME}.json")
    print(f"volume metrics of {len(rows)} synthesised volumes (mean ± std over cases; SSIM, PSNR in dB):")
    print(_table(summary))
    print(f"per case: {out / METRICS_NAME}.csv; summary and definitions: {out / METRICS_NAME}.json")
    return rows
