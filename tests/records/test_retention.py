"""Retention: purging the expired prefix behind a signed anchor keeps the chain verifiable,
and tampering with the anchor or the purged range is caught."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from nacl.signing import SigningKey
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from linkage.db import unit_of_work
from linkage.records.model import anchor_message, to_micros
from linkage.records.retention import (
    DEFAULT_RETENTION,
    RetentionError,
    RetentionJob,
    purge,
    retention_cutoff,
)
from linkage.records.verify import LedgerTamperedError, ProblemKind, verify

from .conftest import KEY_ID, LEDGER, START, Chain, make_record, query, tamper

# chain fixture: record i occurred at START + i seconds, so this cut-off purges 1..20.
CUTOFF = START + timedelta(seconds=21)


def purged(chain: Chain, sessions: sessionmaker[Session], signing_key: SigningKey) -> int:
    with unit_of_work(sessions) as session:
        return purge(session, LEDGER, CUTOFF, signing_key, KEY_ID)


def test_purge_deletes_the_expired_prefix_and_the_rest_still_verifies(
    chain: Chain, sessions: sessionmaker[Session], signing_key: SigningKey
) -> None:
    assert purged(chain, sessions, signing_key) == 20
    assert query(chain.engine, "SELECT min(seq), count(*) FROM access_records") == [(21, 30)]
    assert query(chain.engine, "SELECT purged_through_seq FROM access_record_anchors") == [(20,)]
    report = verify(chain.engine, LEDGER, chain.keys)
    assert report.ok, report.describe()
    assert (report.anchor_seq, report.records_checked, report.last_seq) == (20, 30, 50)


def test_purge_keeps_the_checkpoint_at_the_anchor_and_drops_older_ones(
    chain: Chain, sessions: sessionmaker[Session], signing_key: SigningKey
) -> None:
    purged(chain, sessions, signing_key)
    seqs = query(chain.engine, "SELECT seq FROM access_record_checkpoints ORDER BY seq")
    assert seqs == [(20,), (30,), (40,), (50,)]


def test_appends_continue_after_a_purge(
    chain: Chain, sessions: sessionmaker[Session], signing_key: SigningKey
) -> None:
    purged(chain, sessions, signing_key)
    with unit_of_work(sessions) as session:
        assert chain.ledger.append(session, make_record(51)) == 51
    assert verify(chain.engine, LEDGER, chain.keys).ok


def test_a_second_purge_continues_from_the_first_anchor(
    chain: Chain, sessions: sessionmaker[Session], signing_key: SigningKey
) -> None:
    purged(chain, sessions, signing_key)
    with unit_of_work(sessions) as session:
        assert purge(session, LEDGER, START + timedelta(seconds=31), signing_key, KEY_ID) == 10
    report = verify(chain.engine, LEDGER, chain.keys)
    assert report.ok
    assert report.anchor_seq == 30


def test_purging_everything_leaves_a_verifiable_empty_chain(
    chain: Chain, sessions: sessionmaker[Session], signing_key: SigningKey
) -> None:
    with unit_of_work(sessions) as session:
        assert purge(session, LEDGER, START + timedelta(days=1), signing_key, KEY_ID) == 50
    report = verify(chain.engine, LEDGER, chain.keys)
    assert report.ok
    assert report.records_checked == 0
    assert report.anchor_seq == 50


def test_nothing_is_purged_before_seven_years(
    chain: Chain, sessions: sessionmaker[Session], signing_key: SigningKey
) -> None:
    with unit_of_work(sessions) as session:
        cutoff = retention_cutoff(START + timedelta(days=365 * 7))
        assert purge(session, LEDGER, cutoff, signing_key, KEY_ID) == 0
    assert timedelta(days=365 * 7 + 2) <= DEFAULT_RETENTION


def test_purge_stops_at_the_first_record_not_yet_expired(
    chain: Chain, sessions: sessionmaker[Session], signing_key: SigningKey
) -> None:
    # Record 6 occurred a day later than its neighbours (e.g. a clock step); 7..9 are old
    # again. Only a prefix can go, so 6..9 are kept.
    other = "server:other"
    times = [START + timedelta(seconds=i) for i in range(1, 10)]
    times[5] = START + timedelta(days=1)
    with unit_of_work(sessions) as session:
        chain.ledger.append_many(
            session,
            other,
            [make_record(i, ledger=other, occurred_at=t) for i, t in enumerate(times)],
        )
    with unit_of_work(sessions) as session:
        assert purge(session, other, START + timedelta(hours=1), signing_key, KEY_ID) == 5
    kept = query(
        chain.engine, "SELECT seq FROM access_records WHERE ledger = ? ORDER BY seq", other
    )
    assert kept == [(6,), (7,), (8,), (9,)]
    assert verify(chain.engine, other, chain.keys).ok


def test_purge_refuses_to_anchor_a_tampered_prefix_and_deletes_nothing(
    chain: Chain, sessions: sessionmaker[Session], signing_key: SigningKey
) -> None:
    tamper(chain.engine, "UPDATE access_records SET subject = 'X' WHERE seq = 7")
    with pytest.raises(LedgerTamperedError, match="record 7: EDITED"):
        purged(chain, sessions, signing_key)
    assert query(chain.engine, "SELECT count(*) FROM access_records") == [(50,)]
    assert query(chain.engine, "SELECT count(*) FROM access_record_anchors") == [(0,)]


def test_an_edited_anchor_is_caught(
    chain: Chain, sessions: sessionmaker[Session], signing_key: SigningKey
) -> None:
    purged(chain, sessions, signing_key)
    tamper(chain.engine, "UPDATE access_record_anchors SET hash = ?", b"\x04" * 32)
    report = verify(chain.engine, LEDGER, chain.keys)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.kind) == (20, ProblemKind.BAD_ANCHOR)


def test_a_forged_anchor_signature_is_caught(
    chain: Chain, sessions: sessionmaker[Session], signing_key: SigningKey
) -> None:
    purged(chain, sessions, signing_key)
    tamper(chain.engine, "UPDATE access_record_anchors SET signature = ?", b"\x00" * 64)
    report = verify(chain.engine, LEDGER, chain.keys)
    assert report.problem is not None
    assert report.problem.kind is ProblemKind.BAD_ANCHOR


def test_a_deleted_anchor_shows_the_purged_records_as_deleted(
    chain: Chain, sessions: sessionmaker[Session], signing_key: SigningKey
) -> None:
    purged(chain, sessions, signing_key)
    tamper(chain.engine, "DELETE FROM access_record_anchors")
    report = verify(chain.engine, LEDGER, chain.keys)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.kind) == (1, ProblemKind.DELETED)


def test_records_deleted_after_the_anchor_are_caught(
    chain: Chain, sessions: sessionmaker[Session], signing_key: SigningKey
) -> None:
    purged(chain, sessions, signing_key)
    tamper(chain.engine, "DELETE FROM access_records WHERE seq <= 22")
    report = verify(chain.engine, LEDGER, chain.keys)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.kind) == (21, ProblemKind.DELETED)


def test_a_record_put_back_into_the_purged_range_is_caught(
    chain: Chain, sessions: sessionmaker[Session], signing_key: SigningKey
) -> None:
    purged(chain, sessions, signing_key)
    tamper(
        chain.engine,
        "INSERT INTO access_records SELECT ledger, 5, occurred_at_us, event, actor_kind, "
        "actor_id, procedure, requester, provider, data_items, subject, permit_id, query_id, "
        "outcome, reason, prev_hash, hash FROM access_records WHERE seq = 21",
    )
    report = verify(chain.engine, LEDGER, chain.keys)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.kind) == (5, ProblemKind.INSERTED)


# -- the scheduled job ----------------------------------------------------------------------


JOB_KEY_ID = "retention-2033"

# A clock seven years and a bit after the chain: the job's cut-off is CUTOFF (purges 1..20).
LATER = CUTOFF + DEFAULT_RETENTION


@pytest.fixture
def job_key() -> SigningKey:
    """The job's anchor signing key (another key than the ledger's checkpoint key)."""
    return SigningKey(bytes(range(1, 33)))


def job(
    target: Engine | sessionmaker[Session],
    job_key: SigningKey,
    ledgers: list[str] | None = None,
    **settings: Any,
) -> RetentionJob:
    return RetentionJob(
        target, lambda: ledgers or [LEDGER], job_key, JOB_KEY_ID, clock=lambda: LATER, **settings
    )


async def test_the_job_purges_a_ledger_past_retention_behind_a_signed_anchor(
    chain: Chain, job_key: SigningKey
) -> None:
    assert await job(chain.engine, job_key).run_once() == {LEDGER: 20}
    keys = {**chain.keys, JOB_KEY_ID: job_key.verify_key}
    report = verify(chain.engine, LEDGER, keys)
    assert report.ok, report.describe()
    assert (report.anchor_seq, report.records_checked) == (20, 30)
    ((seq, hash_, at_us, key_id, signature),) = query(
        chain.engine,
        "SELECT purged_through_seq, hash, purged_at_us, key_id, signature "
        "FROM access_record_anchors",
    )
    assert (seq, key_id, at_us) == (20, JOB_KEY_ID, to_micros(LATER))
    message = anchor_message(LEDGER, seq, bytes(hash_), at_us, key_id)
    job_key.verify_key.verify(message, bytes(signature))  # raises if not signed by the job
    assert verify(chain.engine, LEDGER, chain.keys).problem.kind is ProblemKind.BAD_ANCHOR  # type: ignore[union-attr]


async def test_the_job_purges_a_long_prefix_in_bounded_steps_each_behind_an_anchor(
    chain: Chain, job_key: SigningKey
) -> None:
    assert await job(chain.engine, job_key, batch=7).run_once() == {LEDGER: 20}
    anchors = query(chain.engine, "SELECT purged_through_seq FROM access_record_anchors")
    assert sorted(anchors) == [(7,), (14,), (20,)]
    report = verify(chain.engine, LEDGER, {**chain.keys, JOB_KEY_ID: job_key.verify_key})
    assert report.ok, report.describe()
    assert (report.anchor_seq, report.records_checked) == (20, 30)


def test_a_purge_with_nothing_expired_creates_no_head_for_an_unknown_ledger(
    chain: Chain, sessions: sessionmaker[Session], signing_key: SigningKey
) -> None:
    heads = query(chain.engine, "SELECT count(*) FROM access_record_heads")
    with unit_of_work(sessions) as session:
        assert purge(session, "no-such-ledger", CUTOFF, signing_key, KEY_ID) == 0
    assert query(chain.engine, "SELECT count(*) FROM access_record_heads") == heads


async def test_a_second_run_finds_nothing_left_to_purge(
    chain: Chain, sessions: sessionmaker[Session], job_key: SigningKey
) -> None:
    retention = job(sessions, job_key)
    await retention.run_once()
    assert await retention.run_once() == {LEDGER: 0}
    assert query(chain.engine, "SELECT count(*) FROM access_record_anchors") == [(1,)]


async def test_the_schedule_purges_at_start_and_stops_cleanly(
    chain: Chain, job_key: SigningKey
) -> None:
    retention = job(chain.engine, job_key, interval=timedelta(hours=1))
    await retention.start()
    await retention.start()  # a second start is harmless
    for _ in range(200):
        if query(chain.engine, "SELECT count(*) FROM access_record_anchors") == [(1,)]:
            break
        await asyncio.sleep(0.02)
    await retention.stop()
    await retention.stop()
    assert query(chain.engine, "SELECT min(seq) FROM access_records") == [(21,)]


async def test_a_tampered_ledger_is_refused_and_the_others_are_still_purged(
    chain: Chain, sessions: sessionmaker[Session], job_key: SigningKey
) -> None:
    other = "server:osaka"
    with unit_of_work(sessions) as session:
        chain.ledger.append_many(session, other, [make_record(i, ledger=other) for i in range(5)])
    tamper(
        chain.engine, "UPDATE access_records SET subject = 'X' WHERE seq = 7 AND ledger = ?", LEDGER
    )
    with pytest.raises(RetentionError, match="server:sakai") as caught:
        await job(chain.engine, job_key, [LEDGER, other]).run_once()
    assert caught.value.purged == {other: 5}
    assert isinstance(caught.value.failures[LEDGER], LedgerTamperedError)
    assert query(chain.engine, "SELECT count(*) FROM access_records WHERE ledger = ?", LEDGER) == [
        (50,)
    ]


async def test_the_schedule_survives_a_failing_run(chain: Chain, job_key: SigningKey) -> None:
    calls: list[int] = []

    def ledgers() -> list[str]:
        calls.append(1)
        raise RuntimeError("tenant directory unavailable")

    retention = RetentionJob(
        chain.engine, ledgers, job_key, JOB_KEY_ID, interval=timedelta(milliseconds=10)
    )
    await retention.start()
    for _ in range(200):
        if len(calls) >= 3:
            break
        await asyncio.sleep(0.01)
    await retention.stop()
    assert len(calls) >= 3


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"interval": timedelta(0)}, "interval"),
        ({"retention": timedelta(-1)}, "retention"),
    ],
)
def test_the_job_refuses_settings_that_make_no_sense(
    engine: Engine, job_key: SigningKey, settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        job(engine, job_key, **settings)
