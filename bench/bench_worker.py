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
from bench_common import (
    ROOT,
    environment,
    load_split,
    original_order,
    peak_rss_mib,
    perturb_,
    reference_step,
    synchronize,
    timed,
)


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
    from utils.model.speed import (
        SpeedOptions,
        autocast_context,
        fast_sample,
        make_adam,
        prepare_generators,
        prepare_module,
        prepare_process,
    )
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
