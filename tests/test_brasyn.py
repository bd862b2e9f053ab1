"""brasyn.py on phantom cases in BraTS 2023 naming: drop, complete, score, every error, and docs/brasyn.md's whole
loop."""
import csv
import dataclasses
import json
import math
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import brasyn_cli, save_tiny_experiment, synthesis_cli
from skimage.metrics import structural_similarity
from test_nifti import HEADER_FIELDS
from test_readme import BRASYN_PAGE, BRASYN_SECTION, is_user_data, make_scratch_repo, readme_commands, run, section_text

from backbones.refiner import VolumeRefiner
from demo import make_sample_data as phantom
from utils.brasyn.cases import read_case_folder
from utils.brasyn.drop import DROPPED_NAME, balanced_choice
from utils.brasyn.refine import lesion_stack
from utils.brasyn.score import volume_metrics
from utils.core.artifacts import REFINER_CURVE, REFINER_FORMAT, REFINER_NAME, REFINER_RECORD
from utils.core.errors import UserError, run_cli
from utils.data.layouts import find_case_files
from utils.eval.coherence import COHERENCE_COLUMNS, RANGE_COLUMNS
from utils.infer.refiner import save_refiner

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE, DEPTH = 32, 10
CASES = [phantom.case_name(i, "brats2023") for i in (1, 2, 3, 4)]
SUFFIXES = {"T1": "t1n", "T1ce": "t1c", "T2": "t2w", "FLAIR": "t2f"}
ORDERS = {"t1ce": ("FLAIR", "T2", "T1", "T1ce"), "flair": ("T1ce", "T1", "T2", "FLAIR"),
          "dwi_flair": ("T1", "T2", "DWI", "FLAIR")}


def _name(case: str, contrast: str) -> str:
    """BraTS 2023 file name of a case's contrast (or `seg`)."""
    return f"{case}-{SUFFIXES.get(contrast, contrast)}.nii.gz"


def _csv(path: Path) -> list[dict]:
    """Rows of a CSV file."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _files(folder: Path) -> list[str]:
    """Names of the files in a folder, sorted."""
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four complete skull-stripped phantom cases named as BraTS 2023 names them."""
    root = tmp_path_factory.mktemp("raw") / "cases"
    for i, case in enumerate(CASES):
        phantom.make_case(case, root, size=SIZE, seed=i, depth=DEPTH, skull_strip=True, naming="brats2023")
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny experiments in train.py's layout: T1ce and FLAIR in the README orders, and FLAIR conditioned on DWI."""
    root = tmp_path_factory.mktemp("models")
    for name, order in ORDERS.items():
        save_tiny_experiment(root / name, seed=len(name), contrasts=order)
    return {name: root / name for name in ORDERS}


