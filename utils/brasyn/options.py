"""brasyn.py's options, defined once: the script, docs/cli and the tests build its parser from here."""
from __future__ import annotations

import argparse

from utils.core.artifacts import REFINER_NAME, SEG_FIGURE_NAME, SEG_REPORT_NAME, SEGMENTER_NAME
from utils.core.options import (
    ArgumentParser,
    add_shared_noise_arg,
    add_speed_args,
    add_volume_sampling_args,
    epoch_choice,
)
from utils.data.layouts import BRATS_CONTRASTS, BRATS_NAMINGS

DEFAULT_CHANNELS = (16, 32, 64, 128)  # the segmenter's U-Net widths: small enough to train on a CPU in minutes


def brasyn_parser(description: str | None = None) -> argparse.ArgumentParser:
    """brasyn.py's parser: the six subcommands and their options."""
    parser = ArgumentParser("brasyn.py", description=description)
    # The subcommands' parsers are ArgumentParsers too (argparse makes them of the parent's class).
    commands = parser.add_subparsers(dest="command", required=True,
                                     metavar="{drop,complete,refine,score,segment,export}")

    drop = commands.add_parser("drop", help="make BraSyn-style cases (one modality dropped) from complete ones")
    drop.add_argument("--input", "--input_path", dest="input", required=True,
                      help="complete BraTS cases (2019, 2021 or 2023 names)")
    drop.add_argument("--out", "--output_path", dest="out", required=True,
                      help="where the BraSyn-style case folders (three images) go")
    drop.add_argument("--truth", required=True, help="where the dropped images and segmentations go, per case")
    drop.add_argument("--layout", choices=["brats", *BRATS_NAMINGS], default="brats",
                      help="naming of --input: brats recognises every release's names")
    drop.add_argument("--split_file", nargs="+", default=None, metavar="PATH",
                      help="use only the cases of these .list files (e.g. your test split); default: all cases")
    drop.add_argument("--missing", nargs="+", default=list(BRATS_CONTRASTS), metavar="CONTRAST",
                      help="modalities that may be dropped (each about equally often)")
    drop.add_argument("--seed", type=int, default=0, help="seed of the choice of the dropped modality")
    drop.add_argument("--overwrite", action="store_true", help="replace case folders in --out and --truth")

    complete = commands.add_parser("complete", help="synthesise each case's missing modality")
    complete.add_argument("--input", "--input_path", dest="input", required=True,
                          help="a folder of BraSyn case folders (each missing one modality), or one case folder")
    complete.add_argument("--models", nargs="+", required=True, metavar="TARGET=EXP_DIR",
                          help="the experiment (train.py's folder) that synthesises each target, e.g. "
                               "T1ce=results/exp_t1ce FLAIR=results/exp_flair")
    complete.add_argument("--out", "--output_path", dest="out", required=True,
                      help="where the completed case folders and the report go")
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

    add_refine_args(commands.add_parser("refine", help="train an experiment's 3-D refiner (used by complete --refine) "
                                                       "on complete training cases"))

    add_score_args(commands.add_parser("score", help="volume SSIM and PSNR of the syntheses against the truth"))
    add_segment_args(commands.add_parser("segment", help="Dice and HD95 of a segmenter on real, completed, copied "
                                                         "and zero-filled inputs"))
    add_export_args(commands.add_parser("export", help="completed cases in nnU-Net v2 naming, with dataset.json"))
    return parser


def add_score_args(parser: argparse.ArgumentParser) -> None:
    """brasyn.py score's options."""
    parser.add_argument("--completed", required=True, help="the folder brasyn.py complete wrote")
    parser.add_argument("--truth", required=True, help="the folder brasyn.py drop kept the dropped images in")
    parser.add_argument("--out", "--output_path", dest="out", required=True,
                        help="where volume_metrics.csv and volume_metrics.json go")
    parser.add_argument("--model_resolution", type=int, default=None, metavar="N",
                        help="compute the 3-D coherence columns (per-plane SSIM, slice brightness, gradient ratio) "
                             "with each axial plane resized to N x N first, the model's --image_size; unset, on the "
                             "volumes' own grid; the other columns are unchanged")
    parser.add_argument("--slice_range", type=int, nargs=2, default=None, metavar=("FIRST", "LAST"),
                        help="axial slices (0-based, inclusive) that the *_inside columns score, the rest go to "
                             "*_outside; default: the range each model was trained on, from --completed's "
                             "brasyn_report.json (e.g. 37 116 for the published BraTS weights, which record none)")


