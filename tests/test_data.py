"""The slice loader: the original geometry and scaling, every README preset, --contrasts, masks, bad arrays."""
import argparse
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import dataset_brats
import dataset_isles
from utils.core.errors import UserError
from utils.core.options import add_data_args, add_model_args
from utils.data.contrasts import contrasts_from_args, resolve_contrasts
from utils.data.geometry import from_model_space, to_model_space
from utils.data.slices import SliceDataset, check_dataset, dataset_from_args

N, H, W, S = 6, 28, 24, 32
# File names as a user might have them: the loader must match them whatever the capitalisation.
FILES = {"T1": "t1.npy", "T1ce": "T1CE.npy", "T2": "T2.npy", "FLAIR": "flair.npy", "DWI": "Dwi.npy"}
# The README's task table, written out here rather than read from the code under test.
README_ORDERS = [
    ("brats", "T1ce", ["FLAIR", "T2", "T1", "T1ce"]),
    ("brats", "FLAIR", ["T1ce", "T1", "T2", "FLAIR"]),
    ("brats", "T2", ["T1ce", "T1", "FLAIR", "T2"]),
    ("brats", "T1", ["FLAIR", "T1ce", "T2", "T1"]),
    ("isles", "FLAIR", ["T1", "T2", "DWI", "FLAIR"]),
    ("isles", "T1", ["T2", "DWI", "FLAIR", "T1"]),
]
MODULES = {"brats": dataset_brats, "isles": dataset_isles}


def _original_load(data: np.ndarray, size: int) -> np.ndarray:
    """The authors' LoadDataSet arithmetic for a 3-D array (valid for even size differences)."""
    data = np.expand_dims(np.transpose(data, (0, 2, 1)), axis=1).astype(np.float32)
    pad_x, pad_y = int((size - data.shape[2]) / 2), int((size - data.shape[3]) / 2)
    data = np.pad(data, ((0, 0), (0, 0), (pad_x, pad_x), (pad_y, pad_y)))
    return (data - 0.5) / 0.5


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    """Distinct [0, 1] slices per contrast, a lesion square bright in FLAIR, and masks."""
    rng = np.random.default_rng(0)
    out = {c: rng.uniform(0.05, 0.7, (N, H, W)).astype(np.float32) for c in FILES}
    lesion = np.zeros((N, H, W), np.uint8)
    lesion[:, 3:9, 14:20] = 1
    out["FLAIR"][lesion > 0] = 0.9
    brain = np.ones((N, H, W), np.uint8)
    brain[:, :2] = 0
    for c in FILES:
        out[c][brain == 0] = 0.0
    out["lesion_mask"], out["brain_mask"] = lesion, brain
    return out


def _write_split(folder: Path, arrays: dict[str, np.ndarray], manifest: bool = True) -> None:
    """One split folder as pre_process.py writes it (with user-style file names)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        np.save(folder / FILES.get(name, f"{name}.npy"), arr)
    if manifest:
        rows = "".join(f"{i},case{i // 3},{40 + i % 3}\n" for i in range(N))
        (folder / "manifest.csv").write_text("index,case_id,slice_index\n" + rows)


@pytest.fixture(scope="module")
def root(tmp_path_factory, arrays) -> Path:
    """A preprocessed-data folder with train and test splits."""
    path = tmp_path_factory.mktemp("data")
    for split in ("train", "test"):
        _write_split(path / split, arrays)
    return path


# ---------------------------------------------------------------------------------------------- geometry

def test_model_space_matches_the_original_loader() -> None:
    """Transposition H<->W, zero padding on both sides, (x - 0.5) / 0.5, for even size differences."""
    data = np.random.default_rng(1).uniform(0, 1, (3, H, W)).astype(np.float32)
    ours = to_model_space(data, S)
    assert ours.dtype == torch.float32 and ours.shape == (3, 1, S, S)
    np.testing.assert_array_equal(ours.numpy(), _original_load(data, S))


def test_odd_sizes_are_padded_correctly() -> None:
    """27 x 25 slices in a 32 grid: the original padded to 31 x 29; ours centres them (extra pixel after)."""
    data = np.random.default_rng(2).uniform(0, 1, (2, 27, 25)).astype(np.float32)
    out = to_model_space(data, S).numpy()[:, 0]
    assert out.shape == (2, S, S)
    # After the transposition rows follow the original W (25: 3 before, 4 after) and columns H (27: 2 and 3).
    np.testing.assert_array_equal(out[:, 3:28, 2:29], (np.transpose(data, (0, 2, 1)) - 0.5) / 0.5)
    border = np.ones((S, S), bool)
    border[3:28, 2:29] = False
    assert np.all(out[:, border] == -1.0)


def test_slices_larger_than_image_size_are_refused() -> None:
    """A clear error instead of the original's negative padding crash."""
    with pytest.raises(UserError, match="larger than --image_size 32"):
        to_model_space(np.zeros((1, 40, 30), np.float32), S)


