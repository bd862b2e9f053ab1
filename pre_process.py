"""Turn a dataset as distributed (NIfTI volumes) into the slice arrays that train.py and test.py read.

    python pre_process.py --layout brats --input MICCAI_BraTS_2019_Data_Training --output data/BRATS --dataset brats

writes <output>/<split>/<CONTRAST>.npy (float32, N x size x size, in [0, 1]), brain_mask.npy, lesion_mask.npy
(uint8), manifest.csv (which case and axial slice every row came from) and preprocess.json, with the original
recipe: per volume 1st/99th percentile clip of the voxels > 0 and min-max to [0, 1], the middle --slices axial
slices, scikit-image resize to --size. Layouts: brats (a folder per case with <case>_t1/_t1ce/_t2/_flair/_seg
.nii[.gz], possibly under HGG/ and LGG/), isles (ISLES 2015 SISS: numbered case folders with VSD.Brain.XX.O.MR_*
and .OT. volumes) and folders (one folder per contrast, volumes paired by sorted name, as the original README).
Every file is written under a temporary name and renamed only when the whole run succeeds.
"""
import argparse
import contextlib
import csv
import io
import json
import multiprocessing
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from numpy.lib.format import open_memmap
from tqdm import tqdm

from utils.data import (BRAIN_MASK, CONTRAST_ALIASES, LESION_MASK, MANIFEST, MANIFEST_COLUMNS, SPLITS,
                        canonical_contrast)
from utils.errors import UserError, run_cli
from utils.fileio import atomic_path
from utils.preprocessing import (load_volume, middle_slices, open_nifti, read_voxels, resize_masks,
                                 volume_to_slices)

REPO_ROOT = Path(__file__).resolve().parent
LAYOUTS = ("brats", "isles", "folders")
LAYOUT_CONTRASTS = {"brats": ("T1", "T1ce", "T2", "FLAIR"), "isles": ("T1", "T2", "DWI", "FLAIR")}
LABEL = "label"
INFO = "preprocess.json"
NIFTI = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
BRATS_FILE = re.compile(r"^.+_(t1|t1ce|t2|flair|seg)\.nii(\.gz)?$", re.IGNORECASE)
BRATS_KIND = {"t1": "T1", "t1ce": "T1ce", "t2": "T2", "flair": "FLAIR", "seg": LABEL}
ISLES_TOKEN = re.compile(r"\.(?:MR_(T1|T2|DWI|Flair)|(OT))\.", re.IGNORECASE)
LABEL_FOLDERS = {"label", "labels", "seg", "segmentation", "mask", "masks", "lesion", "lesions", "ot", "gt"}
# Words that name a contrast or a label inside a file name; the rest of the name identifies the case.
NAME_WORDS = ({a.lower() for a in CONTRAST_ALIASES} | {c.lower() for c in CONTRAST_ALIASES.values()}
              | LABEL_FOLDERS | {"seg"})
ISLES_FILE_TOKEN = {"T1": "MR_T1", "T2": "MR_T2", "DWI": "MR_DWI", "FLAIR": "MR_Flair"}
MAX_SEARCH_DEPTH = 3


@dataclass
class Case:
    """One subject: a NIfTI file per contrast and optionally a lesion label, all on one voxel grid."""

    case_id: str
    images: dict[str, Path]
    label: Path | None = None
    folder: Path | None = None
    names: dict[str, str] = field(default_factory=dict)  # what each file is called in this layout, for messages


# ----------------------------------------------------------------------------------------------- finding cases

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


def find_brats_cases(root: Path) -> dict[str, Case]:
    """BraTS 2019 layout: every folder holding <case>_t1/_t1ce/_t2/_flair/_seg.nii[.gz] is a case."""
    cases: dict[str, Case] = {}
    for folder in _folders(root):
        files: dict[str, Path] = {}
        for path in sorted(folder.iterdir()):
            match = BRATS_FILE.match(path.name)
            if match and path.is_file():
                _put(files, BRATS_KIND[match.group(1).lower()], path, folder.name)
        if files:
            label = files.pop(LABEL, None)
            names = {k: f"{folder.name}_{k.lower()}.nii.gz" for k in LAYOUT_CONTRASTS["brats"]}
            _add_case(cases, Case(folder.name, files, label, folder, names))
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


def find_cases(layout: str, root: Path) -> dict[str, Case]:
    """All cases under `root` in the given layout, keyed by case id."""
    if not root.is_dir():
        raise UserError(f"--input {root} is not a folder")
    finder = {"brats": find_brats_cases, "isles": find_isles_cases, "folders": find_folder_cases}[layout]
    cases = finder(root)
    if not cases:
        raise UserError(f"no {layout} cases found under {root}; check --input and --layout "
                        "(brats: <case>/<case>_t1.nii.gz, isles: <n>/VSD.Brain.XX.O.MR_T1.<id>/..., "
                        "folders: T1/, T2/, ...)")
    return cases


