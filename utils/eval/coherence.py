"""3-D coherence of a volume stacked from 2-D syntheses: SSIM per plane orientation, slice brightness, gradients."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from skimage.metrics import structural_similarity

from utils.data.preprocessing import resize_masks, resize_slices
from utils.eval.metrics import SSIM_WINDOW

# Volumes are (H, W, D) on the BraTS grid: axis 0 runs left-right, 1 front-back, 2 (the synthesised slices) up-down.
PLANES = {"axial": 2, "coronal": 1, "sagittal": 0}


COHERENCE_COLUMNS = ("ssim_axial", "ssim_coronal", "ssim_sagittal", "brightness_ratio", "brightness_ratio_std",
                     "brightness_step", "brightness_offset_std", "gradient_ratio")
# The same axial numbers split by where a slice lies against the slice range the model was trained on.
RANGE_COLUMNS = tuple(f"{metric}_{side}" for side in ("inside", "outside")
                      for metric in ("ssim_axial", "brightness_ratio", "brightness_ratio_std", "brightness_offset_std"))


COHERENCE_METRICS = {
    "ssim_<plane>": "mean over the axial, coronal or sagittal planes that hold brain of each plane's 2-D SSIM (7x7 "
                    "uniform window, data_range 1) averaged over its brain pixels; the synthesised slices are axial, "
                    "so coronal and sagittal planes cut across them",
    "brightness_ratio": "mean over axial slices with brain of (synthesis brain mean) / (truth brain mean)",
    "brightness_ratio_std": "standard deviation of that per-slice ratio over the slices",
    "brightness_step": "mean |difference| of that ratio between neighbouring axial slices (stripes make it large)",
    "brightness_offset_std": "standard deviation over axial slices with brain of (synthesis brain mean - truth brain "
                             "mean) / the truth's mean over the whole brain: the brightness spread in units of the "
                             "volume's brightness, which a slice whose truth is nearly dark cannot inflate",
    "gradient_ratio": "(mean |through-plane difference| / mean |in-plane difference|) of the synthesis divided by "
                      "the same of the truth, over neighbouring brain voxels: 1 = as smooth across slices as the "
                      "truth, above 1 = stripes",
    "<metric>_inside, <metric>_outside": "ssim_axial, brightness_ratio, brightness_ratio_std and "
                                          "brightness_offset_std over the axial slices inside / outside the slice "
                                          "range the model was trained on (brasyn_report.json of complete records "
                                          "it); NaN where unknown or none",
    "coherence_resolution": "the axial grid these are computed on: native, or N with --model_resolution N (each "
                            "axial plane resized to N x N first, as pre_process.py resizes, the brain mask nearest)",
}


def _crop_box(brain: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The brain's bounding box grown by `margin` (at least SSIM_WINDOW wide where the volume allows)."""
    box = []
    for axis in range(brain.ndim):
        hits = np.flatnonzero(brain.any(axis=tuple(a for a in range(brain.ndim) if a != axis)))
        start, stop = max(int(hits[0]) - margin, 0), min(int(hits[-1]) + margin + 1, brain.shape[axis])
        if stop - start < SSIM_WINDOW:
            start, stop = 0, brain.shape[axis]
        box.append(slice(start, stop))
    return tuple(box)


