"""The evidence that training learns: the quality benchmark, the comparison with the original's loop, helpers."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from utils.core.errors import UserError
from utils.eval.compare import comparison_table, enhancement_drawn, max_swing
from utils.eval.metrics import Summary

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_common import load_split, original_order  # noqa: E402
from bench_quality import set_aside  # noqa: E402
from conftest import TINY_RECIPE  # noqa: E402


def test_max_swing_skips_the_first_quarter():
    """Largest consecutive change after the first quarter of the epochs; NaN with too few epochs."""
    assert max_swing([10.0, 20.0, 21.0, 19.5, 20.0, 20.5, 20.0, 20.2]) == pytest.approx(1.5)
    assert math.isnan(max_swing([3.0]))


def test_comparison_table_lists_each_protocol_and_method():
    """One block per protocol present, one line per method, mean ± std per metric."""
    summary = {"brain_psnr": Summary(25.0, 1.0, 3, 0, 0), "brain_ssim": Summary(0.9, 0.01, 3, 0, 0)}
    table = comparison_table({"model": summary, "baseline": summary})
    assert "whole brain, paper protocol" in table and "lesion" not in table
    assert table.count("25.000 ± 1.000") == 2 and "0.900 ± 0.010" in table


def write_folder(folder: Path, synth: np.ndarray, real: np.ndarray) -> Path:
    """The two arrays test.py writes, in a folder of their own."""
    folder.mkdir()
    np.save(folder / "synth.npy", synth)
    np.save(folder / "real.npy", real)
    return folder


def test_enhancement_drawn_is_the_share_of_the_rim_above_the_baseline(tmp_path: Path):
    """0 for the baseline itself, 1 for the truth, 0.5 for half the rim's excess; None without enhancement."""
    linear = np.full((2, 8, 8), 0.2, np.float32)
    truth = linear.copy()
    truth[0, 2:4, 2:6] = 0.8  # the rim: 0.6 above the baseline
    truth[1, 5, 5] = 0.25  # below the threshold: not enhancement
    half = linear.copy()
    half[0, 2:4, 2:6] = 0.5
    half[1] = 0.9  # brightness outside the rim does not count
    base = write_folder(tmp_path / "linear", linear, truth)
    assert enhancement_drawn(base, base) == 0.0
    assert enhancement_drawn(write_folder(tmp_path / "truth", truth, truth), base) == pytest.approx(1.0)
    assert enhancement_drawn(write_folder(tmp_path / "half", half, truth), base) == pytest.approx(0.5)
    plain = write_folder(tmp_path / "plain", linear, linear)
    assert enhancement_drawn(plain, write_folder(tmp_path / "plain_base", linear, linear)) is None
    with pytest.raises(UserError, match="same split"):
        enhancement_drawn(write_folder(tmp_path / "short", linear[:1], truth[:1]), base)


def test_original_order_repeats_one_permutation_and_drops_the_remainder():
    """The original never called set_epoch: epoch 2 replays epoch 1's batches; a partial batch is dropped."""
    order = original_order(10, 3, 7)
    assert len(order) == 7 and all(len(batch) == 3 for batch in order)
    assert order[3:6] == order[0:3] and order[6] == order[0]
    assert sorted(sum(order[:3], [])) == sorted(set(sum(order[:3], [])))


def test_load_split_gives_the_original_loaders_tensors(tmp_path: Path):
    """(N, 1, S, S) in [-1, 1] with H and W swapped, as the original's LoadDataSet returned them."""
    stack = np.random.default_rng(0).random((2, 4, 4)).astype(np.float32)
    np.save(tmp_path / "T1.npy", stack)
    (tensor,) = load_split(tmp_path, ["T1"])
    assert tensor.shape == (2, 1, 4, 4)
    assert np.allclose(tensor[:, 0].numpy(), (stack.transpose(0, 2, 1) - 0.5) / 0.5)


def test_a_rerun_replaces_the_previous_runs_best_epoch_samples(tmp_path: Path):
    """The second run in the same --out sets its best-epoch samples aside over the first run's, stale files gone."""
    stale = tmp_path / "generated_samples_best"
    stale.mkdir()
    (stale / "old.npy").write_bytes(b"old")
    fresh = tmp_path / "generated_samples"
    fresh.mkdir()
    (fresh / "new.npy").write_bytes(b"new")
    assert set_aside(fresh, "generated_samples_best") == stale
    assert not fresh.exists() and [p.name for p in stale.iterdir()] == ["new.npy"]


def test_quality_benchmark_smoke_run(tmp_path: Path):
    """A one-step run: every method scored with every protocol, the curve drawn, the JSON complete."""
    recipe = tmp_path / "tiny.json"
    recipe.write_text(json.dumps(TINY_RECIPE))
    out = tmp_path / "quality"
    result = subprocess.run([sys.executable, "bench/bench_quality.py", "--config", str(recipe), "--steps", "1",
                             "--cases", "5", "--slices", "4", "--threads", "1", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "quality.json").read_text())
    assert set(report["test"]) == {"MU-Diff (best validation epoch)", "MU-Diff (last epoch)",
                                   "linear baseline (fitted on train)", "quadratic baseline (fitted on train)"}
    for scores in report["test"].values():
        for key in ("brain_plain_psnr", "brain_psnr", "lesion_psnr", "plain_psnr", "plain_ssim"):
            assert math.isfinite(scores[key]["mean"]), key
    assert report["epochs"] == 1 and report["validation"]["best_epoch"] == 1
    assert report["machine"]["cpu"] and report["machine"]["threads"] == 1  # numbers differ between CPU models
    assert set(report["validation"]["baselines"]) == {"linear", "quadratic"}
    assert report["enhancement_drawn"]["linear baseline (fitted on train)"] in (0.0, None)
    assert set(report["enhancement_drawn"]) == set(report["test"])
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "quadratic baseline (fitted on train)" in result.stdout


def test_original_loop_gives_our_loss_curve(tmp_path: Path):
    """With MUDIFF_ORIGINAL set to a checkout of the original: three steps of both loops give the same losses and
    weights (to float rounding: without R1 our critic step asks autograd for no input gradient, which can change
    the convolution kernels' summation order)."""
    original = os.environ.get("MUDIFF_ORIGINAL", "")
    if not original or not Path(original).is_dir():
        pytest.skip("set MUDIFF_ORIGINAL to a checkout of the original code to run this")
    data = tmp_path / "train"
    data.mkdir()
    rng = np.random.default_rng(1)
    for name in ("FLAIR", "T2", "T1", "T1ce"):
        np.save(data / f"{name}.npy", rng.random((8, 64, 64)).astype(np.float32))
    result = subprocess.run([sys.executable, "bench/bench_curve.py", "--reference", original, "--data", str(data),
                             "--steps", "3", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "curve.json").read_text())
    assert report["first_step_differing_by_1e-5_relative"] is None and report["largest_loss_difference"] < 1e-5
    checksums = report["weight_checksums"]
    assert checksums["ours"] == pytest.approx(checksums["original"], rel=1e-9)
