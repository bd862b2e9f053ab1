"""The brain mask of a case: voxels where any contrast is above zero."""
from __future__ import annotations

from typing import Sequence
import numpy as np


def brain_mask(volumes: Sequence[np.ndarray]) -> np.ndarray:
    """Voxels that are non-zero in any conditioning volume (the inputs are skull-stripped)."""
    return np.any(np.stack([v != 0 for v in volumes]), axis=0)
