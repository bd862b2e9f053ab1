"""The shared time-conditional critic (`Discriminator_large`) and the attention projection of its features."""
import argparse
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from backbones.layers import dense, dense_conv2d, fan_out_uniform_, get_timestep_embedding
from backbones.layerspp import SQRT2
from backbones.up_or_down_sampling import downsample_2d
from utils.core.errors import UserError

# Six FIR halvings: anything smaller than this collapses to an empty map.
MIN_CRITIC_SIZE = 64


class TimestepEmbedding(nn.Module):
    """Sinusoidal embedding of the integer timestep followed by dense, act, dense."""

    def __init__(self, embedding_dim: int, hidden_dim: int, output_dim: int, act: nn.Module) -> None:
        """`main` holds the two dense layers (keys main.0, main.2)."""
        super().__init__()
        self.embedding_dim = embedding_dim
        self.output_dim = output_dim
        self.hidden_dim = hidden_dim
        self.main = nn.Sequential(dense(embedding_dim, hidden_dim), act, dense(hidden_dim, output_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t (B,) int -> (B, output_dim)."""
        # The sinusoid follows the weights' dtype so a float64 critic works (float32 as in the original otherwise).
        temb = get_timestep_embedding(t, self.embedding_dim, dtype=self.main[0].weight.dtype)
        return self.main(temb)


class DownConvBlock(nn.Module):
    """Residual critic block: act, conv, + time bias, act, [FIR downsample], conv, + 1x1 skip, / sqrt(2)."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int = 3, padding: int = 1,
                 t_emb_dim: int = 128, downsample: bool = False, act: nn.Module | None = None,
                 fir_kernel: Sequence[int] = (1, 3, 3, 1)) -> None:
        """conv2 starts (almost) at zero, so the block starts as its skip path."""
        super().__init__()
        self.fir_kernel = tuple(fir_kernel)
        self.downsample = downsample
        self.conv1 = nn.Sequential(dense_conv2d(in_channel, out_channel, kernel_size, padding=padding))
        self.conv2 = nn.Sequential(dense_conv2d(out_channel, out_channel, kernel_size, padding=padding,
                                                init_scale=0.0))
        self.dense_t1 = dense(t_emb_dim, out_channel)
        self.act = act if act is not None else nn.LeakyReLU(0.2)
        self.skip = nn.Sequential(dense_conv2d(in_channel, out_channel, 1, padding=0, bias=False))

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        """(B, in, H, W), t_emb (B, t_emb_dim) -> (B, out, H/2, W/2) (or H, W without downsampling)."""
        out = self.conv1(self.act(x))
        out += self.dense_t1(t_emb)[..., None, None]
        out = self.act(out)
        if self.downsample:
            out = downsample_2d(out, self.fir_kernel, factor=2)
            x = downsample_2d(x, self.fir_kernel, factor=2)
        out = self.conv2(out)
        return (out + self.skip(x)) / SQRT2


def stddev_group_size(batch: int, max_group: int = 4) -> int:
    """Largest group size <= max_group that divides the batch."""
    return next(g for g in range(min(batch, max_group), 0, -1) if batch % g == 0)


def minibatch_stddev(out: torch.Tensor, max_group: int = 4, num_features: int = 1) -> torch.Tensor:
    """Append the minibatch standard-deviation feature map(s) to `out` (B, C, H, W) -> (B, C + num_features, H, W).

    Samples are split into `group` interleaved groups (sample b is in column b mod B/group); each sample gets the
    channel- and position-averaged population std over its group.
    """
    batch, channel, height, width = out.shape
    # Departure: the original used group = min(B, 4), which crashes when B is not a multiple of it (B = 5, 6, 7,
    # 9, ...). The largest divisor <= 4 is the same number whenever the original ran.
    group = stddev_group_size(batch, max_group)
    stddev = out.view(group, -1, num_features, channel // num_features, height, width)
    stddev = torch.sqrt(stddev.var(0, correction=0) + 1e-8)
    stddev = stddev.mean([2, 3, 4], keepdim=True).squeeze(2)
    stddev = stddev.repeat(group, 1, height, width)
    return torch.cat([out, stddev], 1)


class Discriminator_large(nn.Module):
    """Time-conditional critic for (x_t, t, x_{t+1}); returns logits (B,) and its 1/8-resolution features."""

    def __init__(self, nc: int = 2, ngf: int = 64, t_emb_dim: int = 256, act: nn.Module | None = None) -> None:
        """Six FIR-downsampling residual blocks; the input must be at least 64x64. act defaults to LeakyReLU(0.2)."""
        super().__init__()
        act = act if act is not None else nn.LeakyReLU(0.2)
        self.act = act
        self.t_embed = TimestepEmbedding(embedding_dim=t_emb_dim, hidden_dim=t_emb_dim, output_dim=t_emb_dim,
                                         act=act)
        self.start_conv = dense_conv2d(nc, ngf * 2, 1, padding=0)
        widths = [ngf * 2, ngf * 4, ngf * 8, ngf * 8, ngf * 8, ngf * 8, ngf * 8]
        for index in range(6):
            block = DownConvBlock(widths[index], widths[index + 1], t_emb_dim=t_emb_dim, downsample=True, act=act)
            setattr(self, f"conv{index + 1}", block)
        self.final_conv = dense_conv2d(ngf * 8 + 1, ngf * 8, 3, padding=1)
        self.end_linear = dense(ngf * 8, 1)
        self.stddev_group = 4
        self.stddev_feat = 1

    def forward(self, x: torch.Tensor, t: torch.Tensor, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: x_t or a posterior sample (B,1,H,W); t: (B,) int; x_t: the noisier x_{t+1} (original's name).

        Returns (logits (B,), features (B, 8 ngf, H/8, W/8)).
        """
        if min(x.shape[-2:]) < MIN_CRITIC_SIZE:
            raise UserError(f"the critic needs images of at least {MIN_CRITIC_SIZE}x{MIN_CRITIC_SIZE} (got "
                            f"{tuple(x.shape[-2:])}): use --image_size {MIN_CRITIC_SIZE} or more")
        t_embed = self.act(self.t_embed(t))
        h = self.start_conv(torch.cat((x, x_t), dim=1))
        h = self.conv1(h, t_embed)
        h = self.conv2(h, t_embed)
        mid_feat = self.conv3(h, t_embed)
        h = self.conv4(mid_feat, t_embed)
        h = self.conv5(h, t_embed)
        out = self.conv6(h, t_embed)
        out = minibatch_stddev(out, self.stddev_group, self.stddev_feat)
        out = self.act(self.final_conv(out))
        out = out.view(out.shape[0], out.shape[1], -1).sum(2)
        out = self.end_linear(out)
        return out.view(-1), mid_feat


class AttentionProjection(nn.Conv2d):
    """1x1 conv 8*ngf -> 1 turning the critic's features into the attention/uncertainty map (`att_conv`)."""

    def __init__(self, ngf: int = 64) -> None:
        """Fan-out uniform weight (U(-sqrt 3, sqrt 3)) and zero bias, drawn like the original's att_conv."""
        # The original hard-coded 512 input channels (= 8 * 64); the width now follows the critic's ngf.
        super().__init__(ngf * 8, 1, kernel_size=1, padding=0)
        fan_out_uniform_(self.weight)
        nn.init.zeros_(self.bias)

    def attention_map(self, features: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
        """sigmoid(conv(features)) resized bilinearly (align_corners=False) to `size`: (B, 1, *size)."""
        att = torch.sigmoid(self(features))
        return F.interpolate(att, size=size, mode="bilinear", align_corners=False)


def build_critic(args: argparse.Namespace) -> tuple[Discriminator_large, AttentionProjection]:
    """The attention projection then the critic, in the original's construction order (same seed, same weights)."""
    att_proj = AttentionProjection(args.ngf)
    critic = Discriminator_large(nc=2, ngf=args.ngf, t_emb_dim=args.t_emb_dim, act=nn.LeakyReLU(0.2))
    return critic, att_proj
