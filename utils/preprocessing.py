"""The original MU-Diff slice recipe: percentile clip and min-max per volume, middle axial slices, skimage resize.

Every step reproduces the authors' pre_process.py exactly (float64 arithmetic, the same percentiles and the same
scikit-image resize settings), so arrays made here are what the published weights were trained on. The only
additions are checks that turn bad volumes and corrupt files into one-line UserErrors instead of NaNs or crashes;
every NIfTI a user gives is read through open_nifti and read_voxels.
"""
import os
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from skimage.transform import resize

from utils.errors import UserError

LOW_PERCENTILE = 1.0
HIGH_PERCENTILE = 99.0


def open_nifti(path: str | os.PathLike, what: str) -> nib.spatialimages.SpatialImage:
    """Open a NIfTI file (header only; the voxels are read later) and check its affine.

    A missing, empty, truncated-header or non-NIfTI file, and an affine with NaN/inf entries or a singular 3×3 part
    (e.g. all zero: a header written without geometry), are one UserError naming `what` and the file.
    """
    path = Path(path)
    try:
        image = nib.load(str(path))
    except FileNotFoundError as err:
        raise UserError(f"{what}: file {path} does not exist") from err
    except Exception as err:  # nibabel raises several types for a corrupt or non-NIfTI file
        raise UserError(f"{what}: {path} is not a readable NIfTI file ({err}); re-download or re-export it") from err
    affine = np.asarray(image.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        problem = "has NaN or infinite entries"
    elif abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        problem = "is singular (all zero or collapsed axes)"
    else:
        return image
    raise UserError(f"{what}: the header of {path} is corrupt: its voxel-to-world affine {problem}; fix the header "
                    "(qform/sform) or re-export the volume")


def read_voxels(image: nib.spatialimages.SpatialImage, path: str | os.PathLike, what: str) -> np.ndarray:
    """All voxels of an opened NIfTI as stored; a truncated or damaged data part is one UserError naming the file."""
    try:
        return np.asanyarray(image.dataobj)
    except (OSError, EOFError, ValueError, zlib.error) as err:
        # A cut-off .nii.gz raises EOFError (gzip), a cut-off .nii OSError, a damaged gzip stream zlib.error.
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{what}: {path} is truncated or damaged ({reason}); re-download or re-export it") from err


def load_volume_and_image(path: str | os.PathLike, name: str | None = None
                          ) -> tuple[np.ndarray, nib.spatialimages.SpatialImage]:
    """A NIfTI volume as float64 (like nibabel's get_fdata), checked (3-D, finite, not all zero), and its image."""
    path = Path(path)
    name = name or str(path)
    image = open_nifti(path, name)
    data = read_voxels(image, path, name)
    # A trailing singleton axis (X, Y, Z, 1) is still one 3-D volume; anything else is not.
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise UserError(f"{name}: {path.name} is {data.ndim}-D with shape {tuple(data.shape)}; expected one 3-D "
                        "volume (X, Y, Z): split 4-D series into volumes or pick the right file")
    data = np.asarray(data, dtype=np.float64)
    check_volume(data, f"{name} ({path.name})")
    return data, image


def load_volume(path: str | os.PathLike, name: str | None = None) -> np.ndarray:
    """Read a NIfTI volume as float64 (like nibabel's get_fdata) and reject 2-D/4-D, NaN and all-zero data."""
    return load_volume_and_image(path, name)[0]


def check_volume(vol: np.ndarray, name: str) -> None:
    """Raise a UserError for a volume the recipe cannot normalise: NaN/inf voxels or nothing above zero."""
    if not np.all(np.isfinite(vol)):
        count = int(np.size(vol) - np.count_nonzero(np.isfinite(vol)))
        raise UserError(f"{name} has {count} NaN or infinite voxels; fix or re-export the volume "
                        "(e.g. replace them with 0) before preprocessing")
    if not np.any(vol > 0):
        raise UserError(f"{name} has no voxel above zero (an empty or all-zero volume); replace the file or "
                        "leave the case out of the split")


def normalize_volume(vol: np.ndarray, name: str = "volume", dtype: type = np.float32) -> np.ndarray:
    """Clip the whole volume to the 1st/99th percentiles of its voxels > 0, then min-max it to [0, 1]."""
    vol = np.asarray(vol, dtype=np.float64)
    check_volume(vol, name)
    low, high = np.percentile(vol[vol > 0], [LOW_PERCENTILE, HIGH_PERCENTILE])
    clipped = np.clip(vol, low, high)
    lo, hi = clipped.min(), clipped.max()
    if hi <= lo:
        raise UserError(f"{name} has a single intensity above zero (no contrast to normalise); check the file")
    return ((clipped - lo) / (hi - lo)).astype(dtype, copy=False)


def middle_slices(depth: int, count: int, name: str = "volume") -> range:
    """Indices of the `count` middle axial slices of a volume `depth` slices deep: (depth - count) // 2 onwards."""
    if count < 1:
        raise UserError(f"the slice count must be at least 1 (got {count})")
    if depth < count:
        raise UserError(f"{name} has {depth} axial slices, fewer than the {count} asked for; pass a smaller "
                        "--slices or leave the case out")
    start = (depth - count) // 2
    return range(start, start + count)


def resize_slices(slices: np.ndarray, size: int) -> np.ndarray:
    """Resize each (H, W) slice of an (N, H, W) stack to (size, size) exactly as the original did."""
    slices = np.asarray(slices)
    if slices.ndim != 3:
        raise ValueError(f"expected an (N, H, W) stack, got shape {slices.shape}")
    if slices.shape[1:] == (size, size):
        # skimage returns the input unchanged in this case too; skip the per-slice loop.
        return slices.copy()
    # Per slice, as the original: resizing the whole stack at once would interpolate along N as well.
    out = np.empty((slices.shape[0], size, size), dtype=np.result_type(slices.dtype, np.float32))
    for i, img in enumerate(slices):
        out[i] = resize(img, (size, size), mode="constant", anti_aliasing=True)
    return out


def resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of an (N, H, W) stack of binary masks to (size, size) uint8."""
    masks = np.asarray(masks)
    if masks.shape[1:] == (size, size):
        return (masks > 0).astype(np.uint8)
    out = np.empty((masks.shape[0], size, size), dtype=np.uint8)
    for i, img in enumerate(masks):
        out[i] = resize(img > 0, (size, size), order=0, mode="constant", anti_aliasing=False,
                        preserve_range=True) > 0
    return out


def volume_to_slices(vol: np.ndarray, count: int, size: int, name: str = "volume") -> tuple[np.ndarray, range]:
    """Whole recipe for one volume: normalise, take the middle `count` axial slices, resize; float32 (N, S, S)."""
    index = middle_slices(vol.shape[2], count, name)
    # Normalise in float64 and resize before the float32 cast, as the original's arithmetic did.
    norm = normalize_volume(vol, name, dtype=np.float64)
    stack = np.moveaxis(norm[:, :, index.start:index.stop], 2, 0)
    return resize_slices(stack, size).astype(np.float32), index
