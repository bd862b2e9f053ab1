"""Exponential moving average of generator weights, with the optional warm-up."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

# An update count past which the warm-up decay (1 + n) / (10 + n) exceeds any decay below 1 - 1e-8.
WARMED_UP = 10**9


class EMA:
    """Moving averages of the parameters of one network."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False) -> None:
        """Track `model`'s parameters with the given decay (the averages start at the first update)."""
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.model = model
        self.decay = float(decay)
        self.warmup = warmup
        self.updates = 0
        self.shadow: dict[str, torch.Tensor] = {}

    def current_decay(self) -> float:
        """The decay the next update uses: `decay`, or its warm-up value early in training."""
        if not self.warmup:
            return self.decay
        n = self.updates + 1  # the next update's number, counting from 1
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current parameters into the averages (call right after the optimiser step)."""
        decay = self.current_decay()
        self.updates += 1
        names, averages, params = [], [], []
        for name, param in self.model.named_parameters():
            if param.grad is None:
                continue
            if name not in self.shadow:
                self.shadow[name] = param.detach().clone()
            names.append(name)
            averages.append(self.shadow[name])
            params.append(param.detach())
        if averages:
            torch._foreach_mul_(averages, decay)
            torch._foreach_add_(averages, params, alpha=1.0 - decay)

    def state_dict(self) -> dict:
        """Decay, update count and averages (plain tensors, loadable with weights_only=True)."""
        return {"decay": self.decay, "updates": self.updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        """Restore the averages saved by state_dict, on the network's device."""
        names = dict(self.model.named_parameters())
        unknown = sorted(set(state["shadow"]) - set(names))
        if unknown:
            raise KeyError(f"EMA state names parameters the network does not have: {', '.join(unknown[:5])}")
        self.decay = float(state["decay"])
        # States written before the count was kept come from runs without warm-up: count them as warmed up.
        self.updates = int(state.get("updates", WARMED_UP))
        self.shadow = {k: v.to(names[k].device, names[k].dtype).clone() for k, v in state["shadow"].items()}

    def averaged_state_dict(self) -> dict[str, torch.Tensor]:
        """The network's state_dict with each tracked parameter replaced by its average (copies, on the CPU)."""
        state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        for name, average in self.shadow.items():
            state[name] = average.detach().cpu().clone()
        return state

    @contextlib.contextmanager
    def swapped(self) -> Iterator[nn.Module]:
        """Run a block with the averages loaded into the network; its own weights come back afterwards."""
        params = dict(self.model.named_parameters())
        saved = {name: params[name].detach().clone() for name in self.shadow}
        with torch.no_grad():
            for name, average in self.shadow.items():
                params[name].copy_(average)
        try:
            yield self.model
        finally:
            with torch.no_grad():
                for name, value in saved.items():
                    params[name].copy_(value)
