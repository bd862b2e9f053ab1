"""Shared test fixtures: the repository root on sys.path and the reference material beside the checkout."""
import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "bench") not in sys.path:
    sys.path.append(str(ROOT / "bench"))

# The weight perturbation lives once, in bench_common (which the benchmarks' workers can import), for both.
from bench_common import perturb_  # noqa: E402

from utils.core.options import add_diffusion_args, add_model_args  # noqa: E402

# The authors' numbers live in ../shared/reference beside a developer's checkout; a user's clone has no such folder.
REFERENCE_DIR = Path(os.environ.get("MUDIFF_REFERENCE", ROOT.parent / "shared" / "reference"))


def model_args(**overrides) -> argparse.Namespace:
    """The README configuration from the shared option parser, with overrides."""
    parser = argparse.ArgumentParser()
    add_model_args(parser)
    add_diffusion_args(parser)
    args = parser.parse_args([])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def tiny_args(**overrides) -> argparse.Namespace:
    """A small generator configuration (32x32, two levels, per-level and mid attention) for fast checks."""
    base = dict(image_size=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[16], num_channels_dae=16,
                nz=20, z_emb_dim=16, n_mlp=1, t_emb_dim=16, ngf=2)
    base.update(overrides)
    return model_args(**base)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a module: tiny networks gain nothing from more, and a shared machine loses."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def train_cli(argv: list[str]) -> None:
    """What `python train.py ARGV` does, through the library (tests never import the scripts)."""
    from utils.core.options import parse_with_config, train_parser
    from utils.train.launch import run_training

    run_training(parse_with_config(train_parser(), argv))


def synthesis_cli(argv: list[str]) -> Path:
    """What `python test.py ARGV` does, through the library (`import test` would find Python's own package)."""
    from utils.core.options import synthesis_parser
    from utils.infer.runs import run_synthesis

    parser = synthesis_parser()
    return run_synthesis(parser.parse_args(argv), parser)


def preprocess_cli(argv: list[str]) -> dict[str, int]:
    """What `python pre_process.py ARGV` does, through the library."""
    from utils.data.preprocess_options import preprocess_parser
    from utils.data.preprocessing import preprocess

    return preprocess(preprocess_parser().parse_args(argv))


def brasyn_cli(argv: list[str]) -> list[dict]:
    """What `python brasyn.py ARGV` does, through the library."""
    from utils.brasyn.options import brasyn_parser
    from utils.seg.commands import run_brasyn

    return run_brasyn(brasyn_parser().parse_args(argv))


def metric_cli(argv: list[str]) -> dict:
    """What `python metric_calc.py ARGV` does, through the library."""
    from utils.eval.report import metric_parser, score_and_report

    return score_and_report(metric_parser().parse_args(argv))


def cli_generator() -> types.ModuleType:
    """docs/cli/generate.py as a module (docs/ is not a package): every script's parser, by its docs/cli name."""
    spec = importlib.util.spec_from_file_location("cli_generate", ROOT / "docs" / "cli" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The reference folder, or skip when this checkout has none (a user's clone)."""
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"reference material not found at {REFERENCE_DIR} (only developer checkouts have it)")
    return REFERENCE_DIR


def load_fixture(reference_dir: Path, name: str) -> dict:
    """A reference fixture file (weights_only), or skip when this checkout lacks it."""
    path = reference_dir / "fixtures" / name
    if not path.exists():
        pytest.skip(f"{path} not found")
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="session")
def small_ref(reference_dir: Path) -> dict:
    """Weights, inputs and outputs of the original code for the small configuration."""
    return load_fixture(reference_dir, "small_ref.pt")


@pytest.fixture(scope="session")
def schedule_ref(reference_dir: Path) -> dict:
    """Every schedule coefficient of the original for T = 4 and T = 2."""
    return load_fixture(reference_dir, "schedule_ref.pt")


@pytest.fixture(scope="session")
def metric_ref(reference_dir: Path) -> dict:
    """Model outputs and what the original code reports for them (metric_ref_manifest.json)."""
    return load_fixture(reference_dir, "metric_ref.pt")


# --- Tiny trained-looking experiments for the inference tests (test.py, NIfTI mode, the demo notebook) ---------
# The tiny networks of the docs' phantom commands (configs/tiny.json), with T = 2.
TINY_MODEL = json.loads((ROOT / "configs" / "tiny.json").read_text())
TINY_MODEL_ARGS = tuple(word for key, value in TINY_MODEL.items()
                        for word in [f"--{key}", *map(str, value if isinstance(value, list) else [value])]) + \
    ("--num_timesteps", "2")
# A training recipe of those networks (train.py --config) for the benchmarks' smoke runs.
TINY_RECIPE = {**TINY_MODEL, "num_timesteps": 2, "batch_size": 4, "lr_g": 4e-4, "lr_d": 2e-4}
TINY_CONTRASTS = ("FLAIR", "T2", "T1", "T1ce")


