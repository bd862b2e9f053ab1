"""One MU-Diff training step: the critic update, then both generators' update (faithful to the original)."""
from __future__ import annotations

import contextlib
import math
from argparse import Namespace
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from backbones import build_critic, build_generators
from utils.model.diffusion import Diffusion_Coefficients, Posterior_Coefficients, q_sample_pairs, sample_posterior
from utils.model.speed import make_adam
from utils.train.distributed import average_gradients
from utils.train.ema import EMA

LOSS_NAMES = ("errD_real", "errD_fake", "r1_penalty", "errG_adv", "errG_L1", "mask_loss", "errG")


# Cosine decay floor of the original's schedulers.
LR_ETA_MIN = 1e-5


@dataclass
class Networks:
    """The two generators, the shared critic and the critic's attention projection (`att_conv`)."""

    gen1: nn.Module
    gen2: nn.Module
    critic: nn.Module
    att_proj: nn.Module

    def named(self) -> dict[str, nn.Module]:
        """The four networks under their checkpoint names."""
        return {"gen_diffusive_1": self.gen1, "gen_diffusive_2": self.gen2, "disc_diffusive_2": self.critic,
                "att_conv": self.att_proj}


@dataclass
class Optimisers:
    """Adam for each generator and for the critic, their cosine schedulers, and the generators' EMAs (optional)."""

    gen1: torch.optim.Optimizer
    gen2: torch.optim.Optimizer
    critic: torch.optim.Optimizer
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]
    ema1: EMA | None = None
    ema2: EMA | None = None


@dataclass
class Batch:
    """One batch on the training device: three conditioning contrasts and the target, each (B, 1, S, S), and the
    lesion mask when the loader gives masks (--lesion_l1_weight)."""

    cond1: torch.Tensor
    cond2: torch.Tensor
    cond3: torch.Tensor
    target: torch.Tensor
    lesion: torch.Tensor | None = None

    @classmethod
    def from_loader(cls, items: Sequence[torch.Tensor], device: torch.device) -> "Batch":
        """Move a loader batch (c1, c2, c3, target[, brain_mask, lesion_mask]) to `device`; the brain mask, which
        no loss uses, stays where it is."""
        wanted = [*items[:4], items[5] if len(items) > 5 else None]
        moved = [None if x is None else x.to(device, non_blocking=True) for x in wanted]
        return cls(*moved[:4], lesion=moved[4])


@dataclass
class Diffusion:
    """The schedule coefficients the steps need."""

    coeff: Diffusion_Coefficients
    pos_coeff: Posterior_Coefficients
    num_timesteps: int


def build_optimisers(nets: Networks, args: Namespace) -> Optimisers:
    """Adam (betas from --beta1/--beta2; the fused kernel with --fused_adam on CUDA) and
    CosineAnnealingLR(T_max=num_epoch) per network, EMA if --use_ema."""
    betas = (args.beta1, args.beta2)
    device = next(nets.gen1.parameters()).device
    fused = bool(getattr(args, "fused_adam", False))
    opt_g1 = make_adam(nets.gen1.parameters(), args.lr_g, betas, device, fused)
    opt_g2 = make_adam(nets.gen2.parameters(), args.lr_g, betas, device, fused)
    opt_d = make_adam(nets.critic.parameters(), args.lr_d, betas, device, fused)
    schedulers = {
        name: torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.num_epoch, eta_min=LR_ETA_MIN)
        for name, opt in (("gen_diffusive_1", opt_g1), ("gen_diffusive_2", opt_g2), ("disc_diffusive_2", opt_d))
    }
    ema1 = EMA(nets.gen1, args.ema_decay, args.ema_warmup) if args.use_ema else None
    ema2 = EMA(nets.gen2, args.ema_decay, args.ema_warmup) if args.use_ema else None
    return Optimisers(opt_g1, opt_g2, opt_d, schedulers, ema1, ema2)


