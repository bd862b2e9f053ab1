"""test.py slice mode: the README command, output layout, geometry, seeds, batching, checkpoint choice, uncertainty."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL_ARGS, save_tiny_experiment, save_tiny_slices, synthesis_cli

from utils.core.errors import UserError, run_cli
from utils.core.runtime import resolve_device
from utils.data.images import read_image
from utils.data.slices import SliceDataset
from utils.infer.experiment import open_experiment
from utils.model.diffusion import sample_from_model

pytestmark = pytest.mark.usefixtures("one_thread")

# The README's test command, with the data and results folders of the test (input path without trailing slash).
README_TEST = ("--image_size 256 --exp exp_brats --num_channels 1 --num_channels_dae 64 --ch_mult 1 2 4 "
               "--num_timesteps 4 --num_res_blocks 2 --batch_size 1 --embedding_type positional  --z_emb_dim 256  "
               "--gpu_chose 0").split()
COUNT, HEIGHT, WIDTH = 5, 60, 52


import utils.infer.runs as runs  # noqa: E402
from utils.infer.outputs import synth_to_original  # noqa: E402


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results folder with the tiny experiments and a preprocessed test split."""
    root = tmp_path_factory.mktemp("inference")
    save_tiny_slices(root / "BRATS", COUNT, HEIGHT, WIDTH)
    save_tiny_experiment(root / "results" / "exp_brats", seed=0, epochs=(5,))
    return root


def run(workspace: Path, exp: str, *extra: str, readme: bool = False) -> Path:
    """Run test.py's main in-process on the workspace; return generated_samples/."""
    base = README_TEST if readme else ["--exp", exp, "--batch_size", "2"]
    argv = [*base, "--input_path", str(workspace / "BRATS"), "--output_path", str(workspace / "results"),
            "--num_workers", "0", "--overwrite", *extra]
    if readme:
        argv[argv.index("exp_brats")] = exp
    return synthesis_cli(argv)


@pytest.fixture(scope="module")
def readme_run(workspace: Path) -> Path:
    """The README command as printed (config.json of the experiment supplies the tiny model), with uncertainty."""
    return run(workspace, "exp_brats", "--save_uncertainty", readme=True)


def test_readme_command_writes_matching_pngs_and_stacks(readme_run: Path, workspace: Path) -> None:
    """Every output folder holds slice_00000.png ... and each .npy stack is (N, H, W) in [0, 1]."""
    names = [f"slice_{i:05d}.png" for i in range(COUNT)]
    for folder in ("synth", "real", "mask/brain", "mask/lesion", "uncertainty/disagreement",
                   "uncertainty/critic_attention"):
        assert sorted(p.name for p in (readme_run / folder).iterdir()) == names, folder
    for stack in ("synth", "real", "brain_mask", "lesion_mask", "uncertainty/disagreement",
                  "uncertainty/critic_attention"):
        array = np.load(readme_run / f"{stack}.npy")
        assert array.shape == (COUNT, HEIGHT, WIDTH) and array.dtype == np.float32, stack
        assert array.min() >= 0 and array.max() <= 1, stack
    assert not list(readme_run.rglob(".*tmp*")), "temporary files left behind"


def test_outputs_are_in_the_original_orientation(readme_run: Path, workspace: Path) -> None:
    """real.npy and the masks equal the preprocessed arrays: the loader's transposition and padding are undone."""
    split = workspace / "BRATS" / "test"
    np.testing.assert_allclose(np.load(readme_run / "real.npy"), np.load(split / "T1ce.npy"), atol=1e-6)
    np.testing.assert_array_equal(np.load(readme_run / "brain_mask.npy"), np.load(split / "brain_mask.npy"))
    np.testing.assert_array_equal(np.load(readme_run / "lesion_mask.npy"), np.load(split / "lesion_mask.npy"))


