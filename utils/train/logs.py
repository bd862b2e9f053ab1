"""CSV logs rewritten atomically as a whole (log.csv, val.csv)."""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Sequence

from utils.core.fileio import save_csv


# --------------------------------------------------------------------------- CSV logs
class CsvLog:
    """Rows with fixed columns, rewritten atomically as a whole (a crash never leaves a half-written line)."""

    def __init__(self, path: str | os.PathLike, columns: Sequence[str]) -> None:
        """An empty log that will be written to `path`."""
        self.path = Path(path)
        self.columns = list(columns)
        self.rows: list[dict[str, str]] = []

    def append(self, **values: float | int | str) -> None:
        """Add one row (floats in full precision, NaN as an empty cell)."""
        self.rows.append({k: _cell(values.get(k, "")) for k in self.columns})

    def load_until(self, last_epoch: int) -> None:
        """Read the existing file (when resuming) and keep the rows of epochs up to `last_epoch`."""
        if not self.path.exists():
            return
        with open(self.path, newline="") as fh:
            reader = csv.DictReader(fh)
            self.rows = [{k: row.get(k) or "" for k in self.columns} for row in reader
                         if row.get("epoch", "").isdigit() and int(row["epoch"]) <= last_epoch]

    def column(self, name: str) -> list[float]:
        """One column as floats (NaN for empty cells)."""
        return [float(row[name]) if row[name] != "" else math.nan for row in self.rows]

    def save(self) -> None:
        """Write all rows to the file atomically."""
        save_csv(self.rows, self.path, self.columns)


def _cell(value: float | int | str) -> str:
    """CSV text for one value."""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)
