"""Budget curves of the volume benchmark: how the goals' numbers move with the training steps.

    B=bench/results; python bench/bench_volumes_budget.py --runs $B/volumes_504 $B/volumes_1512 $B/volumes_2400

Reads the volumes.json of several bench/bench_volumes.py runs that differ in --steps and, for every completion they
all hold, plots against the steps: the completed/real Dice of whole tumour, tumour core and enhancing tumour (with
the goals' 95 % and 90 % lines), SSIM in the three planes, the through-plane/in-plane gradient ratio and the
edge-slice brightness spread over the middle slices' (the goal's 2), of the per-slice ratio and of the offset in
units of the volume's brightness, each beside the resolution ceiling's (the truth
at the model's resolution and back). A refined completion is only compared with refined ones of the same refiner
settings. Writes --out/budget.json (every number plotted, the goals met per run) and --out/budget.png.
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_volumes import CEILING, CONVENTION  # noqa: E402

from utils.core.errors import UserError, run_cli  # noqa: E402
from utils.core.fileio import save_json  # noqa: E402
from utils.core.options import ArgumentParser  # noqa: E402
from utils.eval.coherence import PLANES  # noqa: E402

REGIONS = ("WT", "TC", "ET")
# The panels: a title, the series drawn in it (label -> how to read it from a variant's summary) and goal lines.
PANELS = {
    "completed / real Dice": ({r: ("dice", r) for r in REGIONS}, {"WT goal 0.95": 0.95, "TC, ET goal 0.90": 0.90}),
    "SSIM (model resolution)": ({p: ("coherence", f"ssim_{p}") for p in PLANES}, {}),
    "gradient ratio through / in plane": ({"gradient ratio": ("coherence", "gradient_ratio")}, {"truth": 1.0}),
    "brightness spread outside / inside": ({"of the ratio": ("spread", "brightness_ratio_std"),
                                            "of the offset": ("spread", "brightness_offset_std")}, {"goal 2": 2.0}),
}


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, metavar="DIR",
                        help="bench/bench_volumes.py --out folders, one per training budget")
    parser.add_argument("--out", default="bench/results/volumes_budget", help="where budget.json/budget.png go")
    return parser


def load_run(folder: str) -> dict:
    """One run's volumes.json, or a one-line error naming the folder."""
    path = Path(folder) / "volumes.json"
    if not path.is_file():
        raise UserError(f"--runs {folder}: no volumes.json there; run bench/bench_volumes.py --out {folder} first")
    return json.loads(path.read_text())


def variant_key(report: dict, variant: str) -> str:
    """The variant's name, with the refiner's settings for the refined one (refiners are compared like with like)."""
    if variant != "refined" or not report.get("refiner"):
        return variant
    return f"refined ({report['refiner']['steps']} steps on {report['refiner']['train']})"


def read_value(summary: dict, path: tuple[str, ...]) -> float | None:
    """One plotted number of a variant's summary: a Dice ratio, a coherence mean or a spread's outside / inside
    (None where the run predates the column)."""
    if path[0] == "dice":
        return summary["segmentation"]["ratio_completed_to_real"][CONVENTION][f"dice_{path[1]}"]
    means = {c: v["mean"] for c, v in summary["coherence"].items()}
    if path[0] == "coherence":
        return means[path[1]]
    inside, outside = means.get(f"{path[1]}_inside"), means.get(f"{path[1]}_outside")
    return None if not inside or outside is None else outside / inside


def series(summary: dict) -> dict[str, float | None]:
    """Every plotted number of one variant at one budget, keyed 'panel: label'."""
    return {f"{title}: {label}": read_value(summary, path)
            for title, (lines, _) in PANELS.items() for label, path in lines.items()}


