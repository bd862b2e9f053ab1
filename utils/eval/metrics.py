"""The metric protocols (paper, brain, lesion, plain): PSNR, SSIM and MAE of one slice, and their summaries."""
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

SSIM_WINDOW = 7  # skimage's default win_size, which the original used


METRICS = ("psnr", "ssim", "mae")


PROTOCOLS = ("brain", "lesion", "plain")


PROTOCOL_TITLES = {
    "brain": "Whole brain (paper protocol, brain mask)",
    "lesion": "Lesion only (paper protocol, lesion mask)",
    "plain": "Plain ([0, 1] images, whole image)",
}


NAN_METRICS = {"ssim": math.nan, "psnr": math.nan, "mae": math.nan}


# --------------------------------------------------------------------------- protocol steps
def original_saved_levels(image: np.ndarray) -> np.ndarray:
    """The 8-bit image the original test.py wrote for a float image (step A), as uint8 levels.

    Its saving step in torch float32, op for op: x / mean(x), then save_image(normalize=True), i.e. (x − min) /
    max(max − min, 1e-5) and x·255 + 0.5 clamped to [0, 255] and truncated. An image whose mean is not positive (all
    zero) gives zeros; the original divided by zero there.
    """
    tensor = torch.tensor(np.asarray(image, dtype=np.float32))  # a copy: memory-mapped stacks are read-only
    mean = tensor.mean()
    if not float(mean) > 0:
        return np.zeros(tensor.shape, dtype=np.uint8)
    tensor = tensor / mean
    # torchvision first clamps to [min, max], which changes nothing, then shifts and scales by a Python float.
    low, high = float(tensor.min()), float(tensor.max())
    tensor.sub_(low).div_(max(high - low, 1e-5))
    return tensor.mul_(255).add_(0.5).clamp_(0, 255).to(torch.uint8).numpy()


def as_saved_image(image: np.ndarray) -> np.ndarray:
    """What the original metric_calc.py read for a slice: 8-bit levels (uint8) as they are, floats after step A."""
    image = np.asarray(image)
    return image if image.dtype == np.uint8 else original_saved_levels(image)


def percentile_minmax(image: np.ndarray, low_perc: float = 1.0, high_perc: float = 99.0) -> np.ndarray:
    """Clip an image to percentiles of its non-zero pixels, then min–max it to [0, 1] (step 1)."""
    image = np.asarray(image, dtype=np.float64)
    foreground = image[image > 0]
    if foreground.size == 0:
        return np.zeros_like(image)
    low, high = np.percentile(foreground, [low_perc, high_perc])
    # The clip applies to the whole image, so the zero background rises to `low` and min–max sends it back to 0.
    clipped = np.clip(image, low, high)
    span = clipped.max() - clipped.min()
    if span == 0:
        return np.zeros_like(image)
    return (clipped - clipped.min()) / span


def mean_normalise(image: np.ndarray) -> np.ndarray:
    """Divide a non-negative image by its full-image mean (step 2); an all-zero image stays zero."""
    mean = image.mean()
    return image / mean if mean > 0 else np.zeros_like(image)


def _grow_span(first: int, last: int, length: int, min_size: int) -> slice:
    """Enlarge the index span [first, last] symmetrically to `min_size` (extra on the far side), inside [0, length)."""
    size = last - first + 1
    if size < min_size:
        first -= (min_size - size) // 2
        last += (min_size - size + 1) // 2
        # Shift rather than clamp at a border, so the crop keeps the SSIM window's size.
        if first < 0:
            last, first = last - first, 0
        if last > length - 1:
            first, last = first - (last - (length - 1)), length - 1
        first = max(first, 0)
    return slice(first, last + 1)


def mask_box(mask: np.ndarray, min_size: int = SSIM_WINDOW) -> tuple[slice, slice] | None:
    """The mask's bounding box grown to at least min_size × min_size inside the image, or None for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return (_grow_span(int(rows[0]), int(rows[-1]), mask.shape[0], min_size),
            _grow_span(int(cols[0]), int(cols[-1]), mask.shape[1], min_size))


# --------------------------------------------------------------------------- metric primitives
def _check_pair(real: np.ndarray, synth: np.ndarray, mask: np.ndarray | None) -> None:
    """Raise ValueError unless real, synth (and mask) are 2-D images of one shape, large enough for SSIM."""
    if real.ndim != 2 or real.shape != synth.shape:
        raise ValueError(f"real and synthetic images must be 2-D and of one shape, got {real.shape} and {synth.shape}")
    if mask is not None and mask.shape != real.shape:
        raise ValueError(f"the mask has shape {mask.shape} but the images have {real.shape}")
    if min(real.shape) < SSIM_WINDOW:
        raise ValueError(f"images of {real.shape[0]}×{real.shape[1]} are smaller than SSIM's "
                         f"{SSIM_WINDOW}×{SSIM_WINDOW} window")


def psnr(real: np.ndarray, synth: np.ndarray, data_range: float) -> float:
    """skimage PSNR of `synth` against `real`; inf for identical images (skimage would divide by zero)."""
    if np.array_equal(real, synth):
        return math.inf
    return float(peak_signal_noise_ratio(real, synth, data_range=data_range))


def _ssim_psnr(real: np.ndarray, synth: np.ndarray, data_range: float) -> tuple[float, float]:
    """skimage SSIM and PSNR with the original's argument order; identical images give (1, inf)."""
    if np.array_equal(real, synth):
        return 1.0, math.inf
    return float(structural_similarity(synth, real, data_range=data_range)), psnr(real, synth, data_range)


