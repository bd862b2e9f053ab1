"""Speed work: the FIR/attention/AdaGN fast paths against the faithful ones, channels_last, bf16 autocast against the
0.5 dB criterion, the sampler and training wrappers, the CPU malloc setting, and the benchmark scripts' smoke runs.

With fast paths off the default FIR formulations must give the same bits as the op-by-op `upfirdn2d` definition
(the original's CPU path); everything that is only equal to rounding sits behind a switch and is bounded here.
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import perturb_, save_tiny_experiment, save_tiny_slices, synthesis_cli, tiny_args, train_cli
from torch.utils._python_dispatch import TorchDispatchMode

import backbones
from backbones import build_critic, build_generators, fast_paths, fast_paths_enabled, set_fast_paths
from backbones import up_or_down_sampling as fir
from backbones.layerspp import AdaptiveGroupNorm, AttnBlockpp, ConvFeatBlock
from backbones.upfirdn2d import upfirdn2d
from utils.core.options import add_diffusion_args, add_model_args, add_speed_args, add_training_args
from utils.model.diffusion import (
    Diffusion_Coefficients,
    Posterior_Coefficients,
    q_sample_pairs,
    sample_from_model,
    sample_posterior,
)
from utils.model.speed import SpeedOptions, autocast_context, fast_sample, make_adam, prepare_generators, prepare_module
from utils.train.steps import Batch, Diffusion, Networks, critic_step

ROOT = Path(__file__).resolve().parents[1]
# The paper's best mean PSNR (BraTS T2, 25.04 dB). If |amp - fp32| has PSNR P_d, then for a model with PSNR P
# against the truth, the amp PSNR is at least -20 log10(10^(-P/20) + 10^(-P_d/20)) (triangle inequality on the RMS
# errors); that loses at most 0.5 dB whenever P_d >= P + 24.5 dB.
PAPER_BEST_PSNR = 25.0
WORST_CASE_MARGIN_DB = -20 * math.log10(10 ** (0.5 / 20) - 1)  # 24.5 dB


# ------------------------------------------------------------------------------------------------------ helpers
def tiny_generators(**overrides) -> tuple[argparse.Namespace, nn.Module, nn.Module]:
    """Perturbed tiny generators (eval mode) and their options."""
    args = tiny_args(**overrides)
    torch.manual_seed(0)
    gen1, gen2 = build_generators(args)
    return args, perturb_(gen1, 1).eval(), perturb_(gen2, 2).eval()


def gen_inputs(args: argparse.Namespace, batch: int, seed: int = 3) -> tuple[torch.Tensor, ...]:
    """x_tp1, three conditions, t (0 and T-1 included), z."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, 1, args.image_size, args.image_size)
    t = torch.arange(batch) % args.num_timesteps
    t[-1] = args.num_timesteps - 1
    return (torch.randn(shape, generator=gen), *(torch.rand(shape, generator=gen) * 2 - 1 for _ in range(3)),
            t, torch.randn(batch, args.nz, generator=gen))


