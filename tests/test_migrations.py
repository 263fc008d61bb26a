"""The Alembic history builds exactly the schema the models declare, triggers included."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError

import linkage.models  # noqa: F401  (registers every table)
from linkage import db
from linkage.db import Base


def test_migrating_a_fresh_database_yields_the_models_schema(database_url: object) -> None:
    url = database_url("schema")  # type: ignore[operator]
    engine = db.make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_migrating_twice_changes_nothing(database_url: object) -> None:
    url = database_url("twice")  # type: ignore[operator]
    db.migrate(url)  # the fixture already migrated once


def test_the_migrated_ledger_refuses_an_update_of_a_record(database_url: object) -> None:
    url = database_url("guards")  # type: ignore[operator]
    engine = db.make_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO access_records (ledger, seq, occurred_at_us, event, actor_kind,"
                    " actor_id, procedure, requester, provider, data_items, subject, permit_id,"
                    " query_id, outcome, reason, prev_hash, hash) VALUES ('t', 1, 0, 'E', 'A',"
                    " 'a', '', '', '', '', '', '', '', 'OK', '', :h, :h)"
                ),
                {"h": bytes(32)},
            )
        with pytest.raises(DatabaseError), engine.begin() as connection:
            connection.execute(text("UPDATE access_records SET reason = 'X' WHERE ledger = 't'"))
    finally:
        engine.dispose()
