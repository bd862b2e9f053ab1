"""--refine: the experiment's 3-D refiner (EXP/refiner.pth, trained by brasyn.py refine) read and applied."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from backbones.refiner import VolumeRefiner
from utils.core.artifacts import REFINER_FORMAT, REFINER_NAME
from utils.core.errors import UserError
from utils.core.fileio import save_torch
from utils.model.checkpoint import CheckpointError, load_state, read_checkpoint

TRAIN_HINT = "train one with brasyn.py refine --train TRAINING_CASES --models TARGET={exp}"


def refiner_path(exp_dir: str | Path) -> Path:
    """Where an experiment's refiner lives."""
    return Path(exp_dir) / REFINER_NAME


def _check_exists(exp_dir: str | Path) -> None:
    """UserError naming the file and how to make it when the experiment has no refiner."""
    path = refiner_path(exp_dir)
    if not path.is_file():
        raise UserError(f"--refine: {path} does not exist; {TRAIN_HINT.format(exp=exp_dir)}")


def check_refiner(exp_dir: str | Path, image_size: int) -> None:
    """Read the experiment's refiner once on the CPU, so a missing or unfit one is refused before any sampling."""
    load_refiner(exp_dir, image_size, torch.device("cpu"))


def save_refiner(network: VolumeRefiner, record: dict[str, Any], path: str | Path) -> None:
    """refiner.pth: the state_dict beside plain-data settings (`record`: width, blocks, image_size, ...)."""
    state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    save_torch({"format": REFINER_FORMAT, **record, "state_dict": state}, path)


def load_refiner(exp_dir: str | Path, image_size: int, device: torch.device) -> tuple[VolumeRefiner, dict]:
    """The experiment's refiner (strictly loaded, weights_only) and its record; one-line errors otherwise."""
    _check_exists(exp_dir)
    path = refiner_path(exp_dir)
    content = read_checkpoint(path)
    if content.get("format") != REFINER_FORMAT:
        raise CheckpointError(f"{path} is not a refiner of this version (format {content.get('format')!r}, expected "
                              f"{REFINER_FORMAT!r}); {TRAIN_HINT.format(exp=exp_dir)}")
    if content.get("image_size") != image_size:
        raise CheckpointError(f"{path} was trained on {content.get('image_size')} x {content.get('image_size')} "
                              f"slices, this experiment synthesises {image_size} x {image_size}; "
                              f"{TRAIN_HINT.format(exp=exp_dir)}")
    network = VolumeRefiner(int(content["width"]), int(content["blocks"]))
    load_state(network, content["state_dict"], f"refiner ({path})", hint=TRAIN_HINT.format(exp=exp_dir))
    record = {k: v for k, v in content.items() if k != "state_dict"}
    return network.to(device).eval(), record


def refiner_input(synth: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
    """(1, 4, N, S, S) from a synthesised stack (N, 1, S, S) and its conditions' own slices (N, 3, S, S)."""
    return torch.cat([synth, conditions], dim=1).transpose(0, 1)[None]


def refine_stack(network: VolumeRefiner, synth: torch.Tensor, conditions: torch.Tensor,
                 slices: Sequence[int]) -> torch.Tensor:
    """The refined (N, 1, S, S) stack of a volume's consecutive axial `slices` (model space)."""
    if len(slices) > 1 and not np.all(np.diff(slices) == 1):
        raise UserError("--refine works across a volume's consecutive slices; it cannot refine a chosen subset of "
                        "slices (synthesise the whole volume, or drop --refine)")
    device = next(network.parameters()).device
    with torch.no_grad():
        refined = network(refiner_input(synth, conditions).to(device))
    return refined[0].transpose(0, 1).to(synth.device)
