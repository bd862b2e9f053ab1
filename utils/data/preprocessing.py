"""pre_process.py's recipe: normalise each volume, keep the middle slices, resize, write the split folders."""
import argparse
import contextlib
import json
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from numpy.lib.format import open_memmap
from skimage.transform import resize
from tqdm import tqdm

from utils.core.artifacts import BRAIN_MASK, INFO, LESION_MASK, MANIFEST, MANIFEST_COLUMNS
from utils.core.errors import UserError
from utils.core.fileio import atomic_path, csv_text, load_json
from utils.data.brain import brain_mask
from utils.data.layouts import LABEL, Case, choose_contrasts, plan_splits
from utils.data.nifti_io import check_volume, header_shape, load_label, load_volume
from utils.data.slices import read_manifest

LOW_PERCENTILE = 1.0


HIGH_PERCENTILE = 99.0


# --normalize: "percentile" is the original's recipe; "median" (new) anchors the scale at the brain median.
NORMALIZATIONS = ("percentile", "median")


DEFAULT_NORMALIZATION = "percentile"


# With "median" the top of the range sits this many (median - 1st percentile) above the 1st percentile, so the median
# lands at 1/5 and only voxels brighter than five times the typical tissue contrast saturate.
MEDIAN_SPAN = 5.0


RECIPES = {
    "percentile": "clip to 1st/99th percentile of voxels > 0, min-max to [0,1]",
    "median": f"clip to [p1, p1 + {MEDIAN_SPAN:g} (median - p1)] of voxels > 0 (p1: 1st percentile), scaled to [0,1]",
}


def normalize_volume(vol: np.ndarray, name: str = "volume", dtype: type = np.float32,
                     method: str = DEFAULT_NORMALIZATION) -> np.ndarray:
    """Clip the whole volume to [low, high] from its voxels > 0 (RECIPES[method]) and map that range to [0, 1].

    The original's 99th percentile moves with the size of the brightest structure: where an enhancing rim covers
    more than 1 % of the brain it lands inside the rim and the rest of the T1ce comes out darker (docs/quality.md).
    The median cannot be moved by a lesion that small, and its scale is fixed: no min-max stretch afterwards."""
    vol = np.asarray(vol, dtype=np.float64)
    check_volume(vol, name)
    if method == "median":
        low, median = np.percentile(vol[vol > 0], [LOW_PERCENTILE, 50.0])
        if median <= low:
            raise UserError(f"{name}: half of its voxels above zero share its 1st-percentile intensity, so "
                            "--normalize median has no scale to use; preprocess with --normalize percentile")
        lo, hi = low, low + MEDIAN_SPAN * (median - low)
        clipped = np.clip(vol, lo, hi)
    else:
        # The original min-maxes the clipped volume; its extremes are the two percentiles.
        clipped = np.clip(vol, *np.percentile(vol[vol > 0], [LOW_PERCENTILE, HIGH_PERCENTILE]))
        lo, hi = clipped.min(), clipped.max()
    if hi <= lo:
        raise UserError(f"{name} has a single intensity above zero (no contrast to normalise); check the file")
    return ((clipped - lo) / (hi - lo)).astype(dtype, copy=False)


def middle_slices(depth: int, count: int, name: str = "volume") -> range:
    """Indices of the `count` middle axial slices of a volume `depth` slices deep: (depth - count) // 2 onwards."""
    if count < 1:
        raise UserError(f"the slice count must be at least 1 (got {count})")
    if depth < count:
        raise UserError(f"{name} has {depth} axial slices, fewer than the {count} asked for; pass a smaller "
                        "--slices or leave the case out")
    start = (depth - count) // 2
    return range(start, start + count)


ALL_SLICES = "all"  # --slices all: every axial slice from the first to the last with brain


def slice_count(value: str) -> int | str:
    """--slices: a number of middle axial slices, or 'all' (every slice with brain)."""
    if value == ALL_SLICES:
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is neither a number of slices nor '{ALL_SLICES}'") from None


def brain_slices(brain: np.ndarray, name: str = "volume") -> range:
    """The axial slices of an (H, W, D) brain mask from the first to the last that holds any brain voxel."""
    hits = np.flatnonzero(brain.any(axis=(0, 1)))
    if hits.size == 0:
        raise UserError(f"{name} has no brain voxel (every contrast is zero there); check its files or leave it out")
    return range(int(hits[0]), int(hits[-1]) + 1)


