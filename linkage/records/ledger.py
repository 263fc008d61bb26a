"""Appending to a ledger: the synchronous chain extender and the asyncio group-commit writer.

Owns how a record joins its chain: lock the ledger's head row, number the records after it,
hash each onto its predecessor, insert them, move the head, and sign a checkpoint every
``checkpoint_every`` records or ``checkpoint_interval``. ``Ledger.append_many`` does this in
the caller's transaction, so a record commits atomically with the business change it records;
``RecordWriter`` batches many concurrent appends into one transaction for hot paths.

Appending is on the hot path of every query: rows are hashed in one tight loop and go to the
driver as plain tuples (``COPY`` on PostgreSQL with psycopg, ``executemany`` elsewhere).

It must never update or delete a record (only ``retention.purge`` deletes, behind a signed
anchor), never write an individual number, and never block the event loop (database work runs
in a thread). Serialization of writers relies on the head row alone: SQLite's write lock, or
``SELECT … FOR UPDATE`` on PostgreSQL, so several replicas can share one ledger.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from nacl.signing import SigningKey, VerifyKey
from sqlalchemy import Connection, Dialect, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from linkage import sqlfast
from linkage.db import unit_of_work
from linkage.records.model import (
    DATA_ITEM_SEPARATOR,
    FIELD_SEPARATOR,
    FORMAT_VERSION,
    GENESIS_HASH,
    MAX_LEDGER_ID,
    AccessRecord,
    checkpoint_message,
    to_micros,
    utc_now,
)
from linkage.records.models import CHECKPOINTS, HEADS, RECORDS

__all__ = [
    "DEFAULT_CHECKPOINT_EVERY",
    "DEFAULT_CHECKPOINT_INTERVAL",
    "Head",
    "Ledger",
    "RecordWriter",
    "lock_head",
    "read_head",
]

DEFAULT_CHECKPOINT_EVERY = 1000
"""Records between signed checkpoints: the most a key-less attacker could silently truncate."""

DEFAULT_CHECKPOINT_INTERVAL = timedelta(seconds=60)
"""Longest a record stays unsigned while the ledger is in use."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Head:
    """The chain head of one ledger as stored."""

    ledger: str
    last_seq: int
    last_hash: bytes
    checkpoint_seq: int
    checkpoint_at_us: int


_HEAD_COLUMNS = (
    HEADS.c.ledger,
    HEADS.c.last_seq,
    HEADS.c.last_hash,
    HEADS.c.checkpoint_seq,
    HEADS.c.checkpoint_at_us,
)


def read_head(session: Session, ledger_id: str) -> Head | None:
    """The head of ``ledger_id`` without locking it, or None for a ledger never written."""
    row = session.execute(select(*_HEAD_COLUMNS).where(HEADS.c.ledger == ledger_id)).first()
    return None if row is None else Head(*row)


def lock_head(session: Session, ledger_id: str, now_us: int) -> Head:
    """Create the head of ``ledger_id`` if missing and lock it until the transaction ends.

    The first statement is a write, so on SQLite it takes the database write lock (waiting on
    the busy timeout) before anything is read: no writer can act on a stale head. PostgreSQL
    gets ``INSERT … ON CONFLICT DO NOTHING`` then ``SELECT … FOR UPDATE``. On the hot path of
    every append: both statements are compiled once per dialect and go to the driver as is.
    """
    conn = session.connection()
    dialect = conn.dialect
    values = (ledger_id, 0, GENESIS_HASH, 0, now_us)
    if dialect.name in ("sqlite", "postgresql"):
        _driver(conn, _HEAD_SQL.create, dict(zip(_HEAD_KEYS, values, strict=True)))
    elif read_head(session, ledger_id) is None:
        session.execute(insert(HEADS).values(dict(zip(_HEAD_KEYS, values, strict=True))))
    row = _driver(conn, _HEAD_SQL.lock, {"w_ledger": ledger_id}).one()
    return Head(*row)


