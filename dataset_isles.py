"""ISLES 2015 SISS contrast orders (the README's two tasks) and the original entry point CreateDatasetSynthesis."""
import os

import numpy as np

from utils.data import SliceDataset, load_slices, resolve_contrasts

DATASET_NAME = "ISLES"
# [cond1, cond2, cond3, target] in the order the published weights were trained with; keyed by target.
PRESETS = {
    "FLAIR": ["T1", "T2", "DWI", "FLAIR"],
    "T1": ["T2", "DWI", "FLAIR", "T1"],
}
DEFAULT_TARGET = "FLAIR"


def CreateDatasetSynthesis(phase: str, input_path: str | os.PathLike, target: str | None = None,
                           contrasts: list[str] | None = None, image_size: int = 256,
                           with_masks: bool = False) -> SliceDataset:
    """Slices of split `phase` under `input_path` (trailing slash optional) for an ISLES task (default FLAIR)."""
    order = resolve_contrasts("isles", target, contrasts)
    return SliceDataset(input_path, phase, order, image_size=image_size, with_masks=with_masks)


def LoadDataSet(load_dir: str | os.PathLike, image_size: int = 256) -> np.ndarray:
    """One preprocessed .npy file as float32 (N, 1, S, S) in [-1, 1], as the original loader returned it."""
    return load_slices(load_dir, image_size)
