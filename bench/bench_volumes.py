"""Volume benchmark: do whole completed volumes hold together and segment like the real ones? Phantom data.

    python bench/bench_volumes.py --steps 504 --threads 2

Makes phantom cases in BraTS 2023 naming with split lists (demo/make_sample_data.py), preprocesses them (--normalize
median), trains the small-budget recipe (configs/quickstart.json unless --config) for about --steps generator steps,
drops T1ce from the test split's cases (brasyn.py drop) and completes them several ways (brasyn.py complete: as the
original samples, with --shared_noise, with --intensity_reference inputs, with both, and with --refine after
brasyn.py refine trained a 3-D refiner on the training split's cases, or with --refiner_cases N on N cases
outside the split; --context_slices K and --slices_all add a model each; --test_cases N holds out N more cases).
Each completion is scored against the truth at the model's resolution, inside and outside the middle slices the
base model was trained on (brasyn.py score --model_resolution --slice_range), and segmented (brasyn.py segment: one
U-Net, trained on the training split's cases, reads every variant). So is the resolution ceiling: the truth taken to
the model's resolution and back, what a flawless model would complete. Writes --out/volumes.json (every summary and
the goals as booleans) and --out/volumes.png (axial, coronal and sagittal planes through one case's lesion centre).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from bench_common import machine_record  # noqa: E402

from demo.steps import (  # noqa: E402
    add_budget_args,
    add_machine_args,
    epochs_for,
    recipe_at_size,
    recipe_batch,
    recipe_size,
    run_step,
)
from utils.brasyn.cases import (  # noqa: E402
    BASELINE_SOURCE,
    case_folders,
    pair_with_completed,
    read_case_folder,
)
from utils.brasyn.complete import REPORT_NAME  # noqa: E402
from utils.brasyn.score import METRICS_NAME  # noqa: E402
from utils.core.artifacts import CONFIG_NAME, SEG_REPORT_NAME, SEGMENTER_NAME  # noqa: E402
from utils.core.errors import run_cli  # noqa: E402
from utils.core.fileio import save_json  # noqa: E402
from utils.core.options import ArgumentParser  # noqa: E402
from utils.data.brain import brain_mask  # noqa: E402
from utils.data.nifti_io import load_case_volume, load_label, save_like  # noqa: E402
from utils.eval.coherence import COHERENCE_COLUMNS, PLANES, RANGE_COLUMNS  # noqa: E402
from utils.eval.metrics import percentile_minmax  # noqa: E402
from utils.infer.volumes import resolution_round_trip  # noqa: E402

EXP = "volumes"
MISSING = "T1ce"
# The completions by the base model: every slice with fresh sampler noise (the original's way), one draw per volume,
# the brightness steadied along the volume, both, and the stack passed through a 3-D refiner (brasyn.py refine,
# trained on the training split's cases). --context_slices K adds one by a model trained with that 2.5-D
# conditioning, --slices_all one by a model trained on every brain slice.
INTENSITY = ["--intensity_reference", "inputs"]
# Not a completion: the truth at the model's resolution and back, scored and segmented as the completions are. Its
# numbers are the best any model at that resolution can reach on these measures.
CEILING = "resolution_ceiling"
NORMALIZE = "median"
VARIANTS = {"independent_noise": [], "shared_noise": ["--shared_noise"], "intensity_reference": INTENSITY,
            "shared_noise_and_intensity": ["--shared_noise", *INTENSITY], "refined": ["--refine"]}
# The label convention the goals read (the phantom cases carry BraTS 2023 names and labels; regions agree in both).
CONVENTION = "2023"
GOALS = {
    "dice_ET_completed_ge_90pct_real": "ET Dice of the completed cases >= 0.90 x that of the real images",
    "dice_ET_completed_above_copy_and_zero": "ET Dice of the completed cases above the T1 copy's and the zeros'",
    "dice_TC_completed_ge_90pct_real": "TC Dice of the completed cases >= 0.90 x that of the real images",
    "dice_TC_completed_above_copy_and_zero": "TC Dice of the completed cases above the T1 copy's and the zeros'",
    "dice_WT_completed_ge_95pct_real": "WT Dice of the completed cases >= 0.95 x that of the real images",
    "ssim_coronal_within_0.01_of_axial": "|mean ssim_coronal - mean ssim_axial| <= 0.01",
    "ssim_sagittal_within_0.01_of_axial": "|mean ssim_sagittal - mean ssim_axial| <= 0.01",
    "gradient_ratio_within_2pct": "|mean gradient_ratio - 1| <= 0.02 (through-plane smoothness as the truth's)",
    "ssim_outside_within_0.03_of_inside": "|mean ssim_axial_outside - mean ssim_axial_inside| <= 0.03 (slices "
                                          "outside the middle --slices against those inside)",
    "brightness_spread_outside_le_2x_inside": "mean brightness_ratio_std_outside <= 2 x mean "
                                              "brightness_ratio_std_inside",
}

# The three goals a flawless model at the model's resolution misses too (the resolution ceiling scores a gradient
# ratio of about 1.1, a worse outside SSIM and a wide edge-slice spread), read against the ceiling instead of the
# truth: what is left is the model's own share. Reported beside GOALS, never in their place.
CEILING_GOALS = {
    "gradient_ratio_within_2pct_of_ceiling": "|mean gradient_ratio / the ceiling's - 1| <= 0.02",
    "ssim_outside_gap_within_0.03_of_ceiling": "|(mean ssim_axial_inside - mean ssim_axial_outside) - the "
                                               "ceiling's| <= 0.03",
    "brightness_spread_outside_le_2x_ceiling": "mean brightness_ratio_std_outside <= 2 x the ceiling's",
}

# The spread goal read in units of the volume's brightness (brightness_offset_std) instead of per-slice ratios, which
# a nearly dark end slice of the truth inflates without bound. Reported beside GOALS, never in their place.
OFFSET_GOALS = {
    "brightness_offset_spread_outside_le_2x_inside": "mean brightness_offset_std_outside <= 2 x mean "
                                                     "brightness_offset_std_inside",
}


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    add_budget_args(parser, "volumes", steps=504, cases=9, seed=0)
    parser.add_argument("--volume_size", type=int, default=96, help="phantom voxels across the field of view")
    parser.add_argument("--image_size", type=int, default=None,
                        help="model slice size (default: the recipe's; another writes a scaled copy of the recipe "
                             "to --out, attention at the same depth; --volume_size gives a ceiling of the truth)")
    parser.add_argument("--seg_epochs", type=int, default=10, help="brasyn.py segment --epochs")
    parser.add_argument("--seg_image_size", type=int, default=64, help="brasyn.py segment --image_size")
    parser.add_argument("--seg_channels", type=int, nargs="+", default=None,
                        help="brasyn.py segment --channels (default: segment's own)")
    parser.add_argument("--context_slices", type=int, default=0, metavar="K",
                        help="also train a model with train.py --context_slices K (2.5-D) and complete with it")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="the completions of the base model to run (the first also trains the segmenter)")
    parser.add_argument("--refiner_steps", type=int, default=1000, help="brasyn.py refine --steps (variant refined)")
    parser.add_argument("--refiner_cases", type=int, default=0, metavar="N",
                        help="train the refiner on N extra phantom cases that neither the generator nor the "
                             "segmenter sees (0: on the training split's cases, whose middle slices the generator "
                             "was trained on)")
    parser.add_argument("--test_cases", type=int, default=0, metavar="N",
                        help="hold out N more phantom cases beside the test split's (training is unchanged; more "
                             "test cases make the Dice ratios steadier)")
    parser.add_argument("--slices_all", action="store_true",
                        help="also train a model on every brain slice (pre_process.py --slices all) and complete "
                             "with it; it is scored on the same inside/outside slices as the others")
    add_machine_args(parser)
    return parser


def model_table(context_slices: int, slices_all: bool) -> dict[str, tuple[str | None, str, list[object]]]:
    """Every model a run trains: experiment -> (the variant it adds, or None for the base model's variants; its
    preprocessed slices' folder; train.py's extra flags)."""
    table: dict[str, tuple[str | None, str, list[object]]] = {EXP: (None, "slices", [])}
    if context_slices:
        table[f"{EXP}_context{context_slices}"] = (f"context_slices_{context_slices}", "slices",
                                                   ["--context_slices", context_slices])
    if slices_all:
        table[f"{EXP}_all"] = ("slices_all", "slices_all", [])
    return table


def variants(context_slices: int, slices_all: bool = False, chosen: Sequence[str] = tuple(VARIANTS)
             ) -> dict[str, tuple[str, list[str]]]:
    """Each completion variant: its experiment name and brasyn.py complete's extra flags."""
    found = {name: (EXP, flags) for name, flags in VARIANTS.items() if name in chosen}
    for exp, (variant, _, _) in model_table(context_slices, slices_all).items():
        if variant:
            found[variant] = (exp, [])
    return found


