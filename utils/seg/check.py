"""brasyn.py segment: the downstream check. A segmenter trained on real cases, run on held-out cases' four inputs."""
from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from utils.brasyn.cases import _check_apart
from utils.core.artifacts import SEG_FIGURE_NAME, SEG_REPORT_NAME, SEGMENTER_NAME
from utils.core.errors import UserError
from utils.core.fileio import save_csv, save_json
from utils.core.runtime import resolve_device, seed_everything
from utils.data.layouts import BRATS_CONTRASTS
from utils.seg.cases import (
    VERSIONS,
    HeldOutCase,
    held_out_cases,
    input_versions,
    load_classes,
    training_cases,
    voxel_spacing,
)
from utils.seg.labels import CONVENTIONS, REGIONS, from_classes, region_labels, region_masks
from utils.seg.metrics import SEG_METRICS, RegionScorer
from utils.seg.network import SegmenterConfig, load_segmenter, save_segmenter
from utils.seg.report import plot_dice, summarise, table
from utils.seg.slices import classes_on_grid, image_slices, slice_range
from utils.seg.training import train_segmenter, training_slices

TRAINING_LOG = "segmenter_training.csv"


def _trained(args: argparse.Namespace, held: list[HeldOutCase], device: torch.device, out: Path
             ) -> tuple[torch.nn.Module, SegmenterConfig, dict]:
    """A segmenter trained on --train (saved to <out>), refusing training cases that are also held out."""
    if args.epochs < 1 or args.batch_size < 1:
        raise UserError(f"--epochs and --batch_size must be at least 1 (got {args.epochs}, {args.batch_size})")
    config = SegmenterConfig(image_size=args.image_size, channels=list(args.channels))
    cases = training_cases(Path(args.train))
    shared = sorted({c.name for c in cases} & {h.name for h in held})
    if shared:
        raise UserError(f"case {shared[0]} is both in --train and in --truth; the check needs cases the segmenter "
                        "never saw (train on the training split)")
    data = training_slices(cases, config.image_size)
    network, log = train_segmenter(data, config, args.epochs, args.batch_size, args.lr, device, args.seed)
    save_segmenter(network, config, out / SEGMENTER_NAME)
    save_csv(log, out / TRAINING_LOG)
    record = {"train": str(Path(args.train).resolve()), "cases": len(cases), "slices": len(data.images),
              "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
              "final_loss": log[-1]["loss"], "loss": "MONAI DiceCELoss (softmax, one-hot target)"}
    return network, config, record


@torch.no_grad()
def predict(network: torch.nn.Module, images: np.ndarray, index: range, config: SegmenterConfig,
            device: torch.device, batch_size: int) -> np.ndarray:
    """Class indices (H, W, D) of (4, H, W, D) images: the brain slices `index` segmented, background elsewhere."""
    slices = image_slices(images, index, config.image_size)
    probabilities = torch.cat([torch.softmax(network(part.to(device)), dim=1).cpu()
                               for part in slices.split(batch_size)])
    return classes_on_grid(probabilities, index, images.shape[1:])


def score_case(case: HeldOutCase, network: torch.nn.Module, config: SegmenterConfig, device: torch.device,
               batch_size: int, scorer: RegionScorer) -> list[dict]:
    """One row per input version and label convention: Dice and HD95 of WT, TC and ET."""
    truth = load_classes(case.label, case.naming, f"truth case {case.name} seg")
    spacing = voxel_spacing(case.label, f"truth case {case.name} seg")
    versions = input_versions(case)
    acquired = [k for k, c in enumerate(BRATS_CONTRASTS) if c != case.missing]
    # The same slices for every version: the brain of the three acquired images, which all four share.
    index = slice_range(versions["real"], acquired, f"case {case.name}")
    rows = []
    for version, images in versions.items():
        predicted = predict(network, images, index, config, device, batch_size)
        for convention, naming in CONVENTIONS.items():
            pred = region_masks(from_classes(predicted, naming), naming)
            true = region_masks(from_classes(truth, naming), naming)
            scores = {region: scorer(pred[region], true[region], spacing) for region in REGIONS}
            rows.append({"case": case.name, "missing": case.missing, "version": version, "convention": convention,
                         **{f"dice_{r}": round(s[0], 6) for r, s in scores.items()},
                         **{f"hd95_{r}": round(s[1], 4) for r, s in scores.items()},
                         **{f"true_voxels_{r}": int(true[r].sum()) for r in REGIONS}})
    return rows


def _definitions() -> dict:
    """What the JSON says the columns, versions and conventions are."""
    return {"versions": VERSIONS, **SEG_METRICS,
            "regions": {"WT": "whole tumour: necrosis, oedema and enhancing tumour", "TC": "tumour core: necrosis "
                        "and enhancing tumour", "ET": "enhancing tumour"},
            "conventions": {c: {r: list(v) for r, v in region_labels(n).items()} for c, n in CONVENTIONS.items()},
            "grid": "predicted on axial slices resized to image_size, then mapped back to the case's own grid",
            "ratio_completed_to_real": "mean Dice of the completed version / mean Dice of the real images"}


def segment_cases(args: argparse.Namespace) -> list[dict]:
    """The downstream check: <out>/segmentation_metrics.csv (per case) and .json (summary), and a figure."""
    out = Path(args.out)
    for flag in ("--truth", "--completed"):
        _check_apart((flag, Path(getattr(args, flag[2:]))), ("--out", out))
    held = held_out_cases(Path(args.truth), Path(args.completed))
    device = resolve_device(args.device)
    seed_everything(args.seed)
    if args.segmenter:
        network, config = load_segmenter(Path(args.segmenter))
        network, training = network.to(device).eval(), {"segmenter": str(Path(args.segmenter).resolve())}
    else:
        network, config, training = _trained(args, held, device, out)
    scorer = RegionScorer()
    rows: list[dict] = []
    with tqdm(held, desc="segmenting", unit="case") as bar:
        for case in bar:
            rows += score_case(case, network, config, device, args.batch_size, scorer)
    summary = summarise(rows)
    save_csv(rows, out / f"{SEG_REPORT_NAME}.csv")
    save_json({"definitions": _definitions(), "segmenter": asdict(config), "training": training,
               "device": str(device), "summary": summary}, out / f"{SEG_REPORT_NAME}.json")
    plot_dice(summary, out / SEG_FIGURE_NAME)
    print(f"segmentation of {len(held)} held-out cases in four input versions (mean over cases; HD95 in mm):")
    print(table(summary))
    print(f"per case: {out / SEG_REPORT_NAME}.csv; summary: {out / SEG_REPORT_NAME}.json; figure: "
          f"{out / SEG_FIGURE_NAME}")
    return rows