def plane_ssim_scores(truth: np.ndarray, synth: np.ndarray, brain: np.ndarray, axis: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(indices along `axis`, 2-D SSIM over brain pixels) of every plane across `axis` that holds brain; [0, 1] data."""
    if not brain.any():
        return np.zeros(0, int), np.zeros(0)
    # Brain pixels lie at least half a window inside the crop, so cropping does not change their SSIM.
    box = _crop_box(brain, SSIM_WINDOW // 2)
    truth, synth, brain = (np.moveaxis(v[box], axis, 0) for v in (truth, synth, brain))
    if min(truth.shape[1:]) < SSIM_WINDOW:
        return np.zeros(0, int), np.zeros(0)
    planes = np.flatnonzero(brain.any(axis=(1, 2)))
    scores = []
    for k in planes:
        _, ssim_map = structural_similarity(synth[k], truth[k], data_range=1.0, win_size=SSIM_WINDOW, full=True)
        scores.append(float(ssim_map[brain[k]].mean()))
    return planes + box[axis].start, np.asarray(scores)


def slice_means(volume: np.ndarray, brain: np.ndarray, slices: Sequence[int]) -> np.ndarray:
    """Brain mean of each axial slice of an (H, W, D) volume (NaN where a slice has no brain)."""
    means = []
    for k in slices:
        inside = brain[:, :, k]
        means.append(float(volume[:, :, k][inside].mean()) if inside.any() else math.nan)
    return np.asarray(means)


def slice_brightness(truth: np.ndarray, synth: np.ndarray, brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per axial slice with brain: the ratio synthesis brain mean / truth brain mean (NaN where the truth's mean is
    0) and the offset (synthesis - truth brain mean) / the truth's whole-brain mean (NaN where that mean is 0)."""
    slices = np.flatnonzero(brain.any(axis=(0, 1)))
    truth_means, synth_means = slice_means(truth, brain, slices), slice_means(synth, brain, slices)
    scale = float(truth[brain].mean()) if brain.any() else 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(truth_means > 0, synth_means / truth_means, math.nan)
    offsets = (synth_means - truth_means) / scale if scale > 0 else np.full(len(slices), math.nan)
    return ratios, offsets


def brightness_steps(ratios: np.ndarray) -> float:
    """Mean |step| of a per-slice ratio between neighbouring slices (NaN with fewer than two finite ratios)."""
    steps = np.abs(np.diff(ratios))
    steps = steps[np.isfinite(steps)]
    return float(steps.mean()) if steps.size else math.nan


def _mean_abs_difference(volume: np.ndarray, brain: np.ndarray, axis: int) -> float:
    """Mean |v[k+1] - v[k]| along `axis` over neighbouring voxel pairs that both lie in the brain."""
    ahead = [slice(None)] * volume.ndim
    behind = [slice(None)] * volume.ndim
    ahead[axis], behind[axis] = slice(1, None), slice(None, -1)
    pairs = brain[tuple(ahead)] & brain[tuple(behind)]
    if not pairs.any():
        return math.nan
    return float(np.abs(volume[tuple(ahead)] - volume[tuple(behind)])[pairs].mean())


def through_plane_ratio(volume: np.ndarray, brain: np.ndarray) -> float:
    """Mean |difference| across axial slices over the mean in-plane |difference| (both in-plane axes), in the brain."""
    in_plane = (_mean_abs_difference(volume, brain, 0) + _mean_abs_difference(volume, brain, 1)) / 2
    through = _mean_abs_difference(volume, brain, PLANES["axial"])
    return through / in_plane if in_plane > 0 else math.nan


def at_resolution(volume: np.ndarray, brain: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Each axial plane of a [0, 1] volume and its brain mask resized to size x size, as pre_process.py resizes."""
    image = np.moveaxis(resize_slices(np.moveaxis(volume, 2, 0), size), 0, 2)
    mask = np.moveaxis(resize_masks(np.moveaxis(brain, 2, 0), size), 0, 2) > 0
    return image, mask


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of the finite values (NaN, NaN when there are none)."""
    finite = values[np.isfinite(values)]
    return (float(finite.mean()), float(finite.std())) if finite.size else (math.nan, math.nan)


def in_slice_range(indices: np.ndarray, trained: Sequence[int]) -> np.ndarray:
    """Which slice indices lie in the [first, last] range."""
    return (indices >= trained[0]) & (indices <= trained[1])


def range_metrics(axial: tuple[np.ndarray, np.ndarray], ratios: np.ndarray, offsets: np.ndarray, slices: np.ndarray,
                  trained: Sequence[int] | None) -> dict[str, float]:
    """RANGE_COLUMNS: axial SSIM, brightness ratio and offset of the slices inside and outside the trained
    [first, last]."""
    if trained is None:
        return dict.fromkeys(RANGE_COLUMNS, math.nan)
    result = {}
    for side, keep in (("inside", True), ("outside", False)):
        scores = axial[1][in_slice_range(axial[0], trained) == keep]
        result[f"ssim_axial_{side}"] = float(scores.mean()) if scores.size else math.nan
        chosen = in_slice_range(slices, trained) == keep
        result[f"brightness_ratio_{side}"], result[f"brightness_ratio_std_{side}"] = _mean_std(ratios[chosen])
        result[f"brightness_offset_std_{side}"] = _mean_std(offsets[chosen])[1]
    return result


def coherence_metrics(truth: np.ndarray, synth: np.ndarray, brain: np.ndarray, size: int | None = None,
                      trained: Sequence[int] | None = None) -> dict[str, float]:
    """COHERENCE_METRICS of a [0, 1] synthesis against the [0, 1] truth; at size x size axial planes when given.

    `trained`: the [first, last] axial slices the model was trained on, for RANGE_COLUMNS (NaN without it).
    """
    if size is not None:
        truth, mask = at_resolution(truth, brain, size)
        synth, brain = at_resolution(synth, brain, size)[0], mask
    planes = {plane: plane_ssim_scores(truth, synth, brain, axis) for plane, axis in PLANES.items()}
    result = {f"ssim_{plane}": float(scores.mean()) if scores.size else math.nan
              for plane, (_, scores) in planes.items()}
    ratios, offsets = slice_brightness(truth, synth, brain)
    result["brightness_ratio"], result["brightness_ratio_std"] = _mean_std(ratios)
    result["brightness_step"] = brightness_steps(ratios)
    result["brightness_offset_std"] = _mean_std(offsets)[1]
    truth_ratio = through_plane_ratio(truth, brain)
    result["gradient_ratio"] = through_plane_ratio(synth, brain) / truth_ratio if truth_ratio > 0 else math.nan
    slices = np.flatnonzero(brain.any(axis=(0, 1)))
    return {**result, **range_metrics(planes["axial"], ratios, offsets, slices, trained)}
