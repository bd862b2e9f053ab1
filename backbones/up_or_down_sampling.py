"""FIR up/down-sampling in plain PyTorch (no compiled extension), with the StyleGAN2 padding conventions.

`upfirdn2d` (backbones/upfirdn2d.py) follows the op sequence of the original's CPU path (zero insertion, pad/crop,
true convolution with the kernel, decimation); the original used a JIT-compiled CUDA kernel on GPUs.

The wrappers the networks call compute the same sums with less work, by default in formulations that give the
same float32 bits as `upfirdn2d` on the CPU (tests/test_fast.py checks it): a depthwise convolution with stride `factor`
for downsampling (no output that is thrown away), a depthwise convolution for the blur, and a polyphase split for
upsampling (factor^2 small depthwise filters on the input grid instead of a large one on the zero-inserted grid).
With `backbones.set_fast_paths(True)`, upsampling is one depthwise transposed convolution instead (rounding
differs by about 5e-7). The FIR kernels are built once per (taps, scale, dtype, device) and cached, so no call
copies a kernel from the host to the GPU.
"""
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from backbones.fast_paths import fast_paths_enabled
from backbones.layers import ddpm_uniform_
from backbones.upfirdn2d import upfirdn2d

# (what, taps, scale, dtype, device, channels) -> kernel tensor; see _kernel.
_KERNELS: dict[tuple, torch.Tensor] = {}


def setup_kernel(k: Sequence[float], dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """Separable 1-D taps (or a 2-D kernel) -> square 2-D kernel normalised to sum 1."""
    kernel = torch.as_tensor(k, dtype=dtype, device=device)
    if kernel.ndim == 1:
        kernel = torch.outer(kernel, kernel)
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1]:
        raise ValueError(f"FIR kernel must be 1-D or square 2-D, got shape {tuple(kernel.shape)}")
    return kernel / kernel.sum()


def _build_kernel(what: str, k: Sequence[float], scale: float, dtype: torch.dtype, device: torch.device,
                  channels: int, factor: int) -> torch.Tensor:
    """One form of setup_kernel(k) * scale (see _kernel)."""
    kernel = setup_kernel(k, dtype, device) * scale
    if what == "plain":
        return kernel
    if what == "transposed":
        # conv_transpose2d scatters with the kernel as it is.
        return kernel[None, None].repeat(channels, 1, 1, 1)
    # conv2d correlates; the flip makes it the true convolution upfirdn2d computes.
    flipped = torch.flip(kernel, [0, 1])
    if what == "depthwise":
        return flipped[None, None].repeat(channels, 1, 1, 1)
    # "polyphase": the factor^2 sub-kernels of every channel, phase (r, c) = taps r, r + factor, ... (see
    # _polyphase_upsample for which first tap each output phase meets).
    first = [(_upsample_pad(len(k), factor)[0] - r) % factor for r in range(factor)]
    phases = torch.stack([flipped[first[r]::factor, first[c]::factor] for r in range(factor) for c in range(factor)])
    return phases[:, None].repeat(channels, 1, 1, 1)


def _kernel(what: str, k: Sequence[float], scale: float, x: torch.Tensor, channels: int = 0,
            factor: int = 1) -> torch.Tensor:
    """The FIR kernel in form `what` ("plain" 2-D, "depthwise" flipped (C, 1, kh, kw), "transposed" (C, 1, kh, kw),
    "polyphase" (C * factor^2, 1, kh / factor, kw / factor)) for x's dtype and device, built once and cached."""
    if torch.compiler.is_compiling():
        # Under torch.compile the kernel is a traced constant; a Python-side cache would only add guards.
        return _build_kernel(what, k, scale, x.dtype, x.device, channels, factor)
    key = (what, _frozen(k), float(scale), x.dtype, x.device, channels, factor)
    kernel = _KERNELS.get(key)
    if kernel is None:
        # A kernel first built inside torch.inference_mode must still be usable by a later training step.
        with torch.inference_mode(False):
            kernel = _build_kernel(what, k, scale, x.dtype, x.device, channels, factor)
        _KERNELS[key] = kernel
    return kernel


def _frozen(k: Sequence) -> tuple:
    """Nested taps as a hashable tuple (for the cache key)."""
    return tuple(_frozen(v) if isinstance(v, (list, tuple, torch.Tensor)) else float(v) for v in k)


