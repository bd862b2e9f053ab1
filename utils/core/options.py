"""Every command-line option and its default, defined once for train.py, test.py, the benchmarks and the tests."""
from __future__ import annotations

import argparse
import copy
import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

from utils.core.artifacts import BEST
from utils.core.errors import UserError

# Options that fix the networks' shapes and the diffusion process: a checkpoint is only usable with the same values,
# so test.py takes them from the experiment's config.json.
MODEL_KEYS = (
    "image_size", "num_channels", "centered", "num_channels_dae", "n_mlp", "ch_mult", "num_res_blocks",
    "attn_resolutions", "dropout", "resamp_with_conv", "conditional", "fir", "fir_kernel", "skip_rescale",
    "resblock_type", "progressive", "progressive_input", "progressive_combine", "embedding_type", "fourier_scale",
    "not_use_tanh", "nz", "z_emb_dim", "t_emb_dim", "ngf", "context_slices",
)


DIFFUSION_KEYS = ("num_timesteps", "beta_min", "beta_max", "use_geometric")


# "normalize" is not an option: train.py records the --normalize of its data (preprocess.json) with them.
DATA_KEYS = ("dataset", "target", "contrasts", "normalize")
# Where the run's data was: test.py takes it from config.json unless it is given on the command line.
PATH_KEYS = ("input_path",)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help for every script: each option under its first spelling only, with its default when it has one."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        """Show one spelling: the aliases (other-style spellings, the original's names) still parse."""
        if len(action.option_strings) < 2 or isinstance(action, argparse._HelpAction):
            return super()._format_action_invocation(action)
        shown = copy.copy(action)  # a copy keeps choices, so a --layout alias still shows {brats,...}
        shown.option_strings = action.option_strings[:1]
        return super()._format_action_invocation(shown)

    def _get_help_string(self, action: argparse.Action) -> str:
        """Append the default, except for unset ones (None) and plain switches (False)."""
        # Identity, not equality: a default of 0 is worth showing, and 0 == False.
        if any(action.default is unset for unset in (None, False, argparse.SUPPRESS)) or isinstance(
                action, argparse._StoreFalseAction):
            return action.help or ""
        return super()._get_help_string(action)


def other_spellings(flag: str) -> list[str]:
    """--a-b for --a_b and --a_b for --a-b (none for short or one-word flags)."""
    if not flag.startswith("--"):
        return []
    name = flag[2:]
    return [f"--{other}" for other in (name.replace("-", "_"), name.replace("_", "-")) if other != name]


class ArgumentParser(argparse.ArgumentParser):
    """Every script's parser: --a_b and --a-b both parse, and --help shows each option once, with its default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """argparse's parser with HelpFormatter unless another formatter is given."""
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        """Parse, every option taking its other spelling too (registered here, so options of groups count)."""
        for action in self._actions:
            for flag in list(action.option_strings):
                for other in other_spellings(flag):
                    # Appended after the canonical name, which stays first: usage and --help show only that one.
                    if other not in self._option_string_actions:
                        action.option_strings.append(other)
                        self._option_string_actions[other] = action
        return super().parse_known_args(args, namespace)

    def _get_option_tuples(self, option_string: str) -> list[tuple]:
        """An abbreviation that fits two spellings of one option means that option (argparse calls it ambiguous)."""
        matches: dict[int, tuple] = {}
        for match in super()._get_option_tuples(option_string):
            matches.setdefault(id(match[0]), match)
        return list(matches.values())


def add_disabling_flag(group: argparse._ArgumentGroup, name: str, what: str) -> None:
    """One of the original's switches that are on by default, off when given: --NAME (as the original) or --no_NAME."""
    group.add_argument(f"--no_{name}", f"--{name}", dest=name, action="store_false", default=True,
                       help=f"turn OFF: {what} (on by default; the original's --{name} flag also turns it off)")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Generator and critic architecture (original names; defaults = README configuration)."""
    g = parser.add_argument_group("model")
    g.add_argument("--image_size", type=int, default=256, help="slice size the networks are built for")
    g.add_argument("--num_channels", type=int, default=1, help="image channels (MRI slices: 1)")
    add_disabling_flag(g, "centered", "data already in [-1, 1]")
    g.add_argument("--num_channels_dae", type=int, default=64, help="base channel width of the generators")
    g.add_argument("--n_mlp", type=int, default=3, help="depth of the latent z mapping")
    g.add_argument("--ch_mult", nargs="+", type=int, default=[1, 2, 4], help="channel multiplier per level")
    g.add_argument("--num_res_blocks", type=int, default=2, help="residual blocks per level")
    g.add_argument("--attn_resolutions", nargs="+", type=int, default=[16],
                   help="resolutions with self-attention (the mid-block always has one)")
    g.add_argument("--dropout", type=float, default=0.0, help="dropout in the residual blocks")
    add_disabling_flag(g, "resamp_with_conv", "resample with convolutions")
    add_disabling_flag(g, "conditional", "condition on the timestep")
    add_disabling_flag(g, "fir", "FIR up/down-sampling")
    g.add_argument("--fir_kernel", nargs="+", type=int, default=[1, 3, 3, 1], help="FIR kernel")
    add_disabling_flag(g, "skip_rescale", "divide skip sums by sqrt(2)")
    g.add_argument("--resblock_type", default="biggan", choices=["biggan"], help="residual block type")
    g.add_argument("--progressive", default="none", choices=["none", "output_skip", "residual"],
                   help="progressive output path")
    g.add_argument("--progressive_input", default="residual", choices=["none", "input_skip", "residual"],
                   help="progressive input pyramid")
    g.add_argument("--progressive_combine", default="sum", choices=["sum", "cat"],
                   help="how the pyramid joins the features")
    g.add_argument("--embedding_type", default="positional", choices=["positional", "fourier"],
                   help="timestep embedding")
    g.add_argument("--fourier_scale", type=float, default=16.0, help="scale of the fourier embedding")
    g.add_argument("--not_use_tanh", action="store_true", default=False, help="no tanh at the generator output")
    g.add_argument("--nz", type=int, default=100, help="latent z size")
    g.add_argument("--z_emb_dim", type=int, default=256, help="width of the z embedding")
    g.add_argument("--t_emb_dim", type=int, default=256, help="critic timestep embedding width")
    g.add_argument("--ngf", type=int, default=64, help="critic base width")
    g.add_argument("--context_slices", type=int, default=0, metavar="K",
                   help="new: 2.5-D conditioning, each conditioning contrast also gives its K neighbouring slices on "
                        "either side (same case; edge slices repeat) as extra input channels of the generators' "
                        "condition encoders; 0 = one slice, the original's networks and checkpoints")


def add_diffusion_args(parser: argparse.ArgumentParser) -> None:
    """The diffusion schedule."""
    g = parser.add_argument_group("diffusion")
    g.add_argument("--num_timesteps", type=int, default=4, help="diffusion steps T")
    g.add_argument("--beta_min", type=float, default=0.1, help="VP schedule beta_min")
    g.add_argument("--beta_max", type=float, default=20.0, help="VP schedule beta_max")
    g.add_argument("--use_geometric", action="store_true", default=False, help="geometric instead of VP schedule")


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """Where the preprocessed slices are and which contrast is synthesised from which."""
    g = parser.add_argument_group("data")
    g.add_argument("--input_path", default="data/BRATS",
                   help="folder with train/ val/ test/ sub-folders of <CONTRAST>.npy (from pre_process.py)")
    g.add_argument("--dataset", default="brats", choices=["brats", "isles"], help="contrast preset family")
    g.add_argument("--target", default=None,
                   help="contrast to synthesise; picks the README order for that dataset (BraTS default T1ce, "
                        "ISLES default FLAIR)")
    g.add_argument("--contrasts", nargs=4, default=None, metavar=("COND1", "COND2", "COND3", "TARGET"),
                   help="any other order: three conditioning contrasts, then the target")
    g.add_argument("--num_workers", type=int, default=2, help="data-loader worker processes")


def add_run_args(parser: argparse.ArgumentParser, batch_help: str) -> None:
    """Experiment folder, device, seed and batch size."""
    g = parser.add_argument_group("run")
    g.add_argument("--exp", default="exp_brats", help="experiment name: outputs go to OUTPUT_PATH/EXP")
    g.add_argument("--output_path", default="results", help="folder that holds the experiment folders")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--seed", type=int, default=1024, help="random seed")
    g.add_argument("--batch_size", type=int, default=3, help=batch_help)


def add_training_args(parser: argparse.ArgumentParser) -> None:
    """Optimisation, losses, checkpoints and the original's process flags."""
    g = parser.add_argument_group("training")
    g.add_argument("--resume", action="store_true", default=False, help="continue from EXP/content.pth")
    g.add_argument("--num_epoch", type=int, default=30, help="epochs")
    g.add_argument("--lr_g", type=float, default=1.6e-4, help="generator learning rate")
    g.add_argument("--lr_d", type=float, default=1e-4, help="critic learning rate")
    g.add_argument("--beta1", type=float, default=0.5, help="Adam beta1")
    g.add_argument("--beta2", type=float, default=0.9, help="Adam beta2")
    g.add_argument("--no_lr_decay", action="store_true", default=False, help="keep the learning rates constant")
    g.add_argument("--use_ema", action="store_true", default=False, help="keep an EMA of the generator weights")
    g.add_argument("--ema_decay", type=float, default=0.999, help="EMA decay (only with --use_ema)")
    g.add_argument("--ema_warmup", action="store_true", default=False,
                   help="new: EMA update n uses min(ema_decay, (1+n)/(10+n)), so a short run's average does not "
                        "keep its first, blurred weights (only with --use_ema)")
    g.add_argument("--lr_warmup_steps", type=int, default=0, metavar="N",
                   help="new: scale every learning rate by (n+1)/N on the first N steps (0: off, the original)")
    g.add_argument("--r1_gamma", type=float, default=1.0, help="R1 penalty weight")
    g.add_argument("--lazy_reg", type=int, default=10, help="apply R1 every this many steps")
    g.add_argument("--save_content", action="store_true", default=True, help="save content.pth (always on)")
    g.add_argument("--save_content_every", type=int, default=1, help="save content.pth every N epochs")
    g.add_argument("--save_ckpt_every", type=int, default=10, help="save generator checkpoints every N epochs")
    g.add_argument("--ddp_keys", action="store_true", default=False,
                   help="write gen_diffusive_*.pth with DistributedDataParallel's 'module.' key prefix, as the "
                        "original's training did, so that the original test.py (which cuts 7 characters off every "
                        "key) can load them; our test.py reads either")
    g.add_argument("--lambda_l1_loss", type=float, default=0.5, help="weight of the L1 terms")
    g.add_argument("--lambda_mask_loss", type=float, default=0.1, help="weight of the mutual mask loss")
    g.add_argument("--lambda_adv", type=float, default=1.0, help="weight of the adversarial terms")
    g.add_argument("--lesion_l1_weight", type=float, default=0.0, metavar="W",
                   help="new: inside the train split's lesion_mask.npy the L1 terms count 1 + W times "
                        "(0: plain L1, the original)")
    g.add_argument("--dry_run", action="store_true", default=False,
                   help="build everything, check the data, print the plan and stop")
    d = parser.add_argument_group("processes (original flags; torchrun's environment takes precedence)")
    d.add_argument("--num_proc_node", type=int, default=1, help="nodes")
    d.add_argument("--num_process_per_node", type=int, default=1, help="processes (GPUs) per node")
    d.add_argument("--node_rank", type=int, default=0, help="this node's index")
    d.add_argument("--local_rank", type=int, default=0, help="set by the launcher")
    d.add_argument("--master_address", default="127.0.0.1", help="address of rank 0")
    d.add_argument("--port_num", default="6021", help="port of rank 0")
    d.add_argument("--contrast1", default="T1", help="accepted for compatibility; use --target/--contrasts")
    d.add_argument("--contrast2", default="T2", help="accepted for compatibility; use --target/--contrasts")


# Validation scores train.py can choose its best checkpoint by (columns of val.csv).
BEST_METRICS = ("psnr", "ssim")
INTENSITY_REFERENCES = ("none", "inputs")  # --intensity_reference: utils/infer/intensity.py
BASELINES = ("linear", "quadratic")  # test.py --baseline: utils/infer/baselines.py fits them


def add_train_control_args(parser: argparse.ArgumentParser) -> None:
    """Training-run controls that the original did not have (time-limited jobs, reusing an experiment folder)."""
    g = parser.add_argument_group("run control")
    g.add_argument("--stop_after_epochs", type=int, default=None, metavar="N",
                   help="train at most N epochs in this invocation, save, and stop (continue later with --resume)")
    g.add_argument("--overwrite", action="store_true", default=False,
                   help="start a new run in an experiment folder that already holds one (its files are replaced)")
    g.add_argument("--best_metric", default="psnr", choices=BEST_METRICS,
                   help="validation score that picks gen_diffusive_{1,2}_best.pth; ssim ignores the overall "
                        "brightness of the synthesis, which on few validation cases swings PSNR by several dB")


def add_speed_args(parser: argparse.ArgumentParser, training: bool = False) -> None:
    """Speed options (all off by default = the faithful computation); see utils/model/speed.py and docs/speed.md."""
    g = parser.add_argument_group("speed (off by default; results then match the original's computation)")
    g.add_argument("--amp", action="store_true", default=False,
                   help="bfloat16 autocast (fast on recent GPUs; on CPUs without AMX it is slower)")
    g.add_argument("--channels_last", action="store_true", default=False,
                   help="keep feature maps in channels-last memory layout (faster convolutions)")
    g.add_argument("--compile", action="store_true", default=False,
                   help="torch.compile the generators (the first batches are slow while it compiles)")
    g.add_argument("--fast_paths", action="store_true", default=False,
                   help="faster inner loops: fused attention (scaled_dot_product_attention), transposed-convolution "
                        "upsampling, fused AdaGN (equal to rounding)")
    if training:
        g.add_argument("--fused_adam", action="store_true", default=False,
                       help="fused Adam kernel on CUDA (ignored on the CPU)")


def add_compat_test_args(parser: argparse.ArgumentParser) -> None:
    """Flags the original test.py took but never used; accepted so its README command runs unchanged."""
    g = parser.add_argument_group("accepted for compatibility (no effect)")
    g.add_argument("--compute_fid", action="store_true", default=False, help=argparse.SUPPRESS)
    g.add_argument("--source", default="T2", help=argparse.SUPPRESS)
    g.add_argument("--lr_g", type=float, default=1.6e-4, help=argparse.SUPPRESS)
    g.add_argument("--beta1", type=float, default=0.5, help=argparse.SUPPRESS)
    g.add_argument("--beta2", type=float, default=0.9, help=argparse.SUPPRESS)


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    """--config FILE: option values from a JSON file (e.g. configs/quickstart.json); the command line wins."""
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="JSON object of option values (names without the leading --); options given on the "
                             "command line override it")


