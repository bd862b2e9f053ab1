"""pre_process.py on small phantom datasets in every layout: the original recipe, masks, manifest, splits, bad input."""
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import NIFTI_DAMAGE, damage_nifti, preprocess_cli
from skimage.transform import resize

import utils.data.preprocessing as preprocessing
from demo import make_sample_data as phantom
from utils.core.errors import UserError
from utils.data.layouts import BRATS_NAMINGS, match_brats_file, relabel
from utils.data.preprocess_options import preprocess_parser

ROOT = Path(__file__).resolve().parents[1]
SIZE, DEPTH, SLICES, OUT_SIZE = 48, 24, 8, 64
CASES = [phantom.case_name(i) for i in (1, 2, 3, 4)]
SPLITS = {"train": CASES[:2], "val": CASES[2:3], "test": CASES[3:]}


def _write_lists(folder: Path, splits: dict[str, list[str]]) -> Path:
    """<split>.list files."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, ids in splits.items():
        (folder / f"{split}.list").write_text("".join(f"{i}\n" for i in ids))
    return folder


@pytest.fixture(scope="module")
def brats_root(tmp_path_factory) -> Path:
    """Four small BraTS-layout phantom cases and their split lists."""
    root = tmp_path_factory.mktemp("brats")
    for i, case in enumerate(CASES):
        phantom.make_case(case, root / "cases", size=SIZE, seed=i, depth=DEPTH)
    _write_lists(root / "splits", SPLITS)
    return root


@pytest.fixture(scope="module")
def brats_out(brats_root: Path) -> Path:
    """The BraTS phantom preprocessed in-process."""
    out = brats_root / "out"
    preprocess_cli(["--layout", "brats", "--input", str(brats_root / "cases"), "--split-file",
                      str(brats_root / "splits"), "--output", str(out), "--slices", str(SLICES), "--size",
                      str(OUT_SIZE)])
    return out


def _run(cases: Path, out: Path, splits: Path, *extra: str) -> dict:
    """preprocess_cli on a BraTS-layout folder."""
    return preprocess_cli(["--layout", "brats", "--input", str(cases), "--split-file", str(splits), "--output",
                             str(out), "--slices", str(SLICES), "--size", str(OUT_SIZE), *extra])


def _manifest(path: Path) -> list[tuple[int, str, int]]:
    """Rows of a manifest.csv."""
    with open(path, newline="") as fh:
        return [(int(r["index"]), r["case_id"], int(r["slice_index"])) for r in csv.DictReader(fh)]


def _recipe(path: Path) -> np.ndarray:
    """The original recipe written out independently: percentile clip, min-max, middle slices, skimage resize."""
    vol = nib.load(str(path)).get_fdata()
    low, high = np.percentile(vol[vol > 0], [1, 99])
    vol = np.clip(vol, low, high)
    vol = (vol - vol.min()) / (vol.max() - vol.min())
    start = (vol.shape[2] - SLICES) // 2
    slices = [resize(vol[:, :, k], (OUT_SIZE, OUT_SIZE), mode="constant", anti_aliasing=True)
              for k in range(start, start + SLICES)]
    return np.stack(slices).astype(np.float32)


def _files(folder: Path) -> list[str]:
    """Every file below a folder (temporaries included), relative names."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _copy_cases(src: Path, dst: Path) -> Path:
    """A private copy of the phantom cases to damage."""
    shutil.copytree(src / "cases", dst / "cases")
    return dst / "cases"


def _nifti(path: Path, data: np.ndarray) -> None:
    """Replace a NIfTI file's voxels."""
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


# ------------------------------------------------------------------------------------------------ layouts

def test_brats_output_follows_the_original_recipe(brats_root: Path, brats_out: Path) -> None:
    """Every split: float32 (cases*slices, S, S) in [0, 1]; rows equal the recipe computed independently."""
    for split, ids in SPLITS.items():
        arrays = {c: np.load(brats_out / split / f"{c}.npy") for c in ("T1", "T1ce", "T2", "FLAIR")}
        for arr in arrays.values():
            assert arr.dtype == np.float32 and arr.shape == (len(ids) * SLICES, OUT_SIZE, OUT_SIZE)
            assert arr.min() == 0.0 and arr.max() <= 1.0 and arr.max() > 0.9
        for pos, case in enumerate(ids):
            rows = slice(pos * SLICES, (pos + 1) * SLICES)
            expected = _recipe(brats_root / "cases" / case / f"{case}_flair.nii.gz")
            np.testing.assert_array_equal(arrays["FLAIR"][rows], expected)