def test_from_model_space_inverts() -> None:
    """Back to (N, H, W) in [0, 1] for any size; values outside [-1, 1] are clipped."""
    data = np.random.default_rng(3).uniform(0, 1, (2, 27, 25)).astype(np.float32)
    np.testing.assert_allclose(from_model_space(to_model_space(data, S), (27, 25)), data, atol=1e-7)
    assert from_model_space(torch.full((1, 1, S, S), 3.0), (27, 25)).max() == 1.0


# -------------------------------------------------------------------------------------------- contrasts

@pytest.mark.parametrize("dataset, target, order", README_ORDERS)
def test_presets_are_the_readme_orders(dataset: str, target: str, order: list[str]) -> None:
    """--dataset/--target give the README's [cond1, cond2, cond3, target], in any capitalisation."""
    assert resolve_contrasts(dataset, target) == order
    assert resolve_contrasts(dataset, target.lower()) == order


def test_default_targets_and_aliases() -> None:
    """BraTS defaults to T1ce and ISLES to FLAIR (the original files); t1c and T2-FLAIR are understood."""
    assert resolve_contrasts("brats") == ["FLAIR", "T2", "T1", "T1ce"]
    assert resolve_contrasts("isles") == ["T1", "T2", "DWI", "FLAIR"]
    assert resolve_contrasts("brats", "t1c")[3] == "T1ce"
    assert resolve_contrasts("BraTS", "T2-FLAIR")[3] == "FLAIR"


def test_contrasts_option_and_its_errors() -> None:
    """--contrasts takes any four names; duplicates, a disagreeing --target or a wrong count are refused."""
    assert resolve_contrasts(None, None, ["PD", "T2", "T1", "MRA"]) == ["PD", "T2", "T1", "MRA"]
    assert resolve_contrasts("brats", "mra", ["PD", "T2", "T1", "MRA"])[3] == "MRA"
    with pytest.raises(UserError, match="twice"):
        resolve_contrasts(None, None, ["T1", "t1", "T2", "FLAIR"])
    with pytest.raises(UserError, match="disagrees"):
        resolve_contrasts("brats", "T2", ["T1", "T1ce", "FLAIR", "PD"])
    with pytest.raises(UserError, match="four names"):
        resolve_contrasts(None, None, ["T1", "T2", "FLAIR"])


def test_unknown_target_or_dataset() -> None:
    """A target the dataset has no preset for, or an unknown dataset, is a one-line error naming the choices."""
    with pytest.raises(UserError, match=r"--target DWI is not one of the BraTS tasks \(T1ce, FLAIR, T2, T1\)"):
        resolve_contrasts("brats", "DWI")
    with pytest.raises(UserError, match="unknown --dataset 'oasis'"):
        resolve_contrasts("oasis", "T1")


# ---------------------------------------------------------------------------------------------- dataset

