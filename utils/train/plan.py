"""What a training run will do, decided before any process starts: options checked, data checked, ports chosen."""
from __future__ import annotations

import dataclasses
import sys
from argparse import Namespace
from pathlib import Path

import torch

from utils.core.artifacts import CONTENT_NAME, LESION_MASK, experiment_dir
from utils.core.errors import UserError
from utils.data.contrasts import resolve_contrasts
from utils.data.preprocessing import data_normalization, split_slice_range
from utils.data.slices import check_dataset, find_array
from utils.model.speed import SpeedOptions
from utils.train.distributed import LaunchPlan, free_port, plan_launch, port_is_free, resolve_device_kind
from utils.train.resume import check_resume
from utils.train.steps import build_networks, count_parameters

MIN_IMAGE_SIZE = 64  # the critic halves the image six times


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """Everything decided before any process starts: data, processes, device and where training resumes."""
    contrasts: list[str]
    launch: LaunchPlan
    device_kind: str
    train_shape: tuple[int, int, int]
    val_shape: tuple[int, int, int]
    steps_per_epoch: int
    exp_dir: Path
    start_epoch: int
    stop_epoch: int
    init_method: str


def check_options(args: Namespace) -> None:
    """Reject option values the loop cannot run with."""
    positive = ("num_epoch", "batch_size", "lazy_reg", "save_ckpt_every", "save_content_every", "num_timesteps")
    for name in positive:
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.stop_after_epochs is not None and args.stop_after_epochs < 1:
        raise UserError(f"--stop_after_epochs must be at least 1, got {args.stop_after_epochs}")
    if args.image_size < MIN_IMAGE_SIZE:
        raise UserError(f"--image_size {args.image_size} is too small: the critic needs at least {MIN_IMAGE_SIZE}")
    if args.use_ema and not 0.0 <= args.ema_decay < 1.0:
        raise UserError(f"--ema_decay must lie in [0, 1), got {args.ema_decay}")
    if args.ema_warmup and not args.use_ema:
        raise UserError("--ema_warmup only changes the EMA: add --use_ema (or drop --ema_warmup)")
    if args.lr_warmup_steps < 0:
        raise UserError(f"--lr_warmup_steps must be 0 (no warm-up) or a number of steps, got {args.lr_warmup_steps}")
    if args.num_workers < 0:
        raise UserError(f"--num_workers must be 0 or more, got {args.num_workers}")
    if args.lesion_l1_weight < 0:
        raise UserError(f"--lesion_l1_weight must be 0 (plain L1) or more, got {args.lesion_l1_weight}")