# -------------------------------------------------------------------------------------------------- splits

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
        return {args.split: [cases[k] for k in sorted(cases, key=_natural_key)]}
    if args.split_file:
        lists = read_split_files(args.split_file)
    elif args.dataset:
        lists = read_split_files([REPO_ROOT / "data" / args.dataset / f"{s}.list" for s in SPLITS])
    else:
        raise UserError("say which cases form which split: --dataset brats|isles (the paper's lists in data/), "
                        "--split-file FILE_OR_FOLDER, or --split NAME for all cases")
    by_id = {_normal_id(args.layout, k): v for k, v in cases.items()}
    plan = {}
    for split, ids in lists.items():
        if not ids:
            continue  # an empty list (e.g. no validation cases) simply makes no split
        missing = [i for i in ids if _normal_id(args.layout, i) not in by_id]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise UserError(f"split {split} lists case {', '.join(missing[:3])}{more}, not found under {root}; "
                            "download the missing cases or use --split-file with the cases you have")
        plan[split] = [by_id[_normal_id(args.layout, i)] for i in ids]
    return plan


def _natural_key(text: str) -> list:
    """Sort key that orders `2` before `10`."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


# ---------------------------------------------------------------------------------------------- validation

def _header_shape(path: Path, what: str) -> tuple[int, ...]:
    """Voxel grid of a NIfTI file from its header alone; UserError for unreadable or non-3-D files."""
    shape = tuple(int(s) for s in open_nifti(path, what).shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise UserError(f"{what}: {path.name} is {len(shape)}-D with shape {shape}; expected one 3-D volume "
                        "(X, Y, Z): split 4-D series into volumes or pick the right file")
    return shape


def check_case(case: Case, contrasts: Sequence[str], slices: int, use_label: bool) -> None:
    """Cheap header checks before anything is written: files present, 3-D, one grid, enough slices."""
    shapes = {}
    for name in contrasts:
        path = case.images.get(name)
        if path is None:
            expected = case.names.get(name, f"a {name} volume")
            raise UserError(f"case {case.case_id} has no {name} volume (expected {expected} in {case.folder}); "
                            "add it or leave the case out of the split")
        shapes[name] = _header_shape(path, f"case {case.case_id} {name}")
    if use_label and case.label is not None:
        shapes[LABEL] = _header_shape(case.label, f"case {case.case_id} label")
    if len(set(shapes.values())) > 1:
        listing = ", ".join(f"{k} {'x'.join(map(str, s))}" for k, s in shapes.items())
        raise UserError(f"case {case.case_id}: volumes have different shapes ({listing}); resample them onto one "
                        "grid (co-register) or leave the case out")
    depth = next(iter(shapes.values()))[2]
    middle_slices(depth, slices, f"case {case.case_id}")


def _labels_in_use(split: str, cases: list[Case], no_labels: bool) -> bool:
    """Whether a split gets a lesion mask: all its cases have labels (a partial set is refused)."""
    if no_labels:
        return False
    unlabelled = [c.case_id for c in cases if c.label is None]
    if unlabelled and len(unlabelled) < len(cases):
        raise UserError(f"split {split}: case {', '.join(unlabelled[:3])} has no lesion label while other cases do; "
                        "add the label files or pass --no-labels")
    return not unlabelled


# --------------------------------------------------------------------------------------------- processing

@dataclass
class CaseJob:
    """Everything a worker needs to turn one case into slices."""

    case: Case
    contrasts: tuple[str, ...]
    slices: int
    size: int
    use_label: bool


def _load_label(path: Path, what: str) -> np.ndarray:
    """A label volume (may legitimately be all zero), 3-D and finite."""
    data = read_voxels(open_nifti(path, what), path, what)
    data = data[..., 0] if data.ndim == 4 and data.shape[3] == 1 else data
    data = np.asarray(data, dtype=np.float64)
    if not np.all(np.isfinite(data)):
        raise UserError(f"{what} ({path.name}) has NaN or infinite voxels; fix or re-export the label")
    return data


def process_case(job: CaseJob) -> dict:
    """Slices of one case: {contrast: float32 (N,S,S)}, brain and lesion masks (uint8) and the slice indices."""
    case = job.case
    raw = {c: load_volume(case.images[c], f"case {case.case_id} {c}") for c in job.contrasts}
    shapes = {c: v.shape for c, v in raw.items()}
    if len(set(shapes.values())) > 1:
        raise UserError(f"case {case.case_id}: volumes have different shapes ({shapes}); resample them onto one grid")
    images, index = {}, None
    for name, vol in raw.items():
        images[name], index = volume_to_slices(vol, job.slices, job.size, f"case {case.case_id} {name}")
    brain = np.zeros(next(iter(shapes.values())), dtype=bool)
    for vol in raw.values():
        brain |= vol != 0
    result = {"images": images, "index": list(index),
              "brain": resize_masks(np.moveaxis(brain[:, :, index.start:index.stop], 2, 0), job.size),
              "lesion": None}
    if job.use_label and case.label is not None:
        label = _load_label(case.label, f"case {case.case_id} label")
        result["lesion"] = resize_masks(np.moveaxis(label[:, :, index.start:index.stop] > 0, 2, 0), job.size)
    return result


def _results(jobs: list[CaseJob], workers: int) -> Iterator[dict]:
    """Process cases in order, in `workers` processes when more than one."""
    if workers <= 1:
        yield from map(process_case, jobs)
        return
    with multiprocessing.get_context().Pool(workers) as pool:
        yield from pool.imap(process_case, jobs)


# ------------------------------------------------------------------------------------------------- writing

def output_names(contrasts: Iterable[str], with_lesion: bool) -> list[str]:
    """Files one split folder receives."""
    names = [f"{c}.npy" for c in contrasts] + [f"{BRAIN_MASK}.npy"]
    return names + ([f"{LESION_MASK}.npy"] if with_lesion else []) + [MANIFEST, INFO]


def check_overwrite(out: Path, plan: dict[str, list[Case]], names: dict[str, list[str]], overwrite: bool) -> None:
    """Refuse to replace existing outputs (any capitalisation) unless --overwrite."""
    if overwrite:
        return
    for split in plan:
        folder = out / split
        if not folder.is_dir():
            continue
        wanted = {n.lower() for n in names[split]}
        clash = sorted(p.name for p in folder.iterdir() if p.name.lower() in wanted)
        if clash:
            raise UserError(f"{folder} already holds {', '.join(clash)}; pass --overwrite to replace them or choose "
                            "another --output")


def _remove_case_variants(folder: Path, names: list[str]) -> None:
    """After --overwrite, delete old files that differ from the new ones only in capitalisation (t1.npy)."""
    wanted = {n.lower(): n for n in names}
    for path in folder.iterdir():
        if path.name.lower() in wanted and path.name != wanted[path.name.lower()]:
            path.unlink()


def _info(args: argparse.Namespace, split: str, cases: list[Case], contrasts: Sequence[str], lesion: bool) -> str:
    """preprocess.json text: how this split was made."""
    info = {"layout": args.layout, "input": str(Path(args.input).resolve()), "split": split,
            "contrasts": list(contrasts), "slices_per_case": args.slices, "size": args.size,
            "cases": [c.case_id for c in cases], "lesion_mask": lesion,
            "recipe": "per volume: clip to 1st/99th percentile of voxels > 0, min-max to [0,1]; middle axial slices "
                      "(depth - slices) // 2 onwards; skimage resize(mode='constant', anti_aliasing=True)"}
    return json.dumps(info, indent=2) + "\n"


def _manifest_text(rows: list[tuple[int, str, int]]) -> str:
    """manifest.csv contents."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    writer.writerows(rows)
    return text.getvalue()


