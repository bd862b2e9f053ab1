"""The brain mask: voxels with signal in any contrast (non-zero in [0, 1] data, above the background in model space)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from utils.data.geometry import MODEL_BACKGROUND


def brain_mask(volumes: Sequence[np.ndarray]) -> np.ndarray:
    """Voxels that are non-zero in any conditioning volume (the inputs are skull-stripped)."""
    return np.any(np.stack([v != 0 for v in volumes]), axis=0)


def brain_pixels(conditions: np.ndarray) -> np.ndarray:
    """Mask (H, W) of pixels with signal in any condition; conditions are model-space (3, H, W), background -1."""
    # brain_mask's rule as a threshold in model space: the two agree on data in [0, 1] (x != 0 <=> 2x - 1 > -1).
    return (conditions > MODEL_BACKGROUND).any(axis=0)
