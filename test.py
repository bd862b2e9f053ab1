"""Synthesise the target contrast with a trained MU-Diff model: test slices to PNG/.npy, or whole NIfTI volumes.

Slice mode (default) reads the preprocessed split (INPUT_PATH/<split>/<CONTRAST>.npy) and writes
OUTPUT_PATH/EXP/generated_samples/ for metric_calc.py. NIfTI mode (--nifti with --cond1/2/3 or --case) writes one
synthesised volume with the inputs' geometry. See the README section "Test / synthesis".
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import sys
from pathlib import Path
from functools import partial
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from utils.data import BRAIN_MASK, SliceDataset, find_array, from_model_space
from utils.errors import UserError, run_cli
from utils.fileio import atomic_path, save_json, save_text
from utils.baselines import PixelRegression
from utils.images import RANGE_TOLERANCE, save_png16
from utils.inference import (OUTPUT_DIR_NAME, Experiment, Synthesis, configure, describe, load_experiment,
                             make_parser, seed_everything, synthesize)
from utils.nifti import case_name, find_case_files, synthesize_volume
from utils.options import experiment_dir
from utils.preprocessing import data_normalization

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


def _csv_text(rows: list[dict]) -> str:
    """Rows as CSV text with a header."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["name"])
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _to_original(tensor: torch.Tensor, height_width: tuple[int, int], already_unit: bool, clip: bool = True
                 ) -> np.ndarray:
    """Model-geometry (B, 1, S, S) tensor to (B, H, W) in the preprocessed arrays' orientation ([0, 1] with clip)."""
    # from_model_space expects model space [-1, 1]; [0, 1] maps (maps, masks) are moved there first.
    model_space = tensor * 2 - 1 if already_unit else tensor
    return from_model_space(model_space.detach().cpu(), height_width, clip=clip)


def synth_to_original(sample: torch.Tensor, height_width: tuple[int, int]) -> np.ndarray:
    """A batch of samples (model space) as synth.npy stores them: (x + 1) / 2, not clipped to [0, 1].

    The last step's coefficient 1.0000001 can put a sample 6e-8 outside [0, 1], and the paper protocol saves the
    sample as the original did, unclipped. Only the readers' tolerance bounds it (a model built with --not_use_tanh
    has no bound). The PNGs are clipped.
    """
    unit = _to_original(sample, height_width, False, clip=False)
    return np.clip(unit, -RANGE_TOLERANCE, 1 + RANGE_TOLERANCE)


def open_split(args: argparse.Namespace) -> SliceDataset:
    """The preprocessed split to synthesise (checked now, before any weights are loaded), with masks if present."""
    root = Path(args.input_path)
    # A baseline fits on the training split, so that split must share the scale of the one it predicts.
    made_with = data_normalization(root, ["train", args.split] if args.baseline else [args.split])
    if not args.baseline and made_with != args.normalize:
        raise UserError(f"{root / args.split} was preprocessed with --normalize {made_with}, but {args.exp} was "
                        f"trained on --normalize {args.normalize} data; rerun pre_process.py with --normalize "
                        f"{args.normalize} for this split")
    with_masks = find_array(root / args.split, BRAIN_MASK) is not None
    return SliceDataset(root, args.split, args.contrasts, image_size=args.image_size, with_masks=with_masks)


Predictor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Synthesis]


def run_slices(predict: Predictor, args: argparse.Namespace, dataset: SliceDataset, out_dir: Path,
               record: dict, names_extra: Sequence[str] = ()) -> Path:
    """Synthesise the split's slices with `predict` and write OUT_DIR (PNG + .npy per output, manifest, run.json)."""
    with_masks = dataset.with_masks
    count = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    if count < 1:
        raise UserError(f"--limit {args.limit}: nothing to synthesise; give at least 1")
    height_width = (dataset.height, dataset.width)
    loader = DataLoader(Subset(dataset, range(count)), batch_size=args.batch_size, shuffle=False,
                        num_workers=args.num_workers, pin_memory=torch.cuda.is_available())

    names = ["synth", "real"] + (["brain_mask"] if with_masks else [])
    names += ["lesion_mask"] if with_masks and dataset.has_lesion_mask else []
    names += list(names_extra)
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_previous(out_dir)
    position = 0
    with SampleWriter(out_dir, names, count, height_width) as writer:
        for batch in tqdm(loader, desc="synthesising", unit="batch"):
            cond1, cond2, cond3, target = batch[:4]
            result = predict(cond1, cond2, cond3)
            images = {"synth": synth_to_original(result.sample, height_width),
                      "real": _to_original(target, height_width, False)}
            if with_masks:
                images["brain_mask"] = (_to_original(batch[4], height_width, True) > 0.5).astype(np.float32)
                images["lesion_mask"] = (_to_original(batch[5], height_width, True) > 0.5).astype(np.float32)
            if result.disagreement is not None:
                images["disagreement"] = _to_original(result.disagreement, height_width, True)
            if result.critic_map is not None:
                images["critic_attention"] = _to_original(result.critic_map, height_width, True)
            for b in range(len(target)):
                writer.write(position, {k: v[b] for k, v in images.items()})
                position += 1
    save_text(_csv_text(_manifest_rows(dataset, range(count))), out_dir / "manifest.csv")
    save_json({**record, "split": args.split, "slices": count, "outputs": names, **_LAYOUT_NOTES},
              out_dir / "run.json")
    print(f"wrote {count} slices to {out_dir} ({', '.join(names)}); evaluate with: "
          f"python metric_calc.py {out_dir}")
    return out_dir


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


