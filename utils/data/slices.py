"""The preprocessed split folder as a torch Dataset of (cond1, cond2, cond3, target) slices, with checks."""
import csv
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from utils.core.artifacts import BRAIN_MASK, LESION_MASK, MANIFEST, MANIFEST_COLUMNS
from utils.core.errors import UserError
from utils.core.fileio import load_npy
from utils.data.context import context_channels, manifest_neighbours
from utils.data.contrasts import contrasts_from_args
from utils.data.geometry import masks_to_model_space, pad_offsets, to_model_space

# How many evenly spaced slices check_dataset reads to verify the value range without scanning gigabytes.
RANGE_CHECK_SLICES = 64


RANGE_TOLERANCE = 1e-3


def find_array(folder: str | os.PathLike, name: str) -> Path | None:
    """`folder/<name>.npy` matched case-insensitively (T1ce.npy == t1ce.npy); None when absent."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    wanted = f"{name}.npy".lower()
    hits = sorted(p for p in folder.iterdir() if p.name.lower() == wanted and p.is_file())
    if len(hits) > 1:
        raise UserError(f"{folder} holds {', '.join(p.name for p in hits)}: the same contrast twice with different "
                        "capitalisation; delete the stale one")
    return hits[0] if hits else None


def _open_array(path: Path) -> np.ndarray:
    """Memory-map a .npy file (no pickles), turning a corrupt, truncated or empty file into a UserError."""
    return load_npy(path, "re-run pre_process.py", mmap=True)


def load_slices(path: str | os.PathLike, image_size: int = 256) -> np.ndarray:
    """A whole (N, H, W) .npy file in model space, float32 (N, 1, S, S) in [-1, 1] (the original LoadDataSet)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; run pre_process.py first or fix --input_path")
    return to_model_space(_open_array(path), image_size).numpy()


def read_manifest(path: str | os.PathLike) -> list[dict]:
    """Rows of a manifest.csv as dicts {index: int, case_id: str, slice_index: int}."""
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not set(MANIFEST_COLUMNS) <= set(reader.fieldnames):
                raise UserError(f"{path} lacks the columns {', '.join(MANIFEST_COLUMNS)}; re-run pre_process.py")
            return [{"index": int(r["index"]), "case_id": r["case_id"], "slice_index": int(r["slice_index"])}
                    for r in reader]
    except (ValueError, KeyError) as err:
        raise UserError(f"{path} is malformed ({err}); re-run pre_process.py") from err


def _split_files(root: Path, split: str, names: Sequence[str]) -> dict[str, Path]:
    """The .npy file of every name in one split folder; UserError naming what is missing."""
    folder = root / split
    if not folder.is_dir():
        raise UserError(f"{folder} does not exist; run pre_process.py to create {root}/{{train,val,test}} "
                        "or fix --input_path")
    found, missing = {}, []
    for name in names:
        path = find_array(folder, name)
        if path is None:
            missing.append(f"{name}.npy")
        else:
            found[name] = path
    if missing:
        present = sorted(p.name for p in folder.glob("*.npy")) or ["none"]
        raise UserError(f"{folder} has no {', '.join(missing)} (present: {', '.join(present)}); check the contrast "
                        "names (--target/--contrasts) or re-run pre_process.py")
    return found


