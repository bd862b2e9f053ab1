"""BraSyn (the BraTS missing-MRI challenge) end to end: make validation cases, complete them, score them.

    python brasyn.py drop --input BRATS_CASES --out val --truth truth --missing T1ce FLAIR
    python brasyn.py complete --input val --models T1ce=results/exp_t1ce FLAIR=results/exp_flair --out completed
    python brasyn.py refine --train BRATS_TRAINING_CASES --models T1ce=results/exp_t1ce   (then complete --refine)
    python brasyn.py score --completed completed --truth truth --out metrics
    python brasyn.py segment --train BRATS_TRAINING_CASES --truth truth --completed completed --out segmentation
    python brasyn.py export --completed completed --truth truth --out nnunet/Dataset900_BraSyn

drop: BraSyn-style cases from complete BraTS cases (any release's names): one modality dropped per case, seeded, the
dropped image and the segmentation kept in --truth. complete: for every case folder (each lacking one modality),
synthesise the missing one with the experiment trained for it, on the case's grid and under its BraTS name, and copy
the three present files, so each output folder is a complete case; a report goes to <out>/brasyn_report.{json,csv}.
refine (new, optional): train an experiment's light 3-D refiner on its syntheses of complete training cases;
complete --refine then corrects each stacked volume across its slices.
score: SSIM and PSNR of each synthesis against the truth within the brain, the tumour and the rest of the brain.
segment: the downstream check. A MONAI U-Net trained on --train's real cases segments each held-out case from the
real images, the completed case, the copy baseline and a zero-filled channel: Dice and HD95 of WT, TC and ET.
export: completed cases in nnU-Net v2 naming (<case>_0000..0003.nii.gz, its BraTS channel order) for your segmenter.
Options: utils/brasyn/options.py; the work is done by utils/brasyn/ (segment and export: utils/seg/).
"""
import sys
from typing import Sequence

from utils.brasyn.options import brasyn_parser
from utils.core.errors import run_cli
from utils.seg.commands import run_brasyn


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Run one subcommand; returns its per-case rows."""
    return run_brasyn(brasyn_parser(__doc__.split("\n\n")[0]).parse_args(argv))


if __name__ == "__main__":
    sys.exit(run_cli(main))
