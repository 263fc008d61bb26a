"""Verification of a ledger: in its database, or from an export without any database.

Owns the one chain walker both use. It streams the chain in seq order (chunks, raw columns,
canonical bytes built by the database), recomputes every hash, checks contiguity, each signed
checkpoint and the retention anchor, reconciles the end of the chain with the head row, and
stops at the FIRST bad position, which it classifies (EDITED, DELETED, INSERTED, REORDERED,
BAD_CHECKPOINT, BAD_ANCHOR, HEAD_MISMATCH) by looking at the neighbourhood of the break.

Every chain is first checked fast: seq ranges are linked by ``spans.link_span`` over raw
driver rows, in this process or in several worker processes at once (each with its own
connection), and stitched by their end hashes. Only if that finds nothing wrong is its result
used; otherwise the walker above runs from the start, so every report is the walker's.

It only ever reads: it never repairs, rewrites or deletes anything, and it never needs a
signing key (verify keys only). FORMAT.md states what it can and cannot detect. Worker
processes are started with ``spawn``: a script that asks for them must guard its main module
(``if __name__ == "__main__":``), as for any ``multiprocessing`` use.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from sqlalchemy import Connection, Dialect, Engine, bindparam, func, select, text
from sqlalchemy.orm import Session

from linkage.records.model import (
    DATA_ITEM_SEPARATOR,
    GENESIS_HASH,
    anchor_message,
    chain_hash,
    checkpoint_message,
    encode_entry,
    reseq_entry,
    to_micros,
)
from linkage.records.models import ANCHORS, CHECKPOINTS, HEADS, RECORDS, entry_bytes_sql
from linkage.records.spans import Span, SpanQuery, link_span, link_span_in_worker

__all__ = [
    "CHUNK_SIZE",
    "MAX_AUTO_WORKERS",
    "PARALLEL_MIN_RECORDS",
    "LedgerTamperedError",
    "Problem",
    "ProblemKind",
    "VerifyReport",
    "check_prefix",
    "ledger_ids",
    "verify",
    "verify_jsonl",
    "verify_many",
]

CHUNK_SIZE = 20_000
"""Records fetched per query: large enough to amortize the round trip, small enough to stream."""

_RENUMBER_WINDOW = 10_000
"""How far back a renumbered row is looked for when classifying a deletion (one hash each)."""

Row = tuple[int, bytes | None, bytes | None, bytes | None]
"""(seq, canonical bytes, stored prev_hash, stored hash); None where a column is NULL/bad."""


class ProblemKind(StrEnum):
    """What the first bad position looks like."""

    EDITED = "EDITED"
    DELETED = "DELETED"
    INSERTED = "INSERTED"
    REORDERED = "REORDERED"
    BAD_CHECKPOINT = "BAD_CHECKPOINT"
    BAD_ANCHOR = "BAD_ANCHOR"
    HEAD_MISMATCH = "HEAD_MISMATCH"


@dataclass(frozen=True, slots=True)
class Problem:
    """The first bad position of a ledger: a seq, what is wrong there, and why we think so."""

    seq: int
    kind: ProblemKind
    message: str


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of verifying one ledger."""

    ledger: str
    problem: Problem | None
    records_checked: int
    last_seq: int
    last_hash: bytes
    checkpoints_checked: int
    last_checkpoint_seq: int | None
    anchor_seq: int | None
    signatures_checked: bool

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return self.problem is None

    @property
    def unsigned_tail(self) -> int:
        """Records after the last signature (checkpoint or anchor): protected by the hash
        chain and the head row only, see FORMAT.md §6."""
        signed = max(self.last_checkpoint_seq or 0, self.anchor_seq or 0)
        return max(0, self.last_seq - signed)

    def describe(self) -> str:
        """One line for people, e.g. ``ledger server:sakai: record 4711: EDITED: …``."""
        if self.problem is not None:
            p = self.problem
            return f"ledger {self.ledger}: record {p.seq}: {p.kind.value}: {p.message}"
        signatures = "" if self.signatures_checked else " (signatures NOT checked: no keys)"
        return (
            f"ledger {self.ledger}: intact: {self.records_checked} records checked through "
            f"{self.last_seq}, {self.checkpoints_checked} checkpoints, "
            f"{self.unsigned_tail} unsigned{signatures}"
        )


class LedgerTamperedError(Exception):
    """Raised where work must not proceed over a broken chain (e.g. purge)."""

    def __init__(self, ledger: str, problem: Problem) -> None:
        super().__init__(
            f"ledger {ledger}: record {problem.seq}: {problem.kind}: {problem.message}"
        )
        self.ledger = ledger
        self.problem = problem


@dataclass(frozen=True, slots=True)
class _Signed:
    """A checkpoint or an anchor as stored: a signature over the chain hash at ``seq``."""

    seq: int
    hash: bytes
    at_us: int
    key_id: str
    signature: bytes


