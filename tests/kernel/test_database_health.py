"""The health status follows the database: NOT_SERVING while it does not answer, SERVING after.

A readiness probe then takes a replica out of rotation during a database outage and puts it
back once the database answers, with no restart; the ``liveness`` service stays SERVING
throughout, so a liveness probe never restarts a server for an outage that is not its own.
The database here is a probe the test switches (the apps use ``linkage.db.ping``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.exc import OperationalError

from linkage import db
from linkage.health import NOT_SERVING, SERVING, DatabaseHealth
from linkage.rpc import LIVENESS_SERVICE, RunningServer, Security, start_server

SERVICE = "test.v1.SomeService"
WAIT = 10.0


class Database:
    """A database probe the test turns off and on, or makes hang."""

    def __init__(self) -> None:
        self.up = True
        self.calls = 0
        self.hang = threading.Event()
        self.release = threading.Event()
        self.probed = asyncio.Event()  # set at each probe (they run in worker threads)
        self._loop = asyncio.get_running_loop()

    def __call__(self) -> None:
        self.calls += 1
        self._loop.call_soon_threadsafe(self.probed.set)
        if self.hang.is_set():
            self.release.wait(WAIT)
        if not self.up:
            raise ConnectionRefusedError("the database refused the connection")


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    running = await start_server([(lambda _server: None, SERVICE)], security=Security(None, "t"))
    try:
        yield running
    finally:
        await running.stop(0)


@pytest.fixture
async def health(server: RunningServer) -> AsyncIterator[health_pb2_grpc.HealthStub]:
    async with Security(None, "admin").channel(server.address) as channel:
        yield health_pb2_grpc.HealthStub(channel)


async def _status(stub: health_pb2_grpc.HealthStub, service: str = "") -> int:
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=WAIT)
    return int(reply.status)


async def _statuses(stub: health_pb2_grpc.HealthStub) -> tuple[int, int, int]:
    return (
        await _status(stub),
        await _status(stub, SERVICE),
        await _status(stub, LIVENESS_SERVICE),
    )


async def test_the_server_is_not_serving_while_its_database_is_away_and_serving_after(
    server: RunningServer, health: health_pb2_grpc.HealthStub
) -> None:
    database = Database()
    probe = DatabaseHealth(server, database, interval=60)
    assert await probe.probe_once()
    assert await _statuses(health) == (SERVING, SERVING, SERVING)
    database.up = False
    assert not await probe.probe_once()
    assert await _statuses(health) == (NOT_SERVING, NOT_SERVING, SERVING)
    database.up = True
    assert await probe.probe_once()
    assert await _statuses(health) == (SERVING, SERVING, SERVING)


async def test_a_database_that_hangs_is_unreachable_after_the_probe_timeout(
    server: RunningServer, health: health_pb2_grpc.HealthStub
) -> None:
    database = Database()
    probe = DatabaseHealth(server, database, interval=60, timeout=0.2)
    database.hang.set()
    try:
        assert not await probe.probe_once()
        assert not await probe.probe_once()  # the hung probe is not started a second time
        assert database.calls == 1
        assert await _status(health) == NOT_SERVING
    finally:
        database.hang.clear()
        database.release.set()
    assert await probe.probe_once()
    assert await _status(health) == SERVING


async def test_the_probe_runs_on_its_own_until_stopped(
    server: RunningServer, health: health_pb2_grpc.HealthStub
) -> None:
    database = Database()
    probe = DatabaseHealth(server, database, interval=0.05)
    await probe.start()
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=WAIT)
    try:
        assert (await watch.read()).status == SERVING
        database.up = False
        assert (await watch.read()).status == NOT_SERVING
        database.up = True
        assert (await watch.read()).status == SERVING
    finally:
        watch.cancel()
        await probe.stop()
    database.probed.clear()
    database.up = False
    with pytest.raises(TimeoutError):  # stopped: nothing probes any more
        await asyncio.wait_for(database.probed.wait(), 0.3)
    assert await _status(health) == SERVING


async def test_a_server_shutting_down_stays_not_serving_whatever_the_database_says(
    server: RunningServer, health: health_pb2_grpc.HealthStub
) -> None:
    probe = DatabaseHealth(server, Database(), interval=60)
    await server.health.enter_graceful_shutdown()
    assert await probe.probe_once()
    assert await _status(health) == NOT_SERVING


async def test_the_probe_needs_a_positive_interval_and_timeout(server: RunningServer) -> None:
    with pytest.raises(ValueError, match="positive"):
        DatabaseHealth(server, Database(), interval=0)
    with pytest.raises(ValueError, match="positive"):
        DatabaseHealth(server, Database(), timeout=-1)


def test_a_probe_of_a_removed_sqlite_file_fails_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "dir with space%" / "app.sqlite"
    path.parent.mkdir()
    url = db.sqlite_url(path)
    db.migrate(url)
    probe = db.probe_engine(url)
    try:
        db.ping(probe)  # the file is there: the probe answers
        path.unlink()
        with pytest.raises(OperationalError):
            db.ping(probe)
        assert not path.exists()
    finally:
        probe.dispose()
