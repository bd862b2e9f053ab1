"""Synthesise the target contrast with a trained MU-Diff model: test slices to PNG/.npy, or whole NIfTI volumes.

Slice mode (default) reads the preprocessed split (INPUT_PATH/<split>/<CONTRAST>.npy) and writes
OUTPUT_PATH/EXP/generated_samples/ for metric_calc.py. NIfTI mode (--nifti with --cond1/2/3 or --case) writes one
synthesised volume with the inputs' geometry. Options and outputs: docs/synthesis.md.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from utils.core.errors import run_cli
from utils.core.options import synthesis_parser
from utils.infer.runs import run_synthesis


def main(argv: Sequence[str] | None = None) -> Path:
    """Parse the options and synthesise."""
    parser = synthesis_parser()
    return run_synthesis(parser.parse_args(argv), parser)


if __name__ == "__main__":
    sys.exit(run_cli(main))
