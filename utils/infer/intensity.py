"""--intensity_reference inputs: one brightness curve along a volume, so its synthesised slices do not flicker."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from utils.eval.coherence import in_slice_range, slice_means

# Width (in slices, the Gaussian's sigma) of the curve's smoothing: wide enough to average out one slice's error,
# narrow next to the ~130 brain slices of a BraTS volume, so anatomy's own brightness changes stay.
SMOOTHING_SLICES = 4.0


def smooth_curve(positions: np.ndarray, values: np.ndarray, at: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-weighted mean of `values` (at `positions`) evaluated `at`; held at the ends beyond the positions."""
    held = np.clip(at, positions.min(), positions.max()).astype(np.float64)
    weights = np.exp(-0.5 * ((held[:, None] - positions[None, :]) / sigma) ** 2)
    return weights @ values / weights.sum(axis=1)


def steady_brightness(synth: np.ndarray, inputs: Sequence[np.ndarray], brain: np.ndarray, slices: Sequence[int],
                      trained: Sequence[int] | None = None, sigma: float = SMOOTHING_SLICES) -> np.ndarray:
    """Rescale each synthesised axial slice so its brain mean over the inputs' follows one smooth curve.

    `inputs` are the three conditioning volumes normalised as the model saw them, `synth` in [0, 1]. The curve is
    fitted on the `slices` inside the `trained` [first, last] axial range (all of them when that is unknown or
    holds none) and held constant beyond it: out there the model has seen no training slice, and its brightness
    is the least reliable (docs/brasyn.md).
    """
    slices = np.asarray(slices, dtype=int)
    if slices.size == 0:
        return synth
    reference = slice_means(np.mean(inputs, axis=0), brain, slices)
    ratio = slice_means(synth, brain, slices) / np.where(reference > 0, reference, np.nan)
    usable = np.isfinite(ratio) & (ratio > 0)
    fit = usable & (in_slice_range(slices, trained) if trained is not None else True)
    if not fit.any():
        fit = usable
    if not fit.any():
        return synth
    target = smooth_curve(slices[fit], ratio[fit], slices, sigma)
    steady = synth.copy()
    for k, index in enumerate(slices):
        if usable[k]:
            steady[:, :, index] *= target[k] / ratio[k]
    return np.clip(steady, 0, 1) * brain
