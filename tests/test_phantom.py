"""The digital phantom: files and geometry, MR physics of the contrasts, lesion appearance, variation, CLI."""
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from demo import make_sample_data as phantom
from utils.core.errors import UserError

SIZE, DEPTH = 48, 24
ROOT = Path(__file__).resolve().parents[1]


def _region_mean(vol: np.ndarray, mask: np.ndarray) -> float:
    """Mean intensity inside a mask."""
    return float(vol[mask].mean())


@pytest.fixture(scope="module")
def volumes() -> tuple[dict, np.ndarray, np.ndarray]:
    """One small tumour phantom (all five contrasts)."""
    return phantom.phantom_volumes(64, 40, seed=3, contrasts=("t1", "t1ce", "t2", "flair", "dwi"))


def test_signal_equations_follow_3t_tissue_contrast() -> None:
    """T1w: WM > GM > CSF; T2w: CSF > GM > WM; FLAIR nulls CSF; gadolinium brightens the rim on T1 only."""
    t, s = phantom.TISSUES, phantom.SEQUENCES
    sig = {seq: {name: float(phantom.signal(t[name], s[seq])) for name in t} for seq in s}
    assert sig["t1"]["wm"] > sig["t1"]["gm"] > sig["t1"]["csf"]
    assert sig["t2"]["csf"] > sig["t2"]["gm"] > sig["t2"]["wm"]
    assert sig["flair"]["csf"] < 0.2 * sig["flair"]["wm"]
    assert sig["flair"]["oedema"] > 1.8 * sig["flair"]["wm"]
    assert sig["t1"]["fat"] > 2 * sig["t1"]["wm"]
    enhanced = float(phantom.signal(t["enhancing"], s["t1ce"], np.float32(0.4)))
    assert enhanced > 2 * sig["t1"]["enhancing"]
    assert float(phantom.signal(t["enhancing"], s["t1"], np.float32(0.4))) == pytest.approx(sig["t1"]["enhancing"])
    assert sig["dwi"]["infarct"] > 1.5 * sig["dwi"]["wm"]  # restricted diffusion is bright on DWI


def test_equations_match_their_textbook_forms() -> None:
    """Spin echo and inversion recovery evaluate the formulas of the issue."""
    pd, t1, t2 = 0.8, 1000.0, 80.0
    assert phantom.spin_echo(pd, t1, t2, 500, 10) == pytest.approx(pd * (1 - np.exp(-0.5)) * np.exp(-10 / 80))
    expected = pd * abs(1 - 2 * np.exp(-2.5) + np.exp(-9)) * np.exp(-100 / 80)
    assert phantom.inversion_recovery(pd, t1, t2, 9000, 2500, 100) == pytest.approx(expected)


def test_lesion_appearance_in_the_images(volumes) -> None:
    """Enhancing rim bright on T1ce but not T1, oedema bright on T2 and FLAIR, necrosis dark on T1ce."""
    vols, labels, _ = volumes
    brain = (vols["t1"] > 0) & (labels == 0)
    rel = {c: v / np.median(v[brain]) for c, v in vols.items()}
    rim, oedema, core = labels == 4, labels == 2, labels == 1
    assert rim.sum() > 20 and oedema.sum() > 100 and core.sum() > 5
    assert _region_mean(rel["t1ce"], rim) > 1.5 * _region_mean(rel["t1"], rim)
    assert _region_mean(rel["t1ce"], rim) > 1.5
    assert _region_mean(rel["flair"], oedema) > 1.4
    assert _region_mean(rel["t2"], oedema) > 1.4
    assert _region_mean(rel["t1ce"], core) < _region_mean(rel["t1ce"], rim)


