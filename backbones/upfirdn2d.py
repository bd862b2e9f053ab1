"""The general FIR resampling op `upfirdn2d` in plain PyTorch, the definition the faster wrappers are checked against.

It follows the op sequence of the original's CPU fallback op for op, so its results are bit-identical to it. The
module imports nothing but torch, so tools can load it on its own (bench/ uses it as the stand-in for the original's
compiled extension when timing the original code).
"""
import torch
import torch.nn.functional as F


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Upsample by zero insertion, pad (negative = crop), convolve with `kernel`, keep every `down`-th sample.

    The same padding (p0 before, p1 after) applies to both axes. Output size: (H*up + p0 + p1 - kh) // down + 1.
    """
    pad0, pad1 = pad
    _, channels, in_h, in_w = x.shape
    kernel_h, kernel_w = kernel.shape
    # Every (sample, channel) plane becomes its own single-channel image, laid out channels-last.
    out = x.reshape(-1, in_h, in_w, 1).view(-1, in_h, 1, in_w, 1, 1)
    out = F.pad(out, [0, 0, 0, up - 1, 0, 0, 0, up - 1])
    out = out.view(-1, in_h * up, in_w * up, 1)
    out = F.pad(out, [0, 0, max(pad0, 0), max(pad1, 0), max(pad0, 0), max(pad1, 0)])
    out = out[:, max(-pad0, 0): out.shape[1] - max(-pad1, 0), max(-pad0, 0): out.shape[2] - max(-pad1, 0), :]
    padded_h = in_h * up + pad0 + pad1
    padded_w = in_w * up + pad0 + pad1
    out = out.permute(0, 3, 1, 2).reshape([-1, 1, padded_h, padded_w])
    # conv2d computes a correlation; flipping the kernel makes it a true convolution.
    weight = torch.flip(kernel, [0, 1]).view(1, 1, kernel_h, kernel_w)
    out = F.conv2d(out, weight)
    out = out.reshape(-1, 1, padded_h - kernel_h + 1, padded_w - kernel_w + 1)
    out = out.permute(0, 2, 3, 1)[:, ::down, ::down, :]
    out_h = (padded_h - kernel_h) // down + 1
    out_w = (padded_w - kernel_w) // down + 1
    return out.view(-1, channels, out_h, out_w)


__all__ = ["upfirdn2d"]
