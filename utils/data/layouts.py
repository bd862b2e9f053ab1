"""Dataset folder layouts (BraTS 2019-2024, ISLES 2015, contrast folders): finding cases, naming their files, splits."""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from utils.core.artifacts import SPLITS
from utils.core.errors import UserError
from utils.core.fileio import natural_key
from utils.data.contrasts import CONTRAST_ALIASES, canonical_contrast

REPO_ROOT = Path(__file__).resolve().parents[2]


LABEL = "label"


BRATS_CONTRASTS = ("T1", "T1ce", "T2", "FLAIR")


NIFTI = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)


ISLES_TOKEN = re.compile(r"\.(?:MR_(T1|T2|DWI|Flair)|(OT))\.", re.IGNORECASE)


LABEL_FOLDERS = {"label", "labels", "seg", "segmentation", "mask", "masks", "lesion", "lesions", "ot", "gt"}


# Words that name a contrast or a label inside a file name; the rest of the name identifies the case.
NAME_WORDS = ({a.lower() for a in CONTRAST_ALIASES} | {c.lower() for c in CONTRAST_ALIASES.values()}
              | LABEL_FOLDERS | {"seg"})


ISLES_FILE_TOKEN = {"T1": "MR_T1", "T2": "MR_T2", "DWI": "MR_DWI", "FLAIR": "MR_Flair"}


MAX_SEARCH_DEPTH = 3


@dataclass(frozen=True)
class BratsNaming:
    """One BraTS release's file names (<case><separator><suffix>.nii.gz) and segmentation label values."""

    name: str
    separator: str
    suffixes: dict[str, str]  # contrast (or LABEL) -> the word in the file name
    labels: dict[str, int]  # tumour region -> label value in the seg file
    case_prefix: str = ""  # case ids of this release start with it (tells 2021 from 2019 files, named alike)
    example: str = ""

    @property
    def regex(self) -> re.Pattern:
        """<case><separator><suffix>.nii[.gz], any capitalisation; group 1 is the case, group 2 the suffix."""
        words = "|".join(sorted(self.suffixes.values(), key=len, reverse=True))
        return re.compile(rf"^(.+){re.escape(self.separator)}({words})\.nii(\.gz)?$", re.IGNORECASE)

    def kind(self, suffix: str) -> str:
        """The contrast (or LABEL) a file-name suffix stands for."""
        return {v.lower(): k for k, v in self.suffixes.items()}[suffix.lower()]

    def file_name(self, case_id: str, kind: str, extension: str = ".nii.gz") -> str:
        """The file this release names `kind` (a contrast or LABEL) of case `case_id`."""
        return f"{case_id}{self.separator}{self.suffixes[kind]}{extension}"


_OLD_SUFFIXES = {"T1": "t1", "T1ce": "t1ce", "T2": "t2", "FLAIR": "flair", LABEL: "seg"}


_OLD_LABELS = {"necrosis": 1, "oedema": 2, "enhancing": 4}  # NCR/NET, ED, ET


BRATS_NAMINGS = {
    "brats2019": BratsNaming("brats2019", "_", _OLD_SUFFIXES, _OLD_LABELS,
                             example="BraTS19_CBICA_AAB_1/BraTS19_CBICA_AAB_1_t1.nii.gz"),
    "brats2021": BratsNaming("brats2021", "_", _OLD_SUFFIXES, _OLD_LABELS, case_prefix="BraTS2021_",
                             example="BraTS2021_00000/BraTS2021_00000_t1.nii.gz"),
    # 2023 onwards: NETC (non-enhancing tumour core), SNFH (surrounding FLAIR hyperintensity), ET.
    "brats2023": BratsNaming("brats2023", "-", {"T1": "t1n", "T1ce": "t1c", "T2": "t2w", "FLAIR": "t2f",
                                                LABEL: "seg"},
                             {"necrosis": 1, "oedema": 2, "enhancing": 3},
                             example="BraTS-GLI-00000-000/BraTS-GLI-00000-000-t1n.nii.gz"),
}


