"""Atomic writes: the target appears whole or not at all, with normal permissions and its full suffix."""
import os
from pathlib import Path

import numpy as np
import pytest

from utils.core.fileio import atomic_path, save_json, save_npy


def test_failed_write_keeps_previous_file(tmp_path: Path) -> None:
    """An exception inside the block leaves the old file untouched and no temporary file behind."""
    target = tmp_path / "a.npy"
    save_npy(np.arange(3), target)
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert np.array_equal(np.load(target), np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy"]


def test_temporary_name_keeps_all_suffixes(tmp_path: Path) -> None:
    """Writers that pick a format from the name (nibabel's .nii.gz) see the full suffix."""
    with atomic_path(tmp_path / "vol.nii.gz") as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
        tmp.write_bytes(b"x")
    assert (tmp_path / "vol.nii.gz").read_bytes() == b"x"


def test_permissions_follow_umask(tmp_path: Path) -> None:
    """Files are readable by others as any new file would be, not left at mkstemp's 0600."""
    old = os.umask(0o022)
    try:
        save_json({"a": 1}, tmp_path / "c.json")
    finally:
        os.umask(old)
    assert (tmp_path / "c.json").stat().st_mode & 0o777 == 0o644
