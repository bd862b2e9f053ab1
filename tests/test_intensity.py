"""--intensity_reference inputs (utils/infer/intensity.py): one smooth brightness curve along a volume."""
import numpy as np
import pytest

from utils.eval.coherence import coherence_metrics, slice_means
from utils.infer.intensity import smooth_curve, steady_brightness

SHAPE = (32, 28, 30)


def _volume() -> tuple[np.ndarray, np.ndarray]:
    """A smooth [0, 0.8] volume and a brain that leaves the first and last two axial slices empty."""
    x, y, z = np.meshgrid(*(np.arange(n, dtype=float) for n in SHAPE), indexing="ij")
    brain = (((x - 16) / 13) ** 2 + ((y - 14) / 11) ** 2 < 1) & (z >= 2) & (z < SHAPE[2] - 2)
    volume = 0.4 + 0.2 * np.sin(x / 3) * np.cos(y / 4) + 0.1 * np.sin(z / 6)
    return volume * brain, brain


def _slices(brain: np.ndarray) -> list[int]:
    """The axial slices with brain."""
    return [int(k) for k in np.flatnonzero(brain.any(axis=(0, 1)))]


def test_smooth_curve_holds_its_ends() -> None:
    """A constant stays constant; beyond the fitted positions the curve keeps the value at the nearest end."""
    positions = np.arange(10, 20)
    assert np.allclose(smooth_curve(positions, np.full(10, 0.7), np.arange(30), 3.0), 0.7)
    ramp = smooth_curve(positions, positions / 10.0, np.array([0, 10, 29]), 1.0)
    assert ramp[0] == pytest.approx(ramp[1]) and ramp[2] > ramp[1]


def test_a_steady_synthesis_is_left_as_it_is() -> None:
    """A synthesis whose slices already share one ratio to the inputs comes back unchanged (to rounding)."""
    truth, brain = _volume()
    inputs = [truth, truth * 0.9, truth * 1.1]
    steady = steady_brightness(truth * 0.8, inputs, brain, _slices(brain), trained=(8, 20))
    np.testing.assert_allclose(steady, truth * 0.8, atol=1e-12)


def test_stripes_and_untrained_slices_are_steadied() -> None:
    """Alternating slice brightness and a 40 % brighter band outside the trained slices: after steadying, the
    brightness steps are gone and the band's ratio matches the inside's, while the truth's own z trend stays."""
    truth, brain = _volume()
    slices = _slices(brain)
    gains = np.ones(SHAPE[2])
    gains[::2] += 0.08
    gains[1::2] -= 0.08
    gains[:10] *= 1.4
    synth = np.clip(truth * gains, 0, 1) * brain
    before = coherence_metrics(truth, synth, brain, trained=(10, 27))
    steady = steady_brightness(synth, [truth, truth, truth], brain, slices, trained=(10, 27))
    after = coherence_metrics(truth, steady, brain, trained=(10, 27))
    assert before["brightness_step"] > 0.1 and after["brightness_step"] < 0.2 * before["brightness_step"]
    assert before["brightness_ratio_outside"] > 1.3
    assert after["brightness_ratio_outside"] == pytest.approx(after["brightness_ratio_inside"], abs=0.02)
    assert after["brightness_ratio_std_outside"] < 0.2 * before["brightness_ratio_std_outside"]
    assert np.all(steady[~brain] == 0) and steady.max() <= 1
    means = slice_means(steady, brain, slices) / slice_means(truth, brain, slices)
    assert np.ptp(means) < 0.03  # steady relative to the inputs, so the volume's own trend along z survives


def test_without_a_trained_range_every_slice_is_fitted() -> None:
    """With no recorded range the curve is fitted on all slices: stripes go, the overall level stays."""
    truth, brain = _volume()
    gains = np.where(np.arange(SHAPE[2]) % 2 == 0, 1.1, 0.9)
    steady = steady_brightness(truth * gains, [truth] * 3, brain, _slices(brain))
    ratio = slice_means(steady, brain, _slices(brain)) / slice_means(truth, brain, _slices(brain))
    assert np.ptp(ratio) < 0.05 and ratio.mean() == pytest.approx(1.0, abs=0.02)
