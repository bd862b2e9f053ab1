"""metric_calc.py's job: score a results folder (or image folders), print the table, write CSV/JSON/figure."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import skimage
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from utils.core.artifacts import METRICS_CSV, METRICS_FIGURE, METRICS_JSON
from utils.core.errors import UserError
from utils.core.fileio import atomic_path, save_csv, save_json, save_npy
from utils.core.options import ArgumentParser
from utils.eval.metrics import METRICS, PROTOCOL_TITLES, PROTOCOLS, Summary, metric_columns, summarize
from utils.eval.results import EvalSet, evaluate_set, load_image_dirs, load_results_folder, resolve_results_folder

METRIC_TITLES = {"psnr": "PSNR (dB)", "ssim": "SSIM", "mae": "MAE"}
PROTOCOL_NOTES = {
    "paper": ("paper protocol = the original pipeline without its JPEG: float images first go through the original "
              "test.py's saving step (x / mean(x), min-max, x*255 + 0.5 truncated to 8 bits; 8-bit files are taken "
              "as such images already), then the original metric_calc.py: per image 1/99 percentile clip of the "
              "non-zero pixels and min-max to [0, 1]; x / mean(x); mask bounding box grown to >= 7x7; crop and "
              "multiply by the mask; SSIM and PSNR on the mean-normalised crops with data_range = joint max - min; "
              "MAE on the [0, 1] crops; slices with an empty mask are skipped (NaN)."),
    "plain": "plain = the [0, 1] images as given, whole image, SSIM/PSNR with data_range = 1, MAE.",
}

def load_inputs(args: argparse.Namespace) -> tuple[EvalSet, Path]:
    """The slices to score and the output folder, from either calling form."""
    if args.results_folder and (args.real or args.synth or args.mask or args.lesion_mask):
        raise UserError("give either a results folder or --real/--synth (with --mask/--lesion_mask), not both")
    if args.results_folder:
        folder = resolve_results_folder(args.results_folder)
        return load_results_folder(folder), Path(args.out) if args.out else folder / "metrics"
    if not (args.real and args.synth):
        raise UserError("give a results folder written by test.py, or both --real DIR and --synth DIR")
    data = load_image_dirs(args.real, args.synth, args.mask, args.lesion_mask)
    return data, Path(args.out) if args.out else Path(args.synth) / "metrics"


def format_table(summaries: dict[str, Summary], data: EvalSet) -> str:
    """The paper-style table (mean ± std per metric and protocol) with notes on protocols and infinite PSNR."""
    count = len(data.names)
    lines = [f"{count} slice pairs from {data.source}; SSIM and PSNR computed with scikit-image "
             f"{skimage.__version__} (structural_similarity, peak_signal_noise_ratio).",
             f"{'':44}" + "".join(f"{METRIC_TITLES[m]:>18}" for m in METRICS) + "   slices scored"]
    notes = []
    for protocol in PROTOCOLS:
        columns = [f"{protocol}_{m}" for m in METRICS]
        if columns[0] not in summaries:
            continue
        cells = "".join(f"{str(summaries[c]):>18}" for c in columns)
        skipped = summaries[columns[0]].n_nan
        scored = f"{count - skipped} of {count}" + (f" ({skipped} empty masks skipped)" if skipped else "")
        lines.append(f"{PROTOCOL_TITLES[protocol]:44}{cells}   {scored}")
        n_inf = summaries[f"{protocol}_psnr"].n_inf
        if n_inf:
            notes.append(f"{protocol}: {n_inf} slice(s) with identical images have PSNR = inf, left out of the "
                         "PSNR mean ± std (listed as inf in the CSV).")
    if "brain_psnr" not in summaries:
        notes.append("no brain masks given (--mask): the paper's whole-brain protocol was not computed.")
    used = ["paper"] if any(f"{p}_psnr" in summaries for p in ("brain", "lesion")) else []
    notes += [PROTOCOL_NOTES[key] for key in used + ["plain"]]
    return "\n".join(lines + ["Notes:"] + [f"  - {note}" for note in notes])


def write_figure(rows: list[dict[str, Any]], path: Path) -> None:
    """One violin plot per metric, one violin per protocol, over the finite per-slice values."""
    protocols = [p for p in PROTOCOLS if rows and f"{p}_psnr" in rows[0]]
    figure = Figure(figsize=(4.2 * len(METRICS), 3.6), layout="constrained")
    FigureCanvasAgg(figure)
    for axis, metric in zip(figure.subplots(1, len(METRICS)), METRICS):
        values = [np.array([r[f"{p}_{metric}"] for r in rows], dtype=np.float64) for p in protocols]
        values = [v[np.isfinite(v)] for v in values]
        positions = [i for i, v in enumerate(values) if v.size]
        if positions:
            axis.violinplot([values[i] for i in positions], positions=positions, showmeans=True)
        axis.set_xticks(range(len(protocols)), protocols)
        axis.set_title(METRIC_TITLES[metric])
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle(f"Per-slice metric distributions ({len(rows)} slices)")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100)


def write_outputs(rows: list[dict[str, Any]], summaries: dict[str, Summary], data: EvalSet, out: Path) -> list[Path]:
    """CSV, JSON, figure and the original script's per-slice .npy files (brain: *_values.npy, lesion: *_lesion)."""
    out.mkdir(parents=True, exist_ok=True)
    # One row per slice (nan = empty mask, inf = identical images).
    save_csv(rows, out / METRICS_CSV, ["index", "name"] + metric_columns(rows))
    save_json({"source": data.source, "n_slices": len(rows), "scikit_image": skimage.__version__,
               "protocol_notes": PROTOCOL_NOTES,
               "metrics": {column: summary.as_dict() for column, summary in summaries.items()}}, out / METRICS_JSON)
    write_figure(rows, out / METRICS_FIGURE)
    written = [out / METRICS_CSV, out / METRICS_JSON, out / METRICS_FIGURE]
    for protocol, suffix in (("brain", ""), ("lesion", "_lesion")):
        if f"{protocol}_psnr" not in summaries:
            continue
        for metric in METRICS:
            path = out / f"{metric}_values{suffix}.npy"
            save_npy(np.array([row[f"{protocol}_{metric}"] for row in rows], dtype=np.float64), path)
            written.append(path)
    return written


