"""Group commit: concurrent appends become one contiguous chain, even from two replicas."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from nacl.signing import SigningKey
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from linkage.db import make_engine, session_factory, sqlite_url
from linkage.records.ledger import Ledger, RecordWriter
from linkage.records.model import AccessRecord
from linkage.records.verify import verify

from .conftest import KEY_ID, LEDGER, START, Clock, make_record, query


@pytest.fixture
async def writer(ledger: Ledger, sessions: sessionmaker[Session]) -> AsyncIterator[RecordWriter]:
    """A group-commit writer on the ledger database, closed after the test."""
    writer = RecordWriter(ledger, sessions)
    yield writer
    await writer.close()


async def test_concurrent_appends_form_one_contiguous_chain(
    writer: RecordWriter, engine: Engine, ledger: Ledger
) -> None:
    seqs = await asyncio.gather(*(writer.append(make_record(i)) for i in range(1000)))
    await writer.close()
    assert sorted(seqs) == list(range(1, 1001))
    report = verify(engine, LEDGER, ledger.verify_keys())
    assert report.ok, report.describe()
    assert report.records_checked == 1000


async def test_appends_are_committed_in_few_transactions(
    writer: RecordWriter, engine: Engine
) -> None:
    await asyncio.gather(*(writer.append(make_record(i)) for i in range(3000)))
    # checkpoint_every=10 signs once per commit at most: one checkpoint row per transaction.
    ((checkpoints,),) = query(engine, "SELECT count(*) FROM access_record_checkpoints")
    assert checkpoints <= 10


async def test_an_append_returns_only_once_the_record_is_committed(
    writer: RecordWriter, engine: Engine
) -> None:
    seq = await writer.append(make_record(1))
    assert query(engine, "SELECT seq FROM access_records") == [(seq,)]


async def test_append_many_keeps_its_records_together_and_in_order(writer: RecordWriter) -> None:
    other = asyncio.ensure_future(writer.append(make_record(0)))
    seqs = await writer.append_many(make_record(i) for i in range(1, 6))
    await other
    assert seqs == list(range(seqs[0], seqs[0] + 5))


async def test_records_of_several_ledgers_share_a_batch(
    writer: RecordWriter, engine: Engine, ledger: Ledger
) -> None:
    await asyncio.gather(
        *(writer.append(make_record(i, ledger=f"server:city-{i % 3}")) for i in range(300))
    )
    for n in range(3):
        report = verify(engine, f"server:city-{n}", ledger.verify_keys())
        assert report.ok
        assert report.last_seq == 100


async def test_close_flushes_and_signs_the_tail(
    ledger: Ledger, sessions: sessionmaker[Session], engine: Engine
) -> None:
    async with RecordWriter(ledger, sessions) as writer:
        pending = [asyncio.ensure_future(writer.append(make_record(i))) for i in range(15)]
        await asyncio.sleep(0)
    assert all(p.done() for p in pending)
    report = verify(engine, LEDGER, ledger.verify_keys())
    assert report.ok
    assert report.last_seq == 15
    assert report.unsigned_tail == 0


async def test_flush_waits_for_everything_appended_before(
    writer: RecordWriter, engine: Engine
) -> None:
    pending = [asyncio.ensure_future(writer.append(make_record(i))) for i in range(20)]
    await asyncio.sleep(0)
    await writer.flush()
    assert all(p.done() for p in pending)
    assert query(engine, "SELECT count(*) FROM access_records") == [(20,)]


async def test_a_closed_writer_refuses_appends(writer: RecordWriter) -> None:
    await writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        await writer.append(make_record(1))


async def test_only_access_records_can_be_appended(writer: RecordWriter) -> None:
    with pytest.raises(TypeError):
        await writer.append("PROVIDED")  # type: ignore[arg-type]


async def test_a_failed_commit_fails_every_append_of_its_batch_and_the_writer_recovers(
    tmp_path: Path, ledger: Ledger
) -> None:
    missing = make_engine(sqlite_url(tmp_path / "no-tables.db"))
    writer = RecordWriter(ledger, session_factory(missing))
    results = await asyncio.gather(
        *(writer.append(make_record(i)) for i in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, Exception) for r in results)
    from linkage.db import Base
    from linkage.records.models import TABLES

    Base.metadata.create_all(missing, tables=list(TABLES))
    assert await writer.append(make_record(9)) == 1
    await writer.close()
    missing.dispose()


async def test_an_idle_writer_signs_a_checkpoint_after_the_interval(
    sessions: sessionmaker[Session], engine: Engine, signing_key: SigningKey
) -> None:
    ledger = Ledger(signing_key, KEY_ID, checkpoint_interval=timedelta(milliseconds=50))
    writer = RecordWriter(ledger, sessions)
    await writer.append(make_record(1))
    await asyncio.sleep(0.3)
    assert verify(engine, LEDGER, ledger.verify_keys()).unsigned_tail == 0
    await writer.close()


async def test_two_replicas_on_one_database_append_to_one_verifying_chain(
    database: str, engine: Engine, signing_key: SigningKey
) -> None:
    # Two engines on one database, each with its own writer and key, as two replicas.
    other_key = SigningKey.generate()
    replicas = [
        (Ledger(signing_key, KEY_ID, checkpoint_every=50), engine),
        (Ledger(other_key, "replica-2", checkpoint_every=50), make_engine(database)),
    ]
    writers = [RecordWriter(ledger, session_factory(e), max_batch=200) for ledger, e in replicas]

    async def produce(writer: RecordWriter, offset: int) -> list[int]:
        return list(
            await asyncio.gather(*(writer.append(make_record(offset + i)) for i in range(2000)))
        )

    first, second = await asyncio.gather(produce(writers[0], 0), produce(writers[1], 10_000))
    for writer in writers:
        await writer.close()
    replicas[1][1].dispose()
    assert sorted(first + second) == list(range(1, 4001))
    keys = {KEY_ID: signing_key.verify_key, "replica-2": other_key.verify_key}
    report = verify(engine, LEDGER, keys)
    assert report.ok, report.describe()
    assert report.records_checked == 4000
    signers = {k for (k,) in query(engine, "SELECT DISTINCT key_id FROM access_record_checkpoints")}
    assert signers == {KEY_ID, "replica-2"}


async def test_a_chain_of_100_000_records_is_appended_by_group_commit_and_verified(
    signing_key: SigningKey, sessions: sessionmaker[Session], engine: Engine, clock: Clock
) -> None:
    records: list[AccessRecord] = [
        make_record(i, occurred_at=START + timedelta(milliseconds=i)) for i in range(100_000)
    ]
    ledger = Ledger(signing_key, KEY_ID, clock=clock)  # a checkpoint every 1000 records
    writer = RecordWriter(ledger, sessions)

    async def handler(share: list[AccessRecord]) -> None:
        for record in share:  # one await per record, like a request handler
            await writer.append(record)

    started = time.perf_counter()
    await asyncio.gather(*(handler(records[n::200]) for n in range(200)))
    await writer.close()
    appended = time.perf_counter() - started
    started = time.perf_counter()
    report = verify(engine, LEDGER, ledger.verify_keys())
    verified = time.perf_counter() - started
    assert report.ok, report.describe()
    assert report.records_checked == 100_000
    assert report.checkpoints_checked == 100
    print(f"append {100_000 / appended:,.0f} records/s, verify {100_000 / verified:,.0f}/s")


async def test_verification_while_appends_continue_sees_an_intact_chain(
    writer: RecordWriter, engine: Engine, ledger: Ledger
) -> None:
    await writer.append_many(make_record(i) for i in range(500))

    async def keep_appending() -> None:
        for i in range(500, 800):
            await writer.append(make_record(i))

    appending = asyncio.ensure_future(keep_appending())
    reports = []
    while not appending.done():
        reports.append(
            await asyncio.to_thread(verify, engine, LEDGER, ledger.verify_keys(), chunk_size=97)
        )
    await appending
    assert reports
    assert all(r.ok for r in reports), [r.describe() for r in reports if not r.ok]