def resize_slices(slices: np.ndarray, size: int) -> np.ndarray:
    """Resize each (H, W) slice of an (N, H, W) stack to (size, size) exactly as the original did."""
    slices = np.asarray(slices)
    if slices.ndim != 3:
        raise ValueError(f"expected an (N, H, W) stack, got shape {slices.shape}")
    if slices.shape[1:] == (size, size):
        # skimage returns the input unchanged in this case too; skip the per-slice loop.
        return slices.copy()
    # Per slice, as the original: resizing the whole stack at once would interpolate along N as well.
    out = np.empty((slices.shape[0], size, size), dtype=np.result_type(slices.dtype, np.float32))
    for i, img in enumerate(slices):
        out[i] = resize(img, (size, size), mode="constant", anti_aliasing=True)
    return out


def resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of an (N, H, W) stack of binary masks to (size, size) uint8."""
    masks = np.asarray(masks)
    if masks.shape[1:] == (size, size):
        return (masks > 0).astype(np.uint8)
    out = np.empty((masks.shape[0], size, size), dtype=np.uint8)
    for i, img in enumerate(masks):
        out[i] = resize(img > 0, (size, size), order=0, mode="constant", anti_aliasing=False,
                        preserve_range=True) > 0
    return out


def volume_to_slices(vol: np.ndarray, count: int, size: int, name: str = "volume",
                     method: str = DEFAULT_NORMALIZATION, index: range | None = None) -> tuple[np.ndarray, range]:
    """Whole recipe for one volume: normalise, take the middle `count` (or `index`) axial slices, resize (N, S, S)."""
    index = middle_slices(vol.shape[2], count, name) if index is None else index
    # Normalise in float64 and resize before the float32 cast, as the original's arithmetic did.
    norm = normalize_volume(vol, name, dtype=np.float64, method=method)
    stack = np.moveaxis(norm[:, :, index.start:index.stop], 2, 0)
    return resize_slices(stack, size).astype(np.float32), index


def check_case(case: Case, contrasts: Sequence[str], slices: int | str, use_label: bool) -> None:
    """Cheap header checks before anything is written: files present, 3-D, one grid, enough slices."""
    shapes = {}
    for name in contrasts:
        path = case.images.get(name)
        if path is None:
            expected = case.names.get(name, f"a {name} volume")
            raise UserError(f"case {case.case_id} has no {name} volume (expected {expected} in {case.folder}); "
                            "add it or leave the case out of the split")
        shapes[name] = header_shape(path, f"case {case.case_id} {name}")
    if use_label and case.label is not None:
        shapes[LABEL] = header_shape(case.label, f"case {case.case_id} label")
    if len(set(shapes.values())) > 1:
        listing = ", ".join(f"{k} {'x'.join(map(str, s))}" for k, s in shapes.items())
        raise UserError(f"case {case.case_id}: volumes have different shapes ({listing}); resample them onto one "
                        "grid (co-register) or leave the case out")
    if slices != ALL_SLICES:
        middle_slices(next(iter(shapes.values()))[2], slices, f"case {case.case_id}")


def _labels_in_use(split: str, cases: list[Case], no_labels: bool) -> bool:
    """Whether a split gets a lesion mask: all its cases have labels (a partial set is refused)."""
    if no_labels:
        return False
    unlabelled = [c.case_id for c in cases if c.label is None]
    if unlabelled and len(unlabelled) < len(cases):
        raise UserError(f"split {split}: case {', '.join(unlabelled[:3])} has no lesion label while other cases do; "
                        "add the label files or pass --no_labels")
    return not unlabelled


@dataclass
class CaseJob:
    """Everything a worker needs to turn one case into slices."""

    case: Case
    contrasts: tuple[str, ...]
    slices: int | str
    size: int
    use_label: bool
    normalize: str = DEFAULT_NORMALIZATION
    index: range | None = None  # the axial slices to keep; None: the middle `slices`


def load_case_images(job: CaseJob) -> dict[str, np.ndarray]:
    """The job's contrast volumes of one case, checked to share one grid."""
    case = job.case
    raw = {c: load_volume(case.images[c], f"case {case.case_id} {c}") for c in job.contrasts}
    shapes = {c: v.shape for c, v in raw.items()}
    if len(set(shapes.values())) > 1:
        raise UserError(f"case {case.case_id}: volumes have different shapes ({shapes}); resample them onto one grid")
    return raw


def case_brain_slices(job: CaseJob) -> range:
    """The axial slices of one case from the first to the last with brain (non-zero in any of its contrasts)."""
    return brain_slices(brain_mask(list(load_case_images(job).values())), f"case {job.case.case_id}")


