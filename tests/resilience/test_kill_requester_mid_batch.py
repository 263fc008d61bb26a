"""A requester platform killed (SIGKILL) in the middle of a batch query (一括照会), restarted.

The batch goes in messages of 30 queries, each sent once the previous one is answered; the
kill lands after the second, deterministically. The caller sees UNAVAILABLE; after the restart
the same batch sent again (with backoff while the platform comes back) gives every query one
final result: the stored one for those answered before, a fresh one for the rest, and none is
provided twice. Every ledger verifies afterwards. (Queries the dead requester had sent and not
heard back about: ``test_restart_liveness.py``.)
"""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
from resilience_support import (
    Backend,
    PacedStream,
    broken_ledgers,
    people,
    permits_per_query,
    prepare,
    process_world,
    provided_count,
    provided_twice,
    retrying,
    summary,
)

PEOPLE = 120
PER_MESSAGE = 30
KILL_AFTER = 2  # messages answered before the kill


async def test_a_requester_killed_mid_batch_answers_every_query_once_after_its_restart(
    backend: Backend,
) -> None:
    async with process_world(backend) as world:
        sakai, jps = await prepare(world, backend, PEOPLE)
        try:
            specs = sakai.specs(people(PEOPLE), "jps", "kr")
            stream = PacedStream(sakai, specs, PER_MESSAGE, pause_after=KILL_AFTER)
            running = asyncio.ensure_future(stream.run())
            await stream.paused.wait()
            await world.kill("platform-municipal")
            error = await running
            first = stream.results
            await world.restart("platform-municipal")
            again, _ = await retrying(lambda: sakai.stream(specs))
        finally:
            await sakai.close()
            await jps.close()
    answered = KILL_AFTER * PER_MESSAGE
    assert error is not None
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert summary(first) == {"PROVIDED": answered}
    assert summary(again) == {"PROVIDED": PEOPLE}
    assert all(again[q].permit_id == r.permit_id for q, r in first.items())
    assert provided_twice(backend, "jps") == []
    assert provided_count(backend, "jps", "kr-") == PEOPLE
    assert Counter(permits_per_query(backend, "sakai", "kr-").values()) == {1: PEOPLE}
    assert broken_ledgers(backend, ["jps", "municipal"]) == []
