"""utils/model/checkpoint.py: safe reading and strict loading with a readable report; atomic saving (save_torch)."""
import argparse
import os
import pickle
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from utils.core.errors import UserError
from utils.core.fileio import save_torch
from utils.model.checkpoint import CheckpointError, load_state, read_checkpoint, strip_module_prefix


class Tiny(nn.Module):
    """A two-layer network with a nested module, a buffer and a GroupNorm: enough structure for key handling."""

    def __init__(self, width: int = 3) -> None:
        """Build with `width` hidden channels."""
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, width, 3), nn.GroupNorm(1, width))
        self.head = nn.Linear(width, 2)
        self.register_buffer("scale", torch.arange(2.0))


class DDPWrapper(nn.Module):
    """What DistributedDataParallel's state_dict looks like: the network under the attribute `module`."""

    def __init__(self, inner: nn.Module) -> None:
        """Wrap `inner`."""
        super().__init__()
        self.module = inner


class Marker:
    """An object whose unpickling would create a file: proof that nothing ran if the file is absent."""

    def __init__(self, target: Path) -> None:
        """Remember the file unpickling would create."""
        self.target = target

    def __reduce__(self) -> tuple:
        """Unpickling calls os.mkdir(target)."""
        return os.mkdir, (str(self.target),)


def seeded_tiny(seed: int, width: int = 3) -> Tiny:
    """A Tiny network with weights from `seed`."""
    torch.manual_seed(seed)
    return Tiny(width)


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    """Every parameter and buffer of `a` and `b` is identical."""
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("from_file", [False, True])
def test_ddp_prefixed_state_loads_identically(tmp_path: Path, from_file: bool) -> None:
    """A `module.`-prefixed state (the authors' published files) gives exactly the saved weights."""
    source = seeded_tiny(0)
    state = DDPWrapper(source).state_dict()
    assert all(k.startswith("module.") for k in state)
    if from_file:
        save_torch(state, tmp_path / "gen_diffusive_1.pth")
        state = tmp_path / "gen_diffusive_1.pth"
    target = seeded_tiny(1)
    assert load_state(target, state, "generator 1") is target
    assert_same_weights(target, source)


def test_plain_state_loads_identically(tmp_path: Path) -> None:
    """A state without prefixes loads as it is, from memory and from a file path given as a string."""
    source = seeded_tiny(0)
    target = load_state(seeded_tiny(1), source.state_dict(), "generator 1")
    assert_same_weights(target, source)
    save_torch(source.state_dict(), tmp_path / "plain.pth")
    assert_same_weights(load_state(seeded_tiny(2), str(tmp_path / "plain.pth"), "generator 1"), source)


def test_strip_module_prefix_only_strips_a_real_prefix() -> None:
    """Only a prefix shared by every key is stripped; `module` elsewhere in a name is kept; metadata follows."""
    wrapped = DDPWrapper(Tiny()).state_dict()
    stripped = strip_module_prefix(wrapped)
    assert list(stripped) == list(Tiny().state_dict())
    assert "" in stripped._metadata and "body.0" in stripped._metadata
    assert not any(k.startswith("module") for k in stripped._metadata)

    plain = OrderedDict([("module_list.0.weight", torch.zeros(1)), ("modules.bias", torch.zeros(1))])
    assert list(strip_module_prefix(plain)) == list(plain)
    mixed = OrderedDict([("module.a", torch.zeros(1)), ("b", torch.zeros(1))])
    assert list(strip_module_prefix(mixed)) == ["module.a", "b"]


def test_missing_key_fails_naming_it() -> None:
    """A checkpoint lacking a key fails with a one-line message that names the key and what to do."""
    state = seeded_tiny(0).state_dict()
    del state["head.bias"]
    with pytest.raises(CheckpointError) as err:
        load_state(Tiny(), state, "generator 1")
    message = str(err.value)
    assert "generator 1" in message and "1 missing keys: head.bias" in message
    assert "--num_channels_dae" in message and "config.json" in message
    assert "\n" not in message
    assert isinstance(err.value, UserError)