class _Source(Protocol):
    """Where the walker reads a chain from: the database or an export file."""

    def head(self) -> tuple[int, bytes] | None: ...
    def anchors(self) -> list[_Signed]: ...
    def checkpoints(self) -> list[_Signed]: ...
    def first_seq(self) -> int | None: ...
    def chunks(self, after: int, until: int | None) -> Iterator[Sequence[Row]]: ...
    def row_at(self, seq: int) -> Row | None: ...
    def seq_of_hash(self, hash_: bytes) -> int | None: ...


# -- the walker ------------------------------------------------------------------------------


class _Walk:
    """One pass over one chain; ``run`` returns the first problem or None."""

    def __init__(self, source: _Source, ledger: str, keys: Mapping[str, VerifyKey] | None) -> None:
        self.source = source
        self.ledger = ledger
        self.keys = keys
        self.start = 0
        self.start_hash = GENESIS_HASH
        self.anchor_seq: int | None = None
        self.last_seq = 0
        self.last_hash = GENESIS_HASH
        self.records = 0
        self.checkpoints_checked = 0
        self.last_checkpoint_seq: int | None = None
        self._checkpoints: list[_Signed] = []
        self._next_cp = 0

    def report(self, problem: Problem | None) -> VerifyReport:
        return VerifyReport(
            ledger=self.ledger,
            problem=problem,
            records_checked=self.records,
            last_seq=self.last_seq,
            last_hash=self.last_hash,
            checkpoints_checked=self.checkpoints_checked,
            last_checkpoint_seq=self.last_checkpoint_seq,
            anchor_seq=self.anchor_seq,
            signatures_checked=self.keys is not None,
        )

    def run(self, until: int | None = None) -> Problem | None:
        """Walk the whole chain, or only through ``until`` (then the head is not compared)."""
        problem = self._start() or self._walk(self.start, until)
        if problem is not None or until is not None:
            return problem
        return self._finish()

    def fast_forward(self, link: Linker, until: int | None = None) -> bool:
        """Check the chain through ``until`` (default: the head as read now) with ``link``.

        True when every record on the way is present and linked, the first one to the
        start, and every checkpoint on the way holds: the walk then stands at ``until``
        exactly as ``run`` would have, and ``resume`` finishes it. False when anything at all
        is off (the caller starts a fresh walk with ``run``, which finds and classifies the
        first problem); nothing reported by this walk is then meaningful.
        """
        if self._start() is not None:
            return False
        if until is None:
            head = self.source.head()
            if head is None:
                return False
            until = head[0]
        if until <= self.start:
            return False
        cps = self._checkpoints[self._next_cp :]
        on_the_way = [cp for cp in cps if cp.seq <= until]
        span = link(self.start, until, self.start_hash, sorted({cp.seq for cp in on_the_way}))
        if span is None or span.first_prev != self.start_hash:
            return False
        for cp in on_the_way:
            if self._check_checkpoint(cp, span.marks[cp.seq], purged=False) is not None:
                return False
            self._next_cp += 1
        self.last_seq, self.last_hash = until, span.last_hash
        self.records = until - self.start
        return True

    def resume(self) -> Problem | None:
        """After ``fast_forward``: walk whatever was appended since, then check the end."""
        return self._walk(self.last_seq, None) or self._finish()

    # start: anchors and the purged prefix

    def _start(self) -> Problem | None:
        for anchor in sorted(self.source.anchors(), key=lambda a: a.seq):
            message = anchor_message(
                self.ledger, anchor.seq, anchor.hash, anchor.at_us, anchor.key_id
            )
            reason = self._bad_signature(anchor, message)
            if reason is not None:
                return Problem(anchor.seq, ProblemKind.BAD_ANCHOR, f"anchor {reason}")
            self.start, self.start_hash, self.anchor_seq = anchor.seq, anchor.hash, anchor.seq
        self.last_seq, self.last_hash = self.start, self.start_hash
        first = self.source.first_seq()
        if first is not None and first <= self.start:
            return Problem(
                first,
                ProblemKind.INSERTED,
                f"record {first} lies in the prefix purged through {self.start}",
            )
        self._checkpoints = sorted(self.source.checkpoints(), key=lambda c: c.seq)
        while (
            self._next_cp < len(self._checkpoints)
            and self._checkpoints[self._next_cp].seq <= self.start
        ):
            problem = self._check_checkpoint(
                self._checkpoints[self._next_cp], self.start_hash, purged=True
            )
            if problem is not None:
                return problem
            self._next_cp += 1
        return None

    # the chain itself

    def _walk(self, after: int, until: int | None) -> Problem | None:
        """Verify records after ``after`` (through ``until``); the hot loop of verification."""
        sha256 = hashlib.sha256
        expected, prev = after + 1, self.last_hash
        cps = self._checkpoints
        next_cp = cps[self._next_cp].seq if self._next_cp < len(cps) else -1
        for chunk in self.source.chunks(after, until):
            for row in chunk:
                seq, body, stored_prev, stored_hash = row
                try:
                    digest = sha256(prev + body).digest()  # type: ignore[operator]
                except TypeError:  # a NULL column: classified below
                    digest = b""
                if seq != expected or digest != stored_hash or stored_prev != prev:
                    self.last_seq, self.last_hash = expected - 1, prev
                    return self._classify(row, expected, prev)
                prev = digest
                expected += 1
                self.records += 1
                if seq == next_cp:
                    self.last_seq, self.last_hash = seq, prev
                    problem = self._checkpoints_at(seq, prev)
                    if problem is not None:
                        return problem
                    next_cp = cps[self._next_cp].seq if self._next_cp < len(cps) else -1
        self.last_seq, self.last_hash = expected - 1, prev
        return None

    def _checkpoints_at(self, seq: int, chain: bytes) -> Problem | None:
        cps = self._checkpoints
        while self._next_cp < len(cps) and cps[self._next_cp].seq == seq:
            problem = self._check_checkpoint(cps[self._next_cp], chain, purged=False)
            if problem is not None:
                return problem
            self._next_cp += 1
        return None

    def _check_checkpoint(self, cp: _Signed, chain: bytes, *, purged: bool) -> Problem | None:
        message = checkpoint_message(self.ledger, cp.seq, cp.hash, cp.at_us, cp.key_id)
        reason = self._bad_signature(cp, message)
        if reason is not None:
            return Problem(cp.seq, ProblemKind.BAD_CHECKPOINT, f"checkpoint {reason}")
        if purged and cp.seq < self.start:
            return None  # its records are gone; a valid signature is all we can check
        if cp.hash != chain:
            if self.keys is None:
                return Problem(
                    cp.seq,
                    ProblemKind.BAD_CHECKPOINT,
                    "checkpoint hash does not match the chain (signatures not checked)",
                )
            return self._explain_checkpoint_break(cp, chain)
        self.checkpoints_checked += 1
        self.last_checkpoint_seq = cp.seq
        return None

    def _explain_checkpoint_break(self, cp: _Signed, chain: bytes) -> Problem:
        """The chain reaches a signed checkpoint with another hash: records before it changed.

        If the next record does not continue the chain either, its classification may name
        the exact record (e.g. a correctly hashed record inserted just before the checkpoint);
        otherwise all we can say is which range was rewritten.
        """
        nxt = self.source.row_at(cp.seq + 1)
        if (
            nxt is not None
            and nxt[1] is not None
            and (nxt[2] != chain or chain_hash(chain, nxt[1]) != nxt[3])
        ):
            problem = self._classify(nxt, cp.seq + 1, chain)
            if problem.seq <= cp.seq:
                return problem
        since = (self.last_checkpoint_seq or self.start) + 1
        return Problem(
            cp.seq,
            ProblemKind.EDITED,
            f"chain hash differs from the signed checkpoint: records {since}..{cp.seq} "
            "were rewritten with recomputed hashes",
        )

    def _bad_signature(self, signed: _Signed, message: bytes) -> str | None:
        """Why ``signed`` does not verify, or None (also None when no keys were given)."""
        if self.keys is None:
            return None
        key = self.keys.get(signed.key_id)
        if key is None:
            return f"signed with unknown key {signed.key_id!r}"
        try:
            key.verify(message, signed.signature)
        except (BadSignatureError, ValueError, TypeError):
            return "signature does not verify"
        return None

    # the end of the chain: checkpoints beyond it, the head

    def _finish(self) -> Problem | None:
        cps = self._checkpoints
        if self._next_cp < len(cps):
            cp = cps[self._next_cp]
            message = checkpoint_message(self.ledger, cp.seq, cp.hash, cp.at_us, cp.key_id)
            reason = self._bad_signature(cp, message)
            if reason is not None:
                return Problem(cp.seq, ProblemKind.BAD_CHECKPOINT, f"checkpoint {reason}")
            return Problem(
                self.last_seq + 1,
                ProblemKind.DELETED,
                f"a signed checkpoint vouches for records through {cp.seq}, "
                f"but the chain ends at {self.last_seq}",
            )
        return self._reconcile_head()

    def _reconcile_head(self) -> Problem | None:
        # Writers commit records and head together, and the head is read after the records:
        # a head ahead of the walk means records were appended meanwhile, so walk on.
        for _ in range(100):
            head = self.source.head()
            if head is None:
                if self.last_seq == 0 and self.anchor_seq is None:
                    return None  # an empty ledger
                return Problem(self.last_seq, ProblemKind.HEAD_MISMATCH, "the head is missing")
            head_seq, head_hash = head
            if head_seq < self.last_seq:
                return Problem(
                    head_seq + 1,
                    ProblemKind.INSERTED,
                    f"records {head_seq + 1}..{self.last_seq} lie beyond the chain head "
                    f"({head_seq})",
                )
            if head_seq == self.last_seq:
                if head_hash != self.last_hash:
                    return Problem(
                        head_seq, ProblemKind.HEAD_MISMATCH, "the head hash differs from the chain"
                    )
                return None
            before = self.last_seq
            problem = self._walk(before, None)
            if problem is not None:
                return problem
            if self.last_seq == before:
                return Problem(
                    before + 1,
                    ProblemKind.DELETED,
                    f"the chain ends at {before} but its head says {head_seq}",
                )
        return None  # appends outpaced us 100 times: everything walked so far is intact

    # classification of a break

    def _classify(self, row: Row, expected: int, prev: bytes) -> Problem:
        seq, body, stored_prev, stored_hash = row
        if seq > expected and self.source.row_at(expected) is not None:
            # Only an export can hold rows out of order (the database is read in seq order).
            return Problem(
                expected, ProblemKind.REORDERED, f"record {expected} appears after record {seq}"
            )
        if seq > expected:
            missing = (
                f"record {expected}" if seq == expected + 1 else f"records {expected}..{seq - 1}"
            )
            return Problem(expected, ProblemKind.DELETED, f"{missing} missing")
        if seq < expected:
            if seq <= self.start:
                return Problem(seq, ProblemKind.INSERTED, f"record {seq} lies in the purged prefix")
            return Problem(
                seq, ProblemKind.REORDERED, f"record {seq} appears after record {expected - 1}"
            )
        head = self.source.head()
        if head is not None and seq > head[0]:
            return Problem(
                seq, ProblemKind.INSERTED, f"record {seq} lies beyond the chain head ({head[0]})"
            )
        if body is None or stored_prev is None or stored_hash is None:
            return Problem(seq, ProblemKind.EDITED, "a field is NULL or malformed")
        if chain_hash(prev, body) == stored_hash:
            return Problem(seq, ProblemKind.EDITED, "its prev_hash column was altered")
        if stored_prev == prev:
            return self._inserted_before_next(seq, prev) or Problem(
                seq, ProblemKind.EDITED, "hash does not match its content"
            )
        return self._misplaced(seq, body, stored_prev, stored_hash)

    def _inserted_before_next(self, seq: int, prev: bytes) -> Problem | None:
        """A foreign row at ``seq``: the next row still links to ``seq - 1`` and was at ``seq``."""
        nxt = self.source.row_at(seq + 1)
        if nxt is None or nxt[1] is None or nxt[2] != prev:
            return None
        if _hash_at(prev, nxt[1], seq) != nxt[3]:
            return None
        return Problem(
            seq,
            ProblemKind.INSERTED,
            f"record {seq} is not part of the chain: record {seq + 1} was record {seq} "
            f"and links to record {seq - 1}",
        )

    def _misplaced(self, seq: int, body: bytes, stored_prev: bytes, stored_hash: bytes) -> Problem:
        """A row linked to something other than its predecessor: moved, inserted or orphaned."""
        pred = self.source.seq_of_hash(stored_prev)
        if pred is not None and pred >= seq:
            return Problem(
                seq,
                ProblemKind.REORDERED,
                f"record {seq} links to record {pred}, which comes after it",
            )
        if pred is not None and pred < seq - 1:
            return Problem(
                pred + 1,
                ProblemKind.INSERTED,
                f"records {pred + 1}..{seq - 1} are not part of the chain: "
                f"record {seq} links to record {pred}",
            )
        if chain_hash(stored_prev, body) == stored_hash:
            # Intact at its own position but its predecessor's hash is unknown: the
            # predecessor was rewritten (with a recomputed hash) or replaced.
            if seq - 1 > self.start:
                return Problem(
                    seq - 1,
                    ProblemKind.EDITED,
                    f"record {seq - 1} was rewritten: record {seq} links to a different hash",
                )
            origin = "anchor" if self.anchor_seq is not None else "start of the chain"
            return Problem(seq, ProblemKind.EDITED, f"record {seq} does not link to the {origin}")
        for shift in range(1, _RENUMBER_WINDOW + 1):
            if _hash_at(stored_prev, body, seq + shift) == stored_hash:
                count = "1 record was" if shift == 1 else f"{shift} records were"
                return Problem(
                    seq,
                    ProblemKind.DELETED,
                    f"{count} deleted before it and later records renumbered "
                    f"(record {seq} was record {seq + shift})",
                )
        return Problem(seq, ProblemKind.EDITED, "hash does not match its content")


