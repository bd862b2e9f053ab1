"""Turn a dataset as distributed (NIfTI volumes) into the slice arrays that train.py and test.py read.

    python pre_process.py --layout brats --input MICCAI_BraTS_2019_Data_Training --output data/BRATS --dataset brats

writes <output>/<split>/<CONTRAST>.npy (float32, N x size x size, in [0, 1]), brain_mask.npy, lesion_mask.npy
(uint8), manifest.csv (which case and axial slice every row came from) and preprocess.json, with the original
recipe: per volume 1st/99th percentile clip of the voxels > 0 and min-max to [0, 1] (--normalize median, new:
anchored at the brain median instead), the middle --slices axial slices (--slices all, new: every slice with
brain), scikit-image resize to --image_size. Layouts
(utils/data/layouts.py): brats (a folder per case, files named as in BraTS 2019/2021,
<case>_t1/_t1ce/_t2/_flair/_seg.nii[.gz], or BraTS 2023+, <case>-t1n/-t1c/-t2w/-t2f/-seg.nii.gz, recognised per
case; brats2019, brats2021, brats2023 accept one scheme), isles (ISLES 2015 SISS: numbered case folders with
VSD.Brain.XX.O.MR_* and .OT. volumes) and folders (one folder per contrast, volumes paired by sorted name, as the
original README). The work is done by utils/data/preprocessing.py; every file is written under a temporary name and
renamed only when the whole run succeeds.
"""
import sys
from typing import Sequence

from utils.core.errors import run_cli
from utils.data.preprocess_options import preprocess_parser
from utils.data.preprocessing import preprocess


def main(argv: Sequence[str] | None = None) -> dict[str, int]:
    """Run the preprocessing; returns the number of slices written per split."""
    return preprocess(preprocess_parser(__doc__.split("\n\n")[0]).parse_args(argv))


if __name__ == "__main__":
    sys.exit(run_cli(main))
