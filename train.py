"""Train MU-Diff: two mutually learning diffusion generators and one shared adversarial critic.

Runs on a CPU, one GPU, several GPUs of one node (`--num_process_per_node N` spawns N processes, or
`torchrun --nproc_per_node N train.py ...`) and several nodes (torchrun, or the original's --num_proc_node /
--node_rank flags). Epochs are numbered 1..--num_epoch in file names, logs and the progress bar. Everything goes to
OUTPUT_PATH/EXP/: content.pth (all state needed by --resume), gen_diffusive_{1,2}.pth (latest generator weights),
gen_diffusive_{1,2}_{epoch}.pth (every --save_ckpt_every epochs and the last), gen_diffusive_{1,2}_best.pth (the epoch
with the highest validation PSNR so far, or SSIM with --best_metric ssim), config.json, log.csv (every loss term per
iteration), val.csv (validation PSNR/SSIM/L1 per epoch and the best epoch so far), curves.png and
sample_discrete_epoch_{epoch}.png.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import random
import sys
import time
import warnings
from argparse import Namespace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from backbones import build_critic, build_generators
from utils.checkpoint import add_module_prefix, load_state, read_checkpoint
from utils.data import LESION_MASK, SliceDataset, check_dataset, find_array, resolve_contrasts
from utils.diffusion import Diffusion_Coefficients, Posterior_Coefficients
from utils.distributed import (LaunchPlan, ProcessLayout, all_reduce_mean, barrier, broadcast_module, close_group,
                               free_port, gather_objects, init_group, launched_by_torchrun, plan_launch,
                               port_is_free, process_device, resolve_device_kind)
from utils.errors import UserError, run_cli
from utils.fast import SpeedOptions, autocast_context, prepare_generators, prepare_module, prepare_process
from utils.fileio import save_torch
from utils.options import (DATA_KEYS, DIFFUSION_KEYS, MODEL_KEYS, add_config_arg, add_data_args, add_diffusion_args,
                           add_model_args, add_run_args, add_speed_args, add_train_control_args, add_training_args,
                           experiment_dir, parse_with_config, save_config)
from utils.plots import plot_curves, save_sample_grid
from utils.preprocessing import data_normalization
from utils.training import (LOSS_NAMES, VAL_NAMES, Batch, CsvLog, Diffusion, Networks, build_optimisers,
                            step_schedulers, train_step, validate, validation_batches)

CONTENT = "content.pth"
LOG_EVERY = 50
CONTENT_FORMAT = "mu-diff-train/1"
MIN_IMAGE_SIZE = 64  # the critic halves the image six times
NETWORK_NAMES = ("gen_diffusive_1", "gen_diffusive_2", "disc_diffusive_2", "att_conv")


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


def build_parser() -> argparse.ArgumentParser:
    """Every option of the original train.py (README command included) plus the new ones."""
    parser = argparse.ArgumentParser(description="Train MU-Diff (two generators, one shared critic).")
    add_model_args(parser)
    add_diffusion_args(parser)
    add_data_args(parser)
    add_run_args(parser, batch_help="slices per process per step (the README uses 3)")
    add_training_args(parser)
    add_train_control_args(parser)
    add_speed_args(parser, training=True)
    add_config_arg(parser)
    return parser


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


def read_content(path: Path, device: torch.device | str = "cpu") -> dict:
    """Load content.pth (weights only) and check that it is a training checkpoint of this program."""
    content = read_checkpoint(path, map_location=device)
    if not isinstance(content, dict) or "gen_diffusive_1_dict" not in content or "args" not in content:
        raise UserError(f"{path} is not a training checkpoint written by this train.py; start a new run "
                        "(--overwrite) or point --exp at the right experiment")
    return content


def check_resume(args: Namespace, exp_dir: Path) -> int:
    """Completed epochs of the run to continue; UserError when there is none or its configuration differs."""
    path = exp_dir / CONTENT
    if not path.is_file():
        raise UserError(f"--resume: {path} does not exist; train without --resume first (or fix --exp/--output_path)")
    content = read_content(path)
    stored = content["args"]
    keys = MODEL_KEYS + DIFFUSION_KEYS + DATA_KEYS
    diffs = [f"--{k} {stored.get(k)!r} (now {getattr(args, k)!r})" for k in keys
             if k in stored and _normalise(stored.get(k)) != _normalise(getattr(args, k))]
    if diffs:
        raise UserError(f"--resume: {path} was trained with " + ", ".join(diffs)
                        + "; pass the original values or start a new experiment")
    stored_metric = stored.get("best_metric", "psnr")
    if stored_metric != args.best_metric:
        raise UserError(f"--resume: {path} chose its best checkpoint by --best_metric {stored_metric} (now "
                        f"{args.best_metric}); pass --best_metric {stored_metric} or start a new experiment")
    done = int(content["epoch"])
    if done >= args.num_epoch:
        raise UserError(f"--resume: {path} has already completed {done} of --num_epoch {args.num_epoch} epochs; "
                        "raise --num_epoch to train longer")
    return done


def _normalise(value: Any) -> Any:
    """Compare option values across JSON round trips (tuples become lists)."""
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value


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
        if (exp_dir / CONTENT).exists() and not args.overwrite and not args.dry_run:
            raise UserError(f"{exp_dir} already holds a training run ({CONTENT}); continue it with --resume, replace "
                            "it with --overwrite, or choose another --exp")
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


# --------------------------------------------------------------------------- networks and state
def build_networks(args: Namespace, device: torch.device) -> Networks:
    """gen1, gen2, att_conv, critic in the original's construction order, on `device`."""
    gen1, gen2 = build_generators(args)
    critic, att_proj = build_critic(args)
    # The original never optimised att_conv; it stays at its initial weights (saved and restored, never trained).
    att_proj.requires_grad_(False)
    return Networks(gen1.to(device), gen2.to(device), critic.to(device), att_proj.to(device))


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in module.parameters())


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and every GPU), numpy and Python's random."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)


