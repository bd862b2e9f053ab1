"""The training loop: epochs, validation, checkpoints, resume."""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from argparse import Namespace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from utils.core.artifacts import (
    CONTENT_FORMAT,
    CONTENT_NAME,
    CURVES,
    TRAIN_LOG,
    VAL_LOG,
    VALUE_RANGES,
    sample_figure_name,
    save_config,
)
from utils.core.fileio import save_torch
from utils.core.runtime import seed_everything
from utils.data.slices import SliceDataset
from utils.eval.plots import plot_curves, save_sample_grid
from utils.model.checkpoint import add_module_prefix, load_state
from utils.model.diffusion import Diffusion_Coefficients, Posterior_Coefficients
from utils.model.speed import SpeedOptions, autocast_context, prepare_generators, prepare_module, prepare_process
from utils.train.distributed import ProcessLayout, all_reduce_mean, barrier, broadcast_module, gather_objects
from utils.train.logs import CsvLog
from utils.train.plan import RunPlan
from utils.train.resume import _normalise, read_content, rng_state, set_rng_state
from utils.train.steps import (
    LOSS_NAMES,
    Batch,
    Diffusion,
    build_networks,
    build_optimisers,
    step_schedulers,
    train_step,
)
from utils.train.validation import VAL_NAMES, validate, validation_batches

LOG_EVERY = 50


# --------------------------------------------------------------------------- networks and state




# --------------------------------------------------------------------------- the run
class Trainer:
    """One process's training run: networks, optimisers, data, logs and the epoch loop."""

    def __init__(self, args: Namespace, plan: RunPlan, layout: ProcessLayout) -> None:
        """Build everything (same initial weights on every rank) and restore content.pth with --resume."""
        self.args, self.plan, self.layout = args, plan, layout
        self.device = layout.device
        seed_everything(args.seed + layout.rank)
        self.train_set = SliceDataset(args.input_path, "train", plan.contrasts, args.image_size,
                                      with_masks=args.lesion_l1_weight > 0, context_slices=args.context_slices)
        self.val_set = SliceDataset(args.input_path, "val", plan.contrasts, args.image_size,
                                    context_slices=args.context_slices)
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
        self.log = CsvLog(exp / TRAIN_LOG, ["epoch", "iteration", "global_step", *LOSS_NAMES, "lr_g", "lr_d"])
        self.val_log = CsvLog(exp / VAL_LOG, ["epoch", "global_step", *VAL_NAMES, "best_epoch", "seconds"])
        if args.resume:
            self._restore(exp / CONTENT_NAME)
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
                        world_size=self.layout.world_size, **VALUE_RANGES)
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
            save_sample_grid(preview, exp / sample_figure_name(number),
                             title=f"epoch {number}: " + ", ".join(self.plan.contrasts[:3])
                             + f" -> {self.plan.contrasts[3]}")
        self.log.save()
        self.val_log.save()
        plot_curves(self.log.column("global_step"), {k: self.log.column(k) for k in LOSS_NAMES},
                    self.val_log.column("epoch"), {k: self.val_log.column(k) for k in VAL_NAMES},
                    exp / CURVES)
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
            save_torch(self.content(rng_states), exp / CONTENT_NAME)


def best_so_far(val_log: CsvLog, metric: str = "psnr") -> tuple[float, int]:
    """(validation score, epoch) of the best epoch logged so far by `metric`, or (-inf, 0) before the first."""
    scored = [(score, int(epoch)) for score, epoch in zip(val_log.column(metric), val_log.column("epoch"))
              if not math.isnan(score)]
    return max(scored, key=lambda item: item[0], default=(-math.inf, 0))
