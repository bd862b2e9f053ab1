"""Atomic writes: the target appears whole or not at all, with normal permissions and its full suffix."""
import os
from pathlib import Path

import numpy as np
import pytest

from utils.core.fileio import atomic_path, csv_text, save_csv, save_json, save_npy


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


def test_csv_has_a_header_unix_line_ends_and_the_given_column_order(tmp_path: Path) -> None:
    """Header from the first row's keys (or `columns`, which also orders them), "\\n" line ends, floats as repr."""
    rows = [{"case": "a", "psnr": 0.1 + 0.2}, {"case": "b,c", "psnr": float("inf")}]
    assert csv_text(rows) == 'case,psnr\na,0.30000000000000004\n"b,c",inf\n'
    assert csv_text(rows, ["psnr", "case"]) == 'psnr,case\n0.30000000000000004,a\ninf,"b,c"\n'
    assert csv_text([], ["case"]) == "case\n" and csv_text([]) == ""
    save_csv(rows, tmp_path / "out" / "m.csv")
    assert (tmp_path / "out" / "m.csv").read_bytes() == csv_text(rows).encode()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.csv"]
