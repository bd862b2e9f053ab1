"""An experiment folder loaded for synthesis: its config.json, generator weights and (optionally) critic."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from backbones import build_critic, build_generators
from utils.core.artifacts import (
    ATTENTION_KEY,
    CONTENT_NAME,
    CRITIC_KEY,
    check_content_format,
    experiment_dir,
    generator_files,
    load_config,
)
from utils.core.options import DATA_KEYS, DIFFUSION_KEYS, MODEL_KEYS, PATH_KEYS, apply_config, synthesis_parser
from utils.core.runtime import resolve_device
from utils.data.contrasts import resolve_contrasts
from utils.data.preprocessing import DEFAULT_NORMALIZATION
from utils.infer.refiner import load_refiner
from utils.model.checkpoint import load_state, read_checkpoint
from utils.model.diffusion import Posterior_Coefficients
from utils.model.speed import SpeedOptions, prepare_generators, prepare_process


def _take_paths(args: argparse.Namespace, config: dict, parser: argparse.ArgumentParser) -> None:
    """Use the data folder the run was trained on when the command line leaves --input_path at its default."""
    for key in PATH_KEYS:
        if key in config and getattr(args, key, None) == parser.get_default(key):
            setattr(args, key, config[key])


def configure(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> dict | None:
    """Take the network, schedule and contrast settings from EXP/config.json when the experiment has one."""
    parser = parser or synthesis_parser()
    config = load_config(experiment_dir(args))
    if config is not None:
        apply_config(args, config, parser, keys=MODEL_KEYS + DIFFUSION_KEYS)
        # The networks only make sense for the contrast order they were trained on, so a config's order wins.
        apply_config(args, config, parser, keys=DATA_KEYS)
        _take_paths(args, config, parser)
    # Runs from before train.py recorded their data's scale, and the published weights, used the original's.
    args.normalize = config.get("normalize", DEFAULT_NORMALIZATION) if config else DEFAULT_NORMALIZATION
    # The axial slices the training split held ([first, last]); None for runs from before train.py recorded them.
    args.train_slice_range = config.get("train_slice_range") if config else None
    args.contrasts = resolve_contrasts(args.dataset, args.target, args.contrasts)
    return config


@dataclass
class Experiment:
    """A trained pair of generators ready to sample, with the options they were built from."""

    args: argparse.Namespace
    gen1: nn.Module
    gen2: nn.Module
    coefficients: Posterior_Coefficients
    device: torch.device
    files: tuple[Path, ...]
    critic: nn.Module | None = None
    att_proj: nn.Module | None = None
    critic_note: str = ""
    contrasts: list[str] = field(default_factory=list)
    speed: SpeedOptions = field(default_factory=SpeedOptions)
    refiner: nn.Module | None = None  # read from EXP/refiner.pth on first use (experiment_refiner)


def _load_critic(args: argparse.Namespace, exp_dir: Path, device: torch.device) -> tuple:
    """The critic and its attention projection from EXP/content.pth, or (None, None, why not)."""
    path = exp_dir / CONTENT_NAME
    if not path.exists():
        return None, None, (f"no {path} (published weights hold only the generators), so the critic attention map "
                            f"is unavailable; the generators' disagreement map is still written")
    # content.pth of the original stored its options as an argparse.Namespace: still only plain data.
    content = read_checkpoint(path, allow_namespace=True)
    check_content_format(content, path)
    if CRITIC_KEY not in content or ATTENTION_KEY not in content:
        return None, None, (f"{path} holds no critic or attention-projection weights ({CRITIC_KEY}, "
                            f"{ATTENTION_KEY}), so the critic attention map is unavailable; the generators' "
                            f"disagreement map is still written")
    critic, att_proj = build_critic(args)
    load_state(critic, content[CRITIC_KEY], f"critic ({CRITIC_KEY} in {path})")
    load_state(att_proj, content[ATTENTION_KEY], f"attention projection ({ATTENTION_KEY} in {path})")
    epoch = getattr(args, "epoch", None)
    if epoch is not None and content.get("epoch") != epoch:
        # content.pth holds only the latest critic; say so rather than silently pairing different epochs.
        print(f"note: the critic map uses the critic of {path} (epoch {content.get('epoch', '?')}), "
              f"not of epoch {epoch}")
    return critic.to(device).eval(), att_proj.to(device).eval(), ""


def load_experiment(args: argparse.Namespace, device: torch.device | None = None, with_critic: bool = False
                    ) -> Experiment:
    """Build the generators from `args` (already configured) and load EXP's checkpoints strictly."""
    device = device or resolve_device(getattr(args, "device", "auto"), getattr(args, "gpu_chose", None))
    exp_dir = experiment_dir(args)
    files = generator_files(exp_dir, getattr(args, "epoch", None))
    gen1, gen2 = build_generators(args)
    for model, path in zip((gen1, gen2), files):
        load_state(model, path, path.stem)
    speed = SpeedOptions.from_args(args)
    prepare_process(speed, device)
    gen1, gen2 = prepare_generators((gen1.eval(), gen2.eval()), device, speed.channels_last, speed.compile)
    experiment = Experiment(args=args, gen1=gen1, gen2=gen2, coefficients=Posterior_Coefficients(args, device),
                            device=device, files=files, contrasts=list(args.contrasts), speed=speed)
    if with_critic:
        experiment.critic, experiment.att_proj, experiment.critic_note = _load_critic(args, exp_dir, device)
    return experiment


def experiment_refiner(exp: Experiment) -> nn.Module:
    """The experiment's 3-D refiner (--refine), read from EXP/refiner.pth on first use."""
    if exp.refiner is None:
        exp.refiner, record = load_refiner(experiment_dir(exp.args), exp.args.image_size, exp.device)
        used = [f.name for f in exp.files]
        if record.get("generators") not in (None, used):
            # It learnt the errors of other weights: it still runs, but say so rather than pair them silently.
            print(f"note: the refiner was trained on the syntheses of {', '.join(record['generators'])}, "
                  f"these are of {', '.join(used)}")
    return exp.refiner


def experiment_args(exp_dir: str | Path, epoch: int | str | None = None, device: str = "auto",
                    **overrides: object) -> argparse.Namespace:
    """test.py's options for an experiment folder, configured from its config.json, without loading any weights.

    `overrides` set options (e.g. image_size=...) for a folder without config.json, such as the published weights;
    a config.json, when present, takes precedence over them, as in test.py.
    """
    exp_dir = Path(exp_dir)
    parser = synthesis_parser()
    args = parser.parse_args(["--output_path", str(exp_dir.parent), "--exp", exp_dir.name, "--device", device])
    args.epoch = epoch
    for key, value in overrides.items():
        setattr(args, key, value)
    configure(args, parser)
    return args


def open_experiment(exp_dir: str | Path, epoch: int | str | None = None, device: str = "auto",
                    with_critic: bool = False, **overrides: object) -> Experiment:
    """Load a trained experiment folder in one call (for notebooks); `overrides` as in experiment_args."""
    return load_experiment(experiment_args(exp_dir, epoch, device, **overrides), with_critic=with_critic)


def describe(exp: Experiment) -> str:
    """One line naming the checkpoints, the contrast order, T and the device."""
    c = exp.contrasts
    speed = f"; speed options {exp.speed.describe()}" if exp.speed.enabled() else ""
    return (f"generators {', '.join(str(f) for f in exp.files)}; {c[0]}, {c[1]}, {c[2]} -> {c[3]}; "
            f"T = {exp.args.num_timesteps}; device {exp.device}{speed}")
