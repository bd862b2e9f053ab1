"""brasyn.py complete: synthesise each case's missing contrast with the experiment trained for it."""
from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path
from typing import Callable, Sequence

from tqdm import tqdm

from utils.brasyn.cases import (
    _and,
    _check_apart,
    case_folders,
    copy_file,
    extension,
    missing_modality,
    read_case_folder,
)
from utils.core.artifacts import CONFIG_NAME
from utils.core.errors import UserError
from utils.core.fileio import save_csv, save_json
from utils.data.contrasts import canonical_contrast
from utils.data.layouts import BRATS_CONTRASTS, BRATS_NAMINGS, Case
from utils.data.preprocessing import check_case
from utils.infer.coverage import UNKNOWN, describe_outside, slices_outside_training
from utils.infer.experiment import Experiment, experiment_args, load_experiment
from utils.infer.refiner import check_refiner
from utils.infer.synthesizer import Synthesizer
from utils.infer.volumes import VolumeSampling

REPORT_NAME = "brasyn_report"  # complete: <out>/brasyn_report.{json,csv}


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
    if getattr(args, "refine", False):
        check_refiner(exp_dir, options.image_size)
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
            "normalize": exp.args.normalize, "train_slice_range": exp.args.train_slice_range or UNKNOWN}


def _report(args: argparse.Namespace, experiments: dict[str, Experiment], rows: list[dict]) -> None:
    """<out>/brasyn_report.json (the run and every case) and .csv (one row a case), written atomically."""
    out = Path(args.out)
    device = next(iter(experiments.values())).device if experiments else None
    record = {"input": str(Path(args.input).resolve()), "out": str(out.resolve()), "seed": args.seed,
              "batch_size": args.batch_size, "shared_noise": args.shared_noise,
              "intensity_reference": args.intensity_reference, "refine": args.refine, "device": str(device),
              "models": {t: _model_record(e) for t, e in experiments.items()},
              "intensity": "synthesised volumes: float32 in [0, 1] on the scale of the model's training data "
                           "(models.<target>.normalize: percentile = 1st-99th percentile of the voxels > 0 mapped to "
                           "[0, 1]; median = brain median at 0.2), 0 outside the brain; the acquired images are "
                           "copied unchanged",
              "cases": rows}
    save_json(record, out / f"{REPORT_NAME}.json")
    save_csv(rows, out / f"{REPORT_NAME}.csv")


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
        return {**row, "slices": "", "slices_outside_training": "", "seconds": "",
                "status": "kept (complete from an earlier run)"}
    start = time.perf_counter()
    for path in [*case.images.values(), *([case.label] if case.label else [])]:
        copy_file(path, dest / path.name)
    # Reseeded per case, so a case's synthesis does not depend on which cases came before it.
    images = dict(zip(exp.contrasts[:3], conditions_of(case, target, options)))
    synthesizer = Synthesizer(exp, args.batch_size, VolumeSampling.from_args(args))
    result = synthesizer.infer_single(dest / name, seed=args.seed, progress=progress, **images)
    seconds = time.perf_counter() - start
    trained = exp.args.train_slice_range
    outside = slices_outside_training(result.slices, trained)
    tqdm.write(f"{case.folder.name}: {target} missing -> {name} ({len(result.slices)} slices from "
               f"{', '.join(exp.contrasts[:3])}, {describe_outside(outside, trained)}, {seconds:.1f} s); "
               f"copied {len(copies)} files")
    return {**row, "slices": len(result.slices), "slices_outside_training": outside, "seconds": round(seconds, 2),
            "status": "synthesised"}
