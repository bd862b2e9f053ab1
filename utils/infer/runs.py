"""test.py's jobs: synthesise a split's slices with a model or a baseline, or a whole NIfTI case."""
from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from utils.core.artifacts import (
    BRAIN_MASK,
    OUTPUT_DIR_NAME,
    SAMPLES_MANIFEST,
    VOLUMES_DIR_NAME,
    baseline_output_dir,
    experiment_dir,
)
from utils.core.errors import UserError
from utils.core.fileio import save_csv, save_json
from utils.core.runtime import seed_everything
from utils.data.layouts import case_name, find_case_files
from utils.data.preprocessing import data_normalization
from utils.data.slices import SliceDataset, find_array
from utils.infer.baselines import PixelRegression
from utils.infer.coverage import describe_outside, slices_outside_training
from utils.infer.experiment import Experiment, configure, describe, load_experiment
from utils.infer.outputs import (
    _LAYOUT_NOTES,
    SampleWriter,
    _manifest_rows,
    _to_original,
    clear_previous,
    model_record,
    synth_to_original,
)
from utils.infer.refiner import check_refiner
from utils.infer.sampling import Synthesis, synthesize
from utils.infer.volumes import VolumeSampling, synthesize_volume


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
    # The pixel baselines read one slice per contrast; the model takes what it was trained with (config.json).
    context = 0 if args.baseline else args.context_slices
    return SliceDataset(root, args.split, args.contrasts, image_size=args.image_size, with_masks=with_masks,
                        context_slices=context)


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
    save_csv(_manifest_rows(dataset, range(count)), out_dir / SAMPLES_MANIFEST)
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


def slice_output_dir(args: argparse.Namespace) -> Path:
    """Where slice mode writes: EXP/generated_samples/, or generated_samples_baseline_<KIND>/ with --baseline."""
    name = baseline_output_dir(args.baseline) if args.baseline else OUTPUT_DIR_NAME
    return experiment_dir(args) / name


def volume_output_path(args: argparse.Namespace, case: str, target: str) -> Path:
    """Where NIfTI mode writes: --out_nifti, or EXP/generated_volumes/<case>_<target>.nii.gz."""
    return Path(args.out) if args.out else experiment_dir(args) / VOLUMES_DIR_NAME / f"{case}_{target.lower()}.nii.gz"


def refuse_to_replace(path: Path, overwrite: bool) -> None:
    """Stop before any work when an earlier run's results are at `path`, unless --overwrite was given."""
    earlier = path.is_file() or (path.is_dir() and any(path.iterdir()))
    if earlier and not overwrite:
        raise UserError(f"{path} holds the results of an earlier run; pass --overwrite to replace them (or choose "
                        "another --exp/--out_nifti)")


def run_model_slices(exp: Experiment, args: argparse.Namespace, dataset: SliceDataset) -> Path:
    """Synthesise the split with the experiment's generators into generated_samples/."""
    extra = (["disagreement"] + (["critic_attention"] if exp.critic is not None else [])
             if args.save_uncertainty else [])
    return run_slices(partial(synthesize, exp, uncertainty=args.save_uncertainty), args, dataset,
                      slice_output_dir(args), model_record(exp, args), extra)


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
    return run_slices(predict, args, dataset, slice_output_dir(args), record)


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
    out = volume_output_path(args, case, exp.contrasts[3])
    print("conditions: " + ", ".join(f"{c} = {p}" for c, p in zip(exp.contrasts, paths)))
    result = synthesize_volume(exp, paths, out, batch_size=args.batch_size, uncertainty=args.save_uncertainty,
                               sampling=VolumeSampling.from_args(args))
    outside = slices_outside_training(result.slices, args.train_slice_range)
    print(f"wrote {result.path} (shape {result.shape}, {len(result.slices)} brain slices synthesised, "
          f"{describe_outside(outside, args.train_slice_range)}; intensities in [0, 1] on the preprocessed scale)")
    for name, path in result.extra_paths.items():
        print(f"wrote {path} ({name})")
    return result.path


def run_synthesis(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Path:
    """test.py's job for parsed options: load the experiment and run slice or NIfTI mode (or a baseline)."""
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be at least 1 (got {args.batch_size})")
    configure(args, parser)
    volume_mode = args.nifti or args.case is not None or args.cond1 is not None
    if args.baseline and (volume_mode or args.save_uncertainty):
        raise UserError("--baseline synthesises the test slices only; drop --nifti/--case/--cond1-3 and "
                        "--save_uncertainty")
    if args.shared_noise and not volume_mode:
        raise UserError("--shared_noise shares the noise among the slices of one volume: use it with --nifti "
                        "(--case or --cond1/2/3), or drop it for the test slices")
    if args.intensity_reference != "none" and not volume_mode:
        raise UserError("--intensity_reference steadies the brightness along one volume: use it with --nifti "
                        "(--case or --cond1/2/3), or drop it for the test slices")
    if args.refine and not volume_mode:
        raise UserError("--refine corrects a whole volume across its slices: use it with --nifti (--case or "
                        "--cond1/2/3), or drop it for the test slices")
    if args.refine:
        check_refiner(experiment_dir(args), args.image_size)
    # Inputs are checked before the (slow) model loading, so a wrong path fails at once.
    inputs = _volume_inputs(args, args.contrasts) if volume_mode else open_split(args)
    target = volume_output_path(args, inputs[1], args.contrasts[3]) if volume_mode else slice_output_dir(args)
    refuse_to_replace(target, args.overwrite)
    if args.baseline:
        return run_baseline_slices(args, inputs)
    exp = open_model(args)
    return run_volume(exp, args, *inputs) if volume_mode else run_model_slices(exp, args, inputs)
