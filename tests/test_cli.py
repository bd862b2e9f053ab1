"""One command-line language: every option parses under both spellings and its older names, --help shows one
spelling with the default, and every script's --help runs (through the script itself, in this process)."""
from __future__ import annotations

import argparse
import importlib
import io
import runpy
import shlex
import sys
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from conftest import cli_generator

from demo import make_sample_data, quickstart
from utils.brasyn.options import brasyn_parser
from utils.core.options import synthesis_parser, train_parser
from utils.data.preprocess_options import preprocess_parser
from utils.eval.report import metric_parser

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = "100"
BENCHES = ("bench_curve", "bench_quality", "bench_sampling", "bench_training", "bench_volumes")


def bench_parser(name: str) -> Callable[[], argparse.ArgumentParser]:
    """A benchmark script's build_parser (bench/ is on sys.path through conftest)."""
    return lambda: importlib.import_module(name).build_parser()


BUILDERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "train.py": train_parser,
    "test.py": synthesis_parser,
    "pre_process.py": preprocess_parser,
    "metric_calc.py": metric_parser,
    "brasyn.py": brasyn_parser,
    "demo/quickstart.py": quickstart.build_parser,
    "demo/make_sample_data.py": make_sample_data.build_parser,
    **{f"bench/{name}.py": bench_parser(name) for name in BENCHES},
}
GENERATOR = cli_generator()  # docs/cli/generate.py: the subcommand lookup and the help texts it writes
# Options a parse needs besides the required ones (segment's one-of --train/--segmenter group).
EXTRA_ARGS = {"brasyn.py": ["score", "--completed", "c", "--truth", "t", "--out", "o"],
              "brasyn.py segment": ["--train", "cases"]}


def every_parser() -> dict[str, argparse.ArgumentParser]:
    """Each script's parser and each brasyn.py subcommand's, freshly built, by its command."""
    parsers = {}
    for script, build in BUILDERS.items():
        parsers[script] = build()
        parsers.update({f"{script} {name}": sub for name, sub in GENERATOR.subcommands(parsers[script]).items()})
    return parsers


PARSERS = sorted(every_parser())


def flags(action: argparse.Action) -> bool:
    """Whether an option is one a user types (not -h/--help, not a positional)."""
    return bool(action.option_strings) and not isinstance(action, argparse._HelpAction)


def sample_values(action: argparse.Action) -> list[str]:
    """Values an option accepts: its first choice, or a number, which every type here takes."""
    if action.nargs == 0:
        return []
    value = str(action.choices[0]) if action.choices else "cpu" if action.dest == "device" else "2"
    return [value] * (action.nargs if isinstance(action.nargs, int) else 1)


def required_args(command: str, parser: argparse.ArgumentParser, skip: argparse.Action | None = None) -> list[str]:
    """A minimal valid command line: each required option (but `skip`) with a sample value."""
    argv = list(EXTRA_ARGS.get(command, []))
    for action in parser._actions:
        if flags(action) and action.required and action is not skip:
            argv += [action.option_strings[0], *sample_values(action)]
    return argv


def parse(command: str, line: str) -> argparse.Namespace:
    """`line` parsed by the parser of `command` (e.g. 'brasyn.py drop')."""
    return every_parser()[command].parse_args(shlex.split(line))


