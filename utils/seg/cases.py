"""The check's cases: complete labelled training cases, and held-out cases in four versions of their input."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.brasyn.cases import (
    BASELINE_SOURCE,
    _check_apart,
    case_folders,
    pair_with_completed,
    read_case_folder,
    same_grid,
)
from utils.core.errors import UserError
from utils.core.fileio import natural_key
from utils.data.layouts import BRATS_CONTRASTS, find_brats_cases
from utils.data.nifti_io import load_case_volume, load_label, open_nifti
from utils.data.preprocessing import normalize_volume
from utils.seg.labels import to_classes

# The four inputs each held-out case is segmented from; they differ only in the channel of the dropped contrast.
VERSIONS = {
    "real": "the four acquired images (the dropped one from --truth)",
    "completed": "the completed case: the synthesis in place of the dropped image",
    "copy": "the acquired image of the most similar contrast copied into the dropped one's channel (no learning)",
    "zero": "the dropped contrast's channel filled with zeros",
}


@dataclass
class LabelledCase:
    """A case with all four contrasts and a segmentation (a training case, or a held-out case's real version)."""

    name: str
    images: dict[str, Path]
    label: Path
    naming: str


@dataclass
class HeldOutCase:
    """A BraSyn case: the truth (dropped image, seg) and the completed folder (three acquired images, synthesis)."""

    name: str
    missing: str
    truth_image: Path
    label: Path
    naming: str
    completed: dict[str, Path]


def training_cases(root: Path) -> list[LabelledCase]:
    """Every case under --train, each with four contrasts and a seg; UserError naming the first that lacks one."""
    if not root.is_dir():
        raise UserError(f"--train {root} is not a folder")
    cases = find_brats_cases(root)
    if not cases:
        raise UserError(f"--train {root} holds no BraTS cases (any release's names, e.g. <case>/<case>_t1.nii.gz); "
                        "give the folder of the training split's complete cases")
    chosen = []
    for case_id in sorted(cases, key=natural_key):
        case = cases[case_id]
        absent = [c for c in BRATS_CONTRASTS if c not in case.images]
        if absent or case.label is None:
            lacking = f"no {', '.join(absent)} image" if absent else "no segmentation"
            raise UserError(f"--train case {case_id} in {case.folder} has {lacking}; training needs complete cases "
                            "with their seg file (take it out of --train)")
        chosen.append(LabelledCase(case_id, dict(case.images), case.label, case.naming))
    return chosen


def _held_out_case(folder: Path, completed: Path) -> HeldOutCase:
    """Pair one truth case folder with its completed folder, checking files and grids from the headers."""
    truth = read_case_folder(folder)
    pair = pair_with_completed(truth, completed)
    if pair.label is None:
        raise UserError(f"--truth case {pair.name} has no segmentation in {folder}; the check needs the seg that "
                        "brasyn.py drop keeps beside the dropped image")
    absent = [c for c in BRATS_CONTRASTS if c not in pair.done.images]
    if absent:
        raise UserError(f"completed case {pair.name} in {pair.done.folder} lacks {', '.join(absent)}; run "
                        "brasyn.py complete on it")
    same_grid(pair.name, {"truth image": pair.truth_image, "seg": pair.label,
                          **{f"completed {c}": p for c, p in pair.done.images.items()}})
    return HeldOutCase(pair.name, pair.contrast, pair.truth_image, pair.label, truth.naming,
                       dict(pair.done.images))


def held_out_cases(truth: Path, completed: Path) -> list[HeldOutCase]:
    """Every case of --truth with its completed folder, all checked before any work."""
    if not completed.is_dir():
        raise UserError(f"--completed {completed} is not a folder")
    _check_apart(("--truth", truth), ("--completed", completed))
    return [_held_out_case(folder, completed) for folder in case_folders(truth, "--truth")]


def normalised(path: Path, what: str) -> np.ndarray:
    """A volume clipped and scaled to [0, 1] as pre_process.py does, so acquired and synthesised scales agree."""
    return normalize_volume(load_case_volume(path, what)[0], what)


def load_classes(label: Path, naming: str, what: str) -> np.ndarray:
    """A segmentation file as class indices (utils/seg/labels.py CLASSES)."""
    return to_classes(load_label(label, what), naming, what)


def voxel_spacing(path: Path, what: str) -> tuple[float, ...]:
    """The voxel size (mm) of a NIfTI file's three axes, from its header."""
    return tuple(float(z) for z in open_nifti(path, what).header.get_zooms()[:3])


def load_training_case(case: LabelledCase) -> tuple[np.ndarray, np.ndarray]:
    """Images (4, H, W, D) in BRATS_CONTRASTS order, normalised, and the class-index volume (H, W, D)."""
    images = np.stack([normalised(case.images[c], f"--train case {case.name} {c}") for c in BRATS_CONTRASTS])
    return images, load_classes(case.label, case.naming, f"--train case {case.name} seg")


def input_versions(case: HeldOutCase) -> dict[str, np.ndarray]:
    """The case's four inputs (VERSIONS), each (4, H, W, D) in BRATS_CONTRASTS order, normalised per volume."""
    acquired = {c: normalised(p, f"completed case {case.name} {c}") for c, p in case.completed.items()
                if c != case.missing}
    fills = {"real": normalised(case.truth_image, f"truth case {case.name} {case.missing}"),
             "completed": normalised(case.completed[case.missing], f"completed case {case.name} {case.missing}"),
             "copy": acquired[BASELINE_SOURCE[case.missing]],
             "zero": np.zeros_like(next(iter(acquired.values())))}
    return {version: np.stack([fill if c == case.missing else acquired[c] for c in BRATS_CONTRASTS])
            for version, fill in fills.items()}
