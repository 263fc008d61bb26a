"""The record format: validation, and the canonical bytes pinned as FORMAT.md specifies them."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey
from sqlalchemy import Engine, select

from linkage.db import session_factory, unit_of_work
from linkage.records.disclosure import disclose
from linkage.records.ledger import Ledger
from linkage.records.model import (
    GENESIS_HASH,
    AccessRecord,
    ActorKind,
    Outcome,
    RecordEvent,
    chain_hash,
    checkpoint_message,
    entry_bytes,
    reseq_entry,
)
from linkage.records.models import RECORDS, entry_bytes_sql

from .conftest import make_record

GOLDEN = AccessRecord(
    occurred_at=datetime(2026, 4, 1, 0, 0, 0, 123456, tzinfo=UTC),
    ledger="server:sakai",
    event=RecordEvent.PROVIDED,
    actor_kind=ActorKind.ORGANIZATION,
    actor_id="org.city-27140",
    procedure="koki-koreisha.hokenryo.fuka",
    requester="org.osaka-koiki",
    provider="org.city-27140",
    data_items=("local_tax.income", "local_tax.household"),
    subject="U27140000000001",
    permit_id="permit-1",
    query_id="query-1",
    outcome=Outcome.PROVIDED,
)


def test_entry_bytes_are_the_documented_unit_separated_fields() -> None:
    assert entry_bytes(1, GOLDEN) == (
        b"AR1\x1fserver:sakai\x1f1\x1f1775001600123456\x1fPROVIDED\x1fORGANIZATION"
        b"\x1forg.city-27140\x1fkoki-koreisha.hokenryo.fuka\x1forg.osaka-koiki"
        b"\x1forg.city-27140\x1flocal_tax.income,local_tax.household\x1fU27140000000001"
        b"\x1fpermit-1\x1fquery-1\x1fPROVIDED\x1f"
    )


def test_first_hash_chains_onto_32_zero_bytes_as_in_format_md() -> None:
    digest = chain_hash(GENESIS_HASH, entry_bytes(1, GOLDEN))
    assert digest.hex() == "19bc551b3c916ea3ba09a2a10afe273acd50b7aef38872d47b57d7e692c1ccf1"
    assert (Path(__file__).parents[2] / "linkage/records/FORMAT.md").read_text().count(
        digest.hex()
    ) >= 1


def test_checkpoint_message_names_ledger_seq_hash_time_and_key() -> None:
    message = checkpoint_message("server:sakai", 7, bytes(32), 1775001600000000, "k1")
    assert message == b"AR1-CHECKPOINT\x1fserver:sakai\x1f7\x1f" + b"0" * 64 + (
        b"\x1f1775001600000000\x1fk1"
    )


def test_reseq_entry_changes_only_the_position() -> None:
    assert reseq_entry(entry_bytes(1, GOLDEN), 42) == entry_bytes(42, GOLDEN)


def test_records_normalize_time_zone_and_enum_strings() -> None:
    jst = timezone(timedelta(hours=9))
    record = dataclasses.replace(
        GOLDEN,
        occurred_at=datetime(2026, 4, 1, 9, 0, 0, 123456, tzinfo=jst),
        event="PROVIDED",  # type: ignore[arg-type]
    )
    assert record == GOLDEN
    assert record.occurred_at.tzinfo is UTC
    assert isinstance(record.event, RecordEvent)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"occurred_at": datetime(2026, 4, 1)}, "timezone-aware"),
        ({"ledger": ""}, "ledger"),
        ({"actor_id": "org\x1fcity"}, "control characters"),
        ({"subject": "line\nbreak"}, "control characters"),
        ({"data_items": ("a,b",)}, "comma"),
        ({"data_items": ("",)}, "non-empty"),
        ({"reason": "not snake"}, "UPPER_SNAKE"),
        ({"subject": "123456789018"}, "individual number"),
        ({"event": "LOOKED"}, "LOOKED"),
    ],
)
def test_records_that_would_break_the_encoding_or_hold_a_my_number_are_refused(
    change: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(GOLDEN, **change)  # type: ignore[arg-type]


# -- the SQL that rebuilds the bytes must agree with the Python encoder ------------------------


_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=30
)  # any printable text, Japanese included
_ITEM = _TEXT.filter(lambda s: s != "" and "," not in s)
_RECORDS = st.builds(
    AccessRecord,
    occurred_at=st.datetimes(
        min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
    ),
    ledger=st.sampled_from(["server:sakai", "network", "ua:sakai", "server:大阪"]),
    event=st.sampled_from(RecordEvent),
    actor_kind=st.sampled_from(ActorKind),
    actor_id=_TEXT,
    procedure=_TEXT,
    requester=_TEXT,
    provider=_TEXT,
    data_items=st.lists(_ITEM, max_size=4).map(tuple),
    subject=_TEXT.filter(lambda s: not (len(s) == 12 and s.isascii() and s.isdigit())),
    permit_id=_TEXT,
    query_id=_TEXT,
    outcome=st.sampled_from(Outcome),
    reason=st.from_regex(r"([A-Z][A-Z0-9]*(_[A-Z0-9]+)*)?", fullmatch=True),
)


@settings(
    max_examples=150,
    deadline=None,
    # One database for all examples of a run: the ledger simply grows.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(record=_RECORDS)
def test_database_rebuilds_exactly_the_bytes_that_were_hashed(
    engine: Engine, record: AccessRecord
) -> None:
    ledger = Ledger(SigningKey(bytes(32)), "k")
    sessions = session_factory(engine)
    with unit_of_work(sessions) as session:
        seq = ledger.append(session, record)
    with engine.connect() as conn:
        body, prev, stored = conn.execute(
            select(entry_bytes_sql(conn.dialect.name), RECORDS.c.prev_hash, RECORDS.c.hash).where(
                RECORDS.c.ledger == record.ledger, RECORDS.c.seq == seq
            )
        ).one()
    assert body == entry_bytes(seq, record)
    assert stored == chain_hash(prev, body)
    if record.subject:
        with sessions() as session:
            found = [s.record for s in disclose(session, [record.subject]) if s.seq == seq]
        assert record in found


def test_make_record_subjects_are_unified_numbers_not_individual_numbers() -> None:
    assert not make_record(1).subject.isdigit()


# -- the fast constructor keeps every rule ----------------------------------------------------


def _reference_refuses(texts: dict[str, str], items: tuple[str, ...]) -> bool:
    """The rules as first written (regexes over every field): the fast path must agree."""
    ledger, subject, reason = texts["ledger"], texts["subject"], texts["reason"]
    return (
        not 0 < len(ledger) <= 64
        or any(re.search(r"[\x00-\x1f\x7f]", t) for t in [*texts.values(), *items])
        or any(not item or "," in item for item in items)
        or re.fullmatch(r"(?:[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*)?", reason) is None
        or re.fullmatch(r"[0-9]{12}", subject) is not None
    )


_TEXT_NAMES = (
    "ledger",
    "actor_id",
    "procedure",
    "requester",
    "provider",
    "subject",
    "permit_id",
    "query_id",
    "reason",
)

# Characters that isprintable() rejects although the format allows them, and ones it forbids.
_TRICKY = st.sampled_from(
    ["\u3000", "\u00a0", "\u200b", "\u2028", "\x85", "\x1f", "\x00", "\x7f", "\n", ",", "１", "7"]
)
_ANY_TEXT = st.one_of(
    _TEXT, st.lists(st.one_of(_TRICKY, st.characters()), max_size=14).map("".join)
)


@settings(max_examples=200, deadline=None)
@given(
    texts=st.fixed_dictionaries({name: _ANY_TEXT for name in _TEXT_NAMES}),
    subject_digits=st.sampled_from(["", "123456789012", "１２３４５６７８９０１２", "12345678901"]),
    data_items=st.lists(_ANY_TEXT, max_size=3).map(tuple),
    reason=st.one_of(st.sampled_from(["", "NO_PERMIT", "A_1", "a", "_X", "X__Y"]), _ANY_TEXT),
)
def test_the_fast_constructor_refuses_exactly_what_the_rules_refuse(
    texts: dict[str, str], subject_digits: str, data_items: tuple[str, ...], reason: str
) -> None:
    fields = {**texts, "subject": subject_digits or texts["subject"], "reason": reason}
    refused = _reference_refuses(fields, data_items)
    try:
        AccessRecord(
            occurred_at=GOLDEN.occurred_at,
            event=RecordEvent.PROVIDED,
            actor_kind=ActorKind.SYSTEM,
            outcome=Outcome.OK,
            data_items=data_items,
            **fields,
        )
    except ValueError:
        assert refused, (fields, data_items)
    else:
        assert not refused, (fields, data_items)


class _Text(str):
    """A str subclass, as some libraries hand out."""


def test_str_subclasses_and_non_printable_but_allowed_characters_are_accepted() -> None:
    record = dataclasses.replace(
        GOLDEN,
        actor_id=_Text("org.city"),
        procedure="大阪\u3000府",
        subject="U\u00a01",
        data_items=[_Text("a")],  # type: ignore[arg-type]
    )
    assert record.actor_id == "org.city"
    assert type(record.actor_id) is str  # only the text is kept
    assert type(record.data_items) is tuple
    assert type(record.data_items[0]) is str
    assert record.procedure == "大阪\u3000府"


class _Liar(str):
    """A str subclass that answers every check as a clean value would, and hashes as one."""

    def isprintable(self) -> bool:
        return True

    def __contains__(self, _key: object) -> bool:
        return False

    def __format__(self, _spec: str) -> str:
        return "clean"

    def __str__(self) -> str:
        return "clean"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"actor_id": _Liar("org\x1fcity")}, "control characters"),
        ({"data_items": (_Liar("a,b"),)}, "comma"),
    ],
)
def test_a_str_subclass_cannot_talk_its_way_past_the_checks(
    change: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(GOLDEN, **change)  # type: ignore[arg-type]


def test_a_str_subclass_is_hashed_and_stored_as_the_text_it_holds() -> None:
    record = dataclasses.replace(GOLDEN, actor_id=_Liar("org.city-27140"))
    assert entry_bytes(1, record) == entry_bytes(1, GOLDEN)


@pytest.mark.parametrize("name", ["actor_id", "subject", "reason"])
def test_a_text_field_that_is_not_a_string_is_refused(name: str) -> None:
    with pytest.raises(TypeError, match="must be str"):
        dataclasses.replace(GOLDEN, **{name: 12})  # type: ignore[arg-type]


def test_an_unhashable_enum_value_is_refused_like_the_enum_refuses_it() -> None:
    with pytest.raises(ValueError, match="not a valid Outcome"):
        dataclasses.replace(GOLDEN, outcome=["OK"])  # type: ignore[arg-type]


def test_records_keep_exact_members_and_times_as_given() -> None:
    assert GOLDEN.event is RecordEvent.PROVIDED
    assert GOLDEN.occurred_at.tzinfo is UTC
    assert GOLDEN.occurred_at_us == 1775001600123456
    assert hash(GOLDEN) == hash(dataclasses.replace(GOLDEN))


def test_the_reason_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from linkage.records import model

    monkeypatch.setattr(model, "_KNOWN_REASONS", set())
    monkeypatch.setattr(model, "_KNOWN_REASONS_MAX", 3)
    for n in range(10):
        dataclasses.replace(GOLDEN, reason=f"REASON_{n}")
    assert len(model._KNOWN_REASONS) == 3
    with pytest.raises(ValueError, match="UPPER_SNAKE"):
        dataclasses.replace(GOLDEN, reason="REASON_X y")


def test_the_registry_can_record_a_serial_issued() -> None:
    record = dataclasses.replace(GOLDEN, event="SERIAL_ISSUED")  # type: ignore[arg-type]
    assert record.event is RecordEvent.SERIAL_ISSUED
    assert b"\x1fSERIAL_ISSUED\x1f" in entry_bytes(1, record)
