"""train.py and its pieces on the CPU with a tiny configuration (64×64 slices, narrow networks, 8 training slices)."""
from __future__ import annotations

import copy
import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from bench_common import reference_step  # bench/ is on sys.path through conftest
from conftest import TINY_MODEL_ARGS, train_cli

import utils.model.diffusion as diffusion
import utils.train.loop as loop
import utils.train.steps as training
from backbones import build_generators
from utils.core.artifacts import NETWORK_NAMES
from utils.core.errors import UserError, run_cli
from utils.core.options import parse_with_config, train_parser
from utils.core.runtime import seed_everything
from utils.data.slices import SliceDataset
from utils.model.checkpoint import CheckpointError, load_state, read_checkpoint
from utils.model.diffusion import Diffusion_Coefficients, Posterior_Coefficients
from utils.train.distributed import free_port, plan_launch
from utils.train.ema import EMA
from utils.train.plan import prepare
from utils.train.steps import LOSS_NAMES, Batch, Diffusion, build_networks, build_optimisers, train_step
from utils.train.validation import validate, validation_batches

ROOT = Path(__file__).resolve().parents[1]
CONTRASTS = ("FLAIR", "T2", "T1", "T1ce")
TRAIN_SLICES, VAL_SLICES = 8, 3
TINY = [*TINY_MODEL_ARGS, "--batch_size", "2", "--num_workers", "0", "--device", "cpu"]
README_COMMAND = ("--image_size 256 --exp exp_brats --num_channels 1 --num_channels_dae 64 --ch_mult 1 2 4 "
                  "--num_timesteps 2 --num_res_blocks 2 --batch_size 3 --num_epoch 30 --ngf 64 --embedding_type "
                  "positional --ema_decay 0.999 --r1_gamma 1. --z_emb_dim 256 --lr_d 1e-4 --lr_g 1.6e-4 "
                  "--lazy_reg 10 --num_process_per_node 3").split()
# Runs A (two epochs at once) and B (one epoch, stop, resume) share these options; EMA on so that its state is
# part of what resuming must restore.
RUN_AB = ["--num_epoch", "2", "--lazy_reg", "3", "--use_ema", "--ema_decay", "0.9"]


