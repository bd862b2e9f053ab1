"""Reading a results folder or two image folders into pairs to score, and scoring them."""
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from utils.core.artifacts import OUTPUT_DIR_NAME, output_stack
from utils.core.errors import UserError
from utils.core.fileio import load_npy, natural_key
from utils.data.images import (
    RANGE_TOLERANCE,
    list_images,
    pair_by_name,
    read_image_file,
    read_mask,
    require_names,
    unit_image,
)
from utils.eval.metrics import METRICS, _check_pair, as_saved_image, plain_metrics, saved_image_metrics


# --------------------------------------------------------------------------- evaluation of many slices
@dataclass
class EvalSet:
    """Slices to score: indexable sequences of 2-D arrays (read lazily from files or stacks) and their names.

    Images are floats in [0, 1] (up to rounding) or uint8 levels of 8-bit files (see as_saved_image).
    """

    names: list[str]
    real: Sequence[np.ndarray]
    synth: Sequence[np.ndarray]
    brain_masks: Sequence[np.ndarray] | None = None
    lesion_masks: Sequence[np.ndarray] | None = None
    source: str = "arrays"


class _LazyFiles(Sequence):
    """A sequence whose items are read from files on access, so a large test set never sits in memory."""

    def __init__(self, paths: Sequence[Path], reader: Callable[[Path], np.ndarray]) -> None:
        """Remember the paths and the reader (read_image_file or read_mask)."""
        self.paths = list(paths)
        self.reader = reader

    def __len__(self) -> int:
        """Number of files."""
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        """Read file number `index`."""
        return self.reader(self.paths[index])


def _describe(sequence: Sequence[np.ndarray], index: int, what: str) -> str:
    """Where slice `index` of a sequence came from, for error messages."""
    if isinstance(sequence, _LazyFiles):
        return str(sequence.paths[index])
    return f"{what} slice {index}"


def evaluate_set(data: EvalSet, progress: bool = True) -> list[dict[str, Any]]:
    """Score every slice: brain and lesion paper protocols (when masks are given) and plain metrics."""
    if len(data.real) != len(data.synth) or len(data.names) != len(data.real):
        raise UserError(f"{len(data.real)} real but {len(data.synth)} synthetic images ({data.source})")
    masks = {"brain": data.brain_masks, "lesion": data.lesion_masks}
    rows = []
    for index in tqdm(range(len(data.names)), desc="metrics", unit="slice", disable=not progress):
        real, synth = np.asarray(data.real[index]), np.asarray(data.synth[index])
        row: dict[str, Any] = {"index": index, "name": data.names[index]}
        try:
            _check_pair(real, synth, None)
            saved = None
            for protocol, stack in masks.items():
                if stack is not None:
                    # Step A once per slice, shared by the brain and the lesion scores.
                    saved = saved if saved is not None else (as_saved_image(real), as_saved_image(synth))
                    scores = saved_image_metrics(*saved, stack[index])
                    row.update({f"{protocol}_{m}": scores[m] for m in METRICS})
            scores = plain_metrics(unit_image(real), unit_image(synth))
        except ValueError as err:
            raise UserError(f"{_describe(data.synth, index, 'synthetic')}: {err}") from err
        row.update({f"plain_{m}": scores[m] for m in METRICS})
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- loading folders
def load_image_dirs(real_dir: str | os.PathLike, synth_dir: str | os.PathLike,
                    mask_dir: str | os.PathLike | None = None,
                    lesion_mask_dir: str | os.PathLike | None = None) -> EvalSet:
    """Pair real and synthetic images by file name (masks by the same name) and read them lazily."""
    real = list_images(real_dir, "real")
    synth = list_images(synth_dir, "synthetic")
    names = pair_by_name(real, synth)
    sets: dict[str, _LazyFiles | None] = {"brain": None, "lesion": None}
    for protocol, folder in (("brain", mask_dir), ("lesion", lesion_mask_dir)):
        if folder is not None:
            listing = list_images(folder, f"{protocol} mask")
            require_names(names, listing, f"{protocol} mask")
            sets[protocol] = _LazyFiles([listing[n] for n in names], read_mask)
    return EvalSet(names, _LazyFiles([real[n] for n in names], read_image_file),
                   _LazyFiles([synth[n] for n in names], read_image_file), sets["brain"], sets["lesion"],
                   source=f"image files in {real_dir} and {synth_dir}")