def training_runs(args: argparse.Namespace, out: Path) -> dict[str, tuple[Path, list[object]]]:
    """Each experiment the variants need: its preprocessed slices and train.py's extra flags."""
    table = model_table(args.context_slices, args.slices_all)
    needed = {exp for exp, _ in variants(args.context_slices, args.slices_all, args.variants).values()}
    return {exp: (out / folder, flags) for exp, (_, folder, flags) in table.items() if exp in needed}


def copy_training_cases(cases: Path, dest: Path) -> None:
    """The training split's case folders copied to `dest`, the segmenter's --train (never a held-out case)."""
    shutil.rmtree(dest, ignore_errors=True)
    for name in (cases / "splits" / "train.list").read_text().split():
        shutil.copytree(cases / name, dest / name)


def new_phantom_cases(args: argparse.Namespace, folder: Path, count: int, purpose: str, seed: int,
                      extra: Sequence[object] = ()) -> float:
    """`count` phantom cases beside the benchmark's own (no split lists) in a fresh `folder`; the seconds taken."""
    shutil.rmtree(folder, ignore_errors=True)
    return run_step(f"{count} phantom cases {purpose}", "demo/make_sample_data.py",
                    ["--out", folder, "--layout", "brats2023", "--cases", count, "--volume_size", args.volume_size,
                     "--seed", seed, *extra, "--skull_strip", "--no_splits"])


