"""Between a case's grid and the segmenter's: axial slices with brain, resized to a square working size."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from utils.data.brain import brain_mask
from utils.data.preprocessing import brain_slices


def slice_range(images: np.ndarray, channels: list[int], what: str) -> range:
    """The axial slices of (C, H, W, D) images from the first to the last with brain in any of `channels`."""
    return brain_slices(brain_mask([images[c] for c in channels]), what)


def image_slices(images: np.ndarray, index: range, size: int) -> torch.Tensor:
    """Axial slices `index` of (C, H, W, D) images as a (N, C, size, size) float32 tensor (antialiased bilinear)."""
    stack = torch.from_numpy(np.ascontiguousarray(np.moveaxis(images[..., index.start:index.stop], 3, 0)))
    return F.interpolate(stack.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def label_slices(classes: np.ndarray, index: range, size: int) -> torch.Tensor:
    """Axial slices `index` of an (H, W, D) class volume as (N, size, size) int64 (nearest neighbour)."""
    stack = torch.from_numpy(np.ascontiguousarray(np.moveaxis(classes[..., index.start:index.stop], 2, 0)))
    return F.interpolate(stack[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()


def classes_on_grid(probabilities: torch.Tensor, index: range, shape: tuple[int, int, int]) -> np.ndarray:
    """(N, K, S, S) class probabilities of slices `index` back on the case's (H, W, D) grid, as argmax classes."""
    # Probabilities, not classes, are resized: a nearest-neighbour zoom of the argmax would give blocky borders.
    full = F.interpolate(probabilities, size=shape[:2], mode="bilinear", align_corners=False)
    classes = np.zeros(shape, dtype=np.uint8)
    classes[..., index.start:index.stop] = np.moveaxis(full.argmax(dim=1).numpy().astype(np.uint8), 0, 2)
    return classes
