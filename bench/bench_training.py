"""Training throughput and peak memory: steps per second of the full iteration (critic step, then both generators).

    python bench/bench_training.py --device cpu --batch 3 --warmup 1 --steps 1 --reference /tmp/mudiff_orig

Ours is utils/train/steps.py's train_step with the speed options given (--amp, --channels_last, --compile for the
generators, --fast_paths, --fused_adam on CUDA; none = the faithful loop). With --reference the original's iteration
(its networks and train.py helpers, the critic step with autograd through both generators, float32) does the same
work in its own process, and the ratios ours / original are printed. Peak memory: the process's peak RSS on the CPU,
torch.cuda.max_memory_allocated on CUDA. The first --warmup steps (step 0 carries the R1 penalty, as every
--lazy_reg-th step does) are not timed. Results: bench/results/training_<device>.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from bench_common import (  # noqa: E402
    add_common_args,
    base_spec,
    check_reference,
    command_line,
    environment,
    ratio,
    run_both,
    save_results,
    speed_flags,
)

from utils.core.errors import UserError, run_cli  # noqa: E402
from utils.core.options import ArgumentParser  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--batch_size", "--batch", dest="batch", type=int, default=3,
                        help="slices per step (README: 3)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--fused_adam", action="store_true", help="ours with the fused Adam kernel (CUDA)")
    return parser


def memory(result: dict) -> float:
    """The peak-memory figure of one worker result (MiB): CUDA allocations on a GPU, RSS on the CPU."""
    return result.get("peak_cuda_allocated_mib", result["peak_rss_mib"])


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the measurements, print the comparison, save the JSON."""
    args = build_parser().parse_args(argv)
    reference = check_reference(args.reference)
    if args.batch < 1 or args.steps < 1 or args.warmup < 0:
        raise UserError("--batch and --steps must be at least 1, --warmup at least 0")
    base = {**base_spec("training", args), "batch": args.batch, "steps": args.steps}
    ours, original = run_both(base, args, reference)
    kind = "CUDA max allocated" if "peak_cuda_allocated_mib" in ours else "peak RSS"
    summary = {"batch": args.batch, "ours_steps_per_s": ours["steps_per_s"],
               "original_steps_per_s": original["steps_per_s"] if original else None,
               "speed_ratio": ratio(ours["steps_per_s"], original["steps_per_s"] if original else None),
               "cpu_time_ratio": ratio(original["cpu_seconds_per_step"] if original else None,
                                       ours["cpu_seconds_per_step"]),
               "memory_kind": kind, "ours_peak_mib": memory(ours),
               "original_peak_mib": memory(original) if original else None,
               "memory_ratio": ratio(memory(ours), memory(original) if original else None)}
    result = {
        "benchmark": "training", "command": command_line("bench_training.py", argv), "image_size": args.image_size,
        "tiny": args.tiny, "ours_options": speed_flags(args), "summary": summary, "ours": ours, "original": original,
        "environment": environment(torch.device(args.device), args.threads)}
    print(f"ours:     {ours['steps_per_s']:.4g} steps/s, {kind} {memory(ours):.0f} MiB")
    if original:
        print(f"original: {original['steps_per_s']:.4g} steps/s, {kind} {memory(original):.0f} MiB")
        print(f"ratio:    {summary['speed_ratio']:.2f}x steps/s ({summary['cpu_time_ratio']:.2f}x in CPU time), "
              f"memory {summary['memory_ratio']:.2f}x of the original's")
    path = save_results(result, args.out, f"training_{torch.device(args.device).type}.json")
    print(f"saved {path}")
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main))