def refiner_training_cases(args: argparse.Namespace, out: Path, timings: dict[str, float]) -> Path:
    """The refiner's --train: the training split's cases, or with --refiner_cases N that many new phantom cases
    (the seeds after the benchmark's own), so the refiner learns from syntheses as good as a test case's."""
    if not args.refiner_cases:
        return out / "seg_train"
    folder = out / "refiner_train"
    timings["phantom_refiner"] = new_phantom_cases(args, folder, args.refiner_cases, "for the refiner only",
                                                   args.seed + args.cases + args.test_cases)
    return folder


def drop_extra_test_cases(args: argparse.Namespace, out: Path, timings: dict[str, float]) -> None:
    """With --test_cases N: N new phantom cases (the seeds after the benchmark's own, named after its cases), T1ce
    dropped into the same held-out folders as the test split's."""
    if not args.test_cases:
        return
    folder = out / "test_extra"
    timings["phantom_test"] = new_phantom_cases(args, folder, args.test_cases, "held out beside the test split",
                                                args.seed + args.cases, ["--first_case", args.cases + 1])
    timings["drop_extra"] = run_step(f"{MISSING} dropped from them", "brasyn.py",
                                     ["drop", "--input", folder, "--missing", MISSING, "--out", out / "brasyn" / "val",
                                      "--truth", out / "brasyn" / "truth", "--overwrite"])


