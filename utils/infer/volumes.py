"""Whole-volume synthesis: a case's NIfTI files in, a NIfTI volume on the case's grid out."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import nibabel as nib
import numpy as np
import torch
from skimage.transform import resize
from tqdm import tqdm

from utils.core.errors import UserError
from utils.data.brain import brain_mask
from utils.data.context import volume_neighbours
from utils.data.geometry import from_model_space, to_model_space, unit_to_model
from utils.data.layouts import strip_nifti_suffix
from utils.data.nifti_io import check_volume, load_case_volume, save_like
from utils.data.preprocessing import (
    DEFAULT_NORMALIZATION,
    normalize_volume,
    resize_slices,
)
from utils.infer.experiment import Experiment, experiment_refiner
from utils.infer.intensity import steady_brightness
from utils.infer.refiner import refine_stack
from utils.infer.sampling import synthesize
from utils.model.diffusion import SharedNoise


@dataclass(frozen=True)
class VolumeSampling:
    """How the slices of one volume are sampled and stacked (test.py --nifti, brasyn.py complete); the original's
    way by default."""

    shared_noise: bool = False  # one draw of the sampler's noise (SharedNoise) for every slice
    intensity_reference: str = "none"  # "inputs": steady_brightness along the volume
    refine: bool = False  # the experiment's 3-D refiner (utils/infer/refiner.py) across the stacked slices

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> VolumeSampling:
        """The record of parsed --shared_noise, --intensity_reference and --refine."""
        return cls(args.shared_noise, args.intensity_reference, args.refine)


@dataclass
class CaseSynthesis:
    """Synthesised maps of one case as (H, W, D) float32 volumes in [0, 1], zero outside the brain."""

    maps: dict[str, np.ndarray]  # "synth", and with uncertainty "disagreement" (and "critic" when available)
    brain: np.ndarray
    slices: list[int]
    reference: nib.Nifti1Image


@dataclass
class SampledStack:
    """A volume's synthesised axial slices in model space [-1, 1], before they go back to the case's grid."""

    outputs: dict[str, torch.Tensor]  # (N, 1, S, S): "synth", and with uncertainty "disagreement" (and "critic")
    conditions: torch.Tensor  # (N, 3, S, S): each conditioning contrast's own slice (the centre of any context)
    slices: list[int]
    volumes: list[np.ndarray]  # the three conditioning volumes as read
    brain: np.ndarray
    reference: nib.Nifti1Image


@dataclass
class VolumeResult:
    """Where a synthesised volume went and what was synthesised."""

    path: Path
    shape: tuple[int, ...]
    slices: list[int]
    extra_paths: dict[str, Path]


def volume_to_model_slices(volume: np.ndarray, slice_indices: Sequence[int], image_size: int,
                           name: str = "volume", method: str = DEFAULT_NORMALIZATION) -> torch.Tensor:
    """Normalise a volume as pre_process.py --normalize `method` does; the chosen axial slices in model space."""
    # float64 until after the resize, then float32: the arithmetic of the preprocessed training arrays.
    normalised = normalize_volume(volume, name, dtype=np.float64, method=method)
    axial = np.moveaxis(normalised, 2, 0)[list(slice_indices)]
    return to_model_space(resize_slices(axial, image_size).astype(np.float32), image_size)


def condition_slices(volume: np.ndarray, slice_indices: Sequence[int], image_size: int, context_slices: int = 0,
                     name: str = "volume", method: str = DEFAULT_NORMALIZATION) -> torch.Tensor:
    """The chosen slices of a conditioning volume in model space, (N, 2K + 1, S, S): each with its K neighbours on
    either side (--context_slices; K = 0 is the slice alone), repeating the volume's first and last slice."""
    rows = volume_neighbours(slice_indices, context_slices, volume.shape[2])
    needed = sorted({k for row in rows for k in row})
    slices = volume_to_model_slices(volume, needed, image_size, name, method)[:, 0]
    position = {k: i for i, k in enumerate(needed)}
    return slices[torch.tensor([[position[k] for k in row] for row in rows])]


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


def resolution_round_trip(volume: np.ndarray, brain: np.ndarray, image_size: int,
                          method: str = DEFAULT_NORMALIZATION) -> np.ndarray:
    """The volume as a flawless model at `image_size` would complete it: each brain slice to model space and back,
    masked to the brain. Scored against the volume itself, it gives the ceiling the model's resolution sets."""
    slices = [int(k) for k in np.flatnonzero(brain.any(axis=(0, 1)))]
    model = volume_to_model_slices(volume, slices, image_size, "volume", method)
    return model_slices_to_volume(model, slices, volume.shape, image_size) * brain


def _batches(items: Sequence[int], size: int) -> list[list[int]]:
    """Split `items` into consecutive lists of at most `size`."""
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def read_conditions(conditions: Sequence[str | Path | np.ndarray]) -> tuple[list[np.ndarray], nib.Nifti1Image]:
    """The three conditioning volumes (NIfTI paths or (H, W, D) arrays) on one grid, and a NIfTI image to copy."""
    volumes, reference = [], None
    for i, item in enumerate(conditions):
        name = f"--cond{i + 1}"
        if isinstance(item, np.ndarray):
            volume = np.asarray(item, dtype=np.float64)
            if volume.ndim != 3:
                raise UserError(f"{name}: expected a 3-D (H, W, D) array, got shape {volume.shape}")
            check_volume(volume, name)
        else:
            volume, image = load_case_volume(item, name)
            reference = image if reference is None else reference
        volumes.append(volume)
    if len({v.shape for v in volumes}) != 1:
        labels = ["array" if isinstance(c, np.ndarray) else Path(c).name for c in conditions]
        raise UserError("the conditioning volumes differ in shape ("
                        + ", ".join(f"{label} {v.shape}" for label, v in zip(labels, volumes))
                        + "); resample them to one grid first")
    # Arrays carry no geometry: their output gets an identity affine unless a file among the inputs has one.
    return volumes, reference if reference is not None else nib.Nifti1Image(np.zeros((1, 1, 1), np.float32), np.eye(4))


