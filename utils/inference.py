"""Inference: the test.py command line, loading a trained pair of generators, batched synthesis, uncertainty maps.

Shared by test.py (slice mode), utils/nifti.py (whole-volume mode) and demo/demo.ipynb, so all three sample with the
same weights, schedule and seed handling.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from backbones import build_critic, build_generators
from utils.checkpoint import load_state, read_checkpoint
from utils.data import resolve_contrasts
from utils.diffusion import Posterior_Coefficients
from utils.baselines import BASELINES
from utils.errors import UserError
from utils.fast import SpeedOptions, fast_sample, prepare_generators, prepare_process
from utils.options import (DATA_KEYS, DIFFUSION_KEYS, MODEL_KEYS, add_compat_test_args, add_data_args,
                           add_diffusion_args, add_model_args, add_run_args, add_speed_args, apply_config,
                           experiment_dir, load_config)
from utils.preprocessing import DEFAULT_NORMALIZATION

GENERATOR_NAMES = ("gen_diffusive_1", "gen_diffusive_2")
CONTENT_NAME = "content.pth"
BEST = "best"  # --epoch best: gen_diffusive_{1,2}_best.pth, kept by train.py
# content.pth keys (train.py) of the critic and of the attention projection that turns its features into a map.
CRITIC_KEY = "disc_diffusive_2_dict"
ATTENTION_KEY = "att_conv_dict"
OUTPUT_DIR_NAME = "generated_samples"


def add_test_args(parser: argparse.ArgumentParser) -> None:
    """Options only test.py has: which checkpoint, which slices, which device, what to write."""
    g = parser.add_argument_group("test")
    g.add_argument("--epoch", "--epoch_id", dest="epoch", type=epoch_choice, default=None,
                   help="use gen_diffusive_{1,2}_EPOCH.pth, or 'best' for the epoch with the best validation "
                        "score (train.py --best_metric, PSNR unless set; default: gen_diffusive_{1,2}.pth, the "
                        "published names)")
    g.add_argument("--baseline", default=None, choices=BASELINES,
                   help="no model: fit a per-pixel linear or quadratic regression of the target on the training "
                        "split's brain pixels and write its synthesis to generated_samples_baseline_<KIND>/")
    g.add_argument("--gpu_chose", type=int, default=None,
                   help="GPU index (the original's flag): cuda:N when a GPU is there, else the CPU")
    g.add_argument("--split", default="test", choices=["train", "val", "test"], help="which split to synthesise")
    g.add_argument("--limit", type=int, default=None, help="synthesise only the first N slices (a quick check)")
    g.add_argument("--save_uncertainty", action="store_true", default=False,
                   help="also write the critic attention map and the two generators' disagreement per slice")
    n = parser.add_argument_group("whole-volume NIfTI synthesis")
    n.add_argument("--nifti", action="store_true", default=False,
                   help="synthesise a whole volume from NIfTI files (--cond1/2/3 or --case) instead of test slices")
    n.add_argument("--cond1", default=None, help="NIfTI of the 1st conditioning contrast (see --contrasts)")
    n.add_argument("--cond2", default=None, help="NIfTI of the 2nd conditioning contrast")
    n.add_argument("--cond3", default=None, help="NIfTI of the 3rd conditioning contrast")
    n.add_argument("--case", default=None,
                   help="BraTS-style case folder with <case>_<contrast>.nii.gz files (instead of --cond1/2/3)")
    n.add_argument("--out", default=None,
                   help="output NIfTI (default: OUTPUT_PATH/EXP/generated_volumes/<case>_<target>.nii.gz)")


def epoch_choice(value: str) -> int | str:
    """--epoch: a positive epoch number or 'best'."""
    if value == BEST:
        return value
    try:
        epoch = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is neither an epoch number nor '{BEST}'") from None
    if epoch < 1:
        raise argparse.ArgumentTypeError(f"epochs are numbered from 1, got {epoch}")
    return epoch


def make_parser() -> argparse.ArgumentParser:
    """The test.py parser: the shared model/diffusion/data/run options, the original's extra flags, test options."""
    parser = argparse.ArgumentParser(
        "test.py", description="Synthesise the target contrast with a trained MU-Diff pair of generators.")
    add_model_args(parser)
    add_diffusion_args(parser)
    add_data_args(parser)
    add_run_args(parser, batch_help="slices synthesised per forward pass")
    add_compat_test_args(parser)
    add_test_args(parser)
    add_speed_args(parser)
    return parser


def resolve_device(spec: str = "auto", gpu_index: int | None = None) -> torch.device:
    """Turn --device / --gpu_chose into a torch.device; a missing GPU is an error only when asked for explicitly."""
    spec = (spec or "auto").lower()
    has_cuda = torch.cuda.is_available()
    if spec == "auto":
        if not has_cuda:
            if gpu_index is not None:
                print(f"note: --gpu_chose {gpu_index} asked for a GPU but none is available; running on the CPU")
            return torch.device("cpu")
        index = gpu_index or 0
        if index >= torch.cuda.device_count():
            raise UserError(f"--gpu_chose {index}: only {torch.cuda.device_count()} GPU(s) visible")
        return torch.device(f"cuda:{index}")
    if spec == "cpu":
        return torch.device("cpu")
    if re.fullmatch(r"cuda(:\d+)?", spec):
        if not has_cuda:
            raise UserError(f"--device {spec}: no CUDA GPU is available; use --device cpu or auto")
        device = torch.device(spec if ":" in spec else f"cuda:{gpu_index or 0}")
        if device.index >= torch.cuda.device_count():
            raise UserError(f"--device {spec}: only {torch.cuda.device_count()} GPU(s) visible")
        return device
    raise UserError(f"--device {spec!r} is not one of auto, cpu, cuda, cuda:N")


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


