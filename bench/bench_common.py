"""Helpers shared by the benchmark scripts, their measurement workers and the tests.

This module imports neither our `utils`/`backbones` nor the original's (both packages have those names), so a
worker can load it whichever code it is about to time. Each measurement runs in a fresh worker process
(`python bench/bench_worker.py SPEC.json`): ours and the original's then start from the same state, their peak
memory is their own, and the two codebases never meet in one interpreter.
"""
from __future__ import annotations

import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
import types
from argparse import Namespace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().with_name("bench_worker.py")
RESULTS_DIR = ROOT / "bench" / "results"

# Loss and optimiser options a training measurement needs beside the network and schedule ones.
TRAINING_KEYS = ("lr_g", "lr_d", "beta1", "beta2", "r1_gamma", "lazy_reg", "lambda_l1_loss", "lambda_mask_loss",
                 "lambda_adv", "lr_warmup_steps", "lesion_l1_weight")
# A small configuration for smoke runs (the reference fixtures' one: 64x64, two levels; nf stays 64 because the
# original's generator 2 only builds with 64 base channels, hence not configs/tiny.json's 16).
TINY_OVERRIDES = dict(image_size=64, ch_mult=[1, 1], num_res_blocks=1, attn_resolutions=[32], z_emb_dim=32,
                      t_emb_dim=32, ngf=4)


def load_split(folder: str | Path, contrasts: Sequence[str]) -> list[torch.Tensor]:
    """<folder>/<CONTRAST>.npy as the original's loader gives them: H and W swapped, (N, 1, S, S), [-1, 1].

    Square slices of the model's size only (no padding), which is what the curve comparison feeds both codes.
    """
    import numpy as np

    stacks = [np.load(Path(folder) / f"{name}.npy").astype(np.float32) for name in contrasts]
    return [torch.from_numpy((s.transpose(0, 2, 1)[:, None] - 0.5) / 0.5).contiguous() for s in stacks]


def original_order(count: int, batch: int, steps: int, seed: int = 0) -> list[list[int]]:
    """The slice indices of `steps` batches as the original drew them: its DistributedSampler (shuffle, seed 0, one
    process) never had set_epoch called, so every epoch repeats one permutation; incomplete batches are dropped."""
    permutation = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    per_epoch = count // batch
    return [permutation[(step % per_epoch) * batch:(step % per_epoch + 1) * batch] for step in range(steps)]