def _hash_at(prev: bytes, body: bytes, seq: int) -> bytes | None:
    """The hash ``body`` would have at position ``seq``, or None if it is malformed."""
    try:
        return chain_hash(prev, reseq_entry(body, seq))
    except ValueError:
        return None


# -- the database source -----------------------------------------------------------------------


class _DatabaseSource:
    """Reads one ledger through a Core connection: raw columns, never ORM objects."""

    def __init__(self, conn: Connection, ledger: str, chunk_size: int) -> None:
        self._conn = conn
        self._ledger = ledger
        self._chunk_size = chunk_size
        body = entry_bytes_sql(conn.dialect.name)
        self._row_select = select(RECORDS.c.seq, body, RECORDS.c.prev_hash, RECORDS.c.hash).where(
            RECORDS.c.ledger == ledger
        )

    def head(self) -> tuple[int, bytes] | None:
        row = self._conn.execute(
            select(HEADS.c.last_seq, HEADS.c.last_hash).where(HEADS.c.ledger == self._ledger)
        ).first()
        return None if row is None else (row[0], row[1])

    def anchors(self) -> list[_Signed]:
        a = ANCHORS.c
        rows = self._conn.execute(
            select(a.purged_through_seq, a.hash, a.purged_at_us, a.key_id, a.signature).where(
                a.ledger == self._ledger
            )
        )
        return [_Signed(*row) for row in rows]

    def checkpoints(self) -> list[_Signed]:
        c = CHECKPOINTS.c
        rows = self._conn.execute(
            select(c.seq, c.hash, c.signed_at_us, c.key_id, c.signature).where(
                c.ledger == self._ledger
            )
        )
        return [_Signed(*row) for row in rows]

    def first_seq(self) -> int | None:
        value = self._conn.execute(
            select(func.min(RECORDS.c.seq)).where(RECORDS.c.ledger == self._ledger)
        ).scalar()
        return None if value is None else int(value)

    def chunks(self, after: int, until: int | None) -> Iterator[Sequence[Row]]:
        # Keyset pagination: each chunk is one short query on the (ledger, seq) key, so no
        # long-lived cursor or transaction is held on a database others are writing to.
        stmt = self._row_select.where(RECORDS.c.seq > bindparam("after"))
        if until is not None:
            stmt = stmt.where(RECORDS.c.seq <= until)
        stmt = stmt.order_by(RECORDS.c.seq).limit(self._chunk_size)
        while True:
            rows: Sequence[Any] = self._conn.execute(stmt, {"after": after}).all()
            if not rows:
                return
            yield rows
            if len(rows) < self._chunk_size:
                return
            after = rows[-1][0]

    def row_at(self, seq: int) -> Row | None:
        row = self._conn.execute(self._row_select.where(RECORDS.c.seq == seq)).first()
        return None if row is None else (row[0], row[1], row[2], row[3])

    def seq_of_hash(self, hash_: bytes) -> int | None:
        # No index on hash: this runs once, when a break has already been found.
        value = self._conn.execute(
            select(RECORDS.c.seq)
            .where(RECORDS.c.ledger == self._ledger, RECORDS.c.hash == hash_)
            .order_by(RECORDS.c.seq)
            .limit(1)
        ).scalar()
        return None if value is None else int(value)


