"""brasyn.py segment and export on phantoms: label regions, MONAI metrics, input versions, nnU-Net names, errors."""
import csv
import gzip
import json
import math
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import brasyn_cli, save_tiny_experiment

from demo import make_sample_data as phantom
from utils.core.errors import UserError, run_cli
from utils.data.layouts import BRATS_CONTRASTS, relabel
from utils.data.preprocessing import normalize_volume
from utils.seg.cases import held_out_cases, input_versions
from utils.seg.labels import CONVENTIONS, from_classes, region_masks, to_classes
from utils.seg.metrics import RegionScorer
from utils.seg.network import load_segmenter

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE, DEPTH = 32, 12
TRAIN = [phantom.case_name(i, "brats2019") for i in (1, 2, 3)]
HELD = [phantom.case_name(i, "brats2023") for i in (4, 5)]
SUFFIXES = {"T1": "t1n", "T1ce": "t1c", "T2": "t2w", "FLAIR": "t2f", "seg": "seg"}
TINY = ["--epochs", "2", "--image_size", "32", "--channels", "4", "8", "--batch_size", "8", "--device", "cpu"]


def _name(case: str, kind: str) -> str:
    """BraTS 2023 file name of a held-out case's contrast (or seg)."""
    return f"{case}-{SUFFIXES[kind]}.nii.gz"