LAYOUTS = ("brats", *BRATS_NAMINGS, "isles", "folders")


def brats_namings(layout: str) -> list[BratsNaming]:
    """The naming schemes a BraTS layout accepts: all of them for `brats`, else the one it names."""
    return list(BRATS_NAMINGS.values()) if layout == "brats" else [BRATS_NAMINGS[layout]]


def is_brats(layout: str) -> bool:
    """Whether a --layout value is one of the BraTS ones."""
    return layout == "brats" or layout in BRATS_NAMINGS


def layout_contrasts(layout: str) -> tuple[str, ...]:
    """The contrasts a layout holds (empty for `folders`, whose folders say)."""
    if is_brats(layout):
        return BRATS_CONTRASTS
    return ("T1", "T2", "DWI", "FLAIR") if layout == "isles" else ()


def match_brats_file(name: str, namings: Sequence[BratsNaming]) -> tuple[BratsNaming, str, str] | None:
    """(naming, case id, kind) of a BraTS file name under one of `namings`, or None when it is no BraTS file."""
    hits = [(n, m) for n in namings if (m := n.regex.match(name))]
    if not hits:
        return None
    # 2019 and 2021 files look alike; only the case id (BraTS2021_xxxxx) tells them apart.
    naming, match = next(((n, m) for n, m in hits if n.case_prefix and m.group(1).startswith(n.case_prefix)),
                         hits[0])
    return naming, match.group(1), naming.kind(match.group(2))


def relabel(seg: np.ndarray, source: str, target: str) -> np.ndarray:
    """A segmentation's tumour-region labels converted from one release's values to another's (4 <-> 3 for ET)."""
    out = np.zeros_like(seg)
    for region, value in BRATS_NAMINGS[source].labels.items():
        out[seg == value] = BRATS_NAMINGS[target].labels[region]
    return out


@dataclass
class Case:
    """One subject: a NIfTI file per contrast and optionally a lesion label, all on one voxel grid."""

    case_id: str
    images: dict[str, Path]
    label: Path | None = None
    folder: Path | None = None
    names: dict[str, str] = field(default_factory=dict)  # what each file is called in this layout, for messages
    naming: str = ""  # the BraTS naming scheme of the files (brats layouts only)


def _folders(root: Path, depth: int = MAX_SEARCH_DEPTH) -> Iterator[Path]:
    """`root` and its sub-folders down to `depth` levels, hidden ones skipped, in sorted order."""
    yield root
    if depth == 0:
        return
    for child in sorted(root.iterdir()):
        if child.is_dir() and not child.name.startswith("."):
            yield from _folders(child, depth - 1)


def _add_case(cases: dict[str, Case], case: Case) -> None:
    """Register a case, refusing two folders with the same case id."""
    if case.case_id in cases:
        raise UserError(f"case {case.case_id} appears twice ({cases[case.case_id].folder} and {case.folder}); "
                        "keep one copy under --input")
    cases[case.case_id] = case


def _put(files: dict[str, Path], kind: str, path: Path, case_id: str) -> None:
    """Record a case's file for one contrast, refusing two candidates (e.g. both .nii and .nii.gz)."""
    if kind in files:
        raise UserError(f"case {case_id} has two {kind} files ({files[kind].name} and {path.name}); "
                        "delete one of them")
    files[kind] = path


def brats_folder_files(folder: Path, namings: Sequence[BratsNaming]) -> tuple[dict[str, Path], BratsNaming | None]:
    """The BraTS files of one folder, keyed by contrast (and LABEL), and their naming; other files are ignored."""
    hits = [(path, match_brats_file(path.name, namings)) for path in sorted(folder.iterdir()) if path.is_file()]
    hits = [(path, hit) for path, hit in hits if hit]
    found = {hit[0].name: path.name for path, hit in reversed(hits)}
    if len(found) > 1:
        listing = ", ".join(f"{name} ({file})" for name, file in sorted(found.items()))
        raise UserError(f"{folder} mixes BraTS naming schemes: {listing}; keep one case, named one way, per folder")
    files: dict[str, Path] = {}
    for path, (_, _, kind) in hits:
        _put(files, kind, path, folder.name)
    return files, (BRATS_NAMINGS[next(iter(found))] if found else None)


