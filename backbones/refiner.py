"""A light 3-D refiner (new, behind --refine): corrects a volume stacked from 2-D syntheses across its slices."""
from __future__ import annotations

import torch
from torch import nn

# The in-plane dilations of the residual blocks: a wide in-plane view (brightness is a regional property) at the
# cost of a 3 x 3 x 3 kernel; through-plane every block looks one slice either way, so the stack is seen 2 x blocks
# slices deep.
DILATIONS = (1, 2, 4, 1)


class ResidualBlock3d(nn.Module):
    """Two 3-D convolutions with a skip: x + conv(relu(conv(x)))."""

    def __init__(self, width: int, dilation: int) -> None:
        """`dilation` applies in-plane only; through-plane the kernel stays 3 slices wide."""
        super().__init__()
        padding = (1, dilation, dilation)
        self.conv1 = nn.Conv3d(width, width, 3, padding=padding, dilation=(1, dilation, dilation))
        self.conv2 = nn.Conv3d(width, width, 3, padding=padding, dilation=(1, dilation, dilation))
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x + the block's correction."""
        return x + self.conv2(self.act(self.conv1(self.act(x))))


class VolumeRefiner(nn.Module):
    """Synthesis + a learnt correction, from the synthesised stack and its three conditioning stacks.

    Input (B, 4, D, S, S) in model space [-1, 1]: channel 0 the synthesis, 1-3 the conditions, D the axial slices.
    The last convolution starts at zero, so an untrained refiner returns the synthesis unchanged.
    """

    def __init__(self, width: int = 16, blocks: int = len(DILATIONS)) -> None:
        """`width` feature channels, `blocks` residual blocks (their dilations cycle through DILATIONS)."""
        super().__init__()
        self.head = nn.Conv3d(4, width, 3, padding=1)
        self.body = nn.Sequential(*(ResidualBlock3d(width, DILATIONS[i % len(DILATIONS)]) for i in range(blocks)))
        self.tail = nn.Conv3d(width, 1, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, S, S): the refined synthesis, clamped to the model's range."""
        return (x[:, :1] + self.tail(self.body(self.head(x)))).clamp(-1, 1)
