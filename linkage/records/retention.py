"""Retention of access records: purge the expired prefix of a chain behind a signed anchor.

Owns the one way records ever leave a ledger. ``purge`` deletes the oldest records (and the
checkpoints over them) only after re-walking them, and only together with a signed anchor for
the hash of the last purged record, so the rest of the chain stays verifiable from it.
``RetentionJob`` runs ``purge`` over an app's ledgers on a schedule, so every app that keeps a
ledger can keep the seven-year rule without an operator.

It must never delete from the middle or the end of a chain, never purge over a broken chain
(it raises ``LedgerTamperedError`` instead), and never run outside the caller's transaction
(the job gives each ledger a transaction of its own, in a worker thread).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta

from nacl.signing import SigningKey
from sqlalchemy import Engine, delete, func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from linkage.db import session_factory, unit_of_work
from linkage.logs import get_logger
from linkage.records.ledger import lock_head
from linkage.records.model import MAX_LEDGER_ID, anchor_message, to_micros, utc_now
from linkage.records.models import ANCHORS, CHECKPOINTS, RECORDS
from linkage.records.verify import LedgerTamperedError, check_prefix

__all__ = [
    "DEFAULT_RETENTION",
    "DEFAULT_RETENTION_INTERVAL",
    "PURGE_BATCH",
    "RetentionError",
    "RetentionJob",
    "purge",
    "retention_cutoff",
]

log = get_logger(__name__)

DEFAULT_RETENTION = timedelta(days=365 * 7 + 2)
"""Seven years (番号法施行令: 情報提供等記録は七年間保存), counted generously: seven years hold
at most two leap days, so nothing is purged a day early."""


PURGE_BATCH = 50_000
"""Records purged per transaction by ``RetentionJob``: a purge holds the ledger's head (on
SQLite the database's write lock) while it re-walks what it deletes, so a long expired prefix
goes in bounded steps and appends wait a fraction of a second, not minutes."""

DEFAULT_RETENTION_INTERVAL = timedelta(hours=1)
"""How often ``RetentionJob`` purges: often enough that nothing outlives its seven years by
more than an hour, rarely enough to cost nothing (a purge with nothing to do is one query)."""


def retention_cutoff(
    now: datetime | None = None, retention: timedelta = DEFAULT_RETENTION
) -> datetime:
    """The cut-off for ``purge``: records that occurred before it have been kept long enough."""
    return (now or utc_now()) - retention


def purge(
    session: Session,
    ledger_id: str,
    older_than: datetime,
    signing_key: SigningKey,
    key_id: str,
    *,
    now: datetime | None = None,
    max_records: int | None = None,
) -> int:
    """Delete the prefix of ``ledger_id`` that occurred before ``older_than``; returns its size.

    The prefix ends just before the first record (in seq order) at or after the cut-off, so a
    record with an out-of-order timestamp is kept with everything after it; ``max_records``
    bounds it (call again for the rest). Runs in the caller's transaction with the head locked
    (appends wait) when there is anything to purge, and takes no lock when there is not.
    Raises ``LedgerTamperedError`` if the records to purge do not verify, so an anchor never
    covers a tampered chain.
    """
    if not key_id or len(key_id) > MAX_LEDGER_ID:
        raise ValueError(f"key_id must be 1 to {MAX_LEDGER_ID} characters")
    if max_records is not None and max_records < 1:
        raise ValueError("max_records must be positive")
    cutoff_us = to_micros(older_than)
    if not _has_expired(session, ledger_id, _anchored_through(session, ledger_id), cutoff_us):
        return 0  # the common case: one indexed read, no head lock
    purged_at_us = to_micros(now or utc_now())
    head = lock_head(session, ledger_id, purged_at_us)
    start = _anchored_through(session, ledger_id)
    through = _purge_through(session, ledger_id, start, head.last_seq, cutoff_us)
    if max_records is not None:
        through = min(through, start + max_records)
    if through <= start:
        return 0
    conn = session.connection()
    hash_, problem = check_prefix(conn, ledger_id, through)
    if problem is not None:
        raise LedgerTamperedError(ledger_id, problem)
    message = anchor_message(ledger_id, through, hash_, purged_at_us, key_id)
    session.execute(
        insert(ANCHORS).values(
            ledger=ledger_id,
            purged_through_seq=through,
            hash=hash_,
            purged_at_us=purged_at_us,
            key_id=key_id,
            signature=signing_key.sign(message).signature,
        )
    )
    session.execute(delete(RECORDS).where(RECORDS.c.ledger == ledger_id, RECORDS.c.seq <= through))
    session.execute(
        delete(CHECKPOINTS).where(CHECKPOINTS.c.ledger == ledger_id, CHECKPOINTS.c.seq < through)
    )
    return through - start


def _anchored_through(session: Session, ledger_id: str) -> int:
    value = session.execute(
        select(func.max(ANCHORS.c.purged_through_seq)).where(ANCHORS.c.ledger == ledger_id)
    ).scalar()
    return 0 if value is None else int(value)


def _has_expired(session: Session, ledger_id: str, start: int, cutoff_us: int) -> bool:
    """Whether the first record after the anchored prefix occurred before the cut-off."""
    first = session.execute(
        select(RECORDS.c.occurred_at_us)
        .where(RECORDS.c.ledger == ledger_id, RECORDS.c.seq > start)
        .order_by(RECORDS.c.seq)
        .limit(1)
    ).scalar()
    return first is not None and int(first) < cutoff_us


def _purge_through(session: Session, ledger_id: str, start: int, last: int, cutoff_us: int) -> int:
    """The last seq to purge: just before the first kept record, or the whole chain."""
    first_kept = session.execute(
        select(RECORDS.c.seq)
        .where(
            RECORDS.c.ledger == ledger_id,
            RECORDS.c.seq > start,
            RECORDS.c.occurred_at_us >= cutoff_us,
        )
        .order_by(RECORDS.c.seq)
        .limit(1)
    ).scalar()
    return last if first_kept is None else int(first_kept) - 1


# -- the scheduled job -----------------------------------------------------------------------


class RetentionError(Exception):
    """Some ledgers could not be purged; the others were (``purged``)."""

    def __init__(self, purged: Mapping[str, int], failures: Mapping[str, Exception]) -> None:
        names = ", ".join(f"{ledger}: {error}" for ledger, error in sorted(failures.items()))
        super().__init__(f"retention failed for {len(failures)} ledger(s): {names}")
        self.purged = dict(purged)
        self.failures = dict(failures)


class RetentionJob:
    """Purges the expired prefix of every ledger of one database, every ``interval``.

    ``ledger_ids`` is asked for the ledgers at each run (an app's tenants may change). Each
    ledger is purged in its own transaction in a worker thread, so the event loop never
    blocks and a ledger that refuses (``LedgerTamperedError``) does not hold back the others.
    ``start`` runs the first purge at once and then one every ``interval``; failures are
    logged and the schedule goes on. ``run_once`` purges now and returns the count per ledger.
    """

    def __init__(
        self,
        engine_or_sessions: Engine | sessionmaker[Session],
        ledger_ids: Callable[[], Iterable[str]],
        signing_key: SigningKey,
        key_id: str,
        retention: timedelta = DEFAULT_RETENTION,
        interval: timedelta = DEFAULT_RETENTION_INTERVAL,
        clock: Callable[[], datetime] = utc_now,
        batch: int = PURGE_BATCH,
    ) -> None:
        if not key_id or len(key_id) > MAX_LEDGER_ID:
            raise ValueError(f"key_id must be 1 to {MAX_LEDGER_ID} characters")
        if retention <= timedelta(0):
            raise ValueError("retention must be positive")
        if interval <= timedelta(0):
            raise ValueError("interval must be positive")
        if batch < 1:
            raise ValueError("batch must be positive")
        if isinstance(engine_or_sessions, Engine):
            engine_or_sessions = session_factory(engine_or_sessions)
        self._sessions = engine_or_sessions
        self._ledger_ids = ledger_ids
        self._signing_key = signing_key
        self._key_id = key_id
        self.retention = retention
        self.interval = interval
        self._clock = clock
        self.batch = batch
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Start the schedule (the first purge runs at once); a second start does nothing."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="records-retention")

    async def stop(self) -> None:
        """Stop the schedule; a purge in progress finishes its transaction first."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run_once(self) -> dict[str, int]:
        """Purge every ledger now; returns how many records each lost (0 for most runs).

        Raises ``RetentionError`` (after trying every ledger) if any ledger failed.
        """
        async with self._lock:  # the schedule and a manual run never purge at once
            now = self._clock()
            ledgers = sorted(set(self._ledger_ids()))
            work = asyncio.ensure_future(asyncio.to_thread(self._purge_all, ledgers, now))
            try:
                return await asyncio.shield(work)
            except asyncio.CancelledError:
                # The thread cannot be interrupted: let its transaction end before ``stop``
                # returns (the app may dispose of the engine next).
                with contextlib.suppress(Exception):
                    await work
                raise

    async def _run(self) -> None:
        while True:
            try:
                purged = await self.run_once()
            except RetentionError as exc:
                log.error("records_retention_failed", failures=sorted(exc.failures))
            except Exception:
                log.exception("records_retention_failed")
            else:
                if any(purged.values()):
                    log.info("records_purged", ledgers={k: v for k, v in purged.items() if v})
            await asyncio.sleep(self.interval.total_seconds())

    def _purge_all(self, ledgers: list[str], now: datetime) -> dict[str, int]:
        """Runs in a worker thread: one transaction per ledger."""
        cutoff = retention_cutoff(now, self.retention)
        purged: dict[str, int] = {}
        failures: dict[str, Exception] = {}
        for ledger_id in ledgers:
            total = 0
            try:
                while True:  # bounded steps, each its own transaction
                    with unit_of_work(self._sessions) as session:
                        step = purge(
                            session,
                            ledger_id,
                            cutoff,
                            self._signing_key,
                            self._key_id,
                            now=now,
                            max_records=self.batch,
                        )
                    total += step
                    if step < self.batch:
                        break
            except Exception as exc:
                failures[ledger_id] = exc
                if total:  # the steps before the failure are committed
                    purged[ledger_id] = total
            else:
                purged[ledger_id] = total
        if failures:
            raise RetentionError(purged, failures)
        return purged
