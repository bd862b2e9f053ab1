"""The whole MU-Diff pipeline on built-in phantom data, on a CPU, in a few minutes.

Generates phantom cases, preprocesses them (on the brain-median intensity scale, pre_process.py --normalize median),
trains a small model with the small-budget recipe (configs/quickstart.json), synthesises the test slices with the
epoch of best validation score (SSIM in the recipe), fits the per-pixel linear baseline on the training split,
scores both with metric_calc.py's protocols and draws a figure; then prints where everything went and the model next
to the baseline. Every step is the same command a user would type.
"""
import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from demo.steps import run_step  # noqa: E402
from utils.core.artifacts import OUTPUT_DIR_NAME, baseline_output_dir, output_stack  # noqa: E402
from utils.core.errors import UserError, run_cli  # noqa: E402
from utils.core.options import ArgumentParser  # noqa: E402
from utils.data.preprocessing import NORMALIZATIONS  # noqa: E402
from utils.eval.compare import comparison_table, enhancement_drawn, score_folder  # noqa: E402

EXP = "quickstart"
RECIPE = ROOT / "configs" / "quickstart.json"


def build_parser() -> argparse.ArgumentParser:
    """Command-line options (docs/cli and the tests build the same parser)."""
    parser = ArgumentParser("quickstart.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="quickstart_out", help="folder for everything the quickstart writes")
    parser.add_argument("--cases", type=int, default=9, help="phantom cases (split 6/1/2 into train/val/test)")
    parser.add_argument("--slices", type=int, default=24, help="middle axial slices kept per case")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the recipe's)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run (CI): 5 cases, 8 slices, 1 epoch; the numbers mean nothing")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one, else the CPU), cpu, cuda "
                        "or cuda:N")
    parser.add_argument("--normalize", choices=NORMALIZATIONS, default="median",
                        help="pre_process.py --normalize: median (the recipe) or percentile (the original's scale)")
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The options, with --quick's budget applied and the case count checked."""
    args = build_parser().parse_args(argv)
    if args.quick:
        args.cases, args.slices, args.epochs = 5, 8, 1
    if args.cases < 3:
        raise UserError(f"--cases {args.cases}: need at least 3 (one each for train, val and test)")
    return args


def draw_figure(samples: Path, baseline: Path, source: np.ndarray, source_name: str, target_name: str,
                path: Path) -> None:
    """Source, baseline, synthesis, truth, error and disagreement for the three test slices with most lesion."""
    import matplotlib.pyplot as plt

    from utils.eval.plots import save_figure

    synth, real = np.load(samples / output_stack("synth")), np.load(samples / output_stack("real"))
    lesion_path = samples / output_stack("lesion_mask")
    lesion = np.load(lesion_path) if lesion_path.exists() else np.zeros_like(real)
    disagreement = samples / output_stack("disagreement")
    spread = np.load(disagreement) if disagreement.exists() else np.zeros_like(synth)
    rows = np.argsort(lesion.reshape(len(lesion), -1).sum(1))[::-1][:3]
    linear = np.load(baseline / output_stack("synth"))
    columns = [(f"{source_name} (input)", source, "gray"), ("linear baseline", linear, "gray"),
               (f"{target_name} synthesis", synth, "gray"),
               (f"{target_name} truth", real, "gray"), ("|error|", np.abs(synth - real), "magma"),
               ("generator disagreement", spread, "viridis")]
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(2.4 * len(columns), 2.4 * len(rows)),
                             squeeze=False)
    for r, index in enumerate(rows):
        for c, (title, stack, cmap) in enumerate(columns):
            axes[r, c].imshow(stack[index].T, cmap=cmap, origin="lower", vmin=0,
                              vmax=1 if cmap == "gray" else max(float(stack[index].max()), 1e-6))
            axes[r, c].set_axis_off()
            if r == 0:
                axes[r, c].set_title(title, fontsize=9)
    save_figure(fig, path, 110)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the pipeline and print the summary."""
    args = parse_args(argv)
    out = Path(args.out).resolve()
    cases, slices, results = out / "cases", out / "slices", out / "results"
    started = time.time()
    run_step("1/6 phantom cases (BraTS layout, skull-stripped)", "demo/make_sample_data.py",
             ["--out", cases, "--cases", args.cases, "--volume_size", 96, "--skull_strip", "--overwrite"])
    run_step(f"2/6 preprocessing ({args.normalize} intensity scale, middle slices, resize)", "pre_process.py",
             ["--layout", "brats", "--input", cases, "--split_file", cases / "splits", "--output", slices,
              "--slices", args.slices, "--image_size", 64, "--normalize", args.normalize, "--overwrite"])
    epochs = ["--num_epoch", args.epochs] if args.epochs else []
    run_step("3/6 training MU-Diff (FLAIR, T2, T1 -> T1ce) with the small-budget recipe", "train.py",
             ["--config", RECIPE.relative_to(ROOT), "--input_path", slices, "--output_path", results, "--exp", EXP,
              *epochs, "--device", args.device, "--num_workers", 0, "--overwrite"])
    run_step("4/6 synthesis of the test slices (the epoch with the best validation score)", "test.py",
             ["--input_path", slices, "--output_path", results, "--exp", EXP, "--epoch", "best", "--batch_size", 16,
              "--device", args.device, "--save_uncertainty", "--overwrite"])
    run_step("5/6 baseline: per-pixel linear regression fitted on the training split", "test.py",
             ["--input_path", slices, "--output_path", results, "--exp", EXP, "--baseline", "linear",
              "--overwrite"])
    experiment = results / EXP
    samples, baseline = experiment / OUTPUT_DIR_NAME, experiment / baseline_output_dir("linear")
    run_step("6/6 metrics (paper protocol and plain)", "metric_calc.py", [experiment])

    t1 = np.load(slices / "test" / "T1.npy")
    figure = out / "quickstart.png"
    draw_figure(samples, baseline, t1, "T1", "T1ce", figure)
    scores = {"MU-Diff synthesis of T1ce": score_folder(samples), "linear baseline (fitted on train)":
              score_folder(baseline)}

    print(f"\nDone in {time.time() - started:.0f} s. Everything is in {out}:")
    print(f"  phantom cases      {cases}")
    print(f"  slices             {slices}")
    print(f"  model and logs     {experiment}  (curves.png, log.csv, val.csv, gen_diffusive_*.pth)")
    print(f"  synthesis          {samples}")
    print(f"  metrics            {samples / 'metrics'}")
    print(f"  figure             {figure}")
    print(f"  baseline           {baseline}")
    count = len(np.load(samples / output_stack("real")))
    print(f"\nMU-Diff against the linear baseline on the {count} test slices (mean ± std over slices):")
    print(comparison_table(scores))
    print("  The baseline maps each pixel's three input intensities to the target with coefficients fitted on the\n"
          "  training split; neither method sees the test slices' truth (docs/quality.md).")
    drawn = enhancement_drawn(samples, baseline)
    if drawn is not None:
        print(f"  Enhancing rim drawn: {100 * drawn:.0f} % of the truth's enhancement over the baseline "
              "(the baseline: 0 %).")
    if args.quick:
        print("  (--quick: one epoch on a handful of slices, so the model has not learnt yet)")


if __name__ == "__main__":
    sys.exit(run_cli(main))
