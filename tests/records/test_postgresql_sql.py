"""The PostgreSQL statements compile (no server needed): the ledger must run on replicas."""

from __future__ import annotations

from sqlalchemy import Dialect, select
from sqlalchemy.dialects.postgresql import psycopg

from linkage.records.ledger import _insert_sql
from linkage.records.models import HEADS, RECORDS, entry_bytes_sql


def _dialect() -> Dialect:
    return psycopg.dialect()  # type: ignore[no-untyped-call]


def test_entry_bytes_are_built_with_concatenation_and_convert_to() -> None:
    sql = str(select(entry_bytes_sql("postgresql")).compile(dialect=_dialect()))
    assert "convert_to(" in sql
    assert sql.count("||") == 2 * 15


def test_the_head_is_locked_with_select_for_update() -> None:
    stmt = select(HEADS.c.last_seq).where(HEADS.c.ledger == "x").with_for_update()
    assert "FOR UPDATE" in str(stmt.compile(dialect=_dialect()))


def test_records_are_inserted_with_the_drivers_named_parameters() -> None:
    sql, positions = _insert_sql(_dialect())
    assert sql.startswith(f"INSERT INTO {RECORDS.name} (ledger, seq, occurred_at_us")
    assert positions is None
    assert "%(prev_hash)s" in sql
