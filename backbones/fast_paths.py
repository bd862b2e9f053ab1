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

Separately, `condition_feature_cache()` opens a scope (one sampler run) in which generator 1 encodes a given set of
condition tensors only once: the conditions do not change between the T steps, and neither do the weights inside
one run, so the repeated encodings were identical work. It is exact (same operations on the same data) and only
used without autograd.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch

_enabled = False
# Active condition-feature cache: (generator id, condition ids) -> (features, the conditions themselves).
_condition_cache: dict | None = None


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


@contextlib.contextmanager
def condition_feature_cache() -> Iterator[None]:
    """Inside the block, encode_conditions computes each (generator, condition tensors) pair only once."""
    global _condition_cache
    previous = _condition_cache
    _condition_cache = {}
    try:
        yield
    finally:
        _condition_cache = previous


def encode_conditions(owner: object, encoders: Sequence[Callable[[torch.Tensor], torch.Tensor]],
                      conditions: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """[encoder(condition) ...], reused from the active condition_feature_cache for the same tensors.

    The cache key is the identity of the owner and of the condition tensors; the entry keeps the tensors alive, so
    an identity cannot be reused by another tensor while the scope lasts. With autograd on, or while torch.compile
    traces, nothing is cached.
    """
    # is_compiling() comes first so that torch.compile never reads (and guards on) the per-run cache object.
    if torch.compiler.is_compiling() or torch.is_grad_enabled() or _condition_cache is None:
        return [encoder(condition) for encoder, condition in zip(encoders, conditions)]
    cache = _condition_cache
    key = (id(owner), *(id(condition) for condition in conditions))
    if key not in cache:
        cache[key] = ([encoder(condition) for encoder, condition in zip(encoders, conditions)], tuple(conditions))
    return cache[key][0]


__all__ = ["condition_feature_cache", "encode_conditions", "fast_paths", "fast_paths_enabled", "set_fast_paths"]
