"""Train MU-Diff: two mutually learning diffusion generators and one shared adversarial critic.

Runs on a CPU, one GPU, several GPUs of one node (`--num_process_per_node N` spawns N processes, or
`torchrun --nproc_per_node N train.py ...`) and several nodes (torchrun, or the original's --num_proc_node /
--node_rank flags). Epochs are numbered 1..--num_epoch in file names, logs and the progress bar. Everything goes to
OUTPUT_PATH/EXP/: content.pth (all state needed by --resume), gen_diffusive_{1,2}.pth (latest generator weights),
gen_diffusive_{1,2}_{epoch}.pth (every --save_ckpt_every epochs and the last), gen_diffusive_{1,2}_best.pth (the epoch
with the highest validation PSNR so far, or SSIM with --best_metric ssim), config.json, log.csv (every loss term per
iteration), val.csv (validation PSNR/SSIM/L1 per epoch and the best epoch so far), curves.png and
sample_discrete_epoch_{epoch}.png.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Sequence


from utils.train.distributed import launched_by_torchrun
from utils.core.errors import run_cli
from utils.core.options import add_config_arg, add_data_args, add_diffusion_args, add_model_args, add_run_args, add_speed_args, add_train_control_args, add_training_args, parse_with_config
from utils.train.plan import describe, prepare
from utils.train.launch import launch





def build_parser() -> argparse.ArgumentParser:
    """Every option of the original train.py (README command included) plus the new ones."""
    parser = argparse.ArgumentParser(description="Train MU-Diff (two generators, one shared critic).")
    add_model_args(parser)
    add_diffusion_args(parser)
    add_data_args(parser)
    add_run_args(parser, batch_help="slices per process per step (the README uses 3)")
    add_training_args(parser)
    add_train_control_args(parser)
    add_speed_args(parser, training=True)
    add_config_arg(parser)
    return parser








































def main(argv: Sequence[str] | None = None) -> None:
    """Parse, check everything cheap, then dry-run or train."""
    args = parse_with_config(build_parser(), argv)
    plan = prepare(args)
    if args.dry_run:
        if not launched_by_torchrun() or os.environ.get("RANK") == "0":
            print(describe(args, plan))
        return
    if launched_by_torchrun() and args.num_process_per_node > 1:
        warnings.warn("started by torchrun: its process count is used and --num_process_per_node is ignored",
                      stacklevel=1)
    launch(args, plan)


if __name__ == "__main__":
    sys.exit(run_cli(main))
