"""pre_process.py's options, defined once (the script, docs/cli and the tests build its parser from here)."""
from __future__ import annotations

import argparse

from utils.core.options import ArgumentParser
from utils.data.layouts import LAYOUTS
from utils.data.preprocessing import DEFAULT_NORMALIZATION, NORMALIZATIONS, slice_count


def preprocess_parser(description: str | None = None) -> argparse.ArgumentParser:
    """pre_process.py's parser: each option under its canonical name first, the older spellings after it."""
    p = ArgumentParser("pre_process.py", description=description)
    p.add_argument("--layout", choices=LAYOUTS, default=None,
                   help="how --input is organised (default: the --dataset name); brats recognises the BraTS 2019, "
                        "2021 and 2023 file names itself, brats2019/brats2021/brats2023 accept only those")
    p.add_argument("--input", "--input_path", dest="input", required=True,
                   help="the dataset folder as downloaded (or a folder per contrast)")
    p.add_argument("--output", "--output_path", dest="output", required=True,
                   help="where <split>/<CONTRAST>.npy go, e.g. data/BRATS (train.py's --input_path)")
    p.add_argument("--dataset", choices=["brats", "isles"], default=None,
                   help="use the paper's split lists data/<dataset>/{train,val,test}.list")
    p.add_argument("--split_file", nargs="+", default=None, metavar="PATH",
                   help="custom split: <split>.list files (one case id a line) or a folder of them")
    # --split and --contrasts mean something else in train.py/test.py, so the canonical names differ.
    p.add_argument("--single_split", "--split", dest="split", default=None, metavar="NAME",
                   help="put every case found into this one split")
    p.add_argument("--write_contrasts", "--contrasts", dest="contrasts", nargs="+", default=None,
                   help="contrasts to write (default: brats T1 T1ce T2 FLAIR, isles T1 T2 DWI FLAIR, folders all)")
    p.add_argument("--slices", type=slice_count, default=80, metavar="N|all",
                   help="middle axial slices taken per volume, or all: every slice from the first to the last with "
                        "brain (new; the volumes are read twice, once to count them)")
    p.add_argument("--image_size", "--size", dest="size", type=int, default=256,
                   help="slices are resized to SIZE x SIZE (train.py's --image_size)")
    p.add_argument("--normalize", choices=NORMALIZATIONS, default=DEFAULT_NORMALIZATION,
                   help="intensity scale per volume: percentile = the original's 1st/99th percentile clip; median "
                        "(new) = brain median at 0.2, so a large enhancing rim cannot darken the rest of the volume")
    p.add_argument("--no_labels", action="store_true", help="ignore lesion labels (no lesion_mask.npy)")
    p.add_argument("--workers", type=int, default=1, help="processes working on cases in parallel")
    p.add_argument("--overwrite", action="store_true", help="replace existing arrays in --output")
    return p
