"""One benchmark measurement in a fresh process: `python bench/bench_worker.py '<spec JSON>'` prints one JSON line.

spec: impl ("ours" or "reference"), task ("sampling" or "training"), model (option dict), device, threads, seed,
warmup, flags (our speed options), reference (the original's checkout), reuse_memory (give the original our CPU
malloc setting too), check_amp (sampling: also compare float32 and bf16 samples), and batches + repeats
(sampling) or batch + steps (training). bench_sampling.py and bench_training.py write the specs; this file is
not meant to be run by hand.

For the original, its checkout goes first on sys.path and two stand-ins are registered before its networks are
imported: `utils.op` (its compiled CUDA extension, JIT-built at import) with our pure-PyTorch `upfirdn2d`, which
is op for op the original's own CPU fallback, and `torchvision` when it is not installed (its test.py and train.py
import it but only save images with it). Its sampler and diffusion helpers are its own test.py and train.py.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import math
import sys
import types
from argparse import Namespace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench_common import ROOT, environment, load_split, original_order, peak_rss_mib, synchronize, timed


# ----------------------------------------------------------------------------------------------- shared loops
def sampling_inputs(batch: int, size: int, device: torch.device, seed: int) -> tuple[torch.Tensor, ...]:
    """Three conditions in [-1, 1] and the initial noise, (batch, 1, size, size) each, seeded."""
    gen = torch.Generator().manual_seed(seed + batch)
    conds = [torch.rand(batch, 1, size, size, generator=gen) * 2 - 1 for _ in range(3)]
    x_init = torch.randn(batch, 1, size, size, generator=gen)
    return tuple(t.to(device) for t in (*conds, x_init))


def measure_sampling(spec: dict, sample: Callable[..., Any]) -> dict:
    """Time sample(cond1, cond2, cond3, x_init) (the whole T-step sampler) for every batch size in the spec."""
    device = torch.device(spec["device"])
    rows = []
    for batch in spec["batches"]:
        inputs = sampling_inputs(batch, spec["model"]["image_size"], device, spec["seed"])
        torch.manual_seed(spec["seed"])
        for _ in range(spec["warmup"]):
            sample(*inputs)
        seconds, cpu_seconds = timed(lambda: sample(*inputs), spec["repeats"], device)
        slices = batch * spec["repeats"]
        rows.append({"batch": batch, "repeats": spec["repeats"], "seconds": seconds, "cpu_seconds": cpu_seconds,
                     "slices_per_s": slices / seconds, "seconds_per_slice": seconds / slices,
                     "cpu_seconds_per_slice": cpu_seconds / slices})
    return {"rows": rows}


def training_batch(batch: int, size: int, device: torch.device, seed: int) -> list[torch.Tensor]:
    """Three conditions and a target in [-1, 1], (batch, 1, size, size) each, seeded."""
    gen = torch.Generator().manual_seed(seed)
    return [(torch.rand(batch, 1, size, size, generator=gen) * 2 - 1).to(device) for _ in range(4)]


def measure_training(spec: dict, step: Callable[[int], Any]) -> dict:
    """Time step(global_step) for spec['steps'] steps after spec['warmup'] untimed ones; peak memory included."""
    device = torch.device(spec["device"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = peak_rss_mib()
    for global_step in range(spec["warmup"]):
        step(global_step)
    first = spec["warmup"]
    seconds, cpu_seconds = timed(lambda: [step(s) for s in range(first, first + spec["steps"])], 1, device)
    out = {"steps": spec["steps"], "seconds": seconds, "cpu_seconds": cpu_seconds,
           "steps_per_s": spec["steps"] / seconds, "cpu_seconds_per_step": cpu_seconds / spec["steps"],
           "first_timed_step": first, "peak_rss_mib": peak_rss_mib(), "rss_before_training_mib": rss_before}
    if device.type == "cuda":
        out["peak_cuda_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return out


def perturb_(model: nn.Module, seed: int) -> nn.Module:
    """Seeded O(1)-contributing weights (1/sqrt(fan-in) scaled), like a trained network's, in place."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            noise = torch.randn(tensor.shape, generator=gen).to(tensor.dtype)
            if tensor.ndim <= 1:
                tensor.add_(0.1 * noise)
            else:
                fan_in = tensor.shape[0] if name.endswith(".W") else tensor.numel() // tensor.shape[0]
                tensor.copy_(noise / fan_in ** 0.5)
    return model


