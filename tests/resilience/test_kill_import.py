"""A platform killed (SIGKILL) in the middle of a batch import of duplicates (副本).

An import is stored in one transaction once the whole stream is in: whenever the process dies
(half-way through the stream; once the stream is in, while it validates and seals; inside the
storing transaction, seen by its write lock), the database holds all of the import or none of
it, never a part; the retry with the same import id after the restarts stores it exactly once,
and the ledger (one DUPLICATES_IMPORTED record) verifies.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence

import grpc
from resilience_support import (
    Backend,
    Person,
    UnifiedAddress,
    broken_ledgers,
    people,
    process_world,
    scalar_rows,
)

from linkage.v1 import intermediate_server_pb2 as pb
from simulator.world import PENSION_SERVICE
from simulator.world_cli import ProcessWorld

RECORDS = 20_000
CHUNK = 5_000
IMPORT_ID = "pensions-2026-kill"


def _counts(backend: Backend) -> tuple[int, int, int]:
    """(duplicate rows, import rows, DUPLICATES_IMPORTED records) of JPS's import."""
    component = "platform-jps"
    (rows,) = scalar_rows(
        backend,
        component,
        "SELECT count(*) FROM server_duplicates WHERE import_id = :i",
        i=IMPORT_ID,
    )[0]
    (imports,) = scalar_rows(
        backend, component, "SELECT count(*) FROM server_imports WHERE import_id = :i", i=IMPORT_ID
    )[0]
    (records,) = scalar_rows(
        backend,
        component,
        "SELECT count(*) FROM access_records WHERE event = 'DUPLICATES_IMPORTED'",
    )[0]
    return int(rows), int(imports), int(records)


async def _chunks(
    requests: Sequence[pb.ImportDuplicatesRequest], sent: asyncio.Event, hold_after: int | None
) -> AsyncIterator[pb.ImportDuplicatesRequest]:
    """The import's chunks; ``sent`` is set after ``hold_after`` chunks (then the stream
    stays open, half-way) or after the last one."""
    for index, request in enumerate(requests):
        if index == hold_after:
            sent.set()
            await asyncio.Event().wait()  # half-way: the platform is killed meanwhile
        yield request
    sent.set()


def _writing(backend: Backend) -> bool:
    """Whether a transaction is writing into JPS's duplicates right now (not committed yet)."""
    if backend.name == "sqlite":
        connection = sqlite3.connect(backend.root / "platform-jps.sqlite", timeout=0)
        try:
            connection.execute("BEGIN IMMEDIATE")  # fails while another writer holds the lock
            connection.rollback()
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            connection.close()
    (locks,) = scalar_rows(
        backend,
        "network",  # any connection to the database will do
        "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :schema "
        "AND c.relname = 'server_duplicates' AND l.mode = 'RowExclusiveLock'",
        schema=f"{backend.prefix}platform-jps",
    )[0]
    return int(locks) > 0


async def _until_writing(backend: Backend, call: asyncio.Future[object]) -> None:
    """Return once the import's transaction writes (or the call ended: then it committed)."""
    while True:
        if call.done() or await asyncio.to_thread(_writing, backend):
            return
        await asyncio.sleep(0.005)


async def _import_killed(
    world: ProcessWorld,
    backend: Backend,
    jps: UnifiedAddress,
    persons: Sequence[Person],
    moment: str,
) -> None:
    """Start the import, kill the platform at ``moment``, see the call fail (or succeed, if it
    committed before the kill could land)."""
    sent = asyncio.Event()
    requests = jps.import_requests(IMPORT_ID, persons, chunk=CHUNK)
    hold_after = 2 if moment == "mid-stream" else None
    call = jps.platform.ImportDuplicates(_chunks(requests, sent, hold_after), timeout=60)
    task: asyncio.Future[object] = asyncio.ensure_future(call)
    await sent.wait()
    if moment == "storing":
        await _until_writing(backend, task)
    await world.kill("platform-jps")
    (outcome,) = await asyncio.gather(task, return_exceptions=True)
    if isinstance(outcome, BaseException):
        assert isinstance(outcome, grpc.aio.AioRpcError)
        assert outcome.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_killed_import_is_all_or_nothing_and_its_retry_stores_it_once(
    backend: Backend,
) -> None:
    persons = people(RECORDS)
    async with process_world(backend, organizations=[PENSION_SERVICE]) as world:
        jps = UnifiedAddress(world, "jps", world.address("platform-jps"))
        try:
            # Half-way through the stream: nothing may be stored.
            await _import_killed(world, backend, jps, persons, "mid-stream")
            assert await asyncio.to_thread(_counts, backend) == (0, 0, 0)
            for moment in ("stream-sent", "storing"):
                await world.restart("platform-jps")
                await _import_killed(world, backend, jps, persons, moment)
                counts = await asyncio.to_thread(_counts, backend)
                assert counts in {(0, 0, 0), (RECORDS, 1, 1)}, moment  # all or nothing
            await world.restart("platform-jps")
            retried = await jps.import_pensions(IMPORT_ID, persons)
        finally:
            await jps.close()
    assert retried.imported == RECORDS
    assert await asyncio.to_thread(_counts, backend) == (RECORDS, 1, 1)
    assert broken_ledgers(backend, ["jps"]) == []
