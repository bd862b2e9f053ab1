"""The two MU-Diff generators: NCSNpp (contrast-specific) and NCSNpp_adaptive (contrast-aware).

Both are NCSN++ U-Nets (BigGAN residual blocks with AdaGN on a z embedding, a time embedding, a residual input
pyramid) that predict x0 from x_{t+1}, three conditioning contrasts, the timestep and a latent z. They differ only
in the stem: generator 1 encodes its four inputs separately and concatenates them; generator 2 also encodes
generator 1's x0 estimate into a style code that modulates the condition encoders, and fuses the conditions
pairwise with learnt gates.

Every module lives in the flat ModuleList `all_modules`, in the original's order, so state_dict keys
(`all_modules.<i>.*`) and the RNG draws at construction match the original exactly.
"""
import argparse
from typing import Iterator

import torch
import torch.nn as nn

from backbones.fast_paths import encode_conditions
from backbones.layers import GaussianFourierProjection, PixelNorm, conv3x3, ddpm_linear, dense, get_timestep_embedding
from backbones.layerspp import (
    AttnBlockpp,
    Combine,
    ConvBlock,
    ConvBlock_GAP,
    ConvFeatBlock,
    Downsample,
    ResnetBlockBigGANpp_Adagn,
    Upsample,
    num_groups,
    rescaled_sum,
)
from utils.core.errors import UserError
from utils.data.context import context_channels

# Width of generator 2's pseudo-target style code. The original fixed it at 256 independently of --z_emb_dim;
# it is a shape in every published checkpoint, so it stays fixed.
PSEUDO_TARGET_STYLE_DIM = 256

PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
EMBEDDING_TYPES = ("fourier", "positional")


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    """Return value (lower-cased) or raise a UserError naming the option (it may come from a config.json)."""
    value = value.lower()
    if value not in allowed:
        raise UserError(f"--{name} {value!r} is not supported: use one of {', '.join(allowed)}")
    return value


