"""The documentation matches the code: docs/cli holds every script's current --help, and development.md's layout
names files that exist and every module under utils/."""
import itertools
import re
from pathlib import Path

from conftest import cli_generator

ROOT = Path(__file__).resolve().parents[1]
CLI_DIR = ROOT / "docs" / "cli"
REFRESH = ".venv/bin/python docs/cli/generate.py"
PATH_WORD = re.compile(r"[\w-]+(/[\w-]+)*(/|\.\w+)")  # utils/core/, options.py; not "quickstart.json," or "py's"
# The names the docs link to (README.md and docs/*.md point at these files).
CLI_FILES = {"train.txt", "test.txt", "pre_process.txt", "metric_calc.txt", "brasyn.txt", "brasyn_drop.txt",
             "brasyn_complete.txt", "brasyn_refine.txt", "brasyn_score.txt", "brasyn_segment.txt", "brasyn_export.txt",
             "quickstart.txt", "make_sample_data.txt"}


def layout_paths(text: str) -> list[str]:
    """The paths the ```text block under "Repository layout" names, each joined to its folder."""
    block = re.search(r"## Repository layout.*?```text\n(.*?)```", text, re.DOTALL).group(1)
    paths, folder = [], ""
    for line in block.splitlines():
        # Columns are set apart by two or more spaces. A folder in the first column holds the names indented under
        # it; the names come first in their column, and the first other word starts the description.
        fields = re.split(r" {2,}", line.strip())
        if not line.startswith(" "):
            folder = fields[0] if fields[0].endswith("/") else ""
            if folder:
                paths.append(fields.pop(0))
        first = fields[0] if fields else ""
        paths += [folder + name for name in itertools.takewhile(PATH_WORD.fullmatch, first.split())]
    return paths


def test_cli_files_are_current() -> None:
    """Every docs/cli file is what generate.py writes now (run it after changing an option)."""
    texts = cli_generator().help_texts()
    assert set(texts) == CLI_FILES
    for name, text in sorted(texts.items()):
        path = CLI_DIR / name
        assert path.exists(), f"docs/cli/{name} is missing; run {REFRESH}"
        assert path.read_text() == text, f"docs/cli/{name} is stale; run {REFRESH}"


def test_layout_names_existing_files() -> None:
    """Each file and folder development.md's layout names exists."""
    paths = layout_paths((ROOT / "docs" / "development.md").read_text())
    assert "utils/core/options.py" in paths and "train.py" in paths and "backbones/upfirdn2d.py" in paths
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f"docs/development.md's layout names files that do not exist: {missing}"


def test_layout_lists_every_utils_module() -> None:
    """Every module under utils/ (not the __init__.py files) has its line in development.md's layout."""
    listed = set(layout_paths((ROOT / "docs" / "development.md").read_text()))
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "utils").rglob("*.py") if p.name != "__init__.py"}
    unlisted = sorted(modules - listed)
    assert not unlisted, f"docs/development.md's layout does not list {unlisted}"
