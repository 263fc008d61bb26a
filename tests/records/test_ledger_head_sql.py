"""The head statements go to the driver precompiled: right SQL per dialect, same chain."""

from __future__ import annotations

from sqlalchemy import Dialect
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import psycopg

from linkage.records.ledger import _HEAD_SQL


def _postgresql() -> Dialect:
    return psycopg.dialect()  # type: ignore[no-untyped-call]


def test_postgresql_creates_the_head_if_missing_then_locks_it() -> None:
    create = _HEAD_SQL.create(_postgresql())
    lock = _HEAD_SQL.lock(_postgresql())
    assert "ON CONFLICT DO NOTHING" in create.sql
    assert "FOR UPDATE" in lock.sql
    assert create.positions is None  # psycopg takes named parameters


def test_sqlite_takes_the_write_lock_with_its_first_statement() -> None:
    dialect = sqlite.dialect()
    create = _HEAD_SQL.create(dialect)
    assert create.sql.startswith("INSERT INTO access_record_heads")
    assert "ON CONFLICT DO NOTHING" in create.sql
    assert create.positions == (
        "ledger",
        "last_seq",
        "last_hash",
        "checkpoint_seq",
        "checkpoint_at_us",
    )


def test_moving_the_head_sets_the_checkpoint_only_when_signed() -> None:
    dialect = sqlite.dialect()
    plain, signed = _HEAD_SQL.move(dialect), _HEAD_SQL.move_signed(dialect)
    assert "checkpoint_seq" not in plain.sql
    assert "checkpoint_seq" in signed.sql
    assert plain.positions is not None
    assert plain.positions[-1] == "w_ledger"  # the WHERE comes after the SET
