"""The database going away under a running platform and coming back, without a restart.

Sakai's platform reaches PostgreSQL through a proxy the test cuts. While the database refuses
connections, calls fail at once with UNAVAILABLE and the reason DATABASE_UNAVAILABLE (a
clear, retryable status, not INTERNAL); once it is back, the same calls succeed (the pool
pings and replaces dead connections). Its backends terminated (``pg_terminate_backend``, as a
failover does) cost at most a retry. A database that hangs (black hole) fails the call once the
``connect_timeout`` expires (``--database-connect-timeout``, 5 s by default, 2 s here; a
``connect_timeout`` in the URL would win). Every query retried is provided exactly once and
every ledger verifies. Meanwhile the platform's health follows the database (probed every
``--database-probe-interval``): NOT_SERVING while it is away (a readiness probe takes the
replica out of rotation), SERVING once it is back; its ``liveness`` stays SERVING throughout.

PostgreSQL only: an SQLite file does not go away.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from resilience_support import (
    Backend,
    broken_ledgers,
    people,
    prepare,
    process_world,
    provided_count,
    provided_twice,
    retrying,
    scalar_rows,
    status_name,
)
from tcp_proxy import TcpProxy

from linkage.errors import remote_error
from linkage.health import NOT_SERVING, SERVING
from linkage.rpc import LIVENESS_SERVICE
from linkage.v1 import intermediate_server_pb2 as pb
from simulator.world_cli import ProcessWorld

PEOPLE = 6
CONNECT_TIMEOUT = 2
PROBE_INTERVAL = 0.5
HEALTH_LIMIT = 15.0


class Health:
    """The platform's health as its readiness probe sees it: a Watch stream of changes."""

    def __init__(self, world: ProcessWorld, name: str) -> None:
        self._channel = world.admin().channel(world.address(name))
        self.stub = health_pb2_grpc.HealthStub(self._channel)
        self._watch = self.stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=300)

    async def becomes(self, status: int) -> float:
        """Seconds until the server reports ``status`` (TimeoutError after HEALTH_LIMIT)."""
        started = time.monotonic()
        async with asyncio.timeout(HEALTH_LIMIT):
            while (await self._watch.read()).status != status:
                pass
        return time.monotonic() - started

    async def liveness(self) -> int:
        request = health_pb2.HealthCheckRequest(service=LIVENESS_SERVICE)
        return int((await self.stub.Check(request, timeout=5)).status)

    async def close(self) -> None:
        self._watch.cancel()
        await self._channel.close(None)


async def _failure(call: Awaitable[object]) -> tuple[str, str, float]:
    """(status, reason, seconds) of a call expected to fail."""
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call
    error = remote_error(failed.value)
    return error.code, error.reason, time.monotonic() - started


def _terminate(backend: Backend, ports: list[int]) -> int:
    """``pg_terminate_backend`` for the platform's connections (they come from the proxy)."""
    rows = scalar_rows(
        backend,
        "network",
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE client_port = ANY(:ports)",
        ports=ports,
    )
    return int(rows[0][0])


async def test_a_database_outage_gives_unavailable_and_the_platform_recovers_by_itself(
    postgres_backend: Backend,
) -> None:
    backend = postgres_backend
    async with TcpProxy("127.0.0.1:5432") as proxy:
        url = backend.url("platform-municipal").replace("127.0.0.1:5432", proxy.address)
        via = {
            "platform-municipal": [
                *("--database-url", url),
                *("--database-connect-timeout", str(CONNECT_TIMEOUT)),
                *("--database-probe-interval", str(PROBE_INTERVAL)),
            ]
        }
        async with process_world(backend, extra_args=via) as world:
            sakai, jps = await prepare(world, backend, PEOPLE)
            health = Health(world, "platform-municipal")
            specs = sakai.specs(people(PEOPLE), "jps", "db")
            queries = [pb.SubmitQueryRequest(parent=sakai.parent, query=s) for s in specs]

            def submit(index: int) -> Awaitable[pb.SubmitQueryResponse]:
                return sakai.platform.SubmitQuery(queries[index], timeout=30)

            try:
                first = await submit(0)
                await health.becomes(SERVING)
                await proxy.cut("refuse")
                refused = await _failure(submit(1))
                name = f"organizations/sakai/queries/{specs[0].query_id}"
                reading = await _failure(
                    sakai.platform.GetQueryResult(pb.GetQueryResultRequest(name=name), timeout=30)
                )
                out_of_rotation = await health.becomes(NOT_SERVING)
                alive_meanwhile = await health.liveness()
                await proxy.restore()
                back_in_rotation = await health.becomes(SERVING)
                back = time.monotonic()
                after_refusal, refused_retries = await retrying(lambda: submit(1))
                recovery = time.monotonic() - back
                terminated = _terminate(backend, proxy.upstream_ports())
                after_termination, terminated_retries = await retrying(lambda: submit(2))
                await proxy.cut("blackhole")
                hung = await _failure(submit(3))
                hung_out_of_rotation = await health.becomes(NOT_SERVING)
                await proxy.restore()
                after_hang, _ = await retrying(lambda: submit(3))
                hung_back_in_rotation = await health.becomes(SERVING)
            finally:
                await health.close()
                await sakai.close()
                await jps.close()
    assert status_name(first.result.status) == "PROVIDED"
    assert refused[:2] == ("UNAVAILABLE", "DATABASE_UNAVAILABLE")
    assert refused[2] < 2.0  # at once
    assert reading[:2] == ("UNAVAILABLE", "DATABASE_UNAVAILABLE")
    assert status_name(after_refusal.result.status) == "PROVIDED"
    assert recovery < 10, (recovery, refused_retries)
    assert terminated > 0
    assert status_name(after_termination.result.status) == "PROVIDED"
    assert terminated_retries <= 1
    assert hung[:2] == ("UNAVAILABLE", "DATABASE_UNAVAILABLE")
    assert CONNECT_TIMEOUT <= hung[2] < 3 * CONNECT_TIMEOUT + 2
    assert status_name(after_hang.result.status) == "PROVIDED"
    assert out_of_rotation < PROBE_INTERVAL + CONNECT_TIMEOUT + 2
    assert alive_meanwhile == SERVING
    assert back_in_rotation < PROBE_INTERVAL + 2
    assert hung_out_of_rotation < HEALTH_LIMIT
    assert hung_back_in_rotation < HEALTH_LIMIT
    assert provided_twice(backend, "jps") == []
    assert provided_count(backend, "jps", "db-") == 4
    assert broken_ledgers(backend, ["jps", "municipal"]) == []