def amp_check(spec: dict, sample: Callable[..., torch.Tensor]) -> dict:
    """PSNR (dB, [0, 1] intensities) between float32 and bf16-autocast samples with the same seeds and inputs."""
    device = torch.device(spec["device"])
    batch = spec["batches"][0]
    inputs = sampling_inputs(batch, spec["model"]["image_size"], device, spec["seed"])
    outputs = []
    for amp in (False, True):
        torch.manual_seed(spec["seed"])
        outputs.append(((sample(*inputs, amp=amp).float() + 1) / 2).clamp(0, 1))
    mse = (outputs[0] - outputs[1]).double().square().mean().item()
    psnr = float("inf") if mse == 0 else 10 * math.log10(1 / mse)
    return {"batch": batch, "psnr_db": psnr, "max_abs_diff": (outputs[0] - outputs[1]).abs().max().item(),
            "note": "worst case: a model with PSNR P against the truth loses <= 0.5 dB when psnr_db >= P + 24.5"}


# ------------------------------------------------------------------------------------------------------- ours
def ours(spec: dict) -> dict:
    """Measure our code with the requested speed options."""
    sys.path.insert(0, str(ROOT))
    from backbones import build_critic, build_generators
    from utils.model.diffusion import Diffusion_Coefficients, Posterior_Coefficients
    from utils.model.speed import SpeedOptions, autocast_context, fast_sample, make_adam, prepare_generators, prepare_module, prepare_process
    from utils.train.steps import Batch, Diffusion, Networks, Optimisers, train_step

    options = SpeedOptions(**spec["flags"])
    device = torch.device(spec["device"])
    args = Namespace(**spec["model"])
    prepare_process(options, device)
    torch.manual_seed(spec["seed"])
    gen1, gen2 = build_generators(args)
    if spec["task"] == "sampling":
        if spec.get("check_amp"):
            # Fresh weights make the generators output ~1e-5 everywhere, which would make any PSNR meaningless.
            gen1, gen2 = perturb_(gen1, spec["seed"] + 1), perturb_(gen2, spec["seed"] + 2)
        gen1, gen2 = prepare_generators((gen1.eval(), gen2.eval()), device, options.channels_last, options.compile)
        pc = Posterior_Coefficients(args, device)

        def sample(c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor, x_init: torch.Tensor,
                   amp: bool = options.amp) -> torch.Tensor:
            return fast_sample(pc, gen1, c1, gen2, c2, c3, args.num_timesteps, x_init, args, amp=amp)

        result = measure_sampling(spec, sample)
        if spec.get("check_amp"):
            result["amp_check"] = amp_check(spec, sample)
        return result

    critic, att_proj = build_critic(args)
    att_proj.requires_grad_(False)
    # The critic is not compiled: its R1 penalty differentiates twice, which compiled graphs do not support.
    nets = Networks(*prepare_generators((gen1, gen2), device, options.channels_last, options.compile),
                    prepare_module(critic, device, options.channels_last), att_proj.to(device))
    betas = (args.beta1, args.beta2)
    opts = Optimisers(make_adam(nets.gen1.parameters(), args.lr_g, betas, device, options.fused_adam),
                      make_adam(nets.gen2.parameters(), args.lr_g, betas, device, options.fused_adam),
                      make_adam(nets.critic.parameters(), args.lr_d, betas, device, options.fused_adam), {})
    diff = Diffusion(Diffusion_Coefficients(args, device), Posterior_Coefficients(args, device), args.num_timesteps)

    def train(global_step: int, data: list[torch.Tensor]) -> list[float]:
        with autocast_context(device, options.amp):
            return train_step(nets, opts, Batch(*data), diff, args, global_step).tolist()

    return run_training_task(spec, train, (nets.gen1, nets.gen2, nets.critic))


def run_training_task(spec: dict, train: Callable[[int, list[torch.Tensor]], list[float]],
                      networks: tuple[nn.Module, ...]) -> dict:
    """'training': time `train` on one fixed batch; 'curve': train on the phantom split in the original's order."""
    device = torch.device(spec["device"])
    if spec["task"] == "training":
        batch = training_batch(spec["batch"], spec["model"]["image_size"], device, spec["seed"])
        return measure_training(spec, lambda global_step: train(global_step, batch))
    data = [t.to(device) for t in load_split(spec["data"], spec["contrasts"])]
    losses = [train(step, [t[indices] for t in data])
              for step, indices in enumerate(original_order(len(data[0]), spec["batch"], spec["steps"]))]
    return {"losses": losses, "weights": [weight_checksum(net) for net in networks]}


def weight_checksum(net: nn.Module) -> float:
    """Sum of squares of every weight (float64): equal runs give equal numbers."""
    return float(sum(p.detach().double().square().sum() for p in net.state_dict().values()))