def prepare(args: argparse.Namespace, config: Path, out: Path) -> dict:
    """Phantom cases -> slices -> a trained experiment -> T1ce dropped from the test split; timings and numbers."""
    cases, slices = out / "cases", out / "slices"
    timings = {"phantom": run_step("phantom cases (BraTS 2023 names)", "demo/make_sample_data.py",
                                   ["--out", cases, "--layout", "brats2023", "--cases", args.cases, "--volume_size",
                                    args.volume_size, "--seed", args.seed, "--skull_strip", "--overwrite"])}
    runs = training_runs(args, out)
    for folder, count in sorted({(folder, "all" if folder != slices else args.slices) for folder, _ in runs.values()}):
        timings[f"preprocess_{folder.name}"] = run_step(
            f"preprocessing, {count} slices per case", "pre_process.py",
            ["--layout", "brats2023", "--input", cases, "--split_file", cases / "splits", "--output", folder,
             "--slices", count, "--image_size", recipe_size(config), "--normalize", NORMALIZE, "--overwrite"])
    train_slices = len(np.load(slices / "train" / "T1ce.npy", mmap_mode="r"))
    for exp, (folder, extra) in sorted(runs.items()):
        # The same number of generator steps for every model, however many slices it trains on.
        count = len(np.load(folder / "train" / "T1ce.npy", mmap_mode="r"))
        epochs, per_epoch = epochs_for(args.steps, count, recipe_batch(config))
        timings[f"train_{exp}"] = run_step(f"training {exp}: {epochs} epochs of {per_epoch} steps", "train.py",
                                           ["--config", config, "--input_path", folder, "--output_path",
                                            out / "results", "--exp", exp, "--num_epoch", epochs,
                                            "--save_ckpt_every", epochs, "--device", args.device, "--num_workers", 0,
                                            *extra, "--overwrite"])
    epochs, per_epoch = epochs_for(args.steps, train_slices, recipe_batch(config))
    shutil.rmtree(out / "brasyn", ignore_errors=True)  # no held-out case of an earlier run with other --test_cases
    timings["drop"] = run_step(f"{MISSING} dropped from the test cases", "brasyn.py",
                               ["drop", "--input", cases, "--split_file", cases / "splits" / "test.list",
                                "--missing", MISSING, "--out", out / "brasyn" / "val", "--truth",
                                out / "brasyn" / "truth", "--overwrite"])
    drop_extra_test_cases(args, out, timings)
    copy_training_cases(cases, out / "seg_train")
    if "refined" in args.variants:
        timings["refine"] = run_step(f"refiner of {EXP}, {args.refiner_steps} steps", "brasyn.py",
                                     ["refine", "--train", refiner_training_cases(args, out, timings), "--models",
                                      f"{MISSING}={out / 'results' / EXP}", "--epoch", "best", "--steps",
                                      args.refiner_steps, "--device", args.device, "--overwrite"])
    return {"seconds": timings, "epochs": epochs, "steps": epochs * per_epoch, "train_slices": train_slices}


def complete_variant(args: argparse.Namespace, out: Path, variant: str, scoring: list[object],
                     segmenter: Path | None) -> dict[str, float]:
    """Complete, score (with `scoring`, score's resolution and slice range) and segment one variant into
    out/<variant>/; the seconds of each step."""
    folder, brasyn = out / variant, out / "brasyn"
    exp, flags = variants(args.context_slices, args.slices_all, args.variants)[variant]
    timings = {"complete": run_step(f"completion, {variant.replace('_', ' ')}", "brasyn.py",
                                    ["complete", "--input", brasyn / "val", "--models",
                                     f"{MISSING}={out / 'results' / exp}",
                                     "--out", folder / "completed", "--epoch", "best", "--device", args.device,
                                     *flags, "--overwrite"])}
    return {**timings, **score_and_segment(args, out, variant, scoring, segmenter)}