# (command, older spelling, canonical spelling, dest, value both must give)
ALIASES = [
    ("pre_process.py", "--input i --output o --split-file a b", "--input i --output o --split_file a b",
     "split_file", ["a", "b"]),
    ("pre_process.py", "--input i --output o --no-labels", "--input i --output o --no_labels", "no_labels", True),
    ("pre_process.py", "--input_path i --output o", "--input i --output o", "input", "i"),
    ("pre_process.py", "--input i --output_path o", "--input i --output o", "output", "o"),
    ("pre_process.py", "--input i --output o --split test", "--input i --output o --single_split test", "split",
     "test"),
    ("pre_process.py", "--input i --output o --contrasts T1 T2", "--input i --output o --write_contrasts T1 T2",
     "contrasts", ["T1", "T2"]),
    ("pre_process.py", "--input i --output o --size 64", "--input i --output o --image_size 64", "size", 64),
    ("brasyn.py", "drop --input i --out o --truth t --split-file a", "drop --input i --out o --truth t --split_file a",
     "split_file", ["a"]),
    ("brasyn.py", "drop --input_path i --output_path o --truth t", "drop --input i --out o --truth t", "out", "o"),
    ("brasyn.py", "complete --input_path i --models T1ce=e --output_path o", "complete --input i --models T1ce=e "
     "--out o", "input", "i"),
    ("brasyn.py", "score --completed c --truth t --output_path o", "score --completed c --truth t --out o", "out",
     "o"),
    ("brasyn.py", "segment --train r --truth t --completed c --output_path o",
     "segment --train r --truth t --completed c --out o", "out", "o"),
    ("brasyn.py", "export --completed c --output_path o --as-training", "export --completed c --out o --as_training",
     "as_training", True),
    ("metric_calc.py", "--output_path o --brain_mask m", "--out o --mask m", "out", "o"),
    ("demo/make_sample_data.py", "--out o --size 32", "--out o --volume_size 32", "size", 32),
    ("demo/make_sample_data.py", "--out o --skull-strip --no-splits", "--out o --skull_strip --no_splits",
     "no_splits", True),
    ("demo/make_sample_data.py", "--out o --skull", "--out o --skull_strip", "skull_strip", True),
    ("test.py", "--out v.nii.gz --epoch_id 3", "--out_nifti v.nii.gz --epoch 3", "out", "v.nii.gz"),
    ("train.py", "--num-epoch 3 --lazy 5", "--num_epoch 3 --lazy_reg 5", "lazy_reg", 5),
    ("bench/bench_training.py", "--batch 2", "--batch_size 2", "batch", 2),
    ("bench/bench_curve.py", "--reference r --data d --batch 2", "--reference r --data d --batch_size 2", "batch", 2),
    ("bench/bench_sampling.py", "--out r.json", "--out_json r.json", "out", "r.json"),
]


@pytest.mark.parametrize("command,old,new,dest,value", ALIASES, ids=[f"{a[0]} {a[1]}" for a in ALIASES])
def test_old_and_new_spellings_parse_alike(command: str, old: str, new: str, dest: str, value: object) -> None:
    """A renamed option's old name, the other spelling and an abbreviation give what the canonical name gives."""
    old_args, new_args = parse(command, old), parse(command, new)
    assert getattr(new_args, dest) == value
    assert vars(old_args) == vars(new_args)


# The original's README commands (train.py, test.py), flag for flag.
ORIGINAL_TRAIN = ("--image_size 256 --exp exp_brats --num_channels 1 --num_channels_dae 64 --ch_mult 1 2 4 "
                  "--num_timesteps 2 --num_res_blocks 2 --batch_size 3 --num_epoch 30 --ngf 64 --embedding_type "
                  "positional --ema_decay 0.999 --r1_gamma 1. --z_emb_dim 256 --lr_d 1e-4 --lr_g 1.6e-4 --lazy_reg 10 "
                  "--num_process_per_node 3")
ORIGINAL_TEST = ("--image_size 256 --exp exp_brats --num_channels 1 --num_channels_dae 64 --ch_mult 1 2 4 "
                 "--num_timesteps 4 --num_res_blocks 2 --batch_size 1 --embedding_type positional  --z_emb_dim 256  "
                 "--gpu_chose 0 --input_path '/data/BRATS' --output_path '/results'")


def test_original_commands_parse() -> None:
    """The original README's train.py and test.py commands give the values they name."""
    train = parse("train.py", ORIGINAL_TRAIN)
    assert (train.num_timesteps, train.num_epoch, train.lazy_reg, train.num_process_per_node) == (2, 30, 10, 3)
    assert train.ch_mult == [1, 2, 4] and train.r1_gamma == 1.0 and train.lr_g == 1.6e-4
    test = parse("test.py", ORIGINAL_TEST)
    assert (test.gpu_chose, test.input_path, test.output_path, test.batch_size) == (0, "/data/BRATS", "/results", 1)


