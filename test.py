"""Synthesise the target contrast with a trained MU-Diff model: test slices to PNG/.npy, or whole NIfTI volumes.

Slice mode (default) reads the preprocessed split (INPUT_PATH/<split>/<CONTRAST>.npy) and writes
OUTPUT_PATH/EXP/generated_samples/ for metric_calc.py. NIfTI mode (--nifti with --cond1/2/3 or --case) writes one
synthesised volume with the inputs' geometry. See the README section "Test / synthesis".
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence


from utils.core.errors import UserError, run_cli
from utils.infer.experiment import configure
from utils.core.options import make_parser
from utils.infer.runs import _volume_inputs, open_model, open_split, run_baseline_slices, run_model_slices, run_volume





































def main(argv: Sequence[str] | None = None) -> Path:
    """Parse the options, load the experiment and run slice or NIfTI mode."""
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be at least 1 (got {args.batch_size})")
    configure(args, parser)
    volume_mode = args.nifti or args.case is not None or args.cond1 is not None
    if args.baseline and (volume_mode or args.save_uncertainty):
        raise UserError("--baseline synthesises the test slices only; drop --nifti/--case/--cond1-3 and "
                        "--save_uncertainty")
    # Inputs are checked before the (slow) model loading, so a wrong path fails at once.
    inputs = _volume_inputs(args, args.contrasts) if volume_mode else open_split(args)
    if args.baseline:
        return run_baseline_slices(args, inputs)
    exp = open_model(args)
    return run_volume(exp, args, *inputs) if volume_mode else run_model_slices(exp, args, inputs)


if __name__ == "__main__":
    sys.exit(run_cli(main))
