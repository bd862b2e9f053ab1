"""Helpers shared by the benchmark scripts and their measurement workers.

This module imports neither our `utils`/`backbones` nor the original's (both packages have those names), so a
worker can load it whichever code it is about to time. Each measurement runs in a fresh worker process
(`python bench/bench_worker.py SPEC.json`): ours and the original's then start from the same state, their peak
memory is their own, and the two codebases never meet in one interpreter.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().with_name("bench_worker.py")
RESULTS_DIR = ROOT / "bench" / "results"

# The README training configuration: what the original's command line resolves to (ARCH_SPEC §1).
README_MODEL = dict(
    image_size=256, num_channels=1, centered=True, num_channels_dae=64, n_mlp=3, ch_mult=[1, 2, 4],
    num_res_blocks=2, attn_resolutions=[16], dropout=0.0, resamp_with_conv=True, conditional=True, fir=True,
    fir_kernel=[1, 3, 3, 1], skip_rescale=True, resblock_type="biggan", progressive="none",
    progressive_input="residual", progressive_combine="sum", embedding_type="positional", fourier_scale=16.0,
    not_use_tanh=False, nz=100, z_emb_dim=256, t_emb_dim=256, ngf=64,
    num_timesteps=4, beta_min=0.1, beta_max=20.0, use_geometric=False,
    lr_g=1.6e-4, lr_d=1e-4, beta1=0.5, beta2=0.9, r1_gamma=1.0, lazy_reg=10, lambda_l1_loss=0.5,
    lambda_mask_loss=0.1, lambda_adv=1.0, lr_warmup_steps=0, lesion_l1_weight=0.0,
)
# A small configuration for smoke runs (the reference fixtures' one: 64x64, two levels; nf stays 64 because the
# original's generator 2 only builds with 64 base channels).
TINY_MODEL = dict(README_MODEL, image_size=64, ch_mult=[1, 1], num_res_blocks=1, attn_resolutions=[32],
                  z_emb_dim=32, t_emb_dim=32, ngf=4)


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


def model_config(image_size: int, tiny: bool) -> dict:
    """The README (or tiny) configuration at `image_size`."""
    return dict(TINY_MODEL if tiny else README_MODEL, image_size=image_size)


def add_common_args(parser: Any, default_batches: list[int] | None = None) -> None:
    """Options every benchmark script takes."""
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
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
    parser.add_argument("--out", default=None, help="JSON output (default: bench/results/<script>_<device>.json)")
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