def _error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """The single `error:` line a command ends with (exit status 2)."""
    assert run_cli(brasyn_cli, argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Training cases in 2019 names; held-out cases in 2023 names, T1ce dropped and completed by a tiny model."""
    root = tmp_path_factory.mktemp("seg")
    for i, case in enumerate(TRAIN + HELD):
        naming = "brats2019" if case in TRAIN else "brats2023"
        phantom.make_case(case, root / ("train" if case in TRAIN else "raw"), size=SIZE, seed=i, depth=DEPTH,
                          skull_strip=True, naming=naming)
    save_tiny_experiment(root / "t1ce", contrasts=("FLAIR", "T2", "T1", "T1ce"))
    brasyn_cli(["drop", "--input", str(root / "raw"), "--out", str(root / "val"), "--truth", str(root / "truth"),
                 "--missing", "T1ce"])
    brasyn_cli(["complete", "--input", str(root / "val"), "--models", f"T1ce={root / 't1ce'}", "--out",
                 str(root / "completed"), "--batch_size", "8", "--device", "cpu"])
    return {k: root / k for k in ("train", "raw", "truth", "completed")} | {"root": root}


def test_regions_agree_under_both_label_conventions() -> None:
    """Class indices written in 2019 (4 = ET) and 2023 (3 = ET) values give the same WT, TC and ET masks."""
    classes = np.array([0, 1, 2, 3, 3, 2, 0], dtype=np.uint8)  # background, necrosis, oedema, enhancing
    expected = {"WT": classes > 0, "TC": np.isin(classes, [1, 3]), "ET": classes == 3}
    assert from_classes(classes, "brats2019").tolist() == [0, 1, 2, 4, 4, 2, 0]
    assert from_classes(classes, "brats2023").tolist() == [0, 1, 2, 3, 3, 2, 0]
    for naming in CONVENTIONS.values():
        masks = region_masks(from_classes(classes, naming), naming)
        assert {r: m.tolist() for r, m in masks.items()} == {r: m.tolist() for r, m in expected.items()}
    seg2019 = from_classes(classes, "brats2019")
    assert to_classes(relabel(seg2019, "brats2019", "brats2023"), "brats2023", "x").tolist() == classes.tolist()
    assert to_classes(seg2019, "brats2021", "x").tolist() == classes.tolist()
    # A 2019 seg read as 2023 has a foreign 4; a 2023 seg read as 2019 would lose ET silently without the check.
    with pytest.raises(UserError, match=r"label values \[4\]"):
        to_classes(seg2019, "brats2023", "seg.nii.gz")
    with pytest.raises(UserError, match=r"label values \[3\]"):
        to_classes(from_classes(classes, "brats2023"), "brats2019", "seg.nii.gz")


def test_dice_and_hd95_through_monai() -> None:
    """A perfect prediction scores Dice 1 and HD95 0; an empty one Dice 0 and the diagonal; a shift its size in mm."""
    truth = np.zeros((12, 10, 8), dtype=bool)
    truth[3:7, 2:6, 2:5] = True
    scorer = RegionScorer()
    spacing = (1.0, 2.0, 3.0)
    assert scorer(truth, truth, spacing) == (1.0, 0.0)
    dice, hd95 = scorer(np.zeros_like(truth), truth, spacing)
    assert dice == 0.0 and hd95 == pytest.approx(math.sqrt(12 ** 2 + 20 ** 2 + 24 ** 2))
    assert scorer(np.zeros_like(truth), np.zeros_like(truth), spacing) == (1.0, 0.0)
    shifted = np.roll(truth, 1, axis=1)
    dice, hd95 = scorer(shifted, truth, spacing)
    assert dice == pytest.approx(2 * 36 / 96) and hd95 == pytest.approx(2.0)
    assert scorer(shifted, truth, spacing)[1] == pytest.approx(2.0)  # the metrics are reset between calls
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scorer(shifted, truth, spacing)
    assert not [w for w in caught if issubclass(w.category, FutureWarning)]  # no MONAI deprecation in the output


def test_input_versions_differ_only_in_the_missing_channel(data: dict) -> None:
    """real / completed / copy / zero: the three acquired channels are shared; the T1ce one is the truth, the
    synthesis, the T1 image and zeros."""
    case = held_out_cases(data["truth"], data["completed"])[0]
    assert case.missing == "T1ce" and case.naming == "brats2023"
    versions = input_versions(case)
    assert list(versions) == ["real", "completed", "copy", "zero"]
    k = BRATS_CONTRASTS.index("T1ce")
    others = [i for i in range(4) if i != k]
    for images in versions.values():
        assert images.shape == (4, SIZE, SIZE, DEPTH)
        np.testing.assert_array_equal(images[others], versions["real"][others])

    def normalised(path: Path) -> np.ndarray:
        """A NIfTI file normalised as pre_process.py does."""
        return normalize_volume(nib.load(path).get_fdata())

    np.testing.assert_allclose(versions["real"][k], normalised(data["truth"] / case.name / _name(case.name, "T1ce")))
    np.testing.assert_allclose(versions["completed"][k],
                               normalised(data["completed"] / case.name / _name(case.name, "T1ce")))
    np.testing.assert_array_equal(versions["copy"][k], versions["real"][BRATS_CONTRASTS.index("T1")])
    assert not versions["zero"][k].any()
    missing = [versions[v][k] for v in versions]
    assert all(not np.array_equal(a, b) for i, a in enumerate(missing) for b in missing[i + 1:])


def test_nnunet_export(data: dict, tmp_path: Path) -> None:
    """<case>_0000..0003 = T1, T1ce, T2, FLAIR (Dataset137's order), labels 1 ED / 2 NCR / 3 ET, dataset.json."""
    out = tmp_path / "Dataset900_BraSyn"
    rows = brasyn_cli(["export", "--completed", str(data["completed"]), "--truth", str(data["truth"]),
                        "--out", str(out)])
    assert [r["case"] for r in rows] == HELD
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "imagesTs", "labelsTs"]
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == [f"{c}_{k:04d}.nii.gz" for c in HELD
                                                                     for k in range(4)]
    for case in HELD:
        for k, contrast in enumerate(("T1", "T1ce", "T2", "FLAIR")):
            exported = (out / "imagesTs" / f"{case}_{k:04d}.nii.gz").read_bytes()
            assert gzip.decompress(exported) == gzip.decompress((data["completed"] / case / _name(case, contrast))
                                                                .read_bytes())
        seg = nib.load(data["truth"] / case / _name(case, "seg"))
        label = nib.load(out / "labelsTs" / f"{case}.nii.gz")
        values = {0: 0, 1: 2, 2: 1, 3: 3}  # BraTS 2023 (1 NETC, 2 SNFH, 3 ET) -> nnU-Net (1 ED, 2 NCR, 3 ET)
        expected = np.vectorize(values.get)(np.asarray(seg.dataobj).astype(int))
        np.testing.assert_array_equal(np.asarray(label.dataobj), expected)
        np.testing.assert_allclose(label.affine, seg.affine)
        assert label.get_data_dtype() == np.uint8 and set(np.unique(expected)) >= {1, 2, 3}
    spec = json.loads((out / "dataset.json").read_text())
    assert spec["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"}
    assert spec["labels"] == {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
                              "enhancing tumor": [3]}
    assert spec["regions_class_order"] == [1, 2, 3] and spec["file_ending"] == ".nii.gz"
    assert spec["numTraining"] == 0
    brasyn_cli(["export", "--completed", str(data["completed"]), "--truth", str(data["truth"]), "--out",
                 str(tmp_path / "tr"), "--as-training"])
    assert json.loads((tmp_path / "tr" / "dataset.json").read_text())["numTraining"] == len(HELD)
    assert sorted(p.name for p in (tmp_path / "tr" / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in HELD]


def test_segment_end_to_end(data: dict, tmp_path: Path) -> None:
    """Train 2 epochs, score 2 cases x 4 versions x 2 conventions; the saved segmenter scores again identically."""
    out = tmp_path / "seg"
    base = ["segment", "--truth", str(data["truth"]), "--completed", str(data["completed"])]
    rows = brasyn_cli(base + ["--train", str(data["train"]), "--out", str(out), *TINY])
    assert len(rows) == len(HELD) * 4 * 2
    assert {(r["case"], r["version"], r["convention"]) for r in rows} == {
        (c, v, k) for c in HELD for v in ("real", "completed", "copy", "zero") for k in ("2019", "2023")}
    for row in rows:
        assert all(0.0 <= row[f"dice_{r}"] <= 1.0 and row[f"hd95_{r}"] >= 0.0 for r in ("WT", "TC", "ET"))
        assert row["true_voxels_WT"] >= row["true_voxels_TC"] >= row["true_voxels_ET"] > 0
    # The conventions only relabel the same voxels: their scores agree.
    by_key = {(r["case"], r["version"], r["convention"]): r for r in rows}
    assert all(by_key[(c, v, "2019")]["dice_ET"] == by_key[(c, v, "2023")]["dice_ET"] for c, v, _ in by_key)
    with open(out / "segmentation_metrics.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)
    report = json.loads((out / "segmentation_metrics.json").read_text())
    summary = report["summary"]["all"]
    assert summary["cases"] == len(HELD)
    assert summary["2023"]["real"]["dice_WT"]["n"] == len(HELD)
    real, completed = summary["2023"]["real"]["dice_WT"]["mean"], summary["2023"]["completed"]["dice_WT"]["mean"]
    assert summary["ratio_completed_to_real"]["2023"]["dice_WT"] == pytest.approx(completed / real)
    assert report["training"]["cases"] == len(TRAIN) and report["training"]["epochs"] == 2
    assert (out / "segmentation_dice.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = torch.load(out / "segmenter.pt", weights_only=True)
    assert saved["config"]["channels"] == [4, 8] and saved["config"]["image_size"] == 32
    network, config = load_segmenter(out / "segmenter.pt")
    assert config.contrasts == list(BRATS_CONTRASTS)
    again = brasyn_cli(base + ["--segmenter", str(out / "segmenter.pt"), "--out", str(tmp_path / "again"),
                                "--device", "cpu", "--batch_size", "8"])
    assert again == rows


def test_segment_and_export_errors(data: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A completed folder lacking a case, a truth case without seg, a held-out training case and a foreign
    segmenter file each stop with one line, before any training."""
    completed = tmp_path / "completed"
    shutil.copytree(data["completed"] / HELD[0], completed / HELD[0])
    base = ["segment", "--train", str(data["train"]), "--out", str(tmp_path / "out"), *TINY]
    err = _error(base + ["--truth", str(data["truth"]), "--completed", str(completed)], capsys)
    assert f"has no case {HELD[1]}" in err
    assert f"--truth {tmp_path / 'missing'} has no case {HELD[0]}" in _error(
        ["export", "--completed", str(completed), "--truth", str(tmp_path / "missing"), "--out", str(tmp_path / "x")],
        capsys)
    truth = tmp_path / "truth"
    shutil.copytree(data["truth"] / HELD[0], truth / HELD[0])
    (truth / HELD[0] / _name(HELD[0], "seg")).unlink()
    err = _error(base + ["--truth", str(truth), "--completed", str(data["completed"])], capsys)
    assert f"--truth case {HELD[0]} has no segmentation" in err
    train = tmp_path / "train"
    shutil.copytree(data["raw"] / HELD[0], train / HELD[0])
    err = _error(["segment", "--train", str(train), "--truth", str(data["truth"]), "--completed",
                  str(data["completed"]), "--out", str(tmp_path / "out"), *TINY], capsys)
    assert f"case {HELD[0]} is both in --train and in --truth" in err
    (tmp_path / "bogus.pt").write_bytes(b"not a checkpoint")
    err = _error(["segment", "--segmenter", str(tmp_path / "bogus.pt"), "--truth", str(data["truth"]),
                  "--completed", str(data["completed"]), "--out", str(tmp_path / "out")], capsys)
    assert "not a readable segmenter file" in err
    assert "overlap" in _error(["segment", "--train", str(data["train"]), "--truth", str(data["truth"]),
                                "--completed", str(data["completed"]), "--out", str(data["completed"] / "s")], capsys)
    assert "--train" in _error(["segment", "--train", str(tmp_path / "none"), "--truth", str(data["truth"]),
                                "--completed", str(data["completed"]), "--out", str(tmp_path / "out")], capsys)
    assert not (tmp_path / "out").exists()