def find_brats_cases(root: Path, namings: Sequence[BratsNaming] = tuple(BRATS_NAMINGS.values())
                     ) -> dict[str, Case]:
    """BraTS layouts: every folder holding files named in one of `namings` is a case (its folder name is the id)."""
    cases: dict[str, Case] = {}
    for folder in _folders(root):
        files, naming = brats_folder_files(folder, namings)
        if files:
            label = files.pop(LABEL, None)
            names = {k: naming.file_name(folder.name, k) for k in BRATS_CONTRASTS}
            _add_case(cases, Case(folder.name, files, label, folder, names, naming.name))
    return cases


def _isles_kind(name: str) -> str | None:
    """Contrast of an ISLES 2015 file or folder name (VSD.Brain.XX.O.MR_Flair.70614 -> FLAIR), or None."""
    match = ISLES_TOKEN.search(name + ".")
    if not match:
        return None
    return LABEL if match.group(2) else canonical_contrast(match.group(1))


def find_isles_cases(root: Path) -> dict[str, Case]:
    """ISLES 2015 SISS layout: numbered case folders, a VSD.Brain.XX.O.MR_<contrast>.<id> volume per contrast."""
    cases: dict[str, Case] = {}
    for folder in _folders(root):
        if not folder.name.isdigit():
            continue
        case_id = str(int(folder.name))
        files: dict[str, Path] = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and NIFTI.search(p.name)):
            kind = _isles_kind(NIFTI.sub("", path.name))
            if kind:
                _put(files, kind, path, case_id)
        if files:
            label = files.pop(LABEL, None)
            names = {k: f"a VSD.Brain.XX.O.{t}.<id> volume" for k, t in ISLES_FILE_TOKEN.items()}
            _add_case(cases, Case(case_id, files, label, folder, names))
    return cases


def _strip_contrast(stem: str) -> str:
    """A file stem without contrast or label words (`case7_t1` -> `case7`), giving the case name."""
    kept = [w for w in re.split(r"[_.\-]", stem) if w and w.lower() not in NAME_WORDS]
    return "_".join(kept) or stem


def _contrast_folders(root: Path) -> dict[str, Path]:
    """Sub-folders of `root` that hold NIfTI files, keyed by canonical contrast name or `label`."""
    found: dict[str, Path] = {}
    for child in sorted(root.iterdir()):
        if not child.is_dir() or not any(NIFTI.search(p.name) for p in child.iterdir()):
            continue
        kind = LABEL if child.name.lower() in LABEL_FOLDERS else canonical_contrast(child.name)
        if kind in found:
            raise UserError(f"{root} has two folders for {kind} ({found[kind].name} and {child.name}); "
                            "remove or rename one")
        found[kind] = child
    return found


def find_folder_cases(root: Path) -> dict[str, Case]:
    """Original README layout: a folder per contrast (and optionally `label/`), volumes paired by sorted name."""
    folders = _contrast_folders(root)
    contrasts = [k for k in folders if k != LABEL]
    if not contrasts:
        raise UserError(f"{root} has no contrast folders with .nii/.nii.gz files (expected e.g. {root}/T1/, "
                        f"{root}/FLAIR/); check --input and --layout")
    files = {k: sorted(p for p in folder.iterdir() if p.is_file() and NIFTI.search(p.name))
             for k, folder in folders.items()}
    counts = {k: len(v) for k, v in files.items()}
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"{folders[k].name}/ {n}" for k, n in counts.items())
        raise UserError(f"{root}: the contrast folders hold different numbers of volumes ({listing}); every folder "
                        "needs one file per case")
    cases: dict[str, Case] = {}
    for row in zip(*files.values()):
        by_kind = dict(zip(files, row))
        ids = {k: _strip_contrast(NIFTI.sub("", p.name)) for k, p in by_kind.items()}
        first = ids[contrasts[0]]
        for kind, other in ids.items():
            if other != first:
                raise UserError(f"{root}: volumes paired by sorted name do not match ({by_kind[contrasts[0]]} and "
                                f"{by_kind[kind]}); name each case's files alike in every contrast folder")
        label = by_kind.pop(LABEL, None)
        names = {k: f"{folders[k].name}/{first}.nii.gz" for k in contrasts}
        _add_case(cases, Case(first, by_kind, label, root, names))
    return cases


