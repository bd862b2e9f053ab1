"""The on-disk contract: every file name and key of the experiment, preprocessed-split and results folders."""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

from utils.core.errors import UserError
from utils.core.fileio import load_json, save_json

# --- The experiment folder (OUTPUT_PATH/EXP, written by train.py) -------------------------------------------------

CONFIG_NAME = "config.json"
# Recorded in config.json beside the options: the preprocessed arrays hold [0, 1], the networks see [-1, 1].
VALUE_RANGES = {"data_value_range": [0.0, 1.0], "model_value_range": [-1.0, 1.0]}
CONTENT_NAME = "content.pth"  # everything --resume needs
CONTENT_FORMAT = "mu-diff-train/1"  # stamped into content.pth; a different stamp is refused on load
TRAIN_LOG = "log.csv"
VAL_LOG = "val.csv"
CURVES = "curves.png"
SAMPLE_FIGURE_GLOB = "sample_discrete_epoch_*.png"
GENERATOR_NAMES = ("gen_diffusive_1", "gen_diffusive_2")  # the published checkpoints' names
NETWORK_NAMES = ("gen_diffusive_1", "gen_diffusive_2", "disc_diffusive_2", "att_conv")
BEST = "best"  # --epoch best: gen_diffusive_{1,2}_best.pth, kept by train.py
# content.pth keys of the critic and of the attention projection that turns its features into a map.
CRITIC_KEY = "disc_diffusive_2_dict"
ATTENTION_KEY = "att_conv_dict"
# The optional 3-D refiner (brasyn.py refine writes it, --refine reads it) and its training record.
REFINER_NAME = "refiner.pth"
REFINER_FORMAT = "mu-diff-refiner/1"  # stamped into refiner.pth; a different stamp is refused on load
REFINER_RECORD = "refiner.json"
REFINER_CURVE = "refiner_curve.png"


def experiment_dir(args: argparse.Namespace) -> Path:
    """OUTPUT_PATH/EXP."""
    return Path(args.output_path) / args.exp


def sample_figure_name(epoch: int) -> str:
    """File name of the preview grid train.py saves after epoch `epoch`."""
    return SAMPLE_FIGURE_GLOB.replace("*", str(epoch))


def _jsonable(value: Any) -> Any:
    """Turn tuples and paths into JSON types."""
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def save_config(args: argparse.Namespace, folder: str | os.PathLike, **extra: Any) -> Path:
    """Write every option (and `extra`, e.g. the resolved contrast order) to FOLDER/config.json."""
    config = {k: _jsonable(v) for k, v in vars(args).items()}
    config.update({k: _jsonable(v) for k, v in extra.items()})
    path = Path(folder) / CONFIG_NAME
    save_json(config, path)
    return path


def load_config(folder: str | os.PathLike) -> dict | None:
    """Read FOLDER/config.json, or None when there is none."""
    path = Path(folder) / CONFIG_NAME
    if not path.exists():
        return None
    return load_json(path, "delete it or restore it from the training run")


def check_content_format(content: dict, path: Path) -> None:
    """Refuse a content.pth stamped with another format than this version writes (unstamped files are older runs)."""
    stamp = content.get("format")
    if stamp is not None and stamp != CONTENT_FORMAT:
        raise UserError(f"{path} has format {stamp!r}, but this version reads {CONTENT_FORMAT!r}; use the version "
                        "that wrote it, or train again")


def available_epochs(exp_dir: Path) -> list[int]:
    """Epochs for which both gen_diffusive_1_E.pth and gen_diffusive_2_E.pth exist in `exp_dir`, ascending."""
    found = []
    for path in Path(exp_dir).glob(f"{GENERATOR_NAMES[0]}_*.pth"):
        match = re.fullmatch(rf"{GENERATOR_NAMES[0]}_(\d+)\.pth", path.name)
        if match and (Path(exp_dir) / f"{GENERATOR_NAMES[1]}_{match.group(1)}.pth").exists():
            found.append(int(match.group(1)))
    return sorted(found)


def generator_files(exp_dir: Path, epoch: int | str | None = None) -> tuple[Path, Path]:
    """The two generator checkpoints: the published names, those of `epoch`, or the best ones ('best')."""
    suffix = "" if epoch is None else f"_{epoch}"
    paths = tuple(Path(exp_dir) / f"{name}{suffix}.pth" for name in GENERATOR_NAMES)
    missing = [p for p in paths if not p.exists()]
    if missing:
        epochs = available_epochs(exp_dir)
        hint = (f"epochs saved there: {', '.join(map(str, epochs))} (pick one with --epoch)" if epochs
                else "check --output_path and --exp")
        if epoch == BEST:
            hint = ("train.py writes it after each epoch whose validation score is the best so far; this experiment "
                    "has none (trained by an older version?)")
        raise UserError(f"checkpoint {missing[0]} not found; {hint}")
    return paths  # type: ignore[return-value]


# --- The preprocessed split folder (INPUT_PATH/<split>/, written by pre_process.py) ----------------------------------

SPLITS = ("train", "val", "test")
INFO = "preprocess.json"
MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("index", "case_id", "slice_index")
BRAIN_MASK = "brain_mask"
LESION_MASK = "lesion_mask"

# --- The results folder (OUTPUT_PATH/EXP/generated_samples/, written by test.py, read by metric_calc.py) -------------

OUTPUT_DIR_NAME = "generated_samples"
SAMPLES_MANIFEST = "manifest.csv"  # which split slice each output index is


def baseline_output_dir(kind: str) -> str:
    """Name of the results folder of test.py --baseline KIND, next to generated_samples/."""
    return f"{OUTPUT_DIR_NAME}_baseline_{kind}"


# Output name -> (PNG folder, .npy stack), both relative to generated_samples/.
OUTPUTS = {
    "synth": ("synth", "synth.npy"),
    "real": ("real", "real.npy"),
    "brain_mask": ("mask/brain", "brain_mask.npy"),
    "lesion_mask": ("mask/lesion", "lesion_mask.npy"),
    "disagreement": ("uncertainty/disagreement", "uncertainty/disagreement.npy"),
    "critic_attention": ("uncertainty/critic_attention", "uncertainty/critic_attention.npy"),
}
VOLUMES_DIR_NAME = "generated_volumes"  # test.py --nifti's default output folder, in the experiment folder
# metric_calc.py's outputs, next to the results folder's stacks unless --out says otherwise.
METRICS_CSV = "metrics_per_slice.csv"
METRICS_JSON = "metrics_summary.json"
METRICS_FIGURE = "metrics_distribution.png"


def output_stack(name: str) -> str:
    """Path of output `name`'s .npy stack inside the results folder."""
    return OUTPUTS[name][1]


def slice_name(index: int) -> str:
    """File stem of dataset slice `index` (the same in every output folder)."""
    return f"slice_{index:05d}"


# --- The segmentation check folder (brasyn.py segment --out) ---------------------------------------------------------
SEG_REPORT_NAME = "segmentation_metrics"  # <out>/segmentation_metrics.{csv,json}
SEG_FIGURE_NAME = "segmentation_dice.png"
SEGMENTER_NAME = "segmenter.pt"  # the trained segmenter, reused with --segmenter
