"""Replicas: three processes per platform on one database, a batch across them.

Nothing a replica needs lives only in another's memory: queries (idempotency by query id),
nonces, results, query keys and the ledger heads are in the database. So the same batch sent
three times at once, through a round-robin channel that puts each call on another replica of
Sakai's platform, is admitted once per query id, asked of the network once, provided once by
JPS (whose three replicas the network reaches round robin through the directory's address
list), and every ledger (three writers on each chain) still verifies.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from resilience_support import (
    Backend,
    PacedStream,
    UnifiedAddress,
    broken_ledgers,
    load_residents,
    people,
    permits_per_query,
    process_world,
    provided_count,
    provided_twice,
    status_name,
)

from linkage.errors import LinkageError
from linkage.keys import KeyRing
from linkage.rpc import Security
from linkage.v1 import common_pb2, network_pb2
from simulator.world import SAKAI, WorldConfig, init_pki
from simulator.world_cli import replica_name

REPLICAS = 3
PEOPLE = 60
COPIES = 3  # the same batch, sent this many times at once
REPLICA_LIST = "127.0.0.1:50052,127.0.0.1:50053,127.0.0.1:50054"


def _replica_names(platform: str) -> list[str]:
    return [replica_name(platform, index) for index in range(REPLICAS)]


async def test_one_batch_sent_to_three_replicas_at_once_is_provided_once_per_query(
    backend: Backend,
) -> None:
    async with process_world(backend, replicas=REPLICAS) as world:
        persons = people(PEOPLE)
        await asyncio.to_thread(load_residents, backend, persons)
        lists = world.platform_endpoints()
        sakai = UnifiedAddress(world, "sakai", lists["municipal"])
        nenkin = UnifiedAddress(world, "jps", lists["jps"])
        try:
            await asyncio.gather(sakai.acquire_codes(persons), nenkin.acquire_codes(persons))
            imported = await nenkin.import_pensions("pensions-2026", persons)
            assert imported.imported == PEOPLE
            specs = sakai.specs(persons, "jps", "rep")
            replicas = [*_replica_names("municipal"), *_replica_names("jps")]
            before = {name: _thread_cpu_ns(world.pid(name)) for name in replicas}
            # Each message of 10 queries waits for the one before: 6 network calls, which the
            # network spreads over JPS's replicas.
            streams = [PacedStream(sakai, specs, 10) for _ in range(COPIES)]
            errors = await asyncio.gather(*(stream.run() for stream in streams))
            copies = [stream.results for stream in streams]
            after = {name: _thread_cpu_ns(world.pid(name)) for name in replicas}
        finally:
            await sakai.close()
            await nenkin.close()

    assert errors == [None] * COPIES
    ids = {spec.query_id for spec in specs}
    for results in copies:
        assert set(results) == ids
        assert Counter(status_name(r.status) for r in results.values()) == {"PROVIDED": PEOPLE}
        assert all(r.permit_id == copies[0][qid].permit_id for qid, r in results.items())
    assert provided_twice(backend, "jps") == []
    assert provided_count(backend, "jps", "rep-") == PEOPLE
    assert Counter(permits_per_query(backend, "sakai", "rep-").values()) == {1: PEOPLE}
    assert broken_ledgers(backend, ["jps", "municipal"]) == []
    # Round robin put the calls on every replica (Sakai's from the test, JPS's from the
    # network): each one worked for them.
    used = {name: _used_seconds(before[name], after[name]) for name in before}
    assert all(seconds > 0 for seconds in used.values()), used


def _thread_cpu_ns(pid: int) -> dict[str, int]:
    """CPU time of each live thread of ``pid``, in ns, from ``schedstat``: ``/proc/PID/stat``
    counts 10 ms ticks, and a replica's share of a few calls can stay under one."""
    found: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            found[task.name] = int((task / "schedstat").read_text().split()[0])
    return found


def _used_seconds(before: dict[str, int], after: dict[str, int]) -> float:
    """CPU seconds the threads alive at the end used in between (new threads: all theirs)."""
    return sum(ns - before.get(tid, 0) for tid, ns in after.items()) / 1e9


async def test_the_directory_accepts_every_replica_as_an_organization_endpoint(
    tmp_path: Path, database_url: Callable[[str], str]
) -> None:
    from simulator.network import app as network_app

    pki = tmp_path / "pki"
    await asyncio.to_thread(init_pki, WorldConfig(root=tmp_path, organizations=[SAKAI]))
    network = await network_app.start(
        network_app.Config(
            database_url=database_url("network"),
            security=Security(pki, "network"),
            data_dir=tmp_path / "keys" / "network",
        )
    )
    refused: LinkageError | None = None
    try:
        ring = KeyRing.load_or_create(tmp_path / "keys" / "sakai", "org-sakai")
        keys = [common_pb2.PublicKey(key_id=k.key_id, key=k.verify_key) for k in ring.public_keys()]
        stored = await network.register_organization(
            network_pb2.Organization(
                code="sakai",
                display_name="堺市",
                capacities=["municipality"],
                endpoint=REPLICA_LIST,
                signing_keys=keys,
            )
        )
    except LinkageError as error:
        refused = error
    finally:
        await network.close()
    assert refused is None, f"{refused.reason}: {refused.violations}" if refused else ""
    assert stored.endpoint == REPLICA_LIST
