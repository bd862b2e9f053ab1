"""NIfTI reading and writing with one-line errors for missing, damaged or singular files."""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from utils.core.errors import UserError
from utils.core.fileio import atomic_path
from utils.data.layouts import NIFTI_SUFFIXES


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


def header_shape(path: Path, what: str) -> tuple[int, ...]:
    """Voxel grid of a NIfTI file from its header alone; UserError for unreadable or non-3-D files."""
    shape = tuple(int(s) for s in open_nifti(path, what).shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise UserError(f"{what}: {path.name} is {len(shape)}-D with shape {shape}; expected one 3-D volume "
                        "(X, Y, Z): split 4-D series into volumes or pick the right file")
    return shape


def load_label(path: Path, what: str) -> np.ndarray:
    """A label volume (may legitimately be all zero), 3-D and finite."""
    data = read_voxels(open_nifti(path, what), path, what)
    data = data[..., 0] if data.ndim == 4 and data.shape[3] == 1 else data
    data = np.asarray(data, dtype=np.float64)
    if not np.all(np.isfinite(data)):
        raise UserError(f"{what} ({path.name}) has NaN or infinite voxels; fix or re-export the label")
    return data


def load_case_volume(path: str | Path, name: str) -> tuple[np.ndarray, nib.Nifti1Image]:
    """A conditioning volume's voxels (float64, checked like pre_process.py's inputs) and its NIfTI image."""
    path = Path(path)
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise UserError(f"{name} {path}: not a NIfTI file (.nii or .nii.gz)")
    return load_volume_and_image(path, name)


def save_like(volume: np.ndarray, reference: nib.Nifti1Image, path: str | Path) -> Path:
    """Write `volume` as float32 NIfTI with the reference's affine and header, atomically (.nii or .nii.gz)."""
    path = Path(path)
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise UserError(f"--out_nifti {path}: the output name must end in .nii.gz or .nii")
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