def rng_state(device: torch.device) -> dict:
    """This process's random states in weights-only-loadable types."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss_next": py_state[2]},
    }


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore random states saved by rng_state."""
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].cpu().numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    py_state = state["python"]
    random.setstate((py_state["version"], tuple(py_state["state"]), py_state["gauss_next"]))


# --------------------------------------------------------------------------- the run
class Trainer:
    """One process's training run: networks, optimisers, data, logs and the epoch loop."""

    def __init__(self, args: Namespace, plan: RunPlan, layout: ProcessLayout) -> None:
        """Build everything (same initial weights on every rank) and restore content.pth with --resume."""
        self.args, self.plan, self.layout = args, plan, layout
        self.device = layout.device
        seed_everything(args.seed + layout.rank)
        self.train_set = SliceDataset(args.input_path, "train", plan.contrasts, args.image_size,
                                      with_masks=args.lesion_l1_weight > 0)
        self.val_set = SliceDataset(args.input_path, "val", plan.contrasts, args.image_size)
        self.nets = build_networks(args, self.device)
        # Each rank was seeded differently (as in the original); rank 0's initial weights are everyone's.
        for net in self.nets.named().values():
            broadcast_module(net)
        self.speed = SpeedOptions.from_args(args)
        prepare_process(self.speed, self.device)
        prepare_generators((self.nets.gen1, self.nets.gen2), self.device, self.speed.channels_last, self.speed.compile)
        # The critic is never compiled: the R1 penalty differentiates through it twice, which compiled graphs
        # do not support.
        prepare_module(self.nets.critic, self.device, self.speed.channels_last)
        self.opts = build_optimisers(self.nets, args)
        self.diff = Diffusion(Diffusion_Coefficients(args, self.device), Posterior_Coefficients(args, self.device),
                              args.num_timesteps)
        self.epoch, self.global_step, self.sampler_seed = plan.start_epoch, 0, args.seed
        exp = plan.exp_dir
        self.log = CsvLog(exp / "log.csv", ["epoch", "iteration", "global_step", *LOSS_NAMES, "lr_g", "lr_d"])
        self.val_log = CsvLog(exp / "val.csv", ["epoch", "global_step", *VAL_NAMES, "best_epoch", "seconds"])
        if args.resume:
            self._restore(exp / CONTENT)
            self.log.load_until(self.epoch)
            self.val_log.load_until(self.epoch)
        self.best = best_so_far(self.val_log, args.best_metric)
        self.sampler = torch.utils.data.DistributedSampler(self.train_set, num_replicas=layout.world_size,
                                                           rank=layout.rank, shuffle=True, seed=self.sampler_seed)
        self.loader_rng = torch.Generator()
        self.loader = torch.utils.data.DataLoader(
            self.train_set, batch_size=args.batch_size, sampler=self.sampler, drop_last=True,
            num_workers=args.num_workers, pin_memory=self.device.type == "cuda",
            persistent_workers=args.num_workers > 0, generator=self.loader_rng)

    # ----------------------------------------------------------------------- checkpoints
    def _restore(self, path: Path) -> None:
        """Load networks, optimisers, schedulers, EMA, counters and this rank's random state from content.pth."""
        content = read_content(path, self.device)
        for name, net in self.nets.named().items():
            load_state(net, content[f"{name}_dict"], f"{name} in {path}")
        for name, opt in (("gen_diffusive_1", self.opts.gen1), ("gen_diffusive_2", self.opts.gen2),
                          ("disc_diffusive_2", self.opts.critic)):
            opt.load_state_dict(content[f"optimizer_{name}"])
            scheduler = self.opts.schedulers[name]
            scheduler.load_state_dict(content[f"scheduler_{name}"])
            if scheduler.T_max != self.args.num_epoch:
                warnings.warn(f"--num_epoch changed from {scheduler.T_max} to {self.args.num_epoch}: the cosine "
                              "decay continues from the current learning rate over the new length (a schedule "
                              "that already reached its 1e-5 floor stays there)", stacklevel=2)
                scheduler.T_max = self.args.num_epoch
        for key, ema in (("ema_gen_diffusive_1", self.opts.ema1), ("ema_gen_diffusive_2", self.opts.ema2)):
            if ema is not None and content.get(key) is not None:
                ema.load_state_dict(content[key])
        self.epoch, self.global_step = int(content["epoch"]), int(content["global_step"])
        self.sampler_seed = int(content["data_order"]["sampler_seed"])
        states = content["rng_states"]
        if len(states) == self.layout.world_size:
            set_rng_state(states[self.layout.rank], self.device)
        else:
            warnings.warn(f"{path} was written by {len(states)} process(es), this run has {self.layout.world_size}: "
                          "random streams restart from the seed, so the run will not match an uninterrupted one",
                          stacklevel=2)
            seed_everything(self.args.seed + self.layout.rank + 1000 * self.epoch)
        if self.layout.is_main:
            print(f"=> resumed {path} after epoch {self.epoch} (step {self.global_step})")

    def content(self, rng_states: list[dict]) -> dict:
        """Everything --resume needs, in weights-only-loadable types."""
        out: dict[str, Any] = {
            "format": CONTENT_FORMAT, "epoch": self.epoch, "global_step": self.global_step,
            "args": {k: _normalise(v) for k, v in vars(self.args).items()}, "world_size": self.layout.world_size,
            "rng_states": rng_states,
            "data_order": {"sampler_seed": self.sampler_seed, "next_epoch": self.epoch,
                           "world_size": self.layout.world_size},
        }
        for name, net in self.nets.named().items():
            out[f"{name}_dict"] = net.state_dict()
        for name, opt in (("gen_diffusive_1", self.opts.gen1), ("gen_diffusive_2", self.opts.gen2),
                          ("disc_diffusive_2", self.opts.critic)):
            out[f"optimizer_{name}"] = opt.state_dict()
            out[f"scheduler_{name}"] = self.opts.schedulers[name].state_dict()
        out["ema_gen_diffusive_1"] = self.opts.ema1.state_dict() if self.opts.ema1 else None
        out["ema_gen_diffusive_2"] = self.opts.ema2.state_dict() if self.opts.ema2 else None
        return out

    def generator_states(self) -> tuple[dict, dict]:
        """CPU state dicts of both generators: `module.` keys with --ddp_keys, EMA weights with --use_ema."""
        states = []
        for net, ema in ((self.nets.gen1, self.opts.ema1), (self.nets.gen2, self.opts.ema2)):
            state = (ema.averaged_state_dict() if ema is not None
                     else {k: v.detach().cpu().clone() for k, v in net.state_dict().items()})
            states.append(add_module_prefix(state) if self.args.ddp_keys else state)
        return states[0], states[1]

    # ----------------------------------------------------------------------- loop
    def run(self) -> None:
        """Train epochs plan.start_epoch+1 .. plan.stop_epoch (1-based), validating and saving after each."""
        if self.layout.is_main:
            save_config(self.args, self.plan.exp_dir, contrast_order=self.plan.contrasts,
                        image_size=self.args.image_size, world_size=self.layout.world_size)
        while self.epoch < self.plan.stop_epoch:
            started = time.time()
            lrs = self.train_epoch()
            self.end_epoch(lrs, time.time() - started)

    def train_epoch(self) -> tuple[float, float]:
        """One pass over this rank's share of the training slices; returns the learning rates it used."""
        args, number = self.args, self.epoch + 1
        lr_g, lr_d = self.opts.gen1.param_groups[0]["lr"], self.opts.critic.param_groups[0]["lr"]
        self.sampler.set_epoch(self.epoch)
        self.loader_rng.manual_seed(args.seed + 7919 * self.epoch + self.layout.rank)
        bar = tqdm(total=self.plan.steps_per_epoch, desc=f"epoch {number}/{args.num_epoch}", unit="step",
                   disable=not self.layout.is_main, dynamic_ncols=True, leave=True)
        pending: list[tuple[int, int, torch.Tensor]] = []
        for iteration, items in enumerate(self.loader):
            batch = Batch.from_loader(items, self.device)
            with autocast_context(self.device, self.speed.amp):
                losses = train_step(self.nets, self.opts, batch, self.diff, args, self.global_step)
            pending.append((iteration, self.global_step, losses))
            self.global_step += 1
            if len(pending) >= LOG_EVERY or iteration == self.plan.steps_per_epoch - 1:
                last = self._flush(pending, number, lr_g, lr_d)
                bar.set_postfix({k: f"{last[k]:.3g}" for k in ("errD_real", "errD_fake", "errG_adv", "errG_L1",
                                                               "mask_loss")}, refresh=False)
                pending = []
            bar.update()
        bar.close()
        if not args.no_lr_decay:
            step_schedulers(self.opts)
        return lr_g, lr_d

    def _flush(self, pending: list[tuple[int, int, torch.Tensor]], epoch: int, lr_g: float,
               lr_d: float) -> dict[str, float]:
        """Average the pending loss rows over the ranks (one synchronisation) and append them to the log."""
        values = all_reduce_mean(torch.stack([losses for _, _, losses in pending])).cpu().tolist()
        row: dict[str, float] = {}
        for (iteration, step, _), row_values in zip(pending, values):
            row = dict(zip(LOSS_NAMES, row_values))
            self.log.append(epoch=epoch, iteration=iteration, global_step=step, lr_g=lr_g, lr_d=lr_d, **row)
        return row

    def end_epoch(self, lrs: tuple[float, float], seconds: float) -> None:
        """Validate, then (rank 0) write the sample grid, logs, curves and checkpoints of the finished epoch."""
        args, number = self.args, self.epoch + 1
        batches = validation_batches(len(self.val_set), args.batch_size, self.layout.rank, self.layout.world_size)
        with contextlib.ExitStack() as stack:
            # With --use_ema, validation and the sample grid show the averaged weights the checkpoints hold.
            for ema in (self.opts.ema1, self.opts.ema2):
                if ema is not None:
                    stack.enter_context(ema.swapped())
            scores, preview = validate(self.nets, self.val_set, batches, self.diff, args, self.device,
                                       progress=self.layout.is_main)
        self.epoch = number
        rng_states = gather_objects(rng_state(self.device))
        improved = scores[args.best_metric] > self.best[0]
        if improved:
            self.best = (scores[args.best_metric], number)
        if self.layout.is_main:
            self.val_log.append(epoch=number, global_step=self.global_step, seconds=round(seconds, 2),
                                best_epoch=self.best[1], **scores)
            tqdm.write(f"epoch {number}/{args.num_epoch}: " + ", ".join(
                f"val {k} {scores[k]:.4g}" for k in VAL_NAMES) + f" ({seconds:.0f} s, lr_g {lrs[0]:.3g})"
                + (" - best so far" if improved else f" - best: epoch {self.best[1]}"))
            self._write_files(preview, rng_states, improved)
        barrier()

    def _write_files(self, preview: dict[str, np.ndarray], rng_states: list[dict], improved: bool) -> None:
        """Sample grid, logs, curves, generator checkpoints (the best ones when `improved`), then content.pth last
        (the resume point)."""
        args, exp, number = self.args, self.plan.exp_dir, self.epoch
        if preview:
            names = dict(zip(("cond1", "cond2", "cond3"), self.plan.contrasts[:3]))
            preview = {names.get(k, k): v for k, v in preview.items()}
            save_sample_grid(preview, exp / f"sample_discrete_epoch_{number}.png",
                             title=f"epoch {number}: " + ", ".join(self.plan.contrasts[:3])
                             + f" -> {self.plan.contrasts[3]}")
        self.log.save()
        self.val_log.save()
        plot_curves(self.log.column("global_step"), {k: self.log.column(k) for k in LOSS_NAMES},
                    self.val_log.column("epoch"), {k: self.val_log.column(k) for k in VAL_NAMES},
                    exp / "curves.png")
        state1, state2 = self.generator_states()
        save_torch(state1, exp / "gen_diffusive_1.pth")
        save_torch(state2, exp / "gen_diffusive_2.pth")
        if number % args.save_ckpt_every == 0 or number == args.num_epoch:
            save_torch(state1, exp / f"gen_diffusive_1_{number}.pth")
            save_torch(state2, exp / f"gen_diffusive_2_{number}.pth")
        if improved:
            save_torch(state1, exp / "gen_diffusive_1_best.pth")
            save_torch(state2, exp / "gen_diffusive_2_best.pth")
        if number % args.save_content_every == 0 or number == self.plan.stop_epoch:
            save_torch(self.content(rng_states), exp / CONTENT)


