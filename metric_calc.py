"""Score synthetic MRI slices against the real ones: the MU-Diff paper's protocol (whole brain and lesion) and plain
metrics, as a table, a per-slice CSV, a summary JSON and a figure of each metric's distribution.

    python metric_calc.py RESULTS_FOLDER                      # what test.py wrote ({output_path}/{exp})
    python metric_calc.py --real DIR --synth DIR [--mask DIR] [--lesion_mask DIR] [--out DIR]
"""
import sys
from collections.abc import Sequence

from utils.core.errors import run_cli
from utils.eval.metrics import Summary
from utils.eval.report import metric_parser, score_and_report


def main(argv: Sequence[str] | None = None) -> dict[str, Summary]:
    """Parse the options and score; returns {column: Summary}."""
    return score_and_report(metric_parser(__doc__).parse_args(argv))


if __name__ == "__main__":
    sys.exit(run_cli(main))
