"""The append-only guards: plain UPDATE/DELETE is refused unless a purge anchored the rows."""

from __future__ import annotations

import sqlite3
from datetime import timedelta

import pytest
from nacl.signing import SigningKey
from sqlalchemy.orm import Session, sessionmaker

from linkage.db import unit_of_work
from linkage.records.models import guard_ddl
from linkage.records.retention import purge

from .conftest import KEY_ID, LEDGER, START, Chain


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE access_records SET subject = 'X' WHERE seq = 30",
        "DELETE FROM access_records WHERE seq = 50",
        "UPDATE access_record_checkpoints SET hash = x'00' WHERE seq = 20",
        "DELETE FROM access_record_checkpoints",
        "UPDATE access_record_anchors SET hash = x'00'",
        "DELETE FROM access_record_anchors",
    ],
)
def test_stray_updates_and_deletes_are_refused(
    chain: Chain, sessions: sessionmaker[Session], signing_key: SigningKey, sql: str
) -> None:
    with unit_of_work(sessions) as session:
        purge(session, LEDGER, START + timedelta(seconds=11), signing_key, KEY_ID)
    conn = sqlite3.connect(chain.path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(sql)
    finally:
        conn.close()


def test_rows_at_or_below_the_anchor_may_be_deleted(chain: Chain) -> None:
    conn = sqlite3.connect(chain.path)
    try:
        conn.execute(
            "INSERT INTO access_record_anchors VALUES (?, 5, zeroblob(32), 0, 'k', zeroblob(64))",
            (LEDGER,),
        )
        assert conn.execute("DELETE FROM access_records WHERE seq <= 5").rowcount == 5
    finally:
        conn.close()


def test_guards_are_available_to_migrations_for_both_databases() -> None:
    assert len(guard_ddl("sqlite")) == 6
    assert any("plpgsql" in statement for statement in guard_ddl("postgresql"))
    assert guard_ddl("mysql") == ()