def verify(
    engine_or_session: Engine | Session,
    ledger_id: str,
    verify_keys: Mapping[str, VerifyKey] | None,
    *,
    chunk_size: int = CHUNK_SIZE,
    workers: int | None = None,
) -> VerifyReport:
    """Verify ledger ``ledger_id`` in its database; the report names the first bad position.

    ``verify_keys`` maps key ids to Ed25519 verify keys (all keys the ledger has ever been
    signed with). None skips signature checks (hashes in checkpoints are still compared) and
    the report says so. Appends running meanwhile are fine: the walk follows the head.

    ``workers`` > 1 checks seq ranges in that many processes at once (this one included),
    each reading through its own connection, and stitches the ranges; 1 stays in this
    process; None picks by size (processes only for long chains, see ``PARALLEL_MIN_RECORDS``).
    A session is always verified in its own process and transaction. Whatever the route, a
    chain with a problem is re-walked in order, so the report is the same.
    """
    with _Workers(workers) as pool:
        return pool.verify(engine_or_session, ledger_id, verify_keys, chunk_size)


def verify_many(
    engine: Engine,
    ledger_ids: Iterable[str],
    verify_keys: Mapping[str, VerifyKey] | None,
    *,
    chunk_size: int = CHUNK_SIZE,
    workers: int | None = None,
) -> Iterator[VerifyReport]:
    """``verify`` each ledger in turn (one report each, lazily), sharing worker processes."""
    with _Workers(workers) as pool:
        for ledger_id in ledger_ids:
            yield pool.verify(engine, ledger_id, verify_keys, chunk_size)


