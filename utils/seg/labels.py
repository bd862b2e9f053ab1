"""Tumour label classes and regions (WT, TC, ET) under the BraTS 2019 and 2023 label conventions."""
from __future__ import annotations

import numpy as np

from utils.core.errors import UserError
from utils.data.layouts import BRATS_NAMINGS

# The segmenter's output channels: background, then the tumour regions BRATS_NAMINGS names in every release.
CLASSES = ("background", "necrosis", "oedema", "enhancing")


# The evaluation regions, nested as BraTS defines them: whole tumour, tumour core, enhancing tumour.
REGIONS = {"WT": ("necrosis", "oedema", "enhancing"), "TC": ("necrosis", "enhancing"), "ET": ("enhancing",)}


# Label conventions the check reports under: 2019 (1 NCR/NET, 2 ED, 4 ET) and 2023 onwards (1 NETC, 2 SNFH, 3 ET).
CONVENTIONS = {"2019": "brats2019", "2023": "brats2023"}


def region_labels(naming: str) -> dict[str, tuple[int, ...]]:
    """The label values that make up each region in a release's segmentation files (2019: WT = 1, 2, 4)."""
    values = BRATS_NAMINGS[naming].labels
    return {region: tuple(sorted(values[c] for c in classes)) for region, classes in REGIONS.items()}


def to_classes(seg: np.ndarray, naming: str, what: str) -> np.ndarray:
    """A segmentation in a release's label values as class indices (CLASSES); UserError for a foreign value."""
    values = BRATS_NAMINGS[naming].labels
    known = {0, *values.values()}
    found = {int(v) for v in np.unique(seg)}
    if not found <= known:
        raise UserError(f"{what} holds label values {sorted(found - known)}, which {naming} segmentations do not "
                        f"use ({', '.join(map(str, sorted(known)))}); check the file or its case's naming")
    classes = np.zeros(seg.shape, dtype=np.uint8)
    for index, name in enumerate(CLASSES[1:], start=1):
        classes[seg == values[name]] = index
    return classes


def from_classes(classes: np.ndarray, naming: str) -> np.ndarray:
    """Class indices (CLASSES) as a release's segmentation label values."""
    values = BRATS_NAMINGS[naming].labels
    seg = np.zeros(classes.shape, dtype=np.uint8)
    for index, name in enumerate(CLASSES[1:], start=1):
        seg[classes == index] = values[name]
    return seg


def region_masks(seg: np.ndarray, naming: str) -> dict[str, np.ndarray]:
    """WT, TC and ET masks of a segmentation read with a release's label values."""
    return {region: np.isin(seg, labels) for region, labels in region_labels(naming).items()}
