"""Process layout and collectives for multi-GPU training (spawn, torchrun, several nodes)."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterable

import torch
import torch.distributed as dist

from utils.core.errors import UserError
from utils.core.runtime import resolve_device

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


# Flattened gradients are reduced in pieces of at most this many elements, so the extra memory stays bounded.
BUCKET_NUMEL = 1 << 24


@dataclass(frozen=True)
class ProcessLayout:
    """Where this process sits: global rank, rank on its node, world size, processes on its node and its device."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes every file and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """A process group exists only when there is more than one process."""
        return self.world_size > 1


@dataclass(frozen=True)
class LaunchPlan:
    """How train.py starts its processes: by itself, by spawning, or under torchrun (already started)."""

    mode: str  # "single", "spawn" or "torchrun"
    world_size: int
    local_world_size: int
    node_rank: int
    master_address: str
    port: int


def launched_by_torchrun() -> bool:
    """True when torchrun (or another env:// launcher) started this process."""
    return all(name in os.environ for name in TORCHRUN_VARS)


def plan_launch(num_proc_node: int, num_process_per_node: int, node_rank: int, master_address: str,
                port_num: str) -> LaunchPlan:
    """Decide how to start the processes from the original's process flags or torchrun's environment."""
    if launched_by_torchrun():
        world = int(os.environ["WORLD_SIZE"])
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        return LaunchPlan("torchrun", world, local_world, int(os.environ.get("GROUP_RANK", 0)),
                          os.environ.get("MASTER_ADDR", master_address),
                          int(os.environ.get("MASTER_PORT", port_num)))
    if num_proc_node < 1 or num_process_per_node < 1:
        raise UserError("--num_proc_node and --num_process_per_node must be at least 1")
    if not 0 <= node_rank < num_proc_node:
        raise UserError(f"--node_rank {node_rank} must lie in 0..{num_proc_node - 1} (--num_proc_node {num_proc_node})")
    try:
        port = int(port_num)
    except ValueError:
        raise UserError(f"--port_num {port_num!r} is not a port number") from None
    world = num_proc_node * num_process_per_node
    mode = "single" if world == 1 else "spawn"
    return LaunchPlan(mode, world, num_process_per_node, node_rank, master_address, port)


def port_is_free(address: str, port: int) -> bool:
    """True when nothing listens on address:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def free_port(address: str = "127.0.0.1") -> int:
    """A port the operating system reports unused right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def resolve_device_kind(spec: str, local_world_size: int) -> str:
    """Check --device (resolve_device) and the processes per node; "cpu", "cuda" (one GPU per process) or "cuda:N"."""
    device = resolve_device(spec)
    if device.type == "cpu":
        return "cpu"
    if ":" not in spec:  # auto or cuda: local process k uses GPU k
        available = torch.cuda.device_count()
        if local_world_size > available:
            raise UserError(f"{local_world_size} processes per node need one GPU each but only {available} "
                            f"{'is' if available == 1 else 'are'} visible; lower --num_process_per_node "
                            f"(or torchrun's --nproc_per_node) to {available}")
        return "cuda"
    if local_world_size > 1:
        raise UserError(f"--device {spec.strip()} names one GPU but {local_world_size} processes run on this node; "
                        "use --device cuda (one GPU per process) or choose GPUs with CUDA_VISIBLE_DEVICES")
    return str(device)


def process_device(kind: str, local_rank: int) -> torch.device:
    """This process's device: CPU, the GPU given by its local rank, or the one GPU named."""
    if kind == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(kind)


def init_group(layout: ProcessLayout, init_method: str) -> None:
    """Join the process group (NCCL on GPUs, gloo on CPUs); nothing to do for a single process."""
    if not layout.distributed:
        return
    if layout.device.type == "cuda":
        torch.cuda.set_device(layout.device)
        backend = "nccl"
    else:
        backend = "gloo"
    kwargs: dict[str, Any] = {"backend": backend, "init_method": init_method, "rank": layout.rank,
                              "world_size": layout.world_size, "timeout": timedelta(minutes=30)}
    if backend == "nccl":
        kwargs["device_id"] = layout.device
    dist.init_process_group(**kwargs)


def close_group() -> None:
    """Leave the process group if one exists."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Give every rank rank `src`'s parameters and buffers (each rank was seeded differently)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src)


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Replace every gradient by its mean over the ranks (what DistributedDataParallel computes)."""
    if not is_distributed():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    world = dist.get_world_size()
    by_kind: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for grad in grads:
        by_kind.setdefault((grad.dtype, grad.device), []).append(grad)
    for group in by_kind.values():
        for bucket in _buckets(group):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat)
            flat.div_(world)
            offset = 0
            for grad in bucket:
                grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
                offset += grad.numel()


def _buckets(tensors: list[torch.Tensor]) -> Iterable[list[torch.Tensor]]:
    """Split tensors into consecutive groups of at most BUCKET_NUMEL elements (a larger tensor goes alone)."""
    bucket: list[torch.Tensor] = []
    size = 0
    for tensor in tensors:
        if bucket and size + tensor.numel() > BUCKET_NUMEL:
            yield bucket
            bucket, size = [], 0
        bucket.append(tensor)
        size += tensor.numel()
    if bucket:
        yield bucket


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over the ranks in place (identity for one process) and return it."""
    if is_distributed():
        dist.all_reduce(tensor)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average `tensor` over the ranks in place (identity for one process) and return it."""
    if is_distributed():
        dist.all_reduce(tensor)
        tensor.div_(dist.get_world_size())
    return tensor


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (a one-element list for one process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank (no-op for one process)."""
    if is_distributed():
        dist.barrier()
