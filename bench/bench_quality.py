"""Quality benchmark: does MU-Diff learn more than a per-pixel regression? Phantom data, a fixed training budget.

    python bench/bench_quality.py --steps 480 --threads 2

Makes phantom cases with demo/make_sample_data.py, preprocesses them (--normalize median unless told), trains the
small-budget recipe (configs/quickstart.json unless --config) for about --steps generator steps, synthesises the
held-out test split with the epoch of best validation score (the recipe's --best_metric) and with the last epoch,
fits both baselines (test.py --baseline linear and quadratic) on the training split, and scores all four with every
protocol. It draws the learning curve (validation PSNR and SSIM per epoch, the baselines' validation scores as
lines) and writes everything to --out (bench/results/quality/ by default): quality.json, learning_curve.png and the
runs themselves.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_common import machine_record  # noqa: E402

from demo.steps import (  # noqa: E402
    add_budget_args,
    add_machine_args,
    epochs_for,
    recipe_batch,
    run_step,
)
from utils.core.artifacts import (  # noqa: E402
    CONFIG_NAME,  # noqa: E402
    OUTPUT_DIR_NAME,
    VAL_LOG,
    baseline_output_dir,
    output_stack,
)
from utils.core.errors import UserError, run_cli  # noqa: E402
from utils.core.fileio import save_json  # noqa: E402
from utils.core.options import BASELINES, ArgumentParser  # noqa: E402
from utils.data.geometry import model_to_unit  # noqa: E402
from utils.data.preprocessing import NORMALIZATIONS  # noqa: E402
from utils.data.slices import SliceDataset  # noqa: E402
from utils.eval.compare import as_json, comparison_table, enhancement_drawn, max_swing, score_folder  # noqa: E402
from utils.eval.metrics import plain_metrics, summarize_values  # noqa: E402
from utils.infer.baselines import PixelRegression  # noqa: E402

EXP = "quality"


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    add_budget_args(parser, "quality", steps=480, cases=12, seed=100)
    parser.add_argument("--normalize", choices=NORMALIZATIONS, default="median",
                        help="pre_process.py --normalize (the recipe: median; percentile is the original's scale)")
    add_machine_args(parser)
    return parser


def baseline_validation(slices: Path, contrasts: list[str], image_size: int) -> dict[str, dict[str, float]]:
    """Each baseline's score on the validation split, computed as val.csv's (plain, whole slice, [0, 1])."""
    train = SliceDataset(slices, "train", contrasts, image_size)
    val = SliceDataset(slices, "val", contrasts, image_size)
    items = [val[i] for i in range(len(val))]
    conds = [np.stack([it[k].numpy() for it in items]) for k in range(4)]
    scores = {}
    for kind in BASELINES:
        model = PixelRegression.fit(train, kind, progress=False)
        guess = model.predict(*(torch.from_numpy(c) for c in conds[:3])).numpy()
        rows = [plain_metrics(model_to_unit(r[0]), np.clip(model_to_unit(g[0]), 0, 1)) for r, g in zip(conds[3], guess)]
        scores[kind] = {m: summarize_values(row[m] for row in rows).mean for m in ("psnr", "ssim")}
    return scores


def read_val_csv(path: Path) -> dict[str, list[float]]:
    """val.csv as columns of floats."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {key: [float(row[key]) for row in rows] for key in ("epoch", "psnr", "ssim", "best_epoch")}


def draw_curve(val: dict[str, list[float]], lines: dict[str, dict[str, float]], path: Path) -> None:
    """Validation PSNR and SSIM per epoch, each baseline's validation score as a dashed line."""
    import matplotlib.pyplot as plt

    from utils.eval.plots import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric, unit in ((axes[0], "psnr", "PSNR (dB)"), (axes[1], "ssim", "SSIM")):
        ax.plot(val["epoch"], val[metric], "o-", color="C0", label="MU-Diff (validation)")
        for (kind, scores), colour in zip(lines.items(), ("C1", "C2")):
            ax.axhline(scores[metric], ls="--", color=colour, label=f"{kind} baseline")
        ax.set_xlabel("epoch")
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Validation during training (plain metric, whole slice, [0, 1])", fontsize=10)
    save_figure(fig, path, 110)


def set_aside(folder: Path, name: str) -> Path:
    """`folder` renamed to its sibling `name`, replacing what an earlier run in the same --out left there."""
    target = folder.with_name(name)
    # A folder cannot be renamed onto a folder that holds files, so the previous run's copy goes first.
    shutil.rmtree(target, ignore_errors=True)
    folder.replace(target)
    return target


