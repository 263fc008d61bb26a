"""Linking one seq range of a ledger on its own: the unit of fast and parallel verification.

Owns ``link_span``, the verifier's hot loop over raw driver rows (no SQLAlchemy row objects):
for the records ``lo < seq <= hi`` of one ledger it checks that every seq is present and in
order, that each record's stored ``prev_hash`` is the hash of the record before it, and that
its stored ``hash`` is SHA-256(prev_hash || entry bytes), and it returns the range's stored
``prev_hash`` of its first record and hash of its last, so ranges checked separately (in
other processes) can be stitched together by their caller. It also notes the chain hash at
the seqs asked for (the checkpoints), which the caller compares with the signed ones.

It answers only "all links hold" (a ``Span``) or "something is off" (None): a break is
classified, and its first position found, by the sequential walker in ``verify``, which is
what callers fall back to. This module imports no SQLAlchemy or PyNaCl, so a spawned worker
starts fast; workers open their own read-only connection and never write.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Span", "SpanQuery", "link_span", "link_span_in_worker"]


@dataclass(frozen=True, slots=True)
class SpanQuery:
    """How to read the rows of a range: picklable, so a worker process can run it.

    ``sql`` selects (seq, prev_hash, entry bytes, hash) of ``ledger`` for ``lo < seq <= hi``
    in seq order, in the driver's parameter style. ``positions`` names the parameters in order
    for positional styles (None: pass them by name); ``constants`` are the literal parameters
    of the entry-bytes expression. ``driver``, ``connect_args`` and ``connect_kwargs`` let a
    worker open its own connection (``sqlite3`` or ``psycopg``).
    """

    sql: str
    positions: tuple[str, ...] | None
    constants: Mapping[str, Any]
    driver: str = ""
    connect_args: tuple[Any, ...] = ()
    connect_kwargs: Mapping[str, Any] | None = None
    binary: bool = False

    def cursor(self, dbapi_connection: Any) -> Any:
        """A cursor for the rows; psycopg's binary results skip the hex form of ``bytea``
        (half the client's work per row, measured)."""
        return dbapi_connection.cursor(binary=True) if self.binary else dbapi_connection.cursor()

    def parameters(self, ledger: str, lo: int, hi: int) -> Any:
        """The driver parameters of one window of the range."""
        values = {**self.constants, "ledger": ledger, "lo": lo, "hi": hi}
        if self.positions is None:
            return values
        return tuple(values[name] for name in self.positions)


@dataclass(frozen=True, slots=True)
class Span:
    """A range ``first..last`` whose records are all present and all link to each other."""

    first: int
    last: int
    first_prev: bytes
    last_hash: bytes
    marks: dict[int, bytes]


def link_span(
    dbapi_connection: Any,
    query: SpanQuery,
    ledger: str,
    lo: int,
    hi: int,
    marks: Sequence[int] = (),
    *,
    prev: bytes | None = None,
    window: int = 20_000,
) -> Span | None:
    """Check the links of the records ``lo < seq <= hi`` of ``ledger``; None if any is off.

    ``prev`` is the hash the first record must link to; None takes its stored ``prev_hash``
    as given (the caller stitches). ``marks`` are seqs (ascending) whose chain hash to return.
    Rows are fetched in windows of ``window`` seqs, each one short query.
    """
    if hi <= lo:
        return None
    sha256 = hashlib.sha256
    pending = [seq for seq in marks if lo < seq <= hi]
    pending.reverse()
    found: dict[int, bytes] = {}
    next_mark = pending.pop() if pending else -1
    expected = lo + 1
    first_prev: bytes | None = prev
    cursor = query.cursor(dbapi_connection)
    try:
        for start in range(lo, hi, window):
            cursor.execute(query.sql, query.parameters(ledger, start, min(start + window, hi)))
            rows = cursor.fetchall()
            if not rows:
                return None
            if first_prev is None:
                first_prev = prev = rows[0][1]
            for seq, stored_prev, body, stored_hash in rows:
                if seq != expected or stored_prev != prev:
                    return None
                prev = sha256(prev + body).digest()
                if prev != stored_hash:
                    return None
                if seq == next_mark:
                    found[seq] = prev
                    next_mark = pending.pop() if pending else -1
                expected += 1
    except TypeError:  # a NULL or mistyped column
        return None
    finally:
        cursor.close()
    if expected != hi + 1 or first_prev is None or prev is None:
        return None
    return Span(lo + 1, hi, first_prev, prev, found)


def link_span_in_worker(
    query: SpanQuery, ledger: str, lo: int, hi: int, marks: Sequence[int], window: int
) -> Span | None:
    """``link_span`` on a connection of its own (runs in a worker process), read-only."""
    connection = _connect(query)
    try:
        return link_span(connection, query, ledger, lo, hi, marks, window=window)
    finally:
        connection.close()


def _connect(query: SpanQuery) -> Any:
    kwargs = dict(query.connect_kwargs or {})
    if query.driver == "sqlite3":
        import sqlite3

        connection = sqlite3.connect(*query.connect_args, **kwargs)
        connection.execute("PRAGMA query_only = ON")
        connection.execute("PRAGMA busy_timeout = 30000")
        return connection
    if query.driver == "psycopg":
        import psycopg

        connection = psycopg.connect(*query.connect_args, **kwargs, autocommit=True)
        connection.execute("SET default_transaction_read_only = on")
        return connection
    raise ValueError(f"no worker support for driver {query.driver!r}")
