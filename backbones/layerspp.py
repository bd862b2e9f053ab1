"""Generator building blocks: AdaGN, residual and attention blocks, resampling wrappers and the input stems."""
import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from backbones import up_or_down_sampling as fir_ops
from backbones.fast_paths import fast_paths_enabled
from backbones.layers import NIN, conv1x1, conv3x3, ddpm_linear, dense

# The skip sums divide by this float64 constant (true division, not a multiplication by 1/sqrt(2)): the original
# did so, and the two roundings differ in the last bit.
SQRT2 = math.sqrt(2.0)


def rescaled_sum(a: torch.Tensor, b: torch.Tensor, skip_rescale: bool) -> torch.Tensor:
    """a + b, divided by sqrt(2) when skip_rescale is on."""
    return (a + b) / SQRT2 if skip_rescale else a + b


def rescaled_sum_into(fresh: torch.Tensor, other: torch.Tensor, skip_rescale: bool) -> torch.Tensor:
    """rescaled_sum(other, fresh), written into `fresh` (a temporary of the caller) when autograd is off.

    Same bits (float addition is commutative, the division is the same), one 256x256 buffer fewer per block.
    """
    if torch.is_grad_enabled() or fresh.shape != other.shape or fresh.dtype != other.dtype:
        return rescaled_sum(other, fresh, skip_rescale)
    fresh.add_(other)
    return fresh.div_(SQRT2) if skip_rescale else fresh


def act_fresh(act: nn.Module, fresh: torch.Tensor) -> torch.Tensor:
    """act(fresh), in place when autograd is off and act is SiLU: `fresh` must be a temporary of the caller.

    Same bits; it spares a write to a new buffer, which at 256x256 costs as much as the SiLU itself.
    """
    if isinstance(act, nn.SiLU) and not torch.is_grad_enabled():
        return F.silu(fresh, inplace=True)
    return act(fresh)