def configure(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> dict | None:
    """Take the network, schedule and contrast settings from EXP/config.json when the experiment has one."""
    parser = parser or make_parser()
    config = load_config(experiment_dir(args))
    if config is not None:
        apply_config(args, config, parser, keys=MODEL_KEYS + DIFFUSION_KEYS)
        # The networks only make sense for the contrast order they were trained on, so a config's order wins.
        apply_config(args, config, parser, keys=DATA_KEYS)
    # Runs from before train.py recorded their data's scale, and the published weights, used the original's.
    args.normalize = config.get("normalize", DEFAULT_NORMALIZATION) if config else DEFAULT_NORMALIZATION
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


def _load_critic(args: argparse.Namespace, exp_dir: Path, device: torch.device) -> tuple:
    """The critic and its attention projection from EXP/content.pth, or (None, None, why not)."""
    path = exp_dir / CONTENT_NAME
    if not path.exists():
        return None, None, (f"no {path} (published weights hold only the generators), so the critic attention map "
                            f"is unavailable; the generators' disagreement map is still written")
    # content.pth of the original stored its options as an argparse.Namespace: still only plain data.
    content = read_checkpoint(path, allow_namespace=True)
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


def experiment_args(exp_dir: str | Path, epoch: int | str | None = None, device: str = "auto",
                    **overrides: object) -> argparse.Namespace:
    """test.py's options for an experiment folder, configured from its config.json, without loading any weights.

    `overrides` set options (e.g. image_size=...) for a folder without config.json, such as the published weights;
    a config.json, when present, takes precedence over them, as in test.py.
    """
    exp_dir = Path(exp_dir)
    parser = make_parser()
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


class _InputRecorder:
    """Wrap a generator and remember the noisy image of its latest call (x_1 after the sampler's last step)."""

    def __init__(self, generator: nn.Module) -> None:
        """Wrap `generator`."""
        self.generator = generator
        self.last_input: Tensor | None = None

    def __call__(self, x: Tensor, *rest: Tensor) -> Tensor:
        """Record x, then run the generator unchanged."""
        self.last_input = x
        return self.generator(x, *rest)


@dataclass
class Synthesis:
    """One batch's result (B, 1, S, S): the sample in [-1, 1]; on request the uncertainty maps in [0, 1]."""

    sample: Tensor
    disagreement: Tensor | None = None
    critic_map: Tensor | None = None


def critic_features_in_chunks(critic: nn.Module, x: Tensor, t: Tensor, x_next: Tensor) -> Tensor:
    """The critic's mid-level features, computed in chunks the minibatch-stddev layer accepts (B % min(B, 4) == 0)."""
    # The features come before the minibatch-stddev layer, so chunking does not change them.
    parts = [critic(x[i:i + 4], t[i:i + 4], x_next[i:i + 4])[1] for i in range(0, x.size(0), 4)]
    return torch.cat(parts)


@torch.no_grad()
def synthesize(exp: Experiment, cond1: Tensor, cond2: Tensor, cond3: Tensor, uncertainty: bool = False
               ) -> Synthesis:
    """Sample the target for one batch of conditions (B, 1, S, S) in [-1, 1], from fresh noise (global RNG)."""
    cond1, cond2, cond3 = (c.to(exp.device, non_blocking=True) for c in (cond1, cond2, cond3))
    x_init = torch.randn_like(cond1)
    recorder = _InputRecorder(exp.gen1)
    # inference_mode (and bf16 autocast with --amp); with no speed option the bits of sample_from_model.
    sample, x0_1, x0_2 = fast_sample(exp.coefficients, recorder, cond1, exp.gen2, cond2, cond3,
                                     exp.args.num_timesteps, x_init, exp.args, amp=exp.speed.amp, return_x0=True)
    result = Synthesis(sample=sample)
    if not uncertainty:
        return result
    # Half the |x0_1 − x0_2| of model space: the generators' disagreement in [0, 1] intensity units.
    result.disagreement = (x0_1 - x0_2).abs() / 2
    if exp.critic is not None and exp.att_proj is not None:
        # Training scores a last-step (t = 0) sample as critic(x_0, t=0, x_1) and weights the mutual loss with the
        # attention map of those features; the synthesis is scored the same way.
        t0 = torch.zeros(sample.size(0), dtype=torch.int64, device=sample.device)
        features = critic_features_in_chunks(exp.critic, sample, t0, recorder.last_input)
        result.critic_map = exp.att_proj.attention_map(features, tuple(sample.shape[-2:]))
    return result


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and every GPU) and numpy so the same seed gives the same samples."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)


def describe(exp: Experiment) -> str:
    """One line naming the checkpoints, the contrast order, T and the device."""
    c = exp.contrasts
    speed = f"; speed options {exp.speed.describe()}" if exp.speed.enabled() else ""
    return (f"generators {', '.join(str(f) for f in exp.files)}; {c[0]}, {c[1]}, {c[2]} -> {c[3]}; "
            f"T = {exp.args.num_timesteps}; device {exp.device}{speed}")


__all__ = [
    "Experiment", "Synthesis", "add_test_args", "available_epochs", "configure", "describe", "experiment_args",
    "generator_files", "load_experiment", "make_parser", "open_experiment", "resolve_device", "seed_everything",
    "synthesize",
]
