"""brasyn.py drop: make BraSyn-style validation cases by removing one contrast per case (seeded, balanced)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from utils.brasyn.cases import _and, _check_apart, copy_file
from utils.core.errors import UserError
from utils.core.fileio import natural_key, save_csv
from utils.data.contrasts import canonical_contrast
from utils.data.layouts import (
    BRATS_CONTRASTS,
    BRATS_NAMINGS,
    Case,
    brats_folder_files,
    find_cases,
    read_split_files,
    select_cases,
)

DROPPED_NAME = "dropped.csv"  # drop: <truth>/dropped.csv


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
    save_csv(rows, truth / DROPPED_NAME)
    counts = ", ".join(f"{c} {sum(r['missing'] == c for r in rows)}" for c in candidates)
    print(f"{len(rows)} BraSyn cases in {out} (dropped: {counts}, seed {args.seed}); the dropped images and "
          f"segmentations are in {truth}, listed in {truth / DROPPED_NAME}")
    return rows