def score_and_segment(args: argparse.Namespace, out: Path, variant: str, scoring: list[object],
                      segmenter: Path | None) -> dict[str, float]:
    """Score and segment out/<variant>/completed (training the segmenter unless given); the seconds of each."""
    folder, brasyn = out / variant, out / "brasyn"
    timings = {"score": run_step(f"volume scores, {variant.replace('_', ' ')}", "brasyn.py",
                                 ["score", "--completed", folder / "completed", "--truth", brasyn / "truth",
                                  "--out", folder / "metrics", *scoring])}
    # The first variant trains the segmenter; the others reuse it, so all are read by the same network.
    trained = ["--segmenter", segmenter] if segmenter else [
        "--train", out / "seg_train", "--epochs", args.seg_epochs, "--image_size", args.seg_image_size,
        *(["--channels", *args.seg_channels] if args.seg_channels else [])]
    timings["segment"] = run_step(f"segmentation, {variant.replace('_', ' ')}", "brasyn.py",
                                  ["segment", *trained, "--truth", brasyn / "truth", "--completed",
                                   folder / "completed", "--out", folder / "segmentation", "--device", args.device])
    return timings


def ceiling_completion(out: Path, source: str, resolution: int) -> None:
    """out/CEILING/completed: `source`'s completed cases with each synthesis replaced by the truth taken to the
    model's resolution and back (resolution_round_trip), i.e. what a flawless model at that resolution would give."""
    folder = out / CEILING / "completed"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(out / source / "completed", folder)
    for truth_folder in case_folders(out / "brasyn" / "truth", "--truth"):
        pair = pair_with_completed(read_case_folder(truth_folder), folder)
        truth = load_case_volume(pair.truth_image, f"truth {pair.name}")[0]
        target = pair.done.images[pair.contrast]
        reference = load_case_volume(target, f"completed {pair.name}")[1]
        brain = brain_mask([load_case_volume(path, f"completed {pair.name} {contrast}")[0]
                            for contrast, path in pair.done.images.items() if contrast != pair.contrast])
        save_like(resolution_round_trip(truth, brain, resolution, NORMALIZE), reference, target)


def collect(folder: Path) -> dict:
    """One variant's summaries: volume scores, slices outside training per case, segmentation."""
    score = json.loads((folder / "metrics" / f"{METRICS_NAME}.json").read_text())["summary"]["all"]
    report = json.loads((folder / "completed" / f"{REPORT_NAME}.json").read_text())
    segment = json.loads((folder / "segmentation" / f"{SEG_REPORT_NAME}.json").read_text())["summary"]["all"]
    coherence = [p + c for p in ("", "baseline_") for c in (*COHERENCE_COLUMNS, *RANGE_COLUMNS)]
    return {"coherence": {c: score[c] for c in coherence}, "score": score,
            "slices_outside_training": {r["case"]: r["slices_outside_training"] for r in report["cases"]},
            "slices": {r["case"]: r["slices"] for r in report["cases"]}, "segmentation": segment}


def _above(value: float | None, *others: float | None) -> bool:
    """value > every other (False when any is missing)."""
    return value is not None and all(o is not None and value > o for o in others)


def _within(value: float | None, target: float | None, tolerance: float) -> bool:
    """|value - target| <= tolerance (False when either is missing)."""
    return value is not None and target is not None and abs(value - target) <= tolerance


def _means(summary: dict) -> dict[str, float | None]:
    """The case means of the coherence columns the goals read."""
    return {c: summary["coherence"][c]["mean"] for c in ("ssim_axial", "ssim_coronal", "ssim_sagittal",
                                                         "gradient_ratio", *RANGE_COLUMNS)}


def _outside_gap(mean: dict[str, float | None]) -> float | None:
    """How far axial SSIM falls outside the middle slices (inside - outside; None when either is missing)."""
    inside, outside = mean["ssim_axial_inside"], mean["ssim_axial_outside"]
    return None if inside is None or outside is None else inside - outside


def _spread_at_most_twice_inside(mean: dict[str, float | None], column: str) -> bool:
    """mean <column>_outside <= 2 x mean <column>_inside (False when either is missing)."""
    inside, outside = mean[f"{column}_inside"], mean[f"{column}_outside"]
    return inside is not None and outside is not None and outside <= 2 * inside