# -------------------------------------------------------------------------------------------------- reference
class _FusedLeakyReLU(nn.Module):
    """Stand-in for the original's FusedLeakyReLU (never used by its networks): leaky_relu(x + bias) * scale."""

    def __init__(self, channel: int, negative_slope: float = 0.2, scale: float = 2 ** 0.5) -> None:
        """A zero bias per channel."""
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel))
        self.negative_slope = negative_slope
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """leaky_relu(x + bias, slope) * scale."""
        return _fused_leaky_relu(x, self.bias, self.negative_slope, self.scale)


def _fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor, negative_slope: float = 0.2,
                      scale: float = 2 ** 0.5) -> torch.Tensor:
    """leaky_relu(x + bias (broadcast over channel dim 1), slope) * scale."""
    shape = [1, -1] + [1] * (x.ndim - 2)
    return F.leaky_relu(x + bias.view(shape), negative_slope) * scale


def _load_file(name: str, path: Path) -> types.ModuleType:
    """Import the file at `path` as module `name`."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_reference(root: Path) -> dict[str, Any]:
    """Import the original's networks, test.py and train.py with the stand-ins; return them by name."""
    sys.path.insert(0, str(root))
    native = _load_file("mudiff_native_upfirdn2d", ROOT / "backbones" / "upfirdn2d.py")
    op = types.ModuleType("utils.op")
    op.upfirdn2d = native.upfirdn2d
    op.FusedLeakyReLU = _FusedLeakyReLU
    op.fused_leaky_relu = _fused_leaky_relu
    sys.modules["utils.op"] = op
    try:
        importlib.import_module("torchvision")
    except ImportError:
        sys.modules["torchvision"] = types.ModuleType("torchvision")
    generators = importlib.import_module("backbones.ncsnpp_generator_adagn_feat")
    critic = importlib.import_module("backbones.discriminator")
    dense = importlib.import_module("backbones.dense_layer")
    test_mod = _load_file("mudiff_original_test", root / "test.py")
    train_mod = _load_file("mudiff_original_train", root / "train.py")
    return {"NCSNpp": generators.NCSNpp, "NCSNpp_adaptive": generators.NCSNpp_adaptive,
            "Discriminator_large": critic.Discriminator_large, "conv2d": dense.conv2d, "test": test_mod,
            "train": train_mod}


def reference(spec: dict) -> dict:
    """Measure the original code doing the same work (with our malloc setting when spec['reuse_memory'])."""
    if spec.get("reuse_memory"):
        _load_file("mudiff_cpu_memory", ROOT / "utils" / "cpu_memory.py").reuse_freed_cpu_memory()
    orig = load_reference(Path(spec["reference"]))
    device = torch.device(spec["device"])
    args = Namespace(**{**spec["model"], "attn_resolutions": tuple(spec["model"]["attn_resolutions"])})
    torch.manual_seed(spec["seed"])
    gen1, gen2 = orig["NCSNpp"](args).to(device), orig["NCSNpp_adaptive"](args).to(device)
    if spec["task"] == "sampling":
        test_mod = orig["test"]
        pc = test_mod.Posterior_Coefficients(args, device)
        gen1.eval()
        gen2.eval()

        def sample(c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor, x_init: torch.Tensor) -> torch.Tensor:
            return test_mod.sample_from_model(pc, gen1, c1, gen2, c2, c3, args.num_timesteps, x_init, None, args)

        return measure_sampling(spec, sample)

    # The original built att_conv 512 wide; ngf * 8 is the same for the README's ngf 64 and fits the tiny critic.
    att_conv = orig["conv2d"](args.ngf * 8, 1, 1, padding=0).to(device)
    critic = orig["Discriminator_large"](nc=2, ngf=args.ngf, t_emb_dim=args.t_emb_dim,
                                         act=nn.LeakyReLU(0.2)).to(device)
    betas = (args.beta1, args.beta2)
    opt_d = torch.optim.Adam(critic.parameters(), lr=args.lr_d, betas=betas)
    opt_g1 = torch.optim.Adam(gen1.parameters(), lr=args.lr_g, betas=betas)
    opt_g2 = torch.optim.Adam(gen2.parameters(), lr=args.lr_g, betas=betas)
    train_mod = orig["train"]
    coeff = train_mod.Diffusion_Coefficients(args, device)
    pos_coeff = train_mod.Posterior_Coefficients(args, device)
    nets = (gen1, gen2, critic, att_conv)

    def train(global_step: int, data: list[torch.Tensor]) -> list[float]:
        return reference_step(train_mod, nets, (opt_g1, opt_g2, opt_d), tuple(data), coeff, pos_coeff, args,
                              global_step)

    return run_training_task(spec, train, (gen1, gen2, critic))


