"""utils/eval/coherence.py on constructed volumes: per-plane SSIM, slice brightness steps, gradient ratio."""
import math

import numpy as np
import pytest

from utils.eval.coherence import (
    at_resolution,
    brightness_steps,
    coherence_metrics,
    plane_ssim_scores,
    slice_brightness,
    through_plane_ratio,
)

SHAPE = (40, 36, 24)


def _smooth_volume() -> tuple[np.ndarray, np.ndarray]:
    """A smooth textured [0, 1] volume and an ellipsoid brain that leaves the outer slices of every axis empty."""
    x, y, z = np.meshgrid(*(np.arange(n, dtype=float) for n in SHAPE), indexing="ij")
    brain = ((x - 20) / 15) ** 2 + ((y - 18) / 13) ** 2 + ((z - 12) / 9) ** 2 < 1
    volume = 0.5 + 0.2 * np.sin(x / 3) * np.cos(y / 4) + 0.15 * np.sin(z / 3 + x / 7)
    return np.clip(volume, 0, 1) * brain, brain


def _striped(volume: np.ndarray, amplitude: float) -> np.ndarray:
    """The volume with axial slices alternately brighter and darker by `amplitude` (a stacked-2-D artefact)."""
    signs = np.where(np.arange(volume.shape[2]) % 2 == 0, 1.0, -1.0)
    return np.clip(volume * (1 + amplitude * signs), 0, 1)


def test_identical_volumes_are_perfectly_coherent() -> None:
    """The truth against itself: SSIM 1 in every plane orientation, ratio 1, no steps, gradient ratio 1."""
    truth, brain = _smooth_volume()
    metrics = coherence_metrics(truth, truth, brain)
    for plane in ("axial", "coronal", "sagittal"):
        assert metrics[f"ssim_{plane}"] == pytest.approx(1)
    assert metrics["brightness_ratio"] == pytest.approx(1) and metrics["brightness_ratio_std"] == pytest.approx(0)
    assert metrics["brightness_step"] == pytest.approx(0) and metrics["gradient_ratio"] == pytest.approx(1)
    at_64 = coherence_metrics(truth, truth, brain, size=64)
    assert at_64["ssim_coronal"] == pytest.approx(1) and at_64["gradient_ratio"] == pytest.approx(1)


def test_alternating_slice_brightness_is_caught() -> None:
    """Stripes of slice brightness: larger steps and gradient ratio than a smooth (uniformly brighter) synthesis,
    and the planes that cut across the slices score lower SSIM than the axial ones."""
    truth, brain = _smooth_volume()
    smooth = coherence_metrics(truth, truth * 1.1, brain)
    striped = coherence_metrics(truth, _striped(truth, 0.1), brain)
    assert smooth["brightness_ratio"] == pytest.approx(1.1) and smooth["brightness_step"] == pytest.approx(0, abs=1e-9)
    assert striped["brightness_step"] == pytest.approx(0.2, rel=0.05)  # ratios alternate 1.1, 0.9, ...
    assert striped["brightness_ratio_std"] > 0.09 > smooth["brightness_ratio_std"]
    assert smooth["gradient_ratio"] == pytest.approx(1, abs=0.01)
    assert striped["gradient_ratio"] > 1.2
    assert striped["ssim_coronal"] < striped["ssim_axial"] and striped["ssim_sagittal"] < striped["ssim_axial"]
    assert smooth["ssim_axial"] == pytest.approx(smooth["ssim_coronal"], abs=0.01)


def test_only_planes_with_brain_count() -> None:
    """Planes without brain and voxels far from it do not change the scores; a plane's score is its brain mean."""
    truth, brain = _smooth_volume()
    synth = truth.copy()
    synth[:, :, 0] = 1.0  # an axial slice with no brain, far from it
    synth[0] = 0.3
    for axis in (0, 1, 2):
        assert plane_ssim_scores(truth, synth, brain, axis)[1] == pytest.approx(1)
    assert all(len(values) == int(brain.any(axis=(0, 1)).sum()) for values in slice_brightness(truth, synth, brain))
    assert plane_ssim_scores(truth, synth, np.zeros_like(brain), 2)[1].size == 0


def test_helpers_on_known_values() -> None:
    """Steps of a known ratio sequence; a volume constant across slices has through-plane ratio 0."""
    assert brightness_steps(np.array([1.0, 1.2, 0.9, np.nan, 1.0])) == pytest.approx((0.2 + 0.3) / 2)
    assert math.isnan(brightness_steps(np.array([1.0])))
    truth, brain = _smooth_volume()
    column = np.repeat(truth[:, :, 12:13], SHAPE[2], axis=2)
    assert through_plane_ratio(column, np.ones_like(brain)) == 0
    image, mask = at_resolution(truth, brain, 64)
    assert image.shape == mask.shape == (64, 64, SHAPE[2]) and mask.dtype == bool
    assert mask[:, :, 12].mean() == pytest.approx(brain[:, :, 12].mean(), rel=0.1)


def test_slices_outside_the_trained_range_are_scored_apart() -> None:
    """Brighter, noisier slices outside the trained range show in the _outside columns only; NaN without a range."""
    truth, brain = _smooth_volume()
    synth = truth.copy()
    noise = np.random.default_rng(0).normal(0, 0.05, truth.shape)
    synth[:, :, :8] = np.clip(truth[:, :, :8] * 1.3 + noise[:, :, :8], 0, 1) * brain[:, :, :8]
    metrics = coherence_metrics(truth, synth, brain, trained=(8, 23))
    assert metrics["ssim_axial_inside"] == pytest.approx(1)
    assert metrics["ssim_axial_outside"] < 0.95
    assert metrics["brightness_ratio_inside"] == pytest.approx(1) and metrics["brightness_ratio_std_inside"] < 1e-9
    assert metrics["brightness_ratio_outside"] > 1.15
    outside = [k for k in range(8) if brain[:, :, k].any()]
    assert metrics["ssim_axial"] == pytest.approx(
        (metrics["ssim_axial_inside"] * (int(brain.any(axis=(0, 1)).sum()) - len(outside))
         + metrics["ssim_axial_outside"] * len(outside)) / int(brain.any(axis=(0, 1)).sum()))
    assert all(math.isnan(v) for k, v in coherence_metrics(truth, synth, brain).items() if k.endswith(("_inside",
                                                                                                      "_outside")))
    everything = coherence_metrics(truth, synth, brain, trained=(0, 23))
    assert math.isnan(everything["ssim_axial_outside"]) and everything["ssim_axial_inside"] == metrics["ssim_axial"]


def test_brightness_offset_spread_is_not_inflated_by_a_nearly_dark_truth_slice() -> None:
    """The same small brightness error on every slice: where the truth's end slice is nearly dark, the per-slice
    ratio's spread explodes and the offset's (in units of the volume's brightness) does not; a real swing shows in
    both."""
    truth, brain = _smooth_volume()
    end = int(np.flatnonzero(brain.any(axis=(0, 1)))[0])
    truth[:, :, end] *= 0.01
    synth = np.clip(truth + 0.02 * brain, 0, 1)
    even = coherence_metrics(truth, synth, brain, trained=(end + 1, 23))
    assert even["brightness_ratio_std"] > 0.3 and even["brightness_offset_std"] < 0.01
    assert even["brightness_offset_std_outside"] == pytest.approx(0, abs=1e-6)
    swinging = synth.copy()
    swinging[:, :, 8] = np.clip(swinging[:, :, 8] * 1.5, 0, 1)
    assert coherence_metrics(truth, swinging, brain)["brightness_offset_std"] > 0.05