# Keys save_config records beside the options; a run's config.json can be given as --config without them failing.
RECORDED_ONLY = ("contrast_order", "world_size", "config", "data_value_range", "model_value_range",
                 "train_slice_range")


def _config_value(action: argparse.Action, key: str, value: Any, path: Path) -> Any:
    """Check one --config value against its option's type and choices (argparse checks neither for defaults)."""
    where = f"{path}: \"{key}\""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false, got {value!r}")
        return value
    items = value if isinstance(value, list) else [value]
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        if not isinstance(value, list):
            raise UserError(f"{where} must be a list, got {value!r}")
    elif isinstance(value, list):
        raise UserError(f"{where} must be a single value, got the list {value!r}")
    converted = []
    for item in items:
        if item is not None and action.type is not None and not isinstance(item, bool):
            try:
                item = action.type(item) if isinstance(item, str) else action.type(str(item))
            except (TypeError, ValueError, argparse.ArgumentTypeError):
                raise UserError(f"{where}: {item!r} is not a valid value") from None
        if action.choices is not None and item not in action.choices:
            raise UserError(f"{where}: {item!r} is not one of {', '.join(map(str, action.choices))}")
        converted.append(item)
    return converted if isinstance(value, list) else converted[0]


def read_option_file(path: str | os.PathLike, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The option values in a --config JSON file, checked against `parser`; one-line errors naming the key."""
    path = Path(path)
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"--config {path} is not a readable JSON file ({err})") from None
    if not isinstance(values, dict):
        raise UserError(f"--config {path} must hold a JSON object of option names and values")
    actions = {action.dest: action for action in parser._actions}
    checked = {}
    for key, value in values.items():
        if key in RECORDED_ONLY:
            continue
        if key not in actions or key == "help":
            raise UserError(f"{path}: \"{key}\" is not an option of this script (see --help)")
        checked[key] = _config_value(actions[key], key, value, path)
    return checked


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line on top of the --config file's values (when one is given)."""
    first, _ = parser.parse_known_args(argv)
    if first.config:
        parser.set_defaults(**read_option_file(first.config, parser))
    return parser.parse_args(argv)


def apply_config(args: argparse.Namespace, config: dict, parser: argparse.ArgumentParser,
                 keys: Iterable[str] = MODEL_KEYS + DIFFUSION_KEYS) -> list[str]:
    """Take `keys` from a training run's config; return the options a user set differently (config wins)."""
    overridden = []
    for key in keys:
        if key not in config:
            continue
        given, stored = getattr(args, key, None), config[key]
        if given != stored and given != parser.get_default(key):
            overridden.append(f"--{key} {given!r} -> {stored!r}")
        setattr(args, key, stored)
    if overridden:
        warnings.warn("config.json of the experiment overrides: " + ", ".join(overridden), stacklevel=2)
    return overridden


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
    g.add_argument("--overwrite", action="store_true", default=False,
                   help="replace the results of an earlier run (generated_samples*/ or the --nifti output); "
                        "without it test.py stops rather than overwrite them")
    n = parser.add_argument_group("whole-volume NIfTI synthesis")
    n.add_argument("--nifti", action="store_true", default=False,
                   help="synthesise a whole volume from NIfTI files (--cond1/2/3 or --case) instead of test slices")
    n.add_argument("--cond1", default=None, help="NIfTI of the 1st conditioning contrast (see --contrasts)")
    n.add_argument("--cond2", default=None, help="NIfTI of the 2nd conditioning contrast")
    n.add_argument("--cond3", default=None, help="NIfTI of the 3rd conditioning contrast")
    n.add_argument("--case", default=None,
                   help="BraTS-style case folder with <case>_<contrast>.nii.gz files (instead of --cond1/2/3)")
    # A file, where the other scripts' --out is a folder (and --output_path is test.py's results root).
    n.add_argument("--out_nifti", "--out", dest="out", default=None, metavar="FILE",
                   help="output NIfTI (default: OUTPUT_PATH/EXP/generated_volumes/<case>_<target>.nii.gz)")
    add_volume_sampling_args(n)


def add_shared_noise_arg(group: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--shared_noise (test.py --nifti, brasyn.py complete and refine)."""
    group.add_argument("--shared_noise", action="store_true", default=False,
                       help="new: draw the sampler's noise (initial image, latent z and posterior noise of every "
                            "step) once per volume and use it for every slice, so neighbouring slices do not differ "
                            "by their noise; off, every slice gets fresh noise, as in the original")


def add_volume_sampling_args(group: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """How the slices of one volume are sampled and stacked (test.py --nifti and brasyn.py complete)."""
    add_shared_noise_arg(group)
    group.add_argument("--intensity_reference", choices=INTENSITY_REFERENCES, default="none",
                       help="new: inputs = rescale each synthesised slice so that its brain mean, relative to the "
                            "three inputs' on that slice, follows one smooth curve along the volume, fitted on the "
                            "slices inside the range the model was trained on and held constant beyond it; none = "
                            "the slices as sampled, as in the original")
    group.add_argument("--refine", action="store_true", default=False,
                       help="new: pass the stacked slices through the experiment's 3-D refiner (EXP/refiner.pth, "
                            "trained by brasyn.py refine), which corrects them across slices from the synthesis and "
                            "the three inputs; off, the slices as sampled, as in the original")


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


def train_parser() -> argparse.ArgumentParser:
    """The train.py parser: every option of the original train.py (README command included) plus the new ones."""
    parser = ArgumentParser("train.py", description="Train MU-Diff (two generators, one shared critic).")
    add_model_args(parser)
    add_diffusion_args(parser)
    add_data_args(parser)
    add_run_args(parser, batch_help="slices per process per step (the README uses 3)")
    add_training_args(parser)
    add_train_control_args(parser)
    add_speed_args(parser, training=True)
    add_config_arg(parser)
    return parser


def synthesis_parser() -> argparse.ArgumentParser:
    """The test.py parser: the shared model/diffusion/data/run options, the original's extra flags, test options."""
    parser = ArgumentParser(
        "test.py", description="Synthesise the target contrast with a trained MU-Diff pair of generators.")
    add_model_args(parser)
    add_diffusion_args(parser)
    add_data_args(parser)
    add_run_args(parser, batch_help="slices synthesised per forward pass")
    add_compat_test_args(parser)
    add_test_args(parser)
    add_speed_args(parser)
    return parser
