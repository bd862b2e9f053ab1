"""Speed options (AMP, channels-last, compile, fast paths), all off by default, and the sampler that uses them."""
from __future__ import annotations

import argparse
import contextlib
import warnings
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterable, Sequence

import torch
from torch import Tensor, nn

from backbones import condition_feature_cache, set_fast_paths
from utils.model.cpu_memory import reuse_freed_cpu_memory
from utils.model.diffusion import Posterior_Coefficients, SharedNoise, sample_from_model


@dataclass(frozen=True)
class SpeedOptions:
    """Which speed options are on (all off = the faithful computation)."""

    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    fast_paths: bool = False
    fused_adam: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "SpeedOptions":
        """Read the options from a parsed command line (absent flags count as off)."""
        return cls(**{name: bool(getattr(args, name, False)) for name in cls.__dataclass_fields__})

    def describe(self) -> str:
        """The flags that are on, e.g. '--amp --channels_last', or 'faithful (no speed options)'."""
        on = [f"--{name}" for name, value in vars(self).items() if value]
        return " ".join(on) if on else "faithful (no speed options)"

    def enabled(self) -> bool:
        """Whether any speed option is on."""
        return any(vars(self).values())


def prepare_process(options: SpeedOptions, device: torch.device | str) -> None:
    """Process-wide settings for a run with speed options: the fast inner loops with --fast_paths and, on the CPU
    with any option on, malloc reuse (see reuse_freed_cpu_memory). Without options it changes nothing (a program
    that switched the fast paths on itself keeps them)."""
    if options.fast_paths:
        set_fast_paths(True)
    if options.enabled() and torch.device(device).type == "cpu":
        reuse_freed_cpu_memory()


def autocast_context(device: torch.device | str, amp: bool) -> ContextManager:
    """bfloat16 autocast on `device` when `amp` is set; otherwise a context that does nothing.

    bfloat16 keeps float32's exponent range, so no loss scaling is needed (unlike float16).
    """
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def prepare_module(module: nn.Module, device: torch.device | str, channels_last: bool = False,
                   compile_module: bool = False, backend: str | None = None) -> nn.Module:
    """Move `module` to `device`, optionally to channels_last, and optionally compile it in place; return it.

    Compiling in place (nn.Module.compile) keeps the module's class and its state_dict keys, so checkpoints written
    from a compiled network are the same files as without compiling.
    """
    module = module.to(device)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    if compile_module:
        module.compile(**({"backend": backend} if backend else {}))
    return module


def prepare_generators(gens: Sequence[nn.Module], device: torch.device | str, channels_last: bool = False,
                       compile_module: bool = False, backend: str | None = None) -> list[nn.Module]:
    """prepare_module for each generator (see there)."""
    return [prepare_module(gen, device, channels_last, compile_module, backend) for gen in gens]


def as_float(tensors: Iterable[Tensor]) -> tuple[Tensor, ...]:
    """float32 copies of bfloat16 results (others unchanged)."""
    return tuple(t.float() if t.dtype == torch.bfloat16 else t for t in tensors)


def fast_sample(pc: Posterior_Coefficients, gen1: Callable[..., Tensor], cond1: Tensor, gen2: Callable[..., Tensor],
                cond2: Tensor, cond3: Tensor, n_time: int, x_init: Tensor, opt: Any, amp: bool = False,
                return_x0: bool = False, noise: SharedNoise | None = None) -> Tensor | tuple[Tensor, Tensor, Tensor]:
    """sample_from_model under torch.inference_mode (and bf16 autocast with `amp`), float32 results.

    The random draws and their order are those of sample_from_model, so the same seed gives the same noise; the
    whole loop stays on x_init's device (no host round trip between steps). Generator 1 encodes the conditions
    once per run instead of once per step (backbones.condition_feature_cache: the same operations, the same bits).
    """
    with torch.inference_mode(), autocast_context(x_init.device, amp), condition_feature_cache():
        out = sample_from_model(pc, gen1, cond1, gen2, cond2, cond3, n_time, x_init, opt=opt, return_x0=return_x0,
                                noise=noise)
    if return_x0:
        return as_float(out)
    return as_float([out])[0]


def make_adam(params: Iterable[nn.Parameter], lr: float, betas: tuple[float, float], device: torch.device,
              fused: bool = False) -> torch.optim.Adam:
    """torch.optim.Adam; with `fused` on a CUDA device, the fused single-kernel implementation.

    The fused kernel computes the same update formula with different rounding, so it is opt-in (`--fused_adam`);
    on the CPU it is not used (a warning says so).
    """
    if fused and torch.device(device).type != "cuda":
        warnings.warn("--fused_adam only applies on CUDA devices; using the default Adam implementation",
                      stacklevel=2)
        fused = False
    return torch.optim.Adam(params, lr=lr, betas=betas, **({"fused": True} if fused else {}))
