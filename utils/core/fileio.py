"""Atomic writes (temporary name, then rename), checked JSON/.npy reads and the natural file order."""
import contextlib
import csv
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from utils.core.errors import UserError


def _current_umask() -> int:
    """The process umask (reading it requires setting it, so set it straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder, so the final os.replace is an atomic rename on one filesystem; keep every suffix (".nii.gz")
    # for writers that choose a format from it (nibabel, matplotlib, PIL).
    suffixes = "".join(path.suffixes)
    base = path.name[: len(path.name) - len(suffixes)] if suffixes else path.name
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.tmp-", suffix=suffixes, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file 0600; give the result the permissions any new file would get under the umask.
        os.chmod(tmp_path, 0o666 & ~_current_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """torch.save `obj` to `path` atomically."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_npy(array: np.ndarray, path: str | os.PathLike) -> None:
    """np.save `array` to `path` atomically (no pickled objects)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)


def save_json(obj: Any, path: str | os.PathLike) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def load_json(path: str | os.PathLike, advice: str) -> Any:
    """The JSON value in `path`; a one-line UserError naming the file and giving `advice` when it cannot be read."""
    try:
        return json.loads(Path(path).read_text())
    except (ValueError, OSError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"{path} is not valid JSON ({err}); {advice}") from err


def save_text(text: str, path: str | os.PathLike) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows as CSV text with "\\n" line ends: a header of `columns` (default: the first row's keys), one line a row."""
    header = list(columns) if columns is not None else list(rows[0]) if rows else []
    if not header:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def save_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, columns: Sequence[str] | None = None) -> None:
    """Write `rows` as CSV (see csv_text) to `path` atomically."""
    save_text(csv_text(rows, columns), path)


def load_npy(path: str | os.PathLike, hint: str, mmap: bool = False) -> np.ndarray:
    """np.load a .npy file without pickles (memory-mapped with `mmap`).

    A missing, empty, truncated or non-.npy file is one UserError that names it and ends with `hint` (what to do).
    """
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError as err:
        raise UserError(f"{path}: file not found") from err
    except (OSError, ValueError, EOFError) as err:
        # An empty file raises EOFError, a truncated one ValueError or OSError, a pickled one ValueError.
        reason = str(err).splitlines()[0] if str(err) else "empty file"
        raise UserError(f"{path} is not a readable .npy array ({reason}); {hint}") from err


def natural_key(name: str) -> list:
    """Sort key that orders the integers inside a name numerically (slice_2 before slice_10)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]
