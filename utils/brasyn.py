"""BraSyn, the BraTS missing-MRI challenge: make validation cases, complete them with trained models, score them.

A BraSyn case folder holds three of the four BraTS images (T1, T1ce, T2, FLAIR) under its release's names
(utils/layouts.py); one modality, different per case, was dropped. brasyn.py's three commands:
* drop_modalities: BraSyn-style cases from complete ones, one modality removed per case (seeded, each candidate
  about equally often); the removed image and the segmentation go to a separate truth folder;
* complete_cases: per case, find the missing modality, synthesise it with the experiment trained for that target
  (utils/nifti.py: the case's shape, affine and header) under the BraTS name of the missing file, and copy the three
  present files beside it, so every output folder is a complete four-contrast case;
* score_cases: SSIM and PSNR of each synthesis against its truth within the brain, the tumour and the rest of the
  brain (VOLUME_METRICS says exactly what each number is).
"""
from __future__ import annotations

import argparse
import csv
import functools
import io
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from skimage.metrics import structural_similarity
from tqdm import tqdm

from utils.data import canonical_contrast
from utils.errors import UserError
from utils.fileio import atomic_path, save_json, save_text
from utils.images import natural_key
from utils.inference import Experiment, experiment_args, load_experiment, seed_everything
from utils.layouts import (BRATS_CONTRASTS, BRATS_NAMINGS, LABEL, NIFTI, Case, brats_folder_files,
                           find_cases, match_brats_file, read_split_files, select_cases)
from utils.metrics import SSIM_WINDOW, percentile_minmax, summarize_values
from utils.nifti import load_case_volume, synthesize_volume
from utils.options import CONFIG_NAME
from utils.preprocessing import check_case, header_shape, load_label

REPORT_NAME = "brasyn_report"  # complete: <out>/brasyn_report.{json,csv}
DROPPED_NAME = "dropped.csv"  # drop: <truth>/dropped.csv
METRICS_NAME = "volume_metrics"  # score: <out>/volume_metrics.{csv,json}
REGIONS = ("brain", "tumour", "outside_tumour")
# A reference that involves no learning and never sees the truth: the acquired image of the most similar contrast.
BASELINE_SOURCE = {"T1ce": "T1", "T1": "T1ce", "T2": "FLAIR", "FLAIR": "T2"}
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


# ------------------------------------------------------------------------------------------------- case folders

def extension(case: Case) -> str:
    """.nii when the case's images are uncompressed, else .nii.gz (BraTS's own)."""
    return ".nii" if all(p.name.lower().endswith(".nii") for p in case.images.values()) else ".nii.gz"


def _examples() -> str:
    """Example BraTS file names of every release, for messages."""
    return " or ".join(n.example.split("/")[-1] for n in BRATS_NAMINGS.values() if n.name != "brats2019")


def read_case_folder(folder: Path) -> Case:
    """A case folder's BraTS files (the case id from their names); UserError for any other file or two cases' files."""
    files, naming = brats_folder_files(folder, list(BRATS_NAMINGS.values()))
    named = set(files.values())
    unknown = [p.name for p in sorted(folder.iterdir()) if not p.name.startswith(".") and p not in named]
    if unknown:
        raise UserError(f"case {folder.name}: unknown file {unknown[0]} in {folder} (a case folder holds only "
                        f"BraTS images and seg named like {_examples()}); move it out of the folder")
    if naming is None:
        raise UserError(f"case {folder.name}: {folder} holds no BraTS images (expected names like {_examples()})")
    ids = sorted({match_brats_file(p.name, [naming])[1] for p in files.values()})
    if len(ids) > 1:
        raise UserError(f"case {folder.name}: {folder} holds files of different cases ({', '.join(ids)}); keep one "
                        "case per folder")
    label = files.pop(LABEL, None)
    names = {k: naming.file_name(ids[0], k) for k in BRATS_CONTRASTS}
    return Case(ids[0], files, label, folder, names, naming.name)


