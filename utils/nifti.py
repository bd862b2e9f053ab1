"""Whole-volume synthesis: three conditioning NIfTI volumes in, the target contrast out as NIfTI.

Each conditioning volume is prepared exactly as pre_process.py prepared the experiment's training data (the whole
volume normalised with the --normalize of that data, config.json's "normalize"; every axial slice, i.e. along the
third voxel axis, resized to the model's size), every slice that holds brain is synthesised, and the result is mapped
back (transposition, padding and resizing undone) into a volume with the input's shape, affine and header.
Intensities of the output are the model's normalised [0, 1] scale (the scale pre_process.py gives the training
targets), stored as float32; voxels outside the brain are 0.
"""
from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import nibabel as nib
import numpy as np
import torch
from skimage.transform import resize
from tqdm import tqdm

from utils.data import canonical_contrast, from_model_space, to_model_space
from utils.errors import UserError
from utils.fileio import atomic_path
from utils.inference import Experiment, synthesize
from utils.preprocessing import DEFAULT_NORMALIZATION, load_volume_and_image, normalize_volume, resize_slices

NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass
class CaseSynthesis:
    """Synthesised maps of one case as (H, W, D) float32 volumes in [0, 1], zero outside the brain."""

    maps: dict[str, np.ndarray]  # "synth", and with uncertainty "disagreement" (and "critic" when available)
    brain: np.ndarray
    slices: list[int]
    reference: nib.Nifti1Image


@dataclass
class VolumeResult:
    """Where a synthesised volume went and what was synthesised."""

    path: Path
    shape: tuple[int, ...]
    slices: list[int]
    extra_paths: dict[str, Path]


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


def load_case_volume(path: str | Path, name: str) -> tuple[np.ndarray, nib.Nifti1Image]:
    """A conditioning volume's voxels (float64, checked like pre_process.py's inputs) and its NIfTI image."""
    path = Path(path)
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise UserError(f"{name} {path}: not a NIfTI file (.nii or .nii.gz)")
    return load_volume_and_image(path, name)


def brain_mask(volumes: Sequence[np.ndarray]) -> np.ndarray:
    """Voxels that are non-zero in any conditioning volume (the inputs are skull-stripped)."""
    return np.any(np.stack([v != 0 for v in volumes]), axis=0)


def volume_to_model_slices(volume: np.ndarray, slice_indices: Sequence[int], image_size: int,
                           name: str = "volume", method: str = DEFAULT_NORMALIZATION) -> torch.Tensor:
    """Normalise a volume as pre_process.py --normalize `method` does; the chosen axial slices in model space."""
    # float64 until after the resize, then float32: the arithmetic of the preprocessed training arrays.
    normalised = normalize_volume(volume, name, dtype=np.float64, method=method)
    axial = np.moveaxis(normalised, 2, 0)[list(slice_indices)]
    return to_model_space(resize_slices(axial, image_size).astype(np.float32), image_size)


def model_slices_to_volume(slices: torch.Tensor, slice_indices: Sequence[int], shape: tuple[int, int, int],
                           image_size: int) -> np.ndarray:
    """Inverse of volume_to_model_slices: model-space slices back to a (H, W, D) float32 volume in [0, 1]."""
    square = from_model_space(slices, (image_size, image_size))
    height, width, depth = shape
    volume = np.zeros(shape, dtype=np.float32)
    for k, index in enumerate(slice_indices):
        # Same interpolation family as the forward resize (bilinear, anti-aliased when shrinking).
        volume[:, :, index] = resize(square[k], (height, width), order=1, mode="constant", anti_aliasing=True,
                                     preserve_range=True)
    return np.clip(volume, 0, 1)