def process_case(job: CaseJob) -> dict:
    """Slices of one case: {contrast: float32 (N,S,S)}, brain and lesion masks (uint8) and the slice indices."""
    case = job.case
    raw = load_case_images(job)
    images, index = {}, job.index
    for name, vol in raw.items():
        images[name], index = volume_to_slices(vol, job.slices, job.size, f"case {case.case_id} {name}",
                                                job.normalize, job.index)
    brain = brain_mask(list(raw.values()))
    result = {"images": images, "index": list(index),
              "brain": resize_masks(np.moveaxis(brain[:, :, index.start:index.stop], 2, 0), job.size),
              "lesion": None}
    if job.use_label and case.label is not None:
        label = load_label(case.label, f"case {case.case_id} label")
        result["lesion"] = resize_masks(np.moveaxis(label[:, :, index.start:index.stop] > 0, 2, 0), job.size)
    return result


def _results(jobs: list[CaseJob], workers: int, work: Callable[[CaseJob], Any] | None = None) -> Iterator:
    """`work` (default process_case) on every case in order, in `workers` processes when more than one."""
    work = work or process_case  # looked up now, so that a test's stand-in for process_case is used
    if workers <= 1:
        yield from map(work, jobs)
        return
    with multiprocessing.get_context().Pool(workers) as pool:
        yield from pool.imap(work, jobs)


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


SLICE_RULES = {"middle": "middle axial slices (depth - slices) // 2 onwards",
               ALL_SLICES: "every axial slice from the first to the last with brain (non-zero in any contrast)"}


def _info(args: argparse.Namespace, split: str, cases: list[Case], contrasts: Sequence[str], lesion: bool,
          kept: Sequence[int]) -> str:
    """preprocess.json text: how this split was made; `kept` are the axial indices of its rows (the manifest's)."""
    namings = sorted({c.naming for c in cases if c.naming})
    rule = SLICE_RULES[ALL_SLICES if args.slices == ALL_SLICES else "middle"]
    info = {"layout": args.layout, **({"naming": namings} if namings else {}),
            "input": str(Path(args.input).resolve()), "split": split,
            "contrasts": list(contrasts), "slices_per_case": args.slices, "size": args.size,
            # What a model trained on this split has seen: the first and last axial index of any case's rows.
            "slice_range": [min(kept), max(kept)] if kept else None,
            "cases": [c.case_id for c in cases], "lesion_mask": lesion,
            "normalize": args.normalize,
            "recipe": f"per volume: {RECIPES[args.normalize]}; {rule}; "
                      "skimage resize(mode='constant', anti_aliasing=True)"}
    return json.dumps(info, indent=2) + "\n"


def _open_arrays(stack: contextlib.ExitStack, out: Path, plan: dict[str, list[Case]], contrasts: Sequence[str],
                 lesion: dict[str, bool], rows: dict[str, int], size: int) -> dict[tuple[str, str], np.ndarray]:
    """Memory-mapped output arrays (rows[split] slices each) under temporary names, renamed when `stack` closes."""
    arrays = {}
    for split in plan:
        shape = (rows[split], size, size)
        names = list(contrasts) + [BRAIN_MASK] + ([LESION_MASK] if lesion[split] else [])
        for name in names:
            # Memory maps keep a whole training split (gigabytes) out of RAM while it is filled case by case.
            tmp = stack.enter_context(atomic_path(out / split / f"{name}.npy"))
            dtype = np.float32 if name in contrasts else np.uint8
            arrays[split, name] = open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
    return arrays


def plan_jobs(args: argparse.Namespace, plan: dict[str, list[Case]], contrasts: Sequence[str],
              lesion: dict[str, bool]) -> list[CaseJob]:
    """One job per case, split by split; with --slices all each job knows its brain slices (the volumes are read)."""
    jobs = [CaseJob(case, tuple(contrasts), args.slices, args.size, lesion[split], args.normalize)
            for split, cases in plan.items() for case in cases]
    if args.slices == ALL_SLICES:
        # The arrays are allocated before any case is written, so their lengths must be known first.
        ranges = tqdm(_results(jobs, args.workers, case_brain_slices), total=len(jobs), desc="finding brain slices",
                      unit="case")
        for job, index in zip(jobs, ranges):
            job.index = index
    return jobs


def _row_slices(plan: dict[str, list[Case]], jobs: list[CaseJob]) -> list[slice]:
    """The rows of its split's arrays each job fills, in job order."""
    rows, job = [], iter(jobs)
    for cases in plan.values():
        start = 0
        for _ in cases:
            current = next(job)
            count = len(current.index) if current.index is not None else current.slices
            rows.append(slice(start, start + count))
            start += count
    return rows