def check_data(args: Namespace, contrasts: list[str], world_size: int) -> tuple[tuple, tuple, int]:
    """Shapes of the train and val splits and the steps per epoch; UserError when the batch cannot be filled."""
    shapes = check_dataset(args.input_path, ["train", "val"], contrasts, args.image_size)
    # Kept with the options (config.json, content.pth) so that test.py prepares new data on the same scale.
    args.normalize = data_normalization(args.input_path, ["train", "val"])
    train_dir = Path(args.input_path) / "train"
    # Kept too, so that a whole-volume synthesis can say which of its slices lie outside what the model saw.
    args.train_slice_range = split_slice_range(train_dir)
    if args.lesion_l1_weight > 0 and find_array(train_dir, LESION_MASK) is None:
        raise UserError(f"--lesion_l1_weight needs {train_dir / LESION_MASK}.npy, which pre_process.py writes when "
                        "the cases have segmentations; give cases with seg files or pass --lesion_l1_weight 0")
    train_slices = shapes["train"][0]
    per_process = -(-train_slices // world_size)  # the distributed sampler pads up to equal shares
    steps = per_process // args.batch_size
    if steps == 0:
        raise UserError(f"--batch_size {args.batch_size} is larger than the {per_process} training slices each of "
                        f"the {world_size} process(es) gets from {Path(args.input_path) / 'train'}; "
                        "lower --batch_size or add data")
    return shapes["train"], shapes["val"], steps




def prepare(args: Namespace) -> RunPlan:
    """All the checks that need no model: options, contrasts, processes, device, data, experiment folder."""
    check_options(args)
    contrasts = resolve_contrasts(args.dataset, args.target, args.contrasts)
    # Stored resolved, so config.json and content.pth name the exact order the weights were trained with.
    args.contrasts, args.target = list(contrasts), contrasts[3]
    launch = plan_launch(args.num_proc_node, args.num_process_per_node, args.node_rank, args.master_address,
                         args.port_num)
    device_kind = resolve_device_kind(args.device, launch.local_world_size)
    train_shape, val_shape, steps = check_data(args, contrasts, launch.world_size)
    exp_dir = experiment_dir(args)
    if args.resume:
        start = check_resume(args, exp_dir)
    else:
        if (exp_dir / CONTENT_NAME).exists() and not args.overwrite and not args.dry_run:
            raise UserError(f"{exp_dir} already holds a training run ({CONTENT_NAME}); continue it with --resume, "
                            "replace it with --overwrite, or choose another --exp")
        start = 0
    stop = args.num_epoch if args.stop_after_epochs is None else min(args.num_epoch, start + args.stop_after_epochs)
    init_method = "env://" if launch.mode == "torchrun" else f"tcp://{launch.master_address}:{launch.port}"
    return RunPlan(contrasts, launch, device_kind, tuple(train_shape), tuple(val_shape), steps, exp_dir, start,
                   stop, init_method)


def choose_port(plan: RunPlan) -> RunPlan:
    """On one node, move to a free port when the requested one is taken (several nodes must agree on it)."""
    launch = plan.launch
    if launch.mode != "spawn" or launch.world_size != launch.local_world_size:
        return plan
    if port_is_free(launch.master_address, launch.port):
        return plan
    port = free_port(launch.master_address)
    print(f"port {launch.port} is in use; the processes meet on port {port} instead", file=sys.stderr)
    return dataclasses.replace(plan, launch=dataclasses.replace(launch, port=port),
                               init_method=f"tcp://{launch.master_address}:{port}")


def describe(args: Namespace, plan: RunPlan) -> str:
    """The dry-run plan: data, processes, steps and parameter counts (builds the networks on the CPU)."""
    nets = build_networks(args, torch.device("cpu"))
    counts = {name: count_parameters(net) for name, net in nets.named().items()}
    world = plan.launch.world_size
    n_train, height, width = plan.train_shape
    epochs = plan.stop_epoch - plan.start_epoch
    lines = [
        "MU-Diff training plan (dry run: nothing is trained or written)",
        f"  data       {args.input_path}: train {n_train} slices of {height}x{width}, val {plan.val_shape[0]}; "
        f"model input {args.image_size}x{args.image_size}",
        f"  contrasts  {', '.join(plan.contrasts[:3])} -> {plan.contrasts[3]}",
        f"  processes  {world} ({plan.launch.mode}, device {plan.device_kind}, "
        f"backend {'nccl' if plan.device_kind.startswith('cuda') else 'gloo' if world > 1 else 'none'})",
        f"  batch      {args.batch_size} per process, {args.batch_size * world} per step",
        f"  steps      {plan.steps_per_epoch} per epoch, epochs {plan.start_epoch + 1}..{plan.stop_epoch} "
        f"({epochs * plan.steps_per_epoch} steps), T = {args.num_timesteps}, R1 every {args.lazy_reg} steps",
        "  parameters " + ", ".join(f"{k} {v:,}" for k, v in counts.items()),
        f"  speed      {SpeedOptions.from_args(args).describe()}",
        f"  output     {plan.exp_dir}" + (" (resuming)" if args.resume else ""),
    ]
    return "\n".join(lines)
