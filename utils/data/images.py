"""Image files (PNG/JPEG/.npy) read and written as [0, 1] arrays, with one-line errors for damaged files."""
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from utils.core.errors import UserError
from utils.core.fileio import atomic_path, load_npy, natural_key

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".npy")


# Pillow modes that hold 16-bit samples; "I" is how some Pillow versions open a 16-bit grayscale PNG.
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


# Float stacks may carry rounding just outside [0, 1] (e.g. float32 of a clamped tensor); beyond this it is an error.
RANGE_TOLERANCE = 1e-4


def _checked_image(array: np.ndarray, what: str) -> np.ndarray:
    """`array` as one finite 2-D image in [0, 1] up to RANGE_TOLERANCE (a leading axis of 1 is dropped), unclipped."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D image, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what}: the image contains NaN or infinite values")
    if array.size and (array.min() < -RANGE_TOLERANCE or array.max() > 1 + RANGE_TOLERANCE):
        raise ValueError(f"{what}: values must lie in [0, 1], got [{array.min():.6g}, {array.max():.6g}]")
    return array


def _as_image01(array01: np.ndarray, what: str) -> np.ndarray:
    """Check that `array01` is one finite 2-D image in [0, 1] (a leading axis of 1 is dropped); float64, clipped."""
    return np.clip(_checked_image(np.asarray(array01, dtype=np.float64), what), 0.0, 1.0)


def unit_image(image: np.ndarray) -> np.ndarray:
    """A read image as float64 in [0, 1]: 8-bit levels (uint8) divided by 255, floats clipped to [0, 1]."""
    if image.dtype == np.uint8:
        return image / 255.0
    return np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)


def save_png16(array01: np.ndarray, path: str | os.PathLike) -> None:
    """Write a [0, 1] image as a 16-bit grayscale PNG (rounding error ≤ 0.5/65535), atomically."""
    levels = np.round(_as_image01(array01, str(path)) * 65535).astype(np.uint16)
    with atomic_path(path) as tmp:
        Image.fromarray(levels).save(tmp, format="PNG")


def _read_npy(path: Path) -> np.ndarray:
    """Load a 2-D float image stored as .npy, checking that it lies in [0, 1]; returned as stored (unclipped)."""
    array = load_npy(path, "re-export it with numpy.save")
    if array.dtype.kind != "f":
        raise UserError(f"{path}: a .npy image must hold floats in [0, 1], found dtype {array.dtype}")
    try:
        return _checked_image(array, str(path))
    except ValueError as err:
        raise UserError(str(err)) from err


def _pillow_image(image: Image.Image, path: Path) -> np.ndarray:
    """An opened Pillow image as uint8 levels (8-bit files) or float64 in [0, 1] (16-bit files); see the docstring."""
    if image.mode in _SIXTEEN_BIT_MODES:
        levels = np.asarray(image, dtype=np.float64)
        if levels.min() < 0 or levels.max() > 65535:
            raise UserError(f"{path}: pixel values outside 0..65535; save it as an 8- or 16-bit PNG")
        return levels / 65535.0
    return np.asarray(image if image.mode == "L" else image.convert("L"), dtype=np.uint8)


def read_image_file(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as stored; every failure (missing, empty, cut off, damaged) is one UserError.

    Returns uint8 levels for an 8-bit PNG or a JPEG, float64 in [0, 1] for a 16-bit PNG, and the stored floats for
    .npy (checked to lie in [0, 1] up to rounding).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty (0 bytes); write it again")
    if path.suffix.lower() == ".npy":
        return _read_npy(path)
    try:
        with Image.open(path) as image:
            if image.format == "JPEG":
                # Decode the luma channel directly, as OpenCV's IMREAD_GRAYSCALE does.
                image.draft("L", image.size)
            image.load()
            return _pillow_image(image, path)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, zlib.error) as err:
        # Pillow reports a broken PNG chunk as SyntaxError and a damaged compressed stream as zlib.error.
        raise UserError(f"{path}: cannot read it as an image ({err or 'truncated'}); use PNG, JPEG or .npy") from err


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a 16-bit or 8-bit PNG, a JPEG or a float .npy image as a 2-D float64 array in [0, 1]."""
    return unit_image(read_image_file(path))


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask image as a boolean array: pixels above 0.5 (above 127 for 8-bit files, as the original did)."""
    path = Path(path)
    if path.suffix.lower() == ".npy" and path.is_file():
        array = load_npy(path, "re-export it with numpy.save")
        if array.ndim != 2 or array.dtype.kind not in "biuf":
            raise UserError(f"{path}: a mask must be a 2-D numeric array, got {array.dtype} {array.shape}")
        return array > 0.5
    return read_image(path) > 0.5


def list_images(folder: str | os.PathLike, what: str) -> dict[str, Path]:
    """Map file stem → path for the image files (.png, .jpg, .jpeg, .npy) in `folder`, naturally sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{what} folder {folder} does not exist")
    found: dict[str, Path] = {}
    for path in folder.iterdir():
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in found:
            raise UserError(f"{what} folder {folder} has two files named {path.stem} "
                            f"({found[path.stem].name}, {path.name}); keep one")
        found[path.stem] = path
    if not found:
        raise UserError(f"{what} folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return {stem: found[stem] for stem in sorted(found, key=natural_key)}


def _examples(names: Sequence[str], limit: int = 3) -> str:
    """A short comma-separated sample of `names` for an error message."""
    shown = ", ".join(sorted(names, key=natural_key)[:limit])
    return shown + (", ..." if len(names) > limit else "")


def pair_by_name(real: dict[str, Path], synth: dict[str, Path], real_what: str = "real",
                 synth_what: str = "synthetic") -> list[str]:
    """The stems shared by both listings, in natural order; any name present in only one is an error."""
    only_real = [name for name in real if name not in synth]
    only_synth = [name for name in synth if name not in real]
    if only_real or only_synth:
        parts = []
        if only_real:
            parts.append(f"{len(only_real)} {real_what} image(s) without a {synth_what} match ({_examples(only_real)})")
        if only_synth:
            parts.append(f"{len(only_synth)} {synth_what} image(s) without a {real_what} match "
                         f"({_examples(only_synth)})")
        raise UserError("; ".join(parts) + " — files are paired by name without extension")
    return list(real)


def require_names(names: Sequence[str], listing: dict[str, Path], what: str) -> None:
    """Check that every name in `names` has a file in `listing` (extra files are allowed)."""
    missing = [name for name in names if name not in listing]
    if missing:
        raise UserError(f"{len(missing)} image(s) have no {what} file with the same name ({_examples(missing)})")
