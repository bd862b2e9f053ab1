"""Start training: check the options, then run one process, spawned processes, or torchrun's."""
from __future__ import annotations

import os
import sys
import warnings
from argparse import Namespace

import torch

from utils.core.errors import UserError
from utils.train.distributed import ProcessLayout, close_group, init_group, launched_by_torchrun, process_device
from utils.train.loop import Trainer
from utils.train.plan import RunPlan, choose_port, describe, prepare
from utils.train.resume import clear_outputs


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


def run_training(args: Namespace) -> None:
    """train.py's job for parsed options: check everything cheap, then print the plan (--dry_run) or train."""
    plan = prepare(args)
    if args.dry_run:
        if not launched_by_torchrun() or os.environ.get("RANK") == "0":
            print(describe(args, plan))
        return
    if launched_by_torchrun() and args.num_process_per_node > 1:
        warnings.warn("started by torchrun: its process count is used and --num_process_per_node is ignored",
                      stacklevel=1)
    launch(args, plan)
