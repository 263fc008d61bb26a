"""The record format: validation, and the canonical bytes pinned as FORMAT.md specifies them."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey
from sqlalchemy import Engine, select

from linkage.db import Base, make_engine, session_factory, sqlite_url, unit_of_work
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
from linkage.records.models import RECORDS, TABLES, entry_bytes_sql

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


@pytest.fixture(scope="module")
def module_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """One ledger database for the property test (hypothesis runs many examples on it)."""
    engine = make_engine(sqlite_url(tmp_path_factory.mktemp("model") / "records.db"))
    Base.metadata.create_all(engine, tables=list(TABLES))
    yield engine
    engine.dispose()


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


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=_RECORDS)
def test_database_rebuilds_exactly_the_bytes_that_were_hashed(
    module_engine: Engine, record: AccessRecord
) -> None:
    ledger = Ledger(SigningKey(bytes(32)), "k")
    sessions = session_factory(module_engine)
    with unit_of_work(sessions) as session:
        seq = ledger.append(session, record)
    with module_engine.connect() as conn:
        body, prev, stored = conn.execute(
            select(entry_bytes_sql("sqlite"), RECORDS.c.prev_hash, RECORDS.c.hash).where(
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