class _NCSNppBase(nn.Module):
    """Shared construction and forward pass of both generators; subclasses supply the stem."""

    def __init__(self, config: argparse.Namespace) -> None:
        """Build from an argparse namespace with the original option names."""
        super().__init__()
        self.config = config
        self.not_use_tanh = config.not_use_tanh
        self.act = nn.SiLU()
        self.z_emb_dim = config.z_emb_dim
        self.nf = config.num_channels_dae
        self.ch_mult = ch_mult = list(config.ch_mult)
        self.num_res_blocks = config.num_res_blocks
        self.attn_resolutions = config.attn_resolutions
        self.num_resolutions = len(ch_mult)
        self.all_resolutions = [config.image_size // (2 ** i) for i in range(self.num_resolutions)]
        # Decided once here; the original re-derived it from h.shape[-1] in forward, which agrees for inputs of
        # the configured size (the only ones it handled reliably).
        self.attn_at_level = [res in config.attn_resolutions for res in self.all_resolutions]
        self.dropout = config.dropout
        self.conditional = config.conditional
        self.centered = config.centered
        self.fir = config.fir
        self.fir_kernel = tuple(config.fir_kernel)
        self.skip_rescale = config.skip_rescale
        self.channels = config.num_channels
        # 2.5-D conditioning (new): each condition stem reads 2K + 1 slices; configs of the original have no K.
        self.cond_channels = self.channels * context_channels(getattr(config, "context_slices", 0))
        # The original's other block types could not build a generator (their stems were never defined).
        self.resblock_type = _check_choice("resblock_type", config.resblock_type, ("biggan",))
        self.progressive = _check_choice("progressive", config.progressive, PROGRESSIVE)
        self.progressive_input = _check_choice("progressive_input", config.progressive_input, PROGRESSIVE_INPUT)
        self.embedding_type = _check_choice("embedding_type", config.embedding_type, EMBEDDING_TYPES)
        self.combine_method = _check_choice("progressive_combine", config.progressive_combine, ("cat", "sum"))

        modules = self._time_embedding_modules()
        if self.progressive == "output_skip":
            self.pyramid_upsample = Upsample(fir=self.fir, fir_kernel=self.fir_kernel, with_conv=False)
        if self.progressive_input == "input_skip":
            self.pyramid_downsample = Downsample(fir=self.fir, fir_kernel=self.fir_kernel, with_conv=False)
        modules += self._stem_modules()
        modules += self._unet_modules()
        self.all_modules = nn.ModuleList(modules)
        self.z_transform = self._z_mapping(config.nz, config.n_mlp)

    # ----------------------------------------------------------------------------------------------- construction
    def _time_embedding_modules(self) -> list[nn.Module]:
        """[Fourier projection], Linear(embed, 4nf), Linear(4nf, 4nf)."""
        modules: list[nn.Module] = []
        embed_dim = self.nf
        if self.embedding_type == "fourier":
            modules.append(GaussianFourierProjection(embedding_size=self.nf, scale=self.config.fourier_scale))
            embed_dim = 2 * self.nf
        if self.conditional:
            modules.append(ddpm_linear(embed_dim, self.nf * 4))
            modules.append(ddpm_linear(self.nf * 4, self.nf * 4))
        return modules

    def _stem_modules(self) -> list[nn.Module]:
        """The input encoders (subclass-specific)."""
        raise NotImplementedError

    def _after_mid_block(self) -> None:
        """Hook for modules the original created between the mid-block and the up path (RNG order)."""

    def res_block(self, in_ch: int, out_ch: int | None = None, up: bool = False,
                  down: bool = False) -> ResnetBlockBigGANpp_Adagn:
        """A residual block with this generator's settings."""
        return ResnetBlockBigGANpp_Adagn(
            act=self.act, in_ch=in_ch, out_ch=out_ch, temb_dim=self.nf * 4, zemb_dim=self.z_emb_dim, up=up,
            down=down, dropout=self.dropout, fir=self.fir, fir_kernel=self.fir_kernel,
            skip_rescale=self.skip_rescale, init_scale=0.0)

    def attn_block(self, channels: int) -> AttnBlockpp:
        """An attention block with this generator's settings."""
        return AttnBlockpp(channels, skip_rescale=self.skip_rescale, init_scale=0.0)

    def _unet_modules(self) -> list[nn.Module]:
        """Down path, mid-block, up path and output head, in the original's order."""
        nf, channels = self.nf, self.channels
        modules: list[nn.Module] = []
        skip_channels = [nf * 4]
        in_ch = nf * 4
        pyramid_ch = channels
        last = self.num_resolutions - 1
        for level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                modules.append(self.res_block(in_ch=in_ch, out_ch=nf * mult))
                in_ch = nf * mult
                if self.attn_at_level[level]:
                    modules.append(self.attn_block(channels=in_ch))
                skip_channels.append(in_ch)
            if level != last:
                modules.append(self.res_block(down=True, in_ch=in_ch))
                if self.progressive_input == "input_skip":
                    modules.append(Combine(dim1=pyramid_ch, dim2=in_ch, method=self.combine_method))
                    if self.combine_method == "cat":
                        in_ch *= 2
                elif self.progressive_input == "residual":
                    modules.append(Downsample(in_ch=pyramid_ch, out_ch=in_ch, with_conv=True, fir=self.fir,
                                              fir_kernel=self.fir_kernel))
                    pyramid_ch = in_ch
                skip_channels.append(in_ch)

        in_ch = skip_channels[-1]
        modules += [self.res_block(in_ch=in_ch), self.attn_block(channels=in_ch), self.res_block(in_ch=in_ch)]
        self._after_mid_block()

        pyramid_ch = 0
        for level in reversed(range(self.num_resolutions)):
            for _ in range(self.num_res_blocks + 1):
                out_ch = nf * self.ch_mult[level]
                modules.append(self.res_block(in_ch=in_ch + skip_channels.pop(), out_ch=out_ch))
                in_ch = out_ch
            if self.attn_at_level[level]:
                modules.append(self.attn_block(channels=in_ch))
            if self.progressive != "none":
                pyramid_ch = self._output_pyramid_modules(modules, level == last, in_ch, pyramid_ch)
            if level != 0:
                modules.append(self.res_block(in_ch=in_ch, up=True))

        if self.progressive != "output_skip":
            modules.append(nn.GroupNorm(num_groups=num_groups(in_ch), num_channels=in_ch, eps=1e-6))
            modules.append(conv3x3(in_ch, channels, init_scale=0.0))
        return modules

    def _output_pyramid_modules(self, modules: list[nn.Module], lowest: bool, in_ch: int, pyramid_ch: int) -> int:
        """Append the output-pyramid modules of one up-path level; return the pyramid's new width."""
        if self.progressive == "output_skip":
            modules.append(nn.GroupNorm(num_groups=num_groups(in_ch), num_channels=in_ch, eps=1e-6))
            modules.append(conv3x3(in_ch, self.channels, init_scale=0.0))
            return self.channels
        if lowest:
            modules.append(nn.GroupNorm(num_groups=num_groups(in_ch), num_channels=in_ch, eps=1e-6))
            modules.append(conv3x3(in_ch, in_ch))
        else:
            modules.append(Upsample(in_ch=pyramid_ch, out_ch=in_ch, with_conv=True, fir=self.fir,
                                    fir_kernel=self.fir_kernel))
        return in_ch

    def _z_mapping(self, nz: int, n_mlp: int) -> nn.Sequential:
        """PixelNorm, then (1 + n_mlp) x [dense, act]: z (B, nz) -> zemb (B, z_emb_dim)."""
        layers: list[nn.Module] = [PixelNorm(), dense(nz, self.z_emb_dim), self.act]
        for _ in range(n_mlp):
            layers += [dense(self.z_emb_dim, self.z_emb_dim), self.act]
        return nn.Sequential(*layers)

    # ---------------------------------------------------------------------------------------------------- forward
    def _embed_time(self, time_cond: torch.Tensor, modules: Iterator[nn.Module],
                    dtype: torch.dtype) -> torch.Tensor | None:
        """Time embedding (B, 4nf), or None when the model is not time-conditional."""
        if self.embedding_type == "fourier":
            # Departure: the original took log(t) of the integer timestep, so t = 0 gave -inf and NaN outputs;
            # log(t + 1) is finite for every t >= 0 (the README configuration uses 'positional' and is unaffected).
            temb = next(modules)(torch.log(time_cond.to(dtype) + 1.0))
        else:
            temb = get_timestep_embedding(time_cond, self.nf, dtype=dtype)
        if not self.conditional:
            return None
        temb = next(modules)(temb)
        return next(modules)(self.act(temb))

    def _pyramid_step(self, modules: Iterator[nn.Module], input_pyramid: torch.Tensor | None,
                      h: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Join the downsampled input pyramid to the features h after a down block; return (pyramid, h)."""
        if self.progressive_input == "input_skip":
            input_pyramid = self.pyramid_downsample(input_pyramid)
            h = next(modules)(input_pyramid, h)
        elif self.progressive_input == "residual":
            input_pyramid = rescaled_sum(next(modules)(input_pyramid), h, self.skip_rescale)
            h = input_pyramid
        return input_pyramid, h

    def _output_pyramid_step(self, modules: Iterator[nn.Module], lowest: bool, pyramid: torch.Tensor | None,
                             h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One up-path level of the progressive output path; return (pyramid, h)."""
        if lowest:
            pyramid = self.act(next(modules)(h))
            return next(modules)(pyramid), h
        if self.progressive == "output_skip":
            pyramid = self.pyramid_upsample(pyramid)
            pyramid_h = self.act(next(modules)(h))
            return pyramid + next(modules)(pyramid_h), h
        pyramid = rescaled_sum(next(modules)(pyramid), h, self.skip_rescale)
        return pyramid, pyramid

    def _unet(self, h0: torch.Tensor, input_pyramid: torch.Tensor | None, temb: torch.Tensor | None,
              zemb: torch.Tensor, modules: Iterator[nn.Module]) -> torch.Tensor:
        """Run the U-Net from the stem features h0 to the output image."""
        hs = [h0]
        last = self.num_resolutions - 1
        for level in range(self.num_resolutions):
            for _ in range(self.num_res_blocks):
                h = next(modules)(hs[-1], temb, zemb)
                if self.attn_at_level[level]:
                    h = next(modules)(h)
                hs.append(h)
            if level != last:
                h = next(modules)(hs[-1], temb, zemb)
                input_pyramid, h = self._pyramid_step(modules, input_pyramid, h)
                hs.append(h)

        h = next(modules)(hs[-1], temb, zemb)
        h = next(modules)(h)
        h = next(modules)(h, temb, zemb)

        pyramid = None
        for level in reversed(range(self.num_resolutions)):
            for _ in range(self.num_res_blocks + 1):
                h = next(modules)(torch.cat([h, hs.pop()], dim=1), temb, zemb)
            if self.attn_at_level[level]:
                h = next(modules)(h)
            if self.progressive != "none":
                pyramid, h = self._output_pyramid_step(modules, level == last, pyramid, h)
            if level != 0:
                h = next(modules)(h, temb, zemb)

        if self.progressive == "output_skip":
            h = pyramid
        else:
            h = self.act(next(modules)(h))
            h = next(modules)(h)
        return h if self.not_use_tanh else torch.tanh(h)

    def _prepare(self, x: torch.Tensor, time_cond: torch.Tensor,
                 z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, Iterator[nn.Module]]:
        """Common start of forward: (x, temb, zemb, iterator over all_modules positioned at the stem)."""
        zemb = self.z_transform(z)
        modules = iter(self.all_modules)
        # The sinusoidal/Fourier features follow the input dtype (float32 in the original, float64 when asked).
        temb = self._embed_time(time_cond, modules, x.dtype)
        if not self.centered:
            x = 2 * x - 1.0
        return x, temb, zemb, modules


class NCSNpp(_NCSNppBase):
    """Generator 1 (contrast-specific): forward(x_tp1, cond1, cond2, cond3, t, z) -> x0 (B, num_channels, H, W)."""

    def _stem_modules(self) -> list[nn.Module]:
        """Four ConvFeatBlocks: x_{t+1}, cond1, cond2, cond3, each num_channels -> nf."""
        return [ConvFeatBlock(act=self.act, in_ch=self.channels, out_ch=self.nf)] + \
               [ConvFeatBlock(act=self.act, in_ch=self.cond_channels, out_ch=self.nf) for _ in range(3)]

    def forward(self, x: torch.Tensor, cond1: torch.Tensor, cond2: torch.Tensor, cond3: torch.Tensor,
                time_cond: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Predict x0 from x = x_{t+1} (B,C,H,W), the conditions, integer t (B,) and z (B, nz)."""
        x, temb, zemb, modules = self._prepare(x, time_cond, z)
        input_pyramid = x if self.progressive_input != "none" else None
        stems = [next(modules) for _ in range(4)]
        # The condition encodings do not depend on x, t or z: a sampler run computes them once (see fast_paths).
        feats = [stems[0](x), *encode_conditions(self, stems[1:], (cond1, cond2, cond3))]
        return self._unet(torch.cat(feats, dim=1), input_pyramid, temb, zemb, modules)


class NCSNpp_adaptive(_NCSNppBase):
    """Generator 2 (contrast-aware): forward(x_tp1, cond1, cond2, cond3, t, z, x0_gen1) -> x0 (B, C, H, W)."""

    def _stem_modules(self) -> list[nn.Module]:
        """Pseudo-target encoder (GAP), x encoder, and three style-modulated condition encoders."""
        act, channels, nf = self.act, self.channels, self.nf
        return [ConvBlock_GAP(act=act, in_ch=channels, out_ch=nf, style_dim=PSEUDO_TARGET_STYLE_DIM),
                ConvFeatBlock(act=act, in_ch=channels, out_ch=nf)] + \
               [ConvBlock(act=act, in_ch=self.cond_channels, out_ch=nf, style_dim=PSEUDO_TARGET_STYLE_DIM)
                for _ in range(3)]

    def _after_mid_block(self) -> None:
        """The nine fusion convs: created here (RNG order) but registered before all_modules (state_dict order)."""
        nf = self.nf
        self.feat_weight_c1 = conv3x3(nf, nf)
        self.feat_weight_c2 = conv3x3(nf, nf)
        self.feat_weight_c3 = conv3x3(nf, nf)
        self.feat_att1_c12 = conv3x3(3 * nf, nf)
        self.feat_att2_c12 = conv3x3(3 * nf, nf)
        self.feat_att1_c23 = conv3x3(3 * nf, nf)
        self.feat_att2_c23 = conv3x3(3 * nf, nf)
        self.feat_att1_c31 = conv3x3(3 * nf, nf)
        self.feat_att2_c31 = conv3x3(3 * nf, nf)

    @staticmethod
    def _fuse(all_feats: torch.Tensor, gate_in: nn.Module, gate_mix: nn.Module, weight: nn.Module,
              first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Gated fusion of two condition features: A2 * weight(A1 * first) + (1 - A2) * second."""
        att1 = torch.sigmoid(gate_in(all_feats))
        att2 = torch.sigmoid(gate_mix(all_feats))
        return (att2 * weight(att1 * first)) + ((1 - att2) * second)

    def forward(self, x: torch.Tensor, cond1: torch.Tensor, cond2: torch.Tensor, cond3: torch.Tensor,
                time_cond: torch.Tensor, z: torch.Tensor, pseudo_target: torch.Tensor) -> torch.Tensor:
        """Predict x0 like generator 1, additionally guided by generator 1's estimate pseudo_target (B,C,H,W)."""
        x, temb, zemb, modules = self._prepare(x, time_cond, z)
        input_pyramid = x if self.progressive_input != "none" else None
        style = next(modules)(pseudo_target)
        x_feat = next(modules)(x)
        c1, c2, c3 = (next(modules)(cond, style) for cond in (cond1, cond2, cond3))
        all_feats = torch.cat((c1, c2, c3), dim=1)
        fused12 = self._fuse(all_feats, self.feat_att1_c12, self.feat_att2_c12, self.feat_weight_c1, c1, c2)
        fused23 = self._fuse(all_feats, self.feat_att1_c23, self.feat_att2_c23, self.feat_weight_c2, c2, c3)
        fused31 = self._fuse(all_feats, self.feat_att1_c31, self.feat_att2_c31, self.feat_weight_c3, c3, c1)
        h0 = torch.cat((x_feat, fused12, fused23, fused31), dim=1)
        return self._unet(h0, input_pyramid, temb, zemb, modules)


def build_generators(args: argparse.Namespace) -> tuple[NCSNpp, NCSNpp_adaptive]:
    """Generator 1 then generator 2, in the original's construction order (same seed -> same initial weights)."""
    gen1 = NCSNpp(args)
    gen2 = NCSNpp_adaptive(args)
    return gen1, gen2
