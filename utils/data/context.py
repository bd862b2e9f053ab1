"""2.5-D conditioning (--context_slices K): which neighbouring slices accompany each slice, and its centre channel."""
from __future__ import annotations

from typing import Sequence

import torch

from utils.core.errors import UserError


def context_channels(context_slices: int) -> int:
    """Slices per conditioning contrast: the slice itself and K neighbours on either side."""
    if context_slices < 0:
        raise UserError(f"--context_slices {context_slices}: give 0 (the original's single slice) or more")
    return 2 * context_slices + 1


def clamped_neighbours(position: int, context_slices: int, first: int, last: int) -> list[int]:
    """position - K ... position + K, each clamped to [first, last]: an edge slice repeats itself (no zeros)."""
    return [min(max(position + offset, first), last) for offset in range(-context_slices, context_slices + 1)]


def volume_neighbours(slice_indices: Sequence[int], context_slices: int, depth: int) -> list[list[int]]:
    """For each axial slice of a volume of `depth` slices, the slices that condition it."""
    return [clamped_neighbours(int(k), context_slices, 0, depth - 1) for k in slice_indices]


def manifest_neighbours(case_ids: Sequence[str], context_slices: int) -> list[list[int]]:
    """For each array row of a split (its manifest's case ids, in order), the rows that condition it: rows of the
    same case only, clamped to the slices that case kept (pre_process.py writes a case's slices together, in order)."""
    spans: dict[str, list[int]] = {}
    for row, case in enumerate(case_ids):
        span = spans.setdefault(case, [row, row])
        if row != span[1] and row != span[1] + 1:
            raise UserError(f"case {case}'s slices are not consecutive in the manifest; re-run pre_process.py for "
                            "this split")
        span[1] = row
    return [clamped_neighbours(row, context_slices, *spans[case]) for row, case in enumerate(case_ids)]


def centre_slice(cond: torch.Tensor) -> torch.Tensor:
    """The slice itself out of a (B, 2K + 1, S, S) condition stack, as (B, 1, S, S) (unchanged when K = 0)."""
    return cond[:, [cond.size(1) // 2]]
