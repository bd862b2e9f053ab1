"""Score synthetic MRI slices against the real ones: the MU-Diff paper's protocol (whole brain and lesion) and plain
metrics, as a table, a per-slice CSV, a summary JSON and a figure of each metric's distribution.

    python metric_calc.py RESULTS_FOLDER                      # what test.py wrote ({output_path}/{exp})
    python metric_calc.py --real DIR --synth DIR [--mask DIR] [--lesion_mask DIR] [--out DIR]
"""
import argparse
import sys
from collections.abc import Sequence

from utils.core.errors import run_cli
from utils.eval.metrics import Summary
from utils.eval.report import score_and_report


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results_folder", nargs="?", help="folder written by test.py ({output_path}/{exp} or its "
                        "generated_samples/); its .npy stacks are used when present")
    parser.add_argument("--real", help="folder of real images (PNG 8/16-bit, JPEG or .npy)")
    parser.add_argument("--synth", help="folder of synthetic images with the same file names as --real")
    parser.add_argument("--mask", "--brain_mask", dest="mask",
                        help="folder of brain masks (same names) for the whole-brain paper protocol")
    parser.add_argument("--lesion_mask", help="folder of lesion masks (same names) for the lesion-only protocol")
    parser.add_argument("--out", help="output folder (default: RESULTS_FOLDER/metrics or SYNTH/metrics)")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Summary]:
    """Parse the options and score; returns {column: Summary}."""
    return score_and_report(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(run_cli(main))
