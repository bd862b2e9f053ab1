"""Resuming a run: reading content.pth, checking the options match, restoring random state."""
from __future__ import annotations

import random
from argparse import Namespace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.core.artifacts import (
    CONFIG_NAME,
    CONTENT_NAME,
    CURVES,
    GENERATOR_NAMES,
    SAMPLE_FIGURE_GLOB,
    TRAIN_LOG,
    VAL_LOG,
    check_content_format,
)
from utils.core.errors import UserError
from utils.core.options import DATA_KEYS, DIFFUSION_KEYS, MODEL_KEYS
from utils.model.checkpoint import read_checkpoint


def read_content(path: Path, device: torch.device | str = "cpu") -> dict:
    """Load content.pth (weights only) and check that it is a training checkpoint of this program."""
    content = read_checkpoint(path, map_location=device)
    if not isinstance(content, dict) or "gen_diffusive_1_dict" not in content or "args" not in content:
        raise UserError(f"{path} is not a training checkpoint written by this train.py; start a new run "
                        "(--overwrite) or point --exp at the right experiment")
    check_content_format(content, path)
    return content


def check_resume(args: Namespace, exp_dir: Path) -> int:
    """Completed epochs of the run to continue; UserError when there is none or its configuration differs."""
    path = exp_dir / CONTENT_NAME
    if not path.is_file():
        raise UserError(f"--resume: {path} does not exist; train without --resume first (or fix --exp/--output_path)")
    content = read_content(path)
    stored = content["args"]
    keys = MODEL_KEYS + DIFFUSION_KEYS + DATA_KEYS
    diffs = [f"--{k} {stored.get(k)!r} (now {getattr(args, k)!r})" for k in keys
             if k in stored and _normalise(stored.get(k)) != _normalise(getattr(args, k))]
    if diffs:
        raise UserError(f"--resume: {path} was trained with " + ", ".join(diffs)
                        + "; pass the original values or start a new experiment")
    stored_metric = stored.get("best_metric", "psnr")
    if stored_metric != args.best_metric:
        raise UserError(f"--resume: {path} chose its best checkpoint by --best_metric {stored_metric} (now "
                        f"{args.best_metric}); pass --best_metric {stored_metric} or start a new experiment")
    done = int(content["epoch"])
    if done >= args.num_epoch:
        raise UserError(f"--resume: {path} has already completed {done} of --num_epoch {args.num_epoch} epochs; "
                        "raise --num_epoch to train longer")
    return done


def rng_state(device: torch.device) -> dict:
    """This process's random states in weights-only-loadable types."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss_next": py_state[2]},
    }


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore random states saved by rng_state."""
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].cpu().numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    py_state = state["python"]
    random.setstate((py_state["version"], tuple(py_state["state"]), py_state["gauss_next"]))


def clear_outputs(exp_dir: Path) -> None:
    """Delete a previous run's training outputs (only files this script writes) for --overwrite."""
    generators = [pattern for name in GENERATOR_NAMES for pattern in (f"{name}.pth", f"{name}_*.pth")]
    patterns = (CONTENT_NAME, CONFIG_NAME, TRAIN_LOG, VAL_LOG, CURVES, *generators, SAMPLE_FIGURE_GLOB)
    removed = [path for pattern in patterns for path in exp_dir.glob(pattern)]
    for path in removed:
        path.unlink()
    if removed:
        print(f"--overwrite: removed {len(removed)} file(s) of the previous run in {exp_dir}")


def _normalise(value: Any) -> Any:
    """Compare option values across JSON round trips (tuples become lists)."""
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value