def _tissue_with_bright_region(fraction: float) -> np.ndarray:
    """A volume of tissue around 100 whose brightest `fraction` of voxels (a 'rim') sits at 400."""
    rng = np.random.default_rng(3)
    vol = rng.normal(100, 10, (40, 40, 40))
    vol.flat[: int(fraction * vol.size)] = 400
    return vol


def test_median_normalization_is_not_moved_by_a_bright_region() -> None:
    """--normalize median: the median sits at 0.2 whatever the rim's size; the original's percentile scale does not."""
    small, large = _tissue_with_bright_region(0.003), _tissue_with_bright_region(0.03)
    tissue = slice(len(small.flat) // 2, None)  # voxels that are tissue in both volumes

    def tissue_mean(vol: np.ndarray, method: str) -> float:
        return float(preprocessing.normalize_volume(vol, method=method).flat[tissue].mean())

    assert tissue_mean(large, "percentile") < 0.5 * tissue_mean(small, "percentile")
    assert abs(tissue_mean(large, "median") - tissue_mean(small, "median")) < 0.01
    norm = preprocessing.normalize_volume(small, method="median")
    assert abs(np.median(norm) - 1 / preprocessing.MEDIAN_SPAN) < 1e-6 and norm.min() == 0 and norm.max() == 1
    flat = np.where(small > 105, small, 50.0)  # more than half the voxels at one low value: no median scale
    with pytest.raises(UserError, match="--normalize median has no scale.*--normalize percentile"):
        preprocessing.normalize_volume(flat, "case X T2", method="median")


def test_normalize_median_is_written_and_read_back(brats_root: Path, brats_out: Path, tmp_path: Path) -> None:
    """pre_process.py --normalize median: arrays follow the median recipe, preprocess.json says so."""
    out = tmp_path / "median"
    _run(brats_root / "cases", out, brats_root / "splits", "--normalize", "median")
    case = SPLITS["train"][0]
    vol = nib.load(str(brats_root / "cases" / case / f"{case}_t1ce.nii.gz")).get_fdata()
    low, median = np.percentile(vol[vol > 0], [1, 50])
    high = low + preprocessing.MEDIAN_SPAN * (median - low)
    start = (vol.shape[2] - SLICES) // 2
    expected = [resize((np.clip(vol[:, :, k], low, high) - low) / (high - low), (OUT_SIZE, OUT_SIZE),
                       mode="constant", anti_aliasing=True) for k in range(start, start + SLICES)]
    np.testing.assert_allclose(np.load(out / "train" / "T1ce.npy")[:SLICES], np.stack(expected), atol=1e-6)
    assert preprocessing.split_normalization(out / "train") == "median"
    assert preprocessing.split_normalization(brats_out / "train") == "percentile"
    assert preprocessing.split_normalization(tmp_path) == "percentile"  # no preprocess.json: user-made arrays
    (tmp_path / "preprocess.json").write_text('{"normalize": "zscore"}')
    with pytest.raises(UserError, match="unknown normalize 'zscore'"):
        preprocessing.split_normalization(tmp_path)


def test_manifest_and_split_membership(brats_out: Path) -> None:
    """manifest.csv traces each row to its case and axial slice; each split holds exactly its listed cases."""
    start = (DEPTH - SLICES) // 2
    for split, ids in SPLITS.items():
        rows = _manifest(brats_out / split / "manifest.csv")
        assert [r[0] for r in rows] == list(range(len(ids) * SLICES))
        assert [r[1] for r in rows] == [c for c in ids for _ in range(SLICES)]
        assert [r[2] for r in rows] == list(range(start, start + SLICES)) * len(ids)
    assert not set(SPLITS["train"]) & {r[1] for r in _manifest(brats_out / "test" / "manifest.csv")}


def test_masks_are_aligned_with_the_slices(brats_root: Path, brats_out: Path) -> None:
    """Lesion mask = resized label > 0 and sits on the bright FLAIR oedema; brain mask covers the head."""
    flair = np.load(brats_out / "train" / "FLAIR.npy")
    lesion = np.load(brats_out / "train" / "lesion_mask.npy")
    brain = np.load(brats_out / "train" / "brain_mask.npy")
    assert lesion.dtype == np.uint8 and brain.dtype == np.uint8 and set(np.unique(lesion)) == {0, 1}
    assert lesion.shape == brain.shape == flair.shape
    assert np.all(brain[lesion > 0])
    assert flair[lesion > 0].mean() > 1.5 * flair[(brain > 0) & (lesion == 0)].mean()
    # Transposing or shifting the mask must break the overlap: the check above depends on alignment.
    shifted = np.roll(lesion, OUT_SIZE // 3, axis=2)
    assert flair[shifted > 0].mean() < flair[lesion > 0].mean()
    assert (flair[brain == 0] < 0.05).mean() > 0.95
    seg = nib.load(str(brats_root / "cases" / CASES[0] / f"{CASES[0]}_seg.nii.gz")).get_fdata()
    start = (DEPTH - SLICES) // 2
    label_rows = np.moveaxis(seg[:, :, start:start + SLICES] > 0, 2, 0)
    assert lesion[:SLICES].sum() == pytest.approx(label_rows.sum() * (OUT_SIZE / SIZE) ** 2, rel=0.15)


def test_cases_under_hgg_and_lgg_with_workers(brats_root: Path, brats_out: Path, tmp_path: Path) -> None:
    """BraTS 2019 keeps cases under HGG/ and LGG/; two worker processes give the same arrays as one."""
    nested = tmp_path / "MICCAI_BraTS_2019_Data_Training"
    for i, case in enumerate(CASES):
        (nested / ("HGG" if i % 2 else "LGG")).mkdir(parents=True, exist_ok=True)
        (nested / ("HGG" if i % 2 else "LGG") / case).symlink_to(brats_root / "cases" / case)
    _run(nested, tmp_path / "out", brats_root / "splits", "--workers", "2")
    for split in SPLITS:
        for name in ("T1ce.npy", "lesion_mask.npy", "brain_mask.npy"):
            np.testing.assert_array_equal(np.load(tmp_path / "out" / split / name),
                                          np.load(brats_out / split / name))


@pytest.mark.parametrize("naming, layout", [("brats2023", "brats"), ("brats2023", "brats2023"),
                                            ("brats2021", "brats"), ("brats2021", "brats2021")])
def test_later_brats_names_give_the_same_arrays(brats_out: Path, tmp_path: Path, naming: str, layout: str) -> None:
    """The same phantoms named as BraTS 2021 or 2023 name them (2023: labels 1, 2, 3) give the 2019 arrays and masks."""
    renamed = {case: phantom.case_name(i + 1, naming) for i, case in enumerate(CASES)}
    for i, case in enumerate(CASES):
        phantom.make_case(renamed[case], tmp_path / "cases", size=SIZE, seed=i, depth=DEPTH, naming=naming)
    lists = _write_lists(tmp_path / "lists", {k: [renamed[c] for c in v] for k, v in SPLITS.items()})
    preprocess_cli(["--layout", layout, "--input", str(tmp_path / "cases"), "--split-file", str(lists), "--output",
                      str(tmp_path / "out"), "--slices", str(SLICES), "--size", str(OUT_SIZE)])
    for split in SPLITS:
        for name in ("T1.npy", "T1ce.npy", "T2.npy", "FLAIR.npy", "lesion_mask.npy", "brain_mask.npy"):
            np.testing.assert_array_equal(np.load(tmp_path / "out" / split / name), np.load(brats_out / split / name))
        info = json.loads((tmp_path / "out" / split / "preprocess.json").read_text())
        assert info["naming"] == [naming] and info["layout"] == layout


def test_brats_file_names_of_every_release() -> None:
    """Each release's names map to our contrasts; 2021 files are told from 2019 ones by the case id alone."""
    namings = list(BRATS_NAMINGS.values())
    cases = {"BraTS19_CBICA_AAB_1_t1ce.nii.gz": ("brats2019", "BraTS19_CBICA_AAB_1", "T1ce"),
             "BraTS2021_00000_FLAIR.nii": ("brats2021", "BraTS2021_00000", "FLAIR"),
             "BraTS2021_00000_seg.nii.gz": ("brats2021", "BraTS2021_00000", "label"),
             "BraTS-GLI-00000-000-t1n.nii.gz": ("brats2023", "BraTS-GLI-00000-000", "T1"),
             "BraTS-MEN-00004-000-t2f.nii.gz": ("brats2023", "BraTS-MEN-00004-000", "FLAIR"),
             "BraTS-PED-00001-000-t1c.nii.gz": ("brats2023", "BraTS-PED-00001-000", "T1ce"),
             "BraTS-SSA-00002-000-t2w.nii.gz": ("brats2023", "BraTS-SSA-00002-000", "T2")}
    for name, expected in cases.items():
        naming, case_id, kind = match_brats_file(name, namings)
        assert (naming.name, case_id, kind) == expected, name
        assert naming.file_name(case_id, kind, ".nii").lower() == name.lower().removesuffix(".gz")
    for name in ("BraTS-GLI-00000-000_t1n.nii.gz", "case_t1ce.txt", "BraTS-GLI-00000-000-t1ce.nii.gz", "seg.nii"):
        assert match_brats_file(name, namings) is None, name
    seg = np.array([0, 1, 2, 4, 4])
    assert relabel(seg, "brats2019", "brats2023").tolist() == [0, 1, 2, 3, 3]
    assert relabel(relabel(seg, "brats2019", "brats2023"), "brats2023", "brats2021").tolist() == seg.tolist()


def test_layout_naming_one_release_only(brats_root: Path, tmp_path: Path) -> None:
    """--layout brats2023 finds no 2019-named cases and says what it looks for."""
    _expect_error(brats_root / "cases", brats_root / "splits", tmp_path,
                  "no brats2023 cases found .*BraTS-GLI-00000-000-t1n.nii.gz", "--layout", "brats2023")


def test_folder_mixing_namings_is_refused(brats_root: Path, tmp_path: Path) -> None:
    """A case folder with a 2019-named and a 2023-named file is ambiguous."""
    cases = _copy_cases(brats_root, tmp_path)
    shutil.copy(cases / CASES[0] / f"{CASES[0]}_t2.nii.gz", cases / CASES[0] / "BraTS-GLI-00001-000-t2w.nii.gz")
    _expect_error(cases, brats_root / "splits", tmp_path, f"{CASES[0]} mixes BraTS naming schemes")


def test_isles_layout(tmp_path: Path) -> None:
    """ISLES 2015 SISS folders (numbered cases, VSD.Brain.* sub-folders) give T1, T2, DWI, FLAIR and masks."""
    for n in (1, 2, 3):
        phantom.make_isles_case(n, tmp_path / "SISS2015_Training", size=SIZE, seed=n, depth=DEPTH)
    lists = _write_lists(tmp_path / "lists", {"train": ["1", "03"], "test": ["2"]})
    preprocess_cli(["--layout", "isles", "--input", str(tmp_path), "--split-file", str(lists), "--output",
                      str(tmp_path / "out"), "--slices", str(SLICES), "--size", str(OUT_SIZE)])
    train = tmp_path / "out" / "train"
    assert sorted(p.name for p in train.glob("*.npy")) == ["DWI.npy", "FLAIR.npy", "T1.npy", "T2.npy",
                                                          "brain_mask.npy", "lesion_mask.npy"]
    assert [r[1] for r in _manifest(train / "manifest.csv")][::SLICES] == ["1", "3"]
    dwi, lesion = np.load(train / "DWI.npy"), np.load(train / "lesion_mask.npy")
    brain = np.load(train / "brain_mask.npy")
    assert lesion.sum() > 0 and dwi[lesion > 0].mean() > 1.3 * dwi[(brain > 0) & (lesion == 0)].mean()


def _contrast_folders(root: Path, cases_dir: Path, cases: list[str]) -> Path:
    """The original README layout: a folder per contrast (mixed capitalisation) holding links to the volumes."""
    for kind, folder in (("t1", "T1"), ("t1ce", "t1ce"), ("t2", "T2"), ("flair", "Flair"), ("seg", "seg")):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for case in cases:
            (root / folder / f"{case}_{kind}.nii.gz").symlink_to(cases_dir / case / f"{case}_{kind}.nii.gz")
    return root


def test_folders_layout_pairs_by_name(brats_root: Path, brats_out: Path, tmp_path: Path) -> None:
    """A folder per contrast gives canonical file names and exactly the BraTS-layout arrays for the same cases."""
    folders = _contrast_folders(tmp_path / "folders", brats_root / "cases", CASES)
    preprocess_cli(["--layout", "folders", "--input", str(folders), "--split-file", str(brats_root / "splits"),
                      "--output", str(tmp_path / "out"), "--slices", str(SLICES), "--size", str(OUT_SIZE)])
    for split in SPLITS:
        for name in ("T1.npy", "T1ce.npy", "T2.npy", "FLAIR.npy", "lesion_mask.npy"):
            np.testing.assert_array_equal(np.load(tmp_path / "out" / split / name),
                                          np.load(brats_out / split / name))


def test_folders_layout_with_split_subfolders(brats_root: Path, tmp_path: Path) -> None:
    """train/ and test/ sub-folders, each with contrast folders, become those splits without any list."""
    _contrast_folders(tmp_path / "in" / "train", brats_root / "cases", CASES[:3])
    _contrast_folders(tmp_path / "in" / "test", brats_root / "cases", CASES[3:])
    counts = preprocess_cli(["--layout", "folders", "--input", str(tmp_path / "in"), "--output",
                               str(tmp_path / "out"), "--slices", str(SLICES), "--size", str(OUT_SIZE),
                               "--contrasts", "flair", "T1"])
    assert counts == {"test": SLICES, "train": 3 * SLICES}
    assert sorted(p.name for p in (tmp_path / "out" / "test").glob("*.npy")) == [
        "FLAIR.npy", "T1.npy", "brain_mask.npy", "lesion_mask.npy"]


def test_folders_with_unmatched_names_are_refused(brats_root: Path, tmp_path: Path) -> None:
    """Volumes paired by sorted name must name the same case; otherwise slices would not line up."""
    folders = _contrast_folders(tmp_path / "f", brats_root / "cases", CASES[:2])
    (folders / "T2" / f"{CASES[1]}_t2.nii.gz").rename(folders / "T2" / "zz_other_t2.nii.gz")
    with pytest.raises(UserError, match="do not match"):
        preprocess_cli(["--layout", "folders", "--input", str(folders), "--split", "test", "--output",
                          str(tmp_path / "out"), "--slices", str(SLICES)])


def test_refuses_to_overwrite_and_replaces_with_flag(brats_root: Path, tmp_path: Path) -> None:
    """Existing arrays (any capitalisation) stop the run; --overwrite replaces them and removes the old spelling."""
    out = tmp_path / "out"
    (out / "test").mkdir(parents=True)
    np.save(out / "test" / "t1ce.npy", np.zeros((1, 2, 2), np.float32))
    with pytest.raises(UserError, match="--overwrite"):
        _run(brats_root / "cases", out, brats_root / "splits")
    assert _files(out) == ["test/t1ce.npy"]
    _run(brats_root / "cases", out, brats_root / "splits", "--overwrite")
    assert "test/t1ce.npy" not in _files(out) and np.load(out / "test" / "T1ce.npy").shape[0] == SLICES


def test_interrupted_run_leaves_nothing(brats_root: Path, tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C during the third case: no array, manifest or temporary file remains, and no new folder."""
    real, calls = preprocessing.process_case, []

    def interrupted(job: preprocessing.CaseJob) -> dict:
        """Process the first two cases, then behave as if the user pressed Ctrl-C."""
        calls.append(job.case.case_id)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(preprocessing, "process_case", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(brats_root / "cases", tmp_path / "out", brats_root / "splits")
    assert len(calls) == 3 and not (tmp_path / "out").exists()


def test_real_subprocess_run(brats_root: Path, tmp_path: Path) -> None:
    """The script runs as a command; a bad option ends with one `error:` line and status 2, no traceback."""
    cmd = [sys.executable, str(ROOT / "pre_process.py"), "--layout", "brats", "--input", str(brats_root / "cases"),
           "--split-file", str(brats_root / "splits" / "test.list"), "--output", str(tmp_path / "out"),
           "--slices", str(SLICES), "--size", "32"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "1 case x 8 slices" in done.stdout
    assert np.load(tmp_path / "out" / "test" / "T2.npy").shape == (SLICES, 32, 32)
    bad = subprocess.run(cmd[:-4] + ["--slices", "500"], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("error: case BraTS19_Phantom_0004 has 24 axial slices")


# ---------------------------------------------------------------------------------------------- bad input

def _expect_error(cases: Path, splits: Path, tmp_path: Path, pattern: str, *extra: str) -> None:
    """The run stops with a UserError matching `pattern` and writes nothing."""
    out = tmp_path / "out"
    with pytest.raises(UserError, match=pattern) as err:
        _run(cases, out, splits, *extra)
    assert "\n" not in str(err.value)
    assert _files(out) == [] and not out.exists()


def test_bad_missing_contrast(brats_root: Path, tmp_path: Path) -> None:
    """A case without its FLAIR file."""
    cases = _copy_cases(brats_root, tmp_path)
    (cases / CASES[2] / f"{CASES[2]}_flair.nii.gz").unlink()
    _expect_error(cases, brats_root / "splits", tmp_path, f"case {CASES[2]} has no FLAIR volume .*_flair.nii.gz")


def test_bad_shapes_differ(brats_root: Path, tmp_path: Path) -> None:
    """A case whose T2 is on another grid."""
    cases = _copy_cases(brats_root, tmp_path)
    _nifti(cases / CASES[1] / f"{CASES[1]}_t2.nii.gz", np.ones((SIZE, SIZE - 4, DEPTH), np.int16))
    _expect_error(cases, brats_root / "splits", tmp_path, f"case {CASES[1]}: volumes have different shapes")


@pytest.mark.parametrize("shape", [(SIZE, SIZE), (SIZE, SIZE, DEPTH, 3)], ids=["2-D", "4-D"])
def test_bad_dimensions(brats_root: Path, tmp_path: Path, shape: tuple) -> None:
    """A 2-D slice or a 4-D series where a 3-D volume belongs."""
    cases = _copy_cases(brats_root, tmp_path)
    _nifti(cases / CASES[0] / f"{CASES[0]}_t1.nii.gz", np.ones(shape, np.int16))
    _expect_error(cases, brats_root / "splits", tmp_path, f"case {CASES[0]} T1: .*{len(shape)}-D")


def test_bad_all_zero_volume(brats_root: Path, tmp_path: Path) -> None:
    """An empty volume in the last case: found while processing, after other cases were done; nothing is left."""
    cases = _copy_cases(brats_root, tmp_path)
    _nifti(cases / CASES[2] / f"{CASES[2]}_t1ce.nii.gz", np.zeros((SIZE, SIZE, DEPTH), np.int16))
    _expect_error(cases, brats_root / "splits", tmp_path, f"case {CASES[2]} T1ce .*no voxel above zero")


def test_bad_nan_voxels(brats_root: Path, tmp_path: Path) -> None:
    """NaN voxels in a float volume."""
    cases = _copy_cases(brats_root, tmp_path)
    path = cases / CASES[3] / f"{CASES[3]}_flair.nii.gz"
    data = nib.load(str(path)).get_fdata().astype(np.float32)
    data[3, 4, 5] = np.nan
    _nifti(path, data)
    _expect_error(cases, brats_root / "splits", tmp_path, f"case {CASES[3]} FLAIR .*1 NaN or infinite voxels")


def test_bad_listed_case_missing_on_disk(brats_root: Path, tmp_path: Path) -> None:
    """A split list naming a case that is not under --input."""
    lists = _write_lists(tmp_path / "lists", {"train": CASES[:2] + ["BraTS19_CBICA_AAB_1"], "test": CASES[3:]})
    _expect_error(brats_root / "cases", lists, tmp_path, "split train lists case BraTS19_CBICA_AAB_1, not found")


def test_bad_unknown_contrast(brats_root: Path, tmp_path: Path) -> None:
    """A contrast the layout does not have."""
    _expect_error(brats_root / "cases", brats_root / "splits", tmp_path, "unknown contrast 'PD' for the brats",
                  "--contrasts", "T1", "PD")


def test_bad_fewer_slices_than_asked(brats_root: Path, tmp_path: Path) -> None:
    """--slices larger than the volumes' depth."""
    _expect_error(brats_root / "cases", brats_root / "splits", tmp_path,
                  f"case {CASES[3]} has {DEPTH} axial slices, fewer than the 30 asked for", "--slices", "30")


def test_bad_case_in_two_splits(brats_root: Path, tmp_path: Path) -> None:
    """The same case in train and test would leak test data into training."""
    lists = _write_lists(tmp_path / "lists", {"train": CASES[:2], "test": CASES[1:2]})
    _expect_error(brats_root / "cases", lists, tmp_path, f"case {CASES[1]} is listed in both test and train")


@pytest.mark.parametrize("how", NIFTI_DAMAGE)
def test_bad_corrupt_nifti(brats_root: Path, tmp_path: Path, how: str) -> None:
    """A cut-off or empty file, or a header whose affine is NaN or all zero, in the last case: one line naming the
    file, nothing written (the truncated data is only met while processing, after the other cases)."""
    cases = _copy_cases(brats_root, tmp_path)
    path = cases / CASES[3] / f"{CASES[3]}_t2.nii.gz"
    damage_nifti(path, how)
    reason = {"truncated": "truncated or damaged", "empty": "not a readable NIfTI file",
              "nan_affine": "affine has NaN", "zero_affine": "affine is singular"}[how]
    _expect_error(cases, brats_root / "splits", tmp_path, f"case {CASES[3]} T2: .*{path.name}.* {reason}")


def test_bad_corrupt_label(brats_root: Path, tmp_path: Path) -> None:
    """A cut-off label volume is refused like an image."""
    cases = _copy_cases(brats_root, tmp_path)
    damage_nifti(cases / CASES[1] / f"{CASES[1]}_seg.nii.gz", "truncated")
    _expect_error(cases, brats_root / "splits", tmp_path, f"case {CASES[1]} label: .*_seg.nii.gz is truncated")


def test_bad_binary_split_file(brats_root: Path, tmp_path: Path) -> None:
    """A split file that is not text (e.g. a NIfTI passed by mistake)."""
    lists = _write_lists(tmp_path / "lists", {"train": CASES[:2], "test": CASES[3:]})
    (lists / "val.list").write_bytes(b"\x1f\x8b\x08\x00\xff\xfe\xfd")
    _expect_error(brats_root / "cases", lists, tmp_path, "split file .*val.list is not a text file")


def test_truncated_volume_is_one_line_from_a_worker_process(brats_root: Path, tmp_path: Path) -> None:
    """The issue's case as a user meets it: pre_process.py with --workers 2 on a cut-off .nii.gz ends with one
    `error:` line naming the file, status 2, no traceback, no output folder."""
    cases = _copy_cases(brats_root, tmp_path)
    damage_nifti(cases / CASES[2] / f"{CASES[2]}_flair.nii.gz", "truncated")
    cmd = [sys.executable, str(ROOT / "pre_process.py"), "--layout", "brats", "--input", str(cases), "--split-file",
           str(brats_root / "splits"), "--output", str(tmp_path / "out"), "--slices", str(SLICES), "--size", "32",
           "--workers", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and f"{CASES[2]}_flair.nii.gz is truncated" in last
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ --slices all

def _brain_rows(case_dir: Path) -> range:
    """The axial slices from the first to the last with a voxel > 0 in any image of a case (labels aside)."""
    images = [nib.load(str(p)).get_fdata() for p in sorted(case_dir.glob("*.nii.gz")) if "_seg" not in p.name]
    hits = np.flatnonzero(np.any(np.stack([v != 0 for v in images]), axis=0).any(axis=(0, 1)))
    return range(int(hits[0]), int(hits[-1]) + 1)


def test_slices_all_keeps_every_slice_with_brain(tmp_path: Path) -> None:
    """--slices all: per case the slices from the first to the last with brain, the recipe's rows for them, a
    manifest and preprocess.json that say so; the default run records its middle range in preprocess.json."""
    ids = [phantom.case_name(i) for i in (1, 2, 3)]
    for i, case in enumerate(ids):
        phantom.make_case(case, tmp_path / "cases", size=32, seed=i, skull_strip=True)
    splits = _write_lists(tmp_path / "splits", {"train": ids[:2], "val": ids[2:]})
    argv = ["--layout", "brats", "--input", str(tmp_path / "cases"), "--split-file", str(splits), "--size", "32"]
    counts = preprocess_cli(argv + ["--output", str(tmp_path / "all"), "--slices", "all"])
    ranges = {case: _brain_rows(tmp_path / "cases" / case) for case in ids}
    depth = nib.load(str(tmp_path / "cases" / ids[0] / f"{ids[0]}_t1.nii.gz")).shape[2]
    assert all(0 < r.start or r.stop < depth for r in ranges.values())  # some slices without brain to leave out
    assert counts == {"train": len(ranges[ids[0]]) + len(ranges[ids[1]]), "val": len(ranges[ids[2]])}
    rows = _manifest(tmp_path / "all" / "train" / "manifest.csv")
    assert [(r[1], r[2]) for r in rows] == [(c, k) for c in ids[:2] for k in ranges[c]]
    flair = np.load(tmp_path / "all" / "train" / "FLAIR.npy")
    vol = preprocessing.normalize_volume(nib.load(str(tmp_path / "cases" / ids[0] / f"{ids[0]}_flair.nii.gz"))
                                         .get_fdata(), dtype=np.float64)
    np.testing.assert_array_equal(flair[:len(ranges[ids[0]])],
                                  np.moveaxis(vol[:, :, ranges[ids[0]].start:ranges[ids[0]].stop], 2, 0)
                                  .astype(np.float32))
    assert np.load(tmp_path / "all" / "train" / "brain_mask.npy").shape == flair.shape
    info = json.loads((tmp_path / "all" / "train" / "preprocess.json").read_text())
    first = min(ranges[c].start for c in ids[:2])
    last = max(ranges[c].stop for c in ids[:2]) - 1
    assert info["slices_per_case"] == "all" and info["slice_range"] == [first, last]
    assert "first to the last with brain" in info["recipe"]
    assert preprocessing.split_slice_range(tmp_path / "all" / "train") == [first, last]
    preprocess_cli(argv + ["--output", str(tmp_path / "mid"), "--slices", "6"])
    middle = [(depth - 6) // 2, (depth - 6) // 2 + 5]
    assert json.loads((tmp_path / "mid" / "val" / "preprocess.json").read_text())["slice_range"] == middle
    assert preprocessing.split_slice_range(tmp_path / "mid" / "val") == middle


def test_slice_range_of_older_splits(tmp_path: Path) -> None:
    """Splits from before preprocess.json recorded the range: taken from manifest.csv; with neither, unknown."""
    (tmp_path / "manifest.csv").write_text("index,case_id,slice_index\n0,a,40\n1,a,41\n2,b,38\n")
    (tmp_path / "preprocess.json").write_text(json.dumps({"slices_per_case": 3}))
    assert preprocessing.split_slice_range(tmp_path) == [38, 41]
    assert preprocessing.split_slice_range(tmp_path / "nothing") is None


def test_slices_option_takes_a_count_or_all(brats_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--slices accepts N or all; anything else is an argparse error naming both forms."""
    assert preprocess_parser().parse_args(["--input", "x", "--output", "y", "--slices", "all"]).slices == "all"
    with pytest.raises(SystemExit):
        preprocess_parser().parse_args(["--input", "x", "--output", "y", "--slices", "most"])
    assert "neither a number of slices nor 'all'" in capsys.readouterr().err