def fir_filter_2d(x: torch.Tensor, k: Sequence[float], scale: float = 1.0, down: int = 1,
                  pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """upfirdn2d(x, setup_kernel(k) * scale, up=1, down, pad) as one depthwise convolution with stride `down`."""
    pad0, pad1 = pad
    channels = x.shape[1]
    weight = _kernel("depthwise", k, scale, x, channels)
    if pad0 == pad1 and pad0 >= 0:
        return F.conv2d(x, weight, stride=down, padding=pad0, groups=channels)
    # Asymmetric (or negative, i.e. cropping) padding is applied explicitly.
    return F.conv2d(F.pad(x, [pad0, pad1, pad0, pad1]), weight, stride=down, groups=channels)


def _upsample_pad(taps: int, factor: int) -> tuple[int, int]:
    """upfirdn2d padding of upsample_2d: the output is exactly factor times the input."""
    p = taps - factor
    return (p + 1) // 2 + factor - 1, p // 2


def _polyphase_upsample(x: torch.Tensor, k: Sequence[float], scale: float, factor: int) -> torch.Tensor | None:
    """upsample_2d's upfirdn2d with the zero products skipped; None when the kernel does not split evenly.

    Output pixel factor*m + r meets only the taps a(r) + factor*j of the flipped kernel, at input pixels
    m + shift(r) + j. All factor^2 phases come from one grouped convolution on the input grid; it sums the same
    non-zero products in the same tap order as the zero-inserted convolution, but the convolution kernels a CPU
    picks decide the rounding: equal bits on the Xeon (AVX-512) this was written on, 1 ulp apart on AMD EPYC
    (tests/test_fast.py holds it to 1e-6), so it runs only with --fast_paths.
    """
    batch, channels, height, width = x.shape
    taps_total = len(k)
    if taps_total % factor:
        return None
    pad0 = _upsample_pad(taps_total, factor)[0]
    taps = taps_total // factor
    shift = [(r + (pad0 - r) % factor - pad0) // factor for r in range(factor)]
    low, high = max(0, -min(shift)), max(0, max(shift) + taps - 1)
    weight = _kernel("polyphase", k, scale, x, channels, factor)
    phases = F.conv2d(F.pad(x, [low, high, low, high]), weight, groups=channels)
    phases = phases.view(batch, channels, factor, factor, *phases.shape[-2:])
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        out = x.new_empty(batch, height, factor, width, factor, channels).permute(0, 5, 1, 2, 3, 4)
    else:
        out = x.new_empty(batch, channels, height, factor, width, factor)
    for r in range(factor):
        for c in range(factor):
            top, left = shift[r] + low, shift[c] + low
            out[:, :, :, r, :, c] = phases[:, :, r, c, top:top + height, left:left + width]
    return out.reshape(batch, channels, height * factor, width * factor)


def _transposed_upsample(x: torch.Tensor, k: Sequence[float], scale: float, factor: int) -> torch.Tensor | None:
    """upsample_2d as one depthwise transposed convolution; None when its padding cannot express upsample_2d's."""
    taps = len(k)
    pad0, pad1 = _upsample_pad(taps, factor)
    padding = taps - 1 - pad0
    # conv_transpose2d crops `padding` on both sides; that equals upfirdn2d's padding only when this holds.
    if padding < 0 or pad1 != pad0 - factor + 1:
        return None
    weight = _kernel("transposed", k, scale, x, x.shape[1])
    return F.conv_transpose2d(x, weight, stride=factor, padding=padding, groups=x.shape[1])


def upsample_2d(x: torch.Tensor, k: Sequence[float], factor: int = 2, gain: float = 1) -> torch.Tensor:
    """Upsample (B, C, H, W) -> (B, C, H*factor, W*factor) with the FIR filter `k`."""
    # The kernel follows the input's dtype (the original forced float32, so float64 models failed).
    scale = gain * factor ** 2
    out = None
    if fast_paths_enabled():
        # Polyphase filtering skips the zero-inserted pixels; which CPUs then round like the original (on the
        # zero-inserted grid) depends on their convolution kernels, so it is a fast path (1 ulp on AMD EPYC).
        out = _transposed_upsample(x, k, scale, factor)
        if out is None:
            out = _polyphase_upsample(x, k, scale, factor)
    if out is None:
        out = upfirdn2d(x, _kernel("plain", k, scale, x), up=factor, pad=_upsample_pad(len(k), factor))
        if x.is_contiguous(memory_format=torch.channels_last):
            # Keep --channels_last's layout through the block, as the fast paths do.
            out = out.contiguous(memory_format=torch.channels_last)
    return out


def downsample_2d(x: torch.Tensor, k: Sequence[float], factor: int = 2, gain: float = 1) -> torch.Tensor:
    """Downsample (B, C, H, W) -> (B, C, H//factor, W//factor) with the FIR filter `k`."""
    p = len(k) - factor
    return fir_filter_2d(x, k, gain, down=factor, pad=((p + 1) // 2, p // 2))


def conv_downsample_2d(x: torch.Tensor, w: torch.Tensor, k: Sequence[float], factor: int = 2,
                       gain: float = 1) -> torch.Tensor:
    """FIR blur then a strided convolution with `w` (out, in, kh, kw): padding is applied once, before the blur."""
    p = (len(k) - factor) + (w.shape[-1] - 1)
    x = fir_filter_2d(x, k, gain, pad=((p + 1) // 2, p // 2))
    return F.conv2d(x, w, stride=factor, padding=0)


def upsample_conv_2d(x: torch.Tensor, w: torch.Tensor, k: Sequence[float], factor: int = 2,
                     gain: float = 1) -> torch.Tensor:
    """Transposed (upsampling) convolution with `w` (out, in, kh, kw) followed by the FIR filter."""
    conv_w = w.shape[-1]
    p = (len(k) - factor) - (conv_w - 1)
    # Departure: the original flipped w with a negative-step slice, which torch rejects (ValueError), and passed a
    # TF-style 4-element stride, so every upsampling FIR convolution (--progressive residual) crashed. torch.flip
    # and stride=factor are the working equivalents: the result is a zero-insert upsample, FIR blur and 3x3 conv.
    transposed_w = torch.flip(w, [2, 3]).transpose(0, 1).contiguous()
    x = F.conv_transpose2d(x, transposed_w, stride=factor, padding=0)
    return fir_filter_2d(x, k, gain * factor ** 2, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))


def naive_upsample_2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Nearest-neighbour upsampling by pixel repetition (used when fir is off)."""
    _, channels, height, width = x.shape
    x = torch.reshape(x, (-1, channels, height, 1, width, 1)).repeat(1, 1, 1, factor, 1, factor)
    return torch.reshape(x, (-1, channels, height * factor, width * factor))


def naive_downsample_2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Average pooling over factor x factor blocks (used when fir is off)."""
    _, channels, height, width = x.shape
    x = torch.reshape(x, (-1, channels, height // factor, factor, width // factor, factor))
    return torch.mean(x, dim=(3, 5))


class ResampleConv2d(nn.Module):
    """Square convolution that optionally upsamples or downsamples by 2 with an FIR filter (StyleGAN2 style)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, up: bool = False, down: bool = False,
                 resample_kernel: Sequence[float] = (1, 3, 3, 1), use_bias: bool = True) -> None:
        """Weight [out_ch, in_ch, kernel, kernel] with the DDPM init; zero bias."""
        super().__init__()
        if up and down:
            raise ValueError("ResampleConv2d cannot both upsample and downsample")
        if kernel < 1 or kernel % 2 != 1:
            raise ValueError(f"kernel must be a positive odd size, got {kernel}")
        self.weight = nn.Parameter(ddpm_uniform_(torch.zeros(out_ch, in_ch, kernel, kernel)))
        if use_bias:
            self.bias = nn.Parameter(torch.zeros(out_ch))
        self.up = up
        self.down = down
        self.resample_kernel = tuple(resample_kernel)
        self.kernel = kernel
        self.use_bias = use_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve (and resample) x, then add the bias."""
        if self.up:
            x = upsample_conv_2d(x, self.weight, k=self.resample_kernel)
        elif self.down:
            x = conv_downsample_2d(x, self.weight, k=self.resample_kernel)
        else:
            x = F.conv2d(x, self.weight, stride=1, padding=self.kernel // 2)
        if self.use_bias:
            x = x + self.bias.reshape(1, -1, 1, 1)
        return x
