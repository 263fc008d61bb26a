"""The database going away under a running platform and coming back, without a restart.

Sakai's platform reaches PostgreSQL through a proxy the test cuts. While the database refuses
connections, calls fail at once with UNAVAILABLE and the reason DATABASE_UNAVAILABLE (a
clear, retryable status, not INTERNAL); once it is back, the same calls succeed (the pool
pings and replaces dead connections). Its backends terminated (``pg_terminate_backend``, as a
failover does) cost at most a retry. A database that hangs (black hole) fails the call once the
URL's ``connect_timeout`` (2 s here; a deployment must set one, see deploy/README.md) expires.
Every query retried is provided exactly once and every ledger verifies.

PostgreSQL only: an SQLite file does not go away.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable

import grpc
import pytest
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
from linkage.v1 import intermediate_server_pb2 as pb

PEOPLE = 6
CONNECT_TIMEOUT = 2


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
        url += f"&connect_timeout={CONNECT_TIMEOUT}"
        via = {"platform-municipal": ["--database-url", url]}
        async with process_world(backend, extra_args=via) as world:
            sakai, jps = await prepare(world, backend, PEOPLE)
            specs = sakai.specs(people(PEOPLE), "jps", "db")
            queries = [pb.SubmitQueryRequest(parent=sakai.parent, query=s) for s in specs]

            def submit(index: int) -> Awaitable[pb.SubmitQueryResponse]:
                return sakai.platform.SubmitQuery(queries[index], timeout=30)

            try:
                first = await submit(0)
                await proxy.cut("refuse")
                refused = await _failure(submit(1))
                name = f"organizations/sakai/queries/{specs[0].query_id}"
                reading = await _failure(
                    sakai.platform.GetQueryResult(pb.GetQueryResultRequest(name=name), timeout=30)
                )
                await proxy.restore()
                back = time.monotonic()
                after_refusal, refused_retries = await retrying(lambda: submit(1))
                recovery = time.monotonic() - back
                terminated = _terminate(backend, proxy.upstream_ports())
                after_termination, terminated_retries = await retrying(lambda: submit(2))
                await proxy.cut("blackhole")
                hung = await _failure(submit(3))
                await proxy.restore()
                after_hang, _ = await retrying(lambda: submit(3))
            finally:
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
    assert provided_twice(backend, "jps") == []
    assert provided_count(backend, "jps", "db-") == 4
    assert broken_ledgers(backend, ["jps", "municipal"]) == []
