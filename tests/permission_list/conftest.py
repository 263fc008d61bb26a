"""Shared fixtures for the permission list tests: the committed dataset and CSV editing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from permission_list_helpers import CsvRows, read_csv_rows, render

from permission_list import PermissionList, load_default
from permission_list.loader import DEFAULT_PATH


@pytest.fixture(scope="session")
def permissions() -> PermissionList:
    return load_default()


@pytest.fixture
def committed_rows() -> CsvRows:
    """The committed CSV as records; index 0 is the header (file line 1)."""
    return read_csv_rows(DEFAULT_PATH)


@pytest.fixture
def write_csv(tmp_path: Path) -> Callable[[CsvRows], Path]:
    """Write edited records to a temporary CSV and return its path."""

    def write(rows: CsvRows) -> Path:
        path = tmp_path / "edited.csv"
        path.write_text(render(rows), encoding="utf-8", newline="")
        return path

    return write
