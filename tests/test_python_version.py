"""Python older than 3.10 gets one line from the Makefile and from the scripts, not a late traceback."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_library_refuses_old_python_in_one_line() -> None:
    """Importing utils (every script does) under a 3.9 version tuple exits 1 with one `error:` line."""
    code = "import sys; sys.version_info = (3, 9, 18); import utils"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("error: MU-Diff needs Python 3.10") and result.stderr.count("\n") == 1


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_makefile_refuses_old_python(tmp_path: Path) -> None:
    """`make test` with a Python 3.8 interpreter stops before creating the virtual environment."""
    fake = tmp_path / "python3.8"
    fake.write_text('#!/bin/sh\nif [ "$1" = "--version" ]; then echo "Python 3.8.10"; exit 0; fi\nexit 1\n')
    fake.chmod(0o755)
    venv = tmp_path / "venv"
    result = subprocess.run(["make", "-C", str(ROOT), "test", f"PYTHON={fake}", f"VENV={venv}"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and not venv.exists()
    assert "error: MU-Diff needs Python 3.10 or newer" in result.stderr and "Python 3.8.10" in result.stderr
