"""Initialisers, convolution/linear factories, NIN and the time and latent embeddings shared by all networks.

Two initialisation schemes coexist because the generators descend from NCSN++ and the critic from DDGAN:
`ddpm_uniform_` (fan-average variance scaling, used by the generators' convolutions, NINs and time-embedding
Linears) and `fan_out_uniform_` (used by `dense`/`dense_conv2d`: the z mapping, every AdaGN style layer, the whole
critic and the attention projection). Both consume the global RNG exactly like the original layers, so the same
seed gives the same initial weights.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def ddpm_uniform_(tensor: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Refill `tensor` with U(-b, b), b = sqrt(3 * scale / fan_avg) (DDPM's default init; scale 0 means 1e-10)."""
    scale = 1e-10 if scale == 0 else scale
    shape = tuple(tensor.shape)
    # The receptive field is derived by division (not from shape[2:]) so the float arithmetic matches the original.
    receptive = math.prod(shape) / shape[1] / shape[0]
    fan_in = shape[1] * receptive
    fan_out = shape[0] * receptive
    variance = scale / ((fan_in + fan_out) / 2)
    with torch.no_grad():
        # A fresh torch.rand draw (not uniform_) keeps the RNG stream identical to the original.
        fresh = (torch.rand(shape, dtype=tensor.dtype, device=tensor.device) * 2.0 - 1.0) * math.sqrt(3 * variance)
        tensor.copy_(fresh)
    return tensor


def fan_out_uniform_(tensor: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Fill `tensor` in place with U(-b, b), b = sqrt(3 * scale / fan_out) (scale 0 means 1e-10).

    The original asked for 'fan_avg' but its helper returned fan_out for any mode other than 'fan_in'; fan_out is
    what every trained checkpoint was initialised with, so that is what we do.
    """
    gain = 1e-10 if scale == 0 else scale
    fan_out = tensor.shape[0] * math.prod(tensor.shape[2:])
    bound = math.sqrt(3.0 * (gain / max(1.0, fan_out)))
    with torch.no_grad():
        return tensor.uniform_(-bound, bound)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, bias: bool = True, init_scale: float = 1.0,
            padding: int = 1) -> nn.Conv2d:
    """3x3 convolution with the DDPM initialisation and a zero bias."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=padding, bias=bias)
    ddpm_uniform_(conv.weight, init_scale)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def conv1x1(in_ch: int, out_ch: int, init_scale: float = 1.0) -> nn.Conv2d:
    """1x1 convolution with the DDPM initialisation and a zero bias."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size=1, padding=0)
    ddpm_uniform_(conv.weight, init_scale)
    nn.init.zeros_(conv.bias)
    return conv


def ddpm_linear(in_features: int, out_features: int) -> nn.Linear:
    """Linear layer with the DDPM initialisation and a zero bias (time embedding, ResnetBlock Dense_0)."""
    lin = nn.Linear(in_features, out_features)
    ddpm_uniform_(lin.weight)
    nn.init.zeros_(lin.bias)
    return lin


def dense(in_features: int, out_features: int, init_scale: float = 1.0) -> nn.Linear:
    """Linear layer with the fan-out uniform initialisation and a zero bias."""
    lin = nn.Linear(in_features, out_features)
    fan_out_uniform_(lin.weight, init_scale)
    nn.init.zeros_(lin.bias)
    return lin


def dense_conv2d(in_ch: int, out_ch: int, kernel_size: int = 3, padding: int = 1, bias: bool = True,
                 init_scale: float = 1.0) -> nn.Conv2d:
    """Convolution with the fan-out uniform initialisation and a zero bias (the critic's layers)."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size=kernel_size, padding=padding, bias=bias)
    fan_out_uniform_(conv.weight, init_scale)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


class NIN(nn.Module):
    """Per-pixel linear map over channels (a 1x1 convolution with weight W^T), kept as an einsum."""

    def __init__(self, in_dim: int, num_units: int, init_scale: float = 0.1) -> None:
        """Create W [in_dim, num_units] with the DDPM init and a zero bias b."""
        super().__init__()
        self.W = nn.Parameter(ddpm_uniform_(torch.empty(in_dim, num_units), init_scale))
        self.b = nn.Parameter(torch.zeros(num_units))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, in, H, W) to (B, num_units, H, W)."""
        # einsum (not conv2d) keeps the original's summation order, hence bit-identical outputs.
        y = torch.einsum("abcd,de->abce", x.permute(0, 2, 3, 1), self.W) + self.b
        return y.permute(0, 3, 1, 2)


def get_timestep_embedding(timesteps: torch.Tensor, embedding_dim: int, max_positions: int = 10000,
                           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sinusoidal embedding [sin, cos] of integer timesteps (B,) -> (B, embedding_dim), zero-padded if odd."""
    half_dim = embedding_dim // 2
    step = math.log(max_positions) / (half_dim - 1)
    freqs = torch.exp(torch.arange(half_dim, dtype=dtype, device=timesteps.device) * -step)
    angles = timesteps.to(dtype)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if embedding_dim % 2 == 1:
        emb = F.pad(emb, (0, 1), mode="constant")
    return emb


class GaussianFourierProjection(nn.Module):
    """Random Fourier features [sin, cos](2 pi x W) of a scalar per sample (W fixed, not trained)."""

    def __init__(self, embedding_size: int = 256, scale: float = 1.0) -> None:
        """Draw the frequencies W ~ N(0, scale^2)."""
        super().__init__()
        self.W = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed x (B,) as (B, 2 * embedding_size)."""
        x_proj = x[:, None] * self.W[None, :] * 2 * math.pi
        return torch.cat([torch.sin(x_proj), torch.cos(x_proj)], dim=-1)


class PixelNorm(nn.Module):
    """Normalise each latent vector to unit root-mean-square (so the scale of z does not matter)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x / sqrt(mean(x^2) + 1e-8) over dim 1."""
        return x / torch.sqrt(torch.mean(x ** 2, dim=1, keepdim=True) + 1e-8)
