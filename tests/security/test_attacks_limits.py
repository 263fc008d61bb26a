"""Attacks that play on limits and time, over real gRPC: a flood from one caller, a permit that
expires on its way to the provider, and the first answer signed with a just-rotated key.

The world of this module is configured for them: the network admits 20 calls per caller and then
almost nothing more (0.01 per second), and its permits live one second; the proxy in front of
jps's platform can hold a permit batch longer than that. The requester platform's clock can be
frozen, to show a key cache that is read again at most once a second without depending on how
fast the machine is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest
import pytest_asyncio

from linkage.errors import remote_error
from linkage.v1 import common_pb2, network_pb2, network_pb2_grpc
from simulator.network.ratelimit import RateLimit

from .attack_support import (
    PROVIDE_ANSWERS,
    AttackWorld,
    Clock,
    Databases,
    Person,
    answer_batch_of,
    assert_failed_and_nothing_stored,
    for_query,
    new_query_id,
    records,
    rows,
    snapshot,
    start_attack_world,
    status,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

BURST = 20
PERMIT_TTL = timedelta(seconds=1)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AttackWorld]:
    """One world for the module: a small rate limit, one-second permits, and a requester
    platform (sakai's) whose clock the tests may freeze."""
    root = tmp_path_factory.mktemp("attacks-limits")
    databases = Databases(root / "db")
    world = await start_attack_world(
        root / "world",
        databases,
        network={
            "rate_limit": RateLimit(per_second=0.01, burst=BURST),
            "permit_ttl": PERMIT_TTL,
        },
        platforms={"municipal": {"clock": Clock()}},
    )
    try:
        yield world
    finally:
        await world.close()
        databases.drop()


@pytest_asyncio.fixture(loop_scope="module")
async def arena(shared: AttackWorld) -> AsyncIterator[AttackWorld]:
    """The module's world with its proxies disarmed and the requester's clock on real time (and
    checked after the test: a hook that broke is a bug in the test, not a refused attack)."""
    clock = shared.platform("sakai").config.clock
    assert isinstance(clock, Clock)
    shared.reset()
    clock.reset()
    yield shared
    clock.reset()
    shared.reset()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def person(shared: AttackWorld) -> Person:
    """A pensioner known to jps and sakai."""
    return await shared.pensioner()


# --- 11. a flood ---------------------------------------------------------------------------------


async def test_a_flood_of_queries_from_one_caller_is_resource_exhausted_and_leaves_nothing(
    arena: AttackWorld,
) -> None:
    key = await arena.requester_key("osaka")
    flooder = network_pb2_grpc.NetworkServiceStub(arena.channel("org.osaka", arena.network.address))

    def one_query() -> network_pb2.SubmitQueriesRequest:
        return network_pb2.SubmitQueriesRequest(
            requester="osaka",
            requester_capacity="municipality",
            requester_key=key,
            queries=[
                network_pb2.QuerySubmission(
                    query_id=new_query_id(),
                    procedure="table2:82",
                    provider="jps",
                    data_items=["pension_benefit"],
                    linkage_code="A" * 20,  # nobody's: admitted queries end FAILED
                    on_date="2026-06-01",
                )
            ],
        )

    url = arena.url("network")
    permits_before = rows(url, "network_permits")
    ledger = records(url, "network")

    outcomes = await asyncio.gather(
        *(flooder.SubmitQueries(one_query(), timeout=10) for _ in range(50)),
        return_exceptions=True,
    )

    admitted = [o for o in outcomes if isinstance(o, network_pb2.SubmitQueriesResponse)]
    limited = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert (len(admitted), len(limited)) == (BURST, 50 - BURST)
    for error in limited:
        refusal = remote_error(error)
        assert (refusal.code, refusal.reason) == ("RESOURCE_EXHAUSTED", "RATE_LIMITED")
        assert int(refusal.metadata["retryAfterMs"]) > 0
    # Only what was admitted left a row; the flood itself is one record, not thirty.
    new_permits = [r for r in rows(url, "network_permits") if r not in permits_before]
    assert len(new_permits) == BURST
    new = records(url, "network")[len(ledger) :]
    assert [(r.actor, r.reason) for r in new if r.event == "ACCESS_DENIED"] == [
        ("org.osaka", "RATE_LIMITED")
    ]
    # Another caller has a bucket of its own.
    reader = network_pb2_grpc.NetworkServiceStub(arena.channel("org.jps", arena.network.address))
    assert (await reader.GetNetworkKeys(network_pb2.GetNetworkKeysRequest())).permit_keys


# --- 4. a permit that expires on its way ----------------------------------------------------------


async def test_a_permit_that_expires_on_its_way_to_the_provider_is_refused_and_uses_no_nonce(
    arena: AttackWorld, person: Person
) -> None:
    arena.inbound["jps"].delay = PERMIT_TTL.total_seconds() + 0.5
    before = await snapshot(arena)
    query_id = new_query_id()

    result = await arena.ask(query_id, person)

    assert status(result) == ("QUERY_STATUS_FAILED", "PERMIT_EXPIRED")
    after = await assert_failed_and_nothing_stored(arena, before, query_id, "PERMIT_EXPIRED")
    [exchange] = arena.inbound["jps"].calls(PROVIDE_ANSWERS)
    assert exchange.response is not None
    [answer] = answer_batch_of(exchange.response).answers
    assert (answer.ciphertext, list(answer.data_items)) == (b"", [])
    assert for_query(after.new(before, "provider_records"), query_id) == [
        ("FAILED", "PERMIT_EXPIRED")
    ]


# --- rotation: the first answer signed with a new key ---------------------------------------------


@pytest.mark.timeout(20)
async def test_the_first_answer_signed_with_a_providers_just_rotated_key_verifies(
    arena: AttackWorld, person: Person
) -> None:
    requester = arena.platform("sakai")
    clock = requester.config.clock
    assert isinstance(clock, Clock)
    clock.freeze()  # however slow the machine, the requester's last read of jps's keys is recent
    requester.directory.forget("jps")
    assert status(await arena.ask(new_query_id(), person)) == ("QUERY_STATUS_PROVIDED", "")
    tenant = arena.platform("jps").tenants.get("jps")
    new = await asyncio.to_thread(tenant.keyring.rotate)
    jps = network_pb2_grpc.NetworkServiceStub(arena.channel("org.jps", arena.network.address))
    await jps.RotateOrganizationKeys(
        network_pb2.RotateOrganizationKeysRequest(
            name="organizations/jps",
            signing_key=common_pb2.PublicKey(
                key_id=new.key_id, key=bytes(new.signing_key.verify_key)
            ),
        )
    )

    result = await arena.ask(new_query_id(), person)

    assert status(result) == ("QUERY_STATUS_PROVIDED", "")
