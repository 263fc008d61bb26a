"""Reading records out: disclosure to a person, and the export an auditor verifies.

Owns ``disclose`` (the records about a person, by the subject ids they are known by in this
database: who looked at their data, when, for what) and ``export_jsonl`` (one ledger with its
checkpoints, anchors and head as JSON lines, FORMAT.md §8, for ``verify_jsonl`` or any
independent re-implementation); and, for the person-level disclosure that the network and the
intermediate servers assemble alike, the network's place name and the order of placed records.

It only ever reads, and never turns an individual number into a subject: callers pass unified
numbers or linkage codes. The export copies columns verbatim (no validation, no repair), so a
tampered row stays tampered in the export and the auditor sees what the database holds.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TextIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from linkage.records.ledger import read_head
from linkage.records.model import (
    DATA_ITEM_SEPARATOR,
    FORMAT_VERSION,
    AccessRecord,
    from_micros,
    to_micros,
    utc_now,
)
from linkage.records.models import ANCHORS, CHECKPOINTS, RECORDS

__all__ = ["NETWORK_PLACE", "StoredRecord", "disclose", "export_jsonl", "iso", "placed_order"]

NETWORK_PLACE = "network"
"""The place of the records the network keeps in a person-level disclosure (every other place
is an organization code)."""


class _Stamp(Protocol):
    @property
    def seconds(self) -> int: ...
    @property
    def nanos(self) -> int: ...


class _Entry(Protocol):
    @property
    def occurred_at(self) -> _Stamp: ...


class _Placed(Protocol):
    @property
    def place(self) -> str: ...
    @property
    def record(self) -> _Entry: ...


def placed_order(placed: _Placed) -> tuple[int, int, str]:
    """The sort key of a disclosed record and its place: oldest first, then by place."""
    stamp = placed.record.occurred_at
    return (stamp.seconds, stamp.nanos, placed.place)


_SUBJECTS_PER_QUERY = 500
"""Subjects per IN (…) list: well under every database's bound-parameter limit."""

_EXPORT_CHUNK = 10_000

_RECORD_COLUMNS = (
    RECORDS.c.seq,
    RECORDS.c.ledger,
    RECORDS.c.occurred_at_us,
    RECORDS.c.event,
    RECORDS.c.actor_kind,
    RECORDS.c.actor_id,
    RECORDS.c.procedure,
    RECORDS.c.requester,
    RECORDS.c.provider,
    RECORDS.c.data_items,
    RECORDS.c.subject,
    RECORDS.c.permit_id,
    RECORDS.c.query_id,
    RECORDS.c.outcome,
    RECORDS.c.reason,
    RECORDS.c.prev_hash,
    RECORDS.c.hash,
)


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record as stored: its position in its ledger, its chain hash, and the record."""

    seq: int
    hash: bytes
    record: AccessRecord


def iso(micros: int) -> str:
    """The export's timestamp form: UTC, microseconds, ``Z`` (e.g. 2026-04-01T09:00:00.000000Z)."""
    return from_micros(micros).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _verbatim_time(value: object) -> object:
    """A stored time for the export; a value that is not a valid time is exported as it is
    (the auditor's verification then reports that record)."""
    try:
        return iso(value) if isinstance(value, int) else value
    except (OverflowError, ValueError):
        return value


def _verbatim_hex(value: object) -> object:
    return value.hex() if isinstance(value, bytes) else value


def _split_items(joined: str) -> tuple[str, ...]:
    return tuple(joined.split(DATA_ITEM_SEPARATOR)) if joined else ()


def disclose(
    session: Session,
    subjects: Collection[str],
    *,
    ledgers: Collection[str] | None = None,
) -> list[StoredRecord]:
    """The records about a person, oldest first, across the ledgers of this database.

    ``subjects`` are the ids the person is known by here (a unified number, linkage codes).
    ``ledgers`` restricts the answer to some ledgers: a multi-tenant server passes its tenant's
    ledgers so no organization sees another's records. Raises ``ValueError`` on an empty
    subject (it would match every record that has none).
    """
    wanted = sorted(set(subjects))
    if any(not subject for subject in wanted):
        raise ValueError("a subject must not be empty")
    found: list[StoredRecord] = []
    for start in range(0, len(wanted), _SUBJECTS_PER_QUERY):
        chunk = wanted[start : start + _SUBJECTS_PER_QUERY]
        stmt = select(*_RECORD_COLUMNS).where(RECORDS.c.subject.in_(chunk))
        if ledgers is not None:
            stmt = stmt.where(RECORDS.c.ledger.in_(sorted(set(ledgers))))
        found.extend(_stored(row) for row in session.execute(stmt))
    found.sort(key=lambda s: (s.record.occurred_at, s.record.ledger, s.seq))
    return found