def goals(summary: dict) -> dict[str, bool]:
    """GOALS evaluated on one variant's summary (a missing number fails its goal)."""
    seg = summary["segmentation"][CONVENTION]
    ratio = summary["segmentation"]["ratio_completed_to_real"][CONVENTION]
    dice = {v: {r: seg[v][f"dice_{r}"]["mean"] for r in ("WT", "TC", "ET")} for v in seg}
    mean = _means(summary)
    result = {}
    for region, share in (("ET", 0.90), ("TC", 0.90), ("WT", 0.95)):
        ratio_value = ratio[f"dice_{region}"]
        result[f"dice_{region}_completed_ge_{round(share * 100)}pct_real"] = ratio_value is not None and \
            ratio_value >= share
        if region != "WT":
            result[f"dice_{region}_completed_above_copy_and_zero"] = _above(
                dice["completed"][region], dice["copy"][region], dice["zero"][region])
    for plane in ("coronal", "sagittal"):
        result[f"ssim_{plane}_within_0.01_of_axial"] = _within(mean[f"ssim_{plane}"], mean["ssim_axial"], 0.01)
    result["gradient_ratio_within_2pct"] = _within(mean["gradient_ratio"], 1.0, 0.02)
    result["ssim_outside_within_0.03_of_inside"] = _within(mean["ssim_axial_outside"], mean["ssim_axial_inside"],
                                                           0.03)
    result["brightness_spread_outside_le_2x_inside"] = _spread_at_most_twice_inside(mean, "brightness_ratio_std")
    return {name: bool(result[name]) for name in GOALS}


def ceiling_goals(summary: dict, ceiling: dict) -> dict[str, bool]:
    """CEILING_GOALS evaluated on one variant's summary against the ceiling's (a missing number fails its goal)."""
    own, best = _means(summary), _means(ceiling)
    gradient, spread = "gradient_ratio", "brightness_ratio_std_outside"
    return {"gradient_ratio_within_2pct_of_ceiling": bool(best[gradient]) and own[gradient] is not None
            and _within(own[gradient] / best[gradient], 1.0, 0.02),
            "ssim_outside_gap_within_0.03_of_ceiling": _within(_outside_gap(own), _outside_gap(best), 0.03),
            "brightness_spread_outside_le_2x_ceiling": own[spread] is not None and best[spread] is not None
            and own[spread] <= 2 * best[spread]}


def offset_goals(summary: dict) -> dict[str, bool]:
    """OFFSET_GOALS evaluated on one variant's summary (a missing number fails its goal)."""
    return {"brightness_offset_spread_outside_le_2x_inside": _spread_at_most_twice_inside(_means(summary),
                                                                                           "brightness_offset_std")}


def figure_case(truth: Path, completed: dict[str, Path]) -> dict:
    """The first truth case's volumes on [0, 1] as score normalises them, its lesion centre and voxel sizes."""
    pairs = {v: pair_with_completed(read_case_folder(case_folders(truth, "--truth")[0]), c)
             for v, c in completed.items()}
    first = next(iter(pairs.values()))
    contrast = first.contrast
    image, nifti = load_case_volume(first.truth_image, f"truth {first.name}")
    volumes = {f"{contrast} truth": image}
    for variant, pair in pairs.items():
        volumes[f"synthesis, {variant.replace('_', ' ')}"] = load_case_volume(pair.done.images[contrast], variant)[0]
    source = BASELINE_SOURCE[contrast]
    volumes[f"baseline ({source} copy)"] = load_case_volume(first.done.images[source], source)[0]
    volumes = {k: percentile_minmax(v) for k, v in volumes.items()}
    lesion = load_label(first.label, "seg") > 0 if first.label else np.zeros(image.shape, bool)
    centre = np.argwhere(lesion).mean(0) if lesion.any() else np.array(image.shape) / 2
    return {"name": first.name, "volumes": volumes, "centre": [round(float(c)) for c in centre],
            "zooms": [float(z) for z in nifti.header.get_zooms()[:3]]}