def ledger_ids(engine_or_session: Engine | Session) -> list[str]:
    """Every ledger id in the database, sorted: from the heads, and also from the records,
    checkpoints and anchors (so a deleted head row cannot hide a ledger from ``--all``)."""
    if isinstance(engine_or_session, Session):
        return _ledger_ids(engine_or_session.connection())
    with engine_or_session.connect() as conn:
        return _ledger_ids(conn)


def _ledger_ids(conn: Connection) -> list[str]:
    found: set[str] = set()
    for table in (HEADS, CHECKPOINTS, ANCHORS):
        found.update(conn.execute(select(table.c.ledger).distinct()).scalars())
    # The records table is large: hop from ledger to ledger along its primary key.
    hop = text(
        "WITH RECURSIVE ids(ledger) AS ("
        " SELECT min(ledger) FROM access_records"
        " UNION ALL"
        " SELECT (SELECT min(r.ledger) FROM access_records r WHERE r.ledger > ids.ledger)"
        " FROM ids WHERE ids.ledger IS NOT NULL"
        ") SELECT ledger FROM ids WHERE ledger IS NOT NULL"
    )
    found.update(conn.execute(hop).scalars())
    return sorted(found)


def check_prefix(conn: Connection, ledger_id: str, through: int) -> tuple[bytes, Problem | None]:
    """Walk records up to ``through`` (from the latest anchor) without signature checks.

    Returns the chain hash at ``through`` and the first problem. Used by ``purge`` so that an
    anchor never vouches for a chain that was already broken.
    """
    source = _DatabaseSource(conn, ledger_id, CHUNK_SIZE)
    walk = _Walk(source, ledger_id, None)
    if walk.fast_forward(_in_process_linker(conn, ledger_id, CHUNK_SIZE), until=through):
        return walk.last_hash, None
    walk = _Walk(source, ledger_id, None)
    problem = walk.run(until=through)
    if problem is None and walk.last_seq != through:
        problem = Problem(
            walk.last_seq + 1, ProblemKind.DELETED, f"the chain ends before {through}"
        )
    return walk.last_hash, problem