def add_refine_args(parser: argparse.ArgumentParser) -> None:
    """brasyn.py refine's options."""
    parser.add_argument("--train", required=True, help="complete BraTS cases (all four modalities) of the training "
                                                       "split: the refiner learns from the model's syntheses of them")
    parser.add_argument("--models", nargs="+", required=True, metavar="TARGET=EXP_DIR",
                        help=f"the experiments to train a refiner for; each gets EXP_DIR/{REFINER_NAME}")
    parser.add_argument("--epoch", type=epoch_choice, default=None,
                        help="refine the syntheses of gen_diffusive_{1,2}_EPOCH.pth or _best.pth (default: the "
                             "latest); complete --refine should use the same")
    parser.add_argument("--steps", type=int, default=1000, help="training steps")
    parser.add_argument("--crop_slices", type=int, default=16,
                        help="consecutive axial slices per training crop (whole planes at the model's resolution)")
    parser.add_argument("--crops_per_step", type=int, default=2, help="crops per training step")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--through_plane_weight", type=float, default=1.0,
                        help="weight of the loss on slice-to-slice differences (against the truth's) beside the "
                             "brain L1; 0 = L1 alone")
    parser.add_argument("--lesion_weight", type=float, default=0.0, metavar="W",
                        help="inside the training cases' tumour (seg above 0) the brain L1 counts 1 + W times "
                             "(0: every brain voxel alike)")
    parser.add_argument("--width", type=int, default=16, help="the refiner's feature channels")
    parser.add_argument("--blocks", type=int, default=4, help="the refiner's residual blocks (3-D, 3 x 3 x 3)")
    parser.add_argument("--batch_size", type=int, default=4, help="slices synthesised per forward pass")
    parser.add_argument("--seed", type=int, default=1024,
                        help="sampling seed of every case (complete's default) and seed of the training")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--overwrite", action="store_true", help=f"replace an existing {REFINER_NAME}")
    add_shared_noise_arg(parser)
    add_speed_args(parser)


def add_segment_args(parser: argparse.ArgumentParser) -> None:
    """brasyn.py segment's options."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--train", help="complete BraTS cases with seg files (any release's names) to train the "
                                        "segmenter on: the training split, never the held-out cases")
    source.add_argument("--segmenter", help=f"a {SEGMENTER_NAME} an earlier run wrote: score again without training")
    parser.add_argument("--truth", required=True, help="the folder brasyn.py drop kept the dropped images and segs in")
    parser.add_argument("--completed", required=True, help="the folder brasyn.py complete wrote")
    parser.add_argument("--out", "--output_path", dest="out", required=True,
                        help=f"where {SEG_REPORT_NAME}.csv/.json, {SEG_FIGURE_NAME} and {SEGMENTER_NAME} go")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs over every brain slice")
    parser.add_argument("--batch_size", type=int, default=16, help="slices per training step and per prediction")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--image_size", type=int, default=128, help="axial slices are resized to this square size")
    parser.add_argument("--channels", type=int, nargs="+", default=list(DEFAULT_CHANNELS),
                        help="U-Net widths per level (each level halves the size)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, the shuffling and the flips")


def add_export_args(parser: argparse.ArgumentParser) -> None:
    """brasyn.py export's options."""
    parser.add_argument("--completed", required=True, help="the folder brasyn.py complete wrote")
    parser.add_argument("--out", "--output_path", dest="out", required=True, help="the nnU-Net dataset folder (e.g. "
                                                     "$nnUNet_raw/Dataset900_BraSynCompleted)")
    parser.add_argument("--truth", default=None, help="the folder brasyn.py drop kept the segs in: also write the "
                                                      "labels (nnU-Net's BraTS values)")
    parser.add_argument("--as_training", action="store_true",
                        help="write imagesTr/ and labelsTr/ (needs --truth) instead of imagesTs/ and labelsTs/")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export in --out")