_HEAD_KEYS = ("ledger", "last_seq", "last_hash", "checkpoint_seq", "checkpoint_at_us")


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A statement compiled for one dialect: its SQL and the order of its parameters (None
    for a driver taking named parameters)."""

    sql: str
    positions: tuple[str, ...] | None


class _HeadStatements:
    """The head statements of each dialect, compiled once (building and compiling a Core
    statement costs more than the statement itself on SQLite)."""

    def __init__(self) -> None:
        self._compiled: dict[tuple[str, str, str], _Compiled] = {}

    def _get(self, name: str, dialect: Dialect) -> _Compiled:
        key = (name, dialect.name, str(dialect.paramstyle))
        found = self._compiled.get(key)
        if found is None:
            compiled = _HEAD_BUILDERS[name](dialect.name).compile(dialect=dialect)
            positions = compiled.positiontup
            found = _Compiled(str(compiled), None if positions is None else tuple(positions))
            self._compiled[key] = found
        return found

    def create(self, dialect: Dialect) -> _Compiled:
        return self._get("create", dialect)

    def lock(self, dialect: Dialect) -> _Compiled:
        return self._get("lock", dialect)

    def move(self, dialect: Dialect) -> _Compiled:
        return self._get("move", dialect)

    def move_signed(self, dialect: Dialect) -> _Compiled:
        return self._get("move_signed", dialect)


def _create_head(dialect_name: str) -> Any:
    values: dict[str, Any] = {
        name: bindparam(name, type_=HEADS.c[name].type) for name in _HEAD_KEYS
    }
    if dialect_name == "postgresql":
        return postgresql.insert(HEADS).values(values).on_conflict_do_nothing()
    return sqlite.insert(HEADS).values(values).on_conflict_do_nothing()


def _lock_head(_dialect_name: str) -> Any:
    return select(*_HEAD_COLUMNS).where(HEADS.c.ledger == bindparam("w_ledger")).with_for_update()


def _move_head(_dialect_name: str) -> Any:
    return (
        update(HEADS)
        .where(HEADS.c.ledger == bindparam("w_ledger"))
        .values(last_seq=bindparam("p_last_seq"), last_hash=bindparam("p_last_hash"))
    )


def _move_head_signed(_dialect_name: str) -> Any:
    return (
        update(HEADS)
        .where(HEADS.c.ledger == bindparam("w_ledger"))
        .values(
            last_seq=bindparam("p_last_seq"),
            last_hash=bindparam("p_last_hash"),
            checkpoint_seq=bindparam("p_checkpoint_seq"),
            checkpoint_at_us=bindparam("p_checkpoint_at_us"),
        )
    )


_HEAD_BUILDERS: dict[str, Callable[[str], Any]] = {
    "create": _create_head,
    "lock": _lock_head,
    "move": _move_head,
    "move_signed": _move_head_signed,
}
_HEAD_SQL = _HeadStatements()


def _driver(
    conn: Connection, statement: Callable[[Dialect], _Compiled], params: dict[str, Any]
) -> Any:
    """Run a compiled head statement at the driver (every value is an int, str or bytes)."""
    compiled = statement(conn.dialect)
    if compiled.positions is None:
        return conn.exec_driver_sql(compiled.sql, params)
    return conn.exec_driver_sql(compiled.sql, tuple(params[name] for name in compiled.positions))


# The columns of ``access_records`` in the order ``_chain`` produces them.
_COLUMNS = (
    "ledger",
    "seq",
    "occurred_at_us",
    "event",
    "actor_kind",
    "actor_id",
    "procedure",
    "requester",
    "provider",
    "data_items",
    "subject",
    "permit_id",
    "query_id",
    "outcome",
    "reason",
    "prev_hash",
    "hash",
)


def _chain(seq: int, prev: bytes, records: Sequence[AccessRecord]) -> list[tuple[Any, ...]]:
    """The rows of ``records`` appended after (``seq``, ``prev``), hashes included.

    The hot loop of appending. The entry bytes are the layout of ``model.encode_entry``
    (FORMAT.md §3), spelled out as one f-string because that is about twice as fast as
    joining a tuple; the tests assert that both give the same bytes, and the values hashed
    are the very values inserted.
    """
    sha256 = hashlib.sha256
    rows: list[tuple[Any, ...]] = []
    append = rows.append
    # The records of one append usually share one time object: convert it once.
    last_at: datetime | None = None
    occurred_us = 0
    for record in records:
        seq += 1
        ledger, at = record.ledger, record.occurred_at
        if at is not last_at:
            last_at, occurred_us = at, (at - _EPOCH) // _MICROSECOND
        # ``_value_`` is the plain str behind a StrEnum member: what the drivers should get.
        event, kind, outcome = (
            record.event._value_,
            record.actor_kind._value_,
            record.outcome._value_,
        )
        actor_id, procedure, requester, provider = (
            record.actor_id,
            record.procedure,
            record.requester,
            record.provider,
        )
        items, subject, permit_id, query_id, reason = (
            ",".join(record.data_items),
            record.subject,
            record.permit_id,
            record.query_id,
            record.reason,
        )
        body = (
            f"AR1\x1f{ledger}\x1f{seq}\x1f{occurred_us}\x1f{event}\x1f{kind}\x1f{actor_id}"
            f"\x1f{procedure}\x1f{requester}\x1f{provider}\x1f{items}\x1f{subject}"
            f"\x1f{permit_id}\x1f{query_id}\x1f{outcome}\x1f{reason}"
        ).encode()
        digest = sha256(prev + body).digest()
        append(
            (
                ledger,
                seq,
                occurred_us,
                event,
                kind,
                actor_id,
                procedure,
                requester,
                provider,
                items,
                subject,
                permit_id,
                query_id,
                outcome,
                reason,
                prev,
                digest,
            )
        )
        prev = digest
    return rows


# The f-string in ``_chain`` spells these out; a new format version must change both.
assert (FORMAT_VERSION, FIELD_SEPARATOR, DATA_ITEM_SEPARATOR) == ("AR1", "\x1f", ",")

_COPY_SQL = f"COPY {RECORDS.name} ({', '.join(_COLUMNS)}) FROM STDIN"


def _insert_sql(dialect: Dialect) -> tuple[str, tuple[str, ...] | None]:
    """The INSERT for ``access_records`` in the dialect's own parameter style.

    Rows go to the driver's executemany as plain tuples: SQLAlchemy's per-row parameter
    processing costs about three times the insert itself (measured on SQLite), and every
    value here is already an int, str or bytes.
    """
    return sqlfast.compiled_insert(RECORDS, _COLUMNS, dialect)


def _insert_rows(session: Session, rows: list[tuple[Any, ...]]) -> None:
    conn = sqlfast.connection(session)
    dialect = conn.dialect
    if dialect.name == "postgresql" and dialect.driver == "psycopg":
        _copy_rows(conn.connection.driver_connection, rows)
        return
    sql, positions = _insert_sql(dialect)
    conn.exec_driver_sql(sql, sqlfast.driver_rows(_COLUMNS, positions, rows))


def _copy_rows(driver_connection: Any, rows: list[tuple[Any, ...]]) -> None:
    """PostgreSQL with psycopg: ``COPY … FROM STDIN`` in the session's transaction.

    About four times faster than executemany against the server (measured: 10 µs against
    40 µs a row) and a fifth of the client CPU; psycopg escapes text and bytea itself.
    """
    with driver_connection.cursor() as cursor, cursor.copy(_COPY_SQL) as copy:
        write_row = copy.write_row
        for row in rows:
            write_row(row)


class Ledger:
    """Extends chains and signs checkpoints with one Ed25519 key; holds no per-ledger state.

    One instance serves every ledger of a database (and every thread): the chain state lives
    in the head rows, so replicas on other machines can append to the same ledgers.
    """

    def __init__(
        self,
        signing_key: SigningKey,
        key_id: str,
        *,
        checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
        checkpoint_interval: timedelta = DEFAULT_CHECKPOINT_INTERVAL,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if not key_id or len(key_id) > MAX_LEDGER_ID or not key_id.isprintable():
            raise ValueError(f"key_id must be 1 to {MAX_LEDGER_ID} printable characters")
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1")
        if checkpoint_interval <= timedelta(0):
            raise ValueError("checkpoint_interval must be positive")
        self._signing_key = signing_key
        self.key_id = key_id
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval = checkpoint_interval
        self._interval_us = checkpoint_interval // timedelta(microseconds=1)
        self._clock = clock

    def verify_keys(self) -> dict[str, VerifyKey]:
        """The key map ``verify`` needs for the checkpoints this ledger signs."""
        return {self.key_id: self._signing_key.verify_key}

    def append(self, session: Session, record: AccessRecord) -> int:
        """Append one record in the caller's transaction; returns its seq."""
        (seq,) = self.append_many(session, record.ledger, (record,))
        return seq

    def append_many(
        self, session: Session, ledger_id: str, records: Sequence[AccessRecord]
    ) -> list[int]:
        """Append ``records`` (in order) to ``ledger_id`` in the caller's transaction.

        Returns their seqs. The head stays locked until the caller commits or rolls back, so
        keep the transaction short, and when one transaction appends to several ledgers, do it
        in ledger-id order (as ``RecordWriter`` does) so that replicas cannot deadlock.
        Nothing is visible to others before the commit, and a rollback leaves the chain
        exactly as it was.
        """
        if not records:
            return []
        for record in records:
            if type(record) is not AccessRecord and not isinstance(record, AccessRecord):
                raise TypeError("only AccessRecord instances can be appended")
            if record.ledger != ledger_id:
                raise ValueError(f"record for ledger {record.ledger!r} appended to {ledger_id!r}")
        now_us = to_micros(self._clock())
        head = lock_head(session, ledger_id, now_us)
        rows = _chain(head.last_seq, head.last_hash, records)
        _insert_rows(session, rows)
        seq, prev = rows[-1][1], rows[-1][-1]
        checkpoint_due = seq - head.checkpoint_seq >= self.checkpoint_every or (
            now_us - head.checkpoint_at_us >= self._interval_us
        )
        self._move_head(session, ledger_id, seq, prev, now_us if checkpoint_due else None)
        return list(range(head.last_seq + 1, seq + 1))

    def checkpoint(self, session: Session, ledger_id: str, *, force: bool = False) -> int | None:
        """Sign the head of ``ledger_id`` if records are unsigned and the interval has passed
        (or ``force``); returns the signed seq, or None when nothing needed signing."""
        now_us = to_micros(self._clock())
        head = lock_head(session, ledger_id, now_us)
        if head.last_seq <= head.checkpoint_seq:
            return None
        if not force and now_us - head.checkpoint_at_us < self._interval_us:
            return None
        self._move_head(session, ledger_id, head.last_seq, head.last_hash, now_us)
        return head.last_seq

    def _move_head(
        self, session: Session, ledger_id: str, seq: int, hash_: bytes, sign_at_us: int | None
    ) -> None:
        """Point the head at ``seq``; with ``sign_at_us``, also sign a checkpoint there."""
        conn = session.connection()
        params: dict[str, Any] = {"w_ledger": ledger_id, "p_last_seq": seq, "p_last_hash": hash_}
        if sign_at_us is None:
            _driver(conn, _HEAD_SQL.move, params)
            return
        message = checkpoint_message(ledger_id, seq, hash_, sign_at_us, self.key_id)
        session.execute(
            insert(CHECKPOINTS).values(
                ledger=ledger_id,
                seq=seq,
                hash=hash_,
                signed_at_us=sign_at_us,
                key_id=self.key_id,
                signature=self._signing_key.sign(message).signature,
            )
        )
        params |= {"p_checkpoint_seq": seq, "p_checkpoint_at_us": sign_at_us}
        _driver(conn, _HEAD_SQL.move_signed, params)


