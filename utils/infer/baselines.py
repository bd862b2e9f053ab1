"""No-learning baselines: per-pixel linear or quadratic regression of the target on the three conditions."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from utils.core.errors import UserError
from utils.core.options import BASELINES
from utils.data.brain import brain_pixels
from utils.data.geometry import MODEL_BACKGROUND
from utils.data.slices import SliceDataset


def design_matrix(conditions: np.ndarray, kind: str) -> np.ndarray:
    """Features of pixels (P, 3): [1, c1, c2, c3] (linear), plus every product ci·cj with i ≤ j (quadratic)."""
    columns = [np.ones(len(conditions)), *conditions.T]
    if kind == "quadratic":
        columns += [conditions[:, i] * conditions[:, j] for i in range(3) for j in range(i, 3)]
    elif kind != "linear":
        raise UserError(f"--baseline {kind!r} is not one of {', '.join(BASELINES)}")
    return np.stack(columns, axis=1)


def _slice_arrays(item: tuple[torch.Tensor, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Conditions (3, S, S) and target (S, S) of one dataset item, float64."""
    conditions = np.stack([item[k][0].numpy() for k in range(3)]).astype(np.float64)
    return conditions, item[3][0].numpy().astype(np.float64)


@dataclass
class PixelRegression:
    """A fitted per-pixel polynomial regression: target ≈ features(c1, c2, c3) · coefficients (model space)."""

    kind: str
    coefficients: np.ndarray
    fitted_pixels: int

    @classmethod
    def fit(cls, dataset: SliceDataset, kind: str, progress: bool = True) -> "PixelRegression":
        """Least squares over the brain pixels of every slice of `dataset` (the training split)."""
        width = design_matrix(np.zeros((1, 3)), kind).shape[1]
        gram, moment, pixels = np.zeros((width, width)), np.zeros(width), 0
        for index in tqdm(range(len(dataset)), desc=f"fitting the {kind} baseline", unit="slice",
                          disable=not progress):
            conditions, target = _slice_arrays(dataset[index])
            inside = brain_pixels(conditions)
            if not inside.any():
                continue
            features = design_matrix(conditions[:, inside].T, kind)
            gram += features.T @ features
            moment += features.T @ target[inside]
            pixels += int(inside.sum())
        if pixels < width:
            raise UserError(f"{dataset.root / dataset.split}: only {pixels} brain pixels to fit the {kind} baseline "
                            f"on; it needs at least {width}")
        coefficients = np.linalg.lstsq(gram, moment, rcond=None)[0]
        return cls(kind, coefficients, pixels)

    def predict(self, cond1: torch.Tensor, cond2: torch.Tensor, cond3: torch.Tensor) -> torch.Tensor:
        """Model-space prediction (B, 1, S, S) from model-space conditions; background outside the brain."""
        conditions = torch.cat([cond1, cond2, cond3], dim=1).double().numpy()
        out = np.full((conditions.shape[0], 1, *conditions.shape[2:]), MODEL_BACKGROUND)
        for b, sample in enumerate(conditions):
            inside = brain_pixels(sample)
            values = design_matrix(sample[:, inside].T, self.kind) @ self.coefficients
            # The model's output lives in [-1, 1] (tanh); the regression is held to the same range.
            out[b, 0][inside] = np.clip(values, -1.0, 1.0)
        return torch.from_numpy(out).float()

    def describe(self) -> dict:
        """What run.json records about the fit."""
        return {"kind": self.kind, "fitted_on_pixels": self.fitted_pixels,
                "coefficients": [float(c) for c in self.coefficients],
                "features": "model space [-1, 1]: 1, c1, c2, c3" + (", c_i*c_j (i <= j)" if self.kind == "quadratic"
                                                                     else "")}