def _open_arrays(stack: contextlib.ExitStack, out: Path, plan: dict[str, list[Case]], contrasts: Sequence[str],
                 lesion: dict[str, bool], slices: int, size: int) -> dict[tuple[str, str], np.ndarray]:
    """Memory-mapped output arrays under temporary names, renamed into place when `stack` closes cleanly."""
    arrays = {}
    for split, cases in plan.items():
        shape = (len(cases) * slices, size, size)
        names = list(contrasts) + [BRAIN_MASK] + ([LESION_MASK] if lesion[split] else [])
        for name in names:
            # Memory maps keep a whole training split (gigabytes) out of RAM while it is filled case by case.
            tmp = stack.enter_context(atomic_path(out / split / f"{name}.npy"))
            dtype = np.float32 if name in contrasts else np.uint8
            arrays[split, name] = open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
    return arrays


def write_splits(args: argparse.Namespace, plan: dict[str, list[Case]], contrasts: Sequence[str],
                 lesion: dict[str, bool]) -> None:
    """Process every case and write all splits; files appear (renamed from temporaries) only if all succeed."""
    out = Path(args.output)
    created = [d for d in [out] + [out / s for s in plan] if not d.exists()]
    jobs = [CaseJob(case, tuple(contrasts), args.slices, args.size, lesion[split])
            for split, cases in plan.items() for case in cases]
    owners = [(split, pos) for split, cases in plan.items() for pos in range(len(cases))]
    manifests: dict[str, list[tuple[int, str, int]]] = {split: [] for split in plan}
    try:
        with contextlib.ExitStack() as stack:
            arrays = _open_arrays(stack, out, plan, contrasts, lesion, args.slices, args.size)
            with tqdm(total=len(jobs), desc="preprocessing", unit="case") as bar:
                for (split, pos), result in zip(owners, _results(jobs, args.workers)):
                    rows = slice(pos * args.slices, (pos + 1) * args.slices)
                    for name, stack_of_slices in result["images"].items():
                        arrays[split, name][rows] = stack_of_slices
                    arrays[split, BRAIN_MASK][rows] = result["brain"]
                    if lesion[split]:
                        arrays[split, LESION_MASK][rows] = result["lesion"]
                    case_id = plan[split][pos].case_id
                    manifests[split] += [(rows.start + i, case_id, k) for i, k in enumerate(result["index"])]
                    bar.set_postfix_str(f"{split}: {case_id}")
                    bar.update()
            for array in arrays.values():
                array.flush()
            arrays.clear()
            for split, rows in manifests.items():
                stack.enter_context(atomic_path(out / split / MANIFEST)).write_text(_manifest_text(rows))
                stack.enter_context(atomic_path(out / split / INFO)).write_text(
                    _info(args, split, plan[split], contrasts, lesion[split]))
    except BaseException:
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only succeeds for folders this run created and left empty
        raise
    for split in plan:
        _remove_case_variants(out / split, output_names(contrasts, lesion[split]))


