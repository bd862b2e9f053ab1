"""utils/model/diffusion.py against the original's coefficients and samples, plus properties of the diffusion math."""
import argparse
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from backbones import NCSNpp, NCSNpp_adaptive
from utils.core.errors import UserError
from utils.model.checkpoint import load_state
from utils.model.diffusion import (
    Diffusion_Coefficients,
    Posterior_Coefficients,
    SharedNoise,
    _time_grid,
    extract,
    get_sigma_schedule,
    q_sample,
    q_sample_pairs,
    sample_from_model,
    sample_posterior,
    sample_posterior_combine,
)

# Coefficients whose computation involves no square root: pure IEEE arithmetic, so bit-identical on every platform.
SQRT_FREE = ("betas_full", "betas", "alphas", "alphas_cumprod", "alphas_cumprod_prev", "posterior_variance",
             "posterior_log_variance_clipped", "time_schedule_T")
# The rest go through torch.sqrt. The reference machine's float32 sqrt was off by up to 1 ulp from the correctly
# rounded value for some entries (checked: this machine's torch and numpy agree with float64 sqrt rounded to float32;
# the fixture does not), so these are held to 2 ulp instead of bit equality.
SQRT_ULP = 2
DIFFUSION_ATTRS = ("sigmas", "a_s", "a_s_cum", "sigmas_cum", "a_s_prev")
FORWARD_KEYS = ("sigmas", "a_s", "a_s_cum", "sigmas_cum")
POSTERIOR_KEYS = ("posterior_mean_coef1", "posterior_mean_coef2", "posterior_log_variance_clipped",
                  "posterior_variance")


def schedule_args(num_timesteps: int = 4, use_geometric: bool = False, beta_min: float = 0.1,
                  beta_max: float = 20.0) -> SimpleNamespace:
    """The four options a schedule needs."""
    return SimpleNamespace(num_timesteps=num_timesteps, beta_min=beta_min, beta_max=beta_max,
                           use_geometric=use_geometric)


def ours(name: str, args: SimpleNamespace) -> torch.Tensor:
    """Our value of the reference coefficient called `name`."""
    if name == "time_schedule_T":
        return _time_grid(args.num_timesteps)
    if name == "betas_full":
        return Diffusion_Coefficients(args).betas
    if name in DIFFUSION_ATTRS:
        return getattr(Diffusion_Coefficients(args), name)
    return getattr(Posterior_Coefficients(args), name)


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> int:
    """Largest distance in float32 units in the last place between two same-signed float32 tensors."""
    ia = a.numpy().view(np.int32).astype(np.int64)
    ib = b.numpy().view(np.int32).astype(np.int64)
    return int(np.abs(ia - ib).max())


def with_reference_coefficients(args: SimpleNamespace, ref: dict) -> tuple:
    """Our coefficient objects holding the reference's coefficient values (to isolate op order and RNG protocol)."""
    coeff, pc = Diffusion_Coefficients(args), Posterior_Coefficients(args)
    for key in FORWARD_KEYS:
        setattr(coeff, key, ref[key])
    for key in POSTERIOR_KEYS:
        setattr(pc, key, ref[key])
    return coeff, pc


@pytest.fixture(scope="module")
def small_args(small_ref: dict) -> argparse.Namespace:
    """The small reference configuration as the namespace the original built its objects from."""
    return argparse.Namespace(**small_ref["config"])


@pytest.mark.parametrize("key", ["T4", "T2"])
def test_schedule_matches_reference(schedule_ref: dict, key: str) -> None:
    """Every coefficient has the reference dtype and value (bit-equal unless it passes through a sqrt)."""
    ref = schedule_ref[key]
    args = argparse.Namespace(**ref["args"])
    names = [name for name, value in ref.items() if isinstance(value, torch.Tensor)]
    assert len(names) == 18
    for name in names:
        mine = ours(name, args)
        assert mine.dtype == ref[name].dtype, name
        assert mine.shape == ref[name].shape, name
        if name in SQRT_FREE:
            assert torch.equal(mine, ref[name]), name
        else:
            assert ulp_distance(mine, ref[name]) <= SQRT_ULP, name
    assert ref["types"]["a_s_cum"] == ref["types"]["sigmas_cum"] == "Tensor"


