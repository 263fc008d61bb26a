"""Fixtures of the ledger tests: a migrated ledger database, keys, a clock, records, a chain.

The database comes from the suite's root fixture ``database_url``: an SQLite file by default,
a PostgreSQL schema with ``LINKAGE_TEST_DATABASE=postgresql``; every test runs on both.
Tampering is done the way an insider with write access would: plain SQL outside the ledger's
code, after dropping the append-only triggers (detection must never depend on them).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from nacl.signing import SigningKey
from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from linkage.db import make_engine, session_factory, unit_of_work
from linkage.records.ledger import Ledger
from linkage.records.model import AccessRecord, ActorKind, Outcome, RecordEvent

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


_PLACEHOLDER = re.compile(r"\?")


def _bound(sql: str, params: tuple[Any, ...]) -> tuple[Any, dict[str, Any]]:
    """``sql`` with qmark placeholders as a ``text()`` with named binds, for either backend."""
    names = iter(range(len(params)))
    return (
        text(_PLACEHOLDER.sub(lambda _m: f":p{next(names)}", sql)),
        {f"p{i}": value for i, value in enumerate(params)},
    )


def drop_guards(conn: Connection) -> None:
    """Drop the append-only triggers, as an insider with write access to the database can."""
    if conn.dialect.name == "sqlite":
        names = conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'trigger'"))
        for (name,) in names.all():
            conn.execute(text(f'DROP TRIGGER "{name}"'))
        return
    rows = conn.execute(
        text(
            "SELECT trigger_name, event_object_table FROM information_schema.triggers "
            "WHERE trigger_schema = current_schema()"
        )
    )
    for name, table in set(rows.all()):
        conn.execute(text(f'DROP TRIGGER IF EXISTS "{name}" ON "{table}"'))


def tamper(engine: Engine, sql: str, *params: Any) -> None:
    """Run one plain-SQL statement (qmark placeholders) outside the ledger's code, after
    dropping the guards: detection must not depend on them."""
    with engine.begin() as conn:
        drop_guards(conn)
        conn.execute(*_bound(sql, params))


def query(engine: Engine, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Read the database with plain SQL (qmark placeholders)."""
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(*_bound(sql, params))]


@pytest.fixture
def database(database_url: Callable[[str], str]) -> str:
    """The URL of a freshly migrated ledger database on the run's backend."""
    return database_url("records")


@pytest.fixture
def engine(database: str) -> Iterator[Engine]:
    """An engine on the ledger database."""
    engine = make_engine(database)
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
    """A committed chain in a database, and what verifying it needs."""

    url: str
    engine: Engine
    ledger: Ledger
    records: list[AccessRecord]

    @property
    def keys(self) -> dict[str, Any]:
        return dict(self.ledger.verify_keys())

    @property
    def cli_database(self) -> str:
        """What an operator passes as ``--database``: the file path of an SQLite database
        (the short form), the URL of any other."""
        url = make_url(self.url)
        return url.database or self.url if url.get_backend_name() == "sqlite" else self.url


@pytest.fixture
def chain(database: str, engine: Engine, sessions: sessionmaker[Session], ledger: Ledger) -> Chain:
    """50 records in ``server:sakai`` (checkpoints at 10, 20, …, 50), committed in 5 batches."""
    records = [make_record(i) for i in range(1, 51)]
    for start in range(0, 50, 10):
        with unit_of_work(sessions) as session:
            ledger.append_many(session, LEDGER, records[start : start + 10])
    return Chain(database, engine, ledger, records)