def _layout_hint(layout: str) -> str:
    """What a layout's files look like, for the message when none are found."""
    if is_brats(layout):
        return " or ".join(n.example for n in brats_namings(layout))
    return {"isles": "<n>/VSD.Brain.XX.O.MR_T1.<id>/...", "folders": "T1/, T2/, ..."}[layout]


def find_cases(layout: str, root: Path) -> dict[str, Case]:
    """All cases under `root` in the given layout, keyed by case id."""
    if not root.is_dir():
        raise UserError(f"--input {root} is not a folder")
    if is_brats(layout):
        cases = find_brats_cases(root, brats_namings(layout))
    else:
        cases = {"isles": find_isles_cases, "folders": find_folder_cases}[layout](root)
    if not cases:
        raise UserError(f"no {layout} cases found under {root} (expected e.g. {_layout_hint(layout)}); check "
                        "--input and --layout")
    return cases


def read_split_files(paths: Sequence[str | Path]) -> dict[str, list[str]]:
    """Case ids per split from .list files (split = file stem) or folders of them; `#` starts a comment."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(path.glob("*.list"))
            if not found:
                raise UserError(f"split folder {path} has no .list files (expected train.list, val.list, test.list)")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"split file {path} does not exist")
    splits: dict[str, list[str]] = {}
    for path in files:
        try:
            text = path.read_text()
        except (ValueError, OSError) as err:  # UnicodeDecodeError (a binary file) is a ValueError
            raise UserError(f"split file {path} is not a text file of case ids ({err}); give a .list file") from err
        ids = [line.split("#")[0].strip() for line in text.splitlines()]
        splits.setdefault(path.stem, []).extend(i for i in ids if i)
    owner: dict[str, str] = {}
    for split, ids in splits.items():
        for case_id in ids:
            if owner.setdefault(case_id, split) != split:
                raise UserError(f"case {case_id} is listed in both {owner[case_id]} and {split}; a case must belong "
                                "to one split (fix the .list files)")
    return splits


def _normal_id(layout: str, case_id: str) -> str:
    """ISLES case numbers compare as numbers (`07` == `7`); other ids as written."""
    return str(int(case_id)) if layout == "isles" and case_id.isdigit() else case_id


def _split_folders(root: Path) -> dict[str, Path]:
    """train/ val/ test/ sub-folders of a folders-layout input, when it is organised that way."""
    found = {}
    for child in sorted(root.iterdir()) if root.is_dir() else []:
        if child.is_dir() and child.name.lower() in SPLITS and _contrast_folders(child):
            found[child.name.lower()] = child
    return found


def select_cases(cases: dict[str, Case], layout: str, ids: Sequence[str], what: str, root: Path) -> list[Case]:
    """The cases named in a list, in its order; UserError naming the first few that are not on disk."""
    by_id = {_normal_id(layout, k): v for k, v in cases.items()}
    missing = [i for i in ids if _normal_id(layout, i) not in by_id]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise UserError(f"{what} lists case {', '.join(missing[:3])}{more}, not found under {root}; "
                        "download the missing cases or use --split-file with the cases you have")
    return [by_id[_normal_id(layout, i)] for i in ids]


def plan_splits(args: argparse.Namespace) -> dict[str, list[Case]]:
    """Which cases go to which split, in output order; every listed case must exist on disk."""
    root = Path(args.input)
    sources = [s for s in (args.dataset, args.split_file, args.split) if s]
    if len(sources) > 1:
        raise UserError("give only one of --dataset, --split-file and --split")
    split_folders = _split_folders(root) if args.layout == "folders" and not sources else {}
    if split_folders:
        return {split: list(find_folder_cases(folder).values()) for split, folder in split_folders.items()}
    cases = find_cases(args.layout, root)
    if args.split:
        return {args.split: [cases[k] for k in sorted(cases, key=natural_key)]}
    if args.split_file:
        lists = read_split_files(args.split_file)
    elif args.dataset:
        lists = read_split_files([REPO_ROOT / "data" / args.dataset / f"{s}.list" for s in SPLITS])
    else:
        raise UserError("say which cases form which split: --dataset brats|isles (the paper's lists in data/), "
                        "--split-file FILE_OR_FOLDER, or --split NAME for all cases")
    # An empty list (e.g. no validation cases) simply makes no split.
    return {split: select_cases(cases, args.layout, ids, f"split {split}", root)
            for split, ids in lists.items() if ids}


def choose_contrasts(layout: str, requested: Sequence[str] | None, plan: dict[str, list[Case]]) -> list[str]:
    """The contrasts to write, canonically spelled; UserError for a name the layout does not have."""
    available = list(layout_contrasts(layout))
    if layout == "folders":
        available = sorted({k for cases in plan.values() for c in cases for k in c.images}, key=str.lower)
    if not requested:
        return available
    chosen = []
    for name in requested:
        canon = canonical_contrast(name)
        match = [a for a in available if a.lower() == canon.lower()]
        if not match:
            raise UserError(f"unknown contrast {name!r} for the {layout} layout; choose from {', '.join(available)}")
        if match[0] not in chosen:
            chosen.append(match[0])
    return chosen


NIFTI_SUFFIXES = (".nii.gz", ".nii")


def strip_nifti_suffix(name: str) -> str:
    """File name without .nii / .nii.gz."""
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def contrast_of_file(path: Path) -> str:
    """The contrast a case file names after its last `_`, `-` or `.` (`BraTS19_X_t1ce.nii.gz` -> `T1ce`)."""
    token = re.split(r"[_\-.]", strip_nifti_suffix(path.name))[-1]
    return canonical_contrast(token)


def case_name(path: Path) -> str:
    """The case part of a volume's name: `BraTS19_X_flair.nii.gz` -> `BraTS19_X` (the whole stem otherwise)."""
    stem = strip_nifti_suffix(path.name)
    match = re.fullmatch(r"(.+)[_\-.][^_\-.]+", stem)
    known = {canonical_contrast(c).lower() for c in ("t1", "t1ce", "t2", "flair", "dwi")}
    return match.group(1) if match and contrast_of_file(path).lower() in known else stem


def find_case_files(case_dir: str | Path, contrasts: Sequence[str]) -> dict[str, Path]:
    """Map each contrast to its NIfTI in a case folder (`<case>_<contrast>.nii.gz`, any capitalisation)."""
    case_dir = Path(case_dir)
    if not case_dir.is_dir():
        raise UserError(f"--case {case_dir}: not a folder")
    files = [p for p in sorted(case_dir.iterdir()) if p.name.lower().endswith(NIFTI_SUFFIXES)]
    found = {}
    for contrast in contrasts:
        wanted = canonical_contrast(contrast).lower()
        matches = [p for p in files if contrast_of_file(p).lower() == wanted]
        if len(matches) != 1:
            what = "no file" if not matches else f"{len(matches)} files ({', '.join(p.name for p in matches)})"
            raise UserError(f"--case {case_dir}: {what} for contrast {contrast}; expected one "
                            f"<case>_{contrast.lower()}.nii.gz (or pass --cond1/--cond2/--cond3)")
        found[contrast] = matches[0]
    return found
