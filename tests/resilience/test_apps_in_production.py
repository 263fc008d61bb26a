"""What a started app does on its own, with nobody calling it: the production background jobs.

- Records retention: every app that keeps a ledger purges records past their seven years every
  ``records_retention_interval``, behind a signed anchor, so the rest of the chain still
  verifies; the job stops with the app.
- Readiness: the health status follows the database (``database_probe_interval``).

The network app stands for the others here (the platform and the registry start the same jobs
the same way); it runs in-process on the run's backend, with a clock the test moves.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from linkage import db
from linkage.health import NOT_SERVING, SERVING
from linkage.keys import KeyRing
from linkage.pki import init_pki
from linkage.records.ledger import Ledger
from linkage.records.models import ANCHORS, RECORDS
from linkage.records.retention import DEFAULT_RETENTION
from linkage.records.verify import verify
from linkage.rpc import LIVENESS_SERVICE, Security
from simulator.network import app as network_app
from simulator.network.ledger import LEDGER_ID, code_issued

PURGE_LIMIT = 15.0  # seconds for a purge every 50 ms to have happened
WAIT = 10.0


class Clock:
    """A clock the test moves by hand; starts at the real time."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Network:
    app: network_app.App
    url: str
    clock: Clock
    pki_dir: Path
    data_dir: Path


@pytest.fixture
async def start(
    database_url: Callable[[str], str], tmp_path: Path
) -> AsyncIterator[Callable[..., Any]]:
    """``await start(**config)``: a network app on a fresh database, closed after the test."""
    pki_dir = tmp_path / "pki"
    await asyncio.to_thread(init_pki, pki_dir, ["network", "admin"])
    started: list[network_app.App] = []

    async def make(**overrides: Any) -> Network:
        url = database_url("network")
        clock = Clock()
        data_dir = tmp_path / "network-keys"
        config = network_app.Config(
            database_url=url,
            security=Security(pki_dir, "network"),
            data_dir=data_dir,
            migrate=False,
            clock=clock,
            **overrides,
        )
        app = await network_app.start(config)
        started.append(app)
        return Network(app, url, clock, pki_dir, data_dir)

    yield make
    for app in started:
        await app.close(grace=0)


def _append(network: Network, code: str) -> None:
    """A record in the ``network`` ledger at the network's clock, signed as the app signs."""
    ring = KeyRing.load(network.data_dir, network_app.RECORDS_KEY_RING)
    ledger = Ledger(ring.current.signing_key, ring.current.key_id, clock=network.clock)
    engine = db.make_engine(network.url)
    try:
        with db.unit_of_work(db.session_factory(engine)) as session:
            record = code_issued(organization="sakai", code=code, at=network.clock())
            ledger.append_many(session, LEDGER_ID, [record])
    finally:
        engine.dispose()


def _subjects_and_anchors(url: str) -> tuple[list[str], int]:
    engine = db.make_engine(url)
    try:
        with engine.connect() as connection:
            subjects = connection.execute(
                select(RECORDS.c.subject).where(RECORDS.c.ledger == LEDGER_ID)
            ).scalars()
            anchors = connection.execute(select(func.count()).select_from(ANCHORS)).scalar_one()
            return sorted(subjects), int(anchors)
    finally:
        engine.dispose()


def _verifies(network: Network) -> bool:
    ring = KeyRing.load(network.data_dir, network_app.RECORDS_KEY_RING)
    keys = {key.key_id: key.signing_key.verify_key for key in ring.keys}
    engine = db.make_engine(network.url)
    try:
        return verify(engine, LEDGER_ID, keys, workers=1).ok
    finally:
        engine.dispose()


async def _until_purged(url: str, expected: list[str]) -> tuple[list[str], int]:
    """What the ledger holds once only ``expected`` is left (or when the limit is reached)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PURGE_LIMIT
    while True:
        subjects, anchors = await asyncio.to_thread(_subjects_and_anchors, url)
        if subjects == expected or loop.time() > deadline:
            return subjects, anchors
        await asyncio.sleep(0.05)  # the job reports to nobody: look again


async def test_an_app_purges_records_past_their_retention_by_itself(
    start: Callable[..., Any],
) -> None:
    network: Network = await start(records_retention_interval=timedelta(milliseconds=50))
    await asyncio.to_thread(_append, network, "OLD")
    network.clock.now += DEFAULT_RETENTION + timedelta(days=1)
    await asyncio.to_thread(_append, network, "RECENT")
    subjects, anchors = await _until_purged(network.url, ["RECENT"])
    assert subjects == ["RECENT"]
    assert anchors == 1
    assert await asyncio.to_thread(_verifies, network)


async def test_records_within_their_retention_are_kept(start: Callable[..., Any]) -> None:
    network: Network = await start(records_retention_interval=timedelta(milliseconds=50))
    await asyncio.to_thread(_append, network, "OLD")
    network.clock.now += DEFAULT_RETENTION - timedelta(days=1)
    await asyncio.to_thread(_append, network, "RECENT")
    await network.app.records_retention.run_once()  # at least one purge after the move
    assert await asyncio.to_thread(_subjects_and_anchors, network.url) == (["OLD", "RECENT"], 0)


async def test_the_retention_job_stops_with_the_app(start: Callable[..., Any]) -> None:
    network: Network = await start(records_retention_interval=timedelta(milliseconds=50))
    assert _running("records-retention")
    await network.app.close(grace=0)
    assert not _running("records-retention")
    assert not _running("database-health")


def _running(name: str) -> bool:
    return any(task.get_name() == name and not task.done() for task in asyncio.all_tasks())


async def test_an_app_is_not_serving_while_its_database_is_away(
    start: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    network: Network = await start(database_probe_interval=0.05)
    real_ping = db.ping

    def away(_engine: object) -> None:
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))

    security = Security(network.pki_dir, "admin")
    async with security.channel(network.app.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=WAIT)
        try:
            assert (await watch.read()).status == SERVING
            monkeypatch.setattr(db, "ping", away)
            assert (await watch.read()).status == NOT_SERVING
            liveness = await stub.Check(
                health_pb2.HealthCheckRequest(service=LIVENESS_SERVICE), timeout=WAIT
            )
            service = await stub.Check(
                health_pb2.HealthCheckRequest(service=network_app.SERVICE_NAME), timeout=WAIT
            )
            monkeypatch.setattr(db, "ping", real_ping)
            assert (await watch.read()).status == SERVING
        finally:
            watch.cancel()
    assert liveness.status == SERVING
    assert service.status == NOT_SERVING
