"""The append-only guards: plain UPDATE/DELETE is refused unless a purge anchored the rows."""

from __future__ import annotations

from datetime import timedelta

import pytest
from nacl.signing import SigningKey
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError
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
        "UPDATE access_record_checkpoints SET hash = :blob WHERE seq = 20",
        "DELETE FROM access_record_checkpoints",
        "UPDATE access_record_anchors SET hash = :blob",
        "DELETE FROM access_record_anchors",
    ],
)
def test_stray_updates_and_deletes_are_refused(
    chain: Chain, sessions: sessionmaker[Session], signing_key: SigningKey, sql: str
) -> None:
    with unit_of_work(sessions) as session:
        purge(session, LEDGER, START + timedelta(seconds=11), signing_key, KEY_ID)
    params = {"blob": b"\x00"} if ":blob" in sql else {}
    with pytest.raises(DatabaseError, match="append-only"), chain.engine.begin() as conn:
        conn.execute(text(sql), params)


def test_rows_at_or_below_the_anchor_may_be_deleted(chain: Chain) -> None:
    with chain.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO access_record_anchors VALUES (:ledger, 5, :hash, 0, 'k', :signature)"
            ),
            {"ledger": LEDGER, "hash": bytes(32), "signature": bytes(64)},
        )
        deleted = conn.execute(text("DELETE FROM access_records WHERE seq <= 5"))
        assert deleted.rowcount == 5


def test_guards_are_available_to_migrations_for_both_databases() -> None:
    assert len(guard_ddl("sqlite")) == 6
    assert any("plpgsql" in statement for statement in guard_ddl("postgresql"))
    assert guard_ddl("mysql") == ()