@pytest.mark.parametrize("dataset, target, order", README_ORDERS)
def test_every_preset_loads_its_contrasts_in_order(root: Path, arrays, dataset: str, target: str,
                                                   order: list[str]) -> None:
    """CreateDatasetSynthesis(phase, input_path/, target=...) yields the right files in the right slots."""
    ds = MODULES[dataset].CreateDatasetSynthesis("train", f"{root}/", target=target, image_size=S)
    assert len(ds) == N
    for i in (0, N - 1):
        item = ds[i]
        assert len(item) == 4
        for slot, contrast in enumerate(order):
            assert item[slot].shape == (1, S, S) and item[slot].dtype == torch.float32
            np.testing.assert_array_equal(item[slot].numpy(), to_model_space(arrays[contrast][i], S)[0].numpy())


def test_input_path_without_trailing_slash(root: Path) -> None:
    """`--input_path data/BRATS` works as well as `data/BRATS/` (the original needed the slash)."""
    with_slash = dataset_brats.CreateDatasetSynthesis("test", f"{root}/", image_size=S)[2]
    without = dataset_brats.CreateDatasetSynthesis("test", str(root), image_size=S)[2]
    assert all(torch.equal(a, b) for a, b in zip(with_slash, without))


def _parse(argv: list[str]) -> argparse.Namespace:
    """The shared data and model options, as train.py and test.py parse them."""
    parser = argparse.ArgumentParser()
    add_data_args(parser)
    add_model_args(parser)
    return parser.parse_args(argv)


def test_command_line_selects_the_task(root: Path, arrays) -> None:
    """`--contrasts` with any names and `--dataset isles --target T1` both come from the command line."""
    args = _parse(["--input_path", str(root), "--contrasts", "dwi", "T1", "t2", "FLAIR", "--image_size", str(S)])
    ds = dataset_from_args(args, "test")
    for slot, contrast in enumerate(["DWI", "T1", "T2", "FLAIR"]):
        np.testing.assert_array_equal(ds[1][slot].numpy(), to_model_space(arrays[contrast][1], S)[0].numpy())
    args = _parse(["--input_path", str(root), "--dataset", "isles", "--target", "T1", "--image_size", str(S)])
    assert contrasts_from_args(args) == ["T2", "DWI", "FLAIR", "T1"]
    assert dataset_from_args(args, "train").contrasts == ["T2", "DWI", "FLAIR", "T1"]


def test_masks_share_the_image_geometry(root: Path) -> None:
    """with_masks adds brain and lesion masks (0/1, padded with 0) exactly where the images show them."""
    ds = dataset_brats.CreateDatasetSynthesis("train", root, target="T1ce", image_size=S, with_masks=True)
    item = ds[2]
    assert len(item) == 6
    flair, brain, lesion = item[0][0], item[4][0], item[5][0]
    assert set(torch.unique(lesion).tolist()) == {0.0, 1.0}
    assert torch.equal(lesion > 0, torch.isclose(flair, torch.tensor((0.9 - 0.5) / 0.5)))
    assert torch.equal(brain > 0, flair > -1)
    assert ds.manifest[2] == {"index": 2, "case_id": "case0", "slice_index": 42}


def test_missing_lesion_mask_gives_zeros(tmp_path: Path, arrays) -> None:
    """Data without labels (no lesion_mask.npy): the lesion mask is empty and has_lesion_mask says so."""
    _write_split(tmp_path / "test", {k: v for k, v in arrays.items() if k != "lesion_mask"})
    ds = SliceDataset(tmp_path, "test", ["T1", "T2", "DWI", "FLAIR"], image_size=S, with_masks=True)
    assert not ds.has_lesion_mask and ds[0][5].sum() == 0 and ds[0][4].sum() > 0


def test_pickles_for_workers_and_batches(root: Path) -> None:
    """The dataset survives pickling (spawned loader workers) and batches to (B, 1, S, S)."""
    ds = dataset_isles.CreateDatasetSynthesis("test", root, image_size=S)
    ds[0]  # opens the memory maps, which pickling must leave out
    clone = pickle.loads(pickle.dumps(ds))
    assert all(torch.equal(a, b) for a, b in zip(ds[3], clone[3]))
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert [b.shape for b in batch] == [(4, 1, S, S)] * 4


