"""A platform replica killed (SIGKILL) in the middle of a review approval (自動応答不可).

A reviewer approves a held provision on a replica of JPS's platform (``approver.py``: the
platform as ``linkage serve server`` runs it, plus the review queue's approve). The approval
commits its decision, the sealed answer and its records in one transaction, then delivers; the
replica's way to the network is a black hole, so it dies with the decision stored and the answer
not delivered. JPS's platform, restarted, finds the undelivered answer and delivers the very
same bytes; the requester then holds the pension, exactly once. Approving again is refused.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import Counter
from pathlib import Path

from google.protobuf.duration_pb2 import Duration
from resilience_support import (
    ORGS,
    Backend,
    broken_ledgers,
    free_base_port,
    people,
    prepare,
    process_world,
    scalar_rows,
    status_name,
)
from tcp_proxy import TcpProxy

from linkage.v1 import intermediate_server_pb2 as pb
from simulator.world_cli import ProcessWorld, port_span

HELD = 3
APPROVER = Path(__file__).with_name("approver.py")
STAFF = "reviewer.kill-test"


def _held_state(backend: Backend, permit_id: str) -> tuple[str, bool]:
    rows = scalar_rows(
        backend,
        "platform-jps",
        "SELECT state, delivered FROM server_held_provisions WHERE permit_id = :p",
        p=permit_id,
    )
    return (str(rows[0][0]), bool(rows[0][1])) if rows else ("", False)


async def _until_held_state(
    backend: Backend, permit_id: str, wanted: tuple[str, bool], limit: float = 60.0
) -> None:
    """Poll the provider's database (the decision is only visible there) with a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while (state := await asyncio.to_thread(_held_state, backend, permit_id)) != wanted:
        assert loop.time() < deadline, f"held provision still {state}, not {wanted}"
        await asyncio.sleep(0.05)


def _approver_args(world: ProcessWorld, network: str, permit_id: str) -> list[str]:
    """A replica of JPS's platform (any free port) that approves ``permit_id`` as STAFF and
    reaches the network at ``network``."""
    serve_args = world.process("platform-jps").args[1:]  # without the system name
    overrides = ["--port", "0", "--network", network, "--network-timeout", "120"]
    overrides += ["--redelivery-interval", "3600", "--replica-index", "9"]
    return [str(APPROVER), *serve_args, *overrides, "--", "jps", permit_id, STAFF]


def _events(backend: Backend, permit_id: str) -> Counter[str]:
    rows = scalar_rows(
        backend,
        "platform-jps",
        "SELECT event FROM access_records WHERE ledger = 'server:jps' AND permit_id = :p",
        p=permit_id,
    )
    return Counter(str(event) for (event,) in rows)


async def test_an_approval_killed_after_its_decision_is_delivered_once_after_the_restart(
    backend: Backend,
) -> None:
    base = free_base_port(port_span(ORGS))
    no_redelivery = {"platform-jps": ["--redelivery-interval", "3600"]}
    async with (
        TcpProxy(f"127.0.0.1:{base}") as black_hole,
        process_world(backend, extra_args=no_redelivery, base_port=base) as world,
    ):
        await black_hole.cut("blackhole")
        sakai, jps = await prepare(world, backend, HELD, held=HELD)
        try:
            specs = sakai.specs(people(HELD), "jps", "rv")
            held = await sakai.stream(specs)
            assert {status_name(r.status) for r in held.values()} == {"HELD_FOR_REVIEW"}
            permit = held[specs[0].query_id].permit_id
            log = (backend.root / "logs" / "approver.log").open("wb")
            approver = await asyncio.create_subprocess_exec(
                sys.executable, *_approver_args(world, black_hole.address, permit), stderr=log
            )
            await _until_held_state(backend, permit, ("APPROVED", False))
            approver.send_signal(signal.SIGKILL)
            await approver.wait()
            log.close()
            name = f"organizations/sakai/queries/{specs[0].query_id}"
            before = await sakai.platform.GetQueryResult(
                pb.GetQueryResultRequest(name=name), timeout=30
            )
            await world.stop("platform-jps")
            await world.restart("platform-jps", ["--redelivery-interval", "0.2"])
            late = await sakai.platform.GetQueryResult(
                pb.GetQueryResultRequest(name=name, wait=Duration(seconds=20)), timeout=30
            )
            await _until_held_state(backend, permit, ("APPROVED", True))
            again = await asyncio.create_subprocess_exec(
                sys.executable,
                *_approver_args(world, world.address("network"), permit),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            _, refused = await asyncio.wait_for(again.communicate(), 60)
        finally:
            await sakai.close()
            await jps.close()
    assert status_name(before.result.status) == "HELD_FOR_REVIEW"  # decided, not delivered
    assert status_name(late.result.status) == "PROVIDED"
    assert [v.data_item for v in late.result.values] == ["pension_benefit"]
    assert again.returncode != 0
    assert b"ALREADY_DECIDED" in refused
    assert _events(backend, permit) == {"HELD_FOR_REVIEW": 1, "REVIEW_APPROVED": 1, "PROVIDED": 1}
    others = [held[spec.query_id].permit_id for spec in specs[1:]]
    assert [_held_state(backend, p) for p in others] == [("HELD", False)] * (HELD - 1)
    assert broken_ledgers(backend, ["jps", "municipal"]) == []
