"""brasyn.py refine: train an experiment's 3-D refiner on its own syntheses of complete training cases."""
from __future__ import annotations

import argparse
import functools
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from backbones.refiner import VolumeRefiner
from utils.brasyn.cases import case_folders, read_case_folder
from utils.brasyn.complete import conditions_of, model_options, parse_models
from utils.core.artifacts import REFINER_CURVE, REFINER_NAME, REFINER_RECORD, experiment_dir
from utils.core.errors import UserError
from utils.core.fileio import save_json
from utils.core.runtime import seed_everything
from utils.data.contrasts import canonical_contrast
from utils.data.layouts import Case
from utils.data.nifti_io import load_case_volume, load_label
from utils.data.preprocessing import resize_masks
from utils.infer.experiment import Experiment, load_experiment
from utils.infer.refiner import refiner_input, save_refiner
from utils.infer.volumes import sample_stack, volume_to_model_slices


@dataclass(frozen=True)
class RefinerSettings:
    """The refiner's size and training schedule (brasyn.py refine's options)."""

    width: int
    blocks: int
    steps: int
    crop_slices: int
    crops_per_step: int
    lr: float
    seed: int
    through_plane_weight: float
    lesion_weight: float = 0.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RefinerSettings:
        """The settings from parsed options, checked."""
        for flag in ("width", "blocks", "steps", "crop_slices", "crops_per_step"):
            if getattr(args, flag) < 1:
                raise UserError(f"--{flag} must be at least 1 (got {getattr(args, flag)})")
        for flag in ("through_plane_weight", "lesion_weight"):
            if getattr(args, flag) < 0:
                raise UserError(f"--{flag} must be at least 0 (got {getattr(args, flag)})")
        return cls(args.width, args.blocks, args.steps, args.crop_slices, args.crops_per_step, args.lr, args.seed,
                   args.through_plane_weight, args.lesion_weight)


@dataclass
class TrainingStack:
    """One training case at the model's resolution: refiner input (4, D, S, S), truth, brain and lesion masks
    (1, D, S, S); the lesion mask is all False when the case has no seg file."""

    name: str
    inputs: torch.Tensor
    truth: torch.Tensor
    brain: torch.Tensor
    lesion: torch.Tensor | None = None

    def __post_init__(self) -> None:
        """No seg file: an empty lesion mask, so every crop has the same four parts."""
        if self.lesion is None:
            self.lesion = torch.zeros_like(self.brain)


def training_stack(exp: Experiment, case: Case, target: str, options: argparse.Namespace,
                   args: argparse.Namespace) -> TrainingStack:
    """Synthesise one complete case's target as complete does and pair it with the acquired target image."""
    seed_everything(args.seed)
    stack = sample_stack(exp, conditions_of(case, target, options), args.batch_size,
                         progress=functools.partial(tqdm, leave=False), shared_noise=args.shared_noise)
    truth_volume = load_case_volume(case.images[target], f"--train case {case.folder.name} {target}")[0]
    size = exp.args.image_size
    truth = volume_to_model_slices(truth_volume, stack.slices, size, target, exp.args.normalize)
    brain = torch.from_numpy(resize_masks(np.moveaxis(stack.brain, 2, 0)[stack.slices], size) > 0)
    return TrainingStack(case.folder.name, refiner_input(stack.outputs["synth"], stack.conditions)[0],
                         truth.transpose(0, 1), brain[None], lesion_stack(case, stack.slices, size))


def lesion_stack(case: Case, slices: list[int], size: int) -> torch.Tensor | None:
    """The case's tumour (any label above 0) on the synthesised slices at the model's resolution; None without a seg."""
    if case.label is None:
        return None
    label = load_label(case.label, f"--train case {case.folder.name} seg")
    return torch.from_numpy(resize_masks(np.moveaxis(label, 2, 0)[slices] > 0, size) > 0)[None]


def random_crops(stacks: list[TrainingStack], depth: int, count: int, generator: torch.Generator
                 ) -> tuple[torch.Tensor, ...]:
    """`count` runs of `depth` consecutive slices (inputs, truth, brain, lesion) from random cases, each flipped
    left-right half the time."""
    parts = []
    for _ in range(count):
        stack = stacks[int(torch.randint(len(stacks), (1,), generator=generator))]
        start = int(torch.randint(stack.inputs.shape[1] - depth + 1, (1,), generator=generator))
        crop = [t[:, start:start + depth] for t in (stack.inputs, stack.truth, stack.brain, stack.lesion)]
        if torch.rand(1, generator=generator) < 0.5:
            crop = [t.flip(-1) for t in crop]
        parts.append(crop)
    return tuple(torch.stack(column) for column in zip(*parts))


def masked_l1(prediction: torch.Tensor, truth: torch.Tensor, brain: torch.Tensor, lesion: torch.Tensor,
              lesion_weight: float) -> torch.Tensor:
    """Mean |prediction - truth| over the brain voxels, lesion voxels counting 1 + lesion_weight times (as
    train.py --lesion_l1_weight: the enhancement the segmenter reads is a small part of the brain)."""
    error = (prediction - truth).abs()
    return ((1 + lesion_weight * lesion) * error)[brain].mean() if lesion_weight else error[brain].mean()


