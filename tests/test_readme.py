"""Every command the README and docs/ show runs as printed (in a scratch copy of the repository, never in the user's
folders).

Commands on the phantom data must succeed, page after page in PAGES order, and then every ```python block. Commands
on data a user brings (BraTS, ISLES, the published weights) cannot run here: they must stop at once with a one-line
`error:` naming what is missing, never a traceback. The README stays a first page: at most 12 KB, every link resolving.
"""
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# The order the phantom commands run in: training.md trains the experiment the later pages use.
PAGES = ("README.md", "docs/training.md", "docs/synthesis.md", "docs/metrics.md", "docs/speed.md", "docs/data.md",
         "docs/brasyn.md", "docs/quality.md", "docs/differences.md", "docs/development.md")
README_LIMIT = 12 * 1024
# Paths that only exist once a user has downloaded a dataset or the published weights.
USER_DATA_MARKERS = ("MICCAI_BraTS_2019_Data_Training", "SISS2015_Training", "data/BRATS", "results/exp_brats",
                     "--exp exp_brats", "ASNR-MICCAI-BraTS2023", "BraSyn-Validation")
# The BraSyn page's phantom loop is run (and its outputs checked) by tests/test_brasyn.py.
BRASYN_PAGE = "docs/brasyn.md"
BRASYN_SECTION = "## The whole loop on phantom cases"
# What a scratch copy leaves out: environments, outputs and caches.
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache", "results", "quickstart_out",
                                    "sample_data", "sample_brats", "sample_isles", "sample_brats23", "sample_brats21")


