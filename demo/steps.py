"""Run one README command as a child process and time it (the quickstart and the benchmarks show each step), and
turn a benchmark's step budget into epochs of its recipe."""
from __future__ import annotations

import argparse
import math
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from utils.core.errors import UserError
from utils.core.fileio import load_json, save_json

ROOT = Path(__file__).resolve().parents[1]


def run_step(title: str, script: str, flags: Sequence[object]) -> float:
    """Print and run `python SCRIPT FLAGS` from the repository root; stop with a UserError if it fails.

    Returns the seconds it took.
    """
    command = [sys.executable, str(ROOT / script), *map(str, flags)]
    print(f"\n== {title}\n$ python {script} {shlex.join(map(str, flags))}", flush=True)
    started = time.time()
    result = subprocess.run(command, cwd=ROOT)
    if result.returncode != 0:
        raise UserError(f"step '{title}' failed (exit {result.returncode}); its message is above")
    seconds = time.time() - started
    print(f"   ({seconds:.0f} s)", flush=True)
    return seconds


def read_recipe(config: Path) -> dict:
    """The recipe file's settings (UserError when the file is missing or not JSON)."""
    if not config.is_file():
        raise UserError(f"--config {config}: no such file")
    return load_json(config, "give --config a recipe of train.py options, such as configs/quickstart.json")


def recipe_value(config: Path, key: str, values: dict | None = None) -> object:
    """One setting of the recipe file, or of its `values` already read (UserError when the file or key is missing)."""
    values = read_recipe(config) if values is None else values
    if key not in values:
        raise UserError(f"{config} sets no '{key}'; the benchmark needs it")
    return values[key]


def recipe_batch(config: Path) -> int:
    """The recipe file's batch_size (UserError when the file or the key is missing)."""
    return int(recipe_value(config, "batch_size"))


def recipe_size(config: Path) -> int:
    """The recipe file's image_size, the slice size its networks are built for."""
    return int(recipe_value(config, "image_size"))


def recipe_at_size(config: Path, image_size: int | None, folder: Path) -> Path:
    """The recipe file, or with `image_size` a copy at that slice size written to `folder`, with its attention at
    the same depth of the network (attn_resolutions scaled alike); UserError when no such network exists."""
    values = read_recipe(config)
    base = int(recipe_value(config, "image_size", values))
    if image_size is None or image_size == base:
        return config
    levels = len(recipe_value(config, "ch_mult", values)) - 1
    scaled = [r * image_size / base for r in values.get("attn_resolutions", [])]
    if image_size < 8 or image_size % 2 ** levels or any(r != int(r) for r in scaled):
        raise UserError(f"--image_size {image_size}: {config} (image_size {base}, {levels + 1} levels) does not "
                        f"scale to it; use a multiple of {2 ** levels} that keeps its attention resolutions whole")
    values.update(image_size=image_size, attn_resolutions=[int(r) for r in scaled])
    path = folder / f"recipe_{image_size}.json"
    save_json(values, path)
    return path


def epochs_for(steps: int, train_slices: int, batch: int) -> tuple[int, int]:
    """(epochs, steps per epoch) that give at least `steps` generator steps."""
    per_epoch = train_slices // batch
    if per_epoch < 1:
        raise UserError(f"--batch_size {batch} is larger than the {train_slices} training slices")
    return max(1, math.ceil(steps / per_epoch)), per_epoch


def add_budget_args(parser: argparse.ArgumentParser, name: str, steps: int, cases: int, seed: int) -> None:
    """The options the phantom benchmarks share: output folder, recipe, step budget, phantom cases and slices."""
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / name), help="output folder")
    parser.add_argument("--config", default=str(ROOT / "configs" / "quickstart.json"),
                        help="training recipe (train.py --config)")
    parser.add_argument("--steps", type=int, default=steps, help="generator steps to train (rounded up to epochs)")
    parser.add_argument("--cases", type=int, default=cases, help="phantom cases (split about 65/15/20 %%)")
    parser.add_argument("--slices", type=int, default=24, help="middle axial slices per case for training")
    parser.add_argument("--seed", type=int, default=seed, help="seed of the first phantom case")


def add_machine_args(parser: argparse.ArgumentParser) -> None:
    """CPU threads and the device, for every step a phantom benchmark runs."""
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for every step")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one, else the CPU), cpu, cuda "
                        "or cuda:N")
