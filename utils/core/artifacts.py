"""The on-disk contract: every file name and key of the experiment, preprocessed-split and results folders."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any
from utils.core.errors import UserError
from utils.core.fileio import load_json, save_json
import re


CONFIG_NAME = "config.json"


def experiment_dir(args: argparse.Namespace) -> Path:
    """OUTPUT_PATH/EXP."""
    return Path(args.output_path) / args.exp


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


SPLITS = ("train", "val", "test")


BRAIN_MASK = "brain_mask"


LESION_MASK = "lesion_mask"


MANIFEST = "manifest.csv"


MANIFEST_COLUMNS = ("index", "case_id", "slice_index")


INFO = "preprocess.json"


GENERATOR_NAMES = ("gen_diffusive_1", "gen_diffusive_2")


CONTENT_NAME = "content.pth"


BEST = "best"  # --epoch best: gen_diffusive_{1,2}_best.pth, kept by train.py


# content.pth keys (train.py) of the critic and of the attention projection that turns its features into a map.
CRITIC_KEY = "disc_diffusive_2_dict"


ATTENTION_KEY = "att_conv_dict"


OUTPUT_DIR_NAME = "generated_samples"


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


CONTENT = "content.pth"


CONTENT_FORMAT = "mu-diff-train/1"


NETWORK_NAMES = ("gen_diffusive_1", "gen_diffusive_2", "disc_diffusive_2", "att_conv")


# Output name -> (PNG folder, .npy stack), both relative to generated_samples/.
OUTPUTS = {
    "synth": ("synth", "synth.npy"),
    "real": ("real", "real.npy"),
    "brain_mask": ("mask/brain", "brain_mask.npy"),
    "lesion_mask": ("mask/lesion", "lesion_mask.npy"),
    "disagreement": ("uncertainty/disagreement", "uncertainty/disagreement.npy"),
    "critic_attention": ("uncertainty/critic_attention", "uncertainty/critic_attention.npy"),
}


def slice_name(index: int) -> str:
    """File stem of dataset slice `index` (the same in every output folder)."""
    return f"slice_{index:05d}"
