"""The volume benchmark (bench/bench_volumes.py) at a tiny budget: every summary and goal in the JSON, the figure."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from bench_volumes import (
    CEILING,
    CEILING_GOALS,
    EXP,
    GOALS,
    OFFSET_GOALS,
    VARIANTS,
    ceiling_goals,
    offset_goals,
    variants,
)
from conftest import TINY_RECIPE

from demo.steps import recipe_at_size
from utils.core.errors import UserError
from utils.eval.coherence import COHERENCE_COLUMNS
from utils.seg.cases import VERSIONS

ROOT = Path(__file__).resolve().parents[1]



def test_context_slices_adds_a_variant_with_its_own_model() -> None:
    """--context_slices K and --slices_all each complete once more, with an experiment of their own; without them
    every variant uses EXP."""
    assert variants(0) == {name: (EXP, flags) for name, flags in VARIANTS.items()}
    extra = variants(2, slices_all=True)
    assert list(extra)[:len(VARIANTS)] == list(VARIANTS) and extra["context_slices_2"] == (f"{EXP}_context2", [])
    assert extra["slices_all"] == (f"{EXP}_all", [])
    assert list(variants(0, chosen=["shared_noise"])) == ["shared_noise"]


def test_recipe_at_size_scales_attention_and_refuses_sizes_the_network_cannot_take(tmp_path: Path) -> None:
    """The recipe itself at its own size; a copy at another, attention at the same depth; one-line errors for a size
    the downsampling levels or the attention resolutions cannot divide."""
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({**TINY_RECIPE, "ch_mult": [1, 2, 2], "attn_resolutions": [8]}))
    assert recipe_at_size(recipe, None, tmp_path / "out") == recipe == recipe_at_size(recipe, 64, tmp_path / "out")
    scaled = json.loads(recipe_at_size(recipe, 96, tmp_path / "out").read_text())
    assert scaled == {**json.loads(recipe.read_text()), "image_size": 96, "attn_resolutions": [12]}
    for size, why in ((98, "multiple of 4"), (68, "attention")):
        with pytest.raises(UserError, match=f"--image_size {size}.*{why}"):
            recipe_at_size(recipe, size, tmp_path / "out")
    with pytest.raises(UserError, match="no such file"):
        recipe_at_size(tmp_path / "missing.json", 96, tmp_path / "out")


def _summary(gradient: float, inside: float, outside: float, spread: float | None) -> dict:
    """A variant's coherence summary with the columns ceiling_goals reads (the others unset)."""
    means = {"gradient_ratio": gradient, "ssim_axial_inside": inside, "ssim_axial_outside": outside,
             "brightness_ratio_std_outside": spread}
    columns = ("ssim_axial", "ssim_coronal", "ssim_sagittal", "brightness_ratio_inside", "brightness_ratio_outside",
               "brightness_ratio_std_inside", "brightness_offset_std_inside", "brightness_offset_std_outside")
    return {"coherence": {c: {"mean": means.get(c)} for c in (*means, *columns)}}


def test_goals_against_the_ceiling_read_what_a_flawless_model_at_that_resolution_scores() -> None:
    """The ceiling's own gradient ratio, outside-SSIM gap and edge-slice spread become the targets: a completion as
    stripy as the ceiling passes where the truth-based goal fails; 3 % stripier, a wider gap or spread fail."""
    ceiling = _summary(1.10, 0.97, 0.92, 0.135)
    assert ceiling_goals(_summary(1.11, 0.90, 0.86, 0.20), ceiling) == dict.fromkeys(CEILING_GOALS, True)
    assert ceiling_goals(_summary(1.14, 0.90, 0.80, 0.30), ceiling) == dict.fromkeys(CEILING_GOALS, False)
    assert not any(ceiling_goals(_summary(1.10, 0.9, None, None), _summary(0.0, 0.9, 0.9, 0.1)).values())


def test_offset_goal_reads_the_spread_in_units_of_the_volume_brightness() -> None:
    """The offset spread outside at most twice inside passes, wider fails, a missing number fails; the ratio
    spreads do not enter it."""
    summary = _summary(1.0, 0.9, 0.9, 5.0)
    offsets = summary["coherence"]
    for outside, met in ((0.019, True), (0.021, False), (None, False)):
        offsets["brightness_offset_std_inside"]["mean"] = 0.01
        offsets["brightness_offset_std_outside"]["mean"] = outside
        assert offset_goals(summary) == dict.fromkeys(OFFSET_GOALS, met)