def num_groups(channels: int) -> int:
    """GroupNorm group count used throughout: min(channels // 4, 32)."""
    return min(channels // 4, 32)


class AdaptiveGroupNorm(nn.Module):
    """GroupNorm without affine parameters, followed by a per-sample scale and shift predicted from a style vector."""

    def __init__(self, num_groups: int, in_channel: int, style_dim: int) -> None:
        """The style layer starts as gamma = 1, beta = 0 (bias) plus a small fan-out-initialised weight."""
        super().__init__()
        self.norm = nn.GroupNorm(num_groups, in_channel, affine=False, eps=1e-6)
        self.style = dense(style_dim, in_channel * 2)
        with torch.no_grad():
            self.style.bias[:in_channel] = 1
            self.style.bias[in_channel:] = 0

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """gamma(style) * GroupNorm(x) + beta(style)."""
        gamma, beta = self.style(style).unsqueeze(2).unsqueeze(3).chunk(2, 1)
        if fast_paths_enabled():
            return self._fused(x, gamma, beta)
        return gamma * self.norm(x) + beta

    def _fused(self, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """The same map with the scale and shift applied by the GroupNorm kernel itself (one pass fewer).

        GroupNorm's affine is per channel, so a per-sample one fits it when there is one sample, or when the samples
        can be laid side by side as one image of batch * channels channels (contiguous NCHW). A channels-last batch
        cannot be, and gets a single fused multiply-add pass after the normalisation instead.
        """
        batch, channels = x.shape[:2]
        groups, eps = self.norm.num_groups, self.norm.eps
        # Under autocast the style output may be bfloat16 while x is float32; GroupNorm wants one dtype.
        scale, shift = gamma.reshape(-1).to(x.dtype), beta.reshape(-1).to(x.dtype)
        if batch == 1:
            return F.group_norm(x, groups, scale, shift, eps)
        if x.is_contiguous():
            merged = x.reshape(1, batch * channels, *x.shape[2:])
            return F.group_norm(merged, batch * groups, scale, shift, eps).view_as(x)
        return torch.addcmul(beta, gamma, self.norm(x))


class AttnBlockpp(nn.Module):
    """Global self-attention over all H*W positions with a residual connection."""

    def __init__(self, channels: int, skip_rescale: bool = False, init_scale: float = 0.0) -> None:
        """GroupNorm, q/k/v projections and an (almost) zero-initialised output projection."""
        super().__init__()
        self.GroupNorm_0 = nn.GroupNorm(num_groups=num_groups(channels), num_channels=channels, eps=1e-6)
        self.NIN_0 = NIN(channels, channels)
        self.NIN_1 = NIN(channels, channels)
        self.NIN_2 = NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x + attention(x) (rescaled)."""
        if fast_paths_enabled():
            return self._fused_forward(x)
        batch, channels, height, width = x.shape
        h = self.GroupNorm_0(x)
        q, k, v = self.NIN_0(h), self.NIN_1(h), self.NIN_2(h)
        w = torch.einsum("bchw,bcij->bhwij", q, k) * (int(channels) ** (-0.5))
        w = F.softmax(torch.reshape(w, (batch, height, width, height * width)), dim=-1)
        w = torch.reshape(w, (batch, height, width, height, width))
        h = self.NIN_3(torch.einsum("bhwij,bcij->bchw", w, v))
        return rescaled_sum(x, h, self.skip_rescale)

    def _fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same attention with one q/k/v matmul and F.scaled_dot_product_attention (one head of width C).

        SDPA's fused kernels never hold the (H*W)^2 weights: at 64x64 that matrix is 64 MiB per sample in float32.
        """
        batch, channels, height, width = x.shape
        tokens = self.GroupNorm_0(x).flatten(2).transpose(1, 2)  # (B, H*W, C)
        nins = (self.NIN_0, self.NIN_1, self.NIN_2)
        qkv = F.linear(tokens, torch.cat([nin.W for nin in nins], dim=1).t(), torch.cat([nin.b for nin in nins]))
        q, k, v = qkv.unsqueeze(1).chunk(3, dim=-1)  # (B, 1, H*W, C) each; the default scale is C^(-1/2)
        attended = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        h = F.linear(attended, self.NIN_3.W.t(), self.NIN_3.b)  # (B, H*W, C)
        return rescaled_sum(x, h.transpose(1, 2).reshape(batch, channels, height, width), self.skip_rescale)


class Upsample(nn.Module):
    """Double the resolution: FIR or nearest-neighbour, optionally with a convolution."""

    def __init__(self, in_ch: int | None = None, out_ch: int | None = None, with_conv: bool = False,
                 fir: bool = False, fir_kernel: Sequence[int] = (1, 3, 3, 1)) -> None:
        """Conv2d_0 (FIR) or Conv_0 (nearest) exists only when with_conv is set."""
        super().__init__()
        out_ch = out_ch if out_ch else in_ch
        if with_conv and fir:
            self.Conv2d_0 = fir_ops.ResampleConv2d(in_ch, out_ch, kernel=3, up=True, resample_kernel=fir_kernel)
        elif with_conv:
            self.Conv_0 = conv3x3(in_ch, out_ch)
        self.fir = fir
        self.with_conv = with_conv
        self.fir_kernel = tuple(fir_kernel)
        self.out_ch = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, out_ch, 2H, 2W)."""
        if self.fir:
            if self.with_conv:
                return self.Conv2d_0(x)
            return fir_ops.upsample_2d(x, self.fir_kernel, factor=2)
        _, _, height, width = x.shape
        # Departure: the original passed 'nearest' positionally (as scale_factor) and crashed; same intended op.
        h = F.interpolate(x, (height * 2, width * 2), mode="nearest")
        return self.Conv_0(h) if self.with_conv else h


class Downsample(nn.Module):
    """Halve the resolution: FIR or average pooling, optionally with a convolution (the input pyramid)."""

    def __init__(self, in_ch: int | None = None, out_ch: int | None = None, with_conv: bool = False,
                 fir: bool = False, fir_kernel: Sequence[int] = (1, 3, 3, 1)) -> None:
        """Conv2d_0 (FIR) or Conv_0 (strided 3x3) exists only when with_conv is set."""
        super().__init__()
        out_ch = out_ch if out_ch else in_ch
        if with_conv and fir:
            self.Conv2d_0 = fir_ops.ResampleConv2d(in_ch, out_ch, kernel=3, down=True, resample_kernel=fir_kernel)
        elif with_conv:
            self.Conv_0 = conv3x3(in_ch, out_ch, stride=2, padding=0)
        self.fir = fir
        self.fir_kernel = tuple(fir_kernel)
        self.with_conv = with_conv
        self.out_ch = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, out_ch, H/2, W/2)."""
        if self.fir:
            if self.with_conv:
                return self.Conv2d_0(x)
            return fir_ops.downsample_2d(x, self.fir_kernel, factor=2)
        if self.with_conv:
            return self.Conv_0(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, 2, stride=2)


class Combine(nn.Module):
    """Join the input pyramid to the features (progressive_input 'input_skip'): 1x1 conv, then concat or sum."""

    def __init__(self, dim1: int, dim2: int, method: str = "cat") -> None:
        """Conv_0 maps the pyramid's dim1 channels to the features' dim2."""
        super().__init__()
        self.Conv_0 = conv1x1(dim1, dim2)
        self.method = method

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """cat([Conv_0(x), y]) or Conv_0(x) + y."""
        h = self.Conv_0(x)
        return torch.cat([h, y], dim=1) if self.method == "cat" else h + y


class ResnetBlockBigGANpp_Adagn(nn.Module):
    """BigGAN-style residual block with AdaGN (z-conditioned), a time-embedding bias and optional FIR resampling."""

    def __init__(self, act: nn.Module, in_ch: int, out_ch: int | None = None, temb_dim: int | None = None,
                 zemb_dim: int | None = None, up: bool = False, down: bool = False, dropout: float = 0.1,
                 fir: bool = False, fir_kernel: Sequence[int] = (1, 3, 3, 1), skip_rescale: bool = True,
                 init_scale: float = 0.0) -> None:
        """Submodules in the original's registration order (= state_dict and RNG order)."""
        super().__init__()
        out_ch = out_ch if out_ch else in_ch
        self.GroupNorm_0 = AdaptiveGroupNorm(num_groups(in_ch), in_ch, zemb_dim)
        self.up = up
        self.down = down
        self.fir = fir
        self.fir_kernel = tuple(fir_kernel)
        self.Conv_0 = conv3x3(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = ddpm_linear(temb_dim, out_ch)
        self.GroupNorm_1 = AdaptiveGroupNorm(num_groups(out_ch), out_ch, zemb_dim)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = conv3x3(out_ch, out_ch, init_scale=init_scale)
        self.has_shortcut_conv = in_ch != out_ch or up or down
        if self.has_shortcut_conv:
            self.Conv_2 = conv1x1(in_ch, out_ch)
        self.skip_rescale = skip_rescale
        self.act = act
        self.in_ch = in_ch
        self.out_ch = out_ch

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        """Apply this block's up- or down-sampling (identity when it has neither)."""
        if self.up:
            return fir_ops.upsample_2d(x, self.fir_kernel, 2) if self.fir else fir_ops.naive_upsample_2d(x, 2)
        if self.down:
            return fir_ops.downsample_2d(x, self.fir_kernel, 2) if self.fir else fir_ops.naive_downsample_2d(x, 2)
        return x

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None,
                zemb: torch.Tensor | None = None) -> torch.Tensor:
        """Residual update of x given the time embedding temb and the latent embedding zemb."""
        h = act_fresh(self.act, self.GroupNorm_0(x, zemb))
        h = self._resample(h)
        x = self._resample(x)
        h = self.Conv_0(h)
        if temb is not None:
            # In place like the original: conv outputs are not kept for backward, so this saves a buffer.
            h += self.Dense_0(self.act(temb))[:, :, None, None]
        h = act_fresh(self.act, self.GroupNorm_1(h, zemb))
        h = self.Conv_1(self.Dropout_0(h))
        if self.has_shortcut_conv:
            x = self.Conv_2(x)
        return rescaled_sum_into(h, x, self.skip_rescale)


class ConvFeatBlock(nn.Module):
    """Input stem: conv3x3, GroupNorm (no affine), act, conv3x3 (no residual)."""

    def __init__(self, act: nn.Module, in_ch: int, out_ch: int) -> None:
        """conv1 and conv2 carry the parameters; the norm has none."""
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch)
        self.group_norm = nn.GroupNorm(num_groups(out_ch), out_ch, affine=False, eps=1e-6)
        self.act = act
        self.conv2 = conv3x3(out_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_ch, H, W) -> (B, out_ch, H, W)."""
        return self.conv2(act_fresh(self.act, self.group_norm(self.conv1(x))))


class ConvBlock(nn.Module):
    """Condition stem of generator 2: like ConvFeatBlock, but the norm is AdaGN driven by a style vector."""

    def __init__(self, act: nn.Module, in_ch: int, out_ch: int, style_dim: int = 256) -> None:
        """style_dim is the width of the pseudo-target code (256 in the original, whatever z_emb_dim is)."""
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch)
        self.group_norm = AdaptiveGroupNorm(num_groups(out_ch), out_ch, style_dim)
        self.act = act
        self.conv2 = conv3x3(out_ch, out_ch)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """(B, in_ch, H, W), style (B, style_dim) -> (B, out_ch, H, W)."""
        return self.conv2(act_fresh(self.act, self.group_norm(self.conv1(x), style)))


class ConvBlock_GAP(nn.Module):
    """Pseudo-target encoder of generator 2: the ConvFeatBlock layers, global average pooling and a Linear."""

    def __init__(self, act: nn.Module, in_ch: int, out_ch: int, style_dim: int = 256) -> None:
        """`fc` maps the pooled out_ch features to a style_dim code (PyTorch's default Linear init)."""
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch)
        self.group_norm = nn.GroupNorm(num_groups(out_ch), out_ch, affine=False, eps=1e-6)
        self.act = act
        self.conv2 = conv3x3(out_ch, out_ch)
        self.adaptive_gap = nn.AdaptiveAvgPool2d(1)
        # Departure: the original hard-coded nn.Linear(64, 256), so generator 2 crashed unless
        # num_channels_dae == 64; the input width now follows out_ch (64 in the README configuration).
        self.fc = nn.Linear(out_ch, style_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_ch, H, W) -> (B, style_dim)."""
        out = self.conv2(act_fresh(self.act, self.group_norm(self.conv1(x))))
        out = self.adaptive_gap(out)
        return self.fc(out.view(out.size(0), -1))
