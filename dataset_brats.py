"""BraTS 2019 contrast orders (the README's four tasks) and the original entry point CreateDatasetSynthesis."""
import os

import numpy as np

from utils.data.contrasts import PRESETS as PRESETS_OF
from utils.data.contrasts import resolve_contrasts
from utils.data.slices import SliceDataset, load_slices

DATASET_NAME = PRESETS_OF["brats"].name
# [cond1, cond2, cond3, target] orders keyed by target, defined once in utils.data.contrasts.
PRESETS = {target: list(order) for target, order in PRESETS_OF["brats"].orders.items()}
DEFAULT_TARGET = PRESETS_OF["brats"].default_target


def CreateDatasetSynthesis(phase: str, input_path: str | os.PathLike, target: str | None = None,
                           contrasts: list[str] | None = None, image_size: int = 256,
                           with_masks: bool = False) -> SliceDataset:
    """Slices of split `phase` under `input_path` (trailing slash optional) for a BraTS task (default T1ce)."""
    order = resolve_contrasts("brats", target, contrasts)
    return SliceDataset(input_path, phase, order, image_size=image_size, with_masks=with_masks)


def LoadDataSet(load_dir: str | os.PathLike, image_size: int = 256) -> np.ndarray:
    """One preprocessed .npy file as float32 (N, 1, S, S) in [-1, 1], as the original loader returned it."""
    return load_slices(load_dir, image_size)