# -- fast and parallel linking -------------------------------------------------------------------

PARALLEL_MIN_RECORDS = 1_000_000
"""With ``workers=None``, chains at least this long are checked in worker processes: starting
one (a fresh interpreter, about 0.3 s) costs what checking some 100,000 records here does, and
the gain only shows on free cores (measured: 1M records in 1.8 s with two, 2.8 s with one)."""

MAX_AUTO_WORKERS = 4
"""With ``workers=None``, at most this many processes (this one included)."""

_SPAN_RECORDS = 50_000
"""Records per task handed to a worker: small enough that this process, which starts at
once, takes over the tasks the workers have not reached yet."""

Linker = Callable[[int, int, bytes | None, Sequence[int]], Span | None]
"""``link(lo, hi, prev, marks)``: check records ``lo < seq <= hi`` linking onto ``prev``
(None: onto whatever the first one says, for the caller to stitch)."""

_SPAN_QUERIES: dict[tuple[str, str], SpanQuery] = {}


def _span_query(dialect: Dialect) -> SpanQuery:
    """The range query of ``spans.link_span`` for ``dialect`` (compiled once per dialect)."""
    key = (dialect.name, str(dialect.paramstyle))
    if key not in _SPAN_QUERIES:
        c = RECORDS.c
        stmt = (
            select(c.seq, c.prev_hash, entry_bytes_sql(dialect.name), c.hash)
            .where(
                # Placeholder values, so that the constants can be read off the compiled form.
                c.ledger == bindparam("ledger", ""),
                c.seq > bindparam("lo", 0),
                c.seq <= bindparam("hi", 0),
            )
            .order_by(c.seq)
        )
        compiled = stmt.compile(dialect=dialect)
        constants = {
            name: value
            for name, value in compiled.construct_params().items()
            if name not in ("ledger", "lo", "hi")
        }
        positions = compiled.positiontup
        _SPAN_QUERIES[key] = SpanQuery(
            str(compiled),
            None if positions is None else tuple(positions),
            constants,
            binary=dialect.name == "postgresql" and dialect.driver == "psycopg",
        )
    return _SPAN_QUERIES[key]


def _in_process_linker(conn: Connection, ledger_id: str, window: int) -> Linker:
    """Link ranges on ``conn`` itself (in its transaction), reading raw driver rows."""
    query = _span_query(conn.dialect)
    dbapi_connection = conn.connection.driver_connection

    def link(lo: int, hi: int, prev: bytes | None, marks: Sequence[int]) -> Span | None:
        return link_span(
            dbapi_connection, query, ledger_id, lo, hi, marks, prev=prev, window=window
        )

    return link


def _worker_query(engine: Engine) -> SpanQuery | None:
    """The range query with what a worker needs to connect, or None if it cannot."""
    dialect = engine.dialect
    if dialect.name == "sqlite" and dialect.driver == "pysqlite":
        driver = "sqlite3"
        if engine.url.database in (None, "", ":memory:"):
            return None  # a private in-memory database: no other process can see it
    elif dialect.name == "postgresql" and dialect.driver == "psycopg":
        driver = "psycopg"
    else:
        return None
    args, kwargs = dialect.create_connect_args(engine.url)
    simple = (str, int, float, bool)
    return replace(
        _span_query(dialect),
        driver=driver,
        connect_args=tuple(args),
        connect_kwargs={k: v for k, v in kwargs.items() if isinstance(v, simple)},
    )