def both_outputs(gen1: nn.Module, gen2: nn.Module, inputs: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """gen1's output and gen2's output given gen1's."""
    with torch.no_grad():
        out1 = gen1(*inputs)
        return out1, gen2(*inputs, out1)


def psnr01(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (dB) between two model-space [-1, 1] images mapped to [0, 1] (data range 1)."""
    mse = (((a + 1) / 2).clamp(0, 1) - ((b + 1) / 2).clamp(0, 1)).double().square().mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


@pytest.fixture(autouse=True)
def faithful_by_default():
    """Every test starts (and leaves) with fast paths off; one intra-op thread (tiny nets, busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    set_fast_paths(False)
    yield
    set_fast_paths(False)
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------- switch
def test_switch_defaults_off_and_the_context_restores_it():
    """Off at import; fast_paths() turns it on for a block and restores the previous value, even after an error."""
    assert fast_paths_enabled() is False
    with fast_paths():
        assert fast_paths_enabled() is True
        with fast_paths(False):
            assert fast_paths_enabled() is False
        assert fast_paths_enabled() is True
    with pytest.raises(RuntimeError):
        with fast_paths():
            raise RuntimeError("boom")
    assert fast_paths_enabled() is False
    assert backbones.set_fast_paths is set_fast_paths


# ------------------------------------------------------------------------------------------------------- FIR
FIR_CASES = [((1, 3, 3, 1), 2), ((1, 1), 2), ((1, 2, 1), 3), ((1, 3, 3, 1, 2, 5), 2), ((1, 3, 3, 1, 2, 5), 3),
             ((2, 5, 1, 3), 2)]


def upsample_reference(x: torch.Tensor, k: tuple, factor: int) -> torch.Tensor:
    """upsample_2d by its definition: upfirdn2d with the zero-inserted grid."""
    p = len(k) - factor
    kernel = fir.setup_kernel(k, x.dtype) * (factor ** 2)
    return upfirdn2d(x, kernel, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_reference(x: torch.Tensor, k: tuple, factor: int) -> torch.Tensor:
    """downsample_2d by its definition."""
    p = len(k) - factor
    return upfirdn2d(x, fir.setup_kernel(k, x.dtype), down=factor, pad=((p + 1) // 2, p // 2))


@pytest.mark.parametrize("k,factor", FIR_CASES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_default_fir_resampling_is_bit_identical_to_upfirdn2d(k, factor, channels_last):
    """Default up- and depthwise downsampling give exactly upfirdn2d's bits; polyphase (a fast path) within 1e-6."""
    gen = torch.Generator().manual_seed(len(k) * factor)
    for shape in [(2, 3, 9, 9), (1, 32, 16, 12)]:
        x = torch.randn(shape, generator=gen)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        reference = upsample_reference(x, k, factor)
        assert torch.equal(fir.upsample_2d(x, k, factor), reference), shape
        assert torch.equal(fir.downsample_2d(x, k, factor), downsample_reference(x, k, factor)), shape
        polyphase = fir._polyphase_upsample(x, k, factor ** 2, factor)
        if polyphase is not None:
            assert torch.allclose(polyphase, reference, rtol=0, atol=1e-6), shape
            with fast_paths():
                assert torch.allclose(fir.upsample_2d(x, k, factor), reference, rtol=0, atol=1e-6), shape


def test_default_fir_keeps_channels_last_and_float64():
    """A channels-last input gives a channels-last output; float64 stays float64 (equal to rounding: the original
    could not run in float64 at all, so there are no bits to keep there)."""
    x = torch.randn(2, 8, 10, 10, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    up, down = fir.upsample_2d(x, (1, 3, 3, 1)), fir.downsample_2d(x, (1, 3, 3, 1))
    assert up.dtype == down.dtype == torch.float64
    assert up.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(up, upsample_reference(x, (1, 3, 3, 1), 2), rtol=0, atol=1e-14)
    torch.testing.assert_close(down, downsample_reference(x, (1, 3, 3, 1), 2), rtol=0, atol=1e-14)


def test_blur_before_strided_convolutions_is_bit_identical():
    """conv_downsample_2d (the input pyramid) and the blur of upsample_conv_2d equal their upfirdn2d forms."""
    gen = torch.Generator().manual_seed(5)
    x, w = torch.randn(2, 3, 12, 12, generator=gen), torch.randn(4, 3, 3, 3, generator=gen)
    kernel = fir.setup_kernel((1, 3, 3, 1))
    expected = F.conv2d(upfirdn2d(x, kernel, pad=(2, 2)), w, stride=2)
    assert torch.equal(fir.conv_downsample_2d(x, w, (1, 3, 3, 1)), expected)
    transposed = F.conv_transpose2d(x, torch.flip(w, [2, 3]).transpose(0, 1).contiguous(), stride=2)
    expected = upfirdn2d(transposed, kernel * 4, pad=(1, 1))
    assert torch.equal(fir.upsample_conv_2d(x, w, (1, 3, 3, 1)), expected)


@pytest.mark.parametrize("k,factor", FIR_CASES)
def test_fast_upsampling_matches_within_rounding(k, factor):
    """With fast paths on, upsampling (transposed convolution where it applies) stays within float32 rounding."""
    x = torch.randn(2, 5, 11, 11, generator=torch.Generator().manual_seed(factor))
    with fast_paths():
        fast = fir.upsample_2d(x, k, factor)
    reference = upsample_reference(x, k, factor)
    assert fast.shape == reference.shape
    torch.testing.assert_close(fast, reference, rtol=0, atol=2e-6 * reference.abs().max().item())


def test_fast_upsampling_uses_one_transposed_convolution(monkeypatch):
    """The fast path for the README kernel really is the transposed convolution (and the default is not)."""
    calls = []
    original = F.conv_transpose2d
    monkeypatch.setattr(fir.F, "conv_transpose2d", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    x = torch.randn(1, 4, 8, 8)
    fir.upsample_2d(x, (1, 3, 3, 1))
    assert not calls
    with fast_paths():
        fir.upsample_2d(x, (1, 3, 3, 1))
    assert calls == [1]


def test_kernels_are_cached_and_usable_for_training_after_inference_mode():
    """One kernel tensor per (form, taps, dtype, device); one first built under inference_mode still backpropagates."""
    fir._KERNELS.clear()
    with torch.inference_mode():
        fir.downsample_2d(torch.randn(1, 7, 8, 8), (1, 3, 3, 1))
    cached = fir._kernel("depthwise", (1, 3, 3, 1), 1.0, torch.zeros(1), channels=7)
    assert cached is fir._kernel("depthwise", (1, 3, 3, 1), 1.0, torch.zeros(1), channels=7)
    assert not cached.is_inference()
    x = torch.randn(1, 7, 8, 8, requires_grad=True)
    fir.downsample_2d(x, (1, 3, 3, 1)).sum().backward()
    torch.testing.assert_close(x.grad[0, 0, 2:6, 2:6], torch.full((4, 4), 0.25))


# ----------------------------------------------------------------------------------------- attention and AdaGN
@pytest.mark.parametrize("size", [(4, 5), (16, 16)])
def test_fused_attention_matches_the_einsum_form(size):
    """SDPA with fused q/k/v equals the faithful block within rounding, forward and backward."""
    block = perturb_(AttnBlockpp(32, skip_rescale=True), 0)
    x = torch.randn(2, 32, *size, generator=torch.Generator().manual_seed(1), requires_grad=True)
    reference = block(x)
    grads_ref = torch.autograd.grad(reference.square().sum(), [x, block.NIN_0.W, block.NIN_3.b])
    with fast_paths():
        fast = block(x)
        grads = torch.autograd.grad(fast.square().sum(), [x, block.NIN_0.W, block.NIN_3.b])
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_fused_attention_calls_sdpa_and_never_builds_the_weight_matrix(monkeypatch):
    """The fast block goes through scaled_dot_product_attention; no tensor of (H*W)^2 elements is created."""
    called = []
    original = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: called.append(1) or original(*a, **kw))
    block = perturb_(AttnBlockpp(16, skip_rescale=True), 0)
    x = torch.randn(1, 16, 12, 12)
    tokens = 12 * 12

    class Sizes(TorchDispatchMode):
        """Record the element count of every op output."""

        def __init__(self) -> None:
            super().__init__()
            self.numels: list[int] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.numels += [t.numel() for t in (out if isinstance(out, (tuple, list)) else [out])
                            if isinstance(t, torch.Tensor)]
            return out

    with torch.no_grad():
        with Sizes() as faithful:
            block(x)
        with fast_paths(), Sizes() as fused:
            block(x)
    assert called == [1]
    assert max(faithful.numels) >= tokens ** 2  # the faithful form holds the full weight matrix ...
    assert max(fused.numels) < tokens ** 2  # ... the fused one never does


@pytest.mark.parametrize("batch,channels_last", [(1, False), (1, True), (3, False), (3, True)])
def test_fused_adaptive_group_norm_matches(batch, channels_last):
    """AdaGN with the affine inside GroupNorm (or one addcmul) equals gamma * GN(x) + beta within rounding."""
    norm = perturb_(AdaptiveGroupNorm(4, 16, 8), 0)
    gen = torch.Generator().manual_seed(batch)
    x, style = torch.randn(batch, 16, 6, 5, generator=gen), torch.randn(batch, 8, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    reference = norm(x, style)
    grad_ref = torch.autograd.grad(reference.square().sum(), [x, norm.style.weight])
    with fast_paths():
        fast = norm(x, style)
        grad = torch.autograd.grad(fast.square().sum(), [x, norm.style.weight])
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
    for got, want in zip(grad, grad_ref):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------- whole networks
def test_whole_generators_with_fast_paths_match_within_tolerance():
    """Both generators with every fast path on stay within 1e-5 (relative) of the faithful outputs."""
    args, gen1, gen2 = tiny_generators()
    inputs = gen_inputs(args, 3)
    out1, out2 = both_outputs(gen1, gen2, inputs)
    with fast_paths():
        fast1, fast2 = both_outputs(gen1, gen2, inputs)
    for fast, ref in ((fast1, out1), (fast2, out2)):
        assert ref.std() > 1e-2  # the perturbed networks carry signal
        assert (fast - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_fast_paths_match_the_original_fixture(small_ref):
    """With fast paths on, the outputs of the original's perturbed small configuration stay within 1e-5."""
    args = argparse.Namespace(**small_ref["config"])
    gen1, gen2 = build_generators(args)
    gen1.load_state_dict(small_ref["gen1_state"])
    gen2.load_state_dict(small_ref["gen2_state"])
    inp, ref = small_ref["inputs"], small_ref["outputs"]
    conds = (inp["cond1"], inp["cond2"], inp["cond3"])
    with torch.no_grad(), fast_paths():
        out1 = gen1(inp["x_tp1"], *conds, inp["t"], inp["z"])
        out2 = gen2(inp["x_tp1"], *conds, inp["t"], inp["z"], inp["gen2_pseudo_target"])
    for actual, expected in ((out1, ref["gen1"]), (out2, ref["gen2"])):
        assert (actual.double() - expected.double()).abs().max() <= 1e-5 * expected.abs().max()


@pytest.mark.parametrize("fast", [False, True])
def test_channels_last_networks_match(fast):
    """channels_last generators and critic give the NCHW outputs within rounding (outputs stay the same shape)."""
    args, gen1, gen2 = tiny_generators(image_size=64, ch_mult=[1, 1], attn_resolutions=[32], ngf=4)
    critic = perturb_(build_critic(args)[0], 4)
    inputs = gen_inputs(args, 2)
    with fast_paths(fast), torch.no_grad():
        out1, out2 = both_outputs(gen1, gen2, inputs)
        logits, feats = critic(out1, inputs[4], inputs[0])
        cl1, cl2 = both_outputs(*(copy.deepcopy(g).to(memory_format=torch.channels_last) for g in (gen1, gen2)),
                                inputs)
        cl_logits, cl_feats = copy.deepcopy(critic).to(memory_format=torch.channels_last)(out1, inputs[4],
                                                                                           inputs[0])
    for got, want in ((cl1, out1), (cl2, out2), (cl_logits, logits), (cl_feats, feats)):
        assert got.shape == want.shape
        assert (got - want).abs().max() <= 1e-5 * want.abs().max()


class DtypeRecorder(TorchDispatchMode):
    """Record the dtype of every floating-point tensor any op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: set[torch.dtype] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
                self.dtypes.add(tensor.dtype)
        return out


@pytest.mark.parametrize("fast", [False, True])
def test_no_float64_on_the_sampling_path(fast):
    """A whole sampler run (both generators, every step) computes in float32 only."""
    args, gen1, gen2 = tiny_generators(num_timesteps=2)
    pc = Posterior_Coefficients(args)
    x, c1, c2, c3, _, _ = gen_inputs(args, 2)
    with fast_paths(fast), DtypeRecorder() as recorder:
        fast_sample(pc, gen1, c1, gen2, c2, c3, args.num_timesteps, x, args)
    assert recorder.dtypes == {torch.float32}


# ---------------------------------------------------------------------------------------------------- sampling
def count_stem_calls(gen1: nn.Module) -> list[int]:
    """Count the calls of generator 1's four input encoders (x, cond1, cond2, cond3), via forward hooks."""
    counts = [0, 0, 0, 0]
    # all_modules 2..5, after the two time-embedding Linears (ARCH_SPEC §3.3).
    for index in range(4):
        stem = gen1.all_modules[2 + index]
        assert isinstance(stem, ConvFeatBlock)
        stem.register_forward_hook(lambda *_, i=index: counts.__setitem__(i, counts[i] + 1))
    return counts


def test_condition_encodings_are_computed_once_per_sampler_run():
    """Inside condition_feature_cache (without autograd) the three condition encoders run once for repeated calls
    with the same tensors, the x encoder every call, and the outputs keep their bits; new tensors or autograd
    recompute."""
    args, gen1, _ = tiny_generators()
    counts = count_stem_calls(gen1)
    x, c1, c2, c3, t, z = gen_inputs(args, 2)
    with torch.no_grad():
        expected = gen1(x, c1, c2, c3, t, z)
        counts[:] = [0, 0, 0, 0]
        with backbones.condition_feature_cache():
            outputs = [gen1(x, c1, c2, c3, t, z) for _ in range(3)]
            assert counts == [3, 1, 1, 1]
            gen1(x, c1.clone(), c2, c3, t, z)
            assert counts == [4, 2, 2, 2]
        gen1(x, c1, c2, c3, t, z)  # outside the scope: no cache
        assert counts == [5, 3, 3, 3]
    assert all(torch.equal(out, expected) for out in outputs)
    with backbones.condition_feature_cache():
        gen1(x, c1, c2, c3, t, z)
        gen1(x, c1, c2, c3, t, z)
    assert counts == [7, 5, 5, 5]  # autograd on: nothing cached


def test_fast_sample_encodes_the_conditions_once():
    """A T-step fast_sample run calls generator 1's condition encoders once and its x encoder T times."""
    args, gen1, gen2 = tiny_generators(num_timesteps=4)
    counts = count_stem_calls(gen1)
    x, c1, c2, c3, _, _ = gen_inputs(args, 2)
    fast_sample(Posterior_Coefficients(args), gen1, c1, gen2, c2, c3, args.num_timesteps, x, args)
    assert counts == [4, 1, 1, 1]


def test_fast_sample_without_options_is_the_faithful_sampler():
    """fast_sample (inference_mode, no autocast) gives sample_from_model's bits for the same seed."""
    args, gen1, gen2 = tiny_generators()
    pc = Posterior_Coefficients(args)
    x, c1, c2, c3, _, _ = gen_inputs(args, 2)
    torch.manual_seed(11)
    expected = sample_from_model(pc, gen1, c1, gen2, c2, c3, args.num_timesteps, x, opt=args, return_x0=True)
    torch.manual_seed(11)
    got = fast_sample(pc, gen1, c1, gen2, c2, c3, args.num_timesteps, x, args, return_x0=True)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_bf16_autocast_sampling_meets_the_half_db_criterion():
    """bf16 autocast (on the CPU here) changes the samples by little enough for the 0.5 dB criterion.

    PSNR(amp, fp32) >= 25 + 24.5 dB guarantees (worst case, errors aligned) that a model scoring up to the paper's
    best mean PSNR (25 dB) loses at most 0.5 dB with --amp; with the fast paths on too. The GPU's bf16 kernels are
    checked by `bench/bench_sampling.py --check_amp` when a GPU is available.
    """
    args, gen1, gen2 = tiny_generators(image_size=64, ch_mult=[1, 1], attn_resolutions=[32])
    pc = Posterior_Coefficients(args)
    x, c1, c2, c3, _, _ = gen_inputs(args, 3)

    def sample(amp: bool) -> torch.Tensor:
        torch.manual_seed(5)
        return fast_sample(pc, gen1, c1, gen2, c2, c3, args.num_timesteps, x, args, amp=amp)

    fp32 = sample(False)
    assert fp32.std() > 0.05
    for fast in (False, True):
        with fast_paths(fast):
            amp = sample(True)
        assert amp.dtype == torch.float32
        assert 1e-4 < (amp - fp32).abs().max()  # autocast really ran in bf16
        assert psnr01(amp, fp32) >= PAPER_BEST_PSNR + WORST_CASE_MARGIN_DB, fast


def test_prepare_generators_and_compile_keep_checkpoint_keys():
    """channels_last + in-place compile (the eager backend here: inductor is too slow for the suite) keeps the
    state_dict keys and the outputs."""
    args, gen1, gen2 = tiny_generators()
    keys = [list(g.state_dict()) for g in (gen1, gen2)]
    inputs = gen_inputs(args, 2)
    expected = both_outputs(gen1, gen2, inputs)
    prepared = prepare_generators([copy.deepcopy(gen1), copy.deepcopy(gen2)], "cpu", channels_last=True,
                                  compile_module=True, backend="eager")
    assert [list(g.state_dict()) for g in prepared] == keys
    assert all(type(p) is type(g) for p, g in zip(prepared, (gen1, gen2)))
    got = both_outputs(*prepared, inputs)
    for a, b in zip(got, expected):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()


def test_compiled_generators_do_not_recompile_between_sampler_runs():
    """With --compile, a second sampler run reuses the compiled graphs: neither the per-run condition cache nor the
    kernel cache makes torch.compile guard on a per-run object (counted with dynamo's counting backend)."""
    from torch._dynamo.testing import CompileCounter

    args, gen1, gen2 = tiny_generators(num_timesteps=2)
    counter = CompileCounter()
    for gen in (gen1, gen2):
        gen.compile(backend=counter)
    pc = Posterior_Coefficients(args)
    x, c1, c2, c3, _, _ = gen_inputs(args, 2)
    fast_sample(pc, gen1, c1, gen2, c2, c3, args.num_timesteps, x, args)
    compiled = counter.frame_count
    fast_sample(pc, gen1, c1.clone(), gen2, c2, c3, args.num_timesteps, x, args)
    assert compiled >= 2 and counter.frame_count == compiled


# ---------------------------------------------------------------------------------------------------- training
def critic_step_with_generator_autograd(nets: Networks, opt: torch.optim.Optimizer, batch: Batch,
                                        diff: Diffusion, args: argparse.Namespace, apply_r1: bool) -> None:
    """The original's critic step (ARCH_SPEC §8.2): both generators run with autograd, x_t always needs grad."""
    nets.critic.requires_grad_(True)
    nets.critic.zero_grad()
    real = batch.target
    t = torch.randint(0, diff.num_timesteps, (real.size(0),))
    x_t, x_tp1 = q_sample_pairs(diff.coeff, real, t)
    x_t.requires_grad = True
    d_real, _ = nets.critic(x_t, t, x_tp1.detach())
    F.softplus(-d_real).mean().backward(retain_graph=True)
    if apply_r1:
        grad = torch.autograd.grad(outputs=d_real.sum(), inputs=x_t, create_graph=True)[0]
        (args.r1_gamma / 2 * (grad.view(grad.size(0), -1).norm(2, dim=1) ** 2).mean()).backward()
    z = torch.randn(real.size(0), args.nz)
    x0_1 = nets.gen1(x_tp1.detach(), batch.cond1, batch.cond2, batch.cond3, t, z)
    x0_2 = nets.gen2(x_tp1.detach(), batch.cond1, batch.cond2, batch.cond3, t, z, x0_1[:, [0]])
    xp1 = sample_posterior(diff.pos_coeff, x0_1[:, [0]], x_tp1, t)
    xp2 = sample_posterior(diff.pos_coeff, x0_2[:, [0]], x_tp1, t)
    out1, _ = nets.critic(xp1, t, x_tp1.detach())
    out2, _ = nets.critic(xp2, t, x_tp1.detach())
    (F.softplus(out1).mean() + F.softplus(out2).mean()).backward()
    opt.step()


def tiny_training(seed: int = 0) -> tuple[argparse.Namespace, Networks, Batch, Diffusion]:
    """Perturbed tiny networks (64x64, the critic's minimum) with one batch of two slices."""
    parser = argparse.ArgumentParser()
    add_model_args(parser)
    add_diffusion_args(parser)
    add_training_args(parser)
    args = parser.parse_args(["--image_size", "64", "--ch_mult", "1", "1", "--num_res_blocks", "1",
                              "--num_channels_dae", "16", "--ngf", "4", "--z_emb_dim", "16", "--t_emb_dim", "16",
                              "--attn_resolutions", "32", "--num_timesteps", "2", "--nz", "20"])
    torch.manual_seed(seed)
    gen1, gen2 = build_generators(args)
    critic, att_proj = build_critic(args)
    nets = Networks(perturb_(gen1, 1), perturb_(gen2, 2), perturb_(critic, 3), att_proj.requires_grad_(False))
    gen = torch.Generator().manual_seed(seed)
    batch = Batch(*(torch.rand(2, 1, 64, 64, generator=gen) * 2 - 1 for _ in range(4)))
    return args, nets, batch, Diffusion(Diffusion_Coefficients(args), Posterior_Coefficients(args), 2)


@pytest.mark.parametrize("apply_r1", [True, False])
def test_critic_step_without_generator_autograd_gives_the_identical_update(apply_r1):
    """The critic step computing the fake samples under no_grad updates the critic bit for bit like the original's
    step (which back-propagated into both generators too), from the same state and random stream."""
    args, nets, batch, diff = tiny_training()
    ref_nets = copy.deepcopy(nets)
    opt = torch.optim.Adam(nets.critic.parameters(), lr=1e-3, betas=(0.5, 0.9))
    ref_opt = torch.optim.Adam(ref_nets.critic.parameters(), lr=1e-3, betas=(0.5, 0.9))
    torch.manual_seed(21)
    critic_step(nets, opt, batch, diff, args, apply_r1=apply_r1)
    rng_after = torch.get_rng_state()
    torch.manual_seed(21)
    critic_step_with_generator_autograd(ref_nets, ref_opt, batch, diff, args, apply_r1=apply_r1)
    assert all(torch.equal(a, b) for a, b in zip(nets.critic.state_dict().values(),
                                                  ref_nets.critic.state_dict().values()))
    state, ref_state = opt.state_dict()["state"], ref_opt.state_dict()["state"]
    assert all(torch.equal(state[i][k], ref_state[i][k]) for i in state for k in ("exp_avg", "exp_avg_sq"))
    assert torch.equal(rng_after, torch.get_rng_state())  # the same random draws, in the same order
    assert any(p.grad is not None for p in ref_nets.gen1.parameters())  # the original did the wasted backward
    assert all(p.grad is None for p in nets.gen1.parameters())


def test_training_step_with_speed_options_stays_close():
    """A critic step with fast paths + channels_last (+ bf16 autocast) stays near the faithful update."""
    args, nets, batch, diff = tiny_training()
    results = {}
    for name, options in (("faithful", SpeedOptions()), ("fast", SpeedOptions(fast_paths=True, channels_last=True)),
                          ("amp", SpeedOptions(fast_paths=True, channels_last=True, amp=True))):
        set_fast_paths(options.fast_paths)
        trial = copy.deepcopy(nets)
        for net in (trial.gen1, trial.gen2, trial.critic):
            prepare_module(net, "cpu", options.channels_last)
        opt = make_adam(trial.critic.parameters(), 1e-4, (0.5, 0.9), torch.device("cpu"))
        before = [p.detach().clone() for p in trial.critic.parameters()]
        torch.manual_seed(8)
        with autocast_context("cpu", options.amp):
            losses = critic_step(trial, opt, batch, diff, args, apply_r1=True)
        results[name] = (torch.stack([losses["errD_real"], losses["errD_fake"], losses["r1_penalty"]]).float(),
                         [p.detach() - b for p, b in zip(trial.critic.parameters(), before)])
    set_fast_paths(False)
    ref_losses, ref_updates = results["faithful"]
    for name, rtol in (("fast", 1e-4), ("amp", 5e-2)):
        losses, updates = results[name]
        torch.testing.assert_close(losses, ref_losses, rtol=rtol, atol=rtol)
        step = torch.cat([u.flatten() for u in updates])
        ref_step = torch.cat([u.flatten() for u in ref_updates])
        # Adam's first step is lr * sign(grad) wherever the gradient is not tiny: compare the update directions.
        assert F.cosine_similarity(step, ref_step, dim=0) > (0.999 if name == "fast" else 0.9), name


def test_fused_adam_falls_back_on_the_cpu():
    """--fused_adam on the CPU warns and uses the default Adam (identical to torch.optim.Adam)."""
    params = [nn.Parameter(torch.randn(3))]
    with pytest.warns(UserWarning, match="fused_adam"):
        opt = make_adam(params, 1e-3, (0.5, 0.9), torch.device("cpu"), fused=True)
    assert not opt.defaults.get("fused")


# ------------------------------------------------------------------------------------- test.py and train.py
def test_test_py_speed_flags(tmp_path):
    """test.py with --fast_paths --channels_last writes the faithful samples to rounding; with --amp within the
    0.5 dB criterion (see test_bf16_autocast_sampling_meets_the_half_db_criterion)."""
    save_tiny_slices(tmp_path / "BRATS", count=3)
    save_tiny_experiment(tmp_path / "results" / "exp")
    base = ["--exp", "exp", "--input_path", str(tmp_path / "BRATS"), "--output_path", str(tmp_path / "results"),
            "--num_workers", "0", "--batch_size", "2", "--device", "cpu", "--overwrite"]
    synth = {}
    for name, flags in (("faithful", []), ("fast", ["--fast_paths", "--channels_last"]), ("amp", ["--amp"])):
        synth[name] = torch.from_numpy(np.load(synthesis_cli(base + flags) / "synth.npy"))
        set_fast_paths(False)
    assert synth["faithful"].std() > 0.01
    torch.testing.assert_close(synth["fast"], synth["faithful"], rtol=0, atol=1e-5)
    assert psnr01(synth["amp"] * 2 - 1, synth["faithful"] * 2 - 1) >= PAPER_BEST_PSNR + WORST_CASE_MARGIN_DB


def write_training_data(root: Path, size: int = 64) -> Path:
    """A tiny preprocessed dataset: train (4 slices) and val (2) of the four BraTS contrasts, smooth blobs."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    for split, count in (("train", 4), ("val", 2)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for k, name in enumerate(("FLAIR", "T2", "T1", "T1ce")):
            blobs = [np.exp(-((yy - 0.5) ** 2 + (xx - 0.4 - 0.05 * i) ** 2) * (6 + k)) for i in range(count)]
            np.save(root / split / f"{name}.npy", np.stack(blobs).astype(np.float32))
    return root


def test_train_py_speed_flags_keep_the_first_step(tmp_path):
    """train.py with the speed options trains, and its first logged losses equal the faithful run's to rounding
    (fast paths, channels_last) or to bf16 precision (--amp): same data, seed and random draws."""
    data = write_training_data(tmp_path / "data")
    base = ["--image_size", "64", "--ch_mult", "1", "1", "--num_res_blocks", "1", "--num_channels_dae", "16",
            "--ngf", "4", "--z_emb_dim", "16", "--t_emb_dim", "16", "--attn_resolutions", "32",
            "--num_timesteps", "2", "--batch_size", "2", "--num_epoch", "1", "--num_workers", "0", "--device", "cpu",
            "--input_path", str(data), "--output_path", str(tmp_path / "runs")]
    first = {}
    for name, flags in (("faithful", []), ("fast", ["--fast_paths", "--channels_last"]),
                        ("amp", ["--fast_paths", "--amp"])):
        train_cli(base + ["--exp", name] + flags)
        set_fast_paths(False)
        with open(tmp_path / "runs" / name / "log.csv", newline="") as fh:
            row = next(csv.DictReader(fh))
        first[name] = torch.tensor([float(row[k]) for k in ("errD_real", "errD_fake", "r1_penalty", "errG_adv",
                                                              "errG_L1", "mask_loss", "errG")])
        assert (tmp_path / "runs" / name / "gen_diffusive_1_1.pth").is_file()
    assert torch.isfinite(first["faithful"]).all()
    torch.testing.assert_close(first["fast"], first["faithful"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(first["amp"], first["faithful"], rtol=3e-2, atol=1e-3)


# ------------------------------------------------------------------------------------------ options and process
def test_speed_flags_parse_and_default_off():
    """The shared speed options default off; SpeedOptions reads and describes them."""
    parser = argparse.ArgumentParser()
    add_speed_args(parser, training=True)
    assert SpeedOptions.from_args(parser.parse_args([])) == SpeedOptions()
    assert not SpeedOptions().enabled()
    options = SpeedOptions.from_args(parser.parse_args(["--amp", "--channels_last", "--fused_adam"]))
    assert options == SpeedOptions(amp=True, channels_last=True, fused_adam=True)
    assert options.describe() == "--amp --channels_last --fused_adam"
    assert SpeedOptions().describe().startswith("faithful")


def test_cpu_malloc_reuse_in_a_fresh_process():
    """On Linux the malloc setting applies, and afterwards tensors are still computed normally (own process, so this
    test process keeps glibc's defaults)."""
    code = ("import sys; sys.path.insert(0, '.'); import torch; "
            "from utils.model.cpu_memory import reuse_freed_cpu_memory; ok = reuse_freed_cpu_memory(); "
            "x = torch.ones(2048, 2048); print(ok, float((x @ x)[0, 0]))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    applied, value = result.stdout.split()
    assert value == "2048.0"
    assert applied == str(sys.platform.startswith("linux"))


# ------------------------------------------------------------------------------------------------ benchmarks
@pytest.mark.parametrize("script", ["bench_sampling.py", "bench_training.py"])
def test_bench_scripts_show_help(script):
    """--help works and documents the reference option."""
    result = subprocess.run([sys.executable, f"bench/{script}", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--reference" in result.stdout and "--device" in result.stdout


def test_bench_sampling_smoke_run_writes_json(tmp_path):
    """A tiny sampling benchmark of ours (no reference) runs and writes its figures."""
    out = tmp_path / "sampling.json"
    result = subprocess.run([sys.executable, "bench/bench_sampling.py", "--image_size", "64", "--tiny",
                             "--batches", "1", "2", "--repeats", "1", "--warmup", "0", "--threads", "1",
                             "--fast_paths", "--channels_last", "--check_amp", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert [row["batch"] for row in data["rows"]] == [1, 2]
    assert all(row["ours_slices_per_s"] > 0 and row["original_slices_per_s"] is None for row in data["rows"])
    assert data["ours_options"] == {"amp": False, "channels_last": True, "compile": False, "fast_paths": True}
    assert data["amp_check"]["psnr_db"] > 40
    assert "slices/s" in result.stdout


def test_bench_training_smoke_run_writes_json(tmp_path):
    """A tiny training benchmark of ours (no reference) runs one step and writes steps/s and peak memory."""
    out = tmp_path / "training.json"
    result = subprocess.run([sys.executable, "bench/bench_training.py", "--image_size", "64", "--tiny",
                             "--batch", "2", "--steps", "1", "--warmup", "0", "--threads", "1", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())["summary"]
    assert summary["ours_steps_per_s"] > 0 and summary["ours_peak_mib"] > 0
    assert summary["original_steps_per_s"] is None and summary["memory_kind"] == "peak RSS"


def test_bench_refuses_a_reference_inside_the_repository(tmp_path):
    """--reference must be a checkout of the original outside this repository (one `error:` line, exit 2)."""
    for path, message in ((tmp_path, "checkout of the original MU-Diff code"), (ROOT, "inside this repository")):
        result = subprocess.run([sys.executable, "bench/bench_sampling.py", "--reference", str(path)], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and result.stderr.startswith("error: ") and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_bench_against_the_original_when_a_checkout_is_given(tmp_path):
    """With MUDIFF_ORIGINAL pointing at a checkout of the original, the tiny sampling run times it too."""
    original = Path(os.environ.get("MUDIFF_ORIGINAL", ""))
    if not os.environ.get("MUDIFF_ORIGINAL") or not original.is_dir():
        pytest.skip("set MUDIFF_ORIGINAL to a checkout of the original code to run this")
    out = tmp_path / "sampling.json"
    result = subprocess.run([sys.executable, "bench/bench_sampling.py", "--image_size", "64", "--tiny",
                             "--batches", "1", "--repeats", "1", "--warmup", "0", "--threads", "1",
                             "--reference", str(original), "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    row = json.loads(out.read_text())["rows"][0]
    assert row["original_slices_per_s"] > 0 and row["ratio"] > 0