def best_so_far(val_log: CsvLog, metric: str = "psnr") -> tuple[float, int]:
    """(validation score, epoch) of the best epoch logged so far by `metric`, or (-inf, 0) before the first."""
    scored = [(score, int(epoch)) for score, epoch in zip(val_log.column(metric), val_log.column("epoch"))
              if not math.isnan(score)]
    return max(scored, key=lambda item: item[0], default=(-math.inf, 0))


# --------------------------------------------------------------------------- processes
def clear_outputs(exp_dir: Path) -> None:
    """Delete a previous run's training outputs (only files this script writes) for --overwrite."""
    patterns = (CONTENT, "config.json", "log.csv", "val.csv", "curves.png", "gen_diffusive_[12].pth",
                "gen_diffusive_[12]_*.pth", "sample_discrete_epoch_*.png")
    removed = [path for pattern in patterns for path in exp_dir.glob(pattern)]
    for path in removed:
        path.unlink()
    if removed:
        print(f"--overwrite: removed {len(removed)} file(s) of the previous run in {exp_dir}")


def run_process(args: Namespace, plan: RunPlan, local_rank: int, rank: int) -> None:
    """One training process: join the group (if several), train, leave."""
    layout = ProcessLayout(rank, local_rank, plan.launch.world_size, plan.launch.local_world_size,
                           process_device(plan.device_kind, local_rank))
    if layout.device.type == "cpu" and layout.local_world_size > 1:
        # Several CPU processes on one machine would otherwise each start a thread per core.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // layout.local_world_size))
    init_group(layout, plan.init_method)
    try:
        if layout.is_main:
            plan.exp_dir.mkdir(parents=True, exist_ok=True)
            if args.overwrite and not args.resume:
                clear_outputs(plan.exp_dir)
        Trainer(args, plan, layout).run()
    finally:
        close_group()