def save_like(volume: np.ndarray, reference: nib.Nifti1Image, path: str | Path) -> Path:
    """Write `volume` as float32 NIfTI with the reference's affine and header, atomically (.nii or .nii.gz)."""
    path = Path(path)
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise UserError(f"--out {path}: the output name must end in .nii.gz or .nii")
    image = type(reference)(volume.astype(np.float32), reference.affine, reference.header)
    # Float output: no integer scaling (a copied int16 datatype would make nibabel quantise the [0, 1] values).
    image.set_data_dtype(np.float32)
    image.header.set_slope_inter(1.0, 0.0)
    data = image.to_bytes()
    if path.name.lower().endswith(".gz"):
        data = gzip.compress(data, compresslevel=6)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def _batches(items: Sequence[int], size: int) -> list[list[int]]:
    """Split `items` into consecutive lists of at most `size`."""
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def synthesize_case(exp: Experiment, cond_paths: Sequence[str | Path], batch_size: int = 1,
                    uncertainty: bool = False, slice_indices: Sequence[int] | None = None,
                    progress: Callable = tqdm) -> CaseSynthesis:
    """Synthesise the target for a case's three conditioning NIfTI files, in the inputs' voxel grid.

    By default every axial slice with brain is synthesised; `slice_indices` picks some (e.g. one for a preview).
    """
    loaded = [load_case_volume(p, f"--cond{i + 1}") for i, p in enumerate(cond_paths)]
    volumes = [v for v, _ in loaded]
    if len({v.shape for v in volumes}) != 1:
        raise UserError("the conditioning volumes differ in shape ("
                        + ", ".join(f"{Path(p).name} {v.shape}" for p, v in zip(cond_paths, volumes))
                        + "); resample them to one grid first")
    mask = brain_mask(volumes)
    brain_slices = [int(k) for k in np.flatnonzero(mask.any(axis=(0, 1)))]
    chosen = brain_slices if slice_indices is None else [int(k) for k in slice_indices]
    size = exp.args.image_size
    conds = [volume_to_model_slices(v, chosen, size, f"--cond{i + 1}", exp.args.normalize)
             for i, v in enumerate(volumes)]
    # Everything is collected in model space [-1, 1] so one inverse (from_model_space) maps it back; the
    # uncertainty maps are [0, 1] quantities, hence the 2m − 1.
    outputs: dict[str, list[torch.Tensor]] = {"synth": [], "disagreement": [], "critic": []}
    for chunk in progress(_batches(range(len(chosen)), batch_size), desc="slices", unit="batch"):
        result = synthesize(exp, *(c[chunk] for c in conds), uncertainty=uncertainty)
        outputs["synth"].append(result.sample.cpu())
        for name, value in (("disagreement", result.disagreement), ("critic", result.critic_map)):
            if value is not None:
                outputs[name].append((value * 2 - 1).cpu())
    shape = volumes[0].shape
    maps = {name: model_slices_to_volume(torch.cat(parts), chosen, shape, size) * mask
            for name, parts in outputs.items() if parts}
    return CaseSynthesis(maps=maps, brain=mask, slices=chosen, reference=loaded[0][1])


def synthesize_volume(exp: Experiment, cond_paths: Sequence[str | Path], out_path: str | Path,
                      batch_size: int = 1, uncertainty: bool = False,
                      progress: Callable = tqdm) -> VolumeResult:
    """Synthesise every brain slice of a case and write the target (and uncertainty) volumes as NIfTI."""
    case = synthesize_case(exp, cond_paths, batch_size, uncertainty, progress=progress)
    out_path = Path(out_path)
    written = {name: save_like(volume, case.reference, out_path if name == "synth" else _sibling(out_path, name))
               for name, volume in case.maps.items()}
    extra = {k: v for k, v in written.items() if k != "synth"}
    return VolumeResult(path=out_path, shape=case.brain.shape, slices=case.slices, extra_paths=extra)


def _sibling(path: Path, tag: str) -> Path:
    """`target.nii.gz` -> `target_<tag>.nii.gz` in the same folder."""
    stem = strip_nifti_suffix(path.name)
    return path.with_name(f"{stem}_{tag}{path.name[len(stem):]}")