@pytest.fixture(scope="module")
def dropped(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The four cases with T1ce or FLAIR dropped (seed 3)."""
    root = tmp_path_factory.mktemp("dropped")
    rows = brasyn_cli(["drop", "--input", str(raw), "--out", str(root / "val"), "--truth", str(root / "truth"),
                        "--missing", "t1c", "FLAIR", "--seed", "3"])
    return {"root": root, "rows": rows, "val": root / "val", "truth": root / "truth"}


@pytest.fixture(scope="module")
def completed(dropped: dict, models: dict) -> dict:
    """The dropped cases completed with the T1ce and FLAIR experiments."""
    out = dropped["root"] / "completed"
    rows = brasyn_cli(["complete", "--input", str(dropped["val"]), "--models", f"T1ce={models['t1ce']}",
                        f"flair={models['flair']}", "--out", str(out), "--batch_size", "8", "--device", "cpu"])
    return {"out": out, "rows": rows}


# ---------------------------------------------------------------------------------------------------------- drop

def test_drop_keeps_three_images_and_the_truth_aside(raw: Path, dropped: dict) -> None:
    """Each case loses one of the candidates (equally often); the dropped file and the seg go to --truth, unchanged."""
    rows = dropped["rows"]
    assert [r["case"] for r in rows] == CASES
    assert sorted(r["missing"] for r in rows) == ["FLAIR", "FLAIR", "T1ce", "T1ce"]
    assert _csv(dropped["truth"] / DROPPED_NAME) == [{k: str(v) for k, v in r.items()} for r in rows]
    for row in rows:
        case, missing = row["case"], row["missing"]
        present = [c for c in SUFFIXES if c != missing]
        assert _files(dropped["val"] / case) == sorted(_name(case, c) for c in present)
        assert _files(dropped["truth"] / case) == sorted([_name(case, missing), _name(case, "seg")])
        for folder, contrast in [(dropped["val"], present[0]), (dropped["truth"], missing)]:
            copied = (folder / case / _name(case, contrast)).read_bytes()
            assert copied == (raw / case / _name(case, contrast)).read_bytes()


def test_drop_is_seeded(raw: Path, dropped: dict, tmp_path: Path) -> None:
    """The same seed drops the same modalities; the choice follows the seed and stays balanced."""
    again = brasyn_cli(["drop", "--input", str(raw), "--out", str(tmp_path / "v"), "--truth", str(tmp_path / "t"),
                         "--missing", "T1ce", "FLAIR", "--seed", "3"])
    assert again == dropped["rows"]
    choices = {tuple(balanced_choice(5, ["T1", "T1ce", "T2", "FLAIR"], seed)) for seed in range(8)}
    assert len(choices) > 1
    for choice in choices:
        assert sorted(choice.count(c) for c in ("T1", "T1ce", "T2", "FLAIR")) == [1, 1, 1, 2]


def test_drop_split_file_and_overwrite(raw: Path, tmp_path: Path) -> None:
    """--split-file takes only the listed cases; --overwrite replaces a case without leaving the old dropped image."""
    (tmp_path / "test.list").write_text(f"{CASES[2]}\n{CASES[0]}\n")
    argv = ["drop", "--input", str(raw), "--out", str(tmp_path / "v"), "--truth", str(tmp_path / "t"),
            "--split-file", str(tmp_path / "test.list"), "--missing", "T2"]
    rows = brasyn_cli(argv)
    assert [r["case"] for r in rows] == [CASES[2], CASES[0]] and _files(tmp_path / "v") == sorted(CASES[::2])
    brasyn_cli(argv[:-1] + ["T1", "--overwrite"])
    assert _files(tmp_path / "v" / CASES[0]) == sorted(_name(CASES[0], c) for c in ("T1ce", "T2", "FLAIR"))
    assert _files(tmp_path / "t" / CASES[0]) == sorted([_name(CASES[0], "T1"), _name(CASES[0], "seg")])


def _error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """The single `error:` line a command ends with (exit status 2)."""
    assert run_cli(brasyn_cli, argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def test_drop_errors(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """An incomplete case, existing outputs, overlapping folders and a non-BraTS modality stop with one line."""
    cases = tmp_path / "cases"
    shutil.copytree(raw / CASES[1], cases / CASES[1])
    (cases / CASES[1] / _name(CASES[1], "T2")).unlink()
    base = ["drop", "--out", str(tmp_path / "v"), "--truth", str(tmp_path / "t")]
    assert "has no T2 image" in _error(base + ["--input", str(cases)], capsys)
    assert "overlap" in _error(["drop", "--input", str(raw), "--out", str(tmp_path / "v"), "--truth",
                                str(tmp_path / "v" / "truth")], capsys)
    assert "not a BraTS modality" in _error(base + ["--input", str(raw), "--missing", "DWI"], capsys)
    assert not (tmp_path / "v").exists() and not (tmp_path / "t").exists()
    (tmp_path / "v" / CASES[0]).mkdir(parents=True)
    assert "--overwrite" in _error(base + ["--input", str(raw)], capsys)


# ------------------------------------------------------------------------------------------------------ complete

def test_completed_cases_are_whole_and_on_the_input_grid(dropped: dict, completed: dict) -> None:
    """Four correctly named files per case: three exact copies, and the synthesis with the case's grid and header."""
    out = completed["out"]
    assert _files(out) == sorted(CASES + ["brasyn_report.csv", "brasyn_report.json"])
    for row in dropped["rows"]:
        case, missing = row["case"], row["missing"]
        assert _files(out / case) == sorted(_name(case, c) for c in SUFFIXES)
        present = [c for c in SUFFIXES if c != missing]
        for contrast in present:
            assert (out / case / _name(case, contrast)).read_bytes() == \
                (dropped["val"] / case / _name(case, contrast)).read_bytes()
        reference = nib.load(dropped["val"] / case / _name(case, present[0]))
        synth = nib.load(out / case / _name(case, missing))
        assert synth.shape == reference.shape == (SIZE, SIZE, DEPTH)
        np.testing.assert_allclose(synth.affine, reference.affine, atol=1e-6)
        for field in HEADER_FIELDS:
            if field != "dim":
                np.testing.assert_array_equal(synth.header[field], reference.header[field], err_msg=field)
        data = synth.get_fdata()
        brain = np.any([nib.load(dropped["val"] / case / _name(case, c)).get_fdata() != 0 for c in present], axis=0)
        assert synth.get_data_dtype() == np.float32 and data.min() >= 0 and data.max() <= 1
        assert np.all(data[~brain] == 0) and np.count_nonzero(data[brain]) > 0.9 * brain.sum()


def test_report_says_what_was_done(dropped: dict, completed: dict, models: dict) -> None:
    """One row per case in the CSV and the JSON: missing modality, output, experiment and its condition order."""
    out = completed["out"]
    report = json.loads((out / "brasyn_report.json").read_text())
    rows = _csv(out / "brasyn_report.csv")
    expected = {r["case"]: r["missing"] for r in dropped["rows"]}
    assert [r["case"] for r in rows] == [r["case"] for r in report["cases"]] == list(expected)
    for row in rows:
        target = expected[row["case"]]
        order = ORDERS[target.lower()]
        assert row["missing"] == target and row["status"] == "synthesised" and row["naming"] == "brats2023"
        assert row["output"] == f"{row['case']}/{_name(row['case'], target)}"
        assert row["experiment"] == str(models[target.lower()]) and row["conditions"] == " ".join(order[:3])
        assert int(row["slices"]) > DEPTH // 2
        assert row["slices_outside_training"] == "unknown"  # nor their training slices
    assert report["models"]["T1ce"]["contrasts"] == list(ORDERS["t1ce"]) and report["seed"] == 1024
    assert report["models"]["T1ce"]["normalize"] == "percentile"  # the tiny experiments record no scale
    assert report["models"]["T1ce"]["train_slice_range"] == "unknown" and report["shared_noise"] is False
    assert report["intensity_reference"] == "none"


def test_report_counts_slices_outside_the_trained_range(dropped: dict, models: dict, tmp_path: Path) -> None:
    """An experiment whose config.json records train_slice_range: the report counts the case's brain slices
    outside it, in the CSV and the JSON (and --shared_noise and --intensity_reference are recorded)."""
    case = next(r["case"] for r in dropped["rows"] if r["missing"] == "T1ce")
    exp_dir = tmp_path / "t1ce"
    shutil.copytree(models["t1ce"], exp_dir)
    config = json.loads((exp_dir / "config.json").read_text())
    (exp_dir / "config.json").write_text(json.dumps({**config, "train_slice_range": [4, 6]}))
    out = tmp_path / "out"
    rows = brasyn_cli(["complete", "--input", str(dropped["val"] / case), "--models", f"T1ce={exp_dir}", "--out",
                        str(out), "--batch_size", "16", "--device", "cpu", "--shared_noise",
                        "--intensity_reference", "inputs"])
    images = [nib.load(p).get_fdata() for p in find_case_files(dropped["val"] / case, ORDERS["t1ce"][:3]).values()]
    brain = np.flatnonzero(np.any(np.stack([v != 0 for v in images]), axis=0).any(axis=(0, 1)))
    expected = int(((brain < 4) | (brain > 6)).sum())
    assert 0 < expected < len(brain)
    assert rows[0]["slices_outside_training"] == expected
    assert _csv(out / "brasyn_report.csv")[0]["slices_outside_training"] == str(expected)
    report = json.loads((out / "brasyn_report.json").read_text())
    assert report["cases"][0]["slices_outside_training"] == expected and report["shared_noise"] is True
    assert report["intensity_reference"] == "inputs"
    assert report["models"]["T1ce"]["train_slice_range"] == [4, 6]
    # score reads that range from the report: axial SSIM and brightness inside and outside it, for the copy too.
    scored = brasyn_cli(["score", "--completed", str(out), "--truth", str(dropped["truth"] / case), "--out",
                         str(tmp_path / "metrics")])[0]
    assert all(math.isfinite(scored[f"{p}{c}"]) for p in ("", "baseline_") for c in RANGE_COLUMNS)
    (out / "brasyn_report.json").unlink()
    unranged = brasyn_cli(["score", "--completed", str(out), "--truth", str(dropped["truth"] / case), "--out",
                           str(tmp_path / "metrics")])[0]
    assert all(math.isnan(unranged[c]) for c in RANGE_COLUMNS) and unranged["ssim_axial"] == scored["ssim_axial"]
    given = brasyn_cli(["score", "--completed", str(out), "--truth", str(dropped["truth"] / case), "--out",
                        str(tmp_path / "metrics"), "--slice_range", "4", "6"])[0]
    assert all(given[c] == scored[c] for c in RANGE_COLUMNS)  # the range the report held, given by hand
    with pytest.raises(UserError, match="--slice_range 6 4: give FIRST <= LAST"):
        brasyn_cli(["score", "--completed", str(out), "--truth", str(dropped["truth"] / case), "--out",
                    str(tmp_path / "metrics"), "--slice_range", "6", "4"])


def test_single_case_is_kept_then_redone_identically(dropped: dict, completed: dict, models: dict) -> None:
    """A case folder as --input: complete cases are kept; --overwrite synthesises again, the same volume (seeded)."""
    case = CASES[0]
    missing = next(r["missing"] for r in dropped["rows"] if r["case"] == case)
    path = completed["out"] / case / _name(case, missing)
    before = nib.load(path).get_fdata()
    argv = ["complete", "--input", str(dropped["val"] / case), "--models", f"T1ce={models['t1ce']}",
            f"FLAIR={models['flair']}", "--out", str(completed["out"]), "--batch_size", "8", "--device", "cpu"]
    assert [r["status"] for r in brasyn_cli(argv)] == ["kept (complete from an earlier run)"]
    assert [r["status"] for r in brasyn_cli(argv + ["--overwrite"])] == ["synthesised"]
    np.testing.assert_array_equal(nib.load(path).get_fdata(), before)


def test_epoch_best_uses_the_best_checkpoints(dropped: dict, completed: dict, models: dict, tmp_path: Path) -> None:
    """--epoch best (as for test.py) loads gen_diffusive_{1,2}_best.pth: here copies of the latest weights, so the
    volume equals the one completed with the latest; an experiment without them is refused in one line."""
    case = next(r["case"] for r in dropped["rows"] if r["missing"] == "T1ce")
    exp_dir = tmp_path / "t1ce"
    shutil.copytree(models["t1ce"], exp_dir)
    argv = ["complete", "--input", str(dropped["val"] / case), "--models", f"T1ce={exp_dir}", "--out",
            str(tmp_path / "out"), "--batch_size", "8", "--device", "cpu", "--epoch", "best"]
    with pytest.raises(UserError, match="_best.pth not found"):
        brasyn_cli(argv)
    for index in (1, 2):
        shutil.copy(exp_dir / f"gen_diffusive_{index}.pth", exp_dir / f"gen_diffusive_{index}_best.pth")
    brasyn_cli(argv)
    name = _name(case, "T1ce")
    np.testing.assert_array_equal(nib.load(tmp_path / "out" / case / name).get_fdata(),
                                  nib.load(completed["out"] / case / name).get_fdata())


def test_brats2021_names(models: dict, tmp_path: Path) -> None:
    """A case with 2019/2021 names gets its missing file under that naming (<case>_t1ce.nii.gz)."""
    case = phantom.case_name(7, "brats2021")
    folder = phantom.make_case(case, tmp_path / "val", size=SIZE, seed=7, depth=DEPTH, skull_strip=True,
                               naming="brats2021")
    (folder / f"{case}_t1ce.nii.gz").unlink()
    (folder / f"{case}_seg.nii.gz").unlink()
    brasyn_cli(["complete", "--input", str(tmp_path / "val"), "--models", f"T1ce={models['t1ce']}", "--out",
                 str(tmp_path / "out"), "--batch_size", "16", "--device", "cpu"])
    assert _files(tmp_path / "out" / case) == sorted(f"{case}_{s}.nii.gz" for s in ("t1", "t1ce", "t2", "flair"))


def test_test_py_case_folders_read_2023_names(raw: Path) -> None:
    """test.py --case finds t2f, t2w, t1n for FLAIR, T2, T1 in a BraTS 2023 case folder (the seg is no contrast)."""
    found = find_case_files(raw / CASES[0], ["FLAIR", "T2", "T1", "T1ce"])
    assert {c: p.name for c, p in found.items()} == {c: _name(CASES[0], c) for c in ("FLAIR", "T2", "T1", "T1ce")}


def _case_missing(raw: Path, root: Path, case: str, *missing: str) -> Path:
    """A copy of a raw case without its seg and the given modalities, in `root`/<case>."""
    shutil.copytree(raw / case, root / case)
    for contrast in (*missing, "seg"):
        (root / case / _name(case, contrast)).unlink()
    return root / case


@pytest.mark.parametrize("setup, models_given, expected", [
    ("none_missing", "t1ce", "all four modalities are present"),
    ("two_missing", "t1ce", "T1ce and FLAIR are missing"),
    ("unknown_file", "t1ce", "unknown file notes.txt"),
    ("t2_missing", "t1ce flair", "lacks T2, but --models gives no experiment for T2 .*add --models T2="),
    ("flair_missing", "dwi_flair", "conditioned on T1, T2, DWI, but the case has no DWI"),
    ("t1ce_missing", "flair_as_t1ce", "synthesises FLAIR .*not T1ce; pass it as FLAIR="),
    ("t1ce_missing", "no_equals", "expected TARGET=EXPERIMENT_FOLDER"),
    ("t1ce_missing", "absent_folder", "no such experiment folder"),
    ("t1ce_missing", "out_inside_input", "overlap"),
])
def test_complete_errors_are_one_line(raw: Path, models: dict, tmp_path: Path, capsys: pytest.CaptureFixture,
                                      setup: str, models_given: str, expected: str) -> None:
    """Every refused input stops before any synthesis with one `error:` line naming the problem; nothing is written."""
    val = tmp_path / "val"
    missing = {"none_missing": (), "two_missing": ("T1ce", "FLAIR"), "unknown_file": ("T1ce",),
               "t2_missing": ("T2",), "flair_missing": ("FLAIR",), "t1ce_missing": ("T1ce",)}[setup]
    folder = _case_missing(raw, val, CASES[1], *missing)
    _case_missing(raw, val, CASES[0], "T1ce")  # a good case first: problems are found before any work
    if setup == "unknown_file":
        (folder / "notes.txt").write_text("scan notes")
    specs = {"t1ce": [f"T1ce={models['t1ce']}"], "t1ce flair": [f"T1ce={models['t1ce']}", f"FLAIR={models['flair']}"],
             "dwi_flair": [f"T1ce={models['t1ce']}", f"FLAIR={models['dwi_flair']}"],
             "flair_as_t1ce": [f"T1ce={models['flair']}"], "no_equals": ["T1ce"],
             "absent_folder": [f"T1ce={tmp_path / 'nowhere'}"], "out_inside_input": [f"T1ce={models['t1ce']}"]}
    out = val / "completed" if models_given == "out_inside_input" else tmp_path / "out"
    err = _error(["complete", "--input", str(val), "--models", *specs[models_given], "--out", str(out),
                  "--device", "cpu"], capsys)
    assert re.search(expected, err), err
    assert not out.exists()


# -------------------------------------------------------------------------------------------------------- refine

@pytest.fixture(scope="module")
def refined_model(raw: Path, models: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the T1ce experiment with a small refiner trained for a few steps on the four complete cases."""
    exp = tmp_path_factory.mktemp("refined") / "t1ce"
    shutil.copytree(models["t1ce"], exp)
    brasyn_cli(["refine", "--train", str(raw), "--models", f"T1ce={exp}", "--steps", "3", "--crop_slices", "4",
                "--width", "4", "--blocks", "1", "--batch_size", "8", "--device", "cpu", "--lesion_weight", "4"])
    return exp


def test_refine_writes_a_safe_checkpoint_its_record_and_curve(refined_model: Path) -> None:
    """refiner.pth loads with weights_only and names its settings; refiner.json holds the run, the PNG its curve."""
    content = torch.load(refined_model / REFINER_NAME, weights_only=True)
    image_size = json.loads((refined_model / "config.json").read_text())["image_size"]
    assert content["format"] == REFINER_FORMAT and content["image_size"] == image_size
    assert (content["width"], content["blocks"], content["steps"], content["lesion_weight"]) == (4, 1, 3, 4.0)
    assert content["generators"] == ["gen_diffusive_1.pth", "gen_diffusive_2.pth"]
    record = json.loads((refined_model / REFINER_RECORD).read_text())
    assert record["cases"] == CASES and [row["step"] for row in record["log"]] == [3]
    assert 0 < record["l1_synthesis"] < 2 and 0 < record["l1_refined"] < 2
    assert (refined_model / REFINER_CURVE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_refiner_reads_the_tumour_of_each_training_case(raw: Path) -> None:
    """lesion_stack: the seg's tumour on the chosen slices at the model's size; None for a case without seg."""
    case = read_case_folder(raw / CASES[0])
    label = nib.load(case.label).get_fdata()
    slices = [int(np.argmax((label > 0).sum(axis=(0, 1))))]
    lesion = lesion_stack(case, slices, 16)
    assert lesion.shape == (1, 1, 16, 16) and lesion.dtype == torch.bool and lesion.any() and not lesion.all()
    assert lesion_stack(dataclasses.replace(case, label=None), slices, 16) is None


def test_complete_refine_changes_only_what_the_refiner_learnt(dropped: dict, completed: dict, refined_model: Path,
                                                              tmp_path: Path) -> None:
    """complete --refine: a trained refiner changes the volume a little; one whose last layer is zero (an untrained
    one) gives exactly the completion without --refine; the report records the option."""
    case = next(r["case"] for r in dropped["rows"] if r["missing"] == "T1ce")
    plain = nib.load(completed["out"] / case / _name(case, "T1ce")).get_fdata()
    argv = ["complete", "--input", str(dropped["val"] / case), "--models", f"T1ce={refined_model}", "--batch_size",
            "8", "--device", "cpu", "--refine"]
    brasyn_cli([*argv, "--out", str(tmp_path / "refined")])
    refined = nib.load(tmp_path / "refined" / case / _name(case, "T1ce")).get_fdata()
    assert not np.array_equal(refined, plain) and np.abs(refined - plain).max() < 0.2
    assert json.loads((tmp_path / "refined" / "brasyn_report.json").read_text())["refine"] is True
    untrained = tmp_path / "untrained"
    shutil.copytree(refined_model, untrained)
    record = {k: v for k, v in torch.load(untrained / REFINER_NAME, weights_only=True).items()
              if k not in ("format", "state_dict")}
    save_refiner(VolumeRefiner(4, 1), record, untrained / REFINER_NAME)
    argv[4] = f"T1ce={untrained}"
    brasyn_cli([*argv, "--out", str(tmp_path / "identity")])
    np.testing.assert_array_equal(nib.load(tmp_path / "identity" / case / _name(case, "T1ce")).get_fdata(), plain)


def test_test_py_nifti_refine(raw: Path, refined_model: Path, tmp_path: Path) -> None:
    """test.py --nifti --refine writes the refined volume, which differs from the one without --refine."""
    base = ["--output_path", str(refined_model.parent), "--exp", refined_model.name, "--nifti", "--case",
            str(raw / CASES[0]), "--device", "cpu"]
    synthesis_cli([*base, "--out", str(tmp_path / "plain.nii.gz")])
    synthesis_cli([*base, "--refine", "--out", str(tmp_path / "refined.nii.gz")])
    plain, refined = (nib.load(tmp_path / f"{n}.nii.gz").get_fdata() for n in ("plain", "refined"))
    assert plain.shape == refined.shape and not np.array_equal(plain, refined)


def test_refine_errors_are_one_line(raw: Path, dropped: dict, models: dict, refined_model: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    """No refiner, an existing one, incomplete training cases, a refiner of another size: one line each."""
    case = next(r["case"] for r in dropped["rows"] if r["missing"] == "T1ce")
    complete = ["complete", "--input", str(dropped["val"] / case), "--out", str(tmp_path / "out"), "--device", "cpu",
                "--refine", "--models"]
    err = _error([*complete, f"T1ce={models['t1ce']}"], capsys)
    assert "refiner.pth does not exist; train one with brasyn.py refine" in err and not (tmp_path / "out").exists()
    refine = ["refine", "--device", "cpu", "--steps", "1", "--models"]
    assert "exists; pass --overwrite" in _error([*refine, f"T1ce={refined_model}", "--train", str(raw)], capsys)
    fresh = tmp_path / "fresh"
    shutil.copytree(models["t1ce"], fresh)
    assert "--train takes complete cases" in _error([*refine, f"T1ce={fresh}", "--train", str(dropped["val"])],
                                                    capsys)
    assert not (fresh / REFINER_NAME).exists()
    other = tmp_path / "other"
    shutil.copytree(refined_model, other)
    content = torch.load(other / REFINER_NAME, weights_only=True)
    torch.save({**content, "image_size": 96}, other / REFINER_NAME)
    assert "was trained on 96 x 96 slices" in _error([*complete, f"T1ce={other}"], capsys)
    assert run_cli(synthesis_cli, ["--output_path", str(refined_model.parent), "--exp", refined_model.name,
                                   "--refine", "--device", "cpu"]) == 2
    assert "--refine corrects a whole volume" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------- score

def test_score_writes_finite_metrics_per_case(dropped: dict, completed: dict, tmp_path: Path) -> None:
    """Every case gets finite SSIM/PSNR in brain, tumour and outside it (and the baseline's); a summary per contrast."""
    rows = brasyn_cli(["score", "--completed", str(completed["out"]), "--truth", str(dropped["truth"]), "--out",
                        str(tmp_path / "metrics")])
    written = _csv(tmp_path / "metrics" / "volume_metrics.csv")
    assert [r["case"] for r in written] == [r["case"] for r in rows] == CASES
    columns = [f"{p}{m}_{r}" for p in ("", "baseline_") for r in ("brain", "tumour", "outside_tumour")
               for m in ("ssim", "psnr")]
    for row in written:
        assert all(math.isfinite(float(row[c])) for c in columns), row
        assert -1 <= float(row["ssim_brain"]) <= 1 and 0 < int(row["tumour_voxels"]) < int(row["brain_voxels"])
    summary = json.loads((tmp_path / "metrics" / "volume_metrics.json").read_text())
    assert set(summary["summary"]) == {"all", "T1ce", "FLAIR"} and summary["summary"]["all"]["cases"] == 4
    assert summary["summary"]["all"]["psnr_tumour"]["n"] == 4 and "normalisation" in summary["definitions"]
    coherence = [f"{p}{c}" for p in ("", "baseline_") for c in (*COHERENCE_COLUMNS, *RANGE_COLUMNS)]
    assert list(written[0])[-len(coherence):] == coherence  # appended after the original columns
    for row in written:
        assert all(math.isfinite(float(row[c])) for c in coherence if not c.endswith(("_inside", "_outside"))), row
    assert summary["coherence_resolution"] == "native" and summary["summary"]["all"]["gradient_ratio"]["n"] == 4
    assert "ssim_<plane>" in summary["definitions"]


def test_score_coherence_at_the_model_resolution(dropped: dict, completed: dict, tmp_path: Path) -> None:
    """--model_resolution N: the coherence columns are computed on N x N axial planes (so they change), the
    original columns keep their values; a resolution below the SSIM window is refused."""
    argv = ["score", "--completed", str(completed["out"]), "--truth", str(dropped["truth"]), "--out"]
    native = brasyn_cli(argv + [str(tmp_path / "native")])
    model = brasyn_cli(argv + [str(tmp_path / "model"), "--model_resolution", "16"])
    for a, b in zip(native, model):
        assert all(a[k] == b[k] for k in a if k.removeprefix("baseline_") not in (*COHERENCE_COLUMNS, *RANGE_COLUMNS))
        assert a["ssim_coronal"] != b["ssim_coronal"] and a["gradient_ratio"] != b["gradient_ratio"]
    assert json.loads((tmp_path / "model" / "volume_metrics.json").read_text())["coherence_resolution"] == 16
    with pytest.raises(UserError, match="--model_resolution 5 is below"):
        brasyn_cli(argv + [str(tmp_path / "bad"), "--model_resolution", "5"])


def test_score_of_the_truth_itself_is_perfect(dropped: dict, completed: dict, tmp_path: Path) -> None:
    """Completed folders holding the truth score SSIM 1 and PSNR inf in every region; without a seg, tumour is NaN."""
    copy = tmp_path / "completed"
    shutil.copytree(completed["out"], copy)
    truth = tmp_path / "truth"
    shutil.copytree(dropped["truth"], truth)
    for row in dropped["rows"]:
        shutil.copyfile(truth / row["case"] / row["file"], copy / row["case"] / row["file"])
    (truth / CASES[0] / _name(CASES[0], "seg")).unlink()
    rows = brasyn_cli(["score", "--completed", str(copy), "--truth", str(truth), "--out", str(tmp_path / "m")])
    for row in rows:
        assert row["ssim_brain"] == pytest.approx(1) and row["psnr_brain"] == math.inf
        assert row["ssim_coronal"] == pytest.approx(1) and row["gradient_ratio"] == pytest.approx(1)
        assert row["brightness_step"] == pytest.approx(0, abs=1e-12)
    assert math.isnan(rows[0]["ssim_tumour"]) and rows[0]["ssim_outside_tumour"] == pytest.approx(1)
    assert rows[1]["ssim_tumour"] == pytest.approx(1)


def test_volume_metrics_are_what_the_readme_says() -> None:
    """Each volume normalised (1st/99th percentile of voxels > 0, min-max); PSNR = 10 log10(1 / region MSE); SSIM =
    skimage's 3-D SSIM map of the whole volumes averaged over the region."""
    rng = np.random.default_rng(0)
    brain = np.zeros((30, 28, 20), bool)
    brain[8:22, 7:21, 6:14] = True
    tumour = np.zeros_like(brain)
    tumour[12:16, 10:14, 8:12] = True
    truth = (rng.random(brain.shape) * 900 + 100) * brain
    synth = np.clip(truth / 1000 + rng.normal(0, 0.05, brain.shape), 0, 1) * brain

    def normalised(vol: np.ndarray) -> np.ndarray:
        low, high = np.percentile(vol[vol > 0], [1, 99])
        clipped = np.clip(vol, low, high)
        return (clipped - clipped.min()) / (clipped.max() - clipped.min())

    result = volume_metrics(truth, synth, brain, tumour)
    _, ssim_map = structural_similarity(normalised(synth), normalised(truth), data_range=1.0, full=True)
    for region, mask in (("brain", brain), ("tumour", tumour), ("outside_tumour", brain & ~tumour)):
        mse = np.mean((normalised(truth)[mask] - normalised(synth)[mask]) ** 2)
        assert result[f"psnr_{region}"] == pytest.approx(10 * np.log10(1 / mse), rel=1e-9)
        assert result[f"ssim_{region}"] == pytest.approx(ssim_map[mask].mean(), rel=1e-9)
        assert 0 < result[f"ssim_{region}"] < 1
    same = volume_metrics(truth, truth, brain, None)
    assert same["ssim_brain"] == pytest.approx(1) and same["psnr_brain"] == math.inf and math.isnan(same["ssim_tumour"])


def test_score_errors(dropped: dict, completed: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """No completed folder, a truth case not completed, or one with two images: one line each."""
    truth = tmp_path / "truth"
    shutil.copytree(dropped["truth"] / CASES[0], truth / CASES[0])
    argv = ["score", "--truth", str(truth), "--out", str(tmp_path / "m"), "--completed"]
    assert "is not a folder" in _error(argv + [str(tmp_path / "empty_completed")], capsys)
    (tmp_path / "empty_completed").mkdir()
    assert f"has no case {CASES[0]}" in _error(argv + [str(tmp_path / "empty_completed")], capsys)
    other = next(c for c in SUFFIXES if c != dropped["rows"][0]["missing"])
    shutil.copyfile(completed["out"] / CASES[0] / _name(CASES[0], other), truth / CASES[0] / _name(CASES[0], other))
    assert "holds 2 images" in _error(argv + [str(completed["out"])], capsys)
    assert not (tmp_path / "m").exists()


# ------------------------------------------------------------------------------------ docs/brasyn.md's loop

def test_readme_brasyn_loop_runs_as_printed(tmp_path_factory: pytest.TempPathFactory) -> None:
    """docs/brasyn.md: 2023-named cases -> pre_process -> train (T1ce, FLAIR) -> drop -> complete -> score -> segment
    -> export, as printed."""
    commands = [c for c in readme_commands(section_text(BRASYN_SECTION, BRASYN_PAGE)) if not is_user_data(c)]
    steps = ["make_sample_data.py", "pre_process.py", "train.py", "train.py", "brasyn.py drop", "brasyn.py complete",
             "brasyn.py score", "make_sample_data.py", "brasyn.py segment", "brasyn.py export"]
    assert len(commands) == len(steps) and all(s in c for s, c in zip(steps, commands)), commands
    repo = make_scratch_repo(tmp_path_factory.mktemp("brasyn_readme") / "repo")
    for command in commands:
        result = run(command, repo)
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    raw, val = repo / "sample_data" / "brats23", repo / "sample_data" / "brasyn23" / "val"
    completed = repo / "results" / "brasyn23" / "completed"
    cases = sorted(p.name for p in val.iterdir())
    assert cases == (raw / "splits" / "test.list").read_text().split() and len(cases) == 2
    missing = {r["case"]: r["missing"] for r in _csv(repo / "sample_data" / "brasyn23" / "truth" / DROPPED_NAME)}
    assert sorted(missing.values()) == ["FLAIR", "T1ce"]
    for case in cases:
        assert _files(completed / case) == sorted(_name(case, c) for c in SUFFIXES)
        for contrast in SUFFIXES:
            made = nib.load(completed / case / _name(case, contrast))
            source = nib.load(raw / case / _name(case, contrast))
            assert made.shape == source.shape
            np.testing.assert_allclose(made.affine, source.affine, atol=1e-6)
    for row in _csv(repo / "results" / "brasyn23" / "metrics" / "volume_metrics.csv"):
        assert row["contrast"] == missing[row["case"]]
        assert all(math.isfinite(float(row[f"{m}_{r}"])) for m in ("ssim", "psnr")
                   for r in ("brain", "tumour", "outside_tumour"))
        assert all(math.isfinite(float(row[c])) for c in ("ssim_coronal", "baseline_ssim_coronal", "gradient_ratio"))
    seg = repo / "results" / "brasyn23" / "segmentation"
    rows = _csv(seg / "segmentation_metrics.csv")
    assert {(r["case"], r["version"]) for r in rows} == {(c, v) for c in cases
                                                          for v in ("real", "completed", "copy", "zero")}
    assert (seg / "segmentation_dice.png").exists() and (seg / "segmenter.pt").exists()
    exported = repo / "results" / "brasyn23" / "nnunet" / "Dataset900_BraSynPhantom"
    assert sorted(p.name for p in (exported / "imagesTs").iterdir()) == sorted(
        f"{c}_{i:04d}.nii.gz" for c in cases for i in range(4))
