"""The whole MU-Diff pipeline on built-in phantom data, on a CPU, in a few minutes.

Generates phantom cases, preprocesses them, trains a small model, synthesises the test slices, scores them with
metric_calc.py, and draws a figure; then prints where everything went and the synthesis's PSNR next to a trivial
baseline's (the T1 input rescaled to the target's range). Every step is the same command a user would type.
"""
import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.errors import UserError, run_cli  # noqa: E402
from utils.metrics import plain_metrics, summarize_values  # noqa: E402

EXP = "quickstart"
# Small enough to train in minutes on two CPU cores, large enough to learn the contrast mapping.
MODEL_FLAGS = ["--image_size", "64", "--ch_mult", "1", "2", "--num_res_blocks", "1", "--num_channels_dae", "32",
               "--attn_resolutions", "16", "--z_emb_dim", "64", "--t_emb_dim", "64", "--ngf", "16",
               "--num_timesteps", "4"]
# A few hundred steps instead of the paper's tens of thousands: a higher learning rate, and the loss weights of the
# paper's table (adversarial 0.5, L1 1; the code's defaults are 1 and 0.5), which favour the L1 fit early on.
TRAIN_FLAGS = ["--lr_g", "4e-4", "--lr_d", "2e-4", "--lambda_adv", "0.5", "--lambda_l1_loss", "1"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default="quickstart_out", help="folder for everything the quickstart writes")
    parser.add_argument("--cases", type=int, default=9, help="phantom cases (split 6/1/2 into train/val/test)")
    parser.add_argument("--slices", type=int, default=24, help="middle axial slices kept per case")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs")
    parser.add_argument("--batch_size", type=int, default=4, help="training batch size")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run (CI): 5 cases, 8 slices, 1 epoch; the numbers mean nothing")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    args = parser.parse_args(argv)
    if args.quick:
        args.cases, args.slices, args.epochs = 5, 8, 1
    if args.cases < 3:
        raise UserError(f"--cases {args.cases}: need at least 3 (one each for train, val and test)")
    return args


def run_step(title: str, script: str, flags: Sequence[str]) -> None:
    """Print and run `python SCRIPT FLAGS` from the repository root; stop the quickstart if it fails."""
    command = [sys.executable, str(ROOT / script), *map(str, flags)]
    print(f"\n== {title}\n$ python {script} {shlex.join(map(str, flags))}", flush=True)
    started = time.time()
    result = subprocess.run(command, cwd=ROOT)
    if result.returncode != 0:
        raise UserError(f"step '{title}' failed (exit {result.returncode}); its message is above")
    print(f"   ({time.time() - started:.0f} s)", flush=True)


def rescaled_baseline(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The source slice min–max mapped onto the target's intensity range inside the brain: a no-learning guess."""
    out = np.zeros_like(target)
    inside = mask > 0
    if not inside.any():
        return out
    src, tgt = source[inside], target[inside]
    span = src.max() - src.min()
    scaled = (src - src.min()) / span if span > 0 else np.zeros_like(src)
    out[inside] = tgt.min() + scaled * (tgt.max() - tgt.min())
    return out


def brain_psnr(real: np.ndarray, guesses: np.ndarray, masks: np.ndarray) -> float:
    """Mean over slices with brain of the plain PSNR inside the brain mask."""
    values = [plain_metrics(r, g, m > 0)["psnr"] for r, g, m in zip(real, guesses, masks) if m.any()]
    return summarize_values(values).mean


def draw_figure(samples: Path, source: np.ndarray, source_name: str, target_name: str, path: Path) -> None:
    """Conditions-source, synthesis, truth, error and disagreement for the three test slices with most lesion."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    synth, real = np.load(samples / "synth.npy"), np.load(samples / "real.npy")
    lesion = np.load(samples / "lesion_mask.npy") if (samples / "lesion_mask.npy").exists() else np.zeros_like(real)
    disagreement = samples / "uncertainty" / "disagreement.npy"
    spread = np.load(disagreement) if disagreement.exists() else np.zeros_like(synth)
    rows = np.argsort(lesion.reshape(len(lesion), -1).sum(1))[::-1][:3]
    columns = [(f"{source_name} (input)", source, "gray"), (f"{target_name} synthesis", synth, "gray"),
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
    fig.tight_layout()
    from utils.fileio import atomic_path
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the pipeline and print the summary."""
    args = parse_args(argv)
    out = Path(args.out).resolve()
    cases, slices, results = out / "cases", out / "slices", out / "results"
    started = time.time()
    run_step("1/5 phantom cases (BraTS layout, skull-stripped)", "demo/make_sample_data.py",
             ["--out", cases, "--cases", args.cases, "--size", 96, "--skull-strip", "--overwrite"])
    run_step("2/5 preprocessing (percentile clip, middle slices, resize)", "pre_process.py",
             ["--layout", "brats", "--input", cases, "--split-file", cases / "splits", "--output", slices,
              "--slices", args.slices, "--size", 64, "--overwrite"])
    run_step("3/5 training MU-Diff (FLAIR, T2, T1 -> T1ce)", "train.py",
             ["--input_path", slices, "--output_path", results, "--exp", EXP, *MODEL_FLAGS, *TRAIN_FLAGS,
              "--batch_size", args.batch_size, "--num_epoch", args.epochs, "--save_ckpt_every", args.epochs,
              "--device", args.device, "--num_workers", 0, "--overwrite"])
    run_step("4/5 synthesis of the test slices", "test.py",
             ["--input_path", slices, "--output_path", results, "--exp", EXP, "--batch_size", 16,
              "--device", args.device, "--save_uncertainty"])
    experiment = results / EXP
    run_step("5/5 metrics (paper protocol and plain)", "metric_calc.py", [experiment])

    samples = experiment / "generated_samples"
    real, synth = np.load(samples / "real.npy"), np.load(samples / "synth.npy")
    brain = np.load(samples / "brain_mask.npy")
    t1 = np.load(slices / "test" / "T1.npy")[: len(real)]
    baseline = np.stack([rescaled_baseline(s, r, m) for s, r, m in zip(t1, real, brain)])
    figure = out / "quickstart.png"
    draw_figure(samples, t1, "T1", "T1ce", figure)

    print(f"\nDone in {time.time() - started:.0f} s. Everything is in {out}:")
    print(f"  phantom cases      {cases}")
    print(f"  slices             {slices}")
    print(f"  model and logs     {experiment}  (curves.png, log.csv, val.csv, gen_diffusive_*.pth)")
    print(f"  synthesis          {samples}")
    print(f"  metrics            {samples / 'metrics'}")
    print(f"  figure             {figure}")
    print(f"\nPSNR inside the brain on {len(real)} test slices (plain metric, [0, 1] images):")
    print(f"  MU-Diff synthesis of T1ce      {brain_psnr(real, synth, brain):6.2f} dB")
    print(f"  T1 input rescaled (baseline)   {brain_psnr(real, baseline, brain):6.2f} dB")
    print("  The baseline borrows the truth's own intensity range; this model trained for minutes on a CPU, the\n"
          "  paper's for 30 epochs of BraTS on GPUs (README, 'What to expect').")
    if args.quick:
        print("  (--quick: one epoch on a handful of slices, so the model has not learnt yet)")


if __name__ == "__main__":
    sys.exit(run_cli(main))
