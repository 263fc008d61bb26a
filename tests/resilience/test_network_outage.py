"""The network going away while queries are asked and waited for, then coming back.

Sakai's platform reaches the network through a proxy the test cuts: first black-holed (packets
vanish: a query fails with UNAVAILABLE/NETWORK_UNAVAILABLE after the platform's network
deadline, 2 s here, and never hangs; a caller waiting on its result meanwhile is told it is in
flight), then refused (the network is down: a query fails at once, a batch reports each query
IN_FLIGHT with reason NETWORK_UNAVAILABLE). Then the proxy forwards again and the caller retries
with backoff: every query is provided exactly once, none is lost, none is provided twice, and
every ledger verifies. No process restarts.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import Counter
from collections.abc import Awaitable

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from resilience_support import (
    ORGS,
    Backend,
    broken_ledgers,
    free_base_port,
    people,
    permits_per_query,
    prepare,
    process_world,
    provided_count,
    provided_twice,
    retrying,
    status_name,
)
from tcp_proxy import TcpProxy

from linkage.errors import remote_error
from linkage.v1 import intermediate_server_pb2 as pb
from simulator.world_cli import port_span

PEOPLE = 20
NETWORK_TIMEOUT = 2.0


async def _refused(call: Awaitable[object]) -> tuple[str, str, float]:
    """(status, reason, seconds) of a call expected to fail."""
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call
    error = remote_error(failed.value)
    return error.code, error.reason, time.monotonic() - started


async def test_queries_during_a_network_outage_fail_clearly_and_are_provided_once_after(
    backend: Backend,
) -> None:
    base = free_base_port(port_span(ORGS))
    async with TcpProxy(f"127.0.0.1:{base}") as proxy:
        via = {"platform-municipal": ["--network", proxy.address]}
        via["platform-municipal"] += ["--network-timeout", str(NETWORK_TIMEOUT)]
        async with process_world(backend, extra_args=via, base_port=base) as world:
            sakai, jps = await prepare(world, backend, PEOPLE)
            specs = sakai.specs(people(PEOPLE), "jps", "no")
            single = [pb.SubmitQueryRequest(parent=sakai.parent, query=s) for s in specs[:3]]
            try:
                first = await sakai.platform.SubmitQuery(single[0], timeout=30)
                # Black hole first (from a working connection): the call waits for its deadline.
                await proxy.cut("blackhole")
                proxy.traffic.clear()
                sending = asyncio.ensure_future(
                    _refused(sakai.platform.SubmitQuery(single[2], timeout=30))
                )
                await proxy.traffic.wait()  # admitted and on its way into the black hole
                waited = await sakai.platform.GetQueryResult(
                    pb.GetQueryResultRequest(
                        name=f"organizations/sakai/queries/{specs[2].query_id}",
                        wait=Duration(seconds=1),
                    ),
                    timeout=10,
                )
                dropped = await sending
                # Then refused: calls fail at once; a batch reports each query in flight.
                await proxy.cut("refuse")
                refused = await _refused(sakai.platform.SubmitQuery(single[1], timeout=30))
                during = await sakai.stream(specs[3:])
                await proxy.restore()
                restored = time.monotonic()
                retried = [
                    await retrying(functools.partial(sakai.platform.SubmitQuery, r, timeout=30))
                    for r in single[1:]
                ]
                recovered = time.monotonic() - restored
                again, _ = await retrying(lambda: sakai.stream(specs[3:]))
            finally:
                await sakai.close()
                await jps.close()
    assert status_name(first.result.status) == "PROVIDED"
    assert refused[:2] == ("UNAVAILABLE", "NETWORK_UNAVAILABLE")
    assert refused[2] < NETWORK_TIMEOUT  # refused at once
    assert Counter((status_name(r.status), r.reason) for r in during.values()) == {
        ("IN_FLIGHT", "NETWORK_UNAVAILABLE"): PEOPLE - 3
    }
    assert dropped[:2] == ("UNAVAILABLE", "NETWORK_UNAVAILABLE")
    assert NETWORK_TIMEOUT <= dropped[2] < NETWORK_TIMEOUT + 5  # the deadline, no hang
    assert status_name(waited.result.status) == "IN_FLIGHT"  # the wait ended, honestly
    assert [status_name(reply.result.status) for reply, _ in retried] == ["PROVIDED"] * 2
    assert recovered < 15
    assert Counter(status_name(r.status) for r in again.values()) == {"PROVIDED": PEOPLE - 3}
    assert provided_twice(backend, "jps") == []
    assert provided_count(backend, "jps", "no-") == PEOPLE
    assert Counter(permits_per_query(backend, "sakai", "no-").values()) == {1: PEOPLE}
    assert broken_ledgers(backend, ["jps", "municipal"]) == []