def test_a_s_cum_is_a_float32_running_product() -> None:
    """a_s_cum is numpy's float32 running product of a_s, as in the original (not torch's float64-accumulated one)."""
    coeff = Diffusion_Coefficients(schedule_args(num_timesteps=8))
    assert isinstance(coeff.a_s_cum, torch.Tensor) and coeff.a_s_cum.dtype == torch.float32
    running = np.float32(1)
    for k, a in enumerate(coeff.a_s.numpy()):
        running = np.float32(running * a)
        assert coeff.a_s_cum[k].item() == running
    assert torch.allclose(coeff.sigmas_cum ** 2 + coeff.a_s_cum ** 2, torch.ones(9), atol=1e-6)


def test_q_sample_pairs_matches_reference(small_ref: dict, small_args: argparse.Namespace,
                                          schedule_ref: dict) -> None:
    """Seed 2, x0 = rand·2−1, then q_sample_pairs: the reference's pair, bit-equal given the same coefficients."""
    ref = small_ref["diffusion"]["q_sample_pairs"]
    torch.manual_seed(ref["seed"])
    x0 = torch.rand(ref["x0"].shape) * 2 - 1
    assert torch.equal(x0, ref["x0"])
    x_t, x_tp1 = q_sample_pairs(Diffusion_Coefficients(small_args), x0, ref["t"])
    torch.testing.assert_close(x_t, ref["x_t"], rtol=0, atol=1e-6)
    torch.testing.assert_close(x_tp1, ref["x_tp1"], rtol=0, atol=1e-6)

    coeff, _ = with_reference_coefficients(small_args, schedule_ref["T4"])
    torch.manual_seed(ref["seed"])
    x_t, x_tp1 = q_sample_pairs(coeff, torch.rand(ref["x0"].shape) * 2 - 1, ref["t"])
    assert torch.equal(x_t, ref["x_t"])
    assert torch.equal(x_tp1, ref["x_tp1"])


