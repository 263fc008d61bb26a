"""Statements sent to the DBAPI driver as SQL text, for the hot storage paths of every system.

Why they exist: on the paths every query or batch passes through (code translation, permit
look-ups, bulk inserts of duplicates, relayed queries and access records), building, coercing
and compiling a Core statement, or SQLAlchemy's per-row, per-column parameter processing, costs
more than the statement itself on SQLite. So these helpers write the SQL once (identifiers from
our own schema, every value a parameter) and convert values here through the column types' own
bind processors (and result processors on reads), exactly as SQLAlchemy would, so what is
stored and read back is the same as through the ORM.

Callers must flush the ORM session first: a driver-level statement bypasses the ORM, so reads
skip its autoflush and writes could overtake pending objects. Every helper here that takes a
``Session`` therefore flushes it before touching the connection (``connection``).

Only what is generic across SQLite and PostgreSQL lives here; dialect-specific statements
(``ON CONFLICT``, ``COPY``) stay with their callers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, LargeBinary, Table, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session

T = TypeVar("T")

CHUNK = 500  # bound on IN-list size: SQLite's parameter limit and planner sanity


def connection(session: Session) -> Connection:
    """The session's connection, after flushing the session (driver-level statements skip the
    ORM's autoflush, so pending objects must reach the database first)."""
    session.flush()
    return session.connection()


def marker(dialect: Dialect) -> str:
    """The positional parameter marker of the dialect's driver."""
    return "?" if dialect.paramstyle == "qmark" else "%s"


def bind_processor(table: Table, name: str, dialect: Dialect) -> Any:
    """The column's bind processor for ``dialect``, or None (bytes go to every driver as they
    are: the binary wrapper is the costliest no-op)."""
    column_type = table.c[name].type
    if isinstance(column_type, LargeBinary):
        return None
    return column_type._cached_bind_processor(dialect)


def result_processor(table: Table, name: str, dialect: Dialect) -> Any:
    """The column's result processor for ``dialect``, or None (bytes come back as they are)."""
    column_type = table.c[name].type
    if isinstance(column_type, LargeBinary):
        return None
    return column_type._cached_result_processor(dialect, None)


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True, slots=True)
class _SelectIn:
    """A ``select_in`` statement's fixed parts for one dialect, worked out once."""

    head: str  # up to and including the quoted IN column
    mark: str
    where_processors: tuple[Any, ...]
    result_processors: tuple[Any, ...] | None  # None: no column needs converting


_SELECT_IN: dict[tuple[Any, ...], _SelectIn] = {}


def _select_in_parts(
    dialect: Dialect,
    table: Table,
    columns: Sequence[str],
    where_names: tuple[str, ...],
    in_column: str,
    extra: str,
) -> _SelectIn:
    key = (table, tuple(columns), where_names, in_column, extra, dialect.name,
           dialect.driver, str(dialect.paramstyle))  # fmt: skip
    found = _SELECT_IN.get(key)
    if found is None:
        quote, mark = dialect.identifier_preparer.quote, marker(dialect)
        head = "SELECT {} FROM {} WHERE {}{}{} IN (".format(  # noqa: S608 (our identifiers)
            ", ".join(quote(c) for c in columns),
            dialect.identifier_preparer.format_table(table),
            "".join(f"{quote(name)} = {mark} AND " for name in where_names),
            extra,
            quote(in_column),
        )
        results = tuple(result_processor(table, name, dialect) for name in columns)
        found = _SELECT_IN[key] = _SelectIn(
            head,
            mark,
            tuple(bind_processor(table, name, dialect) for name in where_names),
            results if any(processor is not None for processor in results) else None,
        )
    return found


def select_in(
    session: Session,
    table: Table,
    columns: Sequence[str],
    where: Sequence[tuple[str, Any]],
    in_column: str,
    values: Sequence[Any],
    *,
    extra: str = "",
    chunk: int = CHUNK,
) -> list[Any]:
    """``SELECT columns FROM table WHERE a = ? AND … AND {extra}in_column IN (…)`` in chunks
    of ``chunk`` values; ``extra`` is a condition on our own columns with no parameter, ending
    in ``AND ``. ``where`` values go through their columns' bind processors, and each selected
    column's result processor (dates on SQLite) is applied to the rows. Flushes the session.
    The statement's text and processors are worked out once per shape (single queries pass
    here several times each, at every hop)."""
    conn = connection(session)
    parts = _select_in_parts(
        conn.dialect, table, columns, tuple(name for name, _ in where), in_column, extra
    )
    fixed = tuple(
        value if processor is None else processor(value)
        for processor, (_, value) in zip(parts.where_processors, where, strict=True)
    )
    processors = parts.result_processors
    rows: list[Any] = []
    for part in chunks(values, chunk):
        sql = f"{parts.head}{', '.join(parts.mark for _ in part)})"
        found: list[Any] = list(conn.exec_driver_sql(sql, (*fixed, *part)))
        if processors is not None:
            found = [
                tuple(
                    value if processor is None else processor(value)
                    for processor, value in zip(processors, row, strict=True)
                )
                for row in found
            ]
        rows.extend(found)
    return rows


def insert_sql(dialect: Dialect, table: Table, names: Sequence[str], suffix: str = "") -> str:
    """``INSERT INTO table (names) VALUES (?, …)`` plus ``suffix``, with positional markers."""
    preparer, mark = dialect.identifier_preparer, marker(dialect)
    return "INSERT INTO {} ({}) VALUES ({}){}".format(  # noqa: S608 (identifiers from our schema)
        preparer.format_table(table),
        ", ".join(preparer.quote(name) for name in names),
        ", ".join(mark for _ in names),
        suffix,
    )


_COMPILED: dict[tuple[str, tuple[str, ...], str, str], tuple[str, tuple[str, ...] | None]] = {}


def compiled_insert(
    table: Table, columns: Sequence[str], dialect: Dialect
) -> tuple[str, tuple[str, ...] | None]:
    """The Core INSERT of ``columns`` into ``table`` compiled for ``dialect`` (cached), in the
    dialect's own parameter style: the SQL and the parameter names in positional order (None
    for a named style)."""
    key = (table.fullname, tuple(columns), dialect.name, str(dialect.paramstyle))
    found = _COMPILED.get(key)
    if found is None:
        compiled = insert(table).compile(dialect=dialect, column_keys=list(columns))
        positions = compiled.positiontup
        found = _COMPILED[key] = (
            str(compiled),
            None if positions is None else tuple(positions),
        )
    return found


def driver_rows(
    columns: Sequence[str], positions: tuple[str, ...] | None, rows: Sequence[tuple[Any, ...]]
) -> Sequence[Any]:
    """``rows`` (tuples in ``columns`` order) as the driver's executemany wants them for a
    statement from ``compiled_insert``: dicts for a named style, else tuples in its order."""
    if positions is None:
        return [dict(zip(columns, row, strict=True)) for row in rows]
    if positions == tuple(columns):
        return rows
    order = [list(columns).index(name) for name in positions]
    return [tuple(row[i] for i in order) for row in rows]