def _load_stack(path: Path, is_mask: bool) -> np.ndarray:
    """Memory-map an (N, H, W) .npy stack; images must be floats in [0, 1] (up to rounding, kept unclipped)."""
    stack = load_npy(path, "re-run test.py to write it again", mmap=True)
    if stack.ndim != 3:
        raise UserError(f"{path}: expected an (N, H, W) stack, got shape {stack.shape}")
    if is_mask:
        if stack.dtype.kind not in "biuf":
            raise UserError(f"{path}: a mask stack must be numeric, got {stack.dtype}")
        return stack
    if stack.dtype.kind != "f":
        raise UserError(f"{path}: an image stack must hold floats in [0, 1], found dtype {stack.dtype}")
    low, high = float(stack.min()), float(stack.max())
    # min and max are NaN when any value is, so this also refuses NaN.
    if not (-RANGE_TOLERANCE <= low and high <= 1 + RANGE_TOLERANCE):
        raise UserError(f"{path}: values must lie in [0, 1], found [{low:.6g}, {high:.6g}]")
    return stack


def _stack_names(folder: Path, count: int) -> list[str]:
    """Slice names: those of the PNGs in synth/ when they match the stack, else slice_00000, slice_00001, ..."""
    synth_dir = folder / "synth"
    if synth_dir.is_dir():
        stems = sorted((p.stem for p in synth_dir.iterdir() if p.suffix.lower() == ".png"), key=natural_key)
        if len(stems) == count:
            return stems
    return [f"slice_{i:05d}" for i in range(count)]


def _load_stacks(folder: Path) -> EvalSet:
    """Read the float .npy stacks test.py writes (real.npy, synth.npy, brain_mask.npy, lesion_mask.npy)."""
    real = _load_stack(folder / output_stack("real"), is_mask=False)
    synth = _load_stack(folder / output_stack("synth"), is_mask=False)
    masks = {}
    for protocol in ("brain", "lesion"):
        path = folder / output_stack(f"{protocol}_mask")
        masks[protocol] = _load_stack(path, is_mask=True) if path.is_file() else None
    checked = [(folder / output_stack("synth"), synth)]
    checked += [(folder / output_stack(f"{p}_mask"), s) for p, s in masks.items() if s is not None]
    for path, stack in checked:
        if stack.shape != real.shape:
            raise UserError(f"{path} has shape {stack.shape} but {folder / 'real.npy'} has {real.shape}")
    return EvalSet(_stack_names(folder, len(real)), real, synth, masks["brain"], masks["lesion"],
                   source=f".npy stacks in {folder}")


def resolve_results_folder(folder: str | os.PathLike) -> Path:
    """The generated_samples folder test.py wrote: `folder` itself or its generated_samples/ subfolder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"results folder {folder} does not exist")
    if (folder / OUTPUT_DIR_NAME).is_dir():
        folder = folder / OUTPUT_DIR_NAME
    if not ((folder / output_stack("real")).is_file() or (folder / "real").is_dir()):
        raise UserError(f"{folder} is not a folder written by test.py (no real.npy and no real/ folder); "
                        "pass --real DIR --synth DIR instead")
    return folder


def load_results_folder(folder: str | os.PathLike) -> EvalSet:
    """Slices from test.py's output: the .npy stacks when present (exact floats), else the PNG folders."""
    folder = resolve_results_folder(folder)
    if (folder / output_stack("real")).is_file() and (folder / output_stack("synth")).is_file():
        return _load_stacks(folder)
    masks = {p: folder / "mask" / p for p in ("brain", "lesion")}
    return load_image_dirs(folder / "real", folder / "synth",
                           masks["brain"] if masks["brain"].is_dir() else None,
                           masks["lesion"] if masks["lesion"].is_dir() else None)


def evaluate_folder(folder: str | os.PathLike, progress: bool = True) -> list[dict[str, Any]]:
    """Per-slice rows for a folder written by test.py (see load_results_folder)."""
    return evaluate_set(load_results_folder(folder), progress)
