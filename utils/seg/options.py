"""brasyn.py segment's and export's options, defined once; importing them loads no MONAI (seconds of start-up)."""
from __future__ import annotations

import argparse

SEG_REPORT_NAME = "segmentation_metrics"  # segment: <out>/segmentation_metrics.{csv,json}


SEG_FIGURE_NAME = "segmentation_dice.png"


SEGMENTER_NAME = "segmenter.pt"  # segment: <out>/segmenter.pt


DEFAULT_CHANNELS = (16, 32, 64, 128)  # small enough to train on a CPU in minutes


def add_segment_args(parser: argparse.ArgumentParser) -> None:
    """brasyn.py segment's options."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--train", help="complete BraTS cases with seg files (any release's names) to train the "
                                        "segmenter on: the training split, never the held-out cases")
    source.add_argument("--segmenter", help=f"a {SEGMENTER_NAME} an earlier run wrote: score again without training")
    parser.add_argument("--truth", required=True, help="the folder brasyn.py drop kept the dropped images and segs in")
    parser.add_argument("--completed", required=True, help="the folder brasyn.py complete wrote")
    parser.add_argument("--out", required=True, help=f"where {SEG_REPORT_NAME}.csv/.json, {SEG_FIGURE_NAME} and "
                                                     f"{SEGMENTER_NAME} go")
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
    parser.add_argument("--out", required=True, help="the nnU-Net dataset folder (e.g. "
                                                     "$nnUNet_raw/Dataset900_BraSynCompleted)")
    parser.add_argument("--truth", default=None, help="the folder brasyn.py drop kept the segs in: also write the "
                                                      "labels (nnU-Net's BraTS values)")
    parser.add_argument("--as-training", action="store_true",
                        help="write imagesTr/ and labelsTr/ (needs --truth) instead of imagesTs/ and labelsTs/")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export in --out")