def _check_variant(summary: dict, goals: dict) -> None:
    """Coherence columns and their baseline twins, slices outside training, Dice/HD95 of every version, goals."""
    for column in (*COHERENCE_COLUMNS, *(f"baseline_{c}" for c in COHERENCE_COLUMNS)):
        assert set(summary["coherence"][column]) >= {"mean", "std"}, column
    for column in ("ssim_axial_inside", "ssim_axial_outside", "baseline_ssim_axial_outside"):
        assert summary["coherence"][column]["mean"] is not None, column  # scored inside and outside the middle
    assert summary["slices_outside_training"] and all(isinstance(n, int)
                                                      for n in summary["slices_outside_training"].values())
    for convention in ("2019", "2023"):
        for version in VERSIONS:
            scores = summary["segmentation"][convention][version]
            assert {f"{m}_{r}" for m in ("dice", "hd95") for r in ("WT", "TC", "ET")} <= set(scores)
        assert set(summary["segmentation"]["ratio_completed_to_real"][convention]) == {"dice_WT", "dice_TC",
                                                                                       "dice_ET"}
    assert set(goals) == set(GOALS) and all(isinstance(ok, bool) for ok in goals.values())


def test_volume_benchmark_smoke_run(tmp_path: Path) -> None:
    """One training step per model (and for the refiner, on a case outside the split) on three 32-voxel cases, one
    more held out, a one-epoch segmenter, the recipe scaled by --image_size: the JSON is complete, the ceiling beats
    the one-step models, the figure is drawn."""
    recipe = tmp_path / "tiny.json"
    # At twice the size asked for: the benchmark trains and scores a copy scaled to --image_size 64.
    recipe.write_text(json.dumps({**TINY_RECIPE, "image_size": 128, "attn_resolutions": [32]}))
    out = tmp_path / "volumes"
    result = subprocess.run([sys.executable, "bench/bench_volumes.py", "--config", str(recipe), "--steps", "1",
                             "--cases", "3", "--volume_size", "32", "--image_size", "64", "--slices", "4",
                             "--seg_epochs", "1", "--seg_image_size", "32", "--seg_channels", "8", "16", "--threads",
                             "1", "--slices_all", "--variants", "refined", "--refiner_steps", "1",
                             "--refiner_cases", "1", "--test_cases", "1", "--device", "cpu", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "volumes.json").read_text())
    assert set(report["variants"]) == set(report["goals"]) == {"refined", "slices_all", CEILING}
    assert report["variants"][CEILING]["coherence"]["ssim_axial"]["mean"] > max(
        report["variants"][v]["coherence"]["ssim_axial"]["mean"] for v in ("refined", "slices_all"))
    assert (out / "results" / EXP / "refiner.pth").is_file() and "refine" in report["seconds"]
    refiner = json.loads((out / "results" / EXP / "refiner.json").read_text())
    assert Path(refiner["train"]) == out / "refiner_train" and len(refiner["cases"]) == 1  # a case outside the split
    assert report["refiner"] == {"steps": 1, "train": "1 phantom case outside the split"}
    assert report["recipe"] == {**TINY_RECIPE, "image_size": 64, "attn_resolutions": [16]}
    assert json.loads((out / "recipe_64.json").read_text()) == report["recipe"]
    assert report["steps"] == 1 and report["model_resolution"] == 64 and report["test_cases"] == 2
    # The test split's case and the extra one, named after the benchmark's own cases, both completed and segmented.
    held_out = {"BraTS-GLI-00003-000", "BraTS-GLI-00004-000"}
    assert report["extra_test_cases"] == 1 and set(report["variants"]["refined"]["slices"]) == held_out
    assert report["variants"]["refined"]["segmentation"]["cases"] == 2
    assert report["machine"]["cpu"] and report["machine"]["cpu_count"] >= 1
    # Trained on every brain slice, against 4 middle ones: a new case's brain may still reach a slice further.
    every, middle = (report["variants"][v]["slices_outside_training"] for v in ("slices_all", "refined"))
    assert len(report["middle_slices"]) == 2 and all(every[case] < middle[case] for case in held_out)
    for variant in report["variants"]:
        _check_variant(report["variants"][variant], report["goals"][variant])
    assert set(report["offset_goals"]) == set(report["goals"]) and all(
        set(met) == set(OFFSET_GOALS) for met in report["offset_goals"].values())
    assert set(report["goals_against_ceiling"]) == {"refined", "slices_all"} and all(
        set(met) == set(CEILING_GOALS) for met in report["goals_against_ceiling"].values())
    assert (out / "volumes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "goals met" in result.stdout
