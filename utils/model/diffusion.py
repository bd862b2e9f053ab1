"""The VP/geometric noise schedule, forward noising and the posterior sampling of both generators."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from utils.core.errors import UserError

# The first grid point of the time schedule: t runs over [EPS_SMALL, 1] instead of [0, 1].
EPS_SMALL = 1e-3


# Stand-in for beta_0 so the schedule tensors have T + 1 entries and a_s[0] rounds to exactly 1 in float32.
FIRST_BETA = 1e-8


DeviceLike = torch.device | str


class ScheduleArgs(Protocol):
    """The options a schedule is built from (an argparse Namespace has them)."""

    num_timesteps: int
    beta_min: float
    beta_max: float
    use_geometric: bool


class Generator(Protocol):
    """What the sampler needs from a generator: it is called and returns an x0 prediction."""

    def __call__(self, *args: Tensor) -> Tensor:
        """Predict x0."""


def var_func_vp(t: Tensor, beta_min: float, beta_max: float) -> Tensor:
    """Marginal noise variance of the variance-preserving SDE at continuous times `t`."""
    log_mean_coeff = -0.25 * t ** 2 * (beta_max - beta_min) - 0.5 * t * beta_min
    return 1. - torch.exp(2. * log_mean_coeff)


def var_func_geometric(t: Tensor, beta_min: float, beta_max: float) -> Tensor:
    """Marginal noise variance of the geometric schedule at continuous times `t`."""
    return beta_min * ((beta_max / beta_min) ** t)


def _time_grid(num_timesteps: int) -> Tensor:
    """The T + 1 continuous times k/T·(1 − eps) + eps in float64, on the CPU."""
    if num_timesteps < 1:
        raise UserError(f"--num_timesteps must be at least 1 (got {num_timesteps})")
    t = torch.from_numpy(np.arange(0, num_timesteps + 1, dtype=np.float64) / num_timesteps)
    return t * (1. - EPS_SMALL) + EPS_SMALL


def _check_betas(betas: Tensor, args: ScheduleArgs) -> None:
    """Refuse a schedule whose betas leave (0, 1): every coefficient built from it would be NaN or meaningless."""
    if bool(torch.isfinite(betas).all()) and bool(((betas > 0) & (betas < 1)).all()):
        return
    kind = "geometric" if args.use_geometric else "VP"
    need = "0 < --beta_min < --beta_max < 1" if args.use_geometric else "0 < --beta_min <= --beta_max"
    raise UserError(f"the {kind} schedule with --beta_min {args.beta_min} --beta_max {args.beta_max} gives betas "
                    f"outside (0, 1); it needs {need}")


def get_sigma_schedule(args: ScheduleArgs, device: DeviceLike = "cpu") -> tuple[Tensor, Tensor, Tensor]:
    """Per-step (sigmas, a_s, betas), float32, T + 1 entries each, with a dummy beta_0 = 1e-8 in front."""
    t = _time_grid(args.num_timesteps)
    var_func = var_func_geometric if args.use_geometric else var_func_vp
    alpha_bars = 1.0 - var_func(t, args.beta_min, args.beta_max)
    betas = 1 - alpha_bars[1:] / alpha_bars[:-1]
    _check_betas(betas, args)
    # The float32 1e-8 is promoted to float64 by the concatenation and only then rounded back, as in the original.
    betas = torch.cat((torch.tensor(FIRST_BETA)[None], betas)).to(torch.float32)
    sigmas = betas ** 0.5
    a_s = torch.sqrt(1 - betas)
    return sigmas.to(device), a_s.to(device), betas.to(device)


class _Coefficients:
    """Common behaviour of the coefficient sets: every tensor attribute lives on `self.device`."""

    device: torch.device

    def to(self, device: DeviceLike) -> "_Coefficients":
        """Move every coefficient tensor to `device` (in place) and return self."""
        self.device = torch.device(device)
        for name, value in vars(self).items():
            if isinstance(value, Tensor):
                setattr(self, name, value.to(self.device))
        return self


class Diffusion_Coefficients(_Coefficients):
    """Forward-process coefficients: one-step (a_s, sigmas) and cumulative (a_s_cum, sigmas_cum), T + 1 entries."""

    def __init__(self, args: ScheduleArgs, device: DeviceLike = "cpu") -> None:
        """Build the coefficients for `args` on the CPU and move them to `device`."""
        self.sigmas, self.a_s, self.betas = get_sigma_schedule(args)
        # The original ran np.cumprod on the tensor, i.e. a float32 running product in numpy; torch.cumprod on the
        # CPU accumulates in float64 and would round the later entries differently.
        self.a_s_cum = torch.from_numpy(np.cumprod(self.a_s.numpy()))
        self.sigmas_cum = torch.sqrt(1 - self.a_s_cum ** 2)
        # Kept for parity with the original's attribute set; nothing reads it.
        self.a_s_prev = self.a_s.clone()
        self.a_s_prev[-1] = 1
        self.to(device)


class Posterior_Coefficients(_Coefficients):
    """Coefficients of q(x_t | x_{t+1}, x_0) for the T real steps (the dummy beta_0 dropped), float32."""

    def __init__(self, args: ScheduleArgs, device: DeviceLike = "cpu") -> None:
        """Build the coefficients for `args` on the CPU and move them to `device`."""
        _, _, betas = get_sigma_schedule(args)
        self.betas = betas[1:]
        self.alphas = 1 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, 0)
        self.alphas_cumprod_prev = torch.cat((torch.tensor([1.], dtype=torch.float32), self.alphas_cumprod[:-1]), 0)
        self.posterior_variance = self.betas * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)

        self.sqrt_alphas_cumprod = torch.sqrt(self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = torch.rsqrt(self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = torch.sqrt(1 / self.alphas_cumprod - 1)

        self.posterior_mean_coef1 = self.betas * torch.sqrt(self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1 - self.alphas_cumprod_prev) * torch.sqrt(self.alphas) / (1 - self.alphas_cumprod)
        # The variance at t = 0 is exactly 0; clamping keeps its log finite (the noise is masked out there anyway).
        self.posterior_log_variance_clipped = torch.log(self.posterior_variance.clamp(min=1e-20))
        self.to(device)


def extract(coefficients: Tensor, t: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """Gather coefficients[t] per sample and shape it (B, 1, 1, ...) to broadcast against a batch of `shape`."""
    out = torch.gather(coefficients, 0, t)
    return out.reshape(shape[0], *([1] * (len(shape) - 1)))


def q_sample(coeff: Diffusion_Coefficients, x_start: Tensor, t: Tensor, *, noise: Tensor | None = None) -> Tensor:
    """Sample x_t ~ q(x_t | x_0); t = 0 already means one noising step (x_t equals x_0 up to float32 rounding)."""
    if noise is None:
        noise = torch.randn_like(x_start)
    return (extract(coeff.a_s_cum, t, x_start.shape) * x_start
            + extract(coeff.sigmas_cum, t, x_start.shape) * noise)


def q_sample_pairs(coeff: Diffusion_Coefficients, x_start: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Sample a consecutive pair (x_t, x_{t+1}) for training."""
    # The one-step noise is drawn before the marginal noise: this order is what makes a seed reproduce the original.
    noise = torch.randn_like(x_start)
    x_t = q_sample(coeff, x_start, t)
    x_t_plus_one = (extract(coeff.a_s, t + 1, x_start.shape) * x_t
                    + extract(coeff.sigmas, t + 1, x_start.shape) * noise)
    return x_t, x_t_plus_one