# -------------------------------------------------------------------------------------------------- command

def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--layout", choices=LAYOUTS, default=None,
                   help="how --input is organised (default: the --dataset name)")
    p.add_argument("--input", required=True, help="the dataset folder as downloaded (or a folder per contrast)")
    p.add_argument("--output", required=True, help="where <split>/<CONTRAST>.npy go, e.g. data/BRATS")
    p.add_argument("--dataset", choices=["brats", "isles"], default=None,
                   help="use the paper's split lists data/<dataset>/{train,val,test}.list")
    p.add_argument("--split-file", nargs="+", default=None, metavar="PATH",
                   help="custom split: <split>.list files (one case id a line) or a folder of them")
    p.add_argument("--split", default=None, metavar="NAME", help="put every case found into this one split")
    p.add_argument("--contrasts", nargs="+", default=None,
                   help="contrasts to write (default: brats T1 T1ce T2 FLAIR, isles T1 T2 DWI FLAIR, folders all)")
    p.add_argument("--slices", type=int, default=80, help="middle axial slices taken per volume")
    p.add_argument("--size", type=int, default=256, help="slices are resized to SIZE x SIZE")
    p.add_argument("--no-labels", action="store_true", help="ignore lesion labels (no lesion_mask.npy)")
    p.add_argument("--workers", type=int, default=1, help="processes working on cases in parallel")
    p.add_argument("--overwrite", action="store_true", help="replace existing arrays in --output")
    return p


def choose_contrasts(layout: str, requested: Sequence[str] | None, plan: dict[str, list[Case]]) -> list[str]:
    """The contrasts to write, canonically spelled; UserError for a name the layout does not have."""
    available = list(LAYOUT_CONTRASTS.get(layout, ()))
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


def main(argv: Sequence[str] | None = None) -> dict[str, int]:
    """Run the preprocessing; returns the number of slices written per split."""
    args = build_parser().parse_args(argv)
    if args.layout is None:
        if not args.dataset:
            raise UserError("pass --layout brats|isles|folders (or --dataset brats|isles, which implies it)")
        args.layout = args.dataset
    if args.slices < 1 or args.size < 1 or args.workers < 1:
        raise UserError("--slices, --size and --workers must be positive")
    plan = plan_splits(args)
    if not plan:
        raise UserError("the split lists name no cases; put case ids (one a line) into them")
    contrasts = choose_contrasts(args.layout, args.contrasts, plan)
    lesion = {split: _labels_in_use(split, cases, args.no_labels) for split, cases in plan.items()}
    for split, cases in plan.items():
        for case in cases:
            check_case(case, contrasts, args.slices, lesion[split])
    out = Path(args.output)
    check_overwrite(out, plan, {s: output_names(contrasts, lesion[s]) for s in plan}, args.overwrite)
    write_splits(args, plan, contrasts, lesion)
    counts = {split: len(cases) * args.slices for split, cases in plan.items()}
    for split, cases in plan.items():
        extra = " + lesion mask" if lesion[split] else ""
        plural = "s" if len(cases) != 1 else ""
        print(f"{out / split}: {len(cases)} case{plural} x {args.slices} slices = {counts[split]} slices of "
              f"{args.size}x{args.size}, {', '.join(contrasts)} + brain mask{extra}")
    return counts


if __name__ == "__main__":
    sys.exit(run_cli(main))