_Waiter = tuple[tuple[AccessRecord, ...], "asyncio.Future[list[int]]"]


class RecordWriter:
    """Group commit for hot paths: ``await append(record)`` returns once the record is durable.

    Appends queue up; one background task commits them in batches of up to ``max_batch`` in a
    single transaction, in a worker thread. While one batch is being written the next one
    gathers, and when appends are concurrent the writer also waits ``max_delay`` seconds for a
    batch to fill (group commit); a lone appender is committed at once. A failed batch
    fails every append in it, and nothing of it is written. Records of several ledgers may share
    a batch; their heads are locked in ledger order so replicas never deadlock.

    Cancelling an ``append`` does not withdraw its record: the event it records did happen.
    Idle ledgers get a checkpoint after ``ledger.checkpoint_interval``; ``close`` flushes and
    signs a final checkpoint, so a cleanly stopped ledger has no unsigned tail.
    """

    def __init__(
        self,
        ledger: Ledger,
        sessions: sessionmaker[Session],
        *,
        max_batch: int = 5000,
        max_delay: float = 0.002,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._ledger = ledger
        self._sessions = sessions
        self._max_batch = max_batch
        self._max_delay = max_delay
        self._pending: deque[_Waiter] = deque()
        self._pending_count = 0
        self._busy = False  # did the last batch serve several appenders?
        self._unsigned: set[str] = set()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def __aenter__(self) -> RecordWriter:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def append(self, record: AccessRecord) -> int:
        """Append one record; returns its seq once it is committed."""
        if not isinstance(record, AccessRecord):
            raise TypeError("only AccessRecord instances can be appended")
        (seq,) = await self._enqueue((record,))
        return seq

    async def append_many(self, records: Iterable[AccessRecord]) -> list[int]:
        """Append records in order (always in one batch); returns their seqs once committed."""
        batch = tuple(records)
        for record in batch:
            if not isinstance(record, AccessRecord):
                raise TypeError("only AccessRecord instances can be appended")
        if not batch:
            return []
        return await self._enqueue(batch)

    async def flush(self) -> None:
        """Wait until everything appended so far is committed (or has failed)."""
        if self._task is not None and not self._task.done():
            # An empty batch is a barrier: batches commit in order, so once it is resolved
            # everything queued before it is settled.
            barrier = self._enqueue(())
            await asyncio.wait([barrier])
            if not barrier.cancelled():
                barrier.exception()  # a failed batch is its appenders' news, not ours

    def _enqueue(self, batch: tuple[AccessRecord, ...]) -> asyncio.Future[list[int]]:
        if self._closed:
            raise RuntimeError("the record writer is closed")
        wakeup = self._wakeup or self._start()
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._pending.append((batch, future))
        self._pending_count += len(batch)
        wakeup.set()
        return future

    async def close(self) -> None:
        """Commit everything pending, sign a final checkpoint, and refuse further appends."""
        self._closed = True
        if self._task is not None and self._wakeup is not None:
            self._wakeup.set()
            await self._task
        if self._unsigned:
            await asyncio.to_thread(self._checkpoint, sorted(self._unsigned))
            self._unsigned.clear()

    def _start(self) -> asyncio.Event:
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._run(self._wakeup), name="record-writer")
        return self._wakeup

    async def _run(self, wakeup: asyncio.Event) -> None:
        try:
            while True:
                if not self._pending:
                    if self._closed:
                        return
                    wakeup.clear()
                    await self._idle(wakeup)
                    continue
                if self._busy and self._pending_count < self._max_batch and not self._closed:
                    # Group commit: under concurrency, give appenders a moment to join this
                    # batch. A lone appender is not kept waiting for company.
                    await asyncio.sleep(self._max_delay)
                self._busy = await self._commit_batch() > 1
        except BaseException as exc:
            # Never leave an appender waiting forever behind a dead writer.
            self._closed = True
            self._fail_pending(exc)
            raise

    async def _idle(self, wakeup: asyncio.Event) -> None:
        if not self._unsigned:
            await wakeup.wait()
            return
        interval = self._ledger.checkpoint_interval.total_seconds()
        try:
            await asyncio.wait_for(wakeup.wait(), timeout=interval)
        except TimeoutError:
            unsigned = sorted(self._unsigned)
            self._unsigned.clear()
            try:
                await asyncio.to_thread(self._checkpoint, unsigned)
            except Exception:
                # Best effort: the chain is intact without it; retry after the next interval
                # rather than stop recording.
                self._unsigned.update(unsigned)

    async def _commit_batch(self) -> int:
        """Commit the next batch; returns how many appenders it served."""
        waiters: list[_Waiter] = []
        count = 0
        while self._pending and (
            not waiters or count + len(self._pending[0][0]) <= self._max_batch
        ):
            waiter = self._pending.popleft()
            waiters.append(waiter)
            count += len(waiter[0])
        self._pending_count -= count
        records = [record for batch, _ in waiters for record in batch]
        if not records:  # only flush barriers
            for _, future in waiters:
                if not future.done():
                    future.set_result([])
            return len(waiters)
        try:
            seqs = await asyncio.to_thread(self._write, records)
        except Exception as exc:
            for _, future in waiters:
                if not future.done():
                    future.set_exception(exc)
            return len(waiters)
        self._unsigned.update(record.ledger for record in records)
        start = 0
        for batch, future in waiters:
            if not future.done():
                future.set_result(seqs[start : start + len(batch)])
            start += len(batch)
        return len(waiters)

    def _write(self, records: list[AccessRecord]) -> list[int]:
        """One transaction for the whole batch (runs in a worker thread)."""
        positions: dict[str, list[int]] = {}
        for index, record in enumerate(records):
            positions.setdefault(record.ledger, []).append(index)
        seqs = [0] * len(records)
        with unit_of_work(self._sessions) as session:
            for ledger_id in sorted(positions):
                indexes = positions[ledger_id]
                appended = self._ledger.append_many(
                    session, ledger_id, [records[i] for i in indexes]
                )
                for index, seq in zip(indexes, appended, strict=True):
                    seqs[index] = seq
        return seqs

    def _checkpoint(self, ledger_ids: list[str]) -> None:
        with unit_of_work(self._sessions) as session:
            for ledger_id in ledger_ids:
                self._ledger.checkpoint(session, ledger_id, force=True)

    def _fail_pending(self, exc: BaseException) -> None:
        error = exc if isinstance(exc, Exception) else RuntimeError("the record writer stopped")
        while self._pending:
            _, future = self._pending.popleft()
            if not future.done():
                future.set_exception(error)
        self._pending_count = 0