def test_head_has_background_skull_and_varied_noise(volumes) -> None:
    """Air is exactly zero (as in released data), the head is not, and tissue has noise (not flat)."""
    vols, labels, _ = volumes
    t1 = vols["t1"]
    assert t1[0, 0, 0] == 0 and t1[:, :, t1.shape[2] // 2].max() > 0
    head = t1 > 0
    assert 0.2 < head.mean() < 0.7
    assert len(np.unique(t1[head])) > 200


def test_make_case_writes_brats_files_with_lps_affine(tmp_path: Path) -> None:
    """Five NIfTI files named like BraTS, one grid, 240 mm field of view, L-P-S voxel axes, 3-label seg."""
    folder = phantom.make_case("BraTS19_Phantom_0007", tmp_path, size=SIZE, seed=7, depth=DEPTH)
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(f"BraTS19_Phantom_0007_{s}.nii.gz" for s in ("t1", "t1ce", "t2", "flair", "seg"))
    images = {p.name.split("_")[-1][:-7]: nib.load(str(p)) for p in folder.iterdir()}
    for img in images.values():
        assert img.shape == (SIZE, SIZE, DEPTH)
        assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
        assert img.header.get_zooms() == pytest.approx((240 / SIZE,) * 3)
        assert int(img.header["sform_code"]) == 1
    seg = np.asarray(images["seg"].dataobj)
    assert set(np.unique(seg)) <= {0, 1, 2, 4} and {2, 4} <= set(np.unique(seg))


@pytest.mark.parametrize("layout, case, suffixes, enhancing", [
    ("brats2021", "BraTS2021_00001", ("t1", "t1ce", "t2", "flair", "seg"), 4),
    ("brats2023", "BraTS-GLI-00001-000", ("t1n", "t1c", "t2w", "t2f", "seg"), 3),
], ids=["2021", "2023"])
def test_cli_writes_later_brats_names_and_labels(tmp_path: Path, layout: str, case: str, suffixes: tuple,
                                                 enhancing: int) -> None:
    """--layout brats2021/brats2023: that release's case and file names and label values, the 2019 phantom's voxels."""
    sep = "-" if layout == "brats2023" else "_"
    phantom.main(["--out", str(tmp_path / layout), "--layout", layout, "--cases", "1", "--size", "32", "--depth",
                  "12", "--no-splits"])
    phantom.main(["--out", str(tmp_path / "2019"), "--cases", "1", "--size", "32", "--depth", "12", "--no-splits"])
    folder, old = tmp_path / layout / case, tmp_path / "2019" / phantom.case_name(1)
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{case}{sep}{s}.nii.gz" for s in suffixes)
    new_t1 = np.asarray(nib.load(folder / f"{case}{sep}{suffixes[0]}.nii.gz").dataobj)
    assert np.array_equal(new_t1, np.asarray(nib.load(old / f"{old.name}_t1.nii.gz").dataobj))
    seg = np.asarray(nib.load(folder / f"{case}{sep}seg.nii.gz").dataobj)
    seg_2019 = np.asarray(nib.load(old / f"{old.name}_seg.nii.gz").dataobj)
    assert set(np.unique(seg)) == {0, 1, 2, enhancing}
    assert np.array_equal(seg == enhancing, seg_2019 == 4) and np.array_equal(seg > 0, seg_2019 > 0)


def test_seed_reproduces_and_varies() -> None:
    """The same seed gives identical volumes; another seed gives another head and tumour."""
    a, la, _ = phantom.phantom_volumes(SIZE, DEPTH, seed=11)
    b, lb, _ = phantom.phantom_volumes(SIZE, DEPTH, seed=11)
    c, lc, _ = phantom.phantom_volumes(SIZE, DEPTH, seed=12)
    assert all(np.array_equal(a[k], b[k]) for k in a) and np.array_equal(la, lb)
    assert not np.array_equal(la, lc)
    assert np.abs(a["t2"].astype(float) - c["t2"]).mean() > 10


def test_first_case_names_more_cases_beside_an_earlier_set(tmp_path: Path) -> None:
    """--first_case N numbers the names from N, so more cases join an earlier set without a clash; the seed still
    decides the voxels; a number below 1 is a one-line error."""
    common = ["--out", str(tmp_path), "--cases", "1", "--size", "32", "--depth", "12", "--no_splits"]
    phantom.main([*common, "--seed", "5"])
    (extra,) = phantom.main([*common, "--seed", "5", "--first_case", "4"])
    assert extra.name == phantom.case_name(4) and sorted(p.name for p in tmp_path.iterdir()) == [
        phantom.case_name(1), phantom.case_name(4)]
    first = np.asarray(nib.load(tmp_path / phantom.case_name(1) / f"{phantom.case_name(1)}_t1.nii.gz").dataobj)
    assert np.array_equal(first, np.asarray(nib.load(extra / f"{extra.name}_t1.nii.gz").dataobj))
    with pytest.raises(UserError, match="--first_case"):
        phantom.main([*common, "--first_case", "0"])


def test_isles_case_layout_and_infarct(tmp_path: Path) -> None:
    """SISS names (VSD.Brain.XX.O.MR_<c>.<id>/...nii and the OT label); the infarct is bright on DWI and FLAIR."""
    folder = phantom.make_isles_case(4, tmp_path, size=64, seed=4, depth=40)
    assert folder.name == "4"
    subdirs = sorted(p.name for p in folder.iterdir())
    assert [s.split(".")[4] for s in subdirs] == ["MR_DWI", "MR_Flair", "MR_T1", "MR_T2", "OT"]
    vols = {s.split(".")[4]: np.asarray(nib.load(str(folder / s / f"{s}.nii")).dataobj) for s in subdirs}
    lesion = vols["OT"] > 0
    assert set(np.unique(vols["OT"])) == {0, 1} and lesion.sum() > 50
    brain = (vols["MR_T1"] > 0) & ~lesion
    for name in ("MR_DWI", "MR_Flair"):
        assert vols[name][lesion].mean() > 1.3 * np.median(vols[name][brain])


def test_cli_writes_cases_splits_and_figure(tmp_path: Path) -> None:
    """`--cases 3` gives three case folders, split lists covering them once, and a PNG; reruns need --overwrite."""
    out = tmp_path / "brats"
    argv = ["--out", str(out), "--cases", "3", "--size", "32", "--depth", "12", "--figure", str(tmp_path / "f.png")]
    folders = phantom.main(argv)
    assert [f.name for f in folders] == [phantom.case_name(i) for i in (1, 2, 3)]
    listed = [line for s in ("train", "val", "test") for line in (out / "splits" / f"{s}.list").read_text().split()]
    assert sorted(listed) == [f.name for f in folders]
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(UserError, match="--overwrite"):
        phantom.main(argv)
    phantom.main(argv + ["--overwrite"])


def test_committed_figure_is_in_the_data_page() -> None:
    """The phantom figure exists and docs/data.md shows it."""
    figure = ROOT / "demo" / "figures" / "phantom.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "../demo/figures/phantom.png" in (ROOT / "docs" / "data.md").read_text()
