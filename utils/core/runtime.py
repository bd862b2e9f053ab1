"""The process's device choice and random seeding."""
from __future__ import annotations

import random
import re

import numpy as np
import torch

from utils.core.errors import UserError


def resolve_device(spec: str = "auto", gpu_index: int | None = None) -> torch.device:
    """Turn --device / --gpu_chose into a torch.device; a missing GPU is an error only when asked for explicitly."""
    spec = (spec or "auto").strip().lower()
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


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and every GPU), numpy and Python's random."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)