def write_splits(args: argparse.Namespace, plan: dict[str, list[Case]], contrasts: Sequence[str],
                 lesion: dict[str, bool]) -> dict[str, int]:
    """Process every case and write all splits (renamed from temporaries only if all succeed); slices per split."""
    out = Path(args.output)
    created = [d for d in [out] + [out / s for s in plan] if not d.exists()]
    jobs = plan_jobs(args, plan, contrasts, lesion)
    owners = [(split, pos) for split, cases in plan.items() for pos in range(len(cases))]
    row_slices = _row_slices(plan, jobs)
    counts = {split: sum(r.stop - r.start for (s, _), r in zip(owners, row_slices) if s == split) for split in plan}
    manifests: dict[str, list[tuple[int, str, int]]] = {split: [] for split in plan}
    try:
        with contextlib.ExitStack() as stack:
            arrays = _open_arrays(stack, out, plan, contrasts, lesion, counts, args.size)
            with tqdm(total=len(jobs), desc="preprocessing", unit="case") as bar:
                for (split, pos), rows, result in zip(owners, row_slices, _results(jobs, args.workers)):
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
                manifest = csv_text([dict(zip(MANIFEST_COLUMNS, row)) for row in rows], MANIFEST_COLUMNS)
                stack.enter_context(atomic_path(out / split / MANIFEST)).write_text(manifest)
                stack.enter_context(atomic_path(out / split / INFO)).write_text(
                    _info(args, split, plan[split], contrasts, lesion[split], [k for _, _, k in rows]))
    except BaseException:
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only succeeds for folders this run created and left empty
        raise
    for split in plan:
        _remove_case_variants(out / split, output_names(contrasts, lesion[split]))
    return counts


def preprocess(args: argparse.Namespace) -> dict[str, int]:
    """pre_process.py's run: find and check every case, write all splits; returns the slices written per split."""
    if args.layout is None:
        if not args.dataset:
            raise UserError("pass --layout brats|isles|folders (or --dataset brats|isles, which implies it)")
        args.layout = args.dataset
    if (args.slices != ALL_SLICES and args.slices < 1) or args.size < 1 or args.workers < 1:
        raise UserError(f"--slices (or '{ALL_SLICES}'), --image_size and --workers must be positive")
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
    counts = write_splits(args, plan, contrasts, lesion)
    per_case = "their brain" if args.slices == ALL_SLICES else args.slices
    for split, cases in plan.items():
        extra = " + lesion mask" if lesion[split] else ""
        plural = "s" if len(cases) != 1 else ""
        print(f"{out / split}: {len(cases)} case{plural} x {per_case} slices = {counts[split]} slices of "
              f"{args.size}x{args.size}, {', '.join(contrasts)} + brain mask{extra}")
    return counts


def split_normalization(folder: str | os.PathLike) -> str:
    """The --normalize a preprocessed split folder was made with (its preprocess.json; none: the original's)."""
    path = Path(folder) / INFO
    if not path.is_file():
        return DEFAULT_NORMALIZATION
    info = load_json(path, "rerun pre_process.py or delete the file")
    method = info.get("normalize", DEFAULT_NORMALIZATION) if isinstance(info, dict) else None
    if method not in NORMALIZATIONS:
        raise UserError(f"{path}: unknown normalize {method!r} (known: {', '.join(NORMALIZATIONS)}); rerun "
                        "pre_process.py")
    return method


def split_slice_range(folder: str | os.PathLike) -> list[int] | None:
    """The first and last axial index a preprocessed split holds (preprocess.json, else manifest.csv); None: unknown."""
    folder = Path(folder)
    info = load_json(folder / INFO, "rerun pre_process.py or delete the file") if (folder / INFO).is_file() else {}
    kept = info.get("slice_range") if isinstance(info, dict) else None
    if kept is not None:
        return [int(k) for k in kept]
    # Splits preprocessed before preprocess.json recorded the range still list every row's slice in the manifest.
    if not (folder / MANIFEST).is_file():
        return None
    indices = [row["slice_index"] for row in read_manifest(folder / MANIFEST)]
    return [min(indices), max(indices)] if indices else None


def data_normalization(root: str | os.PathLike, splits: Sequence[str]) -> str:
    """The --normalize shared by the given splits of a preprocessed dataset; UserError when they differ."""
    methods = {split: split_normalization(Path(root) / split) for split in splits}
    if len(set(methods.values())) > 1:
        made = ", ".join(f"{split} with --normalize {m}" for split, m in methods.items())
        raise UserError(f"{root}: the splits were preprocessed differently ({made}); rerun pre_process.py for all "
                        "of them with one --normalize")
    return methods[splits[0]]
