"""Image-quality metrics: the MU-Diff paper's evaluation protocol and plain metrics on [0, 1] images.

Paper protocol = the original pipeline (ARCH_SPEC §9.1 and §11) minus its JPEG compression, per slice and mask:
A. the original test.py's saving step, for float images (an 8-bit image, uint8, is taken to be such a file already):
   x / mean(x), then torchvision's save_image(normalize=True): min–max to [0, 1], x·255 + 0.5 truncated to 8 bits;
   computed in torch float32 as the original ran it (original_saved_levels);
B. the original metric_calc.py on those 8-bit images (saved_image_metrics):
   1. each image separately: clip to the 1st/99th percentile of its non-zero pixels, then min–max to [0, 1];
   2. mean-normalised copies x / mean(x) (mean over the full image);
   3. the mask's bounding box, enlarged symmetrically to at least 7×7 (skimage's SSIM window), inside the image;
   4. crop everything to the box and multiply by the cropped mask;
   5. SSIM = skimage SSIM(synth_p, real_p) and PSNR = skimage PSNR(real_p, synth_p), both with
      data_range = max(max) − min(min) over the two mean-normalised crops; MAE on the [0, 1] crops (step 1).
An empty mask gives NaN (the slice is skipped in the mean). Whole-brain and lesion scores use the same function with
the brain or the lesion mask. Step A matters: a generator's background comes out of tanh near −0.99, i.e. ≈ 0.005
after (x + 1) / 2; min–max and 8-bit rounding send it to exactly 0, so it stays out of step 1's non-zero percentiles,
as in the original. Scoring the floats directly lets it in and gives other (lower) numbers.

Where the original could not give a number we chose (none of these changes a number the original produced):
* an image without non-zero pixels (or a constant one) normalises to all zeros; the original crashed (or gave NaN,
  which would silently drop a failed synthesis from the mean);
* a box near the border is shifted inwards to stay 7 pixels wide; the original clamped it smaller and SSIM crashed;
* two identical crops give SSIM 1 and PSNR = inf, as in the original (its MSE is 0).

Summaries are nanmean ± nanstd (population std) as in the original, except that PSNR = inf (identical images) is
left out of the mean and counted separately, so one perfect slice does not make the mean infinite.
"""
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from tqdm import tqdm

from utils.errors import UserError
from utils.fileio import load_npy
from utils.images import (RANGE_TOLERANCE, list_images, natural_key, pair_by_name, read_image_file, read_mask,
                          require_names, unit_image)

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


def _psnr(real: np.ndarray, synth: np.ndarray, data_range: float) -> float:
    """skimage PSNR of `synth` against `real`; inf for identical images (skimage would divide by zero)."""
    if np.array_equal(real, synth):
        return math.inf
    return float(peak_signal_noise_ratio(real, synth, data_range=data_range))


def _ssim_psnr(real: np.ndarray, synth: np.ndarray, data_range: float) -> tuple[float, float]:
    """skimage SSIM and PSNR with the original's argument order; identical images give (1, inf)."""
    if np.array_equal(real, synth):
        return 1.0, math.inf
    return float(structural_similarity(synth, real, data_range=data_range)), _psnr(real, synth, data_range)


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
    ssim, psnr = _ssim_psnr(real_pc, synth_pc, data_range)
    mae = float(np.mean(np.abs(real_n[box] * inside - synth_n[box] * inside)))
    return {"ssim": ssim, "psnr": psnr, "mae": mae}


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
        return {"ssim": float(mean_ssim), "psnr": _psnr(real, synth, 1.0), "mae": float(np.mean(np.abs(real - synth)))}
    if not inside.any():
        return dict(NAN_METRICS)
    pad = (SSIM_WINDOW - 1) // 2
    interior = np.zeros_like(inside)
    interior[pad:-pad, pad:-pad] = True
    scored = inside & interior
    ssim = float(ssim_map[scored].mean()) if scored.any() else math.nan
    return {"ssim": ssim, "psnr": _psnr(real[inside], synth[inside], 1.0),
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


def evaluate_pairs(real: Sequence[np.ndarray], synth: Sequence[np.ndarray],
                   brain_masks: Sequence[np.ndarray] | None = None, lesion_masks: Sequence[np.ndarray] | None = None,
                   names: Sequence[str] | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Per-slice rows for in-memory [0, 1] slices ((N, H, W) arrays or lists of 2-D arrays) and optional masks."""
    names = list(names) if names is not None else [f"slice_{i:05d}" for i in range(len(real))]
    return evaluate_set(EvalSet(names, real, synth, brain_masks, lesion_masks), progress)


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
    real = _load_stack(folder / "real.npy", is_mask=False)
    synth = _load_stack(folder / "synth.npy", is_mask=False)
    masks = {}
    for protocol in ("brain", "lesion"):
        path = folder / f"{protocol}_mask.npy"
        masks[protocol] = _load_stack(path, is_mask=True) if path.is_file() else None
    for path, stack in [(folder / "synth.npy", synth)] + [(folder / f"{p}_mask.npy", s) for p, s in masks.items()
                                                          if s is not None]:
        if stack.shape != real.shape:
            raise UserError(f"{path} has shape {stack.shape} but {folder / 'real.npy'} has {real.shape}")
    return EvalSet(_stack_names(folder, len(real)), real, synth, masks["brain"], masks["lesion"],
                   source=f".npy stacks in {folder}")


def resolve_results_folder(folder: str | os.PathLike) -> Path:
    """The generated_samples folder test.py wrote: `folder` itself or its generated_samples/ subfolder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"results folder {folder} does not exist")
    if (folder / "generated_samples").is_dir():
        folder = folder / "generated_samples"
    if not ((folder / "real.npy").is_file() or (folder / "real").is_dir()):
        raise UserError(f"{folder} is not a folder written by test.py (no real.npy and no real/ folder); "
                        "pass --real DIR --synth DIR instead")
    return folder


def load_results_folder(folder: str | os.PathLike) -> EvalSet:
    """Slices from test.py's output: the .npy stacks when present (exact floats), else the PNG folders."""
    folder = resolve_results_folder(folder)
    if (folder / "real.npy").is_file() and (folder / "synth.npy").is_file():
        return _load_stacks(folder)
    masks = {p: folder / "mask" / p for p in ("brain", "lesion")}
    return load_image_dirs(folder / "real", folder / "synth",
                           masks["brain"] if masks["brain"].is_dir() else None,
                           masks["lesion"] if masks["lesion"].is_dir() else None)


def evaluate_folder(folder: str | os.PathLike, progress: bool = True) -> list[dict[str, Any]]:
    """Per-slice rows for a folder written by test.py (see load_results_folder)."""
    return evaluate_set(load_results_folder(folder), progress)


def evaluate_dirs(real_dir: str | os.PathLike, synth_dir: str | os.PathLike,
                  mask_dir: str | os.PathLike | None = None, lesion_mask_dir: str | os.PathLike | None = None,
                  progress: bool = True) -> list[dict[str, Any]]:
    """Per-slice rows for separate real, synthetic and optional brain/lesion mask folders paired by name."""
    return evaluate_set(load_image_dirs(real_dir, synth_dir, mask_dir, lesion_mask_dir), progress)