def _and(names: Sequence[str]) -> str:
    """`A`, `A and B`, `A, B and C`."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def missing_modality(case: Case) -> str:
    """The one modality a BraSyn case lacks; UserError when none or several are missing."""
    missing = [c for c in BRATS_CONTRASTS if c not in case.images]
    if len(missing) == 1:
        return missing[0]
    if not missing:
        raise UserError(f"case {case.folder.name}: all four modalities are present in {case.folder}, so none is "
                        "missing; a BraSyn case holds three (take the case out of --input or remove one image)")
    raise UserError(f"case {case.folder.name}: {_and(missing)} are missing from {case.folder}; a BraSyn case lacks "
                    "exactly one modality (add the others or take the case out of --input)")


def case_folders(root: Path, flag: str = "--input") -> list[Path]:
    """`root` itself when it holds NIfTI files (one case), else its sub-folders (the cases), in natural order."""
    if not root.is_dir():
        raise UserError(f"{flag} {root} is not a folder")
    if any(p.is_file() and NIFTI.search(p.name) for p in root.iterdir()):
        return [root]
    folders = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: natural_key(p.name))
    if not folders:
        raise UserError(f"{flag} {root} holds no case folders (and no NIfTI files of one case)")
    return folders


def copy_file(source: Path, dest: Path) -> None:
    """Copy a file byte for byte, atomically (a temporary name beside `dest`, then a rename)."""
    with atomic_path(dest) as tmp:
        shutil.copyfile(source, tmp)


def _csv_text(rows: list[dict]) -> str:
    """Rows as CSV text with a header (the first row's keys)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["case"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def _check_apart(first: tuple[str, Path], second: tuple[str, Path]) -> None:
    """Refuse two folders that are the same or one inside the other (outputs would be read back as cases)."""
    (flag_a, a), (flag_b, b) = first, second
    a, b = a.resolve(), b.resolve()
    if a == b or b in a.parents or a in b.parents:
        raise UserError(f"{flag_a} {first[1]} and {flag_b} {second[1]} overlap; give folders that are not inside "
                        "each other")


# ---------------------------------------------------------------------------------------------------------- drop

def balanced_choice(count: int, candidates: Sequence[str], seed: int) -> list[str]:
    """One candidate per case, each as often as the others (counts differ by one at most), in a seeded order."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(candidates))  # which candidates get the extra case when count is no multiple
    pool = [candidates[order[i % len(candidates)]] for i in range(count)]
    return [pool[i] for i in rng.permutation(count)]


def _candidates(names: Sequence[str] | None) -> list[str]:
    """The modalities --missing allows to drop, canonically spelled."""
    chosen: list[str] = []
    for name in names or BRATS_CONTRASTS:
        canon = canonical_contrast(name)
        match = [c for c in BRATS_CONTRASTS if c.lower() == canon.lower()]
        if not match:
            raise UserError(f"--missing {name}: not a BraTS modality; choose from {', '.join(BRATS_CONTRASTS)}")
        chosen += [m for m in match if m not in chosen]
    return chosen


def _drop_plan(args: argparse.Namespace) -> list[Case]:
    """The complete cases to turn into BraSyn cases (all under --input, or those of --split-file)."""
    root = Path(args.input)
    cases = find_cases(args.layout, root)
    if args.split_file:
        ids = [i for listed in read_split_files(args.split_file).values() for i in listed]
        chosen = select_cases(cases, args.layout, ids, "--split-file", root)
    else:
        chosen = [cases[k] for k in sorted(cases, key=natural_key)]
    for case in chosen:
        absent = [c for c in BRATS_CONTRASTS if c not in case.images]
        if absent:
            raise UserError(f"case {case.case_id} has no {_and(absent)} image in {case.folder} "
                            f"({case.names[absent[0]]} expected); drop needs complete cases: leave it out with "
                            "--split-file")
    return chosen


def _clear_case(folder: Path) -> None:
    """Delete the BraTS files an earlier run left in an output case folder (--overwrite)."""
    if folder.is_dir():
        for path in brats_folder_files(folder, list(BRATS_NAMINGS.values()))[0].values():
            path.unlink()


def drop_modalities(args: argparse.Namespace) -> list[dict]:
    """BraSyn-style validation cases: three images per case in --out, the dropped one and the seg in --truth."""
    out, truth, root = Path(args.out), Path(args.truth), Path(args.input)
    _check_apart(("--out", out), ("--truth", truth))
    _check_apart(("--input", root), ("--out", out))
    _check_apart(("--input", root), ("--truth", truth))
    candidates = _candidates(args.missing)
    cases = _drop_plan(args)
    if not args.overwrite:
        existing = [f for c in cases for f in (out / c.case_id, truth / c.case_id) if f.exists()]
        if existing:
            raise UserError(f"{existing[0]} already exists; pass --overwrite to replace it or choose other folders")
    rows = []
    choices = balanced_choice(len(cases), candidates, args.seed)
    for case, dropped in zip(tqdm(cases, desc="dropping", unit="case"), choices):
        for folder in (out / case.case_id, truth / case.case_id):
            _clear_case(folder)
        for contrast, path in case.images.items():
            copy_file(path, (truth if contrast == dropped else out) / case.case_id / path.name)
        if case.label is not None:
            copy_file(case.label, truth / case.case_id / case.label.name)
        rows.append({"case": case.case_id, "missing": dropped, "file": case.images[dropped].name,
                     "label": case.label.name if case.label else ""})
    save_text(_csv_text(rows), truth / DROPPED_NAME)
    counts = ", ".join(f"{c} {sum(r['missing'] == c for r in rows)}" for c in candidates)
    print(f"{len(rows)} BraSyn cases in {out} (dropped: {counts}, seed {args.seed}); the dropped images and "
          f"segmentations are in {truth}, listed in {truth / DROPPED_NAME}")
    return rows


# ------------------------------------------------------------------------------------------------------ complete

def parse_models(specs: Sequence[str]) -> dict[str, Path]:
    """--models TARGET=EXPERIMENT_FOLDER ... as {canonical target: folder}."""
    models: dict[str, Path] = {}
    for spec in specs:
        target, sep, folder = spec.partition("=")
        contrast = canonical_contrast(target)
        if not sep or not folder or contrast not in BRATS_CONTRASTS:
            raise UserError(f"--models {spec}: expected TARGET=EXPERIMENT_FOLDER with TARGET one of "
                            f"{', '.join(BRATS_CONTRASTS)} (e.g. T1ce=results/exp_t1ce)")
        if contrast in models:
            raise UserError(f"--models gives two experiments for {contrast} ({models[contrast]} and {folder}); "
                            "give one per target")
        models[contrast] = Path(folder)
    return models


def model_options(target: str, exp_dir: Path, args: argparse.Namespace) -> argparse.Namespace:
    """test.py's options of the experiment given for `target` (no weights loaded); it must synthesise `target`."""
    if not exp_dir.is_dir():
        raise UserError(f"--models {target}={exp_dir}: no such experiment folder (train one with train.py "
                        f"--target {target})")
    # Without config.json (the published weights) the README's order for the target is the one they need.
    overrides = {} if (exp_dir / CONFIG_NAME).exists() else {"target": target}
    speed = {k: getattr(args, k) for k in ("amp", "channels_last", "compile", "fast_paths")}
    options = experiment_args(exp_dir, args.epoch, args.device, **overrides, **speed)
    made = canonical_contrast(options.contrasts[3])
    if made != target:
        raise UserError(f"--models {target}={exp_dir}: that experiment synthesises {made} "
                        f"({', '.join(options.contrasts[:3])} -> {made}), not {target}; pass it as {made}={exp_dir}")
    return options


def conditions_of(case: Case, target: str, options: argparse.Namespace) -> list[Path]:
    """The case's files for the experiment's three conditions, in its contrast order; UserError when one is absent."""
    wanted = [canonical_contrast(c) for c in options.contrasts[:3]]
    absent = [c for c in wanted if c not in case.images]
    if absent:
        exp_dir = Path(options.output_path) / options.exp
        raise UserError(f"case {case.folder.name}: the {target} experiment {exp_dir} is conditioned on "
                        f"{', '.join(wanted)}, but the case has no {_and(absent)} (it has "
                        f"{', '.join(case.images)}); give --models {target}= an experiment trained on those three")
    return [case.images[c] for c in wanted]


def _plan_completion(args: argparse.Namespace) -> tuple[list[tuple[Case, str]], dict[str, argparse.Namespace]]:
    """Every case with its missing modality, and the options of each experiment needed; all checked up front."""
    root, out = Path(args.input), Path(args.out)
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be at least 1 (got {args.batch_size})")
    folders = case_folders(root)
    _check_apart(("--input", root), ("--out", out))
    cases = [read_case_folder(f) for f in folders]
    work = [(case, missing_modality(case)) for case in cases]
    for case in cases:
        check_case(case, list(case.images), 1, use_label=True)  # readable 3-D files on one grid
    models = parse_models(args.models)
    options = {target: model_options(target, folder, args) for target, folder in models.items()}
    for case, target in work:
        if target not in options:
            given = ", ".join(models) or "none"
            raise UserError(f"case {case.folder.name} lacks {target}, but --models gives no experiment for {target} "
                            f"(only for {given}); add --models {target}=EXPERIMENT_FOLDER")
        conditions_of(case, target, options[target])
    return work, options


def _model_record(exp: Experiment) -> dict:
    """What the report says about one experiment."""
    return {"experiment": str(Path(exp.args.output_path) / exp.args.exp), "contrasts": exp.contrasts,
            "checkpoints": [str(f) for f in exp.files], "num_timesteps": exp.args.num_timesteps,
            "normalize": exp.args.normalize}


def _report(args: argparse.Namespace, experiments: dict[str, Experiment], rows: list[dict]) -> None:
    """<out>/brasyn_report.json (the run and every case) and .csv (one row a case), written atomically."""
    out = Path(args.out)
    device = next(iter(experiments.values())).device if experiments else None
    record = {"input": str(Path(args.input).resolve()), "out": str(out.resolve()), "seed": args.seed,
              "batch_size": args.batch_size, "device": str(device),
              "models": {t: _model_record(e) for t, e in experiments.items()},
              "intensity": "synthesised volumes: float32 in [0, 1] on the scale of the model's training data "
                           "(models.<target>.normalize: percentile = 1st-99th percentile of the voxels > 0 mapped to "
                           "[0, 1]; median = brain median at 0.2), 0 outside the brain; the acquired images are "
                           "copied unchanged",
              "cases": rows}
    save_json(record, out / f"{REPORT_NAME}.json")
    save_text(_csv_text(rows), out / f"{REPORT_NAME}.csv")


def complete_cases(args: argparse.Namespace) -> list[dict]:
    """Synthesise every case's missing modality and copy its present files into --out/<case>/; returns the rows."""
    work, options = _plan_completion(args)
    experiments = {t: load_experiment(options[t]) for t in sorted({m for _, m in work})}
    out = Path(args.out)
    rows: list[dict] = []
    slices_bar = functools.partial(tqdm, leave=False)
    # A context manager, so the bar is closed (its line ended) before an error message is printed.
    with tqdm(work, desc="completing", unit="case") as bar:
        for case, target in bar:
            rows.append(_complete_case(case, target, experiments[target], options[target], args, slices_bar))
            _report(args, experiments, rows)
    done = sum(r["status"] == "synthesised" for r in rows)
    print(f"{len(rows)} complete cases in {out} ({done} synthesised now, {len(rows) - done} kept); report: "
          f"{out / REPORT_NAME}.json and .csv")
    return rows


def _complete_case(case: Case, target: str, exp: Experiment, options: argparse.Namespace, args: argparse.Namespace,
                   progress: Callable) -> dict:
    """Synthesise one case's missing modality into --out/<case>/ beside copies of its files; the report's row."""
    name = BRATS_NAMINGS[case.naming].file_name(case.case_id, target, extension(case))
    dest = Path(args.out) / case.folder.name
    copies = [p.name for p in case.images.values()] + ([case.label.name] if case.label else [])
    row = {"case": case.folder.name, "naming": case.naming, "missing": target,
           "output": f"{case.folder.name}/{name}", "experiment": _model_record(exp)["experiment"],
           "conditions": " ".join(exp.contrasts[:3]), "copied": " ".join(copies)}
    if not args.overwrite and all((dest / n).exists() for n in [name, *copies]):
        tqdm.write(f"{case.folder.name}: kept, complete from an earlier run (pass --overwrite to redo it)")
        return {**row, "slices": "", "seconds": "", "status": "kept (complete from an earlier run)"}
    start = time.perf_counter()
    for path in [*case.images.values(), *([case.label] if case.label else [])]:
        copy_file(path, dest / path.name)
    # Reseeded per case, so a case's synthesis does not depend on which cases came before it.
    seed_everything(args.seed)
    result = synthesize_volume(exp, conditions_of(case, target, options), dest / name, batch_size=args.batch_size,
                               progress=progress)
    seconds = time.perf_counter() - start
    tqdm.write(f"{case.folder.name}: {target} missing -> {name} ({len(result.slices)} slices from "
               f"{', '.join(exp.contrasts[:3])}, {seconds:.1f} s); copied {len(copies)} files")
    return {**row, "slices": len(result.slices), "seconds": round(seconds, 2), "status": "synthesised"}


# --------------------------------------------------------------------------------------------------------- score

def _grown_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The mask's bounding box grown by `margin` voxels on every side, inside the volume."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + margin + 1, mask.shape[axis])))
    return tuple(box)


def _psnr(truth: np.ndarray, synth: np.ndarray) -> float:
    """PSNR (dB) of [0, 1] voxels with data range 1; inf when they are identical, NaN when there are none."""
    if truth.size == 0:
        return math.nan
    mse = float(np.mean((truth - synth) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


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
        result[f"psnr_{region}"] = _psnr(truth01[box][inside], synth01[box][inside])
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
    name = truth_case.folder.name
    if len(truth_case.images) != 1:
        raise UserError(f"truth case {name} holds {len(truth_case.images)} images ({', '.join(truth_case.images)}); "
                        "expected the one dropped image (and the seg), as brasyn.py drop writes them")
    contrast, truth_path = next(iter(truth_case.images.items()))
    folder = completed / name
    if not folder.is_dir():
        raise UserError(f"--completed {completed} has no case {name}; run brasyn.py complete on its cases first")
    done = read_case_folder(folder)
    if contrast not in done.images or len(done.images) < 2:
        raise UserError(f"completed case {name} in {folder} lacks the {contrast} synthesis or the acquired images; "
                        "run brasyn.py complete on it")
    job = ScoreJob(name, contrast, truth_path, done, truth_case.label or done.label)
    files = {f"truth {contrast}": truth_path, **{f"completed {c}": p for c, p in done.images.items()},
             **({"seg": job.label} if job.label else {})}
    shapes = {what: header_shape(path, f"case {name} {what}") for what, path in files.items()}
    if len(set(shapes.values())) > 1:
        listing = ", ".join(f"{what} {'x'.join(map(str, shape))}" for what, shape in shapes.items())
        raise UserError(f"case {name}: the truth and the completed case are on different grids ({listing}); "
                        "complete the case again from the same images")
    shape = next(iter(shapes.values()))
    if min(shape) < SSIM_WINDOW:
        raise UserError(f"case {name}: volumes of shape {'x'.join(map(str, shape))} are smaller than SSIM's "
                        f"{SSIM_WINDOW}-voxel window on some axis; score volumes at least {SSIM_WINDOW} voxels wide")
    return job


def _score_case(job: ScoreJob) -> dict:
    """One row of volume_metrics.csv: the synthesis against the truth, and the baseline against it."""
    truth = load_case_volume(job.truth, f"truth {job.name} {job.contrast}")[0]
    synth = load_case_volume(job.done.images[job.contrast], f"completed {job.name} {job.contrast}")[0]
    acquired = {c: load_case_volume(p, f"completed {job.name} {c}")[0] for c, p in job.done.images.items()
                if c != job.contrast}
    tumour = None if job.label is None else load_label(job.label, f"case {job.name} seg") > 0
    brain = np.any(np.stack([v != 0 for v in acquired.values()]), axis=0)
    metrics = volume_metrics(truth, synth, brain, tumour)
    source = BASELINE_SOURCE[job.contrast]
    baseline = volume_metrics(truth, acquired[source], brain, tumour) if source in acquired else {}
    return {"case": job.name, "contrast": job.contrast, "file": job.done.images[job.contrast].name,
            "seg": job.label.name if job.label else "", "brain_voxels": int(brain.sum()),
            "tumour_voxels": int((tumour & brain).sum()) if tumour is not None else "", **metrics,
            "baseline": source, **{f"baseline_{k}": baseline.get(k, math.nan) for k in metrics}}


def _metric_columns() -> list[str]:
    """ssim_brain, psnr_brain, ssim_tumour, ..., then the same for the baseline."""
    plain = [f"{m}_{r}" for r in REGIONS for m in ("ssim", "psnr")]
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
    lines = [" " * 30 + "".join(f"{t:>18}" for t in titles)]
    for col in _metric_columns():
        cells = []
        for g in groups:
            s = summary[g][col]
            cells.append(f"{s['mean']:.3f} ± {s['std']:.3f}" if s["mean"] is not None else "n/a")
        lines.append(f"  {col:28}" + "".join(f"{c:>18}" for c in cells))
    return "\n".join(lines)


def score_cases(args: argparse.Namespace) -> list[dict]:
    """Volume metrics of every truth case's synthesis: <out>/volume_metrics.csv (per case) and .json (summary)."""
    truth_root, completed, out = Path(args.truth), Path(args.completed), Path(args.out)
    if not completed.is_dir():
        raise UserError(f"--completed {completed} is not a folder")
    jobs = [_score_job(read_case_folder(f), completed) for f in case_folders(truth_root, "--truth")]
    with tqdm(jobs, desc="scoring", unit="case") as bar:
        rows = [_score_case(job) for job in bar]
    summary = _summary(rows)
    save_text(_csv_text(rows), out / f"{METRICS_NAME}.csv")
    save_json({"definitions": VOLUME_METRICS, "summary": summary}, out / f"{METRICS_NAME}.json")
    print(f"volume metrics of {len(rows)} synthesised volumes (mean ± std over cases; SSIM, PSNR in dB):")
    print(_table(summary))
    print(f"per case: {out / METRICS_NAME}.csv; summary and definitions: {out / METRICS_NAME}.json")
    return rows