def _stored(row: tuple[Any, ...]) -> StoredRecord:
    (seq, ledger, occurred_at_us, event, actor_kind, actor_id, procedure, requester, provider,
     data_items, subject, permit_id, query_id, outcome, reason, _prev, hash_) = row  # fmt: skip
    record = AccessRecord(
        occurred_at=from_micros(occurred_at_us),
        ledger=ledger,
        event=event,
        actor_kind=actor_kind,
        actor_id=actor_id,
        procedure=procedure,
        requester=requester,
        provider=provider,
        data_items=_split_items(data_items),
        subject=subject,
        permit_id=permit_id,
        query_id=query_id,
        outcome=outcome,
        reason=reason,
    )
    return StoredRecord(seq=seq, hash=hash_, record=record)


def _line(item: Mapping[str, Any]) -> str:
    return json.dumps(item, ensure_ascii=False, separators=(",", ":")) + "\n"


def export_jsonl(
    session: Session, ledger_id: str, out: TextIO, *, now: datetime | None = None
) -> int:
    """Write ledger ``ledger_id`` to ``out`` as JSON lines (FORMAT.md §8); returns the number
    of records written.

    The export is the chain as of its head when the export starts: records appended while it
    runs are left for the next export, so the file is always a complete chain with its head.
    """
    head = read_head(session, ledger_id)
    through = 0 if head is None else head.last_seq
    exported_at = iso(to_micros(now or utc_now()))
    out.write(
        _line(
            {
                "type": "header",
                "format": FORMAT_VERSION,
                "ledger": ledger_id,
                "exported_at": exported_at,
            }
        )
    )
    for line in _signed_lines(session, ledger_id, through):
        out.write(line)
    count = 0
    for row in _records(session, ledger_id, through):
        out.write(_record_line(row))
        count += 1
    if head is not None:
        out.write(
            _line(
                {
                    "type": "head",
                    "ledger": ledger_id,
                    "seq": head.last_seq,
                    "hash": head.last_hash.hex(),
                }
            )
        )
    return count


def _signed_lines(session: Session, ledger_id: str, through: int) -> Iterator[str]:
    a = ANCHORS.c
    anchors = session.execute(
        select(a.purged_through_seq, a.hash, a.purged_at_us, a.key_id, a.signature)
        .where(a.ledger == ledger_id)
        .order_by(a.purged_through_seq)
    )
    for seq, hash_, at_us, key_id, signature in anchors:
        yield _line(
            {
                "type": "anchor",
                "ledger": ledger_id,
                "seq": seq,
                "hash": hash_.hex(),
                "purged_at": iso(at_us),
                "key_id": key_id,
                "signature": signature.hex(),
            }
        )
    c = CHECKPOINTS.c
    checkpoints = session.execute(
        select(c.seq, c.hash, c.signed_at_us, c.key_id, c.signature)
        .where(c.ledger == ledger_id, c.seq <= through)
        .order_by(c.seq)
    )
    for seq, hash_, at_us, key_id, signature in checkpoints:
        yield _line(
            {
                "type": "checkpoint",
                "ledger": ledger_id,
                "seq": seq,
                "hash": hash_.hex(),
                "signed_at": iso(at_us),
                "key_id": key_id,
                "signature": signature.hex(),
            }
        )


def _records(session: Session, ledger_id: str, through: int) -> Iterator[tuple[Any, ...]]:
    stmt = (
        select(*_RECORD_COLUMNS)
        .where(RECORDS.c.ledger == ledger_id, RECORDS.c.seq <= through)
        .order_by(RECORDS.c.seq)
    )
    after = 0
    while True:
        rows = session.execute(stmt.where(RECORDS.c.seq > after).limit(_EXPORT_CHUNK)).all()
        yield from rows
        if len(rows) < _EXPORT_CHUNK:
            return
        after = rows[-1][0]


def _record_line(row: tuple[Any, ...]) -> str:
    (seq, ledger, occurred_at_us, event, actor_kind, actor_id, procedure, requester, provider,
     data_items, subject, permit_id, query_id, outcome, reason, prev, hash_) = row  # fmt: skip
    return _line(
        {
            "type": "record",
            "seq": seq,
            "ledger": ledger,
            "occurred_at": _verbatim_time(occurred_at_us),
            "event": event,
            "actor_kind": actor_kind,
            "actor_id": actor_id,
            "procedure": procedure,
            "requester": requester,
            "provider": provider,
            "data_items": (
                list(_split_items(data_items)) if isinstance(data_items, str) else data_items
            ),
            "subject": subject,
            "permit_id": permit_id,
            "query_id": query_id,
            "outcome": outcome,
            "reason": reason,
            "prev_hash": _verbatim_hex(prev),
            "hash": _verbatim_hex(hash_),
        }
    )