def r1_penalty(d_real: torch.Tensor, x_t: torch.Tensor, r1_gamma: float) -> torch.Tensor:
    """(r1_gamma / 2) · mean over the batch of ||∂ΣD_real/∂x_t||², kept differentiable (create_graph)."""
    grad = torch.autograd.grad(outputs=d_real.sum(), inputs=x_t, create_graph=True)[0]
    penalty = (grad.view(grad.size(0), -1).norm(2, dim=1) ** 2).mean()
    return r1_gamma / 2 * penalty


def mutual_mask_loss(xp1: torch.Tensor, xp2: torch.Tensor, map1: torch.Tensor, map2: torch.Tensor) -> torch.Tensor:
    """Each generator's posterior sample against the other's, weighted by the *other* generator's critic map."""
    loss1 = (map2 * F.binary_cross_entropy_with_logits(xp1, torch.sigmoid(xp2), reduction="none")).mean()
    loss2 = (map1 * F.binary_cross_entropy_with_logits(xp2, torch.sigmoid(xp1), reduction="none")).mean()
    return loss1 + loss2


def l1_term(x0: torch.Tensor, batch: Batch, lesion_weight: float) -> torch.Tensor:
    """Mean |x0 - target|; with a lesion weight W > 0, lesion pixels count 1 + W times (the enhancing rim is a few
    per cent of the pixels, so plain L1 barely asks for it)."""
    if lesion_weight == 0:
        return F.l1_loss(x0, batch.target)
    return ((1 + lesion_weight * batch.lesion) * (x0 - batch.target).abs()).mean()