def make_dataset(root: Path, size: int = 64, counts: dict[str, int] | None = None) -> Path:
    """Write the preprocessed layout: <root>/<split>/<CONTRAST>.npy in [0, 1], masks and manifest.csv."""
    counts = counts or {"train": TRAIN_SLICES, "val": VAL_SLICES}
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for split, n in counts.items():
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        blobs = np.stack([np.exp(-((yy - 0.5) ** 2 + (xx - 0.45 + 0.02 * i) ** 2) * 9) for i in range(n)])
        for k, name in enumerate(CONTRASTS):
            noisy = blobs * (0.4 + 0.15 * k) + 0.05 * rng.random((n, size, size))
            np.save(folder / f"{name}.npy", np.clip(noisy, 0, 1).astype(np.float32))
        np.save(folder / "brain_mask.npy", (blobs > 0.2).astype(np.uint8))
        np.save(folder / "lesion_mask.npy", (blobs > 0.8).astype(np.uint8))
        with open(folder / "manifest.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["index", "case_id", "slice_index"])
            writer.writerows([i, f"case{i // 4}", i % 4] for i in range(n))
    return root


def argv(data: Path, out: Path, exp: str, *extra: str) -> list[str]:
    """Tiny-configuration command line."""
    return [*TINY, "--input_path", str(data), "--output_path", str(out), "--exp", exp, *extra]


def tiny_args(data: Path, out: Path) -> Namespace:
    """Parsed tiny options with the resolved contrast order (as prepare leaves them)."""
    args = train_parser().parse_args(argv(data, out, "unused"))
    args.contrasts, args.target = list(CONTRASTS), CONTRASTS[3]
    return args


def subprocess_env() -> dict[str, str]:
    """Environment for child Python processes: the repository importable, one thread each."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def states_equal(a: dict, b: dict) -> bool:
    """Bitwise equality of two state dicts."""
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The tiny preprocessed dataset."""
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def run_a(data, tmp_path_factory, one_thread) -> dict:
    """Run A: two epochs in one go, recording the global steps on which the R1 penalty runs."""
    out = tmp_path_factory.mktemp("out")
    r1_steps: list[int] = []
    current = {"step": -1}
    real_step, real_r1 = train_step, training.r1_penalty

    def counting_step(*a, **k):
        current["step"] = a[-1]
        return real_step(*a, **k)

    def counting_r1(*a, **k):
        r1_steps.append(current["step"])
        return real_r1(*a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "train_step", counting_step)
        mp.setattr(training, "r1_penalty", counting_r1)
        train_cli(argv(data, out, "a", *RUN_AB))
    return {"dir": out / "a", "out": out, "r1_steps": r1_steps}


def test_an_epoch_writes_every_output_file(run_a):
    """content.pth, both generator files (latest and per epoch), config, logs, curves and one grid per epoch."""
    folder = run_a["dir"]
    expected = {"content.pth", "config.json", "gen_diffusive_1.pth", "gen_diffusive_2.pth", "gen_diffusive_1_2.pth",
                "gen_diffusive_2_2.pth", "gen_diffusive_1_best.pth", "gen_diffusive_2_best.pth", "log.csv",
                "val.csv", "curves.png", "sample_discrete_epoch_1.png", "sample_discrete_epoch_2.png"}
    assert {p.name for p in folder.iterdir()} == expected  # nothing else, no temporary files left behind
    for png in ("curves.png", "sample_discrete_epoch_1.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((folder / "config.json").read_text())
    assert config["contrasts"] == list(CONTRASTS) and config["target"] == "T1ce"
    assert config["contrast_order"] == list(CONTRASTS) and config["image_size"] == 64
    assert config["num_channels_dae"] == 16 and config["world_size"] == 1
    assert config["normalize"] == "percentile"  # arrays without preprocess.json: the original's scale
    assert config["train_slice_range"] == [0, 3]  # manifest.csv's axial indices (no preprocess.json to say)
    content = read_checkpoint(folder / "content.pth")
    assert {"epoch", "global_step", "args", "gen_diffusive_1_dict", "gen_diffusive_2_dict", "disc_diffusive_2_dict",
            "att_conv_dict", "optimizer_gen_diffusive_1", "optimizer_gen_diffusive_2", "optimizer_disc_diffusive_2",
            "scheduler_gen_diffusive_1", "scheduler_gen_diffusive_2", "scheduler_disc_diffusive_2",
            "ema_gen_diffusive_1", "ema_gen_diffusive_2", "rng_states", "data_order"} <= content.keys()
    assert content["epoch"] == 2 and content["global_step"] == 2 * TRAIN_SLICES // 2
    val = read_rows(folder / "val.csv")
    assert [r["epoch"] for r in val] == ["1", "2"]
    assert all(math.isfinite(float(r[k])) for r in val for k in ("psnr", "ssim", "l1"))


def test_generator_files_are_plain_state_dicts_with_ema_weights(run_a, data):
    """gen_diffusive_*.pth: no `module.` prefix, load strictly, hold the EMA weights (the original's swap)."""
    folder = run_a["dir"]
    content = read_checkpoint(folder / "content.pth")
    args = tiny_args(data, run_a["out"])
    nets = build_networks(args, torch.device("cpu"))
    for index, net in ((1, nets.gen1), (2, nets.gen2)):
        latest = read_checkpoint(folder / f"gen_diffusive_{index}.pth")
        assert not any(k.startswith("module.") for k in latest)
        load_state(net, latest, f"gen {index}")
        assert states_equal(latest, read_checkpoint(folder / f"gen_diffusive_{index}_2.pth"))
        raw = content[f"gen_diffusive_{index}_dict"]
        shadow = content[f"ema_gen_diffusive_{index}"]["shadow"]
        assert shadow and all(torch.equal(latest[k], v) for k, v in shadow.items())
        assert not states_equal(latest, raw)


def test_losses_are_finite_and_weights_change(run_a, data):
    """Every logged loss term is finite; generators and critic moved away from their initial weights; att_conv not."""
    rows = read_rows(run_a["dir"] / "log.csv")
    assert len(rows) == 2 * TRAIN_SLICES // 2
    assert [int(r["global_step"]) for r in rows] == list(range(len(rows)))
    for row in rows:
        for name in LOSS_NAMES:
            if name != "r1_penalty":
                assert math.isfinite(float(row[name])), (name, row)
    args = tiny_args(data, run_a["out"])
    seed_everything(args.seed)
    initial = build_networks(args, torch.device("cpu"))
    content = read_checkpoint(run_a["dir"] / "content.pth")
    for name, net in initial.named().items():
        trained = content[f"{name}_dict"]
        if name == "att_conv":
            assert states_equal(trained, net.state_dict())  # never trained, as in the original
        else:
            changed = [k for k, v in net.state_dict().items() if not torch.equal(v, trained[k])]
            assert len(changed) > len(trained) // 2, name


def test_r1_penalty_runs_on_the_steps_lazy_reg_says(run_a):
    """--lazy_reg 3 over 8 steps: the penalty runs at global steps 0, 3, 6 and only there (and is logged there)."""
    assert run_a["r1_steps"] == [0, 3, 6]
    rows = read_rows(run_a["dir"] / "log.csv")
    logged = [int(r["global_step"]) for r in rows if r["r1_penalty"] != ""]
    assert logged == [0, 3, 6]
    assert all(float(r["r1_penalty"]) >= 0 for r in rows if r["r1_penalty"] != "")


def test_one_epoch_then_resume_equals_two_epochs(run_a, data, one_thread):
    """Run B stops after epoch 1 and resumes: weights, optimisers, EMA, schedulers and logs equal run A's."""
    out = run_a["out"]
    train_cli(argv(data, out, "b", *RUN_AB, "--stop_after_epochs", "1"))
    first = read_checkpoint(out / "b" / "content.pth")
    assert first["epoch"] == 1 and not (out / "b" / "sample_discrete_epoch_2.png").exists()
    train_cli(argv(data, out, "b", *RUN_AB, "--resume"))
    a, b = read_checkpoint(run_a["dir"] / "content.pth"), read_checkpoint(out / "b" / "content.pth")
    assert a["epoch"] == b["epoch"] == 2 and a["global_step"] == b["global_step"]
    for name in NETWORK_NAMES:
        assert states_equal(a[f"{name}_dict"], b[f"{name}_dict"]), name
    for key in ("ema_gen_diffusive_1", "ema_gen_diffusive_2"):
        assert states_equal(a[key]["shadow"], b[key]["shadow"]), key
    for key in ("optimizer_gen_diffusive_1", "optimizer_disc_diffusive_2"):
        for slot, state in a[key]["state"].items():
            assert states_equal(state, b[key]["state"][slot]), key
    assert a["scheduler_gen_diffusive_1"] == b["scheduler_gen_diffusive_1"]
    assert (run_a["dir"] / "log.csv").read_text() == (out / "b" / "log.csv").read_text()
    rows_a, rows_b = read_rows(run_a["dir"] / "val.csv"), read_rows(out / "b" / "val.csv")
    assert [{k: r[k] for k in ("psnr", "ssim", "l1")} for r in rows_a] == \
        [{k: r[k] for k in ("psnr", "ssim", "l1")} for r in rows_b]


KILLER = """
import os, signal, sys
import torch
real_save = torch.save

def dying_save(obj, f, *args, **kwargs):
    # Write content.pth's temporary file halfway, then die as a killed job would (no cleanup code runs).
    real_save(obj, f, *args, **kwargs)
    if os.path.basename(str(f)).startswith(".content."):
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)
        os.kill(os.getpid(), signal.SIGKILL)

torch.save = dying_save
from utils.core.errors import run_cli
from utils.core.options import parse_with_config, train_parser
from utils.train.launch import run_training
sys.exit(run_cli(lambda argv: run_training(parse_with_config(train_parser(), argv)), sys.argv[1:]))
"""


def test_kill_while_writing_content_leaves_the_previous_checkpoint(run_a, data, tmp_path):
    """SIGKILL halfway through writing content.pth (epoch 3 of a resumed copy of run A): epoch 2's stays loadable."""
    exp = tmp_path / "out"
    shutil.copytree(run_a["dir"], exp / "k")
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = subprocess.run([sys.executable, str(script), *argv(data, exp, "k", *RUN_AB, "--num_epoch", "3", "--resume")],
                          cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    leftovers = list((exp / "k").glob(".content.*"))
    assert leftovers, "the simulated kill did not happen while content.pth was being written"
    with pytest.raises(CheckpointError):
        read_checkpoint(leftovers[0])
    survived = read_checkpoint(exp / "k" / "content.pth")
    original = read_checkpoint(run_a["dir"] / "content.pth")
    assert survived["epoch"] == 2
    assert states_equal(survived["gen_diffusive_1_dict"], original["gen_diffusive_1_dict"])


DUMPER = """
import sys
import torch
import utils.train.loop as loop
from utils.core.errors import run_cli
from utils.core.options import parse_with_config, train_parser
from utils.train.launch import run_training

real_run = loop.Trainer.run

def run_and_dump(self):
    # Each rank saves what it holds at the end, so the test can compare the ranks.
    real_run(self)
    torch.save({name: net.state_dict() for name, net in self.nets.named().items()},
               self.plan.exp_dir / f"rank{self.layout.rank}.pt")

loop.Trainer.run = run_and_dump
if __name__ == "__main__":
    sys.exit(run_cli(lambda argv: run_training(parse_with_config(train_parser(), argv)), sys.argv[1:]))
"""


def check_ranks_identical(folder: Path) -> None:
    """Both ranks hold rank 0's saved weights, bit for bit."""
    rank0 = torch.load(folder / "rank0.pt", weights_only=True)
    rank1 = torch.load(folder / "rank1.pt", weights_only=True)
    content = read_checkpoint(folder / "content.pth")
    for name in NETWORK_NAMES:
        assert states_equal(rank0[name], rank1[name]), name
        assert states_equal(rank0[name], content[f"{name}_dict"]), name


@pytest.mark.parametrize("launcher", ["spawn", "torchrun"])
def test_two_gloo_processes_keep_identical_weights(launcher, data, tmp_path, one_thread):
    """--num_process_per_node 2 (spawn) and torchrun: identical weights on both ranks; validation over the whole set."""
    script = tmp_path / "dumper.py"
    script.write_text(DUMPER)
    port = str(free_port())
    options = argv(data, tmp_path, "g", "--num_epoch", "1")
    if launcher == "spawn":
        command = [sys.executable, str(script), *options, "--num_process_per_node", "2", "--port_num", port]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
                   str(script), *options]
    proc = subprocess.run(command, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "g"
    check_ranks_identical(folder)
    assert json.loads((folder / "config.json").read_text())["world_size"] == 2
    rows = read_rows(folder / "log.csv")
    assert len(rows) == TRAIN_SLICES // 2 // 2  # each of the two ranks takes half the slices per epoch
    # Validation is one number over all 3 slices whatever the process count: recompute it in one process.
    args = tiny_args(data, tmp_path)
    nets = build_networks(args, torch.device("cpu"))
    content = read_checkpoint(folder / "content.pth")
    for name, net in nets.named().items():
        load_state(net, content[f"{name}_dict"], name)
    diff = Diffusion(Diffusion_Coefficients(args), Posterior_Coefficients(args), args.num_timesteps)
    val_set = SliceDataset(data, "val", CONTRASTS, 64)
    scores, _ = validate(nets, val_set, validation_batches(VAL_SLICES, 2, 0, 1), diff, args, torch.device("cpu"))
    logged = read_rows(folder / "val.csv")
    assert len(logged) == 1
    for name in ("psnr", "ssim", "l1"):
        assert float(logged[0][name]) == pytest.approx(scores[name], rel=1e-9), name


def test_validation_batches_cover_every_slice_once():
    """Whatever the process count, the ranks' validation batches partition the set."""
    for world in (1, 2, 3, 5):
        shares = [validation_batches(11, 3, rank, world) for rank in range(world)]
        flat = sorted(i for share in shares for batch in share for i in batch)
        assert flat == list(range(11)), world


def test_train_step_equals_the_original_iteration(data, tmp_path, one_thread):
    """train_step (critic step without generator autograd) gives the original's update and losses, bit for bit."""
    args = tiny_args(data, tmp_path)
    args.lazy_reg = 2
    seed_everything(0)
    nets = build_networks(args, torch.device("cpu"))
    # Perturb the zero-initialised layers so that every path carries signal.
    with torch.no_grad():
        for net in (nets.gen1, nets.gen2, nets.critic):
            for p in net.parameters():
                p.add_(0.02 * torch.randn_like(p))
    ref_nets = copy.deepcopy(nets)
    ref_nets.att_proj.requires_grad_(True)  # the original's att_conv required grad (and was never stepped)
    opts, ref_opts = build_optimisers(nets, args), build_optimisers(ref_nets, args)
    diff = Diffusion(Diffusion_Coefficients(args), Posterior_Coefficients(args), args.num_timesteps)
    items = [SliceDataset(data, "train", CONTRASTS, 64)[i] for i in range(2)]
    batch = Batch(*(torch.stack([item[k] for item in items]) for k in range(4)))
    for step in range(3):  # R1 on steps 0 and 2, not on 1
        torch.manual_seed(100 + step)
        ours = train_step(nets, opts, batch, diff, args, step)
        torch.manual_seed(100 + step)
        theirs = torch.tensor(reference_step(
            diffusion, (ref_nets.gen1, ref_nets.gen2, ref_nets.critic, ref_nets.att_proj),
            (ref_opts.gen1, ref_opts.gen2, ref_opts.critic), (batch.cond1, batch.cond2, batch.cond3, batch.target),
            diff.coeff, diff.pos_coeff, args, step))
        assert torch.equal(ours.isnan(), theirs.isnan()) and bool(ours.isnan()[2]) == (step % 2 == 1)
        assert torch.equal(ours.nan_to_num(), theirs.nan_to_num()), step
    for name, net in nets.named().items():
        assert states_equal(net.state_dict(), ref_nets.named()[name].state_dict()), name


def random_steps_with_ema(net: torch.nn.Module, ema: EMA, steps: int) -> list[dict]:
    """Move every parameter randomly (with a gradient, as after a step) and update the EMA; the weights per step."""
    history = []
    for _ in range(steps):
        for p in net.parameters():
            p.grad = torch.ones_like(p)
            p.data.add_(torch.randn_like(p))
        history.append({k: v.clone() for k, v in net.state_dict().items()})
        ema.update()
    return history


def test_ema_follows_the_original_update():
    """Average starts at the weights after the first step, then ema <- d·ema + (1 − d)·p; swap and restore."""
    net = torch.nn.Linear(3, 2)
    ema = EMA(net, 0.75)
    history = random_steps_with_ema(net, ema, 3)
    expected = {}
    for k in history[0]:
        value = history[0][k].clone()
        for snapshot in history:
            value = value * 0.75 + snapshot[k] * 0.25
        expected[k] = value
        assert torch.allclose(ema.shadow[k], value, atol=1e-6)
    current = {k: v.clone() for k, v in net.state_dict().items()}
    with ema.swapped():
        assert all(torch.equal(v, ema.shadow[k]) for k, v in net.state_dict().items())
    assert states_equal(current, net.state_dict())
    twin = EMA(net, 0.5)
    twin.load_state_dict(ema.state_dict())
    assert twin.decay == 0.75 and states_equal(twin.averaged_state_dict(), ema.averaged_state_dict())


def test_ema_warmup_uses_the_growing_decay_and_survives_a_reload():
    """--ema_warmup: update n folds in with min(decay, (1+n)/(10+n)); the count is saved and restored."""
    net = torch.nn.Linear(3, 2)
    ema = EMA(net, 0.99, warmup=True)
    history = random_steps_with_ema(net, ema, 4)
    for k in history[0]:
        value = history[0][k].clone()
        for n, snapshot in enumerate(history, start=1):
            decay = min(0.99, (1 + n) / (10 + n))
            value = value * decay + snapshot[k] * (1 - decay)
        assert torch.allclose(ema.shadow[k], value, atol=1e-6)
    assert ema.current_decay() == (1 + 5) / (10 + 5)
    twin = EMA(net, 0.99, warmup=True)
    twin.load_state_dict(ema.state_dict())
    assert twin.updates == 4 and twin.current_decay() == ema.current_decay()
    legacy = {k: v for k, v in ema.state_dict().items() if k != "updates"}
    twin.load_state_dict(legacy)
    assert twin.current_decay() == 0.99


def test_lr_warmup_shrinks_the_first_updates_and_leaves_the_schedule(data, tmp_path, one_thread):
    """--lr_warmup_steps 4: step 0 moves every weight a quarter as far as without it (Adam's first update is
    proportional to the rate); the optimisers' rates are the schedule's again afterwards."""
    assert [training.warmup_factor(n, 4) for n in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert training.warmup_factor(0, 0) == 1.0
    args = tiny_args(data, tmp_path)
    seed_everything(0)
    plain = build_networks(args, torch.device("cpu"))
    warm = copy.deepcopy(plain)
    before = {name: copy.deepcopy(net.state_dict()) for name, net in plain.named().items()}
    items = [SliceDataset(data, "train", CONTRASTS, 64)[i] for i in range(2)]
    batch = Batch(*(torch.stack([item[k] for item in items]) for k in range(4)))
    diff = Diffusion(Diffusion_Coefficients(args), Posterior_Coefficients(args), args.num_timesteps)
    warm_args = Namespace(**{**vars(args), "lr_warmup_steps": 4})
    for nets, step_args in ((plain, args), (warm, warm_args)):
        opts = build_optimisers(nets, step_args)
        torch.manual_seed(5)
        train_step(nets, opts, batch, diff, step_args, 0)
        assert [opt.param_groups[0]["lr"] for opt in (opts.gen1, opts.gen2, opts.critic)] == [
            args.lr_g, args.lr_g, args.lr_d]
    for name in ("gen_diffusive_1", "gen_diffusive_2", "disc_diffusive_2"):
        start, full, quarter = before[name], plain.named()[name].state_dict(), warm.named()[name].state_dict()
        moved = torch.cat([(full[k] - start[k]).double().flatten() for k in start if start[k].is_floating_point()])
        moved_warm = torch.cat([(quarter[k] - start[k]).double().flatten() for k in start
                                if start[k].is_floating_point()])
        assert moved.norm() > 0
        assert abs(moved_warm.norm() / moved.norm() - 0.25) < 0.01, name


def test_lesion_l1_weight_counts_lesion_pixels_more():
    """--lesion_l1_weight W: the L1 term is mean((1 + W lesion)|x0 - x|); W = 0 is plain L1 (the original)."""
    target = torch.rand(2, 1, 8, 8)
    x0 = torch.rand(2, 1, 8, 8, requires_grad=True)
    lesion = torch.zeros(2, 1, 8, 8)
    lesion[:, :, 2:5, 3:6] = 1
    batch = Batch(target, target, target, target, lesion=lesion)
    assert torch.equal(training.l1_term(x0, batch, 0.0), F.l1_loss(x0, target))
    weighted = training.l1_term(x0, batch, 3.0)
    diff = (x0 - target).abs()
    expected = (diff.sum() + 3 * diff[lesion > 0].sum()) / diff.numel()
    assert torch.allclose(weighted, expected)
    (grad,) = torch.autograd.grad(weighted, x0)
    assert torch.allclose(grad[lesion > 0].abs(), torch.full_like(grad[lesion > 0], 4 / diff.numel()))
    assert torch.allclose(grad[lesion == 0].abs(), torch.full_like(grad[lesion == 0], 1 / diff.numel()))


def test_training_with_lesion_weight_feeds_the_lesion_masks(data, tmp_path, monkeypatch, one_thread):
    """With --lesion_l1_weight the loader gives each batch its slices' lesion_mask.npy; without it, none."""
    seen: list[tuple[float, float | None]] = []
    real_l1 = training.l1_term

    def recording_l1(x0, batch, weight):
        seen.append((weight, None if batch.lesion is None else float(batch.lesion.sum())))
        return real_l1(x0, batch, weight)

    monkeypatch.setattr(training, "l1_term", recording_l1)
    train_cli(argv(data, tmp_path, "w", "--num_epoch", "1", "--lesion_l1_weight", "2"))
    lesion_pixels = np.load(data / "train" / "lesion_mask.npy").sum()
    assert seen and all(weight == 2.0 for weight, _ in seen)
    assert sum(pixels for _, pixels in seen) / 2 == lesion_pixels  # both generators' terms, every slice once
    assert json.loads((tmp_path / "w" / "config.json").read_text())["lesion_l1_weight"] == 2.0
    seen.clear()
    train_cli(argv(data, tmp_path, "p", "--num_epoch", "1"))
    assert seen and all(weight == 0.0 and pixels is None for weight, pixels in seen)


def test_the_data_scale_is_recorded_and_must_be_one(data, tmp_path):
    """train.py keeps the --normalize of its data (preprocess.json) with the options; mixed splits are refused."""
    copy_ = shutil.copytree(data, tmp_path / "data")
    for split in ("train", "val"):
        (copy_ / split / "preprocess.json").write_text(json.dumps({"normalize": "median"}))
    args = train_parser().parse_args(argv(copy_, tmp_path / "out", "m"))
    prepare(args)
    assert args.normalize == "median"
    (copy_ / "val" / "preprocess.json").unlink()
    with pytest.raises(UserError, match="train with --normalize median, val with --normalize percentile"):
        prepare(train_parser().parse_args(argv(copy_, tmp_path / "out", "m")))


def test_readme_command_passes_dry_run(tmp_path, capsys, monkeypatch):
    """The README's training command, unchanged, on a CPU-only machine: plan printed, nothing trained or written."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = make_dataset(tmp_path / "data", size=256, counts={"train": 9, "val": 1})
    out = tmp_path / "results"
    train_cli([*README_COMMAND, "--input_path", str(data), "--output_path", str(out), "--dry_run"])
    plan = capsys.readouterr().out
    assert "processes  3 (spawn, device cpu, backend gloo)" in plan
    assert "batch      3 per process, 9 per step" in plan
    assert "steps      1 per epoch, epochs 1..30" in plan and "T = 2" in plan and "R1 every 10 steps" in plan
    assert "disc_diffusive_2 27,736,705" in plan  # the critic of the README configuration (ARCH_SPEC §6.1)
    assert not out.exists()


@pytest.fixture()
def bad_data(data, tmp_path) -> Path:
    """A writable copy of the tiny dataset to break."""
    return Path(shutil.copytree(data, tmp_path / "bad"))


def test_bad_inputs_fail_with_one_line(data, bad_data, tmp_path, run_a, monkeypatch):
    """Each mistake stops before any training with a one-line UserError that names the problem."""
    out = tmp_path / "out"

    def fails(options: list[str], *words: str) -> None:
        with pytest.raises(UserError) as err:
            train_cli(options)
        message = str(err.value)
        assert "\n" not in message
        for word in words:
            assert word in message, message

    fails(argv(tmp_path / "nowhere", out, "x"), "nowhere", "does not exist")
    (bad_data / "val" / "T1.npy").unlink()
    fails(argv(bad_data, out, "x"), "has no T1.npy")
    np.save(bad_data / "val" / "T1.npy", np.zeros((2, 64, 64), np.float32))
    fails(argv(bad_data, out, "x"), "disagree")
    big = make_dataset(tmp_path / "big", size=96, counts={"train": 2, "val": 1})
    fails(argv(big, out, "x"), "96 pixels", "--image_size 64")
    fails(argv(data, out, "x", "--batch_size", "9"), "--batch_size 9", "8 training slices")
    fails(argv(data, out, "x", "--num_process_per_node", "3", "--batch_size", "4"), "3 training slices")
    fails(argv(data, out, "x", "--resume"), "--resume", "content.pth does not exist")
    fails(argv(data, run_a["out"], "a", "--resume", "--ngf", "8", *RUN_AB), "--ngf 4 (now 8)")
    fails(argv(data, run_a["out"], "a", "--resume", "--num_timesteps", "4", *RUN_AB), "--num_timesteps 2")
    fails(argv(data, run_a["out"], "a", *RUN_AB[:2], "--resume"), "already completed 2 of --num_epoch 2")
    stamped = tmp_path / "stamped"
    shutil.copytree(run_a["out"] / "a", stamped / "a")
    content = torch.load(stamped / "a" / "content.pth", weights_only=True)
    torch.save({**content, "format": "other/9"}, stamped / "a" / "content.pth")
    fails(argv(data, stamped, "a", *RUN_AB, "--num_epoch", "3", "--resume"), "'other/9'", "content.pth")
    fails(argv(data, run_a["out"], "a"), "already holds a training run", "--resume", "--overwrite")
    fails(argv(data, out, "x", "--lazy_reg", "0"), "--lazy_reg")
    fails(argv(data, out, "x", "--ema_warmup"), "--ema_warmup", "--use_ema")
    fails(argv(data, out, "x", "--lr_warmup_steps", "-1"), "--lr_warmup_steps", "number of steps")
    fails(argv(data, out, "x", "--lesion_l1_weight", "-1"), "--lesion_l1_weight", "plain L1")
    no_lesion = Path(shutil.copytree(data, tmp_path / "no_lesion"))
    (no_lesion / "train" / "lesion_mask.npy").unlink()
    fails(argv(no_lesion, out, "x", "--lesion_l1_weight", "2"), "lesion_mask.npy", "seg")
    fails([*argv(data, out, "x"), "--device", "tpu"], "'tpu'")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fails([*argv(data, out, "x"), "--device", "cuda"], "no CUDA GPU")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    fails([*argv(data, out, "x"), "--device", "cuda:1"], "cuda:1", "only 1")
    fails([*argv(data, out, "x"), "--device", "cuda", "--num_process_per_node", "3", "--batch_size", "1"],
          "3 processes", "only 1")
    assert not out.exists()


def scripted_validation(monkeypatch, psnrs: list[float], ssims: list[float] | None = None) -> None:
    """Make train.py's validation report the given PSNRs (and SSIMs), one per epoch, in order."""
    queue = list(psnrs)
    ssim_queue = list(ssims or [0.5] * len(psnrs))

    def fake_validate(*args, **kwargs):
        return {"psnr": queue.pop(0), "ssim": ssim_queue.pop(0), "l1": 0.1}, {}

    monkeypatch.setattr(loop, "validate", fake_validate)


def test_best_checkpoint_follows_validation_psnr_across_a_resume(data, tmp_path, monkeypatch, one_thread):
    """_best files hold the epoch with the highest validation PSNR, val.csv names it, and --resume remembers it."""
    out, options = tmp_path / "out", ["--num_epoch", "4", "--save_ckpt_every", "1"]
    scripted_validation(monkeypatch, [20.0, 25.0, 22.0])
    train_cli(argv(data, out, "best", *options, "--stop_after_epochs", "3"))
    folder = out / "best"
    assert [r["best_epoch"] for r in read_rows(folder / "val.csv")] == ["1", "2", "2"]
    for index in (1, 2):
        best = read_checkpoint(folder / f"gen_diffusive_{index}_best.pth")
        assert states_equal(best, read_checkpoint(folder / f"gen_diffusive_{index}_2.pth"))
        assert not states_equal(best, read_checkpoint(folder / f"gen_diffusive_{index}_3.pth"))
    scripted_validation(monkeypatch, [24.0])  # below epoch 2's 25 dB: the best stays epoch 2 after resuming
    train_cli(argv(data, out, "best", *options, "--resume"))
    assert [r["best_epoch"] for r in read_rows(folder / "val.csv")] == ["1", "2", "2", "2"]
    assert states_equal(read_checkpoint(folder / "gen_diffusive_1_best.pth"),
                        read_checkpoint(folder / "gen_diffusive_1_2.pth"))


def test_best_metric_ssim_picks_the_epoch_of_highest_ssim(data, tmp_path, monkeypatch, one_thread):
    """--best_metric ssim: the _best files follow validation SSIM, not PSNR; a resume cannot switch the metric."""
    out, options = tmp_path / "out", ["--num_epoch", "3", "--save_ckpt_every", "1", "--best_metric", "ssim"]
    scripted_validation(monkeypatch, [25.0, 20.0], [0.6, 0.8])
    train_cli(argv(data, out, "ssim", *options, "--stop_after_epochs", "2"))
    folder = out / "ssim"
    assert [r["best_epoch"] for r in read_rows(folder / "val.csv")] == ["1", "2"]
    assert states_equal(read_checkpoint(folder / "gen_diffusive_1_best.pth"),
                        read_checkpoint(folder / "gen_diffusive_1_2.pth"))
    with pytest.raises(UserError, match="--best_metric ssim"):
        train_cli(argv(data, out, "ssim", *options[:4], "--resume"))


def test_config_file_sets_options_and_the_command_line_wins(data, tmp_path):
    """--config FILE fills options (checked like flags); an option on the command line overrides the file."""
    config = tmp_path / "recipe.json"
    config.write_text(json.dumps({"lr_g": 4e-4, "use_ema": True, "ema_decay": 0.9, "ch_mult": [1, 2],
                                  "num_epoch": 3}))
    parsed = parse_with_config(train_parser(), ["--config", str(config), "--num_epoch", "5"])
    assert (parsed.lr_g, parsed.use_ema, parsed.ema_decay, parsed.ch_mult, parsed.num_epoch) == \
        (4e-4, True, 0.9, [1, 2], 5)
    assert parse_with_config(train_parser(), []).lr_g == 1.6e-4  # no file: the original defaults
    for bad, words in [({"lr_gg": 1}, ['"lr_gg" is not an option']), ({"use_ema": "yes"}, ["true or false"]),
                       ({"progressive": "x"}, ["'x' is not one of"]), ({"ch_mult": 2}, ["must be a list"]),
                       ([1, 2], ["JSON object"])]:
        config.write_text(json.dumps(bad))
        with pytest.raises(UserError) as err:
            train_cli(argv(data, tmp_path, "x", "--config", str(config)))
        assert all(w in str(err.value) for w in words) and str(config) in str(err.value)
    with pytest.raises(UserError, match="no such file"):
        train_cli(argv(data, tmp_path, "x", "--config", str(tmp_path / "missing.json")))


def test_command_line_errors_print_one_line(data, tmp_path, capsys):
    """Through the script's wrapper: exit status 2 and `error: ...` on one line, no traceback."""
    status = run_cli(train_cli, argv(data, tmp_path, "x", "--batch_size", "99"))
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: ") and err.count("\n") == 1


def test_torchrun_environment_is_detected(monkeypatch):
    """RANK/WORLD_SIZE/LOCAL_RANK from torchrun take precedence over the original's process flags."""
    for name, value in {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                        "GROUP_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(name, value)
    plan = plan_launch(1, 3, 0, "127.0.0.1", "6021")
    assert (plan.mode, plan.world_size, plan.local_world_size, plan.node_rank, plan.port) == ("torchrun", 4, 2, 1,
                                                                                            29500)


def test_the_authors_extra_epoch_and_files_their_test_py_reads(run_a, data, tmp_path, one_thread):
    """The original ran --num_epoch + 1 epochs, the last at the schedule's floor (1e-5): resuming a finished run
    with --num_epoch one higher (the README's recipe) trains that epoch at 1e-5, the earlier ones as before.
    --ddp_keys writes generator files the original test.py loads: it cuts 7 characters off every key and loads
    with strict=False, which must then miss nothing."""
    shutil.copytree(run_a["dir"], tmp_path / "c")
    with pytest.warns(UserWarning, match="--num_epoch changed from 2 to 3"):
        train_cli(argv(data, tmp_path, "c", *RUN_AB, "--num_epoch", "3", "--resume", "--ddp_keys"))
    rates: dict[int, set] = {}
    for row in read_rows(tmp_path / "c" / "log.csv"):
        rates.setdefault(int(row["epoch"]), set()).add((float(row["lr_g"]), float(row["lr_d"])))
    assert rates[1] == {(1.6e-4, 1e-4)} and len(rates[2]) == 1
    assert next(iter(rates[2]))[0] == pytest.approx(training.LR_ETA_MIN + (1.6e-4 - training.LR_ETA_MIN) / 2)
    assert rates[3] == {(training.LR_ETA_MIN, training.LR_ETA_MIN)}
    args = tiny_args(data, tmp_path)
    for index, net in enumerate(build_generators(args), start=1):
        state = read_checkpoint(tmp_path / "c" / f"gen_diffusive_{index}_3.pth")
        assert all(k.startswith("module.") for k in state)
        result = net.load_state_dict({k[7:]: v for k, v in state.items()}, strict=False)
        assert not result.missing_keys and not result.unexpected_keys
        assert states_equal(net.state_dict(), {k[7:]: v for k, v in state.items()})
