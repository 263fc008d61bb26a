"""SubmitQueries: permission checks, permits, translation, routing, idempotency, failures."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from network_support import (
    FakePlatform,
    Net,
    OrgKeys,
    count_rows,
    network_records,
    open_answers,
    people,
    remote,
    requester_key,
    unused_port,
)

from linkage import crypto
from linkage.v1 import common_pb2, inbound_pb2, network_pb2, payloads_pb2

IN_FLIGHT = common_pb2.QUERY_STATUS_IN_FLIGHT
DENIED = common_pb2.QUERY_STATUS_DENIED
FAILED = common_pb2.QUERY_STATUS_FAILED


async def test_an_allowed_query_gets_a_signed_permit_with_the_providers_code(
    net: Net, network_url: str
) -> None:
    [(_, sakai_code, jps_code)] = await people(net, 1)
    key = requester_key(net.keys["sakai"])
    response = await net.submit([net.query("q-1", sakai_code)], key=key)

    [disposition] = response.dispositions
    assert disposition.status == IN_FLIGHT
    assert disposition.query_id == "q-1"
    assert disposition.permit_id
    # The fake provider verified the network signature and the key digest before answering.
    [received] = net.provider_platform.received
    [permit] = received.batch.permits
    assert permit.permit_id == disposition.permit_id
    assert permit.provider_linkage_code == jps_code
    assert sakai_code not in received.request_bytes.decode("latin-1")
    assert (permit.requester, permit.requester_capacity, permit.route) == (
        "sakai",
        "municipality",
        "sakai",
    )
    assert (permit.provider, permit.provider_capacity) == ("jps", "pension_service")
    assert (permit.procedure, list(permit.data_items), permit.on_date) == (
        "table2:82",
        ["pension_benefit"],
        "2026-04-01",
    )
    assert permit.permission_list_version == net.app.permission_list_version
    assert len(permit.nonce) == 16
    lifetime = permit.expires_at.ToDatetime() - permit.issued_at.ToDatetime()
    assert lifetime == timedelta(minutes=5)
    assert received.batch.requester_key == key.envelope
    assert received.batch.requester_key_digest == crypto.digest(key.envelope.body)

    # The answer batch comes back untouched and only the requester can read it.
    [batch] = response.answer_batches
    sent = inbound_pb2.ProvideAnswersResponse.FromString(received.response_bytes).answer_batch
    assert batch.SerializeToString() == sent.SerializeToString()
    contents = open_answers(batch, key.private)
    assert contents[permit.permit_id].permit_id == permit.permit_id

    events = [(r.event, r.subject) for r in network_records(network_url) if r.query_id == "q-1"]
    assert events == [
        ("QUERY_REQUESTED", sakai_code),
        ("PERMIT_ISSUED", jps_code),
        ("QUERY_ROUTED", jps_code),
    ]


async def test_a_query_the_permission_list_does_not_allow_is_denied_with_its_reason(
    net: Net, network_url: str
) -> None:
    [(_, sakai_code, _)] = await people(net, 1)
    response = await net.submit(
        [
            net.query("q-tax", sakai_code, items=["local_tax"]),
            net.query("q-row", sakai_code, procedure="table2:80", items=["pension_benefit"]),
            net.query("q-none", sakai_code, procedure="table2:999"),
        ]
    )
    assert [(d.status, d.reason, d.permit_id) for d in response.dispositions] == [
        (DENIED, "ITEM_NOT_ALLOWED", ""),
        (DENIED, "REQUESTER_NOT_ALLOWED", ""),
        (DENIED, "UNKNOWN_PROCEDURE", ""),
    ]
    assert response.answer_batches == []
    assert net.provider_platform.received == []
    denials = [r for r in network_records(network_url) if r.event == "QUERY_DENIED"]
    assert [(r.query_id, r.reason, r.subject, r.outcome) for r in denials] == [
        ("q-tax", "ITEM_NOT_ALLOWED", sakai_code, "DENIED"),
        ("q-row", "REQUESTER_NOT_ALLOWED", sakai_code, "DENIED"),
        ("q-none", "UNKNOWN_PROCEDURE", sakai_code, "DENIED"),
    ]


async def test_unknown_provider_and_unknown_code_fail_per_query(net: Net) -> None:
    [(_, sakai_code, jps_code)] = await people(net, 1)
    response = await net.submit(
        [
            net.query("q-ghost", sakai_code, provider="ghost"),
            net.query("q-foreign-code", jps_code),  # jps's code means nothing at sakai
            net.query("q-ok", sakai_code),
        ]
    )
    assert [(d.status, d.reason) for d in response.dispositions] == [
        (FAILED, "PROVIDER_NOT_FOUND"),
        (FAILED, "UNKNOWN_LINKAGE_CODE"),
        (IN_FLIGHT, ""),
    ]
    assert [len(r.batch.permits) for r in net.provider_platform.received] == [1]


async def test_an_unreachable_provider_fails_quickly_as_provider_unavailable(
    net: Net, network_url: str
) -> None:
    await net.register(OrgKeys("osaka"), ["pension_service"], f"127.0.0.1:{unused_port()}")
    [(resident, sakai_code, _)] = await people(net, 1)
    await net.issue_code(resident, "osaka")
    started = time.monotonic()
    response = await net.submit(
        [net.query("q-down", sakai_code, provider="osaka"), net.query("q-up", sakai_code)]
    )
    assert time.monotonic() - started < net.app.config.route_timeout
    down, up = response.dispositions
    assert (down.status, down.reason) == (FAILED, "PROVIDER_UNAVAILABLE")
    assert down.permit_id  # a permit was issued, then routing failed
    assert up.status == IN_FLIGHT
    assert len(response.answer_batches) == 1
    failures = [r for r in network_records(network_url) if r.event == "FAILED"]
    assert [(r.query_id, r.reason) for r in failures] == [("q-down", "PROVIDER_UNAVAILABLE")]
    # The failure is the stored disposition: a retry does not route again.
    again = await net.submit([net.query("q-down", sakai_code, provider="osaka")])
    assert (again.dispositions[0].status, again.dispositions[0].reason) == (
        FAILED,
        "PROVIDER_UNAVAILABLE",
    )


@pytest.mark.parametrize("network_overrides", [{"route_timeout": 0.5}])
async def test_a_provider_slower_than_the_deadline_is_provider_unavailable(net: Net) -> None:
    [(_, sakai_code, _)] = await people(net, 1)
    net.provider_platform.delay = 3.0
    started = time.monotonic()
    response = await net.submit([net.query("q-slow", sakai_code)])
    assert time.monotonic() - started < 2.0
    [disposition] = response.dispositions
    assert (disposition.status, disposition.reason) == (FAILED, "PROVIDER_UNAVAILABLE")


async def test_permits_are_grouped_into_one_signed_batch_per_provider(
    net: Net, platforms: list[FakePlatform], pki_dir: Path
) -> None:
    osaka = OrgKeys("osaka")
    other = await FakePlatform({"osaka": osaka}, net.network_keys).start(pki_dir, "platform.test")
    platforms.append(other)
    await net.register(osaka, ["pension_service"], other.address)
    everyone = await people(net, 6)
    for resident, _, _ in everyone:
        await net.issue_code(resident, "osaka")
    queries = [
        net.query(f"q-{i}", sakai_code, provider="jps" if i % 2 else "osaka")
        for i, (_, sakai_code, _) in enumerate(everyone)
    ]
    response = await net.submit(queries)
    assert all(d.status == IN_FLIGHT for d in response.dispositions)
    assert [len(r.batch.permits) for r in net.provider_platform.received] == [3]
    assert [len(r.batch.permits) for r in other.received] == [3]
    assert len(response.answer_batches) == 2
    assert {
        payloads_pb2.AnswerBatch.FromString(b.body).provider for b in response.answer_batches
    } == {
        "jps",
        "osaka",
    }


async def test_codes_are_translated_correctly_for_many_people(net: Net) -> None:
    everyone = await people(net, 240)
    jps_code_of = {sakai: jps for _, sakai, jps in everyone}
    queries = [net.query(f"q-{sakai}", sakai) for _, sakai, _ in everyone]
    response = await net.submit(queries)
    assert all(d.status == IN_FLIGHT for d in response.dispositions)
    [received] = net.provider_platform.received
    assert len(received.batch.permits) == 240
    for permit in received.batch.permits:
        asked = permit.query_id.removeprefix("q-")
        assert permit.provider_linkage_code == jps_code_of[asked]
    assert len({p.nonce for p in received.batch.permits}) == 240
    assert len({p.permit_id for p in received.batch.permits}) == 240


async def test_a_retried_query_id_returns_the_stored_answer_and_never_reaches_the_provider_twice(
    net: Net, network_url: str
) -> None:
    [(_, sakai_code, _)] = await people(net, 1)
    key = requester_key(net.keys["sakai"])
    first = await net.submit([net.query("q-once", sakai_code)], key=key)
    again = await net.submit(
        [net.query("q-once", sakai_code)], key=requester_key(net.keys["sakai"])
    )
    assert len(net.provider_platform.received) == 1
    assert list(again.dispositions) == list(first.dispositions)
    assert [b.SerializeToString() for b in again.answer_batches] == [
        b.SerializeToString() for b in first.answer_batches
    ]
    assert count_rows(network_url, "network_permits") == 1
    # The same id asking something else is refused without touching the stored query.
    other = await net.submit([net.query("q-once", sakai_code, on_date="2026-05-01")])
    assert (other.dispositions[0].status, other.dispositions[0].reason) == (
        FAILED,
        "QUERY_ID_REUSED",
    )
    assert other.answer_batches == []
    assert len(net.provider_platform.received) == 1


async def test_concurrent_retries_of_one_batch_route_it_once(net: Net) -> None:
    import asyncio

    everyone = await people(net, 20)
    queries = [net.query(f"q-{sakai}", sakai) for _, sakai, _ in everyone]
    results = await asyncio.gather(*(net.submit(queries) for _ in range(4)))
    routed = sum(len(r.batch.permits) for r in net.provider_platform.received)
    assert routed == 20
    permit_ids = {tuple(d.permit_id for d in r.dispositions) for r in results}
    assert len(permit_ids) == 1


async def test_an_organization_cannot_submit_as_another(net: Net) -> None:
    request = network_pb2.SubmitQueriesRequest(
        requester="sakai",
        requester_capacity="municipality",
        requester_key=requester_key(net.keys["sakai"]).envelope,
        queries=[net.query("q-1", "A" * 20)],
    )
    error = await remote(net.stub("org.jps").SubmitQueries(request))
    assert (error.code, error.reason) == ("PERMISSION_DENIED", "NOT_THIS_ORGANIZATION")


async def test_a_capacity_the_requester_does_not_hold_is_permission_denied(net: Net) -> None:
    error = await remote(net.submit([net.query("q-1", "A" * 20)], capacity="regional_association"))
    assert (error.code, error.reason) == ("PERMISSION_DENIED", "CAPACITY_NOT_HELD")


async def test_a_requester_key_signed_by_someone_else_is_invalid_argument(net: Net) -> None:
    forged = requester_key(OrgKeys("sakai"))  # right name, key not in the directory
    error = await remote(net.submit([net.query("q-1", "A" * 20)], key=forged))
    assert (error.code, error.reason) == ("INVALID_ARGUMENT", "BAD_REQUESTER_KEY")
    assert [v.field for v in error.violations] == ["requester_key"]
    expired = requester_key(net.keys["sakai"], not_after=net.app.config.clock() - timedelta(1))
    error = await remote(net.submit([net.query("q-1", "A" * 20)], key=expired))
    assert (error.code, error.reason) == ("INVALID_ARGUMENT", "REQUESTER_KEY_EXPIRED")


async def test_malformed_queries_are_invalid_argument_and_nothing_is_written(
    net: Net, network_url: str
) -> None:
    [(_, sakai_code, _)] = await people(net, 1)
    records_before = len(network_records(network_url))
    bad: list[Any] = [
        net.query("q-ok", sakai_code),
        net.query("", sakai_code),
        net.query("q-ok", sakai_code),  # repeated id in one batch
        net.query("q-3", "not a code"),
        net.query("q-4", sakai_code, items=[]),
        net.query("q-5", sakai_code, on_date="2026-02-30"),
        net.query("q-6", sakai_code, provider="Not/AnOrg"),
        net.query("q-7", sakai_code, items=["pension_benefit", "pension_benefit"]),
    ]
    error = await remote(net.submit(bad))
    assert (error.code, error.reason) == ("INVALID_ARGUMENT", "INVALID_FIELDS")
    assert {v.field for v in error.violations} == {
        "queries[1].query_id",
        "queries[2].query_id",
        "queries[3].linkage_code",
        "queries[4].data_items",
        "queries[5].on_date",
        "queries[6].provider",
        "queries[7].data_items",
    }
    assert count_rows(network_url, "network_permits") == 0
    assert len(network_records(network_url)) == records_before
    assert net.provider_platform.received == []


async def test_a_batch_over_5000_queries_is_resource_exhausted(net: Net, network_url: str) -> None:
    queries = [net.query(f"q-{i}", "A" * 20) for i in range(5001)]
    error = await remote(net.submit(queries))
    assert (error.code, error.reason) == ("RESOURCE_EXHAUSTED", "BATCH_TOO_LARGE")
    assert count_rows(network_url, "network_permits") == 0


async def test_an_empty_batch_is_invalid_argument(net: Net) -> None:
    error = await remote(net.submit([]))
    assert (error.code, error.reason) == ("INVALID_ARGUMENT", "INVALID_FIELDS")
    assert [v.field for v in error.violations] == ["queries"]
