"""Sampling throughput: slices per second of the whole T-step sampler (both generators every step) per batch size.

    python bench/bench_sampling.py --device cpu --batches 1 2 --repeats 1 --reference /tmp/mudiff_orig

Ours runs with the speed options given (--amp, --channels_last, --compile, --fast_paths; none = the faithful
path); with --reference the original code does the same work in its own process (its networks, its test.py
sampler, float32, no options) and the ratio ours / original is printed. Results: bench/results/sampling_<device>.json.
Weights are the seeded initial ones (speed does not depend on their values); inputs are seeded random slices.
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
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16], help="batch sizes to time")
    parser.add_argument("--repeats", type=int, default=3, help="timed sampler runs per batch size")
    parser.add_argument("--check_amp", action="store_true",
                        help="also report the PSNR between our float32 and bf16-autocast samples (same seeds, "
                             "perturbed weights) at the first batch size; --amp not needed")
    return parser


def table(rows: list[dict]) -> str:
    """The per-batch figures as a text table (ratios: wall-clock slices/s, and CPU seconds per slice)."""
    lines = [f"{'batch':>5}  {'ours slices/s':>13}  {'original slices/s':>17}  {'ratio':>6}  {'CPU-time ratio':>14}"]
    for row in rows:
        theirs = f"{row['original_slices_per_s']:.4g}" if row["original_slices_per_s"] else "-"
        factor = f"{row['ratio']:.2f}x" if row["ratio"] else "-"
        cpu = f"{row['cpu_time_ratio']:.2f}x" if row["cpu_time_ratio"] else "-"
        lines.append(f"{row['batch']:>5}  {row['ours_slices_per_s']:>13.4g}  {theirs:>17}  {factor:>6}  {cpu:>14}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the measurements, print the table, save the JSON."""
    args = build_parser().parse_args(argv)
    reference = check_reference(args.reference)
    if min(args.batches) < 1 or args.repeats < 1 or args.warmup < 0:
        raise UserError("--batches and --repeats must be at least 1, --warmup at least 0")
    base = {**base_spec("sampling", args), "batches": args.batches, "repeats": args.repeats}
    ours, original = run_both(base, args, reference, check_amp=args.check_amp)
    rows = []
    for index, row in enumerate(ours["rows"]):
        other = original["rows"][index] if original else {}
        rows.append({"batch": row["batch"], "ours_slices_per_s": row["slices_per_s"],
                     "original_slices_per_s": other.get("slices_per_s"),
                     "ratio": ratio(row["slices_per_s"], other.get("slices_per_s")),
                     "cpu_time_ratio": ratio(other.get("cpu_seconds_per_slice"), row["cpu_seconds_per_slice"])})
    result = {"benchmark": "sampling", "command": command_line("bench_sampling.py", argv),
              "num_timesteps": base["model"]["num_timesteps"], "image_size": args.image_size, "tiny": args.tiny,
              "ours_options": speed_flags(args), "rows": rows, "amp_check": ours.get("amp_check"), "ours": ours,
              "original": original,
              "environment": environment(torch.device(args.device), args.threads)}
    print(table(rows))
    if args.check_amp:
        check = ours["amp_check"]
        print(f"amp check (batch {check['batch']}): PSNR(bf16 autocast, float32) = {check['psnr_db']:.1f} dB; "
              f"--amp costs <= 0.5 dB for models scoring up to {check['psnr_db'] - 24.5:.1f} dB against the truth")
    path = save_results(result, args.out, f"sampling_{torch.device(args.device).type}.json")
    print(f"saved {path}")
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main))
