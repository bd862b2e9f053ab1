"""test.py's jobs: synthesise a split's slices with a model or a baseline, or a whole NIfTI case."""
from __future__ import annotations
from utils.infer.outputs import SampleWriter, _LAYOUT_NOTES, _csv_text, _manifest_rows, _to_original, clear_previous, model_record, synth_to_original

import argparse
from pathlib import Path
from functools import partial
from typing import Callable, Sequence
import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm
from utils.core.artifacts import BRAIN_MASK
from utils.data.slices import SliceDataset, find_array
from utils.core.errors import UserError
from utils.core.fileio import save_json, save_text
from utils.infer.baselines import PixelRegression
from utils.core.artifacts import OUTPUT_DIR_NAME
from utils.infer.experiment import Experiment, describe, load_experiment
from utils.infer.sampling import Synthesis, synthesize
from utils.data.layouts import case_name, find_case_files
from utils.infer.volumes import synthesize_volume
from utils.core.artifacts import experiment_dir
from utils.data.preprocessing import data_normalization
from utils.core.runtime import seed_everything


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