def fenced_blocks(text: str) -> list[tuple[str, list[str]]]:
    """(info string, lines) of every fenced block: a fence opens with ``` and an optional info, closes with ```."""
    blocks: list[tuple[str, list[str]]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if current is None and line.startswith("```"):
            current = []
            blocks.append((line[3:].strip(), current))
        elif current is not None and line.strip() == "```":
            current = None
        elif current is not None:
            current.append(line)
    assert current is None, "README.md ends inside a fenced block"
    return blocks


def readme_commands(text: str | None = None) -> list[str]:
    """The command lines inside the plain fenced blocks of `text` (default: the README), in order."""
    # Plain fences only: the ```bash block of benchmark commands needs a checkout of the original code and runs for
    # minutes (tests/test_fast.py smoke-runs the benchmark scripts instead); ```text blocks show output.
    text = README.read_text() if text is None else text
    return [line.strip() for info, lines in fenced_blocks(text) if not info for line in lines
            if line.startswith((".venv/bin/python ", "make "))]


def page_commands(page: str) -> list[str]:
    """The command lines of one page of PAGES."""
    return readme_commands((ROOT / page).read_text())


def python_blocks() -> list[str]:
    """The ```python blocks of every page, in PAGES order: each runs as a script in the scratch repository."""
    return ["\n".join(lines) + "\n" for page in PAGES for info, lines in fenced_blocks((ROOT / page).read_text())
            if info == "python"]


def all_commands() -> list[str]:
    """The command lines of every page, in PAGES order."""
    return [command for page in PAGES for command in page_commands(page)]


def section_text(heading: str, page: str = "README.md") -> str:
    """A page from a `## ` heading to the next heading of that level."""
    text = (ROOT / page).read_text()
    start = text.index(f"\n{heading}\n") + 1
    end = text.find("\n## ", start + len(heading))
    return text[start:] if end < 0 else text[start:end + 1]


def test_fences_pair_up() -> None:
    """A fence with an info string opens a block and the next bare fence closes it (commands after it are seen)."""
    text = "```text\nmake quickstart\n```\n\n```\n.venv/bin/python a.py\n```\n```bash\n.venv/bin/python b.py\n```\n"
    assert fenced_blocks(text) == [("text", ["make quickstart"]), ("", [".venv/bin/python a.py"]),
                                   ("bash", [".venv/bin/python b.py"])]
    speed = (ROOT / "docs" / "speed.md").read_text()
    assert any(info == "bash" and any("bench_sampling.py" in line for line in lines)
               for info, lines in fenced_blocks(speed))
    assert not any("bench_sampling.py" in command for command in readme_commands(speed))


def is_user_data(command: str) -> bool:
    """Whether a command needs data or weights that a user brings."""
    return any(marker in command for marker in USER_DATA_MARKERS)


def make_scratch_repo(copy: Path) -> Path:
    """Copy the repository to `copy`, with `.venv/bin/python` the interpreter running the tests."""
    shutil.copytree(ROOT, copy, ignore=NOT_COPIED)
    if sys.prefix != sys.base_prefix:
        # A virtual environment is recognised by the pyvenv.cfg beside its bin/, so link the whole environment.
        (copy / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    else:
        (copy / ".venv" / "bin").mkdir(parents=True)
        (copy / ".venv" / "bin" / "python").symlink_to(sys.executable)
    return copy


@pytest.fixture(scope="module")
def scratch_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch copy of the repository for this module's commands."""
    return make_scratch_repo(tmp_path_factory.mktemp("readme") / "repo")


def run(command: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run one README line through the shell, as a user would paste it."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def test_readme_shows_every_script() -> None:
    """The README has the two entry points and a command for each step a user takes; docs/ has the rest."""
    text = "\n".join(readme_commands())
    for needle in ("make quickstart", "make test", "pre_process.py", "train.py", "test.py", "metric_calc.py",
                   "brasyn.py drop", "brasyn.py complete", "brasyn.py segment"):
        assert needle in text, needle
    docs = "\n".join(all_commands())
    for needle in ("make_sample_data.py", "--nifti", "--baseline linear", "brasyn.py score", "brasyn.py export"):
        assert needle in docs, needle


def test_every_page_is_run() -> None:
    """Every page of docs/ is in PAGES, so its commands run."""
    assert sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")) == sorted(PAGES[1:])


def test_readme_is_a_first_page() -> None:
    """The README stays at most 12 KB, and the citation file names the paper the README cites."""
    assert len(README.read_bytes()) <= README_LIMIT, f"README.md is {len(README.read_bytes())} bytes"
    doi = re.search(r"doi:(10\.1038/[\w.-]+)", README.read_text()).group(1)
    assert f'doi: "{doi}"' in (ROOT / "CITATION.cff").read_text()


@pytest.mark.parametrize("page", PAGES)
def test_links_resolve(page: str) -> None:
    """Every relative link and image of a page names a file or folder of the repository."""
    text = (ROOT / page).read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "#")):
            continue
        assert ((ROOT / page).parent / target.split("#")[0]).exists(), f"{page}: {target}"


def test_make_targets_exist() -> None:
    """Every `make X` a page shows is a target of the Makefile."""
    for command in (c for c in all_commands() if c.startswith("make ")):
        result = subprocess.run(["make", "-n", *command.split()[1:]], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, f"{command}: {result.stderr}"


def test_phantom_commands_run_as_printed(scratch_repo: Path) -> None:
    """The phantom-data commands of every page succeed one after another, exactly as printed."""
    brasyn = set(readme_commands(section_text(BRASYN_SECTION, BRASYN_PAGE)))
    commands = [c for c in all_commands() if c.startswith(".venv/") and not is_user_data(c) and c not in brasyn]
    assert len(commands) >= 10
    for command in commands:
        result = run(command, scratch_repo)
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    assert (scratch_repo / "results" / "phantom" / "generated_samples" / "metrics" / "metrics_summary.json").exists()
    assert (scratch_repo / "results" / "phantom" / "t1ce_synth.nii.gz").exists()
    blocks = python_blocks()
    assert blocks, "no ```python block in the pages"
    for index, block in enumerate(blocks):
        script = scratch_repo / f"page_block_{index}.py"
        script.write_text(block)
        result = run(f".venv/bin/python {script.name}", scratch_repo)
        assert result.returncode == 0, f"{block}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    assert (scratch_repo / "results" / "phantom" / "api_t1ce.nii.gz").exists()


def test_user_data_commands_fail_with_one_line(scratch_repo: Path) -> None:
    """Without the user's data each such command stops at once with one `error:` line naming what is missing."""
    commands = [c for c in all_commands() if is_user_data(c)]
    assert len(commands) >= 8
    # Independent commands that mostly wait for Python to import torch: two at a time.
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda command: run(command, scratch_repo, timeout=300), commands))
    for command, result in zip(commands, results):
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2, f"{command}\n{result.stderr[-2000:]}"
        assert lines and lines[-1].startswith("error: "), f"{command}\n{result.stderr[-2000:]}"
        assert "Traceback" not in result.stderr, command
