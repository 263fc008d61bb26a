"""Retention of access records: purge the expired prefix of a chain behind a signed anchor.

Owns the one way records ever leave a ledger. ``purge`` deletes the oldest records (and the
checkpoints over them) only after re-walking them, and only together with a signed anchor for
the hash of the last purged record, so the rest of the chain stays verifiable from it.

It must never delete from the middle or the end of a chain, never purge over a broken chain
(it raises ``LedgerTamperedError`` instead), and never run outside the caller's transaction.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from nacl.signing import SigningKey
from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from linkage.records.ledger import lock_head
from linkage.records.model import MAX_LEDGER_ID, anchor_message, to_micros, utc_now
from linkage.records.models import ANCHORS, CHECKPOINTS, RECORDS
from linkage.records.verify import LedgerTamperedError, check_prefix

__all__ = ["DEFAULT_RETENTION", "purge", "retention_cutoff"]

DEFAULT_RETENTION = timedelta(days=365 * 7 + 2)
"""Seven years (番号法施行令: 情報提供等記録は七年間保存), counted generously: seven years hold
at most two leap days, so nothing is purged a day early."""


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
) -> int:
    """Delete the prefix of ``ledger_id`` that occurred before ``older_than``; returns its size.

    The prefix ends just before the first record (in seq order) at or after the cut-off, so a
    record with an out-of-order timestamp is kept with everything after it. Runs in the
    caller's transaction with the head locked (appends wait). Raises ``LedgerTamperedError``
    if the records to purge do not verify, so an anchor never covers a tampered chain.
    """
    if not key_id or len(key_id) > MAX_LEDGER_ID:
        raise ValueError(f"key_id must be 1 to {MAX_LEDGER_ID} characters")
    purged_at_us = to_micros(now or utc_now())
    head = lock_head(session, ledger_id, purged_at_us)
    start = _anchored_through(session, ledger_id)
    through = _purge_through(session, ledger_id, start, head.last_seq, to_micros(older_than))
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
