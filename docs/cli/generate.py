"""Write every script's --help to docs/cli/<name>.txt, 100 columns wide (tests/test_docs.py checks they are current).

    .venv/bin/python docs/cli/generate.py
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


CLI_DIR = Path(__file__).resolve().parent
COLUMNS = "100"  # what argparse wraps to, so the files do not depend on the terminal that wrote them
BRASYN_COMMANDS = ("drop", "complete", "refine", "score", "segment", "export")


def script_doc(script: str) -> str:
    """A script's docstring, read without importing it (its description is taken from there)."""
    return ast.get_docstring(ast.parse((ROOT / script).read_text()), clean=False) or ""


def first_paragraph(script: str) -> str:
    """The description pre_process.py and brasyn.py give their parsers."""
    return script_doc(script).split("\n\n")[0]


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subparsers of a parser, by name."""
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def parsers() -> dict[str, argparse.ArgumentParser]:
    """Every script's parser (and brasyn.py's subcommands'), by the name of its docs/cli file."""
    # Imported here, after the repository root is on sys.path (the generator runs as a script from anywhere).
    from demo.make_sample_data import build_parser as phantom_parser
    from demo.quickstart import build_parser as quickstart_parser
    from utils.brasyn.options import brasyn_parser
    from utils.core.options import synthesis_parser, train_parser
    from utils.data.preprocess_options import preprocess_parser
    from utils.eval.report import metric_parser

    brasyn = brasyn_parser(first_paragraph("brasyn.py"))
    found = {
        "train": train_parser(),
        "test": synthesis_parser(),
        "pre_process": preprocess_parser(first_paragraph("pre_process.py")),
        "metric_calc": metric_parser(script_doc("metric_calc.py")),
        "brasyn": brasyn,
        "quickstart": quickstart_parser(),
        "make_sample_data": phantom_parser(),
    }
    commands = subcommands(brasyn)
    found.update({f"brasyn_{name}": commands[name] for name in BRASYN_COMMANDS})
    return found


@contextmanager
def fixed_width() -> Iterator[None]:
    """argparse reads the terminal width from $COLUMNS: pin it while formatting."""
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = COLUMNS
    try:
        yield
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous


def help_texts() -> dict[str, str]:
    """{file name: its --help text}, as docs/cli holds them."""
    with fixed_width():
        return {f"{name}.txt": parser.format_help() for name, parser in parsers().items()}


def main() -> None:
    """Rewrite the files whose text changed."""
    from utils.core.fileio import save_text

    for name, text in help_texts().items():
        path = CLI_DIR / name
        if not path.exists() or path.read_text() != text:
            save_text(text, path)
            print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
