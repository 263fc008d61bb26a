"""Fixtures of the resilience tests: a backend per test, SQLite or PostgreSQL.

Each test runs on both backends: SQLite files (always) and PostgreSQL schemas on the server at
127.0.0.1:5432 (skipped when it does not answer; PostgreSQL is what several replicas on one
database are meant for). Worlds are real ``linkage serve`` processes (see
``resilience_support.process_world``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from resilience_support import Backend, postgres_reachable

_POSTGRES: list[bool] = []


def _postgres() -> bool:
    if not _POSTGRES:
        _POSTGRES.append(postgres_reachable())
    return _POSTGRES[0]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Where the world's components keep their data; PostgreSQL schemas are dropped after."""
    name: str = request.param
    if name == "postgresql" and not _postgres():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    chosen = Backend(name, tmp_path / "world")
    chosen.root.mkdir()
    try:
        yield chosen
    finally:
        chosen.drop()


@pytest.fixture
def postgres_backend(tmp_path: Path) -> Iterator[Backend]:
    """A PostgreSQL backend (skipped when the server does not answer)."""
    if not _postgres():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    chosen = Backend("postgresql", tmp_path / "world")
    chosen.root.mkdir()
    try:
        yield chosen
    finally:
        chosen.drop()


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> Backend:
    """An SQLite backend (for tests whose point does not depend on the database)."""
    chosen = Backend("sqlite", tmp_path / "world")
    chosen.root.mkdir()
    return chosen
