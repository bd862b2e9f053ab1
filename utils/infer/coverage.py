"""Which synthesised axial slices lie outside the slices the experiment was trained on."""
from __future__ import annotations

from typing import Sequence

UNKNOWN = "unknown"  # experiments trained before train.py recorded its slice range, and the published weights


def slices_outside_training(slices: Sequence[int], trained: Sequence[int] | None) -> int | str:
    """How many axial `slices` lie outside the trained [first, last] axial indices; UNKNOWN without a record."""
    if trained is None:
        return UNKNOWN
    first, last = trained
    return sum(1 for k in slices if k < first or k > last)


def describe_outside(outside: int | str, trained: Sequence[int] | None) -> str:
    """One phrase for a report line: how many slices lie at heights the model saw no training slice of."""
    if trained is None:
        return "the axial slices the model was trained on are not recorded"
    return f"{outside} of them outside the axial slices {trained[0]}-{trained[1]} the model was trained on"
