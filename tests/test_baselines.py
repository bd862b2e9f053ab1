"""test.py --baseline: per-pixel regression fitted on the training split, written as test.py writes a synthesis."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import metric_cli, synthesis_cli

from utils.core.errors import UserError
from utils.data.brain import brain_pixels
from utils.data.slices import SliceDataset
from utils.infer.baselines import PixelRegression, design_matrix

CONTRASTS = ("FLAIR", "T2", "T1", "T1ce")
SIZE = 40


def quadratic_target(c: np.ndarray) -> np.ndarray:
    """A target that is an exact quadratic function of the three conditions, inside (0, 1) for conditions in [0, 1]."""
    return 0.1 + 0.2 * c[0] - 0.1 * c[1] + 0.3 * c[2] + 0.3 * c[0] * c[2] + 0.05 * c[1] ** 2


def write_split(root: Path, split: str, count: int, seed: int, target=quadratic_target) -> None:
    """A split whose brain is a disc; conditions random inside it, the target a function of them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    brain = ((yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < (0.4 * SIZE) ** 2).astype(np.float32)
    conditions = 0.05 + 0.9 * rng.random((3, count, SIZE, SIZE)).astype(np.float32) * brain
    conditions *= brain
    folder = root / split
    folder.mkdir(parents=True)
    for name, stack in zip(CONTRASTS[:3], conditions):
        np.save(folder / f"{name}.npy", stack)
    np.save(folder / "T1ce.npy", (np.clip(target(conditions), 0, 1) * brain).astype(np.float32))
    np.save(folder / "brain_mask.npy", np.repeat(brain[None], count, 0).astype(np.uint8))


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    """Train and test splits with a quadratic target."""
    write_split(tmp_path / "data", "train", 4, seed=1)
    write_split(tmp_path / "data", "test", 3, seed=2)
    return tmp_path / "data"


def run_baseline(data: Path, out: Path, kind: str) -> Path:
    """test.py --baseline KIND; returns the folder it wrote."""
    return synthesis_cli(["--input_path", str(data), "--output_path", str(out), "--exp", "e", "--baseline", kind,
                             "--image_size", "64", "--num_workers", "0", "--batch_size", "2"])


def test_design_matrix_columns():
    """Linear: 1, c1, c2, c3; quadratic adds the six products c_i*c_j (i <= j)."""
    c = np.array([[2.0, 3.0, 5.0]])
    assert design_matrix(c, "linear").tolist() == [[1, 2, 3, 5]]
    assert design_matrix(c, "quadratic").tolist() == [[1, 2, 3, 5, 4, 6, 10, 9, 15, 25]]


def test_quadratic_fit_recovers_a_quadratic_target_and_linear_does_not(data: Path):
    """On a target that is a quadratic of the conditions, the quadratic fit is exact; the linear one is not."""
    train = SliceDataset(data, "train", CONTRASTS, image_size=64)
    test = SliceDataset(data, "test", CONTRASTS, image_size=64)
    items = [test[i] for i in range(len(test))]
    conds = [torch.stack([it[k] for it in items]) for k in range(4)]
    inside = torch.from_numpy(np.stack([brain_pixels(torch.cat(c3, 0).numpy())
                                        for c3 in zip(conds[0], conds[1], conds[2])]))[:, None]
    errors = {}
    for kind in ("linear", "quadratic"):
        prediction = PixelRegression.fit(train, kind, progress=False).predict(*conds[:3])
        assert (prediction[~inside] == -1).all()  # background outside the conditions' brain
        errors[kind] = (prediction - conds[3])[inside].abs().max().item()
    assert errors["quadratic"] < 1e-4 < 0.01 < errors["linear"]


def test_baseline_writes_what_test_py_writes_and_metric_calc_scores_it(data: Path, tmp_path: Path):
    """Its own folder with the same files as a model run; metric_calc.py scores it like any synthesis."""
    folder = run_baseline(data, tmp_path / "out", "quadratic")
    assert folder == tmp_path / "out" / "e" / "generated_samples_baseline_quadratic"
    synth, real = np.load(folder / "synth.npy"), np.load(folder / "real.npy")
    assert synth.shape == real.shape == (3, SIZE, SIZE)
    assert np.abs(synth - real).max() < 1e-4
    assert len(list((folder / "synth").glob("slice_*.png"))) == 3 and (folder / "mask" / "brain").is_dir()
    record = json.loads((folder / "run.json").read_text())
    assert record["baseline"]["kind"] == "quadratic" and len(record["baseline"]["coefficients"]) == 10
    metric_cli([str(folder), "--no_progress"])
    summary = json.loads((folder / "metrics" / "metrics_summary.json").read_text())
    assert summary["metrics"]["plain_ssim"]["mean"] > 0.99 and summary["metrics"]["plain_psnr"]["mean"] > 60


def test_baseline_never_reads_the_truth_it_predicts(data: Path, tmp_path: Path):
    """Replacing the test split's target changes the stored truth but not one bit of the baseline's synthesis."""
    first = np.load(run_baseline(data, tmp_path / "a", "linear") / "synth.npy")
    np.save(data / "test" / "T1ce.npy", np.random.default_rng(5).random((3, SIZE, SIZE)).astype(np.float32))
    folder = run_baseline(data, tmp_path / "b", "linear")
    assert np.array_equal(first, np.load(folder / "synth.npy"))
    assert not np.array_equal(np.load(folder / "real.npy"), np.load(tmp_path / "a" / "e" /
                                                                   "generated_samples_baseline_linear" / "real.npy"))


def test_baseline_option_errors_are_one_line(data: Path, tmp_path: Path):
    """A volume or uncertainty request with --baseline, and an empty training split, stop with one line."""
    base = ["--input_path", str(data), "--output_path", str(tmp_path), "--exp", "e", "--image_size", "64"]
    for extra in (["--nifti"], ["--save_uncertainty"]):
        with pytest.raises(UserError, match="--baseline synthesises the test slices only"):
            synthesis_cli([*base, "--baseline", "linear", *extra])
    for name in CONTRASTS[:3]:
        np.save(data / "train" / f"{name}.npy", np.zeros((4, SIZE, SIZE), np.float32))
    with pytest.raises(UserError, match="brain pixels to fit"):
        synthesis_cli([*base, "--baseline", "linear"])
