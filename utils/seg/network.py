"""The segmenter: a MONAI 2-D U-Net over the four contrasts, saved as a weights_only-loadable state dict + config."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from monai.networks.nets import UNet

from utils.brasyn.options import DEFAULT_CHANNELS
from utils.core.artifacts import SEGMENTER_NAME
from utils.core.errors import UserError
from utils.core.fileio import save_torch
from utils.data.layouts import BRATS_CONTRASTS
from utils.seg.labels import CLASSES

SEGMENTER_FORMAT = "brasyn-segmenter/1"  # stamped into the file; a different stamp is refused on load


@dataclass
class SegmenterConfig:
    """What rebuilds the network and its input: working size, U-Net widths, contrast and class order."""

    image_size: int = 128
    channels: list[int] = field(default_factory=lambda: list(DEFAULT_CHANNELS))
    num_res_units: int = 1
    contrasts: list[str] = field(default_factory=lambda: list(BRATS_CONTRASTS))
    classes: list[str] = field(default_factory=lambda: list(CLASSES))
    normalisation: str = "each volume: clip to its 1st/99th percentile of voxels > 0, min-max to [0, 1]"


def check_config(config: SegmenterConfig) -> None:
    """UserError when the working size does not survive the U-Net's halvings."""
    factor = 2 ** (len(config.channels) - 1)
    if len(config.channels) < 2 or min(config.channels) < 1:
        raise UserError(f"--channels {' '.join(map(str, config.channels))}: give two or more positive widths")
    if config.image_size < factor or config.image_size % factor:
        nearest = max(factor, config.image_size // factor * factor)
        raise UserError(f"--image_size {config.image_size} must be a multiple of {factor} (the U-Net halves it "
                        f"{len(config.channels) - 1} times); pick e.g. {nearest}")


def build_network(config: SegmenterConfig) -> UNet:
    """The MONAI U-Net the config describes: four contrasts in, one logit per class out."""
    check_config(config)
    return UNet(spatial_dims=2, in_channels=len(config.contrasts), out_channels=len(config.classes),
                channels=tuple(config.channels), strides=(2,) * (len(config.channels) - 1),
                num_res_units=config.num_res_units)


def save_segmenter(network: torch.nn.Module, config: SegmenterConfig, path: Path) -> None:
    """The state dict and config in one file that torch.load(weights_only=True) reads."""
    state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    save_torch({"format": SEGMENTER_FORMAT, "config": asdict(config), "state_dict": state}, path)


def load_segmenter(path: Path) -> tuple[UNet, SegmenterConfig]:
    """A segmenter saved by save_segmenter, on the CPU; UserError for a missing or foreign file."""
    if not path.is_file():
        raise UserError(f"--segmenter {path}: no such file (brasyn.py segment --train writes <out>/{SEGMENTER_NAME})")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and unpickling errors all mean "not our file"
        raise UserError(f"--segmenter {path}: not a readable segmenter file ({type(err).__name__}); give the "
                        f"{SEGMENTER_NAME} a brasyn.py segment run wrote") from err
    if not isinstance(saved, dict) or saved.get("format") != SEGMENTER_FORMAT:
        raise UserError(f"--segmenter {path}: not a {SEGMENTER_FORMAT} file; give the {SEGMENTER_NAME} a "
                        "brasyn.py segment run wrote")
    config = SegmenterConfig(**saved["config"])
    network = build_network(config)
    network.load_state_dict(saved["state_dict"])
    return network, config