class _Workers:
    """The worker processes of one ``verify`` or ``verify_many`` call, started on first use."""

    def __init__(self, workers: int | None) -> None:
        if workers is not None and workers < 1:
            raise ValueError("workers must be at least 1")
        self._workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop()

    def _stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def verify(
        self,
        engine_or_session: Engine | Session,
        ledger_id: str,
        keys: Mapping[str, VerifyKey] | None,
        chunk_size: int,
    ) -> VerifyReport:
        if isinstance(engine_or_session, Session):
            return self._verify_on(
                engine_or_session.connection(), None, ledger_id, keys, chunk_size
            )
        with engine_or_session.connect() as conn:
            query = _worker_query(engine_or_session)
            return self._verify_on(conn, query, ledger_id, keys, chunk_size)

    def _verify_on(
        self,
        conn: Connection,
        worker_query: SpanQuery | None,
        ledger_id: str,
        keys: Mapping[str, VerifyKey] | None,
        chunk_size: int,
    ) -> VerifyReport:
        source = _DatabaseSource(conn, ledger_id, chunk_size)
        local = _in_process_linker(conn, ledger_id, chunk_size)
        walk = _Walk(source, ledger_id, keys)

        def link(lo: int, hi: int, prev: bytes | None, marks: Sequence[int]) -> Span | None:
            count = self._count(hi - lo)
            if worker_query is None or count < 2 or prev is None:
                return local(lo, hi, prev, marks)
            task = _Task(worker_query, ledger_id, lo, hi, prev, chunk_size)
            try:
                pool = self._start(count - 1)  # this process is one of them
                return _link_in_parallel(pool, task, marks, local)
            except (OSError, RuntimeError):  # no processes to be had (BrokenProcessPool…)
                self._stop()
                return local(lo, hi, prev, marks)

        if walk.fast_forward(link):
            return walk.report(walk.resume())
        walk = _Walk(source, ledger_id, keys)
        return walk.report(walk.run())

    def _count(self, records: int) -> int:
        if self._workers is not None:
            return self._workers
        if records < PARALLEL_MIN_RECORDS:
            return 1
        return max(1, min(os.cpu_count() or 1, MAX_AUTO_WORKERS))

    def _start(self, processes: int) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: a fresh interpreter per worker, safe whatever threads this process runs.
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(max_workers=processes, mp_context=context)
        return self._pool


@dataclass(frozen=True, slots=True)
class _Task:
    """What ``_link_in_parallel`` checks: records ``lo < seq <= hi`` linking onto ``prev``."""

    query: SpanQuery
    ledger: str
    lo: int
    hi: int
    prev: bytes
    window: int


def _link_in_parallel(
    pool: ProcessPoolExecutor, task: _Task, marks: Sequence[int], local: Linker
) -> Span | None:
    """Link ``lo < seq <= hi`` as tasks shared by the workers and this process; stitch them.

    Workers take tasks from the front; meanwhile this process (which needs no start-up)
    takes them from the back, withdrawing each before a worker gets to it. A task a worker
    could not run is run here. Each task returns its first stored ``prev_hash`` and its last
    hash; the ranges form one chain when each starts with the hash the one before ended in.
    """
    edges = _task_edges(task.lo, task.hi)
    ranges = list(itertools.pairwise(edges))
    futures = [
        pool.submit(link_span_in_worker, task.query, task.ledger, a, b, marks, task.window)
        for a, b in ranges
    ]
    spans: list[Span | None] = [None] * len(futures)
    for index in reversed(range(len(futures))):
        if not futures[index].cancel():
            break
        spans[index] = local(*ranges[index], None, marks)
    for index, future in enumerate(futures):
        if future.cancelled():
            continue
        try:
            spans[index] = future.result()
        except Exception:  # e.g. a worker that could not connect: do it here
            spans[index] = local(*ranges[index], None, marks)
    return _stitch(spans, task.prev)


