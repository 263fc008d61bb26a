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
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

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
_INDIVIDUAL_NUMBER_LENGTH = 12


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
    SERIAL_ISSUED = "SERIAL_ISSUED"
    DUPLICATES_IMPORTED = "DUPLICATES_IMPORTED"
    DUPLICATES_EXPORTED = "DUPLICATES_EXPORTED"
    AUTO_RESPONSE_FLAG_CHANGED = "AUTO_RESPONSE_FLAG_CHANGED"
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


_E = TypeVar("_E", RecordEvent, ActorKind, Outcome)

# Enum conversion by dictionary: members hash and compare like their values, but calling the
# enum class costs far more than a lookup, and an exact member needs no lookup at all.
_EVENTS: dict[str, RecordEvent] = {member.value: member for member in RecordEvent}
_ACTOR_KINDS: dict[str, ActorKind] = {member.value: member for member in ActorKind}
_OUTCOMES: dict[str, Outcome] = {member.value: member for member in Outcome}

_KNOWN_REASONS: set[str] = set()
"""Reasons already matched against ``_REASON`` (callers use a handful of constants)."""

_KNOWN_REASONS_MAX = 4096
"""Bound on ``_KNOWN_REASONS``, so untrusted input cannot grow it without limit."""


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


def _member(table: dict[str, _E], enum: type[_E], value: object) -> _E:
    """``enum(value)`` by dictionary lookup; raises ``ValueError`` like the enum does."""
    member: _E | None
    try:
        member = table.get(value)  # type: ignore[call-overload]
    except TypeError:  # unhashable
        member = None
    if member is None:
        raise ValueError(f"{value!r} is not a valid {enum.__name__}")
    return member


def _is_reason(reason: str) -> bool:
    """Whether ``reason`` is UPPER_SNAKE (the empty reason is checked by the caller)."""
    if reason in _KNOWN_REASONS:
        return True
    if _REASON.fullmatch(reason) is None:
        return False
    if len(_KNOWN_REASONS) < _KNOWN_REASONS_MAX:
        _KNOWN_REASONS.add(reason)
    return True


