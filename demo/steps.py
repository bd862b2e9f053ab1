"""Run one README command as a child process and time it (the quickstart and the quality benchmark show each step)."""
from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from utils.core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def run_step(title: str, script: str, flags: Sequence[object]) -> float:
    """Print and run `python SCRIPT FLAGS` from the repository root; stop with a UserError if it fails.

    Returns the seconds it took.
    """
    command = [sys.executable, str(ROOT / script), *map(str, flags)]
    print(f"\n== {title}\n$ python {script} {shlex.join(map(str, flags))}", flush=True)
    started = time.time()
    result = subprocess.run(command, cwd=ROOT)
    if result.returncode != 0:
        raise UserError(f"step '{title}' failed (exit {result.returncode}); its message is above")
    seconds = time.time() - started
    print(f"   ({seconds:.0f} s)", flush=True)
    return seconds