def perturb_(model: torch.nn.Module, seed: int, noise_dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Replace the (mostly zero-scaled) initial weights by O(1)-contributing random ones scaled by 1/sqrt(fan-in).

    In place, seeded: a trained network's signal for benchmarks and tests. `noise_dtype` is the dtype the noise is
    drawn in (then cast), so a test can keep the exact draws it was written with.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            noise = torch.randn(tensor.shape, generator=gen, dtype=noise_dtype).to(tensor.dtype)
            if tensor.ndim <= 1:
                tensor.add_(0.1 * noise)
            else:
                fan_in = tensor.shape[0] if name.endswith(".W") else tensor.numel() // tensor.shape[0]
                tensor.copy_(noise / math.sqrt(fan_in))
    return model


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
    """One iteration of the original's train_mudiff (ARCH_SPEC §8.2) with the diffusion helpers of `train_mod` (the
    original's train.py in the benchmark, utils.model.diffusion in the tests): the critic step runs both generators
    with autograd (their gradients are discarded), then the generator step. Returns the loss terms in our log's order
    (errD_real, errD_fake, r1_penalty or NaN, errG_adv, errG_L1, mask_loss, errG)."""
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
    bce = torch.nn.BCEWithLogitsLoss(reduction="none")
    mask = (map2 * bce(xp1, torch.sigmoid(xp2))).mean() + (map1 * bce(xp2, torch.sigmoid(xp1))).mean()
    adv = F.softplus(-out1).mean() + F.softplus(-out2).mean()
    l1 = F.l1_loss(x0_1[:, [0], :], real) + F.l1_loss(x0_2[:, [0], :], real)
    err_g = adv + args.lambda_l1_loss * l1 + args.lambda_mask_loss * mask
    err_g.backward()
    opt_g1.step()
    opt_g2.step()
    return [float(v.detach()) for v in (err_real, err_fake, penalty, adv, l1, mask, err_g)]


def model_config(image_size: int, tiny: bool) -> dict:
    """train.py's defaults, which are the README configuration (ARCH_SPEC §1), or the tiny one, at `image_size`.

    Only the scripts call this (it imports our options); a worker gets the result in its spec.
    """
    from utils.core.options import DIFFUSION_KEYS, MODEL_KEYS, train_parser

    defaults = vars(train_parser().parse_args([]))
    config = {key: defaults[key] for key in (*MODEL_KEYS, *DIFFUSION_KEYS, *TRAINING_KEYS)}
    return {**config, **(TINY_OVERRIDES if tiny else {}), "image_size": image_size}


def device_name(value: str) -> str:
    """--device as the workers take it: 'auto' resolved to the GPU or the CPU here (the scripts import our utils)."""
    from utils.core.runtime import resolve_device

    return str(resolve_device(value))


def add_common_args(parser: Any, default_batches: list[int] | None = None) -> None:
    """Options every benchmark script takes."""
    parser.add_argument("--device", type=device_name, default="auto",
                        help="auto (a GPU when there is one, else the CPU), cpu, cuda or cuda:N")
    parser.add_argument("--image_size", type=int, default=256, help="slice size (README: 256)")
    parser.add_argument("--tiny", action="store_true", help="small networks (a smoke run, not a figure)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="CPU intra-op threads for both codes (default: torch's default here)")
    parser.add_argument("--amp", action="store_true", help="ours with bf16 autocast")
    parser.add_argument("--channels_last", action="store_true", help="ours with channels_last")
    parser.add_argument("--compile", action="store_true", help="ours with torch.compile")
    parser.add_argument("--fast_paths", action="store_true", help="ours with the fast inner loops")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (compilation, allocator)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and inputs")
    parser.add_argument("--reference", default=None, metavar="PATH",
                        help="checkout of the original code (outside this repository): also time it, same work")
    parser.add_argument("--reference_reuse_memory", action="store_true",
                        help="give the original our CPU malloc setting too (utils/model/cpu_memory.py), for comparison")
    # A file, where the other scripts' --out is a folder: hence its own name (--out still parses).
    parser.add_argument("--out_json", "--out", dest="out", default=None,
                        help="JSON output (default: bench/results/<script>_<device>.json)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds each worker may run")


def speed_flags(args: Any) -> dict:
    """Our speed options from the parsed command line."""
    return {name: bool(getattr(args, name)) for name in ("amp", "channels_last", "compile", "fast_paths",
                                                         "fused_adam") if hasattr(args, name)}


def check_reference(path: str | None) -> Path | None:
    """The original's checkout, or None; a UserError when it is not one or lies inside this repository."""
    from utils.core.errors import UserError

    if path is None:
        return None
    ref = Path(path).resolve()
    if ref == ROOT or ROOT in ref.parents:
        raise UserError(f"--reference {path} lies inside this repository; check the original out elsewhere "
                        "(e.g. /tmp/mudiff_orig)")
    if not (ref / "backbones" / "ncsnpp_generator_adagn_feat.py").is_file() or not (ref / "train.py").is_file():
        raise UserError(f"--reference {path}: no backbones/ncsnpp_generator_adagn_feat.py and train.py there; "
                        "point it at a checkout of the original MU-Diff code")
    return ref


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], repeats: int, device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) for `repeats` calls of fn (GPU work included in the wall time).

    The CPU time (user + system, all threads) is what a CPU run costs even when other processes share the cores;
    wall time alone is inflated by them.
    """
    synchronize(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - start_cpu


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def environment(device: torch.device, threads: int) -> dict:
    """What the figures were measured on."""
    info = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "threads": threads, "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def machine_record(threads: int, device: str) -> dict:
    """The machine a phantom benchmark ran on, CPU model included: trained numbers differ between CPU models."""
    return {"platform": platform.platform(), "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "threads": threads,
            "device": device, "torch": torch.__version__}


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (or the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def run_worker(spec: dict, timeout: int) -> dict:
    """Run one measurement in a fresh process (see bench_worker.py) and return its JSON result."""
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
    proc = subprocess.run([sys.executable, str(WORKER), json.dumps(spec)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=str(ROOT))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        from utils.core.errors import UserError

        print("\n".join(proc.stderr.strip().splitlines()[-15:]), file=sys.stderr)
        killed = " (killed: out of memory?)" if proc.returncode == -9 else ""
        raise UserError(f"the {spec['impl']} {spec['task']} worker failed with exit status {proc.returncode}"
                        f"{killed}; its last lines are above")
    return json.loads(lines[-1])


def base_spec(task: str, args: Any) -> dict:
    """The worker spec fields both benchmarks share, from their parsed command line."""
    return {"task": task, "model": model_config(args.image_size, args.tiny), "device": args.device,
            "threads": args.threads, "seed": args.seed, "warmup": args.warmup}


def run_both(base: dict, args: Any, reference: Path | None, **ours_extra: Any) -> tuple[dict, dict | None]:
    """Our measurement of `base` with the command line's speed options, then (with a reference checkout) the
    original's doing the same work with none; (ours, original or None)."""
    ours = run_worker({**base, "impl": "ours", "flags": speed_flags(args), **ours_extra}, args.timeout)
    if reference is None:
        return ours, None
    original = run_worker({**base, "impl": "reference", "flags": {}, "reference": str(reference),
                           "reuse_memory": args.reference_reuse_memory}, args.timeout)
    return ours, original


def save_results(result: dict, out: str | None, default_name: str) -> Path:
    """Write the result JSON atomically (utils.core.fileio; only the scripts, never a worker, call this)."""
    from utils.core.fileio import save_json

    path = Path(out) if out else RESULTS_DIR / default_name
    path.parent.mkdir(parents=True, exist_ok=True)
    save_json(result, path)
    return path


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """The command as typed from the repository root."""
    return " ".join(["python", f"bench/{script}", *(sys.argv[1:] if argv is None else argv)])


def ratio(ours: float | None, theirs: float | None) -> float | None:
    """ours / theirs, or None when either is missing."""
    if not ours or not theirs:
        return None
    return ours / theirs