@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class AccessRecord:
    """One access record, identical in shape at every place that keeps a ledger.

    Validated on construction so that every stored record has an injective encoding: no text
    field holds a control character, no data item holds a comma or is empty, ``reason`` is
    UPPER_SNAKE or empty, and ``subject`` never has the shape of an individual number.

    Construction is on the hot path of every query (about nine records per query across the
    places), so ``__init__`` is written for the common case: exact types (enum members, an
    aware UTC time, a tuple, plain ``str``) pass with a few comparisons and no allocation,
    and each slot is written once; anything else is normalized, or refused with a precise
    message, by the slower path. Every caller gets every check, trusted or not.
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

    def __init__(
        self,
        *,
        occurred_at: datetime,
        ledger: str,
        event: RecordEvent,
        actor_kind: ActorKind,
        actor_id: str,
        procedure: str = "",
        requester: str = "",
        provider: str = "",
        data_items: tuple[str, ...] = (),
        subject: str = "",
        permit_id: str = "",
        query_id: str = "",
        outcome: Outcome,
        reason: str = "",
    ) -> None:
        # Normalize to UTC and to the enum types, so equal records compare equal whatever the
        # caller passed (a +09:00 time, a plain string for an enum). Exact types are kept.
        if occurred_at.tzinfo is not UTC or type(occurred_at) is not datetime:
            occurred_at = from_micros(to_micros(occurred_at))
        if type(event) is not RecordEvent:
            event = _member(_EVENTS, RecordEvent, event)
        if type(actor_kind) is not ActorKind:
            actor_kind = _member(_ACTOR_KINDS, ActorKind, actor_kind)
        if type(outcome) is not Outcome:
            outcome = _member(_OUTCOMES, Outcome, outcome)
        if type(data_items) is not tuple:
            data_items = tuple(data_items)
        texts = (ledger, actor_id, procedure, requester, provider, subject, permit_id, query_id)
        if not _plainly_valid(texts, data_items, reason):
            texts, data_items, reason = _validated(texts, data_items, reason)
            ledger, actor_id, procedure, requester, provider, subject, permit_id, query_id = texts
        _SET_OCCURRED_AT(self, occurred_at)
        _SET_LEDGER(self, ledger)
        _SET_EVENT(self, event)
        _SET_ACTOR_KIND(self, actor_kind)
        _SET_ACTOR_ID(self, actor_id)
        _SET_PROCEDURE(self, procedure)
        _SET_REQUESTER(self, requester)
        _SET_PROVIDER(self, provider)
        _SET_DATA_ITEMS(self, data_items)
        _SET_SUBJECT(self, subject)
        _SET_PERMIT_ID(self, permit_id)
        _SET_QUERY_ID(self, query_id)
        _SET_OUTCOME(self, outcome)
        _SET_REASON(self, reason)

    @property
    def occurred_at_us(self) -> int:
        """``occurred_at`` as microseconds since the epoch: the form that is stored and hashed."""
        return (self.occurred_at - _EPOCH) // _MICROSECOND


# The record's texts in ``_plainly_valid`` and ``_validate``: ledger, actor_id, procedure,
# requester, provider, subject, permit_id, query_id (``reason`` and the items apart).
_Texts = tuple[str, str, str, str, str, str, str, str]


def _plainly_valid(texts: _Texts, data_items: tuple[str, ...], reason: str) -> bool:
    """The common case in O(fields): every text a printable plain ``str`` (so no control
    character), items without commas, a known or empty reason, a subject that cannot be an
    individual number. False means "ask ``_validated``", which knows every rule."""
    for text in texts:
        if type(text) is not str or not text.isprintable():
            return False
    for item in data_items:
        if type(item) is not str or not item or not item.isprintable() or "," in item:
            return False
    return (
        0 < len(texts[0]) <= MAX_LEDGER_ID
        and (not reason or (type(reason) is str and reason in _KNOWN_REASONS))
        and len(texts[5]) != _INDIVIDUAL_NUMBER_LENGTH
    )


def _validated(
    texts: _Texts, data_items: tuple[str, ...], reason: str
) -> tuple[_Texts, tuple[str, ...], str]:
    """Every rule, raising with the message of the first one broken (the precise path).

    Returns the values as plain ``str``: a subclass could answer the checks below, or format
    itself for hashing, differently from the text it holds, so only its text is kept.
    """
    plain = tuple(map(_plain, texts))
    items = tuple(map(_plain, data_items))
    reason = _plain(reason)
    ledger, subject = plain[0], plain[5]
    if not 0 < len(ledger) <= MAX_LEDGER_ID:
        raise ValueError(f"ledger must be 1 to {MAX_LEDGER_ID} characters")
    for text in (*plain, reason, *items):
        if not text.isprintable() and _CONTROL.search(text):
            raise ValueError("access record fields must not contain control characters")
    for item in items:
        if not item or DATA_ITEM_SEPARATOR in item:
            raise ValueError("data items must be non-empty and must not contain a comma")
    if reason and not _is_reason(reason):
        raise ValueError("reason must be UPPER_SNAKE or empty")
    if len(subject) == _INDIVIDUAL_NUMBER_LENGTH and subject.isascii() and subject.isdigit():
        # Records name a person by unified number or linkage code only (番号法: the
        # records must not become a store of individual numbers).
        raise ValueError("subject must never be an individual number")
    return plain, items, reason  # type: ignore[return-value]


def _plain(text: object) -> str:
    """``text`` as an exact ``str`` (its characters, whatever a subclass overrides)."""
    if type(text) is str:
        return text
    if not isinstance(text, str):
        raise TypeError("access record text fields must be str")
    return str.__str__(text)


def _slot_setter(name: str) -> Callable[[AccessRecord, Any], None]:
    """The raw slot write of a field: what a frozen dataclass's ``__init__`` does through
    ``object.__setattr__``, without looking the name up each time."""
    setter: Callable[[AccessRecord, Any], None] = AccessRecord.__dict__[name].__set__
    return setter


_SET_OCCURRED_AT = _slot_setter("occurred_at")
_SET_LEDGER = _slot_setter("ledger")
_SET_EVENT = _slot_setter("event")
_SET_ACTOR_KIND = _slot_setter("actor_kind")
_SET_ACTOR_ID = _slot_setter("actor_id")
_SET_PROCEDURE = _slot_setter("procedure")
_SET_REQUESTER = _slot_setter("requester")
_SET_PROVIDER = _slot_setter("provider")
_SET_DATA_ITEMS = _slot_setter("data_items")
_SET_SUBJECT = _slot_setter("subject")
_SET_PERMIT_ID = _slot_setter("permit_id")
_SET_QUERY_ID = _slot_setter("query_id")
_SET_OUTCOME = _slot_setter("outcome")
_SET_REASON = _slot_setter("reason")

if {field.name for field in fields(AccessRecord)} != {
    name.removeprefix("_SET_").lower() for name in dir() if name.startswith("_SET_")
}:  # pragma: no cover - a field added without its setter would be silently left unset
    raise AssertionError("every AccessRecord field needs its _SET_ slot writer")


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