def test_pngs_are_lossless_16_bit_copies_of_the_stacks(readme_run: Path) -> None:
    """Each PNG reads back as its stack row to within one 16-bit level."""
    synth = np.load(readme_run / "synth.npy")
    for i in (0, COUNT - 1):
        png = read_image(readme_run / "synth" / f"slice_{i:05d}.png")
        assert png.shape == (HEIGHT, WIDTH)
        np.testing.assert_allclose(png, synth[i], atol=0.5 / 65535 + 1e-7)


def test_config_json_rebuilds_the_model_and_run_json_records_it(readme_run: Path, workspace: Path) -> None:
    """The README flags (256, T = 4) give way to config.json (64, T = 2), and run.json says which were used."""
    record = json.loads((readme_run / "run.json").read_text())
    assert record["num_timesteps"] == 2
    assert record["contrasts"] == ["FLAIR", "T2", "T1", "T1ce"]
    assert record["checkpoints"][0].endswith("gen_diffusive_1.pth")


def test_manifest_maps_names_to_cases(readme_run: Path) -> None:
    """manifest.csv lists every written name with its dataset index, case and slice."""
    with open(readme_run / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == [f"slice_{i:05d}" for i in range(COUNT)]
    assert rows[4]["case_id"] == "case001" and rows[4]["slice_index"] == "41"


def test_uncertainty_maps_are_meaningful(readme_run: Path) -> None:
    """The disagreement map is not all zero; the critic map is a sigmoid (strictly inside (0, 1))."""
    disagreement = np.load(readme_run / "uncertainty" / "disagreement.npy")
    critic = np.load(readme_run / "uncertainty" / "critic_attention.npy")
    assert disagreement.max() > 1e-3
    assert 0 < critic.min() and critic.max() < 1 and critic.std() > 0


def test_same_seed_same_output_other_seed_differs(workspace: Path) -> None:
    """--seed makes runs reproducible, with or without --save_uncertainty."""
    first = np.load(run(workspace, "exp_brats", "--limit", "2", "--seed", "7") / "synth.npy")
    # Asking for the uncertainty maps (which loads the critic) does not change the samples.
    again = np.load(run(workspace, "exp_brats", "--limit", "2", "--seed", "7", "--save_uncertainty") / "synth.npy")
    other = np.load(run(workspace, "exp_brats", "--limit", "2", "--seed", "8") / "synth.npy")
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3


def test_batch_size_is_used(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--batch_size 2 on 5 slices synthesises batches of 2, 2 and 1, and --limit stops early."""
    sizes = []
    original = runs.synthesize

    def spy(exp, cond1, *rest, **kwargs):
        sizes.append(len(cond1))
        return original(exp, cond1, *rest, **kwargs)

    monkeypatch.setattr(runs, "synthesize", spy)
    out = run(workspace, "exp_brats", "--batch_size", "2")
    assert sizes == [2, 2, 1]
    sizes.clear()
    run(workspace, "exp_brats", "--batch_size", "2", "--limit", "3")
    assert sizes == [2, 1] and np.load(out / "synth.npy").shape[0] == 3
    assert not (out / "synth" / "slice_00004.png").exists(), "a previous run's slices were left behind"


def test_epoch_picks_the_numbered_files(workspace: Path, tmp_path: Path) -> None:
    """--epoch 5 loads gen_diffusive_{1,2}_5.pth: same output as a folder whose default files hold those weights."""
    by_epoch = np.load(run(workspace, "exp_brats", "--limit", "1", "--epoch", "5") / "synth.npy")
    default = np.load(run(workspace, "exp_brats", "--limit", "1") / "synth.npy")
    save_tiny_experiment(workspace / "results" / "exp_epoch5", seed=5)
    same_weights = np.load(run(workspace, "exp_epoch5", "--limit", "1") / "synth.npy")
    np.testing.assert_array_equal(by_epoch, same_weights)
    assert np.abs(by_epoch - default).max() > 1e-3


def test_test_split_must_have_the_training_data_scale(workspace: Path, tmp_path: Path) -> None:
    """An experiment trained on --normalize median data refuses a split made with the original scale, and takes one
    made with median."""
    exp_dir = workspace / "results" / "exp_median"
    save_tiny_experiment(exp_dir)
    config = json.loads((exp_dir / "config.json").read_text())
    (exp_dir / "config.json").write_text(json.dumps({**config, "normalize": "median"}))
    with pytest.raises(UserError, match="preprocessed with --normalize percentile, but exp_median was trained on "
                                        "--normalize median data"):
        run(workspace, "exp_median", "--limit", "1")
    (workspace / "BRATS" / "test" / "preprocess.json").write_text(json.dumps({"normalize": "median"}))
    try:
        assert (run(workspace, "exp_median", "--limit", "1") / "synth.npy").is_file()
    finally:
        (workspace / "BRATS" / "test" / "preprocess.json").unlink()


def test_missing_epoch_is_a_one_line_error_listing_the_saved_ones(workspace: Path) -> None:
    """An epoch that was not saved names the ones that were."""
    with pytest.raises(UserError, match=r"gen_diffusive_1_9\.pth not found.*epochs saved there: 5"):
        run(workspace, "exp_brats", "--epoch", "9")


def test_published_module_prefixed_pair_without_config(workspace: Path) -> None:
    """DDP-style files (`module.` keys), no config.json, no content.pth: loads and matches the plain-key run."""
    save_tiny_experiment(workspace / "results" / "published", seed=0, ddp_prefix=True, with_content=False,
                         with_config=False)
    flags = [*TINY_MODEL_ARGS, "--contrasts", "FLAIR", "T2", "T1", "T1ce", "--limit", "2", "--save_uncertainty"]
    published = run(workspace, "published", *flags)
    plain = np.load(run(workspace, "exp_brats", "--limit", "2") / "synth.npy")
    np.testing.assert_array_equal(np.load(published / "synth.npy"), plain)
    # Without content.pth there is no critic: the disagreement map is still written, the critic map is not.
    assert (published / "uncertainty" / "disagreement.npy").exists()
    assert not (published / "uncertainty" / "critic_attention").exists()
    assert "unavailable" in json.loads((published / "run.json").read_text())["critic_map"]


def test_mismatched_checkpoint_is_one_line(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    """A checkpoint of another architecture exits with status 2 and one `error:` line naming the file."""
    exp = workspace / "results" / "wrong"
    save_tiny_experiment(exp, seed=0, with_config=False)
    argv = ["--exp", "wrong", "--input_path", str(workspace / "BRATS"), "--output_path",
            str(workspace / "results"), "--num_workers", "0", *TINY_MODEL_ARGS]
    argv[argv.index("--num_channels_dae") + 1] = "32"  # the saved networks have TINY_MODEL's width
    assert run_cli(synthesis_cli, argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:")
    assert "gen_diffusive_1" in err and "shape mismatches" in err


def test_trailing_slash_optional_and_bad_path_is_one_line(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    """input_path with a trailing slash works as well; a wrong one is a one-line error."""
    out = synthesis_cli(["--exp", "exp_brats", "--input_path", str(workspace / "BRATS") + "/", "--output_path",
                         str(workspace / "results"), "--num_workers", "0", "--limit", "1", "--overwrite"])
    assert np.load(out / "synth.npy").shape == (1, HEIGHT, WIDTH)
    capsys.readouterr()
    argv = ["--exp", "exp_brats", "--input_path", str(workspace / "nowhere"), "--output_path",
            str(workspace / "results")]
    assert run_cli(synthesis_cli, argv) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_device_resolution() -> None:
    """--gpu_chose falls back to the CPU when no GPU is there; an explicit cuda without one is an error."""
    assert resolve_device("cpu", 3) == torch.device("cpu")
    with pytest.raises(UserError, match="--device"):
        resolve_device("tpu")
    if torch.cuda.is_available():
        assert resolve_device("auto", 0) == torch.device("cuda:0")
    else:
        assert resolve_device("auto", 0) == torch.device("cpu")
        with pytest.raises(UserError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_seed_42_batch_1_makes_the_original_test_py_draws(workspace: Path) -> None:
    """The original test.py seeded 42 and sampled one slice at a time: per slice x_T = randn_like(target), then per
    step z = randn(1, nz) and one posterior noise draw. `--seed 42 --batch_size 1` makes exactly these draws, in this
    order, slice after slice. (On the CPU the data loader's iterator takes one seed draw from the same generator
    first; on a GPU that draw goes to the CPU generator and the GPU's stream starts with x_T, as in the original.)"""
    synth = np.load(run(workspace, "exp_brats", "--limit", "3", "--seed", "42", "--batch_size", "1") / "synth.npy")
    exp = open_experiment(workspace / "results" / "exp_brats", device="cpu")
    dataset = SliceDataset(workspace / "BRATS", "test", exp.contrasts, image_size=exp.args.image_size)
    torch.manual_seed(42)
    torch.empty((), dtype=torch.int64).random_()  # the data loader's seed draw
    for i in range(3):
        # Contiguous, as the data loader's batches are (randn_like follows the memory layout).
        cond1, cond2, cond3, target = (x[None].contiguous() for x in dataset[i][:4])
        x_t = torch.randn_like(target)
        sample = sample_from_model(exp.coefficients, exp.gen1, cond1, exp.gen2, cond2, cond3,
                                   exp.args.num_timesteps, x_t, None, exp.args)
        np.testing.assert_array_equal(synth_to_original(sample, (HEIGHT, WIDTH))[0], synth[i])


def test_earlier_results_are_kept_without_overwrite(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    """A second test.py into the same folder stops in one line before loading anything; --overwrite replaces."""
    out = run(workspace, "exp_brats", "--limit", "2")
    before = (out / "synth.npy").stat().st_mtime_ns
    argv = ["--exp", "exp_brats", "--input_path", str(workspace / "BRATS"), "--output_path",
            str(workspace / "results"), "--num_workers", "0", "--limit", "1"]
    capsys.readouterr()
    assert run_cli(synthesis_cli, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--overwrite" in err and err.count("\n") == 1
    assert (out / "synth.npy").stat().st_mtime_ns == before and len(np.load(out / "synth.npy")) == 2
    assert len(np.load(synthesis_cli(argv + ["--overwrite"]) / "synth.npy")) == 1


def test_config_names_the_data_so_input_path_is_optional(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    """Without --input_path test.py reads the data folder config.json records; one on the command line wins."""
    exp = workspace / "results" / "recorded_path"
    save_tiny_experiment(exp, seed=0)
    config = json.loads((exp / "config.json").read_text())
    config["input_path"] = str(workspace / "BRATS")
    (exp / "config.json").write_text(json.dumps(config))
    base = ["--exp", "recorded_path", "--output_path", str(workspace / "results"), "--num_workers", "0"]
    out = synthesis_cli(base + ["--overwrite"])
    assert len(list((out / "synth").glob("*.png"))) == COUNT
    elsewhere = workspace / "no_such_data"
    assert run_cli(synthesis_cli, base + ["--input_path", str(elsewhere), "--overwrite"]) == 2
    assert str(elsewhere) in capsys.readouterr().err


def test_content_of_another_format_is_one_line(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    """A content.pth stamped with a format this version does not write stops the critic map with one line."""
    exp = workspace / "results" / "other_format"
    save_tiny_experiment(exp, seed=0)
    content = torch.load(exp / "content.pth", weights_only=True)
    torch.save({**content, "format": "other/9"}, exp / "content.pth")
    argv = ["--exp", "other_format", "--input_path", str(workspace / "BRATS"), "--output_path",
            str(workspace / "results"), "--num_workers", "0", "--save_uncertainty"]
    assert run_cli(synthesis_cli, argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'other/9'" in err and "content.pth" in err