def predict_pair(nets: Networks, batch: Batch, x_tp1: torch.Tensor, t: torch.Tensor,
                 z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both generators' x0 predictions (channel 0); generator 2 sees generator 1's prediction as pseudo-target."""
    x0_1 = nets.gen1(x_tp1, batch.cond1, batch.cond2, batch.cond3, t, z)[:, [0]]
    x0_2 = nets.gen2(x_tp1, batch.cond1, batch.cond2, batch.cond3, t, z, x0_1)[:, [0]]
    return x0_1, x0_2


def critic_step(nets: Networks, opt: torch.optim.Optimizer, batch: Batch, diff: Diffusion, args: Namespace,
                apply_r1: bool) -> dict[str, torch.Tensor]:
    """One critic update: softplus losses on real pairs and on both generators' posterior samples, lazy R1."""
    nets.critic.requires_grad_(True)
    nets.critic.zero_grad(set_to_none=True)
    real = batch.target
    t = torch.randint(0, diff.num_timesteps, (real.size(0),), device=real.device)
    x_t, x_tp1 = q_sample_pairs(diff.coeff, real, t)
    x_t.requires_grad_(apply_r1)
    d_real, _ = nets.critic(x_t, t, x_tp1.detach())
    err_real = F.softplus(-d_real).mean()
    err_real.backward(retain_graph=apply_r1)
    penalty = torch.full((), math.nan, device=real.device)
    if apply_r1:
        penalty = r1_penalty(d_real, x_t, args.r1_gamma)
        penalty.backward()
    z = torch.randn(real.size(0), args.nz, device=real.device)
    with torch.no_grad():
        x0_1, x0_2 = predict_pair(nets, batch, x_tp1, t, z)
        xp1 = sample_posterior(diff.pos_coeff, x0_1, x_tp1, t)
        xp2 = sample_posterior(diff.pos_coeff, x0_2, x_tp1, t)
    d_fake1, _ = nets.critic(xp1, t, x_tp1.detach())
    d_fake2, _ = nets.critic(xp2, t, x_tp1.detach())
    err_fake = F.softplus(d_fake1).mean() + F.softplus(d_fake2).mean()
    err_fake.backward()
    average_gradients(nets.critic.parameters())
    opt.step()
    return {"errD_real": err_real.detach(), "errD_fake": err_fake.detach(), "r1_penalty": penalty.detach()}


def generator_step(nets: Networks, opts: Optimisers, batch: Batch, diff: Diffusion,
                   args: Namespace) -> dict[str, torch.Tensor]:
    """One update of both generators: adversarial + λ_L1·L1 + λ_mask·mutual mask loss, one backward pass."""
    nets.critic.requires_grad_(False)
    nets.gen1.zero_grad(set_to_none=True)
    nets.gen2.zero_grad(set_to_none=True)
    real = batch.target
    t = torch.randint(0, diff.num_timesteps, (real.size(0),), device=real.device)
    _, x_tp1 = q_sample_pairs(diff.coeff, real, t)
    z = torch.randn(real.size(0), args.nz, device=real.device)
    x0_1, x0_2 = predict_pair(nets, batch, x_tp1.detach(), t, z)
    xp1 = sample_posterior(diff.pos_coeff, x0_1, x_tp1, t)
    xp2 = sample_posterior(diff.pos_coeff, x0_2, x_tp1, t)
    out1, feat1 = nets.critic(xp1, t, x_tp1.detach())
    out2, feat2 = nets.critic(xp2, t, x_tp1.detach())
    size = tuple(xp1.shape[-2:])
    map1 = nets.att_proj.attention_map(feat1, size=size)
    map2 = nets.att_proj.attention_map(feat2, size=size)
    mask = mutual_mask_loss(xp1, xp2, map1, map2)
    adv = F.softplus(-out1).mean() + F.softplus(-out2).mean()
    l1 = l1_term(x0_1, batch, args.lesion_l1_weight) + l1_term(x0_2, batch, args.lesion_l1_weight)
    err_g = args.lambda_adv * adv + (args.lambda_l1_loss * l1) + (args.lambda_mask_loss * mask)
    err_g.backward()
    average_gradients(list(nets.gen1.parameters()) + list(nets.gen2.parameters()))
    opts.gen1.step()
    opts.gen2.step()
    for ema in (opts.ema1, opts.ema2):
        if ema is not None:
            ema.update()
    return {"errG_adv": adv.detach(), "errG_L1": l1.detach(), "mask_loss": mask.detach(), "errG": err_g.detach()}


def warmup_factor(global_step: int, warmup_steps: int) -> float:
    """Learning-rate multiplier of step `global_step` (0-based) under a linear warm-up of `warmup_steps` steps."""
    return min(1.0, (global_step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


@contextlib.contextmanager
def scaled_learning_rates(optimisers: Sequence[torch.optim.Optimizer], factor: float) -> Iterator[None]:
    """Multiply every learning rate by `factor` inside the block and restore it after, so the epoch schedulers
    (which read the rate back) never see the warm-up."""
    if factor == 1.0:
        yield
        return
    saved = [[group["lr"] for group in opt.param_groups] for opt in optimisers]
    for opt in optimisers:
        for group in opt.param_groups:
            group["lr"] = group["lr"] * factor
    try:
        yield
    finally:
        for opt, rates in zip(optimisers, saved):
            for group, rate in zip(opt.param_groups, rates):
                group["lr"] = rate


def train_step(nets: Networks, opts: Optimisers, batch: Batch, diff: Diffusion, args: Namespace,
               global_step: int) -> torch.Tensor:
    """Critic step then generator step; returns the loss terms as one tensor in LOSS_NAMES order (NaN: no R1)."""
    factor = warmup_factor(global_step, args.lr_warmup_steps)
    with scaled_learning_rates((opts.gen1, opts.gen2, opts.critic), factor):
        losses = critic_step(nets, opts.critic, batch, diff, args, apply_r1=global_step % args.lazy_reg == 0)
        losses.update(generator_step(nets, opts, batch, diff, args))
    return torch.stack([losses[name].float() for name in LOSS_NAMES])


def step_schedulers(opts: Optimisers) -> None:
    """Advance the three cosine schedules by one epoch."""
    for scheduler in opts.schedulers.values():
        scheduler.step()


def build_networks(args: Namespace, device: torch.device) -> Networks:
    """gen1, gen2, att_conv, critic in the original's construction order, on `device`."""
    gen1, gen2 = build_generators(args)
    critic, att_proj = build_critic(args)
    # The original never optimised att_conv; it stays at its initial weights (saved and restored, never trained).
    att_proj.requires_grad_(False)
    return Networks(gen1.to(device), gen2.to(device), critic.to(device), att_proj.to(device))


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in module.parameters())
