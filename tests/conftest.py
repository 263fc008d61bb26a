"""Fixtures shared by the whole suite: databases on either backend, and a running world.

The backend is chosen once per run: SQLite files by default (``make test``), or the PostgreSQL
server on 127.0.0.1:5432 when ``LINKAGE_TEST_DATABASE=postgresql`` (``make test-postgres``). On
PostgreSQL every component of every test gets its own schema, dropped afterwards, so tests stay
independent and can run in any order.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from linkage import db

POSTGRES_BASE = os.environ.get(
    "LINKAGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BACKEND = os.environ.get("LINKAGE_TEST_DATABASE", "sqlite")

DatabaseUrl = Callable[[str], str]


def _postgres_schema_url(schema: str) -> str:
    return f"{POSTGRES_BASE}?options=-csearch_path%3D{schema}"


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[DatabaseUrl]:
    """Gives a fresh, migrated database URL per component name, on the run's backend."""
    schemas: list[str] = []

    def make(component: str) -> str:
        if BACKEND == "postgresql":
            from sqlalchemy import create_engine, text

            schema = f"t_{uuid.uuid4().hex[:12]}_{component.replace('-', '_')}"[:60]
            engine = create_engine(POSTGRES_BASE)
            with engine.begin() as connection:
                connection.execute(text(f'CREATE SCHEMA "{schema}"'))
            engine.dispose()
            schemas.append(schema)
            url = _postgres_schema_url(schema)
        else:
            url = db.sqlite_url(tmp_path / f"{component}.sqlite")
        db.migrate(url)
        return url

    yield make
    if schemas:
        from sqlalchemy import create_engine, text

        engine = create_engine(POSTGRES_BASE)
        with engine.begin() as connection:
            for schema in schemas:
                connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture
async def world(tmp_path: Path, database_url: DatabaseUrl) -> AsyncIterator[object]:
    """The whole world (network, registry, platforms, unified address servers) over mTLS."""
    from simulator.world import WorldConfig, start_world

    running = await start_world(WorldConfig(root=tmp_path / "world", database_url=database_url))
    try:
        yield running
    finally:
        await running.close()
