"""The volume benchmark's budget curves (bench/bench_volumes_budget.py) from hand-made volumes.json files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_volumes import CEILING, GOALS
from bench_volumes_budget import main

from utils.core.errors import UserError


def _variant(tc_ratio: float, gradient: float, spread_outside: float, offset_outside: float | None = None) -> dict:
    """A variant's summary with the numbers the curves read (Dice ratios, coherence means); without
    `offset_outside`, as a run from before the offset columns."""
    means = {"ssim_axial": 0.85, "ssim_coronal": 0.83, "ssim_sagittal": 0.80, "gradient_ratio": gradient,
             "brightness_ratio_std_inside": 0.02, "brightness_ratio_std_outside": spread_outside}
    if offset_outside is not None:
        means.update(brightness_offset_std_inside=0.01, brightness_offset_std_outside=offset_outside)
    ratio = {"dice_WT": 0.99, "dice_TC": tc_ratio, "dice_ET": None}
    return {"coherence": {c: {"mean": v} for c, v in means.items()},
            "segmentation": {"ratio_completed_to_real": {"2019": ratio, "2023": ratio}}}


def _write_run(folder: Path, steps: int, tc_ratio: float, refiner_train: str = "the training split's cases") -> str:
    """A bench_volumes run folder holding only its volumes.json."""
    summaries = {"independent_noise": _variant(tc_ratio, 1.15, 0.08, 0.015 if steps > 1000 else None),
                 "refined": _variant(tc_ratio - 0.03, 1.07, 0.14),
                 CEILING: _variant(1.09, 1.106, 0.135)}
    goals = {v: {g: i < steps // 500 for i, g in enumerate(GOALS)} for v in summaries}
    report = {"steps": steps, "machine": {"cpu": "test CPU"}, "command": f"bench_volumes.py --steps {steps}",
              "refiner": {"steps": 300, "train": refiner_train}, "variants": summaries, "goals": goals}
    folder.mkdir(parents=True)
    (folder / "volumes.json").write_text(json.dumps(report))
    return str(folder)


def test_curves_follow_each_completion_over_the_budgets_in_step_order(tmp_path: Path) -> None:
    """Runs given in any order come out sorted by steps, each plotted number read from its run; a missing Dice stays
    a gap; each spread is outside over inside; goals met are counted per run; the figure is written."""
    late = _write_run(tmp_path / "late", 1512, 0.92)
    early = _write_run(tmp_path / "early", 504, 0.87)
    result = main(["--runs", late, early, "--out", str(tmp_path / "out")])
    assert [r["steps"] for r in result["runs"]] == [504, 1512]
    row = result["variants"]["independent_noise"]
    assert row["steps"] == [504, 1512] and row["goals_met"] == [1, 3] and row["goals"] == len(GOALS)
    assert row["values"]["completed / real Dice: TC"] == [0.87, 0.92]
    assert row["values"]["completed / real Dice: ET"] == [None, None]
    assert row["values"]["brightness spread outside / inside: of the ratio"] == pytest.approx([4.0, 4.0])
    offset = row["values"]["brightness spread outside / inside: of the offset"]
    assert offset[0] is None and offset[1] == pytest.approx(1.5)  # the early run predates the offset columns
    refined = result["variants"]["refined (300 steps on the training split's cases)"]
    assert refined["values"]["completed / real Dice: TC"] == pytest.approx([0.84, 0.89])
    assert json.loads((tmp_path / "out" / "budget.json").read_text())["variants"].keys() == result["variants"].keys()
    assert (tmp_path / "out" / "budget.png").stat().st_size > 10_000


def test_refiners_of_other_settings_and_bad_runs_are_not_compared(tmp_path: Path) -> None:
    """A refined completion is left out when the runs' refiners trained on other cases; a folder without
    volumes.json, two runs of one budget or a single run are one-line errors naming the problem."""
    first = _write_run(tmp_path / "a", 504, 0.87)
    other = _write_run(tmp_path / "b", 1008, 0.9, refiner_train="6 phantom cases outside the split")
    assert set(main(["--runs", first, other, "--out", str(tmp_path / "out")])["variants"]) == {"independent_noise",
                                                                                              CEILING}
    with pytest.raises(UserError, match="no volumes.json"):
        main(["--runs", first, str(tmp_path), "--out", str(tmp_path / "out")])
    same = _write_run(tmp_path / "c", 504, 0.88)
    with pytest.raises(UserError, match="both trained 504 steps"):
        main(["--runs", first, same, "--out", str(tmp_path / "out")])
    with pytest.raises(UserError, match="at least two runs"):
        main(["--runs", first, "--out", str(tmp_path / "out")])
