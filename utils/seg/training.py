"""Training the segmenter on the training cases' real four contrasts with MONAI's Dice + cross-entropy loss."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.losses import DiceCELoss
from tqdm import tqdm

from utils.seg.cases import LabelledCase, load_training_case
from utils.seg.network import SegmenterConfig, build_network
from utils.seg.slices import image_slices, label_slices, slice_range


@dataclass
class TrainingSlices:
    """Every brain slice of the training cases on the working grid: images (N, 4, S, S), classes (N, S, S)."""

    images: torch.Tensor
    classes: torch.Tensor


def training_slices(cases: list[LabelledCase], size: int) -> TrainingSlices:
    """Read, normalise and resize the axial brain slices of every training case."""
    images, classes = [], []
    for case in tqdm(cases, desc="reading training cases", unit="case"):
        volumes, labels = load_training_case(case)
        index = slice_range(volumes, list(range(len(volumes))), f"--train case {case.name}")
        images.append(image_slices(volumes, index, size))
        classes.append(label_slices(labels, index, size))
    return TrainingSlices(torch.cat(images), torch.cat(classes))


def _batches(count: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A seeded shuffle of `count` slice indices in batches."""
    return list(torch.randperm(count, generator=generator).split(batch_size))


def train_segmenter(data: TrainingSlices, config: SegmenterConfig, epochs: int, batch_size: int, lr: float,
                    device: torch.device, seed: int) -> tuple[torch.nn.Module, list[dict]]:
    """A U-Net trained on the slices; returns it (in eval mode) and one log row per epoch."""
    torch.manual_seed(seed)
    network = build_network(config).to(device)
    optimiser = torch.optim.Adam(network.parameters(), lr=lr)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    generator = torch.Generator().manual_seed(seed)
    log = []
    network.train()
    with tqdm(range(1, epochs + 1), desc="training the segmenter", unit="epoch") as bar:
        for epoch in bar:
            total = 0.0
            batches = _batches(len(data.images), batch_size, generator)
            for batch in tqdm(batches, desc=f"epoch {epoch}", unit="batch", leave=False):
                images, target = data.images[batch].to(device), data.classes[batch, None].to(device)
                # Left-right flips: brains are near-symmetric, tumours are not; doubles what a few cases teach.
                flip = (torch.rand(len(batch), generator=generator) < 0.5).to(device)
                images[flip], target[flip] = images[flip].flip(-1), target[flip].flip(-1)
                loss = loss_fn(network(images), target)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                total += loss.item() * len(batch)
            log.append({"epoch": epoch, "loss": round(total / len(data.images), 6)})
            bar.set_postfix(loss=f"{log[-1]['loss']:.4f}")
    return network.eval(), log