def check_dataset(root: str | os.PathLike, splits: Sequence[str], contrasts: Sequence[str],
                  image_size: int = 256) -> dict[str, tuple[int, int, int]]:
    """Verify every split has all contrasts as (N, H, W) [0, 1] arrays of one shape; return {split: shape}."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist; run pre_process.py first or fix --input_path")
    shapes = {}
    for split in splits:
        files = _split_files(root, split, contrasts)
        for name in (BRAIN_MASK, LESION_MASK):
            path = find_array(root / split, name)
            if path is not None:
                files[name] = path
        arrays = {name: _open_array(path) for name, path in files.items()}
        for name, arr in arrays.items():
            if arr.ndim != 3:
                raise UserError(f"{files[name]} has shape {arr.shape}; expected (slices, H, W) as written by "
                                "pre_process.py")
        shape_set = {arr.shape for arr in arrays.values()}
        if len(shape_set) > 1:
            listing = ", ".join(f"{files[n].name} {a.shape[0]}x{a.shape[1]}x{a.shape[2]}" for n, a in arrays.items())
            raise UserError(f"{root / split}: the arrays disagree ({listing}); all contrasts and masks of a split "
                            "must hold the same slices: re-run pre_process.py for this split")
        shape = shape_set.pop()
        pad_offsets(shape[1], image_size, f"slices in {root / split}")
        pad_offsets(shape[2], image_size, f"slices in {root / split}")
        for name in contrasts:
            _check_range(arrays[name], files[name])
        shapes[split] = shape
    return shapes


def _check_range(arr: np.ndarray, path: Path) -> None:
    """Reject slices outside [0, 1] (e.g. z-scored data), which the [-1, 1] mapping would silently distort."""
    if arr.shape[0] == 0:
        raise UserError(f"{path} holds no slices; re-run pre_process.py")
    rows = np.unique(np.linspace(0, arr.shape[0] - 1, min(RANGE_CHECK_SLICES, arr.shape[0])).astype(int))
    sample = np.asarray(arr[rows], dtype=np.float64)
    if not np.all(np.isfinite(sample)):
        raise UserError(f"{path} contains NaN or infinite values; re-run pre_process.py")
    lo, hi = float(sample.min()), float(sample.max())
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise UserError(f"{path} has values in [{lo:.3g}, {hi:.3g}], expected [0, 1] (as pre_process.py writes); "
                        "z-scored or raw intensities must be re-made with pre_process.py")


class SliceDataset(Dataset):
    """Slices of one split: items (cond1, cond2, cond3, target) float32 in [-1, 1], masks optional.

    Each condition is (2K + 1, S, S) with `context_slices` K (the slice and its case's neighbours), the rest (1, S, S).
    """

    def __init__(self, root: str | os.PathLike, split: str, contrasts: Sequence[str], image_size: int = 256,
                 with_masks: bool = False, context_slices: int = 0) -> None:
        """Check the split's files and memory-map them (nothing is read until an item is asked for)."""
        self.root = Path(root)
        self.split = split
        self.contrasts = list(contrasts)
        self.image_size = image_size
        self.with_masks = with_masks
        shape = check_dataset(self.root, [split], self.contrasts, image_size)[split]
        self.num_slices, self.height, self.width = shape
        folder = self.root / split
        self._paths = _split_files(self.root, split, self.contrasts)
        self.has_lesion_mask = find_array(folder, LESION_MASK) is not None
        if with_masks:
            brain = find_array(folder, BRAIN_MASK)
            if brain is None:
                raise UserError(f"{folder} has no {BRAIN_MASK}.npy; re-run pre_process.py, which writes the masks")
            self._paths[BRAIN_MASK] = brain
            if self.has_lesion_mask:
                self._paths[LESION_MASK] = find_array(folder, LESION_MASK)
        manifest = folder / MANIFEST
        self.manifest = read_manifest(manifest) if manifest.is_file() else []
        if self.manifest and len(self.manifest) != self.num_slices:
            raise UserError(f"{manifest} lists {len(self.manifest)} slices but the arrays hold {self.num_slices}; "
                            "re-run pre_process.py for this split")
        self.neighbours = self._context_rows(context_slices, manifest)
        self._arrays: dict[str, np.ndarray] | None = None

    def _context_rows(self, context_slices: int, manifest: Path) -> list[list[int]] | None:
        """Each row's conditioning rows with --context_slices K > 0 (None: the slice alone, as the original)."""
        if context_channels(context_slices) == 1:
            return None
        if not self.manifest:
            raise UserError(f"--context_slices {context_slices} needs {manifest}, which tells the cases' slices "
                            "apart; re-run pre_process.py for this split")
        return manifest_neighbours([row["case_id"] for row in self.manifest], context_slices)

    def __len__(self) -> int:
        """Number of slices."""
        return self.num_slices

    def _open(self) -> dict[str, np.ndarray]:
        """Memory-map the arrays on first use, in whichever process (data-loader worker) asks."""
        if self._arrays is None:
            self._arrays = {name: _open_array(path) for name, path in self._paths.items()}
        return self._arrays

    def __getstate__(self) -> dict:
        """Pickle without the memory maps (spawned data-loader workers reopen them)."""
        state = self.__dict__.copy()
        state["_arrays"] = None
        return state

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        """(cond1, cond2, cond3, target[, brain_mask, lesion_mask]) of slice `index`, each (1, S, S)."""
        arrays = self._open()
        rows = index if self.neighbours is None else self.neighbours[index]
        items = [to_model_space(np.asarray(arrays[c][rows]), self.image_size)[:, 0] for c in self.contrasts[:3]]
        items.append(to_model_space(np.asarray(arrays[self.contrasts[3]][index]), self.image_size)[0])
        if self.with_masks:
            brain = np.asarray(arrays[BRAIN_MASK][index])[None]
            lesion = (np.asarray(arrays[LESION_MASK][index])[None] if self.has_lesion_mask
                      else np.zeros_like(brain))
            items += [masks_to_model_space(brain, self.image_size)[0],
                      masks_to_model_space(lesion, self.image_size)[0]]
        return tuple(items)


def dataset_from_args(args, split: str, with_masks: bool = False) -> SliceDataset:
    """SliceDataset of `split` under --input_path in the order --dataset/--target/--contrasts selects."""
    return SliceDataset(args.input_path, split, contrasts_from_args(args), image_size=args.image_size,
                        with_masks=with_masks, context_slices=args.context_slices)