def budget_table(reports: Sequence[dict]) -> dict:
    """Per shared completion (and the ceiling): the steps and each plotted number per run, and the goals met."""
    keyed = [{variant_key(r, v): s for v, s in r["variants"].items()} for r in reports]
    shared = [k for k in keyed[0] if all(k in other for other in keyed[1:])]
    if CEILING not in shared:
        raise UserError("--runs: the runs hold no resolution ceiling; rerun them with this bench/bench_volumes.py")
    table = {}
    for key in shared:
        numbers = [series(run[key]) for run in keyed]
        name = next(v for v in reports[0]["variants"] if variant_key(reports[0], v) == key)
        table[key] = {"steps": [r["steps"] for r in reports],
                      "values": {column: [n[column] for n in numbers] for column in numbers[0]},
                      "goals_met": [sum(r["goals"][name].values()) for r in reports],
                      "goals": len(reports[0]["goals"][name])}
    return table


def check_budgets(reports: Sequence[dict], folders: Sequence[str]) -> list[dict]:
    """The runs sorted by steps; a one-line error when two share a budget."""
    order = sorted(range(len(reports)), key=lambda i: reports[i]["steps"])
    steps = [reports[i]["steps"] for i in order]
    for earlier, later in zip(order, order[1:]):
        if reports[earlier]["steps"] == reports[later]["steps"]:
            raise UserError(f"--runs: {folders[earlier]} and {folders[later]} both trained {reports[later]['steps']} "
                            "steps; give one run per budget")
    if len(steps) < 2:
        raise UserError("--runs: give at least two runs with different --steps")
    return [{"folder": folders[i], "steps": reports[i]["steps"], "cpu": reports[i]["machine"].get("cpu"),
             "command": reports[i]["command"]} for i in order]


def draw_budget(table: dict, path: Path) -> None:
    """One row per completion, one panel per PANELS entry; the ceiling dashed in grey, goal lines dotted."""
    from utils.eval.plots import plt, save_figure

    rows = [k for k in table if k != CEILING]
    fig, axes = plt.subplots(len(rows), len(PANELS), figsize=(4.2 * len(PANELS), 3.0 * len(rows)), squeeze=False)
    for row, key in enumerate(rows):
        for col, (title, (lines, goal_lines)) in enumerate(PANELS.items()):
            ax = axes[row, col]
            for label in lines:
                column = f"{title}: {label}"
                drawn = ax.plot(table[key]["steps"], _nan(table[key]["values"][column]), marker="o", label=label)
                ax.plot(table[CEILING]["steps"], _nan(table[CEILING]["values"][column]), linestyle="--",
                        color=drawn[0].get_color(), alpha=0.5)
            for name, value in goal_lines.items():
                ax.axhline(value, color="grey", linestyle=":", linewidth=1)
                ax.annotate(name, (0.01, value), xycoords=("axes fraction", "data"), fontsize=7, color="grey")
            ax.set_title(title, fontsize=8)
            ax.set_xlabel("training steps", fontsize=8)
            if col == 0:
                ax.set_ylabel(textwrap.fill(key.replace("_", " "), 32), fontsize=8)
            ax.legend(fontsize=7)
    fig.suptitle("volume benchmark against the training budget (solid: completion; dashed: resolution ceiling)",
                 fontsize=9)
    save_figure(fig, path, 110)


def _nan(values: Sequence[float | None]) -> list[float]:
    """None as NaN, so a missing number leaves a gap instead of failing the plot."""
    return [float("nan") if v is None else v for v in values]


def main(argv: Sequence[str] | None = None) -> dict:
    """Read the runs, write budget.json and budget.png, print the table."""
    args = build_parser().parse_args(argv)
    loaded = [load_run(folder) for folder in args.runs]
    runs = check_budgets(loaded, args.runs)
    reports = sorted(loaded, key=lambda r: r["steps"])
    if len({r["cpu"] for r in runs}) > 1:
        print("note: the runs come from different CPU models, whose float32 training ends in different models")
    table = budget_table(reports)
    out = Path(args.out)
    result = {"runs": runs, "convention": CONVENTION, "variants": table}
    save_json(result, out / "budget.json")
    draw_budget(table, out / "budget.png")
    for key, row in table.items():
        print(f"\n{key.replace('_', ' ')}, steps {row['steps']}, goals met {row['goals_met']} of {row['goals']}")
        for column, values in row["values"].items():
            print(f"  {column}: " + ", ".join("n/a" if v is None else f"{v:.3f}" for v in values))
    print(f"\nWrote {out / 'budget.json'} and {out / 'budget.png'}")
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main))
