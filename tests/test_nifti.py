"""Whole-volume NIfTI mode: geometry and header round trip, brain-only output, case folders, errors."""
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import NIFTI_DAMAGE, damage_nifti, save_tiny_experiment, synthesis_cli

from utils.core.errors import UserError, run_cli
from utils.data.layouts import case_name, find_case_files
from utils.data.preprocessing import normalize_volume
from utils.infer.volumes import model_slices_to_volume, resolution_round_trip, volume_to_model_slices

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (50, 44, 10)
BRAIN_SLICES = range(3, 8)
HEADER_FIELDS = ("dim", "pixdim", "qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x",
                 "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z", "xyzt_units", "descrip", "intent_code")




def _affine() -> np.ndarray:
    """An oblique, anisotropic, shifted voxel-to-world matrix (so a lost affine is noticed)."""
    angle = np.deg2rad(12)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([1.2, 1.1, 2.5])
    affine[:3, 3] = [-30.5, 12.25, -7.0]
    return affine


def brain_region() -> np.ndarray:
    """An ellipsoid of 'brain' that spans only BRAIN_SLICES."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    return (((x - 25) / 18) ** 2 + ((y - 21) / 15) ** 2 + ((z - 5) / 2.6) ** 2) < 1


def write_case(folder: Path, case: str = "BraTS19_TEST_001") -> dict[str, Path]:
    """Four int16 volumes with scaling, a real affine and header fields, BraTS naming; return contrast -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    brain = brain_region()
    paths = {}
    for i, name in enumerate(("flair", "t2", "t1", "t1ce")):
        data = ((rng.random(SHAPE) * 800 + 200 * (i + 1)) * brain).astype(np.int16)
        image = nib.Nifti1Image(data, _affine())
        image.header.set_qform(_affine(), code=1)
        image.header.set_sform(_affine(), code=2)
        image.header["descrip"] = b"phantom for the NIfTI test"
        image.header.set_xyzt_units("mm", "sec")
        image.header.set_slope_inter(0.5, 0.0)
        paths[name] = folder / f"{case}_{name}.nii.gz"
        nib.save(image, paths[name])
    return paths


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One whole-volume synthesis with --cond1/2/3, --out and --save_uncertainty."""
    root = tmp_path_factory.mktemp("nifti")
    save_tiny_experiment(root / "results" / "exp_brats")
    paths = write_case(root / "case")
    out = root / "synth" / "case_t1ce.nii.gz"
    synthesis_cli(["--nifti", "--cond1", str(paths["flair"]), "--cond2", str(paths["t2"]), "--cond3",
                      str(paths["t1"]), "--out", str(out), "--exp", "exp_brats", "--output_path",
                      str(root / "results"), "--batch_size", "3", "--save_uncertainty"])
    return {"root": root, "paths": paths, "out": out}


def test_output_keeps_shape_affine_and_header(volume_run: dict) -> None:
    """The synthesised volume has the input's shape, affine and header; only the data type becomes float32."""
    reference = nib.load(volume_run["paths"]["flair"])
    output = nib.load(volume_run["out"])
    assert output.shape == reference.shape
    np.testing.assert_allclose(output.affine, reference.affine, atol=1e-6)
    for field in HEADER_FIELDS:
        np.testing.assert_array_equal(output.header[field], reference.header[field], err_msg=field)
    assert output.get_data_dtype() == np.float32


def test_output_is_brain_only_in_unit_range(volume_run: dict) -> None:
    """Values in [0, 1], zero outside the brain and on slices without brain, and a real synthesis inside it."""
    data = nib.load(volume_run["out"]).get_fdata()
    brain = brain_region()
    assert data.min() >= 0 and data.max() <= 1
    assert np.all(data[~brain] == 0)
    assert np.count_nonzero(data[brain]) > 0.9 * brain.sum()
    assert data[brain].std() > 1e-3


