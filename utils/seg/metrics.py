"""Dice and 95th-percentile Hausdorff distance of region masks, through MONAI's metrics."""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric

SEG_METRICS = {
    "dice_<region>": "MONAI DiceMetric of the region's predicted and true masks over the whole 3-D volume; 1 when "
                     "both are empty, 0 when only one is (as BraTS scores an empty region)",
    "hd95_<region>": "MONAI HausdorffDistanceMetric(percentile=95) in mm (voxel size from the header); 0 when both "
                     "masks are empty, the volume's diagonal when only one is (BraTS's 373.13 mm on its grid)",
}


class RegionScorer:
    """Dice and HD95 of one predicted mask against the truth, on a grid of known voxel size."""

    def __init__(self) -> None:
        """MONAI's metrics, one value per call (no reduction over the batch)."""
        self.dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
        self.hd95 = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")

    def __call__(self, predicted: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> tuple[float, float]:
        """(Dice, HD95 in mm) of two boolean masks of the same shape."""
        pred = torch.from_numpy(np.ascontiguousarray(predicted, dtype=np.float32))[None, None]
        true = torch.from_numpy(np.ascontiguousarray(truth, dtype=np.float32))[None, None]
        dice = float(self.dice(pred, true).item())
        self.dice.reset()
        if not predicted.any() or not truth.any():
            # MONAI gives inf/NaN with a warning here; BraTS scores it as no error or as the worst possible one.
            diagonal = math.dist([0.0] * truth.ndim, [n * s for n, s in zip(truth.shape, spacing)])
            return dice, 0.0 if predicted.any() == truth.any() else diagonal
        with warnings.catch_warnings():
            # MONAI 1.5+ passes its own deprecated argument to get_mask_edges inside this metric; nothing to act on.
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
            hd95 = float(self.hd95(pred, true, spacing=list(spacing)).item())
        self.hd95.reset()
        return dice, hd95
