"""``linkage.sqlfast``: the shared driver-level statements."""

from __future__ import annotations

from datetime import date
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Column, Date, Integer, MetaData, String, Table, create_engine
from sqlalchemy.orm import Session

from linkage import sqlfast
from simulator.network import repository

_META = MetaData()
_ROWS = Table(
    "sqlfast_rows",
    _META,
    Column("tenant", String, primary_key=True),
    Column("key", Integer, primary_key=True),
    Column("day", Date),
)


def test_select_in_converts_results_in_chunks() -> None:
    engine = create_engine("sqlite://")
    _META.create_all(engine)
    with Session(engine) as session:
        session.execute(_ROWS.insert(), [{"tenant": "a", "key": 1, "day": date(2024, 1, 2)}])
        rows = sqlfast.select_in(
            session, _ROWS, ("key", "day"), (("tenant", "a"),), "key", [1, 2], chunk=1
        )
        assert rows == [(1, date(2024, 1, 2))]


def test_insert_sql_is_positional_per_dialect() -> None:
    engine = create_engine("sqlite://")
    sql = sqlfast.insert_sql(engine.dialect, _ROWS, ("tenant", "key"), " ON CONFLICT DO NOTHING")
    assert sql == 'INSERT INTO sqlfast_rows (tenant, "key") VALUES (?, ?) ON CONFLICT DO NOTHING'


def test_driver_rows_reorders_to_the_compiled_positions() -> None:
    rows = [(1, "x")]
    assert sqlfast.driver_rows(("a", "b"), ("a", "b"), rows) is rows
    assert sqlfast.driver_rows(("a", "b"), ("b", "a"), rows) == [("x", 1)]
    assert sqlfast.driver_rows(("a", "b"), None, rows) == [{"a": 1, "b": "x"}]


def test_insert_ignore_refuses_other_dialects() -> None:
    connection = SimpleNamespace(dialect=SimpleNamespace(name="mysql"))
    session: Any = SimpleNamespace(flush=lambda: None, connection=lambda: connection)
    with pytest.raises(NotImplementedError, match="mysql"):
        repository._insert_ignore(session, object, [{"a": 1}])
