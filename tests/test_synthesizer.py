"""The Python entry point: Synthesizer.load once, infer_single from paths or arrays, same numbers as test.py --nifti."""
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import save_tiny_experiment, synthesis_cli
from test_nifti import write_case

from utils.core.errors import UserError
from utils.infer.synthesizer import Synthesizer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny experiment, one NIfTI case and the synthesiser loaded from the folder."""
    root = tmp_path_factory.mktemp("synthesizer")
    save_tiny_experiment(root / "results" / "exp")
    paths = write_case(root / "case")
    return {"root": root, "paths": paths, "synth": Synthesizer.load(root / "results" / "exp", device="cpu")}


def test_contrast_order_comes_from_config(setup: dict) -> None:
    """inputs/target are config.json's order, so a user needs to know only the contrast names."""
    assert setup["synth"].inputs == ["FLAIR", "T2", "T1"] and setup["synth"].target == "T1ce"


def test_paths_give_what_test_py_nifti_writes(setup: dict) -> None:
    """infer_single(output_file=...) with the same seed writes the volume test.py --nifti writes, voxel for voxel."""
    root, paths = setup["root"], setup["paths"]
    out_api, out_cli = root / "api" / "t1ce.nii.gz", root / "cli" / "t1ce.nii.gz"
    case = setup["synth"].infer_single(output_file=out_api, seed=1024, flair=paths["flair"], t2=paths["t2"],
                                       t1=paths["t1"])
    synthesis_cli(["--nifti", "--cond1", str(paths["flair"]), "--cond2", str(paths["t2"]), "--cond3",
                   str(paths["t1"]), "--out", str(out_cli), "--exp", "exp", "--output_path", str(root / "results"),
                   "--batch_size", "4", "--device", "cpu"])
    written, expected = nib.load(out_api), nib.load(out_cli)
    assert np.array_equal(written.get_fdata(), expected.get_fdata())
    assert np.allclose(written.affine, expected.affine)
    assert np.array_equal(case.maps["synth"], written.get_fdata().astype(np.float32))


def test_arrays_give_the_same_volume_as_files(setup: dict) -> None:
    """Arrays in (any keyword case) give the volume the files give; nothing is written without output_file."""
    paths = setup["paths"]
    arrays = {name.upper(): nib.load(paths[name]).get_fdata() for name in ("flair", "t2", "t1")}
    from_files = setup["synth"].infer_single(seed=3, flair=paths["flair"], t2=paths["t2"], t1=paths["t1"])
    from_arrays = setup["synth"].infer_single(seed=3, **arrays)
    assert np.array_equal(from_files.maps["synth"], from_arrays.maps["synth"])
    assert np.allclose(from_arrays.reference.affine, np.eye(4))


def test_seed_makes_cases_independent_of_order(setup: dict) -> None:
    """With a seed, a case's result does not depend on what was sampled before it."""
    paths = setup["paths"]
    images = {"flair": paths["flair"], "t2": paths["t2"], "t1": paths["t1"]}
    first = setup["synth"].infer_single(seed=5, slices=[4], **images)
    setup["synth"].infer_single(slices=[5], **images)
    again = setup["synth"].infer_single(seed=5, slices=[4], **images)
    assert np.array_equal(first.maps["synth"], again.maps["synth"])


def test_uncertainty_maps_are_written_beside_the_volume(setup: dict, tmp_path: Path) -> None:
    """uncertainty=True returns the disagreement map and writes it as <name>_disagreement.nii.gz."""
    paths = setup["paths"]
    case = setup["synth"].infer_single(output_file=tmp_path / "x.nii.gz", uncertainty=True, slices=[4],
                                       flair=paths["flair"], t2=paths["t2"], t1=paths["t1"])
    assert "disagreement" in case.maps and (tmp_path / "x_disagreement.nii.gz").is_file()
    assert case.maps["disagreement"][:, :, 4].max() > 0


def test_wrong_inputs_are_one_line_errors(setup: dict) -> None:
    """Missing or unknown contrast names, or a 2-D array, are refused with the names the experiment takes."""
    paths = setup["paths"]
    with pytest.raises(UserError, match="takes flair, t2, t1"):
        setup["synth"].infer_single(flair=paths["flair"], t2=paths["t2"])
    with pytest.raises(UserError, match="3-D"):
        setup["synth"].infer_single(flair=np.ones((4, 4)), t2=paths["t2"], t1=paths["t1"])