def run_pipeline(args: argparse.Namespace, config: Path, out: Path) -> tuple[dict, dict, int, int, int]:
    """Phantom -> preprocessing -> training -> synthesis (best and last epoch, baselines); timings and folders."""
    cases, slices, results = out / "cases", out / "slices", out / "results"
    timings = {"phantom": run_step("phantom cases", "demo/make_sample_data.py",
                                   ["--out", cases, "--cases", args.cases, "--volume_size", 96, "--seed", args.seed,
                                    "--skull_strip", "--overwrite"])}
    timings["preprocess"] = run_step("preprocessing", "pre_process.py",
                                     ["--layout", "brats", "--input", cases, "--split_file", cases / "splits",
                                      "--output", slices, "--slices", args.slices, "--image_size", 64,
                                      "--normalize", args.normalize, "--overwrite"])
    train_slices = len(np.load(slices / "train" / "T1ce.npy", mmap_mode="r"))
    epochs, per_epoch = epochs_for(args.steps, train_slices, recipe_batch(config))
    timings["train"] = run_step(f"training {epochs} epochs of {per_epoch} steps", "train.py",
                                ["--config", config, "--input_path", slices, "--output_path", results, "--exp", EXP,
                                 "--num_epoch", epochs, "--save_ckpt_every", epochs, "--device", args.device,
                                 "--num_workers", 0, "--overwrite"])
    experiment = results / EXP
    common = ["--input_path", slices, "--output_path", results, "--exp", EXP, "--device", args.device,
              "--batch_size", 16, "--overwrite"]
    folders = {}
    timings["test_best"] = run_step("synthesis, best validation epoch", "test.py", [*common, "--epoch", "best"])
    folders["MU-Diff (best validation epoch)"] = set_aside(experiment / OUTPUT_DIR_NAME, f"{OUTPUT_DIR_NAME}_best")
    timings["test_last"] = run_step("synthesis, last epoch", "test.py", common)
    folders["MU-Diff (last epoch)"] = experiment / OUTPUT_DIR_NAME
    for kind in BASELINES:
        timings[f"baseline_{kind}"] = run_step(f"{kind} baseline", "test.py", [*common, "--baseline", kind])
        folders[f"{kind} baseline (fitted on train)"] = experiment / baseline_output_dir(kind)
    return timings, folders, train_slices, epochs, per_epoch


def print_report(report: dict, scores: dict, out: Path) -> None:
    """The test table, the share of enhancement drawn, the validation curve in numbers and the time taken."""
    val = report["validation"]
    print(f"\nTest split ({report['test_slices']} slices of held-out phantom cases), mean ± std over slices:")
    print(comparison_table(scores))
    print("enhancement drawn (truth above the linear baseline by > 0.1; 1 = all): " + ", ".join(
        f"{name} {share:.2f}" for name, share in report["enhancement_drawn"].items() if share is not None))
    print(f"\nvalidation PSNR per epoch: {', '.join(f'{v:.2f}' for v in val['psnr'])} (best: epoch "
          f"{val['best_epoch']}); largest epoch-to-epoch change after the first quarter: "
          f"{val['max_psnr_swing_after_first_quarter']:.2f} dB")
    print("baselines on the validation split: " + ", ".join(f"{k} {v['psnr']:.2f} dB / SSIM {v['ssim']:.3f}"
                                                           for k, v in val["baselines"].items()))
    total = report["seconds"]["total"] / 60
    print(f"{report['steps']} steps in {report['seconds']['train'] / 60:.1f} min of training; {total:.1f} min in "
          f"all. Wrote {out / 'quality.json'} and {out / 'learning_curve.png'}")


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the whole benchmark and write quality.json."""
    args = build_parser().parse_args(argv)
    config = Path(args.config)
    if not config.is_file():
        raise UserError(f"--config {config}: no such file")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    out = Path(args.out).resolve()
    started = time.time()
    timings, folders, train_slices, epochs, per_epoch = run_pipeline(args, config, out)
    scores = {name: score_folder(folder) for name, folder in folders.items()}
    experiment = out / "results" / EXP
    settings = json.loads((experiment / CONFIG_NAME).read_text())
    val = read_val_csv(experiment / VAL_LOG)
    lines = baseline_validation(out / "slices", settings["contrasts"], settings["image_size"])
    draw_curve(val, lines, out / "learning_curve.png")
    last = folders["MU-Diff (last epoch)"]
    report = {
        "command": "python bench/bench_quality.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_record(args.threads, args.device),
        "recipe": json.loads(config.read_text()), "normalize": args.normalize, "epochs": epochs,
        "steps": epochs * per_epoch, "train_slices": train_slices,
        "test_slices": len(np.load(last / output_stack("real"))),
        "seconds": {**{k: round(v, 1) for k, v in timings.items()}, "total": round(time.time() - started, 1)},
        # best_epoch: chosen by train.py with the recipe's --best_metric.
        "validation": {**val, "best_epoch": int(val["best_epoch"][-1]), "baselines": lines,
                       "max_psnr_swing_after_first_quarter": max_swing(val["psnr"])},
        "test": as_json(scores),
        "enhancement_drawn": {name: enhancement_drawn(folder, experiment / baseline_output_dir("linear"))
                              for name, folder in folders.items()},
    }
    save_json(report, out / "quality.json")
    print_report(report, scores, out)
    return report


if __name__ == "__main__":
    sys.exit(run_cli(main))
