"""Fixtures of the ledger tests: a ledger database file, keys, a clock, records, a filled chain.

Tampering is done the way an insider with file access would: plain SQL through the ``sqlite3``
module on the database file, never through the ledger's API.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from linkage.db import Base, make_engine, session_factory, sqlite_url, unit_of_work
from linkage.records.ledger import Ledger
from linkage.records.model import AccessRecord, ActorKind, Outcome, RecordEvent
from linkage.records.models import TABLES

LEDGER = "server:sakai"
KEY_ID = "sakai-records-2026"
START = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)


class Clock:
    """A clock the test moves by hand, so checkpoint timing is deterministic."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def make_record(
    i: int,
    *,
    ledger: str = LEDGER,
    subject: str | None = None,
    occurred_at: datetime | None = None,
) -> AccessRecord:
    """A realistic provision record, distinct per ``i``."""
    return AccessRecord(
        occurred_at=occurred_at or START + timedelta(seconds=i),
        ledger=ledger,
        event=RecordEvent.PROVIDED,
        actor_kind=ActorKind.ORGANIZATION,
        actor_id="org.city-27140",
        procedure="koki-koreisha.hokenryo.fuka",
        requester="org.osaka-koiki",
        provider="org.city-27140",
        data_items=("local_tax.income", "local_tax.household"),
        subject=subject if subject is not None else f"U27140{i:09d}",
        permit_id=f"permit-{i:08d}",
        query_id=f"query-{i:08d}",
        outcome=Outcome.PROVIDED,
    )


def drop_guards(conn: sqlite3.Connection) -> None:
    """Drop the append-only triggers, as an insider with write access to the file can."""
    triggers = conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall()
    for (name,) in triggers:
        conn.execute(f'DROP TRIGGER "{name}"')


def tamper(path: Path, sql: str, *params: Any) -> None:
    """Run one plain-SQL statement on the database file, outside the ledger's code (after
    dropping the guards: detection must not depend on them)."""
    conn = sqlite3.connect(path)
    try:
        drop_guards(conn)
        conn.execute(sql, params)
        conn.commit()
    finally:
        conn.close()


def query(path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Read the database file with plain SQL."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where the ledger database file lives."""
    return tmp_path / "records.db"


@pytest.fixture
def engine(db_path: Path) -> Iterator[Engine]:
    """An SQLite engine on ``db_path`` with only the ledger's tables created."""
    engine = make_engine(sqlite_url(db_path))
    Base.metadata.create_all(engine, tables=list(TABLES))
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    """The project's session factory on the ledger database."""
    return session_factory(engine)


@pytest.fixture
def signing_key() -> SigningKey:
    """The ledger's checkpoint signing key."""
    return SigningKey(bytes(range(32)))


@pytest.fixture
def clock() -> Clock:
    """A hand-moved clock (checkpoints by time only happen when a test moves it)."""
    return Clock()


@pytest.fixture
def ledger(signing_key: SigningKey, clock: Clock) -> Ledger:
    """A ledger that signs a checkpoint every 10 records."""
    return Ledger(signing_key, KEY_ID, checkpoint_every=10, clock=clock)


@dataclass(frozen=True)
class Chain:
    """A committed chain in a database file, and what verifying it needs."""

    path: Path
    engine: Engine
    ledger: Ledger
    records: list[AccessRecord]

    @property
    def keys(self) -> dict[str, Any]:
        return dict(self.ledger.verify_keys())


@pytest.fixture
def chain(db_path: Path, engine: Engine, sessions: sessionmaker[Session], ledger: Ledger) -> Chain:
    """50 records in ``server:sakai`` (checkpoints at 10, 20, …, 50), committed in 5 batches."""
    records = [make_record(i) for i in range(1, 51)]
    for start in range(0, 50, 10):
        with unit_of_work(sessions) as session:
            ledger.append_many(session, LEDGER, records[start : start + 10])
    return Chain(db_path, engine, ledger, records)