def through_plane_l1(prediction: torch.Tensor, truth: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
    """Mean |slice-to-slice difference of prediction - that of truth| over neighbouring brain voxel pairs."""
    pairs = brain[:, :, 1:] & brain[:, :, :-1]
    return (prediction.diff(dim=2) - truth.diff(dim=2)).abs()[pairs].mean()


def refiner_loss(prediction: torch.Tensor, truth: torch.Tensor, brain: torch.Tensor, lesion: torch.Tensor,
                 settings: RefinerSettings) -> torch.Tensor:
    """Brain L1 (lesion-weighted), plus through_plane_weight x the L1 of the through-plane differences: stripes
    cost twice, as error and as step."""
    loss = masked_l1(prediction, truth, brain, lesion, settings.lesion_weight)
    weight = settings.through_plane_weight
    return loss + weight * through_plane_l1(prediction, truth, brain) if weight else loss


def stack_l1(network: VolumeRefiner | None, stacks: list[TrainingStack], device: torch.device) -> float:
    """Brain L1 (model space) of every stack's synthesis, refined by `network` unless None, against the truth."""
    total, voxels = 0.0, 0
    with torch.no_grad():
        for stack in stacks:
            synth = stack.inputs[None, :1] if network is None else network(stack.inputs[None].to(device)).cpu()
            brain = stack.brain[None]
            total += float((synth - stack.truth[None]).abs()[brain].sum())
            voxels += int(brain.sum())
    return total / max(voxels, 1)


def train_refiner(stacks: list[TrainingStack], settings: RefinerSettings, device: torch.device
                  ) -> tuple[VolumeRefiner, list[dict]]:
    """A refiner fitted to the stacks with Adam on refiner_loss; returns it (eval mode) and one row per 10 steps."""
    torch.manual_seed(settings.seed)
    network = VolumeRefiner(settings.width, settings.blocks).to(device)
    optimiser = torch.optim.Adam(network.parameters(), lr=settings.lr)
    generator = torch.Generator().manual_seed(settings.seed)
    depth = min(settings.crop_slices, *(s.inputs.shape[1] for s in stacks))
    log, losses = [], []
    network.train()
    with tqdm(range(1, settings.steps + 1), desc="training the refiner", unit="step") as bar:
        for step in bar:
            inputs, truth, brain, lesion = (t.to(device) for t in random_crops(stacks, depth,
                                                                                settings.crops_per_step, generator))
            loss = refiner_loss(network(inputs), truth, brain, lesion, settings)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
            if step % 10 == 0 or step == settings.steps:
                log.append({"step": step, "loss": round(float(np.mean(losses)), 6)})
                losses = []
                bar.set_postfix(loss=f"{log[-1]['loss']:.4f}")
    return network.eval(), log


def draw_curve(log: list[dict], before: float, path: Path) -> None:
    """The training loss against the step, with the unrefined synthesis's brain L1 as a line."""
    from utils.eval.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["step"] for r in log], [r["loss"] for r in log], label="refiner loss (training crops)")
    ax.axhline(before, color="gray", linestyle="--", label="brain L1 of the synthesis as sampled")
    ax.set_xlabel("step")
    ax.set_ylabel("model space")
    ax.legend(fontsize=8)
    save_figure(fig, path, 110)


def check_training_case(case: Case, target: str, options: argparse.Namespace) -> None:
    """UserError unless the case holds the experiment's three conditions and its target."""
    wanted = [canonical_contrast(c) for c in options.contrasts]
    absent = [c for c in wanted if c not in case.images]
    if absent:
        raise UserError(f"--train case {case.folder.name} has no {' or '.join(absent)} image (the refiner needs "
                        f"{', '.join(wanted[:3])} and the {target} it learns to approach); --train takes complete "
                        "cases (all four modalities), not BraSyn ones")


def refine_experiment(target: str, folder: Path, cases: list[Case], args: argparse.Namespace) -> dict:
    """Train and save one experiment's refiner; its record (also written to EXP/refiner.json)."""
    started = time.time()
    options = model_options(target, folder, args)
    exp = load_experiment(options)
    settings = RefinerSettings.from_args(args)
    stacks = [training_stack(exp, case, target, options, args)
              for case in tqdm(cases, desc=f"synthesising {target} of the training cases", unit="case")]
    network, log = train_refiner(stacks, settings, exp.device)
    before, after = stack_l1(None, stacks, exp.device), stack_l1(network, stacks, exp.device)
    exp_dir = experiment_dir(options)
    record = {"experiment": str(exp_dir), "target": target, "train": str(Path(args.train).resolve()),
              "cases": [s.name for s in stacks], "image_size": int(exp.args.image_size),
              "generators": [f.name for f in exp.files], "shared_noise": args.shared_noise, "seed": args.seed,
              **asdict(settings), "l1_synthesis": round(before, 6), "l1_refined": round(after, 6)}
    save_refiner(network, record, exp_dir / REFINER_NAME)
    save_json({**record, "seconds": round(time.time() - started, 1), "log": log}, exp_dir / REFINER_RECORD)
    draw_curve(log, before, exp_dir / REFINER_CURVE)
    print(f"{target}: wrote {exp_dir / REFINER_NAME} (brain L1 on the training cases {before:.4f} as sampled, "
          f"{after:.4f} refined; curve {exp_dir / REFINER_CURVE})")
    return record


def refine_models(args: argparse.Namespace) -> list[dict]:
    """brasyn.py refine: a refiner for every --models experiment, trained on --train's complete cases."""
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be at least 1 (got {args.batch_size})")
    RefinerSettings.from_args(args)
    models = parse_models(args.models)
    cases = [read_case_folder(f) for f in case_folders(Path(args.train), "--train")]
    for target, folder in models.items():
        existing = folder / REFINER_NAME
        if existing.exists() and not args.overwrite:
            raise UserError(f"{existing} exists; pass --overwrite to replace it with a newly trained refiner")
        options = model_options(target, folder, args)
        for case in cases:
            check_training_case(case, target, options)
    return [refine_experiment(target, folder, cases, args) for target, folder in models.items()]