def _spawned(local_rank: int, args: Namespace, plan: RunPlan) -> None:
    """Entry point of a process started by torch.multiprocessing.spawn."""
    rank = plan.launch.node_rank * plan.launch.local_world_size + local_rank
    try:
        run_process(args, plan, local_rank, rank)
    except UserError as err:
        print(f"error (process {rank}): {err}", file=sys.stderr)
        sys.exit(2)


def launch(args: Namespace, plan: RunPlan) -> None:
    """Start the processes the plan asks for."""
    mode = plan.launch.mode
    if mode == "torchrun":
        run_process(args, plan, int(os.environ["LOCAL_RANK"]), int(os.environ["RANK"]))
    elif mode == "single":
        run_process(args, plan, 0, 0)
    else:
        import torch.multiprocessing as mp

        plan = choose_port(plan)
        try:
            mp.spawn(_spawned, args=(args, plan), nprocs=plan.launch.local_world_size, join=True)
        except mp.ProcessExitedException as err:
            raise UserError(f"training process {err.error_index} stopped with exit code {err.exit_code} "
                            "(its message is above)") from None


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


def main(argv: Sequence[str] | None = None) -> None:
    """Parse, check everything cheap, then dry-run or train."""
    args = parse_with_config(build_parser(), argv)
    plan = prepare(args)
    if args.dry_run:
        if not launched_by_torchrun() or os.environ.get("RANK") == "0":
            print(describe(args, plan))
        return
    if launched_by_torchrun() and args.num_process_per_node > 1:
        warnings.warn("started by torchrun: its process count is used and --num_process_per_node is ignored",
                      stacklevel=1)
    launch(args, plan)


if __name__ == "__main__":
    sys.exit(run_cli(main))