def draw_volumes(case: dict, path: Path) -> None:
    """Rows: axial, coronal, sagittal planes through the lesion centre; columns: the volumes and the first |error|."""
    from utils.eval.plots import plt, save_figure

    names = list(case["volumes"])
    truth, first = case["volumes"][names[0]], case["volumes"][names[1]]
    columns = [*((n, case["volumes"][n], "gray") for n in names), (f"|error|, {names[1]}", np.abs(first - truth),
                                                                    "magma")]
    fig, axes = plt.subplots(len(PLANES), len(columns), figsize=(2.6 * len(columns), 2.6 * len(PLANES)),
                             squeeze=False)
    for row, (plane, axis) in enumerate(PLANES.items()):
        shown = [a for a in range(3) if a != axis]
        # Transposed, the second remaining axis runs up the picture; its voxel size over the first's is the aspect.
        aspect = case["zooms"][shown[1]] / case["zooms"][shown[0]]
        for col, (title, volume, cmap) in enumerate(columns):
            ax = axes[row, col]
            ax.imshow(np.take(volume, case["centre"][axis], axis=axis).T, cmap=cmap, origin="lower", vmin=0, vmax=1,
                      aspect=aspect)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=8)
            if col == 0:
                ax.set_ylabel(plane, fontsize=9)
    fig.suptitle(f"{case['name']}: planes through the lesion centre (each volume on [0, 1] as brasyn.py score "
                 "normalises it)", fontsize=9)
    save_figure(fig, path, 110)


def _fmt(value: float | None, digits: int = 3) -> str:
    """A number with `digits` decimals, or n/a."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def _verdicts(met: dict[str, bool]) -> str:
    """Each goal's name and yes or NO, comma-separated."""
    return ", ".join(f"{name} {'yes' if ok else 'NO'}" for name, ok in met.items())


def _range_line(c: dict[str, float | None]) -> str:
    """The inside/outside numbers of one variant's coherence means, as one printed line."""
    sides = ("inside", "outside")
    return ("  axial SSIM inside/outside the middle slices " + " / ".join(_fmt(c[f"ssim_axial_{s}"]) for s in sides)
            + ", brightness ratio " + " / ".join(f"{_fmt(c[f'brightness_ratio_{s}'])} ± "
                                                 f"{_fmt(c[f'brightness_ratio_std_{s}'])}" for s in sides)
            + ", offset spread " + " / ".join(_fmt(c[f"brightness_offset_std_{s}"]) for s in sides)
            + " (T1 copy: SSIM " + " / ".join(_fmt(c[f"baseline_ssim_axial_{s}"]) for s in sides) + ")")


