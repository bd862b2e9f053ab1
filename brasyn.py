"""BraSyn (the BraTS missing-MRI challenge) end to end: make validation cases, complete them, score them.

    python brasyn.py drop --input BRATS_CASES --out val --truth truth --missing T1ce FLAIR
    python brasyn.py complete --input val --models T1ce=results/exp_t1ce FLAIR=results/exp_flair --out completed
    python brasyn.py score --completed completed --truth truth --out metrics
    python brasyn.py segment --train BRATS_TRAINING_CASES --truth truth --completed completed --out segmentation
    python brasyn.py export --completed completed --truth truth --out nnunet/Dataset900_BraSyn

drop: BraSyn-style cases from complete BraTS cases (any release's names): one modality dropped per case, seeded, the
dropped image and the segmentation kept in --truth. complete: for every case folder (each lacking one modality),
synthesise the missing one with the experiment trained for it, on the case's grid and under its BraTS name, and copy
the three present files, so each output folder is a complete case; a report goes to <out>/brasyn_report.{json,csv}.
score: SSIM and PSNR of each synthesis against the truth within the brain, the tumour and the rest of the brain.
segment: the downstream check. A MONAI U-Net trained on --train's real cases segments each held-out case from the
real images, the completed case, the copy baseline and a zero-filled channel: Dice and HD95 of WT, TC and ET.
export: completed cases in nnU-Net v2 naming (<case>_0000..0003.nii.gz, its BraTS channel order) for your segmenter.
The work is done by utils/brasyn/ (segment and export: utils/seg/).
"""
import argparse
import sys
from typing import Sequence

from utils.brasyn.complete import complete_cases
from utils.brasyn.drop import drop_modalities
from utils.brasyn.score import score_cases
from utils.core.errors import run_cli
from utils.data.layouts import BRATS_CONTRASTS, BRATS_NAMINGS
from utils.core.options import add_speed_args, epoch_choice, add_volume_sampling_args
from utils.seg.nnunet import export_nnunet
from utils.seg.options import add_export_args, add_segment_args


def build_parser() -> argparse.ArgumentParser:
    """The subcommands and their options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{drop,complete,score,segment,export}")
    kwargs = {"formatter_class": argparse.ArgumentDefaultsHelpFormatter}

    drop = commands.add_parser("drop", help="make BraSyn-style cases (one modality dropped) from complete ones",
                               **kwargs)
    drop.add_argument("--input", required=True, help="complete BraTS cases (2019, 2021 or 2023 names)")
    drop.add_argument("--out", required=True, help="where the BraSyn-style case folders (three images) go")
    drop.add_argument("--truth", required=True, help="where the dropped images and segmentations go, per case")
    drop.add_argument("--layout", choices=["brats", *BRATS_NAMINGS], default="brats",
                      help="naming of --input: brats recognises every release's names")
    drop.add_argument("--split-file", nargs="+", default=None, metavar="PATH",
                      help="use only the cases of these .list files (e.g. your test split); default: all cases")
    drop.add_argument("--missing", nargs="+", default=list(BRATS_CONTRASTS), metavar="CONTRAST",
                      help="modalities that may be dropped (each about equally often)")
    drop.add_argument("--seed", type=int, default=0, help="seed of the choice of the dropped modality")
    drop.add_argument("--overwrite", action="store_true", help="replace case folders in --out and --truth")

    complete = commands.add_parser("complete", help="synthesise each case's missing modality", **kwargs)
    complete.add_argument("--input", required=True,
                          help="a folder of BraSyn case folders (each missing one modality), or one case folder")
    complete.add_argument("--models", nargs="+", required=True, metavar="TARGET=EXP_DIR",
                          help="the experiment (train.py's folder) that synthesises each target, e.g. "
                               "T1ce=results/exp_t1ce FLAIR=results/exp_flair")
    complete.add_argument("--out", required=True, help="where the completed case folders and the report go")
    complete.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    complete.add_argument("--batch_size", type=int, default=4, help="slices synthesised per forward pass")
    complete.add_argument("--seed", type=int, default=1024, help="sampling seed (set again for every case)")
    complete.add_argument("--epoch", type=epoch_choice, default=None,
                          help="use every experiment's gen_diffusive_{1,2}_EPOCH.pth, or best: "
                               "gen_diffusive_{1,2}_best.pth (default: gen_diffusive_{1,2}.pth, the latest)")
    complete.add_argument("--overwrite", action="store_true",
                          help="redo cases already complete in --out (by default they are kept)")
    add_volume_sampling_args(complete)
    add_speed_args(complete)

    score = commands.add_parser("score", help="volume SSIM and PSNR of the syntheses against the truth", **kwargs)
    score.add_argument("--completed", required=True, help="the folder brasyn.py complete wrote")
    score.add_argument("--truth", required=True, help="the folder brasyn.py drop kept the dropped images in")
    score.add_argument("--out", required=True, help="where volume_metrics.csv and volume_metrics.json go")
    score.add_argument("--model_resolution", type=int, default=None, metavar="N",
                       help="compute the 3-D coherence columns (per-plane SSIM, slice brightness, gradient ratio) "
                            "with each axial plane resized to N x N first, the model's --image_size; unset, on the "
                            "volumes' own grid; the other columns are unchanged")
    add_segment_args(commands.add_parser("segment", help="Dice and HD95 of a segmenter on real, completed, copied "
                                                         "and zero-filled inputs", **kwargs))
    add_export_args(commands.add_parser("export", help="completed cases in nnU-Net v2 naming, with dataset.json",
                                        **kwargs))
    return parser


def _segment(args: argparse.Namespace) -> list[dict]:
    """brasyn.py segment; imported here so the other subcommands do not wait seconds for MONAI to load."""
    from utils.seg.check import segment_cases

    return segment_cases(args)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Run one subcommand; returns its per-case rows."""
    args = build_parser().parse_args(argv)
    run = {"drop": drop_modalities, "complete": complete_cases, "score": score_cases, "segment": _segment,
           "export": export_nnunet}[args.command]
    return run(args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
