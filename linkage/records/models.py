"""The ledger's tables: records, chain heads, signed checkpoints and retention anchors.

Owns the four ``access_record*`` tables on the project-wide ``linkage.db.Base`` and the SQL
expression that rebuilds an entry's canonical bytes inside the database (so verification does
not decode sixteen columns in Python). Every place keeps its ledgers in its own database; one
database may hold several ledgers, told apart by the ``ledger`` column.

Rows here are written only by ``Ledger`` (append, checkpoint) and ``purge`` (anchor, then delete
the anchored prefix). Nothing may ever UPDATE or DELETE an ``access_records`` row otherwise
(triggers from ``guard_ddl`` refuse it), and no column may ever hold an individual number.

Times are integer microseconds since the Unix epoch (UTC): exact, portable between SQLite and
PostgreSQL, and the very integers that are hashed and signed.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Index,
    LargeBinary,
    String,
    Table,
    cast,
    event,
    func,
    literal,
)
from sqlalchemy.orm import Mapped, mapped_column

from linkage.db import Base
from linkage.records.model import FIELD_SEPARATOR, FORMAT_VERSION

__all__ = [
    "TABLES",
    "AccessRecordAnchor",
    "AccessRecordCheckpoint",
    "AccessRecordHead",
    "AccessRecordRow",
    "entry_bytes_sql",
    "guard_ddl",
]


class AccessRecordRow(Base):
    """One chained access record: position ``seq`` (1, 2, … per ledger) and its hash."""

    __tablename__ = "access_records"
    __table_args__ = (
        # Disclosure (who looked at this person's data) walks a person's records in time order.
        Index("ix_access_records_subject_occurred_at_us", "subject", "occurred_at_us"),
        # Audits by period and retention cut-offs look up a ledger by time.
        Index("ix_access_records_ledger_occurred_at_us", "ledger", "occurred_at_us"),
    )

    # The primary key (ledger, seq) is the unique position in the chain.
    ledger: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    occurred_at_us: Mapped[int] = mapped_column(BigInteger)
    event: Mapped[str] = mapped_column(String(32))
    actor_kind: Mapped[str] = mapped_column(String(32))
    actor_id: Mapped[str] = mapped_column(String())
    procedure: Mapped[str] = mapped_column(String())
    requester: Mapped[str] = mapped_column(String())
    provider: Mapped[str] = mapped_column(String())
    # Data item ids joined by "," (the exact text that is hashed).
    data_items: Mapped[str] = mapped_column(String())
    # A unified number or a linkage code; never an individual number.
    subject: Mapped[str] = mapped_column(String())
    permit_id: Mapped[str] = mapped_column(String())
    query_id: Mapped[str] = mapped_column(String())
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String())
    prev_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class AccessRecordHead(Base):
    """The chain head of one ledger: the row every appender locks, so appends serialize.

    ``checkpoint_seq``/``checkpoint_at_us`` only schedule the next checkpoint; the security of
    the ledger never depends on them (a forged value at worst delays a checkpoint).
    """

    __tablename__ = "access_record_heads"

    ledger: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    last_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    checkpoint_seq: Mapped[int] = mapped_column(BigInteger)
    checkpoint_at_us: Mapped[int] = mapped_column(BigInteger)


class AccessRecordCheckpoint(Base):
    """An Ed25519 signature over the chain hash at ``seq``: protects everything up to ``seq``
    against rewriting and truncation by someone who can write the database but lacks the key."""

    __tablename__ = "access_record_checkpoints"

    ledger: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    signed_at_us: Mapped[int] = mapped_column(BigInteger)
    key_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[bytes] = mapped_column(LargeBinary(64))


class AccessRecordAnchor(Base):
    """A signed statement that records 1..``purged_through_seq`` were purged and that the last
    of them had hash ``hash``: the remaining chain starts from it. One row per purge."""

    __tablename__ = "access_record_anchors"

    ledger: Mapped[str] = mapped_column(String(64), primary_key=True)
    purged_through_seq: Mapped[int] = mapped_column(
        BigInteger, primary_key=True, autoincrement=False
    )
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    purged_at_us: Mapped[int] = mapped_column(BigInteger)
    key_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[bytes] = mapped_column(LargeBinary(64))


def _table(mapped: type[Base]) -> Table:
    table = mapped.__table__
    assert isinstance(table, Table)
    return table


RECORDS = _table(AccessRecordRow)
HEADS = _table(AccessRecordHead)
CHECKPOINTS = _table(AccessRecordCheckpoint)
ANCHORS = _table(AccessRecordAnchor)

TABLES: tuple[Table, ...] = (RECORDS, HEADS, CHECKPOINTS, ANCHORS)
"""The ledger's tables, e.g. for ``Base.metadata.create_all(engine, tables=list(TABLES))``."""


