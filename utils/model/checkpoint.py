"""Safe checkpoint reading (weights_only) and strict state loading with a one-line report of mismatched keys."""
from __future__ import annotations

import argparse
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from utils.core.errors import UserError

DDP_PREFIX = "module."


# How many names of each kind a mismatch message shows before summarising the rest as a count.
MAX_LISTED = 10


DEFAULT_HINT = ("Was it trained with other model options (--image_size, --num_channels_dae, --ch_mult, "
                "--num_res_blocks, --attn_resolutions, --nz, --z_emb_dim, --n_mlp, --ngf ...)? Pass the training "
                "flags or put its config.json beside it")


# The first bytes of torch's pre-1.6 (non-zip) format: a pickled magic number.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


PathLike = str | os.PathLike


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not fit the network it is loaded into."""


def _is_torch_file(path: Path) -> bool:
    """Whether the file looks like something torch.save wrote (the zip format, or the old pickled-magic format)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as fh:
        return fh.read(len(_LEGACY_MAGIC)) == _LEGACY_MAGIC


def _refused_global(message: str) -> str:
    """The name of the object the weights-only unpickler refused, when its message says."""
    match = re.search(r"GLOBAL ([\w.]+)", message)
    return f" ({match.group(1)})" if match else ""


def read_checkpoint(path: PathLike, map_location: str | torch.device = "cpu", *,
                    allow_namespace: bool = False) -> dict:
    """Load a checkpoint dict with weights_only=True; every failure is a one-line CheckpointError naming the file.

    `allow_namespace` also accepts argparse.Namespace objects (a plain attribute bag; the original training script
    stored its options as one in content.pth).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a file")
    safe = [argparse.Namespace] if allow_namespace else []
    try:
        if not _is_torch_file(path):
            raise CheckpointError(f"{path} is not a PyTorch checkpoint (not written by torch.save, or truncated)")
        with torch.serialization.safe_globals(safe):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} holds pickled Python objects{_refused_global(str(err))}; checkpoints are read with "
            f"weights_only=True, which refuses to unpickle objects because they can run code. Re-save it as a "
            f"dict of tensors (a state_dict) from a trusted environment") from None
    except (OSError, RuntimeError, EOFError, KeyError, ValueError) as err:
        first_line = str(err).splitlines()[0] if str(err) else "unexpected end of file"
        raise CheckpointError(f"{path} could not be read as a PyTorch checkpoint ({type(err).__name__}: "
                              f"{first_line})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a dict (state_dict or training state)")
    return obj


def strip_module_prefix(state: Mapping[str, Any]) -> OrderedDict:
    """Drop the `module.` prefix that DistributedDataParallel adds, when every key has it; other states unchanged."""
    wrapped = bool(state) and all(k.startswith(DDP_PREFIX) for k in state)
    rename = _strip_ddp_key if wrapped else str
    stripped = OrderedDict((rename(k), v) for k, v in state.items())
    # load_state_dict reads per-module format versions from _metadata, keyed by module path: rename those too.
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        stripped._metadata = OrderedDict((rename(k), v) for k, v in metadata.items())  # type: ignore[attr-defined]
    return stripped


def add_module_prefix(state: Mapping[str, Any]) -> OrderedDict:
    """A state dict with DistributedDataParallel's `module.` key prefix, the form the original test.py loads.

    The original cut the first 7 characters off every key.
    """
    return OrderedDict((DDP_PREFIX + k, v) for k, v in state.items())


def _strip_ddp_key(key: str) -> str:
    """A key or module path without the DDP wrapper's `module.` (the wrapper's own path `module` becomes '')."""
    if key == DDP_PREFIX[:-1]:
        return ""
    return key[len(DDP_PREFIX):] if key.startswith(DDP_PREFIX) else key


def _listed(names: list[str]) -> str:
    """At most MAX_LISTED names, then how many more."""
    shown = ", ".join(names[:MAX_LISTED])
    more = len(names) - MAX_LISTED
    return f"{shown} and {more} more" if more > 0 else shown


def _mismatch_report(model: nn.Module, state: Mapping[str, Any]) -> list[str]:
    """Missing keys, unexpected keys and shape mismatches of `state` against `model`, one phrase per kind."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
                  for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = []
    for label, names in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("shape mismatches", mismatched)):
        if names:
            problems.append(f"{len(names)} {label}: {_listed(names)}")
    return problems


def load_state(model: nn.Module, state_or_path: Mapping[str, Any] | PathLike, what: str,
               hint: str = DEFAULT_HINT) -> nn.Module:
    """Load a state_dict (or the file holding one) into `model` strictly; return the model.

    Accepts plain state dicts and DistributedDataParallel ones (keys prefixed `module.`, as in the authors'
    published gen_diffusive_*.pth). Any missing or unexpected key or shape mismatch raises one CheckpointError that
    lists them, names `what` and the file, and ends with `hint`.
    """
    if isinstance(state_or_path, (str, os.PathLike)):
        source = f"{what} ({state_or_path})"
        state = read_checkpoint(state_or_path)
    else:
        source = what
        state = state_or_path
    not_tensors = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise CheckpointError(f"{source} is not a state_dict: {_listed([repr(k) for k in not_tensors])} "
                              f"{'is' if len(not_tensors) == 1 else 'are'} not tensors")
    state = strip_module_prefix(state)
    problems = _mismatch_report(model, state)
    if problems:
        raise CheckpointError(f"{source} does not fit the network: {'; '.join(problems)}. {hint}")
    model.load_state_dict(state, strict=True)
    return model
