"""brasyn.py export: completed cases in nnU-Net v2's raw-data layout, in the channel order of its BraTS dataset."""
from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from utils.brasyn.cases import _check_apart, case_folders, copy_file, read_case_folder
from utils.core.errors import UserError
from utils.core.fileio import atomic_path, save_json
from utils.data.layouts import BRATS_CONTRASTS, Case
from utils.seg.cases import load_classes
from utils.seg.labels import CLASSES

# nnU-Net's Dataset137_BraTS2021 conversion: _0000 T1, _0001 T1ce, _0002 T2, _0003 FLAIR (named "Flair" there).
NNUNET_CHANNELS = {"T1": "T1", "T1ce": "T1ce", "T2": "T2", "FLAIR": "Flair"}


# The same conversion's label values, chosen so that its regions nest: 1 oedema, 2 necrosis, 3 enhancing tumour.
NNUNET_LABELS = {"oedema": 1, "necrosis": 2, "enhancing": 3}


NNUNET_REGIONS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}


FILE_ENDING = ".nii.gz"


def channel_file(case_id: str, contrast: str) -> str:
    """nnU-Net's name of a case's image of one contrast: <case>_000<k>.nii.gz."""
    return f"{case_id}_{BRATS_CONTRASTS.index(contrast):04d}{FILE_ENDING}"


def _write_image(source: Path, dest: Path) -> None:
    """A NIfTI file as .nii.gz: copied byte for byte when it is one, else gzipped (the same image)."""
    if source.name.lower().endswith(".gz"):
        copy_file(source, dest)
        return
    with atomic_path(dest) as tmp:
        tmp.write_bytes(gzip.compress(source.read_bytes(), compresslevel=6))


def _write_label(truth: Case, dest: Path) -> None:
    """A truth case's segmentation in nnU-Net's BraTS label values (uint8), on the seg file's own grid and header."""
    label = truth.label
    classes = load_classes(label, truth.naming, f"truth case {truth.folder.name} seg")
    values = np.zeros(classes.shape, dtype=np.uint8)
    for index, name in enumerate(CLASSES[1:], start=1):
        values[classes == index] = NNUNET_LABELS[name]
    source = nib.load(str(label))
    image = nib.Nifti1Image(values, source.affine, source.header)
    image.set_data_dtype(np.uint8)
    image.header.set_slope_inter(1.0, 0.0)
    with atomic_path(dest) as tmp:
        tmp.write_bytes(gzip.compress(image.to_bytes(), compresslevel=6))


def _truth_case(truth: Path, name: str) -> Case:
    """A case of --truth, which must hold its seg; UserError when the case or its seg is absent."""
    folder = truth / name
    if not folder.is_dir():
        raise UserError(f"--truth {truth} has no case {name}; give the folder brasyn.py drop wrote for these cases")
    case = read_case_folder(folder)
    if case.label is None:
        raise UserError(f"--truth case {name} has no segmentation in {folder}; export without --truth or add it")
    return case


def _plan(args: argparse.Namespace) -> list[tuple[Case, Case | None]]:
    """Every completed case (all four images) with its truth seg when --truth is given; checked before writing."""
    if args.as_training and not args.truth:
        raise UserError("--as-training writes labelsTr/, so it needs --truth (the segmentations)")
    plan = []
    for folder in case_folders(Path(args.completed), "--completed"):
        case = read_case_folder(folder)
        absent = [c for c in BRATS_CONTRASTS if c not in case.images]
        if absent:
            raise UserError(f"completed case {folder.name} in {folder} lacks {', '.join(absent)}; run brasyn.py "
                            "complete on it before exporting")
        plan.append((case, _truth_case(Path(args.truth), folder.name) if args.truth else None))
    return plan


def export_nnunet(args: argparse.Namespace) -> list[dict]:
    """imagesTs/<case>_000k.nii.gz (labelsTs/<case>.nii.gz with --truth) and dataset.json; one row per case."""
    out = Path(args.out)
    for flag, folder in (("--completed", args.completed), ("--truth", args.truth)):
        if folder:
            _check_apart((flag, Path(folder)), ("--out", out))
    plan = _plan(args)
    if (out / "dataset.json").exists() and not args.overwrite:
        raise UserError(f"{out / 'dataset.json'} already exists; pass --overwrite to replace the export")
    images, labels = ("imagesTr", "labelsTr") if args.as_training else ("imagesTs", "labelsTs")
    rows = []
    for case, truth in tqdm(plan, desc="exporting", unit="case"):
        name = case.folder.name
        for contrast in BRATS_CONTRASTS:
            _write_image(case.images[contrast], out / images / channel_file(name, contrast))
        if truth is not None:
            _write_label(truth, out / labels / f"{name}{FILE_ENDING}")
        rows.append({"case": name, **{NNUNET_CHANNELS[c]: case.images[c].name for c in BRATS_CONTRASTS},
                     "label": truth.label.name if truth else ""})
    save_json({"channel_names": {str(k): NNUNET_CHANNELS[c] for k, c in enumerate(BRATS_CONTRASTS)},
               "labels": NNUNET_REGIONS, "regions_class_order": [1, 2, 3],
               "numTraining": len(plan) if args.as_training else 0, "file_ending": FILE_ENDING,
               "description": "BraSyn cases completed by brasyn.py complete; channels and labels as nnU-Net's "
                              "Dataset137_BraTS2021 (1 oedema, 2 necrosis, 3 enhancing tumour)"},
              out / "dataset.json")
    print(f"{len(rows)} cases in nnU-Net v2 naming in {out / images}" + (f", labels in {out / labels}" if any(
        r["label"] for r in rows) else "") + f"; {out / 'dataset.json'}")
    return rows
