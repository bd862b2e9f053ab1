"""Turn a dataset as distributed (NIfTI volumes) into the slice arrays that train.py and test.py read.

    python pre_process.py --layout brats --input MICCAI_BraTS_2019_Data_Training --output data/BRATS --dataset brats

writes <output>/<split>/<CONTRAST>.npy (float32, N x size x size, in [0, 1]), brain_mask.npy, lesion_mask.npy
(uint8), manifest.csv (which case and axial slice every row came from) and preprocess.json, with the original
recipe: per volume 1st/99th percentile clip of the voxels > 0 and min-max to [0, 1] (--normalize median, new:
anchored at the brain median instead), the middle --slices axial slices (--slices all, new: every slice with
brain), scikit-image resize to --size. Layouts
(utils/data/layouts.py): brats (a folder per case, files named as in BraTS 2019/2021,
<case>_t1/_t1ce/_t2/_flair/_seg.nii[.gz], or BraTS 2023+, <case>-t1n/-t1c/-t2w/-t2f/-seg.nii.gz, recognised per
case; brats2019, brats2021, brats2023 accept one scheme), isles (ISLES 2015 SISS: numbered case folders with
VSD.Brain.XX.O.MR_* and .OT. volumes) and folders (one folder per contrast, volumes paired by sorted name, as the
original README). The work is done by utils/data/preprocessing.py; every file is written under a temporary name and
renamed only when the whole run succeeds.
"""
import argparse
import sys
from typing import Sequence

from utils.core.errors import run_cli
from utils.data.layouts import LAYOUTS
from utils.data.preprocessing import DEFAULT_NORMALIZATION, NORMALIZATIONS, preprocess, slice_count


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--layout", choices=LAYOUTS, default=None,
                   help="how --input is organised (default: the --dataset name); brats recognises the BraTS 2019, "
                        "2021 and 2023 file names itself, brats2019/brats2021/brats2023 accept only those")
    p.add_argument("--input", required=True, help="the dataset folder as downloaded (or a folder per contrast)")
    p.add_argument("--output", required=True, help="where <split>/<CONTRAST>.npy go, e.g. data/BRATS")
    p.add_argument("--dataset", choices=["brats", "isles"], default=None,
                   help="use the paper's split lists data/<dataset>/{train,val,test}.list")
    p.add_argument("--split-file", nargs="+", default=None, metavar="PATH",
                   help="custom split: <split>.list files (one case id a line) or a folder of them")
    p.add_argument("--split", default=None, metavar="NAME", help="put every case found into this one split")
    p.add_argument("--contrasts", nargs="+", default=None,
                   help="contrasts to write (default: brats T1 T1ce T2 FLAIR, isles T1 T2 DWI FLAIR, folders all)")
    p.add_argument("--slices", type=slice_count, default=80, metavar="N|all",
                   help="middle axial slices taken per volume, or all: every slice from the first to the last with "
                        "brain (new; the volumes are read twice, once to count them)")
    p.add_argument("--size", type=int, default=256, help="slices are resized to SIZE x SIZE")
    p.add_argument("--normalize", choices=NORMALIZATIONS, default=DEFAULT_NORMALIZATION,
                   help="intensity scale per volume: percentile = the original's 1st/99th percentile clip; median "
                        "(new) = brain median at 0.2, so a large enhancing rim cannot darken the rest of the volume")
    p.add_argument("--no-labels", action="store_true", help="ignore lesion labels (no lesion_mask.npy)")
    p.add_argument("--workers", type=int, default=1, help="processes working on cases in parallel")
    p.add_argument("--overwrite", action="store_true", help="replace existing arrays in --output")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, int]:
    """Run the preprocessing; returns the number of slices written per split."""
    return preprocess(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(run_cli(main))
