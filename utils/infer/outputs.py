"""test.py's results folder writer: PNG slices, stacks, manifest and what each file holds."""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from utils.core.artifacts import OUTPUTS, slice_name
from utils.core.fileio import atomic_path
from utils.data.geometry import from_model_space, unit_to_model
from utils.data.images import RANGE_TOLERANCE, save_png16
from utils.data.slices import SliceDataset
from utils.infer.experiment import Experiment


class SampleWriter(contextlib.AbstractContextManager):
    """Writes each output as 16-bit PNGs and fills its (N, H, W) float32 .npy stack.

    Use it as a context manager: the stacks are written under temporary names and renamed into place only when the
    block finishes without an error, so an interrupted run leaves no half-filled stack.
    """

    def __init__(self, folder: Path, names: Sequence[str], count: int, height_width: tuple[int, int]) -> None:
        """Remember where `names` (keys of OUTPUTS) go and the stacks' shape (count, H, W)."""
        self.folder, self.names, self.shape = folder, list(names), (count, *height_width)
        self._files = contextlib.ExitStack()
        self.arrays: dict[str, np.ndarray] = {}

    def __enter__(self) -> "SampleWriter":
        """Create the PNG folders and the memory-mapped temporary stacks."""
        for name in self.names:
            png_dir, npy = OUTPUTS[name]
            (self.folder / png_dir).mkdir(parents=True, exist_ok=True)
            tmp = self._files.enter_context(atomic_path(self.folder / npy))
            self.arrays[name] = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=self.shape)
        return self

    def __exit__(self, *exc_info: object) -> bool | None:
        """Flush the stacks, then rename them into place (or delete them after an error)."""
        for array in self.arrays.values():
            array.flush()
        self.arrays.clear()
        return self._files.__exit__(*exc_info)

    def write(self, position: int, images: dict[str, np.ndarray]) -> None:
        """Store one slice's images (2-D, [0, 1]) at row `position` of each stack and as slice_<position>.png."""
        for name in self.names:
            self.arrays[name][position] = images[name]
            save_png16(images[name], self.folder / OUTPUTS[name][0] / f"{slice_name(position)}.png")


def clear_previous(folder: Path) -> None:
    """Remove slice PNGs and stacks a previous run left in generated_samples/, so old and new outputs never mix."""
    stale = [folder / npy for _, npy in OUTPUTS.values() if (folder / npy).exists()]
    for png_dir, _ in OUTPUTS.values():
        stale.extend((folder / png_dir).glob("slice_*.png"))
    for path in stale:
        path.unlink()
    if stale:
        print(f"note: removed {len(stale)} files of an earlier run from {folder}")


def _manifest_rows(dataset: SliceDataset, indices: Sequence[int]) -> list[dict]:
    """(name, index, case_id, slice_index) per synthesised slice, from the split's manifest."""
    manifest = dataset.manifest
    # A split without manifest.csv (hand-made arrays) still gets names and indices.
    return [{"name": slice_name(i), "index": i,
             "case_id": manifest[i]["case_id"] if manifest else "",
             "slice_index": manifest[i]["slice_index"] if manifest else ""} for i in indices]


def _to_original(tensor: torch.Tensor, height_width: tuple[int, int], already_unit: bool, clip: bool = True
                 ) -> np.ndarray:
    """Model-geometry (B, 1, S, S) tensor to (B, H, W) in the preprocessed arrays' orientation ([0, 1] with clip)."""
    # from_model_space expects model space [-1, 1]; [0, 1] maps (maps, masks) are moved there first.
    model_space = unit_to_model(tensor) if already_unit else tensor
    return from_model_space(model_space.detach().cpu(), height_width, clip=clip)


def synth_to_original(sample: torch.Tensor, height_width: tuple[int, int]) -> np.ndarray:
    """A batch of samples (model space) as synth.npy stores them: (x + 1) / 2, not clipped to [0, 1].

    The last step's coefficient 1.0000001 can put a sample 6e-8 outside [0, 1], and the paper protocol saves the
    sample as the original did, unclipped. Only the readers' tolerance bounds it (a model built with --not_use_tanh
    has no bound). The PNGs are clipped.
    """
    unit = _to_original(sample, height_width, False, clip=False)
    return np.clip(unit, -RANGE_TOLERANCE, 1 + RANGE_TOLERANCE)


_LAYOUT_NOTES = {
    "intensity": "(x + 1) / 2 of the model-space output, no per-image normalisation; synth.npy not clipped "
                 "(a sample can lie 6e-8 outside [0, 1]), everything else in [0, 1]",
    "orientation": "that of the preprocessed <split>/<CONTRAST>.npy arrays (the loader's transpose undone)",
}


def model_record(exp: Experiment, args: argparse.Namespace) -> dict:
    """What run.json records of a model run: checkpoints, contrasts, schedule, seed, device, critic map."""
    return {
        "checkpoints": [str(f) for f in exp.files], "contrasts": exp.contrasts,
        "num_timesteps": exp.args.num_timesteps, "seed": args.seed, "batch_size": args.batch_size,
        "device": str(exp.device),
        "critic_map": exp.critic_note or ("critic(x0, t=0, x1) features -> attention projection"
                                          if args.save_uncertainty and exp.critic is not None else "not requested"),
    }