def entry_bytes_sql(dialect_name: str) -> ColumnElement[bytes]:
    """SQL that builds ``model.encode_entry`` of a row in the database, as bytes.

    Building the bytes in SQL is several times faster than fetching sixteen columns into
    Python and joining them there, and it is the cost that dominates verification.
    """
    c = RECORDS.c
    fields: list[ColumnElement[Any]] = [
        c.ledger,
        c.seq,
        c.occurred_at_us,
        c.event,
        c.actor_kind,
        c.actor_id,
        c.procedure,
        c.requester,
        c.provider,
        c.data_items,
        c.subject,
        c.permit_id,
        c.query_id,
        c.outcome,
        c.reason,
    ]
    if dialect_name == "sqlite":
        # One printf call is ~40 % cheaper than fifteen ``||`` operators. Its %s renders NULL
        # as empty text, which the NOT NULL constraints rule out. CAST AS BLOB yields the
        # stored UTF-8 bytes as they are, so text that is not valid UTF-8 (a tampered row)
        # is reported, never a decoding crash.
        template = FIELD_SEPARATOR.join((FORMAT_VERSION, *["%s"] * len(fields)))
        return cast(func.printf(template, *fields), LargeBinary)
    text: ColumnElement[str] = literal(FORMAT_VERSION, String)
    for field in fields:
        text = text + literal(FIELD_SEPARATOR, String) + cast(field, String)
    if dialect_name == "postgresql":
        # ``||`` makes the whole value NULL if a column is NULL: reported as an edit.
        return func.convert_to(text, "UTF8", type_=LargeBinary)
    return cast(text, LargeBinary)


# -- append-only guards -------------------------------------------------------------------------
#
# The chain DETECTS tampering; these triggers PREVENT the ordinary kind: an application bug or
# an operator's stray UPDATE/DELETE. Records and checkpoints can only be deleted at or below
# an anchor (which purge writes first); records, checkpoints and anchors are never updated,
# anchors never deleted. Someone who can drop triggers gets past them, and the verifier then
# catches what they did.

_GUARDED = "access records are append-only: delete only behind a signed anchor (purge)"

_BEHIND_ANCHOR = (
    "OLD.seq > COALESCE((SELECT max(purged_through_seq) FROM access_record_anchors "
    "WHERE ledger = OLD.ledger), 0)"
)

# (table, whether rows may be deleted at or below the latest anchor)
_GUARDED_TABLES = (
    ("access_records", True),
    ("access_record_checkpoints", True),
    ("access_record_anchors", False),
)


def _sqlite_guards(table: str, deletable: bool) -> tuple[str, ...]:
    when = f"WHEN {_BEHIND_ANCHOR} " if deletable else ""
    return (
        f"CREATE TRIGGER IF NOT EXISTS {table}_no_update BEFORE UPDATE ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{_GUARDED}'); END",
        f"CREATE TRIGGER IF NOT EXISTS {table}_no_delete BEFORE DELETE ON {table} "
        f"{when}BEGIN SELECT RAISE(ABORT, '{_GUARDED}'); END",
    )


def _postgres_guards(table: str, deletable: bool) -> tuple[str, ...]:
    refuse = f"TG_OP = 'UPDATE' OR {_BEHIND_ANCHOR}" if deletable else "TRUE"
    return (
        f"CREATE OR REPLACE FUNCTION {table}_guard() RETURNS trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN IF {refuse} THEN RAISE EXCEPTION '{_GUARDED}'; END IF; "
        "RETURN OLD; END $$",
        f"DROP TRIGGER IF EXISTS {table}_guard ON {table}",
        f"CREATE TRIGGER {table}_guard BEFORE UPDATE OR DELETE ON {table} "
        f"FOR EACH ROW EXECUTE FUNCTION {table}_guard()",
    )


def _guards(dialect_name: str, table: str) -> tuple[str, ...]:
    for name, deletable in _GUARDED_TABLES:
        if name == table and dialect_name == "sqlite":
            return _sqlite_guards(name, deletable)
        if name == table and dialect_name == "postgresql":
            return _postgres_guards(name, deletable)
    return ()


def guard_ddl(dialect_name: str) -> tuple[str, ...]:
    """The statements that install the append-only triggers (idempotent), for migrations.

    ``create_all`` installs them by itself as each table is created; an Alembic migration must
    run these with ``op.execute`` (after creating the tables): autogenerate does not see
    triggers. Other dialects get none.
    """
    return tuple(
        statement for table, _ in _GUARDED_TABLES for statement in _guards(dialect_name, table)
    )


def _install_guards(table: Table, connection: Connection, **_kw: Any) -> None:
    # A trigger body may name a table created later (SQLite and PL/pgSQL resolve it at run
    # time), so each table gets its guards as soon as it exists.
    for statement in _guards(connection.dialect.name, table.name):
        connection.exec_driver_sql(statement)


for _guarded in (RECORDS, CHECKPOINTS, ANCHORS):
    event.listen(_guarded, "after_create", _install_guards)