def sample_stack(exp: Experiment, conditions: Sequence[str | Path | np.ndarray], batch_size: int = 1,
                 uncertainty: bool = False, slice_indices: Sequence[int] | None = None, progress: Callable = tqdm,
                 shared_noise: bool = False) -> SampledStack:
    """Sample the target's axial slices for a case's three conditions (NIfTI files or arrays), in model space.

    By default every axial slice with brain is synthesised; `slice_indices` picks some (e.g. one for a preview).
    """
    volumes, reference = read_conditions(conditions)
    mask = brain_mask(volumes)
    brain_slices = [int(k) for k in np.flatnonzero(mask.any(axis=(0, 1)))]
    chosen = brain_slices if slice_indices is None else [int(k) for k in slice_indices]
    size, context = exp.args.image_size, exp.args.context_slices
    conds = [condition_slices(v, chosen, size, context, f"--cond{i + 1}", exp.args.normalize)
             for i, v in enumerate(volumes)]
    # Everything is collected in model space [-1, 1] so one inverse (from_model_space) maps it back; the
    # uncertainty maps are [0, 1] quantities, hence the 2m − 1.
    outputs: dict[str, list[torch.Tensor]] = {"synth": [], "disagreement": [], "critic": []}
    noise = (SharedNoise.draw(exp.args.num_timesteps, exp.args.nz, (exp.args.num_channels, size, size), exp.device)
             if shared_noise else None)
    for chunk in progress(_batches(range(len(chosen)), batch_size), desc="slices", unit="batch"):
        result = synthesize(exp, *(c[chunk] for c in conds), uncertainty=uncertainty, noise=noise)
        outputs["synth"].append(result.sample.cpu())
        for name, value in (("disagreement", result.disagreement), ("critic", result.critic_map)):
            if value is not None:
                outputs[name].append(unit_to_model(value).cpu())
    own = torch.cat([c[:, context:context + 1] for c in conds], dim=1)
    return SampledStack(outputs={name: torch.cat(parts) for name, parts in outputs.items() if parts},
                        conditions=own, slices=chosen, volumes=volumes, brain=mask, reference=reference)


def synthesize_case(exp: Experiment, conditions: Sequence[str | Path | np.ndarray], batch_size: int = 1,
                    uncertainty: bool = False, slice_indices: Sequence[int] | None = None,
                    progress: Callable = tqdm, sampling: VolumeSampling = VolumeSampling()) -> CaseSynthesis:
    """Synthesise the target for a case's three conditions (NIfTI files or arrays), in the inputs' voxel grid.

    By default every axial slice with brain is synthesised; `slice_indices` picks some (e.g. one for a preview).
    `sampling` says how the slices are sampled and stacked (VolumeSampling).
    """
    stack = sample_stack(exp, conditions, batch_size, uncertainty, slice_indices, progress, sampling.shared_noise)
    if sampling.refine:
        stack.outputs["synth"] = refine_stack(experiment_refiner(exp), stack.outputs["synth"], stack.conditions,
                                              stack.slices)
    shape, size, mask = stack.brain.shape, exp.args.image_size, stack.brain
    maps = {name: model_slices_to_volume(part, stack.slices, shape, size) * mask
            for name, part in stack.outputs.items()}
    if sampling.intensity_reference == "inputs":
        inputs = [normalize_volume(v, f"--cond{i + 1}", method=exp.args.normalize)
                  for i, v in enumerate(stack.volumes)]
        maps["synth"] = steady_brightness(maps["synth"], inputs, mask, stack.slices, exp.args.train_slice_range)
    return CaseSynthesis(maps=maps, brain=mask, slices=stack.slices, reference=stack.reference)


def synthesize_volume(exp: Experiment, cond_paths: Sequence[str | Path], out_path: str | Path,
                      batch_size: int = 1, uncertainty: bool = False,
                      progress: Callable = tqdm, sampling: VolumeSampling = VolumeSampling()) -> VolumeResult:
    """Synthesise every brain slice of a case and write the target (and uncertainty) volumes as NIfTI."""
    case = synthesize_case(exp, cond_paths, batch_size, uncertainty, progress=progress, sampling=sampling)
    written = save_case(case, out_path)
    extra = {k: v for k, v in written.items() if k != "synth"}
    return VolumeResult(path=Path(out_path), shape=case.brain.shape, slices=case.slices, extra_paths=extra)


def save_case(case: CaseSynthesis, out_path: str | Path) -> dict[str, Path]:
    """Write a case's volumes as NIfTI on its grid: the target at `out_path`, each map beside it."""
    out_path = Path(out_path)
    return {name: save_like(volume, case.reference, out_path if name == "synth" else sibling_path(out_path, name))
            for name, volume in case.maps.items()}


def sibling_path(path: Path, tag: str) -> Path:
    """`target.nii.gz` -> `target_<tag>.nii.gz` in the same folder."""
    stem = strip_nifti_suffix(path.name)
    return path.with_name(f"{stem}_{tag}{path.name[len(stem):]}")