def score_and_report(args: argparse.Namespace) -> dict[str, Summary]:
    """Score the slices, print the table, write the files; returns {column: Summary}."""
    data, out = load_inputs(args)
    rows = evaluate_set(data, progress=not args.no_progress)
    summaries = summarize(rows)
    print(format_table(summaries, data))
    written = write_outputs(rows, summaries, data, out)
    print(f"Wrote {', '.join(p.name for p in written)} to {out}")
    return summaries


def metric_parser(description: str | None = None) -> argparse.ArgumentParser:
    """metric_calc.py's parser (defined here so that docs/cli and the tests build the same one)."""
    parser = ArgumentParser("metric_calc.py", description=description)
    parser.add_argument("results_folder", nargs="?", help="folder written by test.py ({output_path}/{exp} or its "
                        "generated_samples/); its .npy stacks are used when present")
    parser.add_argument("--real", help="folder of real images (PNG 8/16-bit, JPEG or .npy)")
    parser.add_argument("--synth", help="folder of synthetic images with the same file names as --real")
    parser.add_argument("--mask", "--brain_mask", dest="mask",
                        help="folder of brain masks (same names) for the whole-brain paper protocol")
    parser.add_argument("--lesion_mask", help="folder of lesion masks (same names) for the lesion-only protocol")
    parser.add_argument("--out", "--output_path", dest="out",
                        help="output folder (default: RESULTS_FOLDER/metrics or SYNTH/metrics)")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return parser
