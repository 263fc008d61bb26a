"""The one access-record format (情報提供等記録) and its canonical bytes.

Owns: ``AccessRecord`` (the record every place writes: the requester's and the provider's
intermediate servers, the network, the unified address server), its enums, and the exact bytes
that are hashed into the chain and signed in checkpoints and anchors. ``FORMAT.md`` beside this
file specifies the same bytes for auditors; the two must never drift (the tests pin them).

It must never hold an individual number (個人番号): ``subject`` is a unified number or a linkage
code, and a value shaped like an individual number (exactly 12 ASCII digits) is refused. It does
no I/O; storage lives in ``models`` and ``ledger``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

__all__ = [
    "DATA_ITEM_SEPARATOR",
    "FIELD_SEPARATOR",
    "FORMAT_VERSION",
    "GENESIS_HASH",
    "MAX_LEDGER_ID",
    "AccessRecord",
    "ActorKind",
    "Outcome",
    "RecordEvent",
    "anchor_message",
    "chain_hash",
    "checkpoint_message",
    "encode_entry",
    "entry_bytes",
    "from_micros",
    "reseq_entry",
    "to_micros",
    "utc_now",
]

FORMAT_VERSION = "AR1"
"""First field of every entry; a new layout gets a new version, old chains keep theirs."""

FIELD_SEPARATOR = "\x1f"
"""ASCII unit separator between fields. No field may contain it (nor any control character),
which is what makes the joined bytes an injective encoding of the fields."""

DATA_ITEM_SEPARATOR = ","
"""Joins ``data_items`` into one field. No data item may contain it."""

MAX_LEDGER_ID = 64
"""Longest ledger id (and signing key id) the tables hold."""

GENESIS_HASH = bytes(32)
"""The ``prev_hash`` of record 1 of every ledger: 32 zero bytes."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_REASON = re.compile(r"(?:[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*)?")
_INDIVIDUAL_NUMBER_SHAPE = re.compile(r"[0-9]{12}")


class RecordEvent(StrEnum):
    """What happened. The value is the name, so stored rows read the same in SQL."""

    QUERY_REQUESTED = "QUERY_REQUESTED"
    PERMIT_ISSUED = "PERMIT_ISSUED"
    QUERY_DENIED = "QUERY_DENIED"
    QUERY_ROUTED = "QUERY_ROUTED"
    PROVIDED = "PROVIDED"
    NO_DATA = "NO_DATA"
    HELD_FOR_REVIEW = "HELD_FOR_REVIEW"
    REVIEW_APPROVED = "REVIEW_APPROVED"
    REVIEW_DECLINED = "REVIEW_DECLINED"
    ANSWER_RECEIVED = "ANSWER_RECEIVED"
    ANSWER_DELIVERED = "ANSWER_DELIVERED"
    FAILED = "FAILED"
    CODE_ISSUED = "CODE_ISSUED"
    CODE_ACQUIRED = "CODE_ACQUIRED"
    DUPLICATES_IMPORTED = "DUPLICATES_IMPORTED"
    STAFF_SIGNED_IN = "STAFF_SIGNED_IN"
    STAFF_SIGNED_OUT = "STAFF_SIGNED_OUT"
    STAFF_OPERATION = "STAFF_OPERATION"
    ACCESS_DENIED = "ACCESS_DENIED"


class ActorKind(StrEnum):
    """Who acted: an organization, one of its business systems, a staff member, the network
    itself, or the system (batch jobs, retention)."""

    ORGANIZATION = "ORGANIZATION"
    BUSINESS_SYSTEM = "BUSINESS_SYSTEM"
    STAFF = "STAFF"
    NETWORK = "NETWORK"
    SYSTEM = "SYSTEM"


class Outcome(StrEnum):
    """How it ended."""

    PROVIDED = "PROVIDED"
    DENIED = "DENIED"
    HELD = "HELD"
    APPROVED = "APPROVED"
    DECLINED = "DECLINED"
    FAILED = "FAILED"
    NO_DATA = "NO_DATA"
    OK = "OK"


def utc_now() -> datetime:
    """The current time as an aware UTC datetime (the default clock of the ledger)."""
    return datetime.now(UTC)


def to_micros(moment: datetime) -> int:
    """Microseconds since 1970-01-01T00:00:00Z of an aware datetime (exact, no float)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("timestamps must be timezone-aware")
    return (moment - _EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    """The aware UTC datetime of microseconds since the epoch."""
    return _EPOCH + timedelta(microseconds=micros)


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessRecord:
    """One access record, identical in shape at every place that keeps a ledger.

    Validated on construction so that every stored record has an injective encoding: no text
    field holds a control character, no data item holds a comma or is empty, ``reason`` is
    UPPER_SNAKE or empty, and ``subject`` never has the shape of an individual number.
    """

    occurred_at: datetime
    ledger: str
    event: RecordEvent
    actor_kind: ActorKind
    actor_id: str
    procedure: str = ""
    requester: str = ""
    provider: str = ""
    data_items: tuple[str, ...] = ()
    subject: str = ""
    permit_id: str = ""
    query_id: str = ""
    outcome: Outcome
    reason: str = ""

    def __post_init__(self) -> None:
        # Normalize to UTC and to the enum types, so equal records compare equal whatever the
        # caller passed (a +09:00 time, a plain string for an enum).
        object.__setattr__(self, "occurred_at", from_micros(to_micros(self.occurred_at)))
        object.__setattr__(self, "event", RecordEvent(self.event))
        object.__setattr__(self, "actor_kind", ActorKind(self.actor_kind))
        object.__setattr__(self, "outcome", Outcome(self.outcome))
        object.__setattr__(self, "data_items", tuple(self.data_items))
        self._validate()

    def _validate(self) -> None:
        if not self.ledger or len(self.ledger) > MAX_LEDGER_ID:
            raise ValueError(f"ledger must be 1 to {MAX_LEDGER_ID} characters")
        texts = (
            self.ledger,
            self.actor_id,
            self.procedure,
            self.requester,
            self.provider,
            self.subject,
            self.permit_id,
            self.query_id,
            self.reason,
            *self.data_items,
        )
        for text in texts:
            if not isinstance(text, str):
                raise TypeError("access record text fields must be str")
        # One search over all fields at once: cheap enough for the hot append path.
        if _CONTROL.search("".join(texts)):
            raise ValueError("access record fields must not contain control characters")
        for item in self.data_items:
            if not item or DATA_ITEM_SEPARATOR in item:
                raise ValueError("data items must be non-empty and must not contain a comma")
        if not _REASON.fullmatch(self.reason):
            raise ValueError("reason must be UPPER_SNAKE or empty")
        if _INDIVIDUAL_NUMBER_SHAPE.fullmatch(self.subject):
            # Records name a person by unified number or linkage code only (番号法: the
            # records must not become a store of individual numbers).
            raise ValueError("subject must never be an individual number")

    @property
    def occurred_at_us(self) -> int:
        """``occurred_at`` as microseconds since the epoch: the form that is stored and hashed."""
        return to_micros(self.occurred_at)


def encode_entry(
    *,
    ledger: str,
    seq: int,
    occurred_at_us: int,
    event: str,
    actor_kind: str,
    actor_id: str,
    procedure: str,
    requester: str,
    provider: str,
    data_items: str,
    subject: str,
    permit_id: str,
    query_id: str,
    outcome: str,
    reason: str,
) -> bytes:
    """The canonical bytes of one ledger entry from its stored field values (see FORMAT.md).

    ``data_items`` is the joined form (items separated by ``,``). The field order is fixed;
    the verifier's SQL builds the very same bytes in the database (``models.entry_bytes_sql``).
    """
    return FIELD_SEPARATOR.join(
        (
            FORMAT_VERSION,
            ledger,
            str(seq),
            str(occurred_at_us),
            event,
            actor_kind,
            actor_id,
            procedure,
            requester,
            provider,
            data_items,
            subject,
            permit_id,
            query_id,
            outcome,
            reason,
        )
    ).encode("utf-8")


def entry_bytes(seq: int, record: AccessRecord) -> bytes:
    """The canonical bytes of ``record`` stored at position ``seq`` of its ledger."""
    return encode_entry(
        ledger=record.ledger,
        seq=seq,
        occurred_at_us=to_micros(record.occurred_at),
        event=record.event.value,
        actor_kind=record.actor_kind.value,
        actor_id=record.actor_id,
        procedure=record.procedure,
        requester=record.requester,
        provider=record.provider,
        data_items=DATA_ITEM_SEPARATOR.join(record.data_items),
        subject=record.subject,
        permit_id=record.permit_id,
        query_id=record.query_id,
        outcome=record.outcome.value,
        reason=record.reason,
    )


def reseq_entry(body: bytes, seq: int) -> bytes:
    """``body`` as it would read at position ``seq`` (used to recognize renumbered rows)."""
    version, ledger, _old, rest = body.split(FIELD_SEPARATOR.encode(), 3)
    return FIELD_SEPARATOR.encode().join((version, ledger, str(seq).encode(), rest))


def chain_hash(prev_hash: bytes, body: bytes) -> bytes:
    """SHA-256(prev_hash || body): the hash of an entry, chaining it to its predecessor."""
    return hashlib.sha256(prev_hash + body).digest()


def _signed_message(
    kind: str, ledger: str, seq: int, hash_: bytes, at_us: int, key_id: str
) -> bytes:
    return FIELD_SEPARATOR.join(
        (f"{FORMAT_VERSION}-{kind}", ledger, str(seq), hash_.hex(), str(at_us), key_id)
    ).encode("utf-8")


def checkpoint_message(
    ledger: str, seq: int, hash_: bytes, signed_at_us: int, key_id: str
) -> bytes:
    """The bytes an Ed25519 checkpoint signature covers: the chain hash at ``seq``."""
    return _signed_message("CHECKPOINT", ledger, seq, hash_, signed_at_us, key_id)


def anchor_message(ledger: str, seq: int, hash_: bytes, purged_at_us: int, key_id: str) -> bytes:
    """The bytes an Ed25519 anchor signature covers: the hash of the last purged record."""
    return _signed_message("ANCHOR", ledger, seq, hash_, purged_at_us, key_id)
