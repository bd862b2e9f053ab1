"""Model space: slices in [0, 1] of any size to padded (N, 1, S, S) tensors in [-1, 1], and back."""
from typing import TypeVar

import numpy as np
import torch

from utils.core.errors import UserError

Values = TypeVar("Values", np.ndarray, torch.Tensor)
MODEL_BACKGROUND = -1.0  # model space: the preprocessed arrays' 0


def unit_to_model(values: Values) -> Values:
    """[0, 1] intensities to model space [-1, 1]: 2x - 1 (bit for bit the original's (x - 0.5) / 0.5)."""
    return values * 2 - 1


def model_to_unit(values: Values) -> Values:
    """Model space [-1, 1] to [0, 1] intensities: the original's (x + 1) / 2 (bit for bit x·0.5 + 0.5)."""
    return (values + 1) / 2


def pad_offsets(size: int, image_size: int, what: str = "slices") -> tuple[int, int]:
    """Zeros before and after a side of length `size` to reach `image_size` (the extra one goes after)."""
    if size > image_size:
        raise UserError(f"{what} are {size} pixels across, larger than --image_size {image_size}; re-run "
                        f"pre_process.py with --size {image_size} or train with --image_size {size}")
    before = (image_size - size) // 2
    return before, image_size - size - before


def to_model_space(slices01: np.ndarray, image_size: int = 256) -> torch.Tensor:
    """(N, H, W) slices in [0, 1] -> float32 tensor (N, 1, S, S) in [-1, 1]: transposed H<->W, zero-padded."""
    arr = np.asarray(slices01)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise UserError(f"expected (N, H, W) slices, got an array of shape {arr.shape}")
    # The original transposed H and W (axes 0, 2, 1); keep it so published weights see their training geometry.
    arr = np.transpose(arr, (0, 2, 1)).astype(np.float32)
    (t0, t1), (l0, l1) = pad_offsets(arr.shape[1], image_size), pad_offsets(arr.shape[2], image_size)
    arr = np.pad(arr, ((0, 0), (t0, t1), (l0, l1)))
    # Padding happens in [0, 1] space, so the border becomes -1 like the background, as in the original.
    return torch.from_numpy(unit_to_model(arr)).unsqueeze(1)


def from_model_space(tensor: torch.Tensor | np.ndarray, original_hw: tuple[int, int], clip: bool = True
                     ) -> np.ndarray:
    """Inverse of to_model_space: (N, 1, S, S) or (N, S, S) in [-1, 1] -> float32 (N, H, W) in [0, 1].

    `clip=False` keeps values a sampler put just outside [-1, 1].
    """
    arr = tensor.detach().cpu().float().numpy() if isinstance(tensor, torch.Tensor) else np.asarray(tensor)
    if arr.ndim == 4:
        arr = arr[:, 0]
    if arr.ndim == 2:
        arr = arr[None]
    height, width = original_hw
    image_size = arr.shape[-1]
    # In model space the first image axis is the original W and the second the original H.
    t0, _ = pad_offsets(width, image_size)
    l0, _ = pad_offsets(height, image_size)
    crop = arr[:, t0:t0 + width, l0:l0 + height]
    unit = model_to_unit(np.transpose(crop, (0, 2, 1)))
    return (np.clip(unit, 0.0, 1.0) if clip else unit).astype(np.float32)


def masks_to_model_space(masks: np.ndarray, image_size: int = 256) -> torch.Tensor:
    """(N, H, W) 0/1 masks -> float32 tensor (N, 1, S, S) in the same transposed, padded geometry as the images."""
    arr = np.transpose(np.asarray(masks), (0, 2, 1)).astype(np.float32)
    (t0, t1), (l0, l1) = pad_offsets(arr.shape[1], image_size), pad_offsets(arr.shape[2], image_size)
    return torch.from_numpy(np.pad(arr, ((0, 0), (t0, t1), (l0, l1)))).unsqueeze(1)
