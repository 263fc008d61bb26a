"""Verification of a ledger: in its database, or from an export without any database.

Owns the one chain walker both use. It streams the chain in seq order (chunks, raw columns,
canonical bytes built by the database), recomputes every hash, checks contiguity, each signed
checkpoint and the retention anchor, reconciles the end of the chain with the head row, and
stops at the FIRST bad position, which it classifies (EDITED, DELETED, INSERTED, REORDERED,
BAD_CHECKPOINT, BAD_ANCHOR, HEAD_MISMATCH) by looking at the neighbourhood of the break.

It only ever reads: it never repairs, rewrites or deletes anything, and it never needs a
signing key (verify keys only). FORMAT.md states what it can and cannot detect.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from sqlalchemy import Connection, Engine, bindparam, func, select
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

__all__ = [
    "CHUNK_SIZE",
    "LedgerTamperedError",
    "Problem",
    "ProblemKind",
    "VerifyReport",
    "check_prefix",
    "verify",
    "verify_jsonl",
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
) -> VerifyReport:
    """Verify ledger ``ledger_id`` in its database; the report names the first bad position.

    ``verify_keys`` maps key ids to Ed25519 verify keys (all keys the ledger has ever been
    signed with). None skips signature checks (hashes in checkpoints are still compared) and
    the report says so. Appends running meanwhile are fine: the walk follows the head.
    """
    if isinstance(engine_or_session, Session):
        return _verify_on(engine_or_session.connection(), ledger_id, verify_keys, chunk_size)
    with engine_or_session.connect() as conn:
        return _verify_on(conn, ledger_id, verify_keys, chunk_size)


def _verify_on(
    conn: Connection, ledger_id: str, keys: Mapping[str, VerifyKey] | None, chunk_size: int
) -> VerifyReport:
    walk = _Walk(_DatabaseSource(conn, ledger_id, chunk_size), ledger_id, keys)
    return walk.report(walk.run())


def check_prefix(conn: Connection, ledger_id: str, through: int) -> tuple[bytes, Problem | None]:
    """Walk records up to ``through`` (from the latest anchor) without signature checks.

    Returns the chain hash at ``through`` and the first problem. Used by ``purge`` so that an
    anchor never vouches for a chain that was already broken.
    """
    walk = _Walk(_DatabaseSource(conn, ledger_id, CHUNK_SIZE), ledger_id, None)
    problem = walk.run(until=through)
    if problem is None and walk.last_seq != through:
        problem = Problem(
            walk.last_seq + 1, ProblemKind.DELETED, f"the chain ends before {through}"
        )
    return walk.last_hash, problem


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
