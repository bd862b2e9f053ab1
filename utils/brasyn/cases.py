"""BraSyn case folders: reading one, naming its files, finding which contrast it lacks."""
from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from utils.core.errors import UserError
from utils.core.fileio import atomic_path, natural_key
from utils.data.layouts import BRATS_CONTRASTS, BRATS_NAMINGS, LABEL, NIFTI, Case, brats_folder_files, match_brats_file
from utils.data.nifti_io import header_shape

# A reference that involves no learning and never sees the truth: the acquired image of the most similar contrast.
BASELINE_SOURCE = {"T1ce": "T1", "T1": "T1ce", "T2": "FLAIR", "FLAIR": "T2"}


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


def _check_apart(first: tuple[str, Path], second: tuple[str, Path]) -> None:
    """Refuse two folders that are the same or one inside the other (outputs would be read back as cases)."""
    (flag_a, a), (flag_b, b) = first, second
    a, b = a.resolve(), b.resolve()
    if a == b or b in a.parents or a in b.parents:
        raise UserError(f"{flag_a} {first[1]} and {flag_b} {second[1]} overlap; give folders that are not inside "
                        "each other")


@dataclass
class TruthPair:
    """A case brasyn.py drop kept back (the dropped image, the seg) and the folder brasyn.py complete made of it."""

    name: str
    contrast: str
    truth_image: Path
    label: Path | None
    done: Case


def pair_with_completed(truth: Case, completed: Path) -> TruthPair:
    """Pair a --truth case, which must hold exactly the dropped image, with its case folder under --completed."""
    name = truth.folder.name
    if len(truth.images) != 1:
        raise UserError(f"truth case {name} holds {len(truth.images)} images ({', '.join(truth.images)}); "
                        "expected the one dropped image (and the seg), as brasyn.py drop writes them")
    contrast, image = next(iter(truth.images.items()))
    folder = completed / name
    if not folder.is_dir():
        raise UserError(f"--completed {completed} has no case {name}; run brasyn.py complete on its cases first")
    return TruthPair(name, contrast, image, truth.label, read_case_folder(folder))


def same_grid(name: str, files: dict[str, Path]) -> tuple[int, ...]:
    """The shape all `files` of case `name` share (from their headers); UserError listing them when they differ."""
    shapes = {what: header_shape(path, f"case {name} {what}") for what, path in files.items()}
    if len(set(shapes.values())) > 1:
        listing = ", ".join(f"{what} {'x'.join(map(str, shape))}" for what, shape in shapes.items())
        raise UserError(f"case {name}: the truth and the completed case are on different grids ({listing}); "
                        "complete the case again from the same images")
    return next(iter(shapes.values()))
