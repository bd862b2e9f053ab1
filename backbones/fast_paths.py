"""One process-wide switch between the faithful inner loops of the networks and their faster equivalents.

Off (the default), every layer computes what the original computed, in the original's op order, so outputs match the
reference within float32 rounding (and bit for bit on the CPU where the tests check it). On, three inner loops use
faster formulations that agree with the faithful ones only to rounding (tests/test_fast.py bounds the difference):

* FIR upsampling as one depthwise transposed convolution instead of zero insertion and a 4x4 convolution;
* self-attention through `F.scaled_dot_product_attention` with one fused q/k/v projection, which never materialises
  the (H*W)^2 weight matrix on GPUs (4096^2 per sample at the README configuration's 64x64 mid-block);
* AdaGN's scale and shift as one `addcmul` pass.

The switch is a plain module global read at call time: set it once at start-up (before building or compiling the
networks); it applies to every thread. `fast_paths(...)` sets it for a block and restores the previous value.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

_enabled = False


def set_fast_paths(enabled: bool) -> None:
    """Turn the fast inner loops on or off for the whole process."""
    global _enabled
    _enabled = bool(enabled)


def fast_paths_enabled() -> bool:
    """Whether the fast inner loops are on."""
    return _enabled


@contextlib.contextmanager
def fast_paths(enabled: bool = True) -> Iterator[None]:
    """Use (or avoid) the fast inner loops inside a `with` block; the previous setting is restored afterwards."""
    previous = _enabled
    set_fast_paths(enabled)
    try:
        yield
    finally:
        set_fast_paths(previous)


__all__ = ["fast_paths", "fast_paths_enabled", "set_fast_paths"]