def test_uncertainty_volumes_beside_the_output(volume_run: dict) -> None:
    """--save_uncertainty writes <out>_disagreement and <out>_critic with the same geometry."""
    for tag in ("disagreement", "critic"):
        path = volume_run["out"].with_name(f"case_t1ce_{tag}.nii.gz")
        image = nib.load(path)
        assert image.shape == SHAPE
        np.testing.assert_allclose(image.affine, _affine(), atol=1e-6)
        assert np.all(image.get_fdata()[~brain_region()] == 0)
    assert not list(volume_run["out"].parent.glob(".*")), "temporary files left behind"


def test_case_folder_and_default_output(volume_run: dict) -> None:
    """--case finds <case>_<contrast>.nii.gz files and writes EXP/generated_volumes/<case>_<target>.nii."""
    root = volume_run["root"]
    synthesis_cli(["--case", str(root / "case"), "--exp", "exp_brats", "--output_path", str(root / "results"),
                      "--batch_size", "5", "--seed", "3"])
    out = root / "results" / "exp_brats" / "generated_volumes" / "case_t1ce.nii.gz"
    assert nib.load(out).shape == SHAPE


def test_volumes_are_normalised_as_the_training_data_was(volume_run: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """An experiment whose config.json records --normalize median data prepares every condition with median."""
    import json

    import utils.infer.volumes as nifti

    root = volume_run["root"]
    exp_dir = root / "results" / "exp_median"
    save_tiny_experiment(exp_dir)
    config = json.loads((exp_dir / "config.json").read_text())
    (exp_dir / "config.json").write_text(json.dumps({**config, "normalize": "median"}))
    methods = []

    def recording(vol, name="volume", dtype=np.float32, method="percentile"):
        methods.append(method)
        return normalize_volume(vol, name, dtype, method)

    monkeypatch.setattr(nifti, "normalize_volume", recording)
    outputs = {}
    for exp in ("exp_brats", "exp_median"):
        out = root / f"{exp}.nii.gz"
        synthesis_cli(["--case", str(root / "case"), "--exp", exp, "--output_path", str(root / "results"),
                          "--out", str(out), "--seed", "1"])
        outputs[exp] = nib.load(out).get_fdata()
    assert methods == ["percentile"] * 3 + ["median"] * 3
    assert np.abs(outputs["exp_brats"] - outputs["exp_median"]).max() > 1e-3


def test_find_case_files_is_case_insensitive_and_strict(tmp_path: Path) -> None:
    """Contrast names match any capitalisation; a missing contrast is a one-line error."""
    for name in ("Case_FLAIR.nii.gz", "Case_t1.nii", "Case_T1ce.nii.gz", "Case_seg.nii.gz"):
        (tmp_path / name).touch()
    found = find_case_files(tmp_path, ["FLAIR", "T1", "T1ce"])
    assert {k: v.name for k, v in found.items()} == {"FLAIR": "Case_FLAIR.nii.gz", "T1": "Case_t1.nii",
                                                     "T1ce": "Case_T1ce.nii.gz"}
    with pytest.raises(UserError, match="no file for contrast T2"):
        find_case_files(tmp_path, ["T2"])
    assert case_name(found["T1ce"]) == "Case" and case_name(Path("brain.nii.gz")) == "brain"


def test_slice_geometry_round_trip() -> None:
    """Preprocessing to model space and back returns the normalised volume (exact without resizing)."""
    rng = np.random.default_rng(0)
    volume = rng.random((64, 64, 4)) * 100
    slices = [0, 2, 3]
    back = model_slices_to_volume(volume_to_model_slices(volume, slices, 64), slices, volume.shape, 64)
    expected = normalize_volume(volume)
    np.testing.assert_allclose(back[:, :, slices], expected[:, :, slices], atol=1e-6)
    assert np.all(back[:, :, 1] == 0)
    smooth = np.fromfunction(lambda x, y, z: np.sin(x / 9) + np.cos(y / 7) + 3, (60, 52, 2))
    back = model_slices_to_volume(volume_to_model_slices(smooth, [0, 1], 64), [0, 1], smooth.shape, 64)
    assert np.abs(back - normalize_volume(smooth)).mean() < 0.02


def test_resolution_round_trip_keeps_what_the_model_size_can_hold() -> None:
    """The resolution ceiling: every brain slice and nothing else comes back; exact at the volume's own size, smooth
    structure survives a smaller size and one-voxel detail does not."""
    rng = np.random.default_rng(1)
    volume = rng.random((64, 64, 5)) * 100
    brain = np.zeros(volume.shape, bool)
    brain[8:56, 8:56, 1:4] = True
    same = resolution_round_trip(volume, brain, 64)
    np.testing.assert_allclose(same, normalize_volume(volume) * brain, atol=1e-6)
    smooth = np.fromfunction(lambda x, y, z: np.sin(x / 9) + np.cos(y / 7) + 3, volume.shape)
    small = resolution_round_trip(smooth, brain, 16)
    assert np.all(small[~brain] == 0)
    inner = np.zeros_like(brain)
    inner[16:48, 16:48, 1:4] = True  # away from the brain's edge, which the resize blends with background
    assert np.abs(small - normalize_volume(smooth))[inner].mean() < 0.03
    checker = np.indices(volume.shape).sum(0) % 2 * 50.0 + 50
    assert np.abs(resolution_round_trip(checker, brain, 16) - normalize_volume(checker))[inner].mean() > 0.15


def test_input_errors_are_one_line(volume_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Volumes of different shapes, or too few conditions, exit with one `error:` line."""
    paths = volume_run["paths"]
    small = nib.Nifti1Image(np.ones((10, 10, 10), np.float32), np.eye(4))
    nib.save(small, tmp_path / "small.nii.gz")
    common = ["--exp", "exp_brats", "--output_path", str(volume_run["root"] / "results"), "--out",
              str(tmp_path / "x.nii.gz")]
    for argv in (["--cond1", str(paths["flair"]), "--cond2", str(paths["t2"]), "--cond3",
                  str(tmp_path / "small.nii.gz")],
                 ["--nifti", "--cond1", str(paths["flair"])]):
        assert run_cli(synthesis_cli, argv + common) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error:")
    assert not (tmp_path / "x.nii.gz").exists()


@pytest.mark.parametrize("how", NIFTI_DAMAGE)
def test_corrupt_condition_is_one_line(volume_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture,
                                       how: str) -> None:
    """A cut-off or empty conditioning file, or one whose header affine is NaN or all zero (the output would copy
    it), exits with one `error:` line naming the file and writes no output volume."""
    paths = volume_run["paths"]
    damaged = tmp_path / paths["t1"].name
    damaged.write_bytes(paths["t1"].read_bytes())
    damage_nifti(damaged, how)
    argv = ["--cond1", str(paths["flair"]), "--cond2", str(paths["t2"]), "--cond3", str(damaged), "--exp",
            "exp_brats", "--output_path", str(volume_run["root"] / "results"), "--out", str(tmp_path / "x.nii.gz")]
    assert run_cli(synthesis_cli, argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: --cond3") and str(damaged) in err
    assert not (tmp_path / "x.nii.gz").exists()


def _write_stack(folder: Path, names: tuple[str, ...] = ("flair", "t2", "t1")) -> list[Path]:
    """Conditioning volumes whose brain slices 2..7 all hold the same image (a column of identical slices)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(4)
    x, y = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    disc = ((x - 25) / 18) ** 2 + ((y - 21) / 15) ** 2 < 1
    paths = []
    for i, name in enumerate(names):
        image = (rng.random(SHAPE[:2]) * 500 + 300 * (i + 1)) * disc
        volume = np.zeros(SHAPE, np.float32)
        volume[:, :, 2:8] = image[:, :, None]
        paths.append(folder / f"stack_{name}.nii.gz")
        nib.save(nib.Nifti1Image(volume, np.eye(4)), paths[-1])
    return paths


def test_shared_noise_makes_identical_slices_come_out_identical(volume_run: dict, tmp_path: Path) -> None:
    """--shared_noise: one draw of all the sampler's noise serves every slice, across batches, so identical input
    slices give identical outputs; without it (the original) fresh noise makes them differ."""
    paths = _write_stack(tmp_path / "stack")
    outputs = {}
    for extra in ([], ["--shared_noise"]):
        out = tmp_path / f"out{len(extra)}.nii.gz"
        synthesis_cli(["--nifti", *(a for i, p in enumerate(paths) for a in (f"--cond{i + 1}", str(p))), "--out",
                       str(out), "--exp", "exp_brats", "--output_path", str(volume_run["root"] / "results"),
                       "--batch_size", "4", *extra])
        data = nib.load(out).get_fdata()[:, :, 2:8]
        outputs[bool(extra)] = np.abs(data - data[:, :, :1]).max()
    assert outputs[True] < 1e-5 < 1e-2 < outputs[False]
    with pytest.raises(UserError, match="--shared_noise shares the noise among the slices of one volume"):
        synthesis_cli(["--shared_noise", "--exp", "exp_brats", "--output_path", str(volume_run["root"] / "results")])


def test_intensity_reference_steadies_the_slice_brightness(volume_run: dict, tmp_path: Path) -> None:
    """--intensity_reference inputs: with the same seed, the synthesis's per-slice brain mean over the inputs' is
    steadier than without it (same brain, same slices); the test slices refuse the option."""
    from utils.data.preprocessing import normalize_volume
    from utils.eval.coherence import slice_means

    paths = volume_run["paths"]
    conds = ["--cond1", str(paths["flair"]), "--cond2", str(paths["t2"]), "--cond3", str(paths["t1"])]
    inputs = np.mean([normalize_volume(nib.load(paths[c]).get_fdata()) for c in ("flair", "t2", "t1")], axis=0)
    spread = {}
    for choice in ("none", "inputs"):
        out = tmp_path / f"{choice}.nii.gz"
        synthesis_cli(["--nifti", *conds, "--out", str(out), "--exp", "exp_brats", "--output_path",
                       str(volume_run["root"] / "results"), "--batch_size", "8", "--intensity_reference", choice])
        synth = nib.load(out).get_fdata()
        brain = inputs > 0
        slices = [int(k) for k in np.flatnonzero(brain.any(axis=(0, 1)))]
        ratio = slice_means(synth, brain, slices) / slice_means(inputs, brain, slices)
        spread[choice] = float(np.std(ratio))
    assert spread["inputs"] < 0.5 * spread["none"]
    with pytest.raises(UserError, match="--intensity_reference steadies the brightness along one volume"):
        synthesis_cli(["--intensity_reference", "inputs", "--exp", "exp_brats", "--output_path",
                       str(volume_run["root"] / "results")])


def test_report_counts_slices_outside_the_trained_range(volume_run: dict, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    """test.py --nifti says how many brain slices lie outside config.json's train_slice_range, or that it is
    unknown for an experiment that records none."""
    import json

    root = volume_run["root"]
    paths = volume_run["paths"]
    conds = ["--cond1", str(paths["flair"]), "--cond2", str(paths["t2"]), "--cond3", str(paths["t1"])]
    exp_dir = root / "results" / "exp_ranged"
    save_tiny_experiment(exp_dir)
    config = json.loads((exp_dir / "config.json").read_text())
    (exp_dir / "config.json").write_text(json.dumps({**config, "train_slice_range": [4, 5]}))
    for exp, expected in (("exp_ranged", "3 of them outside the axial slices 4-5 the model was trained on"),
                          ("exp_brats", "the axial slices the model was trained on are not recorded")):
        synthesis_cli(["--nifti", *conds, "--out", str(tmp_path / f"{exp}.nii.gz"), "--exp", exp, "--output_path",
                       str(root / "results"), "--batch_size", "5"])
        assert expected in capsys.readouterr().out  # brain slices 3..7: 3, 6 and 7 lie outside 4-5