@pytest.mark.parametrize("command", PARSERS)
def test_canonical_names_use_underscores(command: str) -> None:
    """Each option is known by its underscore spelling, the original's style."""
    dashed = [a.option_strings[0] for a in every_parser()[command]._actions
              if flags(a) and "-" in a.option_strings[0].lstrip("-")]
    assert not dashed, f"{command}: name these with underscores (the dash spelling parses anyway): {dashed}"


@pytest.mark.parametrize("command", PARSERS)
def test_every_option_parses_with_dashes(command: str) -> None:
    """--a-b does what --a_b does, for every multi-word option of every script."""
    parser = every_parser()[command]
    for action in [a for a in parser._actions if flags(a) and "_" in a.option_strings[0]]:
        base, values = required_args(command, parser, skip=action), sample_values(action)
        dashed = action.option_strings[0].replace("_", "-")
        expected = parser.parse_args([*base, action.option_strings[0], *values])
        assert parser.parse_args([*base, dashed, *values]) == expected, f"{command} {dashed}"


def shown_flags(help_text: str) -> set[str]:
    """The options --help lists: the first word of each option line (two spaces in)."""
    return {line.split()[0].rstrip(",") for line in help_text.splitlines() if line.startswith("  -")}


@pytest.mark.parametrize("command", PARSERS)
def test_help_shows_one_spelling_and_the_defaults(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """--help lists each option once, under its canonical name, and says its default unless unset or a switch."""
    monkeypatch.setenv("COLUMNS", COLUMNS)
    parser = every_parser()[command]
    parser.parse_args(required_args(command, parser))  # a parse adds the dash spellings; help must still hide them
    text = parser.format_help()
    shown, unbroken = shown_flags(text), "".join(text.split())  # wrapping may split a default at any space
    for action in [a for a in parser._actions if flags(a) and a.help != argparse.SUPPRESS]:
        first, *others = action.option_strings
        assert first in shown and not shown & set(others), f"{command}: {action.option_strings}"
        switch_off = action.nargs == 0 and action.const is False
        if action.default is not None and action.default is not False and not switch_off:
            default = "".join(str(action.default).split())
            assert f"(default:{default})" in unbroken, f"{command} {first}: default {action.default!r} not shown"


def script_help(script: str, *args: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """What `python SCRIPT ARGS --help` prints, 100 columns wide, run through the script file in this process."""
    monkeypatch.setenv("COLUMNS", COLUMNS)
    monkeypatch.setattr(sys, "argv", [str(ROOT / script), *args, "--help"])
    monkeypatch.setattr(sys, "path", list(sys.path))  # the demo and bench scripts put the repository on it
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit) as stop:
        runpy.run_path(str(ROOT / script), run_name="__main__")
    assert stop.value.code in (0, None), f"{script} {' '.join(args)} --help exited with {stop.value.code}"
    return out.getvalue()


def docs_name(command: str) -> str:
    """The docs/cli file of a command: 'brasyn.py drop' -> brasyn_drop.txt, 'demo/quickstart.py' -> quickstart.txt."""
    script, *args = command.split()
    return "_".join([Path(script).stem, *args]) + ".txt"


@pytest.fixture(scope="module")
def generated() -> dict[str, str]:
    """docs/cli/generate.py's texts, which it builds from the library's parsers rather than by running scripts."""
    return GENERATOR.help_texts()


@pytest.mark.parametrize("command", PARSERS)
def test_script_help_runs_as_documented(command: str, generated: dict[str, str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The script's own --help runs, and prints what docs/cli/generate.py writes for it (benchmarks: not there)."""
    script, *args = command.split()
    text = script_help(script, *args, monkeypatch=monkeypatch)
    assert text.startswith(f"usage: {' '.join([Path(script).name, *args])}")
    if not script.startswith("bench/"):
        assert text == generated[docs_name(command)], f"{command} --help differs from docs/cli/generate.py's text"
