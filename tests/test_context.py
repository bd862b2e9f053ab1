"""2.5-D conditioning (--context_slices K): neighbours stay inside their case, the networks read 2K + 1 slices per
condition, and a model trained with K synthesises slices and whole volumes with the same K from its config.json."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import TINY_CONTRASTS, TINY_MODEL_ARGS, save_tiny_slices, synthesis_cli, train_cli

from backbones import build_generators
from utils.core.errors import UserError
from utils.core.options import synthesis_parser
from utils.data.context import centre_slice, manifest_neighbours, volume_neighbours
from utils.data.slices import SliceDataset
from utils.infer.volumes import condition_slices, volume_to_model_slices


def test_neighbours_repeat_the_edge_slices_of_their_case() -> None:
    """Rows of two cases never mix; a case's first and last kept slice stand in for the ones it did not keep."""
    assert manifest_neighbours(["a", "a", "a", "b", "b"], 1) == [[0, 0, 1], [0, 1, 2], [1, 2, 2], [3, 3, 4],
                                                                 [3, 4, 4]]
    assert manifest_neighbours(["a", "b"], 0) == [[0], [1]]
    assert volume_neighbours([0, 5, 9], 2, depth=10) == [[0, 0, 0, 1, 2], [3, 4, 5, 6, 7], [7, 8, 9, 9, 9]]
    with pytest.raises(UserError, match="not consecutive"):
        manifest_neighbours(["a", "b", "a"], 1)


def test_dataset_gives_each_condition_its_neighbours(tmp_path: Path) -> None:
    """K = 1: conditions (3, S, S) whose middle channel is the K = 0 item; the target stays one slice."""
    root = save_tiny_slices(tmp_path, count=5)  # case000: rows 0-2, case001: rows 3-4
    plain = SliceDataset(root, "test", TINY_CONTRASTS, 64)
    context = SliceDataset(root, "test", TINY_CONTRASTS, 64, context_slices=1)
    for row, expected in enumerate([[0, 0, 1], [0, 1, 2], [1, 2, 2], [3, 3, 4], [3, 4, 4]]):
        item = context[row]
        assert [tuple(x.shape) for x in item] == [(3, 64, 64)] * 3 + [(1, 64, 64)]
        for c in range(3):
            torch.testing.assert_close(item[c], torch.cat([plain[k][c] for k in expected]), rtol=0, atol=0)
        torch.testing.assert_close(centre_slice(item[0][None])[0], plain[row][0], rtol=0, atol=0)
        torch.testing.assert_close(item[3], plain[row][3], rtol=0, atol=0)


def test_context_without_a_manifest_is_refused(tmp_path: Path) -> None:
    """Without manifest.csv the cases cannot be told apart: one line naming the file, not mixed neighbours."""
    root = save_tiny_slices(tmp_path)
    (root / "test" / "manifest.csv").unlink()
    assert len(SliceDataset(root, "test", TINY_CONTRASTS, 64)) == 5
    with pytest.raises(UserError, match=r"--context_slices 2 needs .*manifest\.csv"):
        SliceDataset(root, "test", TINY_CONTRASTS, 64, context_slices=2)


def test_volume_conditions_take_the_volume_neighbours() -> None:
    """In a volume the neighbours are its adjacent axial slices (clamped at its ends); K = 0 is the slice alone."""
    volume = np.random.default_rng(0).random((40, 36, 6)) + 0.1
    chosen = [0, 3, 5]
    alone = volume_to_model_slices(volume, range(6), 64)[:, 0]
    torch.testing.assert_close(condition_slices(volume, chosen, 64), alone[chosen][:, None], rtol=0, atol=0)
    stacked = condition_slices(volume, chosen, 64, context_slices=1)
    torch.testing.assert_close(stacked, alone[torch.tensor([[0, 0, 1], [2, 3, 4], [4, 5, 5]])], rtol=0, atol=0)


def test_only_the_condition_encoders_change_shape() -> None:
    """K = 1 widens the first conv of the six condition encoders to 3 input channels; every other weight keeps the
    original's shape (K = 0 is the original's state_dict, checked against the reference keys elsewhere)."""
    parser = synthesis_parser()
    shapes = {}
    for k in (0, 1):
        gens = build_generators(parser.parse_args([*TINY_MODEL_ARGS, "--context_slices", str(k)]))
        shapes[k] = {(i, name): tuple(p.shape) for i, g in enumerate(gens) for name, p in g.state_dict().items()}
    assert shapes[0].keys() == shapes[1].keys()
    changed = sorted(key for key in shapes[0] if shapes[0][key] != shapes[1][key])
    assert changed == [(0, f"all_modules.{m}.conv1.weight") for m in (3, 4, 5)] + \
        [(1, f"all_modules.{m}.conv1.weight") for m in (4, 5, 6)]
    assert all(shapes[1][key][1] == 3 * shapes[0][key][1] for key in changed)


def _write_volume_case(folder: Path) -> list[Path]:
    """Three conditioning NIfTI volumes (48 x 40 x 7) with a brain in the middle slices."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    x, y, z = np.meshgrid(np.arange(48), np.arange(40), np.arange(7), indexing="ij")
    brain = ((x - 24) / 18) ** 2 + ((y - 20) / 15) ** 2 + ((z - 3) / 2.5) ** 2 < 1
    paths = []
    for name in TINY_CONTRASTS[:3]:
        paths.append(folder / f"case_{name.lower()}.nii.gz")
        nib.save(nib.Nifti1Image((rng.random(brain.shape) * brain).astype(np.float32), np.eye(4)), paths[-1])
    return paths


def test_a_context_model_trains_and_synthesises_slices_and_volumes(tmp_path: Path) -> None:
    """train.py --context_slices 1 records K in config.json; test.py takes it from there for slices and NIfTI."""
    data = save_tiny_slices(tmp_path / "data", count=6)
    for split in ("train", "val"):
        shutil.copytree(data / "test", data / split)
    results = tmp_path / "results"
    common = ["--input_path", str(data), "--output_path", str(results), "--exp", "ctx", "--device", "cpu"]
    train_cli([*TINY_MODEL_ARGS, *common, "--context_slices", "1", "--num_epoch", "1", "--batch_size", "2",
               "--num_workers", "0"])
    config = json.loads((results / "ctx" / "config.json").read_text())
    assert config["context_slices"] == 1
    slices = synthesis_cli([*common, "--limit", "3"])
    assert np.load(slices / "synth.npy").shape == (3, 60, 52)
    cond = _write_volume_case(tmp_path / "case")
    out = tmp_path / "synth.nii.gz"
    synthesis_cli([*common, "--cond1", str(cond[0]), "--cond2", str(cond[1]), "--cond3", str(cond[2]),
                   "--out_nifti", str(out)])
    volume = nib.load(out).get_fdata()
    assert volume.shape == (48, 40, 7) and np.isfinite(volume).all() and volume.max() > 0
