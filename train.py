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

import sys
from typing import Sequence

from utils.core.errors import run_cli
from utils.core.options import parse_with_config, train_parser
from utils.train.launch import run_training


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the options (over --config's values) and train."""
    run_training(parse_with_config(train_parser(), argv))


if __name__ == "__main__":
    sys.exit(run_cli(main))
