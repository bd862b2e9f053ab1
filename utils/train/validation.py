"""Validation during training: sample every validation slice and average PSNR, SSIM and L1."""
from __future__ import annotations

import math
from argparse import Namespace
from typing import Iterable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from utils.data.context import centre_slice
from utils.data.geometry import model_to_unit
from utils.eval.metrics import plain_metrics
from utils.model.speed import SpeedOptions, fast_sample
from utils.train.distributed import all_reduce_sum
from utils.train.steps import Batch, Diffusion, Networks

VAL_NAMES = ("psnr", "ssim", "l1")


# --------------------------------------------------------------------------- validation
def validation_batches(num_slices: int, batch_size: int, rank: int, world_size: int) -> list[list[int]]:
    """This rank's share of the validation batches: batch b of the whole set goes to rank b mod world_size."""
    batches = [list(range(i, min(i + batch_size, num_slices))) for i in range(0, num_slices, batch_size)]
    return batches[rank::world_size]


def to_unit_range(x: torch.Tensor) -> np.ndarray:
    """Model-space images in [-1, 1] as a float64 numpy stack (N, H, W) in [0, 1]."""
    return model_to_unit(x[:, 0].detach().float().cpu().numpy().astype(np.float64)).clip(0.0, 1.0)


@torch.no_grad()
def validate(nets: Networks, dataset: torch.utils.data.Dataset, batches: Iterable[Sequence[int]],
             diff: Diffusion, args: Namespace, device: torch.device, preview: int = 4,
             progress: bool = False) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Sample every validation slice of this rank's batches and return the whole set's mean PSNR, SSIM and L1.

    Each batch's noise is seeded from --seed and the batch's first slice index, so the numbers depend neither on the
    process count nor on training's random state (which is left untouched). Metrics are computed on [0, 1] images
    of the full slice (data range 1); PSNR averages the finite values (identical images score inf). Also returns
    the first `preview` slices of this rank's first batch (for the sample grid). `progress` shows a bar.
    """
    # Sums of PSNR, SSIM and L1, then the number of finite PSNRs (identical images score inf) and of slices.
    sums = torch.zeros(5, dtype=torch.float64)
    shown: dict[str, np.ndarray] = {}
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    for gen in (nets.gen1, nets.gen2):
        gen.eval()
    try:
        for indices in tqdm(batches, desc="validation", unit="batch", disable=not progress, leave=False):
            items = [dataset[i] for i in indices]
            batch = Batch(*(torch.stack([item[k] for item in items]).to(device) for k in range(4)))
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(args.seed + indices[0])
                x_init = torch.randn_like(batch.target)
                fake = fast_sample(diff.pos_coeff, nets.gen1, batch.cond1, nets.gen2, batch.cond2, batch.cond3,
                                   diff.num_timesteps, x_init, args, amp=SpeedOptions.from_args(args).amp)
            real01, fake01 = to_unit_range(batch.target), to_unit_range(fake)
            for real_slice, fake_slice in zip(real01, fake01):
                scores = plain_metrics(real_slice, fake_slice)
                finite = math.isfinite(scores["psnr"])
                sums += torch.tensor([scores["psnr"] if finite else 0.0, scores["ssim"], scores["mae"],
                                      float(finite), 1.0], dtype=torch.float64)
            if not shown:
                conds = {name: to_unit_range(centre_slice(cond))[:preview]
                         for name, cond in (("cond1", batch.cond1), ("cond2", batch.cond2), ("cond3", batch.cond3))}
                shown = {**conds, "synthesis": fake01[:preview], "ground truth": real01[:preview]}
    finally:
        for gen in (nets.gen1, nets.gen2):
            gen.train()
    psnr, ssim, l1, finite, count = all_reduce_sum(sums.to(device)).cpu().tolist()
    scores = {"psnr": psnr / finite if finite else math.inf, "ssim": ssim / count, "l1": l1 / count}
    return scores, shown