def reference_fakes(train_mod: types.ModuleType, pos_coeff: Any, gens: tuple, conds: tuple, x_tp1: torch.Tensor,
                    t: torch.Tensor, nz: int) -> tuple[torch.Tensor, ...]:
    """The original's fake pair (with autograd): a fresh z, both generators' x0 and their posterior samples."""
    gen1, gen2 = gens
    z = torch.randn(x_tp1.size(0), nz, device=x_tp1.device)
    x0_1 = gen1(x_tp1.detach(), *conds, t, z)
    x0_2 = gen2(x_tp1.detach(), *conds, t, z, x0_1[:, [0], :])
    xp1 = train_mod.sample_posterior(pos_coeff, x0_1[:, [0], :], x_tp1, t)
    xp2 = train_mod.sample_posterior(pos_coeff, x0_2[:, [0], :], x_tp1, t)
    return x0_1, x0_2, xp1, xp2


def reference_step(train_mod: types.ModuleType, nets: tuple, opts: tuple, data: tuple, coeff: Any, pos_coeff: Any,
                   args: Namespace, global_step: int) -> list[float]:
    """One iteration of the original's train_mudiff (ARCH_SPEC §8.2) with its own diffusion helpers: the critic
    step runs both generators with autograd (their gradients are discarded), then the generator step. Returns the
    loss terms in our log's order (errD_real, errD_fake, r1_penalty or NaN, errG_adv, errG_L1, mask_loss, errG)."""
    gen1, gen2, critic, att_conv = nets
    opt_g1, opt_g2, opt_d = opts
    *conds, real = data
    for p in critic.parameters():
        p.requires_grad = True
    critic.zero_grad()
    t = torch.randint(0, args.num_timesteps, (real.size(0),), device=real.device)
    x_t, x_tp1 = train_mod.q_sample_pairs(coeff, real, t)
    x_t.requires_grad = True
    d_real, _ = critic(x_t, t, x_tp1.detach())
    err_real = F.softplus(-d_real).mean()
    err_real.backward(retain_graph=True)
    penalty = torch.tensor(math.nan)
    if global_step % args.lazy_reg == 0:
        grad = torch.autograd.grad(outputs=d_real.sum(), inputs=x_t, create_graph=True)[0]
        penalty = args.r1_gamma / 2 * (grad.view(grad.size(0), -1).norm(2, dim=1) ** 2).mean()
        penalty.backward()
    _, _, xp1, xp2 = reference_fakes(train_mod, pos_coeff, (gen1, gen2), conds, x_tp1, t, args.nz)
    out1, _ = critic(xp1, t, x_tp1.detach())
    out2, _ = critic(xp2, t, x_tp1.detach())
    err_fake = F.softplus(out1).mean() + F.softplus(out2).mean()
    err_fake.backward()
    opt_d.step()

    for p in critic.parameters():
        p.requires_grad = False
    gen1.zero_grad()
    gen2.zero_grad()
    t = torch.randint(0, args.num_timesteps, (real.size(0),), device=real.device)
    x_t, x_tp1 = train_mod.q_sample_pairs(coeff, real, t)
    x0_1, x0_2, xp1, xp2 = reference_fakes(train_mod, pos_coeff, (gen1, gen2), conds, x_tp1, t, args.nz)
    out1, feat1 = critic(xp1, t, x_tp1.detach())
    out2, feat2 = critic(xp2, t, x_tp1.detach())
    size = tuple(real.shape[-2:])  # the original hard-coded (256, 256)
    map1 = F.interpolate(torch.sigmoid(att_conv(feat1)), size=size, mode="bilinear", align_corners=False)
    map2 = F.interpolate(torch.sigmoid(att_conv(feat2)), size=size, mode="bilinear", align_corners=False)
    bce = nn.BCEWithLogitsLoss(reduction="none")
    mask = (map2 * bce(xp1, torch.sigmoid(xp2))).mean() + (map1 * bce(xp2, torch.sigmoid(xp1))).mean()
    adv = F.softplus(-out1).mean() + F.softplus(-out2).mean()
    l1 = F.l1_loss(x0_1[:, [0], :], real) + F.l1_loss(x0_2[:, [0], :], real)
    err_g = adv + args.lambda_l1_loss * l1 + args.lambda_mask_loss * mask
    err_g.backward()
    opt_g1.step()
    opt_g2.step()
    return [float(v) for v in (err_real, err_fake, penalty, adv, l1, mask, err_g)]


def main(argv: list[str]) -> None:
    """Run the measurement the spec names and print its result as one JSON line."""
    spec = json.loads(argv[0])
    torch.set_num_threads(spec["threads"])
    result = ours(spec) if spec["impl"] == "ours" else reference(spec)
    synchronize(torch.device(spec["device"]))
    result.update(impl=spec["impl"], task=spec["task"], flags=spec.get("flags", {}),
                  environment=environment(torch.device(spec["device"]), spec["threads"]))
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