def print_report(report: dict, out: Path) -> None:
    """Coherence, Dice and the goals of every variant, then the time taken."""
    for variant, summary in report["variants"].items():
        c = {k: v["mean"] for k, v in summary["coherence"].items()}
        print(f"\n{variant.replace('_', ' ')} ({report['test_cases']} test cases, mean over cases):")
        print("  synthesis: SSIM axial/coronal/sagittal " + " / ".join(_fmt(c[f"ssim_{p}"]) for p in PLANES)
              + f", gradient ratio {_fmt(c['gradient_ratio'])}, brightness ratio {_fmt(c['brightness_ratio'])} ± "
              f"{_fmt(c['brightness_ratio_std'])}")
        print("  T1 copy:   SSIM axial/coronal/sagittal " + " / ".join(_fmt(c[f"baseline_ssim_{p}"]) for p in PLANES)
              + f", gradient ratio {_fmt(c['baseline_gradient_ratio'])}, brightness ratio "
              f"{_fmt(c['baseline_brightness_ratio'])} ± {_fmt(c['baseline_brightness_ratio_std'])}")
        print(f"  slices outside training: {summary['slices_outside_training']} of {summary['slices']}")
        print(_range_line(c))
        seg = summary["segmentation"][CONVENTION]
        for version, scores in seg.items():
            print(f"  Dice WT/TC/ET {version:10} " + " / ".join(_fmt(scores[f"dice_{r}"]["mean"]) for r in
                                                               ("WT", "TC", "ET"))
                  + "   HD95 " + " / ".join(_fmt(scores[f"hd95_{r}"]["mean"], 1) for r in ("WT", "TC", "ET")))
        ratio = summary["segmentation"]["ratio_completed_to_real"][CONVENTION]
        print("  completed/real Dice: " + ", ".join(f"{r} {_fmt(ratio[f'dice_{r}'])}" for r in ("WT", "TC", "ET")))
        met = report["goals"][variant]
        print(f"  goals met: {sum(met.values())} of {len(met)}; " + _verdicts(met))
        print("  in units of the volume's brightness: " + _verdicts(report["offset_goals"][variant]))
        if variant in report["goals_against_ceiling"]:
            print("  against the resolution ceiling: " + _verdicts(report["goals_against_ceiling"][variant]))
    training = sum(seconds for step, seconds in report["seconds"].items() if step.startswith("train_"))
    print(f"\n{report['steps']} steps per model in {training / 60:.1f} min of training; "
          f"{report['seconds']['total'] / 60:.1f} min in all. Wrote {out / 'volumes.json'} and {out / 'volumes.png'}")


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the whole benchmark and write volumes.json and volumes.png."""
    args = build_parser().parse_args(argv)
    out = Path(args.out).resolve()
    config = recipe_at_size(Path(args.config).resolve(), args.image_size, out)
    recipe_batch(config)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    started = time.time()
    run = prepare(args, config, out)
    base = json.loads((out / "results" / EXP / CONFIG_NAME).read_text())
    resolution, middle = int(base["image_size"]), base["train_slice_range"]
    # Every variant is scored inside/outside the same middle slices, those the base model was trained on.
    scoring = ["--model_resolution", resolution, "--slice_range", *middle]
    first, *others = variants(args.context_slices, args.slices_all, args.variants)
    run["seconds"][first] = complete_variant(args, out, first, scoring, None)
    segmenter = out / first / "segmentation" / SEGMENTER_NAME
    for variant in others:
        run["seconds"][variant] = complete_variant(args, out, variant, scoring, segmenter)
    ceiling_completion(out, first, resolution)
    run["seconds"][CEILING] = score_and_segment(args, out, CEILING, scoring, segmenter)
    chosen = [*variants(args.context_slices, args.slices_all, args.variants), CEILING]
    summaries = {variant: collect(out / variant) for variant in chosen}
    case = figure_case(out / "brasyn" / "truth", {v: out / v / "completed" for v in summaries})
    draw_volumes(case, out / "volumes.png")
    report = {
        "command": "python bench/bench_volumes.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_record(args.threads, args.device),
        "recipe": json.loads(config.read_text()), "normalize": NORMALIZE, "missing": MISSING,
        "model_resolution": resolution, "middle_slices": middle, "epochs": run["epochs"], "steps": run["steps"],
        "train_slices": run["train_slices"], "test_cases": len(case_folders(out / "brasyn" / "truth", "--truth")),
        "extra_test_cases": args.test_cases,
        "segmenter": {"epochs": args.seg_epochs, "image_size": args.seg_image_size, "channels": args.seg_channels,
                      "train": "the training split's cases"},
        "refiner": {"steps": args.refiner_steps,
                    "train": f"{args.refiner_cases} phantom case{'s' * (args.refiner_cases != 1)} outside the split"
                    if args.refiner_cases
                    else "the training split's cases"} if "refined" in args.variants else None,
        "figure_case": case["name"], "convention": CONVENTION, "goal_definitions": GOALS,
        "goals": {variant: goals(summary) for variant, summary in summaries.items()},
        "ceiling_goal_definitions": CEILING_GOALS,
        "goals_against_ceiling": {variant: ceiling_goals(summary, summaries[CEILING])
                                  for variant, summary in summaries.items() if variant != CEILING},
        "offset_goal_definitions": OFFSET_GOALS,
        "offset_goals": {variant: offset_goals(summary) for variant, summary in summaries.items()},
        "variants": summaries,
        "seconds": {**run["seconds"], "total": round(time.time() - started, 1)},
    }
    save_json(report, out / "volumes.json")
    print_report(report, out)
    return report


if __name__ == "__main__":
    sys.exit(run_cli(main))