def _task_edges(lo: int, hi: int) -> list[int]:
    count = max(2, -(-(hi - lo) // _SPAN_RECORDS))
    step = -(-(hi - lo) // count)
    return [*range(lo, hi, step), hi]


def _stitch(spans: Sequence[Span | None], prev: bytes) -> Span | None:
    """One span of consecutive ``spans`` if each links onto the one before, else None."""
    linked: list[Span] = []
    for span in spans:
        if span is None or span.first_prev != (linked[-1].last_hash if linked else prev):
            return None
        linked.append(span)
    marks = {seq: hash_ for span in linked for seq, hash_ in span.marks.items()}
    first, last = linked[0], linked[-1]
    return Span(first.first, last.last, first.first_prev, last.last_hash, marks)


# -- the export source --------------------------------------------------------------------------


class _ExportFormatError(ValueError):
    """An export line that is not what FORMAT.md specifies."""


_RECORD_PREFIX = '{"type":"record"'


def _is_record_line(line: str) -> bool:
    """Whether a line is a record line: fast for our own exports, exact for any JSON."""
    if line.startswith(_RECORD_PREFIX):
        return True
    try:
        item = json.loads(line)
    except ValueError:
        return False
    return isinstance(item, dict) and item.get("type") == "record"


class _JsonlSource:
    """Reads an export (FORMAT.md §8). Small line types are loaded up front; records stream."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self.ledger = ""
        self._head: tuple[int, bytes] | None = None
        self._anchors: list[_Signed] = []
        self._checkpoints: list[_Signed] = []
        self._streamed = False
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.startswith(_RECORD_PREFIX):
                    self._load_other(number, line)
        if not self.ledger:
            raise _ExportFormatError(f"{path}: no header line")

    def _load_other(self, number: int, line: str) -> None:
        try:
            item = json.loads(line)
            kind = item["type"]
            if kind == "header":
                self.ledger = str(item["ledger"])
            elif kind == "head":
                self._head = (int(item["seq"]), bytes.fromhex(item["hash"]))
            elif kind == "anchor":
                self._anchors.append(_signed_from(item, "purged_at"))
            elif kind == "checkpoint":
                self._checkpoints.append(_signed_from(item, "signed_at"))
            elif kind != "record":
                raise _ExportFormatError(f"unknown line type {kind!r}")
        except (KeyError, TypeError, ValueError) as exc:
            raise _ExportFormatError(f"{self._path}:{number}: {exc}") from exc

    def head(self) -> tuple[int, bytes] | None:
        return self._head

    def anchors(self) -> list[_Signed]:
        return list(self._anchors)

    def checkpoints(self) -> list[_Signed]:
        return list(self._checkpoints)

    def first_seq(self) -> int | None:
        return None  # rows in the purged prefix show up in the walk as out-of-order rows

    def _rows(self) -> Iterator[Row]:
        last = 0
        with self._path.open(encoding="utf-8") as lines:
            for line in lines:
                if _is_record_line(line):
                    row = _row_from_line(line, last + 1)
                    last = row[0]
                    yield row

    def chunks(self, after: int, until: int | None) -> Iterator[Sequence[Row]]:
        # The file is walked once in file order (so misplaced lines are seen where they are);
        # a file does not grow, so the head reconciliation's second walk finds nothing.
        if self._streamed:
            return
        self._streamed = True
        chunk: list[Row] = []
        for row in self._rows():
            if until is not None and row[0] > until:
                break
            chunk.append(row)
            if len(chunk) >= CHUNK_SIZE:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def row_at(self, seq: int) -> Row | None:
        return next((row for row in self._rows() if row[0] == seq), None)

    def seq_of_hash(self, hash_: bytes) -> int | None:
        return next((row[0] for row in self._rows() if row[3] == hash_), None)


def _signed_from(item: Mapping[str, Any], at: str) -> _Signed:
    return _Signed(
        seq=int(item["seq"]),
        hash=bytes.fromhex(item["hash"]),
        at_us=to_micros(datetime.fromisoformat(item[at])),
        key_id=str(item["key_id"]),
        signature=bytes.fromhex(item["signature"]),
    )


_TEXT_FIELDS = (
    "ledger",
    "event",
    "actor_kind",
    "actor_id",
    "procedure",
    "requester",
    "provider",
    "subject",
    "permit_id",
    "query_id",
    "outcome",
    "reason",
)


def _row_from_line(line: str, position: int) -> Row:
    """A record line as a walker row; a malformed line becomes a row that fails as EDITED."""
    try:
        item = json.loads(line)
        seq = item["seq"]
        if not isinstance(seq, int):
            raise _ExportFormatError("seq is not an integer")
    except (ValueError, KeyError, TypeError):
        return (position, None, None, None)
    try:
        return (
            seq,
            _body_from_item(item),
            bytes.fromhex(item["prev_hash"]),
            bytes.fromhex(item["hash"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
        return (seq, None, None, None)


def _body_from_item(item: Mapping[str, Any]) -> bytes:
    texts = {name: item[name] for name in _TEXT_FIELDS}
    items = item["data_items"]
    if not isinstance(items, list):
        raise _ExportFormatError("data_items is not a list")
    for value in (*texts.values(), *items):
        if not isinstance(value, str) or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
            raise _ExportFormatError("a text field is not a string without control characters")
    if any(not value or DATA_ITEM_SEPARATOR in value for value in items):
        raise _ExportFormatError("a data item is empty or holds a comma")
    return encode_entry(
        seq=item["seq"],
        occurred_at_us=to_micros(datetime.fromisoformat(item["occurred_at"])),
        data_items=DATA_ITEM_SEPARATOR.join(items),
        **texts,
    )


def verify_jsonl(path: str | Path, verify_keys: Mapping[str, VerifyKey] | None) -> VerifyReport:
    """Verify an export written by ``export_jsonl`` without any database.

    Raises ``ValueError`` when the file is not an export at all (no header, a broken
    non-record line); a broken record line is reported as the problem at its position.
    """
    source = _JsonlSource(Path(path))
    walk = _Walk(source, source.ledger, verify_keys)
    return walk.report(walk.run())