def _add_posterior_noise(pc: Posterior_Coefficients, mean: Tensor, x_t: Tensor, t: Tensor,
                         noise: Tensor | None = None) -> Tensor:
    """Add one draw of posterior noise (or the given `noise`) to `mean`, except for samples at t = 0."""
    log_var = extract(pc.posterior_log_variance_clipped, t, x_t.shape)
    if noise is None:
        noise = torch.randn_like(x_t)
    nonzero_mask = 1 - (t == 0).type(torch.float32)
    return mean + nonzero_mask[:, None, None, None] * torch.exp(0.5 * log_var) * noise


def _posterior_mean(pc: Posterior_Coefficients, x_0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
    """Mean of q(x_{t-1} | x_t, x_0) (indices as in the original: x_t here is the noisier image)."""
    return (extract(pc.posterior_mean_coef1, t, x_t.shape) * x_0
            + extract(pc.posterior_mean_coef2, t, x_t.shape) * x_t)


def sample_posterior(pc: Posterior_Coefficients, x_0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
    """Sample the less noisy image from the posterior given one x0 prediction (one randn_like draw)."""
    return _add_posterior_noise(pc, _posterior_mean(pc, x_0, x_t, t), x_t, t)


def sample_posterior_combine(pc: Posterior_Coefficients, x_0_1: Tensor, x_0_2: Tensor, x_t: Tensor,
                             t: Tensor, noise: Tensor | None = None) -> Tensor:
    """Sample from the posterior whose mean averages the means of both x0 predictions (one randn_like draw)."""
    # Averaging the two means (not the two x0s) keeps the original's rounding.
    mean = (_posterior_mean(pc, x_0_1, x_t, t) + _posterior_mean(pc, x_0_2, x_t, t)) / 2
    return _add_posterior_noise(pc, mean, x_t, t, noise)


@dataclass
class SharedNoise:
    """One set of sampler draws for a whole volume: every slice starts from, and is sampled with, the same noise.

    x_init (1, C, H, W); per reverse step (index = t) one latent z (1, nz) and one posterior draw (1, C, H, W).
    """

    x_init: Tensor
    latents: Tensor
    posterior: Tensor

    @classmethod
    def draw(cls, n_time: int, nz: int, shape: tuple[int, int, int], device: DeviceLike = "cpu") -> "SharedNoise":
        """Draw the noise of one sampling run (global RNG) for slices of `shape` (C, H, W)."""
        return cls(x_init=torch.randn(1, *shape, device=device), latents=torch.randn(n_time, 1, nz, device=device),
                   posterior=torch.randn(n_time, 1, *shape, device=device))

    def initial(self, batch: int) -> Tensor:
        """x_init repeated for a batch of `batch` slices."""
        return self.x_init.expand(batch, *self.x_init.shape[1:]).contiguous()


def _latent_size(opt: Any, nz: int | None) -> int:
    """The latent z size from the `nz` keyword or `opt.nz`."""
    if nz is not None:
        return nz
    if opt is None or not hasattr(opt, "nz"):
        raise TypeError("sample_from_model needs the latent size: pass opt with an `nz` attribute or nz=...")
    return int(opt.nz)


def sample_from_model(pc: Posterior_Coefficients, generator1: Generator, cond1: Tensor, generator2: Generator,
                      cond2: Tensor, cond3: Tensor, n_time: int, x_init: Tensor, T: Any = None, opt: Any = None, *,
                      nz: int | None = None, return_x0: bool = False, noise: SharedNoise | None = None
                      ) -> Tensor | tuple[Tensor, Tensor, Tensor]:
    """Run the n_time-step reverse process from x_init and return the x0 estimate.

    Per step (t = n_time−1 … 0): one latent z draw, generator 1, generator 2 on generator 1's prediction, then one
    posterior noise draw; with `noise` the draws are taken from it instead, the same for every sample of the batch.
    `T` is accepted for the original's signature and unused. With `return_x0=True` it returns (x, x0_1, x0_2): the
    final step's two generator predictions as well (their spread is the uncertainty map).
    """
    latent = _latent_size(opt, nz)
    x = x_init
    batch = x.size(0)
    x_0_1 = x_0_2 = x
    with torch.no_grad():
        for i in reversed(range(n_time)):
            # Created on the device directly: no host-to-device copy per step.
            t = torch.full((batch,), i, dtype=torch.int64, device=x.device)
            if noise is None:
                latent_z, step_noise = torch.randn(batch, latent, device=x.device), None
            else:
                latent_z = noise.latents[i].expand(batch, latent)
                step_noise = noise.posterior[i].expand_as(x)
            x_0_1 = generator1(x, cond1, cond2, cond3, t, latent_z)[:, [0]]
            x_0_2 = generator2(x, cond1, cond2, cond3, t, latent_z, x_0_1)[:, [0]]
            x = sample_posterior_combine(pc, x_0_1, x_0_2, x, t, step_noise).detach()
    if return_x0:
        return x, x_0_1, x_0_2
    return x