def test_load_dataset_keeps_the_original_name(root: Path, arrays) -> None:
    """LoadDataSet(path) returns a whole file in model space, as the original did."""
    out = dataset_brats.LoadDataSet(root / "train" / "T2.npy", image_size=S)
    np.testing.assert_array_equal(out, to_model_space(arrays["T2"], S).numpy())


# ------------------------------------------------------------------------------------------- bad arrays

def test_bad_different_slice_counts(tmp_path: Path, arrays) -> None:
    """.npy files of one split with different slice counts (e.g. one contrast re-made from fewer cases)."""
    _write_split(tmp_path / "train", arrays)
    np.save(tmp_path / "train" / "T2.npy", arrays["T2"][:-1])
    with pytest.raises(UserError, match=r"train: the arrays disagree \(.*T2.npy 5x28x24.*re-run pre_process.py"):
        check_dataset(tmp_path, ["train"], ["FLAIR", "T2", "T1", "T1ce"], S)


def test_bad_missing_contrast_file_lists_what_is_there(tmp_path: Path, arrays) -> None:
    """A contrast without a file: the message lists the files present."""
    _write_split(tmp_path / "val", {k: v for k, v in arrays.items() if k != "T1ce"})
    with pytest.raises(UserError, match=r"has no T1ce.npy \(present: .*flair.npy"):
        dataset_brats.CreateDatasetSynthesis("val", tmp_path, image_size=S)
    with pytest.raises(UserError, match="test does not exist; run pre_process.py"):
        dataset_brats.CreateDatasetSynthesis("test", tmp_path, image_size=S)


def test_bad_values_outside_unit_range(tmp_path: Path, arrays) -> None:
    """z-scored data would be silently distorted by the [-1, 1] mapping: refused."""
    _write_split(tmp_path / "test", arrays)
    np.save(tmp_path / "test" / FILES["T1"], (arrays["T1"] - 0.3) / 0.1)
    with pytest.raises(UserError, match=r"t1.npy has values in \[-3, 4\], expected \[0, 1\]"):
        check_dataset(tmp_path, ["test"], ["T1"], S)


def test_bad_two_spellings_of_one_contrast(tmp_path: Path, arrays) -> None:
    """t1.npy next to T1.npy is ambiguous (on case-sensitive file systems)."""
    _write_split(tmp_path / "test", arrays)
    np.save(tmp_path / "test" / "T1.npy", arrays["T1"])
    with pytest.raises(UserError, match="the same contrast twice"):
        check_dataset(tmp_path, ["test"], ["T1"], S)


def test_bad_manifest_length(tmp_path: Path, arrays) -> None:
    """A manifest that does not describe the arrays' rows."""
    _write_split(tmp_path / "test", arrays)
    with open(tmp_path / "test" / "manifest.csv", "a") as fh:
        fh.write("6,case2,40\n")
    with pytest.raises(UserError, match="lists 7 slices but the arrays hold 6"):
        SliceDataset(tmp_path, "test", ["T1", "T2", "DWI", "FLAIR"], image_size=S)


@pytest.mark.parametrize("how", ["empty", "truncated", "not_npy"])
def test_bad_corrupt_array(tmp_path: Path, arrays, how: str) -> None:
    """A zero-byte, cut-off or non-.npy contrast file (as train.py and test.py read splits): one line naming it."""
    _write_split(tmp_path / "test", arrays)
    path = tmp_path / "test" / FILES["T2"]
    raw = path.read_bytes()
    path.write_bytes({"empty": b"", "truncated": raw[: len(raw) // 2], "not_npy": b"T2 slices\n"}[how])
    with pytest.raises(UserError, match=rf"{path.name} is not a readable .npy array .*re-run pre_process.py") as err:
        check_dataset(tmp_path, ["test"], ["T2"], S)
    assert "\n" not in str(err.value)