def save_tiny_experiment(exp_dir: Path, seed: int = 0, epochs: tuple[int, ...] = (), ddp_prefix: bool = False,
                         with_content: bool = True, with_config: bool = True,
                         contrasts: tuple[str, ...] = TINY_CONTRASTS) -> dict:
    """Write a tiny randomly initialised (perturbed) experiment as train.py lays it out; return the states.

    Files: gen_diffusive_{1,2}.pth (seed), gen_diffusive_{1,2}_{E}.pth (seed + E) for each E in `epochs`,
    content.pth with the critic and attention projection, config.json. `ddp_prefix` stores keys as the published
    DDP files do (`module.`); `contrasts` is the order config.json records (three conditions, then the target).
    """
    key = (seed, tuple(epochs), ddp_prefix, with_content, with_config, tuple(contrasts))
    if key not in _TINY_EXPERIMENTS:
        built = Path(_TINY_CACHE.name) / str(len(_TINY_EXPERIMENTS))
        _TINY_EXPERIMENTS[key] = (built, _build_tiny_experiment(built, *key))
    built, states = _TINY_EXPERIMENTS[key]
    shutil.copytree(built, exp_dir, dirs_exist_ok=True)
    return states


# Each distinct tiny experiment is built once per session and copied to where a test wants it.
_TINY_CACHE = tempfile.TemporaryDirectory(prefix="mudiff-tiny-")
_TINY_EXPERIMENTS: dict[tuple, tuple[Path, dict]] = {}


def _build_tiny_experiment(exp_dir: Path, seed: int, epochs: tuple[int, ...], ddp_prefix: bool, with_content: bool,
                           with_config: bool, contrasts: tuple[str, ...]) -> dict:
    """save_tiny_experiment's files, built from scratch."""
    from backbones import build_critic, build_generators
    from utils.core.artifacts import save_config
    from utils.core.options import synthesis_parser

    args = synthesis_parser().parse_args(list(TINY_MODEL_ARGS) + ["--contrasts", *contrasts])
    exp_dir.mkdir(parents=True, exist_ok=True)
    states = {}
    for suffix, weight_seed in [("", seed)] + [(f"_{e}", seed + e) for e in epochs]:
        torch.manual_seed(weight_seed)
        for index, net in enumerate(build_generators(args), start=1):
            perturb_(net, weight_seed * 10 + index)
            state = {("module." if ddp_prefix else "") + k: v for k, v in net.state_dict().items()}
            torch.save(state, exp_dir / f"gen_diffusive_{index}{suffix}.pth")
            states[f"gen_diffusive_{index}{suffix}"] = state
    if with_content:
        critic, att_proj = build_critic(args)
        perturb_(critic, seed + 1000)
        torch.save({"epoch": 1, "disc_diffusive_2_dict": critic.state_dict(),
                    "att_conv_dict": att_proj.state_dict()}, exp_dir / "content.pth")
    if with_config:
        save_config(args, exp_dir, contrast_order=list(contrasts))
    return states


def save_tiny_slices(root: Path, count: int = 5, height: int = 60, width: int = 52, seed: int = 0) -> Path:
    """Write a preprocessed test split (<root>/test/<CONTRAST>.npy, masks, manifest.csv) of non-square slices."""
    import numpy as np

    folder = root / "test"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    brain = ((yy - height / 2) / (0.4 * height)) ** 2 + ((xx - width / 2) / (0.4 * width)) ** 2 < 1
    for name in TINY_CONTRASTS:
        slices = rng.random((count, height, width)).astype(np.float32) * brain
        np.save(folder / f"{name}.npy", slices)
    np.save(folder / "brain_mask.npy", np.repeat(brain[None], count, 0).astype(np.uint8))
    lesion = np.zeros((count, height, width), np.uint8)
    lesion[:, height // 3:height // 2, width // 4:width // 2] = 1
    np.save(folder / "lesion_mask.npy", lesion)
    rows = "".join(f"{i},case{i // 3:03d},{40 + i % 3}\n" for i in range(count))
    (folder / "manifest.csv").write_text("index,case_id,slice_index\n" + rows)
    return root


# --- Corrupt user files for the bad-input tests ---------------------------------------------------------------
NIFTI_DAMAGE = ("truncated", "empty", "nan_affine", "zero_affine")


def damage_nifti(path: Path, how: str) -> None:
    """Spoil a NIfTI file in place, as a broken download or a careless converter would.

    `how`: cut its stored bytes in half, empty it, or give its header a NaN or an all-zero affine (sform; qform off).
    """
    import gzip
    import io

    import nibabel as nib

    raw = path.read_bytes()
    zipped = raw[:2] == b"\x1f\x8b"
    data = gzip.decompress(raw) if zipped else raw
    if how == "truncated":
        # Cut the stored bytes (the compressed stream of a .nii.gz), so gzip or nibabel meets the end early.
        path.write_bytes(raw[: len(raw) // 2] if zipped else data[: 352 + (len(data) - 352) // 2])
        return
    if how == "empty":
        path.write_bytes(b"")
        return
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(data[:348]))
    rows = {"nan_affine": ([float("nan"), 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]),
            "zero_affine": ([0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0])}[how]
    for name, row in zip(("srow_x", "srow_y", "srow_z"), rows):
        header[name] = row
    header["sform_code"], header["qform_code"] = 1, 0
    data = header.binaryblock + data[348:]
    path.write_bytes(gzip.compress(data) if zipped else data)
