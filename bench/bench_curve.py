"""Same data, same seeds, same initial weights: does the original's training loop give our loss curve?

    python bench/bench_curve.py --reference /tmp/mudiff_orig --data quickstart_out/slices/train --steps 200

Trains the small configuration for --steps iterations twice, each in its own process: ours (utils/train/steps.py's
train_step) and the original's (its networks and its train.py diffusion helpers, the iteration of ARCH_SPEC §8.2),
both seeded alike (so both build the same initial weights) and fed the same batches of a preprocessed training split
in the order the original's sampler gave them (one permutation, repeated every epoch). It prints where the per-step
losses of the two first differ and by how much, compares the final weights, draws both curves and writes
curve.json and curve.png (in bench/results/ unless --out). The slices must be square and as large as the model
(--image_size).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import RESULTS_DIR, base_spec, check_reference, command_line, run_worker, save_results  # noqa: E402

from utils.core.errors import UserError, run_cli  # noqa: E402
from utils.core.options import ArgumentParser  # noqa: E402
from utils.train.steps import LOSS_NAMES  # noqa: E402

CONTRASTS = ["FLAIR", "T2", "T1", "T1ce"]


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, metavar="PATH", help="checkout of the original code")
    parser.add_argument("--data", required=True, help="a preprocessed split folder with FLAIR/T2/T1/T1ce.npy")
    parser.add_argument("--steps", type=int, default=200, help="training iterations")
    parser.add_argument("--batch_size", "--batch", dest="batch", type=int, default=4, help="slices per iteration")
    parser.add_argument("--image_size", type=int, default=64, help="slice size (the data's)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for each code")
    parser.add_argument("--seed", type=int, default=0, help="seed of both runs")
    parser.add_argument("--timeout", type=int, default=7200, help="seconds each run may take")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="folder for curve.json and curve.png")
    return parser


def first_difference(ours: list[list[float]], theirs: list[list[float]], tolerance: float) -> int | None:
    """The first step whose loss terms differ by more than `tolerance` (relative), or None."""
    for step, (a, b) in enumerate(zip(ours, theirs)):
        for x, y in zip(a, b):
            if not (math.isnan(x) and math.isnan(y)) and abs(x - y) > tolerance * max(abs(x), abs(y), 1e-12):
                return step
    return None


def largest_difference(ours: list[list[float]], theirs: list[list[float]]) -> float:
    """Largest absolute difference of any loss term at any step (NaN pairs, steps without R1, ignored)."""
    return max((abs(x - y) for a, b in zip(ours, theirs) for x, y in zip(a, b)
                if not (math.isnan(x) or math.isnan(y))), default=0.0)


def draw(ours: list[list[float]], theirs: list[list[float]], path: Path) -> None:
    """Critic and L1 losses per step for both codes."""
    import matplotlib.pyplot as plt

    from utils.eval.plots import save_figure

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, name in zip(axes, ("errD_fake", "errG_adv", "errG_L1")):
        column = LOSS_NAMES.index(name)
        ax.plot([row[column] for row in theirs], lw=3, alpha=0.4, label="original (c3c674d)")
        ax.plot([row[column] for row in ours], lw=1, label="ours")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=8)
    save_figure(fig, path, 100)


def main(argv: Sequence[str] | None = None) -> dict:
    """Run both trainings, compare and save."""
    args = build_parser().parse_args(argv)
    reference = check_reference(args.reference)
    data = Path(args.data)
    missing = [c for c in CONTRASTS if not (data / f"{c}.npy").is_file()]
    if missing:
        raise UserError(f"--data {data}: no {missing[0]}.npy there; give a split folder written by pre_process.py")
    if args.steps < 1 or args.batch < 1:
        raise UserError("--steps and --batch must be at least 1")
    settings = argparse.Namespace(image_size=args.image_size, tiny=True, device="cpu", threads=args.threads,
                                  seed=args.seed, warmup=0)
    base = {**base_spec("curve", settings), "data": str(data.resolve()), "contrasts": CONTRASTS,
            "batch": args.batch, "steps": args.steps, "flags": {}}
    ours = run_worker({**base, "impl": "ours"}, args.timeout)
    theirs = run_worker({**base, "impl": "reference", "reference": str(reference)}, args.timeout)
    first = first_difference(ours["losses"], theirs["losses"], 1e-5)
    result = {
        "command": command_line("bench_curve.py", argv), "model": base["model"], "steps": args.steps,
        "batch": args.batch, "loss_names": list(LOSS_NAMES),
        "first_step_differing_by_1e-5_relative": first,
        "largest_loss_difference": largest_difference(ours["losses"], theirs["losses"]),
        "weight_checksums": {"ours": ours["weights"], "original": theirs["weights"]},
        "losses": {"ours": ours["losses"], "original": theirs["losses"]},
    }
    out = Path(args.out)
    path = save_results(result, str(out / "curve.json"), "curve.json")
    draw(ours["losses"], theirs["losses"], out / "curve.png")
    print(f"{args.steps} steps of batch {args.batch} from {data}, both codes seeded with {args.seed}:")
    print("  loss terms agree to 1e-5 (relative) at every step" if first is None
          else f"  loss terms first differ by more than 1e-5 (relative) at step {first}")
    print(f"  largest difference of any loss term at any step: {result['largest_loss_difference']:.3g}")
    for name, a, b in zip(("generator 1", "generator 2", "critic"), ours["weights"], theirs["weights"]):
        print(f"  final {name} weights, sum of squares: ours {a:.10g}, original {b:.10g}")
    print(f"wrote {path} and {out / 'curve.png'}")
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main))
