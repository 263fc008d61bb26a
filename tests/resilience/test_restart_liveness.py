"""A restart loses no liveness: what was asked while a platform was down is answered once it is
back, without waiting for a timer of minutes.

- After a provider platform restarts, the network reaches it at once: its channel retries a
  lost connection at most a second apart (gRPC's default backoff grows to 120 s) and a call
  waits up to ``--provider-wait`` (2 s) for the connection, so a query sent right after the
  restart is provided instead of failing, for good, as PROVIDER_UNAVAILABLE.
- Queries a requester platform had sent when it died (they never reached the network) are
  sent again by its restarted process once ``--resend-after`` has passed since they were
  admitted (safe: the network answers a repeated query id with its stored disposition).

Both are liveness, not safety: nothing is provided twice, nothing is lost from a ledger.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from resilience_support import (
    ORGS,
    Backend,
    free_base_port,
    people,
    prepare,
    process_world,
    retrying,
    status_name,
)
from tcp_proxy import TcpProxy

from linkage.rpc import Security
from linkage.serve import build_parser
from linkage.v1 import intermediate_server_pb2 as pb
from server import app as server_app
from simulator.world_cli import port_span

ROUTE_TIMEOUT = 10.0  # the network's default deadline of a call to a platform
NETWORK_TIMEOUT = 4.0  # the requester platform's deadline of a call to the network
RESEND_AFTER = 5.0  # a query IN_FLIGHT that long is sent again (default: NETWORK_TIMEOUT + 5)
SETTLE_LIMIT = 20.0


async def test_a_query_sent_right_after_the_provider_restarts_is_provided(
    backend: Backend,
) -> None:
    async with process_world(backend) as world:
        sakai, jps = await prepare(world, backend, 10)
        try:
            await world.kill("platform-jps")
            down: list[tuple[str, str, float]] = []
            for spec in sakai.specs(people(3), "jps", "kd"):  # the network tries and backs off
                request = pb.SubmitQueryRequest(parent=sakai.parent, query=spec)
                started = time.monotonic()
                failed = await sakai.platform.SubmitQuery(request, timeout=30)
                elapsed = time.monotonic() - started
                down.append((status_name(failed.result.status), failed.result.reason, elapsed))
                await asyncio.sleep(1.0)  # the outage goes on: the backoff grows
            await world.restart("platform-jps")
            spec = sakai.specs(people(1, offset=7), "jps", "kd-after")[0]
            request = pb.SubmitQueryRequest(parent=sakai.parent, query=spec)
            reply = await sakai.platform.SubmitQuery(request, timeout=30)
        finally:
            await sakai.close()
            await jps.close()
    # A provider that stays down: PROVIDER_UNAVAILABLE after the wait, well within the deadline.
    assert [(status, reason) for status, reason, _ in down] == [
        ("FAILED", "PROVIDER_UNAVAILABLE")
    ] * 3
    assert max(elapsed for _, _, elapsed in down) < ROUTE_TIMEOUT
    assert (status_name(reply.result.status), reply.result.reason) == ("PROVIDED", "")


async def test_queries_in_flight_when_the_requester_dies_are_answered_after_its_restart(
    backend: Backend,
) -> None:
    base = free_base_port(port_span(ORGS))
    async with TcpProxy(f"127.0.0.1:{base}") as proxy:
        municipal = [
            *("--network", proxy.address),
            *("--network-timeout", str(NETWORK_TIMEOUT)),
            *("--resend-after", str(RESEND_AFTER)),
        ]
        via_proxy = {"platform-municipal": municipal}
        async with process_world(backend, extra_args=via_proxy, base_port=base) as world:
            sakai, jps = await prepare(world, backend, 10)
            try:
                specs = sakai.specs(people(5), "jps", "kf")
                await proxy.cut("blackhole")  # the queries leave and hear nothing back
                proxy.traffic.clear()
                sending = asyncio.ensure_future(sakai.stream(specs))
                await proxy.traffic.wait()
                await world.kill("platform-municipal")
                with pytest.raises(grpc.aio.AioRpcError):
                    await sending
                await proxy.restore()
                await world.restart("platform-municipal")
                retry = pb.SubmitQueryRequest(parent=sakai.parent, query=specs[0])
                reply = await _until_settled(lambda: sakai.platform.SubmitQuery(retry, timeout=8))
            finally:
                await sakai.close()
                await jps.close()
    assert status_name(reply.result.status) == "PROVIDED"


async def _until_settled(
    ask: Callable[[], Awaitable[pb.SubmitQueryResponse]],
) -> pb.SubmitQueryResponse:
    """Ask again while the query is IN_FLIGHT (what a business system does), for at most
    ``SETTLE_LIMIT`` seconds; the first settled reply."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_LIMIT
    while True:
        reply, _ = await retrying(ask)
        if status_name(reply.result.status) != "IN_FLIGHT" or loop.time() > deadline:
            return reply
        await asyncio.sleep(0.2)


def _platform_config(**settings: Any) -> server_app.Config:
    return server_app.Config(
        platform="municipal",
        database_url="sqlite://",
        security=Security(None, "platform.municipal"),
        data_dir=Path("unused"),
        network_address="127.0.0.1:9",
        tenants=[],
        **settings,
    )


def test_a_requester_resends_a_query_left_in_flight_once_its_sender_has_surely_given_up() -> None:
    assert _platform_config(network_timeout=30).resend_delay() == timedelta(seconds=35)
    chosen = _platform_config(network_timeout=4, resend_after=timedelta(seconds=5))
    assert chosen.resend_delay() == timedelta(seconds=5)
    too_soon = _platform_config(network_timeout=4, resend_after=timedelta(seconds=4))
    with pytest.raises(ValueError, match="must exceed network_timeout"):
        too_soon.resend_delay()


def test_the_resend_delay_and_the_provider_wait_are_settings_of_linkage_serve(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert build_parser().parse_args(["server"]).resend_after is None
    assert build_parser().parse_args(["server", "--resend-after", "7"]).resend_after == 7.0
    monkeypatch.setenv("LINKAGE_RESEND_AFTER", "8")
    monkeypatch.setenv("LINKAGE_PROVIDER_WAIT", "0.5")
    args = build_parser().parse_args(["network"])
    assert (args.resend_after, args.provider_wait) == (8.0, 0.5)