def open_model(args: argparse.Namespace) -> Experiment:
    """Load the experiment's generators (and critic), say what was loaded, then seed the sampler."""
    exp = load_experiment(args, with_critic=args.save_uncertainty)
    print(describe(exp))
    if args.save_uncertainty and exp.critic_note:
        print(f"note: {exp.critic_note}")
    # Seeded after the networks are built, so the samples do not depend on what was built (e.g. the critic).
    seed_everything(args.seed)
    return exp


def run_model_slices(exp: Experiment, args: argparse.Namespace, dataset: SliceDataset) -> Path:
    """Synthesise the split with the experiment's generators into generated_samples/."""
    extra = (["disagreement"] + (["critic_attention"] if exp.critic is not None else [])
             if args.save_uncertainty else [])
    return run_slices(partial(synthesize, exp, uncertainty=args.save_uncertainty), args, dataset,
                      experiment_dir(args) / OUTPUT_DIR_NAME, model_record(exp, args), extra)


def run_baseline_slices(args: argparse.Namespace, dataset: SliceDataset) -> Path:
    """Fit the --baseline regression on the training split and write its synthesis of the split being tested."""
    train = SliceDataset(args.input_path, "train", args.contrasts, image_size=args.image_size)
    model = PixelRegression.fit(train, args.baseline)
    c = args.contrasts
    print(f"{args.baseline} baseline fitted on {model.fitted_pixels:,} brain pixels of {train.root / 'train'}: "
          f"{c[0]}, {c[1]}, {c[2]} -> {c[3]}")

    def predict(cond1: torch.Tensor, cond2: torch.Tensor, cond3: torch.Tensor) -> Synthesis:
        return Synthesis(sample=model.predict(cond1, cond2, cond3))

    record = {"baseline": model.describe(), "contrasts": c, "batch_size": args.batch_size,
              "fitted_on": str(train.root / "train")}
    return run_slices(predict, args, dataset, experiment_dir(args) / f"{OUTPUT_DIR_NAME}_baseline_{args.baseline}",
                      record)


def _volume_inputs(args: argparse.Namespace, contrasts: list[str]) -> tuple[list[Path], str]:
    """The three conditioning NIfTI paths (from --case or --cond1/2/3) and a case name for the output file."""
    given = [args.cond1, args.cond2, args.cond3]
    if args.case:
        if any(given):
            raise UserError("give either --case or --cond1/--cond2/--cond3, not both")
        files = find_case_files(args.case, contrasts[:3])
        return [files[c] for c in contrasts[:3]], Path(args.case).name
    if not all(given):
        raise UserError(f"--nifti needs --case DIR or all of --cond1/--cond2/--cond3 "
                        f"({', '.join(contrasts[:3])} NIfTI files, in that order)")
    return [Path(p) for p in given], case_name(Path(args.cond1))


def run_volume(exp: Experiment, args: argparse.Namespace, paths: list[Path], case: str) -> Path:
    """Whole-volume mode: synthesise the target NIfTI for one case."""
    out = Path(args.out) if args.out else (experiment_dir(args) / "generated_volumes"
                                           / f"{case}_{exp.contrasts[3].lower()}.nii.gz")
    print("conditions: " + ", ".join(f"{c} = {p}" for c, p in zip(exp.contrasts, paths)))
    result = synthesize_volume(exp, paths, out, batch_size=args.batch_size, uncertainty=args.save_uncertainty)
    print(f"wrote {result.path} (shape {result.shape}, {len(result.slices)} brain slices synthesised, "
          f"intensities in [0, 1] on the preprocessed scale)")
    for name, path in result.extra_paths.items():
        print(f"wrote {path} ({name})")
    return result.path


def main(argv: Sequence[str] | None = None) -> Path:
    """Parse the options, load the experiment and run slice or NIfTI mode."""
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be at least 1 (got {args.batch_size})")
    configure(args, parser)
    volume_mode = args.nifti or args.case is not None or args.cond1 is not None
    if args.baseline and (volume_mode or args.save_uncertainty):
        raise UserError("--baseline synthesises the test slices only; drop --nifti/--case/--cond1-3 and "
                        "--save_uncertainty")
    # Inputs are checked before the (slow) model loading, so a wrong path fails at once.
    inputs = _volume_inputs(args, args.contrasts) if volume_mode else open_split(args)
    if args.baseline:
        return run_baseline_slices(args, inputs)
    exp = open_model(args)
    return run_volume(exp, args, *inputs) if volume_mode else run_model_slices(exp, args, inputs)


if __name__ == "__main__":
    sys.exit(run_cli(main))