def run_posteriors(pc: Posterior_Coefficients, ref: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Seed 3: sample_posterior, then sample_posterior_combine on the continuing random stream."""
    single, combine = ref["sample_posterior_g1"], ref["sample_posterior_combine"]
    torch.manual_seed(single["seed"])
    out1 = sample_posterior(pc, single["x_0"], single["x_t"], single["t"])
    out2 = sample_posterior_combine(pc, combine["x_0_1"], combine["x_0_2"], combine["x_t"], combine["t"])
    return out1, out2


def test_posterior_samplers_match_reference(small_ref: dict, small_args: argparse.Namespace,
                                            schedule_ref: dict) -> None:
    """Both posterior samplers reproduce the reference, bit-equal given the same coefficients."""
    ref = small_ref["diffusion"]
    out1, out2 = run_posteriors(Posterior_Coefficients(small_args), ref)
    torch.testing.assert_close(out1, ref["sample_posterior_g1"]["out"], rtol=0, atol=1e-6)
    torch.testing.assert_close(out2, ref["sample_posterior_combine"]["out"], rtol=0, atol=1e-6)

    _, pc = with_reference_coefficients(small_args, schedule_ref["T4"])
    out1, out2 = run_posteriors(pc, ref)
    assert torch.equal(out1, ref["sample_posterior_g1"]["out"])
    assert torch.equal(out2, ref["sample_posterior_combine"]["out"])


def test_sample_from_model_matches_reference(small_ref: dict, small_args: argparse.Namespace) -> None:
    """Seed 4, x_init = randn, 4 steps with the reference's perturbed generators: the reference's sample."""
    ref, inputs = small_ref["diffusion"]["sample_from_model"], small_ref["inputs"]
    gen1 = load_state(NCSNpp(small_args), small_ref["gen1_state"], "generator 1")
    gen2 = load_state(NCSNpp_adaptive(small_args), small_ref["gen2_state"], "generator 2")
    pc = Posterior_Coefficients(small_args)
    conds = inputs["cond1"], inputs["cond2"], inputs["cond3"]

    torch.manual_seed(ref["seed"])
    x_init = torch.randn(ref["x_init"].shape)
    assert torch.equal(x_init, ref["x_init"])
    # return_x0 draws nothing extra (test_sample_from_model_return_x0), so one run checks both outputs.
    x, x0_1, x0_2 = sample_from_model(pc, gen1, conds[0], gen2, conds[1], conds[2], ref["n_time"], x_init, None,
                                      small_args, return_x0=True)
    torch.testing.assert_close(x, ref["out"], rtol=1e-5, atol=1e-5)
    # The last step is t = 0, whose posterior mean is the average of the two predictions (coef1 = 1, coef2 = 0).
    torch.testing.assert_close(x, (x0_1 + x0_2) / 2, rtol=1e-6, atol=1e-6)
    assert not torch.equal(x0_1, x0_2)


def test_x_t_at_t0_equals_x0() -> None:
    """One step at t = 0 leaves x0 exactly unchanged (a_s_cum[0] = 1, sigmas_cum[0] = 0 in float32)."""
    coeff = Diffusion_Coefficients(schedule_args())
    assert coeff.a_s_cum[0].item() == 1.0 and coeff.sigmas_cum[0].item() == 0.0
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    assert torch.equal(q_sample(coeff, x0, torch.zeros(3, dtype=torch.int64)), x0)


def test_q_sample_uses_marginal_coefficients() -> None:
    """x_t = a_s_cum[t]·x0 + sigmas_cum[t]·noise per sample; the last index (T) is almost pure noise."""
    coeff = Diffusion_Coefficients(schedule_args())
    x0, noise = torch.rand(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    t = torch.tensor([1, 4])
    x_t = q_sample(coeff, x0, t, noise=noise)
    for b in range(2):
        expected = coeff.a_s_cum[t[b]] * x0[b] + coeff.sigmas_cum[t[b]] * noise[b]
        assert torch.equal(x_t[b], expected)
    assert (x_t[1] - noise[1]).abs().max() < 0.01


def test_q_sample_pairs_draw_order() -> None:
    """The one-step noise is drawn first and the marginal noise second."""
    coeff = Diffusion_Coefficients(schedule_args())
    x0, t = torch.rand(2, 1, 4, 4), torch.tensor([0, 2])
    torch.manual_seed(7)
    x_t, x_tp1 = q_sample_pairs(coeff, x0, t)
    torch.manual_seed(7)
    step_noise, marginal_noise = torch.randn_like(x0), torch.randn_like(x0)
    assert torch.equal(x_t, q_sample(coeff, x0, t, noise=marginal_noise))
    shape = x0.shape
    assert torch.equal(x_tp1, extract(coeff.a_s, t + 1, shape) * x_t + extract(coeff.sigmas, t + 1, shape) * step_noise)


def test_posterior_at_t0_is_the_mean_without_noise() -> None:
    """At t = 0 both samplers return the posterior mean exactly, whatever the seed, and still draw one noise."""
    pc = Posterior_Coefficients(schedule_args())
    x0, x0_2, x_t = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    t = torch.zeros(2, dtype=torch.int64)
    mean = pc.posterior_mean_coef1[0] * x0 + pc.posterior_mean_coef2[0] * x_t
    assert pc.posterior_mean_coef2[0].item() == 0.0 and pc.posterior_variance[0].item() == 0.0
    for seed in (0, 1):
        torch.manual_seed(seed)
        assert torch.equal(sample_posterior(pc, x0, x_t, t), mean)
        # The draw happens even when masked out, so the random stream stays aligned with the original's.
        torch.manual_seed(seed)
        torch.randn_like(x_t)
        after_draw = torch.randn(1)
        torch.manual_seed(seed)
        sample_posterior(pc, x0, x_t, t)
        assert torch.equal(torch.randn(1), after_draw)
    mean_2 = pc.posterior_mean_coef1[0] * x0_2 + pc.posterior_mean_coef2[0] * x_t
    assert torch.equal(sample_posterior_combine(pc, x0, x0_2, x_t, t), (mean + mean_2) / 2)


def test_posterior_noise_scale_for_t_above_0() -> None:
    """For t > 0 the sample scatters around the mean with std exp(½·log_var[t])."""
    pc = Posterior_Coefficients(schedule_args())
    x0, x_t = torch.zeros(1, 1, 128, 128), torch.zeros(1, 1, 128, 128)
    torch.manual_seed(0)
    for step in (1, 3):
        sample = sample_posterior(pc, x0, x_t, torch.tensor([step]))
        expected_std = torch.exp(0.5 * pc.posterior_log_variance_clipped[step]).item()
        assert abs(sample.std().item() / expected_std - 1) < 0.02


def test_geometric_schedule_runs() -> None:
    """The geometric schedule builds valid coefficients that differ from the VP ones, and samples run."""
    args = schedule_args(use_geometric=True, beta_min=0.01, beta_max=0.5)
    coeff, pc = Diffusion_Coefficients(args), Posterior_Coefficients(args)
    _, _, betas = get_sigma_schedule(args)
    assert bool(((betas > 0) & (betas < 1)).all())
    assert not torch.allclose(betas, get_sigma_schedule(schedule_args())[2])
    for value in (*vars(coeff).values(), *vars(pc).values()):
        if isinstance(value, torch.Tensor):
            assert bool(torch.isfinite(value).all())
    x_t, x_tp1 = q_sample_pairs(coeff, torch.rand(2, 1, 4, 4), torch.tensor([0, 3]))
    assert bool(torch.isfinite(sample_posterior(pc, x_t, x_tp1, torch.tensor([0, 3]))).all())


def test_invalid_schedule_is_a_user_error() -> None:
    """A geometric schedule with beta_max ≥ 1 (e.g. the VP defaults) would give NaN coefficients: refused."""
    with pytest.raises(UserError, match="--beta_max 20.0"):
        Diffusion_Coefficients(schedule_args(use_geometric=True))
    with pytest.raises(UserError, match="--num_timesteps"):
        Posterior_Coefficients(schedule_args(num_timesteps=0))


class ToyGenerator(torch.nn.Module):
    """A stand-in generator that records its inputs and outputs and mixes every input into its output."""

    def __init__(self) -> None:
        """Start with empty logs."""
        super().__init__()
        self.calls: list[tuple] = []
        self.outputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor, t: torch.Tensor,
                z: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        """Return tanh of a mix of the inputs (and of generator 1's prediction when given)."""
        self.calls.append((t.clone(), z.clone(), *(e.clone() for e in extra)))
        out = x + 0.5 * c1 - 0.25 * c2 + 0.1 * c3 + t.view(-1, 1, 1, 1) + z.mean(1).view(-1, 1, 1, 1)
        for e in extra:
            out = out + 0.3 * e
        out = torch.tanh(out)
        self.outputs.append(out)
        return out


def toy_inputs(device: str = "cpu") -> tuple:
    """Conditions and a starting noise image on `device`."""
    gen = torch.Generator().manual_seed(5)
    shape = (2, 1, 8, 8)
    return tuple(torch.randn(shape, generator=gen).to(device) for _ in range(4))


def test_sample_from_model_call_order_and_draws() -> None:
    """Steps run t = n−1 … 0; per step z is drawn, shared by both generators, then one posterior noise is drawn."""
    pc = Posterior_Coefficients(schedule_args())
    gen1, gen2 = ToyGenerator(), ToyGenerator()
    c1, c2, c3, x_init = toy_inputs()
    nz = 3
    torch.manual_seed(11)
    out = sample_from_model(pc, gen1, c1, gen2, c2, c3, 4, x_init, nz=nz)
    assert [call[0].tolist() for call in gen1.calls] == [[3, 3], [2, 2], [1, 1], [0, 0]]
    for call1, call2, pred1 in zip(gen1.calls, gen2.calls, gen1.outputs):
        assert torch.equal(call1[1], call2[1])
        # Generator 2 is given generator 1's prediction of the same step.
        assert torch.equal(call2[2], pred1)

    torch.manual_seed(11)
    x = x_init
    for step in reversed(range(4)):
        t = torch.full((2,), step)
        z = torch.randn(2, nz)
        x0_1 = gen1(x, c1, c2, c3, t, z)
        x0_2 = gen2(x, c1, c2, c3, t, z, x0_1)
        x = sample_posterior_combine(pc, x0_1, x0_2, x, t)
    assert torch.equal(out, x)


def test_shared_noise_is_the_same_for_every_sample() -> None:
    """With SharedNoise every sample of the batch gets the same x_init, z and posterior draw of each step, and the
    global RNG is left alone; the result is the plain loop fed those draws."""
    pc = Posterior_Coefficients(schedule_args())
    gen1, gen2 = ToyGenerator(), ToyGenerator()
    c1, c2, c3, _ = toy_inputs()
    nz = 3
    torch.manual_seed(11)
    noise = SharedNoise.draw(4, nz, (1, 8, 8))
    x_init = noise.initial(2)
    assert torch.equal(x_init[0], x_init[1]) and x_init.shape == (2, 1, 8, 8)
    before = torch.get_rng_state()
    out = sample_from_model(pc, gen1, c1, gen2, c2, c3, 4, x_init, nz=nz, noise=noise)
    assert torch.equal(torch.get_rng_state(), before)
    for step, call in zip(reversed(range(4)), gen1.calls):
        assert torch.equal(call[1], noise.latents[step].expand(2, nz))
    x = x_init
    for step in reversed(range(4)):
        t = torch.full((2,), step)
        z = noise.latents[step].expand(2, nz)
        x0_1 = gen1(x, c1, c2, c3, t, z)
        x0_2 = gen2(x, c1, c2, c3, t, z, x0_1)
        x = sample_posterior_combine(pc, x0_1, x0_2, x, t, noise.posterior[step].expand_as(x))
    assert torch.equal(out, x)
    same = (c1[:1].expand(2, -1, -1, -1),) * 3
    twins = sample_from_model(pc, ToyGenerator(), *same[:1], ToyGenerator(), *same[1:], 4, x_init, nz=nz, noise=noise)
    assert torch.equal(twins[0], twins[1])  # equal inputs and shared noise: equal samples


def test_sample_from_model_return_x0() -> None:
    """return_x0=True also gives the last step's two predictions; the default return is the sample alone."""
    pc = Posterior_Coefficients(schedule_args())
    c1, c2, c3, x_init = toy_inputs()
    opt = SimpleNamespace(nz=4)
    torch.manual_seed(3)
    plain = sample_from_model(pc, ToyGenerator(), c1, ToyGenerator(), c2, c3, 4, x_init, 4, opt)
    assert isinstance(plain, torch.Tensor)
    torch.manual_seed(3)
    gen1, gen2 = ToyGenerator(), ToyGenerator()
    x, x0_1, x0_2 = sample_from_model(pc, gen1, c1, gen2, c2, c3, 4, x_init, 4, opt, return_x0=True)
    assert torch.equal(x, plain)
    assert gen1.calls[-1][0].tolist() == [0, 0]
    assert torch.equal(x0_1, gen1.outputs[-1]) and torch.equal(x0_2, gen2.outputs[-1])
    assert not torch.equal(x0_1, x0_2)
    with pytest.raises(TypeError, match="nz"):
        sample_from_model(pc, gen1, c1, gen2, c2, c3, 4, x_init)


def devices() -> list[str]:
    """CPU, the meta device (no data: any host read-back of a value fails there) and CUDA when present."""
    found = ["cpu", "meta"]
    if torch.cuda.is_available():
        found.append("cuda")
    return found


@pytest.mark.parametrize("device", devices())
def test_coefficients_and_samples_stay_on_the_device(device: str) -> None:
    """Coefficients are built on the given device, and sampling there keeps everything there."""
    args = schedule_args()
    coeff, pc = Diffusion_Coefficients(args, device), Posterior_Coefficients(args, torch.device(device))
    tensors = [v for v in (*vars(coeff).values(), *vars(pc).values()) if isinstance(v, torch.Tensor)]
    assert len(tensors) == 17
    assert all(v.device.type == device for v in tensors)

    c1, c2, c3, x_init = toy_inputs(device)
    t = torch.tensor([0, 3], device=device)
    x_t, x_tp1 = q_sample_pairs(coeff, c1, t)
    assert x_t.device.type == x_tp1.device.type == device
    assert sample_posterior(pc, x_t, x_tp1, t).device.type == device
    if device == "cuda":
        # Any device-to-host synchronisation inside the sampler raises in this mode.
        torch.cuda.set_sync_debug_mode("error")
    try:
        x, x0_1, x0_2 = sample_from_model(pc, ToyGenerator().to(device), c1, ToyGenerator().to(device), c2, c3, 4,
                                          x_init, nz=5, return_x0=True)
    finally:
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    assert x.device.type == x0_1.device.type == x0_2.device.type == device


def test_coefficients_move_with_to() -> None:
    """.to(device) moves every coefficient tensor and keeps the values."""
    pc = Posterior_Coefficients(schedule_args())
    coef1 = pc.posterior_mean_coef1.clone()
    assert pc.to("cpu") is pc and torch.equal(pc.posterior_mean_coef1, coef1)
    pc.to("meta")
    assert pc.device.type == "meta" and pc.posterior_mean_coef1.device.type == "meta"