def test_unexpected_key_and_shape_mismatch_are_listed_together() -> None:
    """Extra keys and shape mismatches (from another width) are all named in one message, and nothing loads."""
    state = DDPWrapper(seeded_tiny(0, width=4)).state_dict()
    state["module.extra.weight"] = torch.zeros(2)
    target = seeded_tiny(1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_state(target, state, "generator 2")
    message = str(err.value)
    assert "1 unexpected keys: extra.weight" in message
    assert "body.0.weight (checkpoint (4, 1, 3, 3), model (3, 1, 3, 3))" in message
    assert "5 shape mismatches" in message and "missing" not in message
    for key, value in target.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_long_mismatch_lists_are_capped_with_a_count() -> None:
    """With many problems the message shows ten names and the count of the rest."""
    state = OrderedDict((f"stray{i}", torch.zeros(1)) for i in range(25))
    state.update(Tiny().state_dict())
    with pytest.raises(CheckpointError) as err:
        load_state(Tiny(), state, "critic")
    message = str(err.value)
    assert "25 unexpected keys" in message and "and 15 more" in message
    assert "stray9" in message and "stray10," not in message


def test_load_state_refuses_a_training_dict() -> None:
    """A dict that holds more than tensors (a whole content.pth) is not mistaken for a state_dict."""
    source = seeded_tiny(0)
    content = {"epoch": 3, "gen_diffusive_1_dict": source.state_dict()}
    with pytest.raises(CheckpointError, match="not a state_dict: 'epoch', 'gen_diffusive_1_dict' are not tensors"):
        load_state(Tiny(), content, "generator 1")
    target = load_state(seeded_tiny(1), content["gen_diffusive_1_dict"], "generator 1")
    assert_same_weights(target, source)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    """A missing checkpoint is one line naming the path, from read_checkpoint and from load_state alike."""
    path = tmp_path / "exp" / "gen_diffusive_1.pth"
    with pytest.raises(CheckpointError, match=f"checkpoint not found: {path}"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found: .*gen_diffusive_1.pth"):
        load_state(Tiny(), path, "generator 1")
    with pytest.raises(CheckpointError, match="is a folder"):
        read_checkpoint(tmp_path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all\n", pickle.dumps({"a": 1})])
def test_non_torch_file_is_refused(tmp_path: Path, content: bytes) -> None:
    """Empty files, text and plain pickles are reported as not being PyTorch checkpoints."""
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"{path} is not a PyTorch checkpoint"):
        read_checkpoint(path)


def test_truncated_checkpoint_is_refused(tmp_path: Path) -> None:
    """A torch file cut short is one readable error, not a traceback."""
    path = tmp_path / "cut.pth"
    save_torch(Tiny().state_dict(), path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="cut.pth"):
        read_checkpoint(path)


def test_pickled_object_is_refused_without_running_it(tmp_path: Path) -> None:
    """A checkpoint holding an object whose unpickling would run code is refused, and the code never runs."""
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"state": Tiny().state_dict(), "payload": Marker(marker)}, path)
    with pytest.raises(CheckpointError, match="refuses to unpickle objects") as err:
        read_checkpoint(path)
    assert "mkdir" in str(err.value) and str(path) in str(err.value)
    with pytest.raises(CheckpointError, match="refuses to unpickle objects"):
        load_state(Tiny(), path, "generator 1")
    assert not marker.exists()
    # Control: the same file, unpickled without the safeguard, does run the payload.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_custom_class_instance_is_refused(tmp_path: Path) -> None:
    """Any non-tensor class instance (here a network object itself) is refused by name."""
    path = tmp_path / "model.pth"
    torch.save(Tiny(), path)
    with pytest.raises(CheckpointError, match=r"pickled Python objects \(.*Tiny\)"):
        read_checkpoint(path)


def test_namespace_only_with_permission(tmp_path: Path) -> None:
    """The original's content.pth stored args as an argparse.Namespace: readable only when asked for."""
    path = tmp_path / "content.pth"
    save_torch({"args": argparse.Namespace(nz=100, ch_mult=[1, 2]), "epoch": 4}, path)
    with pytest.raises(CheckpointError, match="Namespace"):
        read_checkpoint(path)
    content = read_checkpoint(path, allow_namespace=True)
    assert content["args"].nz == 100 and content["epoch"] == 4


def test_non_dict_checkpoint_is_refused(tmp_path: Path) -> None:
    """A file holding a bare tensor is not a checkpoint dict."""
    path = tmp_path / "tensor.pth"
    save_torch(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match="holds a Tensor, not a dict"):
        read_checkpoint(path)


def test_read_checkpoint_maps_to_the_requested_device(tmp_path: Path) -> None:
    """map_location is honoured (meta: no data is materialised)."""
    path = tmp_path / "plain.pth"
    save_torch(Tiny().state_dict(), path)
    assert all(v.device.type == "meta" for v in read_checkpoint(path, map_location="meta").values())


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If torch.save dies halfway, the previous checkpoint is intact and no temporary file is left behind."""
    path = tmp_path / "gen_diffusive_1.pth"
    old = seeded_tiny(0).state_dict()
    save_torch(old, path)
    old_bytes = path.read_bytes()
    real_save = torch.save

    def save_then_fail(obj: object, target: object, *args: object, **kwargs: object) -> None:
        """Write a partial file, then fail like a full disk."""
        real_save(obj, target, *args, **kwargs)
        with open(target, "r+b") as fh:
            fh.truncate(100)
        raise OSError("no space left on device")

    monkeypatch.setattr(torch, "save", save_then_fail)
    with pytest.raises(OSError, match="no space"):
        save_torch(seeded_tiny(1).state_dict(), path)
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    assert_same_weights(load_state(Tiny(), path, "generator 1"), seeded_tiny(0))


def test_small_reference_states_round_trip(small_ref: dict, tmp_path: Path) -> None:
    """The reference generator weights, saved DDP-style like the authors' files, read back unchanged."""
    for name in ("gen1_state", "gen2_state", "disc_state"):
        state = small_ref[name]
        path = tmp_path / f"{name}.pth"
        save_torch(OrderedDict((f"module.{k}", v) for k, v in state.items()), path)
        back = strip_module_prefix(read_checkpoint(path))
        assert list(back) == list(state)
        assert all(torch.equal(back[k], state[k]) for k in state)


def test_published_style_generator_file_loads_into_the_network(small_ref: dict, tmp_path: Path) -> None:
    """A DDP-style gen_diffusive_1.pth loads into NCSNpp exactly; a differently configured NCSNpp is refused."""
    from backbones import NCSNpp

    config = argparse.Namespace(**small_ref["config"])
    path = tmp_path / "gen_diffusive_1.pth"
    save_torch(OrderedDict((f"module.{k}", v) for k, v in small_ref["gen1_state"].items()), path)
    gen1 = load_state(NCSNpp(config), path, "generator 1")
    for key, value in gen1.state_dict().items():
        assert torch.equal(value, small_ref["gen1_state"][key]), key

    other = argparse.Namespace(**{**vars(config), "ch_mult": [1, 1, 1]})
    with pytest.raises(CheckpointError) as err:
        load_state(NCSNpp(other), path, "generator 1")
    message = str(err.value)
    assert str(path) in message and "missing keys" in message and "--ch_mult" in message
    assert "\n" not in message
