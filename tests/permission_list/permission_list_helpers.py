"""Helpers for the permission list tests: reading, editing and writing dataset CSVs.

(No __init__.py here on purpose: as a package this folder would be named ``permission_list``
and shadow the real one, so helpers live in a uniquely named module instead.)
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

CsvRows = list[list[str]]


def read_csv_rows(path: Path) -> CsvRows:
    """The CSV as a list of records; index 0 is the header (file line 1), index i is line i+1."""
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.reader(handle))


def render(rows: CsvRows) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def index_of(rows: CsvRows, procedure: str, pair: int) -> int:
    """Index in ``rows`` of a procedure's pair; the file line is this index + 1."""
    for index, row in enumerate(rows):
        if row[0] == procedure and row[2] == str(pair):
            return index
    raise LookupError(f"{procedure} pair {pair}")
