"""Synthesis of a batch of slices (4-step reverse diffusion) with the optional critic uncertainty map."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from utils.data.context import centre_slice
from utils.infer.experiment import Experiment
from utils.model.diffusion import SharedNoise
from utils.model.speed import fast_sample


class _InputRecorder:
    """Wrap a generator and remember the noisy image of its latest call (x_1 after the sampler's last step)."""

    def __init__(self, generator: nn.Module) -> None:
        """Wrap `generator`."""
        self.generator = generator
        self.last_input: Tensor | None = None

    def __call__(self, x: Tensor, *rest: Tensor) -> Tensor:
        """Record x, then run the generator unchanged."""
        self.last_input = x
        return self.generator(x, *rest)


@dataclass
class Synthesis:
    """One batch's result (B, 1, S, S): the sample in [-1, 1]; on request the uncertainty maps in [0, 1]."""

    sample: Tensor
    disagreement: Tensor | None = None
    critic_map: Tensor | None = None


def critic_features_in_chunks(critic: nn.Module, x: Tensor, t: Tensor, x_next: Tensor) -> Tensor:
    """The critic's mid-level features, computed in chunks the minibatch-stddev layer accepts (B % min(B, 4) == 0)."""
    # The features come before the minibatch-stddev layer, so chunking does not change them.
    parts = [critic(x[i:i + 4], t[i:i + 4], x_next[i:i + 4])[1] for i in range(0, x.size(0), 4)]
    return torch.cat(parts)


@torch.no_grad()
def synthesize(exp: Experiment, cond1: Tensor, cond2: Tensor, cond3: Tensor, uncertainty: bool = False,
               noise: SharedNoise | None = None) -> Synthesis:
    """Sample the target for one batch of conditions (B, 2K + 1, S, S) in [-1, 1] (K = --context_slices, 0 in the
    original), from fresh noise (global RNG).

    With `noise` (SharedNoise.draw, on exp.device) every slice of the batch is sampled with those same draws."""
    cond1, cond2, cond3 = (c.to(exp.device, non_blocking=True) for c in (cond1, cond2, cond3))
    x_init = torch.randn_like(centre_slice(cond1)) if noise is None else noise.initial(cond1.size(0))
    recorder = _InputRecorder(exp.gen1)
    # inference_mode (and bf16 autocast with --amp); with no speed option the bits of sample_from_model.
    sample, x0_1, x0_2 = fast_sample(exp.coefficients, recorder, cond1, exp.gen2, cond2, cond3,
                                     exp.args.num_timesteps, x_init, exp.args, amp=exp.speed.amp, return_x0=True,
                                     noise=noise)
    result = Synthesis(sample=sample)
    if not uncertainty:
        return result
    # Half the |x0_1 − x0_2| of model space: the generators' disagreement in [0, 1] intensity units.
    result.disagreement = (x0_1 - x0_2).abs() / 2
    if exp.critic is not None and exp.att_proj is not None:
        # Training scores a last-step (t = 0) sample as critic(x_0, t=0, x_1) and weights the mutual loss with the
        # attention map of those features; the synthesis is scored the same way.
        t0 = torch.zeros(sample.size(0), dtype=torch.int64, device=sample.device)
        features = critic_features_in_chunks(exp.critic, sample, t0, recorder.last_input)
        result.critic_map = exp.att_proj.attention_map(features, tuple(sample.shape[-2:]))
    return result