def _as_mask(mask: Any) -> np.ndarray:
    """A boolean mask from bool, 0/1, 0/255 or [0, 1] float values (true above 0.5)."""
    return np.asarray(mask) > 0.5


# --------------------------------------------------------------------------- public metrics
def saved_image_metrics(real: np.ndarray, synth: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """SSIM, PSNR and MAE of the original metric_calc.py (step B) on two images as it read them; NaN for an empty mask.

    Any intensity scale gives the same numbers (up to rounding): the images are normalised per image first.
    """
    real = np.asarray(real, dtype=np.float64)
    synth = np.asarray(synth, dtype=np.float64)
    mask = _as_mask(mask)
    _check_pair(real, synth, mask)
    box = mask_box(mask)
    if box is None:
        return dict(NAN_METRICS)
    real_n, synth_n = percentile_minmax(real), percentile_minmax(synth)
    real_p, synth_p = mean_normalise(real_n), mean_normalise(synth_n)
    inside = mask[box].astype(np.float64)
    real_pc, synth_pc = real_p[box] * inside, synth_p[box] * inside
    data_range = max(real_pc.max(), synth_pc.max()) - min(real_pc.min(), synth_pc.min())
    ssim, psnr_db = _ssim_psnr(real_pc, synth_pc, data_range)
    mae = float(np.mean(np.abs(real_n[box] * inside - synth_n[box] * inside)))
    return {"ssim": ssim, "psnr": psnr_db, "mae": mae}


def paper_metrics(real: np.ndarray, synth: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """SSIM, PSNR and MAE of one slice under the paper protocol (module docstring: step A, then step B).

    Float images are [0, 1] slices ((x + 1) / 2 of the model output, as test.py stores them); uint8 images are the
    original's own 8-bit files. NaN for an empty mask.
    """
    _check_pair(np.asarray(real), np.asarray(synth), None)
    return saved_image_metrics(as_saved_image(real), as_saved_image(synth), mask)


def plain_metrics(real01: np.ndarray, synth01: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """SSIM and PSNR (data_range 1) and MAE of [0, 1] images, over the whole image or the pixels of `mask`.

    With a mask, SSIM is skimage's SSIM map averaged over the mask pixels that skimage itself would average (those
    at least 3 pixels from the border), PSNR and MAE use the mask pixels; an empty mask gives NaN.
    """
    real = np.asarray(real01, dtype=np.float64)
    synth = np.asarray(synth01, dtype=np.float64)
    inside = None if mask is None else _as_mask(mask)
    _check_pair(real, synth, inside)
    mean_ssim, ssim_map = structural_similarity(synth, real, data_range=1.0, full=True)
    if inside is None:
        return {"ssim": float(mean_ssim), "psnr": psnr(real, synth, 1.0), "mae": float(np.mean(np.abs(real - synth)))}
    if not inside.any():
        return dict(NAN_METRICS)
    pad = (SSIM_WINDOW - 1) // 2
    interior = np.zeros_like(inside)
    interior[pad:-pad, pad:-pad] = True
    scored = inside & interior
    ssim = float(ssim_map[scored].mean()) if scored.any() else math.nan
    return {"ssim": ssim, "psnr": psnr(real[inside], synth[inside], 1.0),
            "mae": float(np.mean(np.abs(real[inside] - synth[inside])))}


# --------------------------------------------------------------------------- summaries
@dataclass(frozen=True)
class Summary:
    """mean ± std of one metric over slices, with the counts of NaN (skipped) and infinite (left out) values."""

    mean: float
    std: float
    n: int
    n_nan: int
    n_inf: int

    def __str__(self) -> str:
        """`mean ± std` with three decimals, as in the paper's table."""
        if self.n == 0 and self.n_inf > 0:
            return "inf (identical)"
        if self.n == 0:
            return "n/a"
        return f"{self.mean:.3f} ± {self.std:.3f}"

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-friendly fields (NaN becomes null)."""
        def finite(value: float) -> float | None:
            """The value, or None when it is not finite."""
            return value if math.isfinite(value) else None
        return {"mean": finite(self.mean), "std": finite(self.std), "n": self.n, "n_nan": self.n_nan,
                "n_inf": self.n_inf}


def summarize_values(values: Iterable[float]) -> Summary:
    """nanmean ± nanstd of the finite values; NaN (empty mask) and inf (identical images) are counted, not averaged."""
    array = np.asarray(list(values), dtype=np.float64)
    finite = array[np.isfinite(array)]
    n_nan = int(np.isnan(array).sum())
    n_inf = int(array.size - finite.size - n_nan)
    if finite.size == 0:
        return Summary(math.nan, math.nan, 0, n_nan, n_inf)
    return Summary(float(finite.mean()), float(finite.std()), int(finite.size), n_nan, n_inf)


def metric_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The `<protocol>_<metric>` columns present in the rows, in protocol then metric order."""
    present = set(rows[0]) if rows else set()
    return [f"{p}_{m}" for p in PROTOCOLS for m in METRICS if f"{p}_{m}" in present]


def summarize(rows_or_values: Sequence[Mapping[str, Any]] | Iterable[float]) -> dict[str, Summary] | Summary:
    """Per-slice rows → {column: Summary} for every metric column; a plain list of numbers → one Summary.

    str(Summary) is the `mean ± std` text.
    """
    items = list(rows_or_values)
    if items and isinstance(items[0], Mapping):
        return {column: summarize_values(row[column] for row in items) for column in metric_columns(items)}
    return summarize_values(items)
