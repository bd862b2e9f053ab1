"""Networks: checkpoint keys, equality with the original's outputs and initial weights, and invariants that hold for
any configuration (shapes, finiteness, gradients, determinism, batch consistency), plus independent formulations of
the building blocks (FIR resampling, NIN, attention, AdaGN, minibatch stddev)."""
import argparse
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import model_args, tiny_args
from conftest import perturb_ as perturb_weights

from backbones import AttentionProjection, Discriminator_large, NCSNpp, NCSNpp_adaptive, build_critic, build_generators
from backbones.discriminator import minibatch_stddev
from backbones.layers import NIN, PixelNorm, get_timestep_embedding
from backbones.layerspp import AdaptiveGroupNorm, AttnBlockpp
from backbones.up_or_down_sampling import (
    conv_downsample_2d,
    downsample_2d,
    setup_kernel,
    upfirdn2d,
    upsample_2d,
    upsample_conv_2d,
)
from utils.core.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
FIR = (1, 3, 3, 1)


# ------------------------------------------------------------------------------------------------------- helpers
def perturb_(model: nn.Module, seed: int) -> nn.Module:
    """The shared perturbation with float64 draws, the ones these tests were written with."""
    return perturb_weights(model, seed, noise_dtype=torch.float64)


def gen_inputs(args: argparse.Namespace, batch: int, num_timesteps: int, seed: int = 1) -> dict:
    """x_tp1, three conditions, t (covering 0 and T-1), z."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, args.num_channels, args.image_size, args.image_size)
    t = torch.randint(0, num_timesteps, (batch,), generator=gen)
    t[0] = 0
    t[-1] = num_timesteps - 1
    return dict(x=torch.randn(shape, generator=gen), conds=[torch.rand(shape, generator=gen) * 2 - 1 for _ in range(3)],
                t=t, z=torch.randn(batch, args.nz, generator=gen))


def run_gens(gen1: nn.Module, gen2: nn.Module, inp: dict, pseudo: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """gen1, then gen2 with gen1's output (or `pseudo`) as the pseudo-target."""
    out1 = gen1(inp["x"], *inp["conds"], inp["t"], inp["z"])
    out2 = gen2(inp["x"], *inp["conds"], inp["t"], inp["z"], out1 if pseudo is None else pseudo)
    return out1, out2


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|."""
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


def fingerprint(tensor: torch.Tensor) -> str:
    """sha256[:16] of the tensor's bytes (the harness's format)."""
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- import and keys
def test_import_needs_no_compiler_or_extension():
    """The import works in a fresh interpreter and never touches torch's C++/CUDA extension builder."""
    code = ("import sys; from backbones import NCSNpp, NCSNpp_adaptive, Discriminator_large; "
            "print('torch.utils.cpp_extension' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


@pytest.fixture(scope="module")
def readme_models() -> dict:
    """The README-configuration networks (built, never run: 256x256 forwards are too slow for the suite)."""
    args = model_args()
    gen1, gen2 = build_generators(args)
    critic, att_proj = build_critic(args)
    return dict(gen1=gen1, gen2=gen2, disc=critic, att=att_proj)


@pytest.mark.parametrize("name,key_file", [("gen1", "keys_gen1.json"), ("gen2", "keys_gen2.json"),
                                           ("disc", "keys_disc.json")])
def test_readme_state_dict_keys_and_shapes(readme_models, reference_dir, name, key_file):
    """Ordered keys and shapes equal the original's for the README configuration."""
    expected = json.loads((reference_dir / key_file).read_text())
    actual = [[key, list(value.shape)] for key, value in readme_models[name].state_dict().items()]
    assert actual == expected


def test_readme_parameter_counts(readme_models, reference_dir):
    """Parameter counts equal the original's (all trainable); the projection is 8*64 -> 1."""
    counts = json.loads((reference_dir / "param_counts.json").read_text())
    for name, ref_name in [("gen1", "gen1_NCSNpp"), ("gen2", "gen2_NCSNpp_adaptive"),
                           ("disc", "disc_Discriminator_large"), ("att", "att_conv_train_py_line285")]:
        params = list(readme_models[name].parameters())
        assert sum(p.numel() for p in params) == counts[ref_name]["num_params"]
        assert sum(p.numel() for p in params if p.requires_grad) == counts[ref_name]["num_trainable"]
        assert len(readme_models[name].state_dict()) == counts[ref_name]["num_state_dict_entries"]


def describe(module: nn.Module) -> list:
    """[class name, attributes] of one all_modules entry, in the harness's format."""
    kind = type(module).__name__
    if isinstance(module, nn.Linear):
        return [kind, {"in_features": module.in_features, "out_features": module.out_features}]
    if kind in ("ConvFeatBlock", "ConvBlock", "ConvBlock_GAP"):
        return [kind, {"in_ch": module.conv1.in_channels, "out_ch": module.conv2.out_channels}]
    if kind == "ResnetBlockBigGANpp_Adagn":
        return [kind, {"in_ch": module.in_ch, "out_ch": module.out_ch, "up": module.up, "down": module.down,
                       "has_Conv_2": hasattr(module, "Conv_2")}]
    if kind == "Downsample":
        return [kind, {"out_ch": module.out_ch, "in_ch": module.Conv2d_0.weight.shape[1]}]
    if kind == "AttnBlockpp":
        return [kind, {"ch": module.GroupNorm_0.num_channels}]
    if isinstance(module, nn.GroupNorm):
        return [kind, {"groups": module.num_groups, "ch": module.num_channels}]
    if isinstance(module, nn.Conv2d):
        return [kind, {"in_ch": module.in_channels, "out_ch": module.out_channels, "k": list(module.kernel_size)}]
    raise AssertionError(f"unexpected module {kind}")


def spec_module_table(args: argparse.Namespace, adaptive: bool) -> list:
    """The all_modules table predicted by the spec's general construction rule (§3.3), written independently."""
    nf = args.num_channels_dae

    def res_block(in_ch: int, out_ch: int, up: bool = False, down: bool = False) -> list:
        """One residual-block row; it has a 1x1 shortcut conv when the width or the resolution changes."""
        return ["ResnetBlockBigGANpp_Adagn",
                dict(in_ch=in_ch, out_ch=out_ch, up=up, down=down, has_Conv_2=in_ch != out_ch or up or down)]

    rows = [["Linear", dict(in_features=nf, out_features=4 * nf)],
            ["Linear", dict(in_features=4 * nf, out_features=4 * nf)]]
    stems = ["ConvBlock_GAP", "ConvFeatBlock"] + ["ConvBlock"] * 3 if adaptive else ["ConvFeatBlock"] * 4
    rows += [[kind, dict(in_ch=args.num_channels, out_ch=nf)] for kind in stems]
    widths = [nf * m for m in args.ch_mult]
    sizes = [args.image_size // 2 ** i for i in range(len(widths))]
    skips, ch, pyramid = [4 * nf], 4 * nf, args.num_channels
    for level, width in enumerate(widths):
        for _ in range(args.num_res_blocks):
            rows.append(res_block(ch, width))
            ch = width
            if sizes[level] in args.attn_resolutions:
                rows.append(["AttnBlockpp", dict(ch=ch)])
            skips.append(ch)
        if level < len(widths) - 1:
            rows += [res_block(ch, ch, down=True), ["Downsample", dict(out_ch=ch, in_ch=pyramid)]]
            pyramid = ch
            skips.append(ch)
    rows += [res_block(ch, ch), ["AttnBlockpp", dict(ch=ch)], res_block(ch, ch)]
    for level in reversed(range(len(widths))):
        for _ in range(args.num_res_blocks + 1):
            rows.append(res_block(ch + skips.pop(), widths[level]))
            ch = widths[level]
        if sizes[level] in args.attn_resolutions:
            rows.append(["AttnBlockpp", dict(ch=ch)])
        if level:
            rows.append(res_block(ch, ch, up=True))
    rows += [["GroupNorm", dict(groups=min(ch // 4, 32), ch=ch)],
             ["Conv2d", dict(in_ch=ch, out_ch=args.num_channels, k=[3, 3])]]
    return [[i] + row for i, row in enumerate(rows)]


@pytest.mark.parametrize("name,table", [("gen1", "modules_gen1.json"), ("gen2", "modules_gen2.json")])
def test_readme_module_tables(readme_models, reference_dir, name, table):
    """all_modules equals the original's index table, and the spec's general rule predicts that table."""
    expected = json.loads((reference_dir / table).read_text())
    actual = [[i] + describe(m) for i, m in enumerate(readme_models[name].all_modules)]
    assert actual == expected
    assert spec_module_table(model_args(), adaptive=name == "gen2") == expected


@pytest.mark.parametrize("overrides", [
    dict(image_size=64, ch_mult=[1, 2, 2, 4], num_res_blocks=1, attn_resolutions=[16, 32], num_channels_dae=32),
    dict(image_size=128, ch_mult=[1, 1, 2], num_res_blocks=3, attn_resolutions=[32], num_channels_dae=16,
         num_channels=2),
])
def test_module_tables_follow_the_rule_for_other_configs(overrides):
    """Other configurations are built by the same rule (structure, channel widths, attention placement)."""
    args = model_args(**overrides)
    gen1, gen2 = build_generators(args)
    for gen, adaptive in ((gen1, False), (gen2, True)):
        assert [[i] + describe(m) for i, m in enumerate(gen.all_modules)] == spec_module_table(args, adaptive)


# ------------------------------------------------------------------------------------- equality with the original
def fixture_models(small_ref: dict) -> tuple[NCSNpp, NCSNpp_adaptive, Discriminator_large]:
    """The fixture's networks with its perturbed weights loaded strictly."""
    args = argparse.Namespace(**small_ref["config"])
    gen1, gen2 = NCSNpp(args), NCSNpp_adaptive(args)
    critic = Discriminator_large(nc=2, ngf=args.ngf, t_emb_dim=args.t_emb_dim, act=nn.LeakyReLU(0.2))
    for model, key in ((gen1, "gen1_state"), (gen2, "gen2_state"), (critic, "disc_state")):
        assert list(model.state_dict()) == list(small_ref[key])
        model.load_state_dict(small_ref[key], strict=True)
    return gen1, gen2, critic


def test_outputs_equal_the_original(small_ref):
    """Both generators, the logits and the features match the original's (rel. error <= 1e-5)."""
    gen1, gen2, critic = fixture_models(small_ref)
    inp, ref = small_ref["inputs"], small_ref["outputs"]
    conds = (inp["cond1"], inp["cond2"], inp["cond3"])
    with torch.no_grad():
        out1 = gen1(inp["x_tp1"], *conds, inp["t"], inp["z"])
        out2 = gen2(inp["x_tp1"], *conds, inp["t"], inp["z"], inp["gen2_pseudo_target"])
        logits, feat = critic(inp["disc_x_t"], inp["disc_t"], inp["disc_x_tp1"])
    for name, actual in (("gen1", out1), ("gen2", out2), ("disc_logits", logits), ("disc_feat", feat)):
        assert actual.shape == ref[name].shape and actual.dtype == ref[name].dtype
        assert rel_err(actual, ref[name]) <= 1e-5, name


def test_initial_weights_equal_the_original(small_ref):
    """Seed 0 and the original's order (gen1, gen2, att_conv, critic) give the original's initial tensors."""
    args = argparse.Namespace(**small_ref["config"])
    torch.manual_seed(0)
    gen1, gen2 = build_generators(args)
    # The original's att_conv was 512 wide whatever ngf was: AttentionProjection(64) reproduces it.
    att = AttentionProjection(64)
    critic = Discriminator_large(nc=2, ngf=args.ngf, t_emb_dim=args.t_emb_dim, act=nn.LeakyReLU(0.2))
    for name, model in (("gen1", gen1), ("gen2", gen2), ("att_conv", att), ("disc", critic)):
        expected = small_ref["init_fingerprint"][name]
        state = model.state_dict()
        assert list(state) == list(expected), name
        for key, (sha, mean, _std) in expected.items():
            assert fingerprint(state[key]) == sha, f"{name}.{key}"
            assert state[key].double().mean().item() == pytest.approx(mean, abs=1e-12)
    for key, value in small_ref["att_conv_state"].items():
        assert torch.equal(att.state_dict()[key], value)

    inp, ref = small_ref["inputs"], small_ref["outputs_at_init"]
    conds = (inp["cond1"], inp["cond2"], inp["cond3"])
    with torch.no_grad():
        out1 = gen1(inp["x_tp1"], *conds, inp["t"], inp["z"])
        out2 = gen2(inp["x_tp1"], *conds, inp["t"], inp["z"], out1[:, [0]])
        logits, feat = critic(inp["disc_x_t"], inp["disc_t"], inp["x_tp1"])
    for name, actual in (("gen1", out1), ("gen2", out2), ("disc_logits", logits), ("disc_feat", feat)):
        assert rel_err(actual, ref[name]) <= 1e-5, name


def test_build_critic_draws_the_projection_first():
    """build_critic = AttentionProjection(ngf) then the critic, so the RNG stream matches the original's order."""
    args = model_args(ngf=2, t_emb_dim=8)
    torch.manual_seed(3)
    critic, att = build_critic(args)
    torch.manual_seed(3)
    att_ref = AttentionProjection(2)
    critic_ref = Discriminator_large(nc=2, ngf=2, t_emb_dim=8)
    for model, ref in ((critic, critic_ref), (att, att_ref)):
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))


# ---------------------------------------------------------------------------------- any configuration: generators
GEN_CONFIGS = {
    "32px_two_levels_T2_B3": (dict(), 3, 2),
    "64px_three_levels_no_attn_B1": (dict(image_size=64, ch_mult=[1, 1, 2], attn_resolutions=[], num_channels_dae=8,
                                          nz=100, z_emb_dim=32, n_mlp=3), 1, 4),
    "128px_five_levels_B2": (dict(image_size=128, ch_mult=[1, 1, 2, 2, 2], attn_resolutions=[16],
                                  num_channels_dae=8, n_mlp=2), 2, 4),
    "16px_one_level_attn_full_res_B7": (dict(image_size=16, ch_mult=[2], attn_resolutions=[16],
                                             num_channels_dae=8), 7, 4),
    "16px_nf32_two_blocks_B5": (dict(image_size=16, attn_resolutions=[8], num_channels_dae=32, num_res_blocks=2,
                                     z_emb_dim=64, nz=8, n_mlp=0), 5, 2),
    "two_channels_B4": (dict(num_channels=2), 4, 4),
    "progressive_residual": (dict(progressive="residual"), 2, 4),
    "progressive_output_skip": (dict(progressive="output_skip"), 2, 4),
    "input_skip_cat": (dict(progressive_input="input_skip", progressive_combine="cat"), 2, 4),
    "input_none_fir_off": (dict(progressive_input="none", fir=False, progressive="residual"), 2, 4),
    "fourier_t0": (dict(embedding_type="fourier"), 3, 4),
    "plain_sums_uncentered_no_tanh": (dict(skip_rescale=False, centered=False, not_use_tanh=True), 2, 4),
}


@pytest.fixture(scope="module", params=list(GEN_CONFIGS), ids=list(GEN_CONFIGS))
def gen_case(request) -> dict:
    """Perturbed generators of one configuration, their inputs and their outputs."""
    overrides, batch, num_timesteps = GEN_CONFIGS[request.param]
    args = tiny_args(**overrides)
    torch.manual_seed(0)
    gen1, gen2 = build_generators(args)
    perturb_(gen1, 1)
    perturb_(gen2, 2)
    inp = gen_inputs(args, batch, num_timesteps)
    with torch.no_grad():
        out1, out2 = run_gens(gen1, gen2, inp)
    return dict(args=args, gen1=gen1, gen2=gen2, inp=inp, out1=out1, out2=out2, batch=batch)


def test_generator_shapes_and_finiteness(gen_case):
    """(B, num_channels, S, S), finite, in (-1, 1) when tanh is on, and not constant."""
    args, batch = gen_case["args"], gen_case["batch"]
    for out in (gen_case["out1"], gen_case["out2"]):
        assert out.shape == (batch, args.num_channels, args.image_size, args.image_size)
        assert torch.isfinite(out).all()
        assert out.std() > 1e-3
        if not args.not_use_tanh:
            assert out.abs().max() < 1


def test_generators_are_deterministic(gen_case):
    """A second forward pass gives bit-identical outputs."""
    with torch.no_grad():
        out1, out2 = run_gens(gen_case["gen1"], gen_case["gen2"], gen_case["inp"])
    assert torch.equal(out1, gen_case["out1"]) and torch.equal(out2, gen_case["out2"])


def test_inference_in_place_ops_change_no_bit(gen_case):
    """Without autograd some blocks overwrite their own temporaries: same bits as with autograd, inputs untouched."""
    inp = gen_case["inp"]
    before = [inp["x"].clone(), *(c.clone() for c in inp["conds"])]
    with torch.enable_grad():
        out1, out2 = run_gens(gen_case["gen1"], gen_case["gen2"], inp)
    assert out1.requires_grad and out2.requires_grad
    assert torch.equal(out1.detach(), gen_case["out1"]) and torch.equal(out2.detach(), gen_case["out2"])
    assert all(torch.equal(a, b) for a, b in zip(before, [inp["x"], *inp["conds"]]))


def test_generators_are_batch_consistent(gen_case):
    """Sample i of a batch equals a batch-of-1 run on sample i (no cross-sample coupling)."""
    inp, batch = gen_case["inp"], gen_case["batch"]
    for i in {batch // 2, batch - 1}:
        one = dict(x=inp["x"][i:i + 1], conds=[c[i:i + 1] for c in inp["conds"]], t=inp["t"][i:i + 1],
                   z=inp["z"][i:i + 1])
        with torch.no_grad():
            out1, out2 = run_gens(gen_case["gen1"], gen_case["gen2"], one, pseudo=gen_case["out1"][i:i + 1])
        torch.testing.assert_close(out1, gen_case["out1"][i:i + 1], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out2, gen_case["out2"][i:i + 1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["32px_two_levels_T2_B3", "fourier_t0", "input_none_fir_off"])
def test_every_input_matters(name):
    """Changing t, z, a condition or the pseudo-target changes the outputs (each path is wired in)."""
    overrides, batch, num_timesteps = GEN_CONFIGS[name]
    args = tiny_args(**overrides)
    gen1, gen2 = build_generators(args)
    perturb_(gen1, 1)
    perturb_(gen2, 2)
    inp = gen_inputs(args, batch, num_timesteps)
    with torch.no_grad():
        base1, base2 = run_gens(gen1, gen2, inp)
    variants = {"t": dict(inp, t=(inp["t"] + 1) % 4), "z": dict(inp, z=torch.flip(inp["z"], [1])),
                "cond3": dict(inp, conds=inp["conds"][:2] + [-inp["conds"][2]])}
    with torch.no_grad():
        for what, changed in variants.items():
            out1, out2 = run_gens(gen1, gen2, changed, pseudo=base1)
            assert not torch.allclose(out1, base1, atol=1e-4), what
            assert not torch.allclose(out2, base2, atol=1e-4), what
        _, out2 = run_gens(gen1, gen2, inp, pseudo=-base1)
        assert not torch.allclose(out2, base2, atol=1e-4)


@pytest.mark.parametrize("name", ["32px_two_levels_T2_B3", "progressive_residual", "input_skip_cat",
                                  "progressive_output_skip"])
def test_gradients_reach_every_parameter(name):
    """A loss on gen2's output (fed gen1's, not detached, as in training) reaches every trainable parameter."""
    overrides, batch, num_timesteps = GEN_CONFIGS[name]
    args = tiny_args(**overrides)
    gen1, gen2 = build_generators(args)
    perturb_(gen1, 1)
    perturb_(gen2, 2)
    out1, out2 = run_gens(gen1, gen2, gen_inputs(args, batch, num_timesteps))
    (out1.square().mean() + out2.square().mean()).backward()
    for gen in (gen1, gen2):
        for key, param in gen.named_parameters():
            assert param.grad is not None, key
            assert torch.isfinite(param.grad).all() and param.grad.abs().max() > 0, key


def test_fourier_embedding_is_finite_at_t0():
    """The original's log(t) gave NaN at t = 0; ours is finite and distinguishes t = 0 from t = 1."""
    args = tiny_args(embedding_type="fourier")
    gen1, _ = build_generators(args)
    perturb_(gen1, 1)
    inp = gen_inputs(args, 2, 4)
    with torch.no_grad():
        out0 = gen1(inp["x"], *inp["conds"], torch.tensor([0, 0]), inp["z"])
        out1 = gen1(inp["x"], *inp["conds"], torch.tensor([1, 1]), inp["z"])
    assert torch.isfinite(out0).all()
    assert not torch.allclose(out0, out1, atol=1e-4)


def test_gen2_with_32_base_channels():
    """Generator 2 builds and runs with num_channels_dae 32 (the original's GAP Linear was fixed at 64 inputs)."""
    args = tiny_args(num_channels_dae=32)
    gen1, gen2 = build_generators(args)
    assert gen2.state_dict()["all_modules.2.fc.weight"].shape == (256, 32)
    inp = gen_inputs(args, 2, 4)
    with torch.no_grad():
        out1, out2 = run_gens(gen1, gen2, inp)
    assert out2.shape == (2, 1, 32, 32) and torch.isfinite(out2).all()


def test_pseudo_target_style_width_is_fixed_at_256():
    """The pseudo-target code stays 256 wide whatever z_emb_dim is (a shape in the published checkpoints)."""
    gen2 = NCSNpp_adaptive(tiny_args(z_emb_dim=48))
    state = gen2.state_dict()
    assert state["all_modules.2.fc.weight"].shape == (256, 16)
    assert state["all_modules.4.group_norm.style.weight"].shape == (32, 256)
    assert state["all_modules.7.GroupNorm_0.style.weight"].shape == (128, 48)


def test_unsupported_options_are_refused():
    """Only the BigGAN blocks exist (the original's other types crashed while building); typos are named."""
    with pytest.raises(UserError, match="resblock_type"):
        NCSNpp(tiny_args(resblock_type="ddpm"))
    with pytest.raises(UserError, match="progressive"):
        NCSNpp_adaptive(tiny_args(progressive="sideways"))


def test_critic_refuses_images_below_64():
    """Six halvings need at least 64x64; smaller inputs get a one-line error instead of a shape crash."""
    critic = Discriminator_large(nc=2, ngf=2, t_emb_dim=8)
    with pytest.raises(UserError, match="64x64"):
        critic(torch.zeros(1, 1, 32, 32), torch.zeros(1, dtype=torch.long), torch.zeros(1, 1, 32, 32))


def test_float64_forward():
    """The whole model runs in float64 (the original's float32 FIR kernels made this fail) and agrees with float32."""
    args = tiny_args(image_size=64, ch_mult=[1, 1, 1], ngf=2, t_emb_dim=8)
    gen1, gen2 = build_generators(args)
    critic, att = build_critic(args)
    for model, seed in ((gen1, 1), (gen2, 2), (critic, 3)):
        perturb_(model, seed)
    inp = gen_inputs(args, 2, 4)
    inp64 = dict(x=inp["x"].double(), conds=[c.double() for c in inp["conds"]], t=inp["t"], z=inp["z"].double())
    with torch.no_grad():
        out32 = run_gens(gen1, gen2, inp) + critic(inp["x"], inp["t"], inp["x"])
        for model in (gen1, gen2, critic, att):
            model.double()
        out64 = run_gens(gen1, gen2, inp64) + critic(inp64["x"], inp64["t"], inp64["x"])
        att_map = att.attention_map(out64[3], (64, 64))
    for low, high in zip(out32, out64):
        assert high.dtype == torch.float64
        assert rel_err(low, high) < 1e-4
    assert att_map.dtype == torch.float64


# -------------------------------------------------------------------------------------- any configuration: critic
@pytest.mark.parametrize("image_size,ngf,t_emb_dim,batch", [(128, 2, 16, 1), (64, 4, 32, 5), (64, 2, 8, 7),
                                                            (64, 3, 12, 8)])
def test_critic_shapes_gradients_determinism(image_size, ngf, t_emb_dim, batch):
    """logits (B,), features (B, 8 ngf, S/8, S/8), finite, deterministic, gradients reach every parameter."""
    critic = perturb_(Discriminator_large(nc=2, ngf=ngf, t_emb_dim=t_emb_dim, act=nn.LeakyReLU(0.2)), 4)
    gen = torch.Generator().manual_seed(0)
    x_t, x_tp1 = (torch.randn(batch, 1, image_size, image_size, generator=gen) for _ in range(2))
    t = torch.arange(batch) % 4
    logits, feat = critic(x_t, t, x_tp1)
    assert logits.shape == (batch,)
    assert feat.shape == (batch, 8 * ngf, image_size // 8, image_size // 8)
    assert torch.isfinite(logits).all() and torch.isfinite(feat).all()
    logits_again, feat_again = critic(x_t, t, x_tp1)
    assert torch.equal(logits, logits_again) and torch.equal(feat, feat_again)
    (logits.sum() + feat.mean()).backward()
    for key, param in critic.named_parameters():
        assert param.grad is not None and param.grad.abs().max() > 0, key


def test_critic_batch_of_five_runs_sample_by_sample():
    """B = 5 (a crash in the original): group size 1, so each sample's logits equal its batch-of-1 logits."""
    critic = perturb_(Discriminator_large(nc=2, ngf=2, t_emb_dim=8), 4)
    gen = torch.Generator().manual_seed(1)
    x_t, x_tp1 = (torch.randn(5, 1, 64, 64, generator=gen) for _ in range(2))
    t = torch.tensor([0, 1, 2, 3, 0])
    with torch.no_grad():
        logits, feat = critic(x_t, t, x_tp1)
        for i in range(5):
            one_logits, one_feat = critic(x_t[i:i + 1], t[i:i + 1], x_tp1[i:i + 1])
            torch.testing.assert_close(one_logits, logits[i:i + 1], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(one_feat, feat[i:i + 1], rtol=1e-5, atol=1e-6)


def stddev_reference(out: torch.Tensor, group: int) -> torch.Tensor:
    """Minibatch stddev written out sample by sample: sample b is grouped with every b' = b mod (B / group)."""
    batch, _, height, width = out.shape
    columns = batch // group
    maps = []
    for b in range(batch):
        members = out[b % columns::columns].double()
        std = torch.sqrt(members.var(0, unbiased=False) + 1e-8).mean()
        maps.append(torch.full((1, 1, height, width), std.item(), dtype=torch.float64))
    return torch.cat([out.double(), torch.cat(maps)], 1)


@pytest.mark.parametrize("batch,group", [(1, 1), (2, 2), (3, 3), (4, 4), (8, 4), (12, 4), (5, 1), (6, 3), (7, 1)])
def test_minibatch_stddev_groups(batch, group):
    """Equals the original's semantics (group = min(B, 4)) where it ran, and the largest divisor <= 4 otherwise."""
    out = torch.randn(batch, 6, 4, 4, generator=torch.Generator().manual_seed(batch))
    torch.testing.assert_close(minibatch_stddev(out).double(), stddev_reference(out, group), rtol=1e-5, atol=1e-6)


def test_attention_projection(small_ref):
    """Keys weight/bias, fan-out init, the fixture's att_conv loads, and the map is sigmoid + bilinear resize."""
    att = AttentionProjection(64)
    assert [(k, tuple(v.shape)) for k, v in att.state_dict().items()] == [("weight", (1, 512, 1, 1)),
                                                                          ("bias", (1,))]
    assert att.weight.abs().max() <= math.sqrt(3) and torch.all(att.bias == 0)
    assert AttentionProjection(4).weight.shape == (1, 32, 1, 1)
    att.load_state_dict(small_ref["att_conv_state"], strict=True)
    feats = torch.randn(2, 512, 8, 8, generator=torch.Generator().manual_seed(0))
    att_map = att.attention_map(feats, (64, 48))
    manual = torch.sigmoid(F.conv2d(feats, small_ref["att_conv_state"]["weight"], small_ref["att_conv_state"]["bias"]))
    assert att_map.shape == (2, 1, 64, 48)
    torch.testing.assert_close(att_map, F.interpolate(manual, size=(64, 48), mode="bilinear", align_corners=False))
    assert 0 <= att_map.min() and att_map.max() <= 1 and att_map.std() > 0.1


# --------------------------------------------------------------------------------- building blocks, independently
def upfirdn_loops(x: np.ndarray, k: np.ndarray, up: int, down: int, pad: tuple[int, int]) -> np.ndarray:
    """upfirdn2d by definition on one plane: zero insertion, pad/crop, true convolution, decimation."""
    height, width = x.shape
    upsampled = np.zeros((height * up, width * up))
    upsampled[::up, ::up] = x
    p0, p1 = pad
    padded = np.pad(upsampled, ((max(p0, 0), max(p1, 0)), (max(p0, 0), max(p1, 0))))
    padded = padded[max(-p0, 0):padded.shape[0] - max(-p1, 0), max(-p0, 0):padded.shape[1] - max(-p1, 0)]
    kh, kw = k.shape
    out_h, out_w = padded.shape[0] - kh + 1, padded.shape[1] - kw + 1
    conv = np.zeros((out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            conv[i, j] = np.sum(padded[i:i + kh, j:j + kw] * k[::-1, ::-1])
    return conv[::down, ::down]


@pytest.mark.parametrize("up,down,pad", [(1, 1, (0, 0)), (2, 1, (2, 1)), (1, 2, (1, 1)), (3, 2, (1, -1)),
                                         (2, 2, (-1, 2)), (1, 1, (-2, -1))])
def test_upfirdn2d_matches_its_definition(up, down, pad):
    """Against a loop implementation, with a non-symmetric kernel (so the flip is checked) and negative pads."""
    gen = torch.Generator().manual_seed(up * 10 + down)
    x = torch.randn(2, 3, 7, 7, generator=gen, dtype=torch.float64)
    k = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    k = torch.nn.functional.pad(k, (0, 0, 0, 1))  # square 4x4, last row zero, still non-symmetric
    out = upfirdn2d(x, k, up=up, down=down, pad=pad)
    for n in range(2):
        for c in range(3):
            expected = upfirdn_loops(x[n, c].numpy(), k.numpy(), up, down, pad)
            np.testing.assert_allclose(out[n, c].numpy(), expected, rtol=1e-12, atol=1e-12)


def depthwise(x: torch.Tensor, kernel: torch.Tensor, **kwargs) -> torch.Tensor:
    """The same 2-D filter applied to every channel (a grouped conv2d)."""
    channels = x.shape[1]
    return F.conv2d(x, kernel[None, None].expand(channels, 1, *kernel.shape), groups=channels, **kwargs)


def test_fir_resampling_matches_depthwise_convolutions():
    """downsample/upsample/conv_downsample/upsample_conv against plain grouped (transposed) convolutions."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=gen)
    w = torch.randn(5, 3, 3, 3, generator=gen)
    k = setup_kernel(FIR)
    assert torch.equal(k, torch.outer(torch.tensor([1., 3, 3, 1]), torch.tensor([1., 3, 3, 1])) / 64)
    torch.testing.assert_close(downsample_2d(x, FIR), depthwise(x, k, padding=1, stride=2), rtol=0, atol=1e-6)
    transposed = F.conv_transpose2d(x, (4 * k)[None, None].expand(3, 1, 4, 4), stride=2, padding=1, groups=3)
    torch.testing.assert_close(upsample_2d(x, FIR), transposed, rtol=0, atol=2e-6)
    blurred = depthwise(F.pad(x, (2, 2, 2, 2)), k)
    torch.testing.assert_close(conv_downsample_2d(x, w, FIR), F.conv2d(blurred, w, stride=2), rtol=0, atol=1e-5)
    zero_inserted = torch.zeros(2, 3, 16, 16)
    zero_inserted[..., ::2, ::2] = x
    up_blurred = depthwise(F.pad(zero_inserted, (3, 2, 3, 2)), 4 * k)
    torch.testing.assert_close(upsample_conv_2d(x, w, FIR), F.conv2d(up_blurred, w), rtol=0, atol=1e-5)


def test_fir_kernels_follow_the_input_dtype():
    """float64 in, float64 out, equal to the float32 result (the original forced float32 kernels)."""
    x = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for op in (lambda v: downsample_2d(v, FIR), lambda v: upsample_2d(v, FIR)):
        assert op(x).dtype == torch.float64
        torch.testing.assert_close(op(x).float(), op(x.float()), rtol=1e-5, atol=1e-6)


def test_nin_is_a_1x1_convolution():
    """NIN(x) = conv2d(x, W^T as 1x1 kernels) + b."""
    nin = perturb_(NIN(6, 5), 0)
    x = torch.randn(2, 6, 4, 3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(nin(x), F.conv2d(x, nin.W.t()[:, :, None, None], nin.b), rtol=1e-5, atol=1e-6)


def test_attention_block_matches_plain_softmax_attention():
    """AttnBlockpp = (x + out(softmax(q^T k / sqrt C) v)) / sqrt 2, with q, k, v 1x1 projections of GroupNorm(x)."""
    block = perturb_(AttnBlockpp(8, skip_rescale=True), 0)
    x = torch.randn(2, 8, 4, 5, generator=torch.Generator().manual_seed(1))
    h = F.group_norm(x, 2, block.GroupNorm_0.weight, block.GroupNorm_0.bias, eps=1e-6).flatten(2)  # (B, C, N)
    q, k, v = (torch.einsum("ci,bcn->bin", nin.W, h) + nin.b[None, :, None]
               for nin in (block.NIN_0, block.NIN_1, block.NIN_2))
    weights = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(8), dim=-1)  # (B, N_query, N_key)
    attended = v @ weights.transpose(1, 2)  # (B, C, N_query)
    out = torch.einsum("ci,bcn->bin", block.NIN_3.W, attended) + block.NIN_3.b[None, :, None]
    torch.testing.assert_close(block(x), (x + out.view_as(x)) / math.sqrt(2), rtol=1e-5, atol=1e-5)


def test_adaptive_group_norm():
    """AdaGN = gamma * GroupNorm(x) + beta with [gamma, beta] = style(s); it starts as gamma = 1, beta = 0."""
    norm = AdaptiveGroupNorm(2, 4, 3)
    assert torch.equal(norm.style.bias, torch.tensor([1., 1, 1, 1, 0, 0, 0, 0]))
    perturb_(norm, 0)
    x, style = torch.randn(2, 4, 3, 3), torch.randn(2, 3)
    scale_shift = style @ norm.style.weight.t() + norm.style.bias
    expected = scale_shift[:, :4, None, None] * F.group_norm(x, 2, eps=1e-6) + scale_shift[:, 4:, None, None]
    torch.testing.assert_close(norm(x, style), expected, rtol=1e-5, atol=1e-6)


def test_timestep_embedding_and_pixel_norm():
    """Sinusoid [sin, cos](t * 10000^(-i/(half-1))), zero-padded for odd sizes; PixelNorm ignores z's scale."""
    t = torch.tensor([0, 1, 3])
    emb = get_timestep_embedding(t, 9)
    freqs = torch.tensor([10000 ** (-i / 3) for i in range(4)], dtype=torch.float64)
    angles = t[:, None].double() * freqs
    torch.testing.assert_close(emb.double(), torch.cat([angles.sin(), angles.cos(), torch.zeros(3, 1)], 1),
                               rtol=1e-5, atol=1e-6)
    z = torch.randn(4, 10)
    torch.testing.assert_close(PixelNorm()(3 * z), PixelNorm()(z))
    assert torch.allclose(PixelNorm()(z).square().mean(1), torch.ones(4), atol=1e-5)
