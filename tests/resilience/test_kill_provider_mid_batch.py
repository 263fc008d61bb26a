"""A provider platform killed (SIGKILL) in the middle of a batch query (一括照会), restarted.

The batch goes in messages of 30 queries, each sent once the previous one is answered; the
kill lands after the second, deterministically. Queries already answered stay PROVIDED; the
rest fail with a reason (PROVIDER_UNAVAILABLE), once and for good (the network keeps the
disposition: the same batch sent again after the restart gets the same results, and nothing
is provided twice); the first new query after the restart is provided (the network waits
briefly for a platform that is reconnecting: see ``test_restart_liveness.py``). Every ledger
verifies afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from resilience_support import (
    Backend,
    PacedStream,
    Person,
    UnifiedAddress,
    broken_ledgers,
    people,
    permits_per_query,
    prepare,
    process_world,
    provided_count,
    provided_twice,
    status_name,
    summary,
)

from linkage.v1 import intermediate_server_pb2 as pb

PEOPLE = 120
PER_MESSAGE = 30
KILL_AFTER = 2  # messages answered before the kill


async def test_a_provider_killed_mid_batch_fails_the_rest_once_with_a_reason(
    backend: Backend,
) -> None:
    async with process_world(backend) as world:
        sakai, jps = await prepare(world, backend, PEOPLE)
        try:
            specs = sakai.specs(people(PEOPLE), "jps", "kp")
            stream = PacedStream(sakai, specs, PER_MESSAGE, pause_after=KILL_AFTER)
            running = asyncio.ensure_future(stream.run())
            await stream.paused.wait()
            await world.kill("platform-jps")
            stream.resume.set()
            error = await running
            first = stream.results
            await world.restart("platform-jps")
            again = await sakai.stream(specs)
            lost = await _until_provided(sakai, people(PEOPLE), "kp-after")
        finally:
            await sakai.close()
            await jps.close()
    answered = KILL_AFTER * PER_MESSAGE
    assert error is None
    assert summary(first) == {
        "PROVIDED": answered,
        "FAILED/PROVIDER_UNAVAILABLE": PEOPLE - answered,
    }
    assert {q: (r.status, r.reason, r.permit_id) for q, r in again.items()} == {
        q: (r.status, r.reason, r.permit_id) for q, r in first.items()
    }
    assert provided_twice(backend, "jps") == []
    assert provided_count(backend, "jps", "kp-") == answered + 1
    assert lost == 0  # no query failed while the network reconnected
    assert set(permits_per_query(backend, "sakai", "kp-").values()) == {1}
    assert broken_ledgers(backend, ["jps", "municipal"]) == []


async def _until_provided(ua: UnifiedAddress, persons: Sequence[Person], run: str) -> int:
    """One new query after another until one is provided; how many failed before it."""
    for index, spec in enumerate(ua.specs(persons, "jps", run)):
        reply = await ua.platform.SubmitQuery(
            pb.SubmitQueryRequest(parent=ua.parent, query=spec), timeout=30
        )
        if status_name(reply.result.status) == "PROVIDED":
            return index
        assert reply.result.reason == "PROVIDER_UNAVAILABLE"
        await asyncio.sleep(0.1)
    raise AssertionError(f"nothing provided in {len(persons)} tries")
