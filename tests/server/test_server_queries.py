"""The query path end to end: real network, platforms, mutual TLS, sealed answers.

sakai (municipality, platform alpha) asks jps (pension service, alpha) for pension benefits
under table2:82; osaka (regional association, platform beta) asks sakai for local tax under
table2:80.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration
from server_support import (
    ALPHA,
    BETA,
    QS,
    World,
    local_tax,
    pb,
    pension,
    pension_query,
    remote,
    statuses,
    tax_query,
)

from linkage.errors import Unavailable
from server.network_client import GrpcNetwork

RESIDENT = "12345678901"


@pytest.fixture
async def people(world: World) -> World:
    """Person 1 known at sakai, jps and osaka with a pension at jps and local tax at sakai."""
    await world.enroll("sakai", "S-0001", RESIDENT)
    await world.enroll("jps", "J-0001", RESIDENT)
    await world.enroll("osaka", "O-0001", RESIDENT)
    await world.import_records("jps", [pension("J-0001", amount=1_500_000)])
    await world.import_records("sakai", [local_tax("S-0001", income=3_000_000)])
    return world


async def test_provided_within_one_platform(people: World) -> None:
    result = await people.submit("sakai", **pension_query("q-1", "S-0001"))
    assert QS.Name(result.status) == "QUERY_STATUS_PROVIDED"
    assert result.name == "organizations/sakai/queries/q-1"
    assert result.permit_id
    [value] = result.values
    assert value.data_item == "pension_benefit"
    assert value.content.pension_benefit.annual_amount == 1_500_000
    assert value.version == 1
    assert result.expires_at.ToDatetime() > result.updated_at.ToDatetime()
    # Each side kept its own record of the exchange.
    assert len(people.records("jps", query_id="q-1", event="PROVIDED")) == 1
    assert len(people.records("sakai", query_id="q-1", event="ANSWER_RECEIVED")) == 1


async def test_provided_across_platforms(people: World) -> None:
    result = await people.submit("osaka", **tax_query("t-1", "O-0001"))
    assert QS.Name(result.status) == "QUERY_STATUS_PROVIDED"
    assert result.values[0].content.local_tax.total_income == 3_000_000


async def test_result_is_stored_encrypted(people: World) -> None:
    await people.submit("sakai", **pension_query("q-1", "S-0001"))
    with people.engines["alpha"].connect() as connection:
        from sqlalchemy import text

        blob = connection.execute(
            text("SELECT result FROM server_queries WHERE query_id = 'q-1'")
        ).scalar_one()
    assert b"1500000" not in blob
    assert (1_500_000).to_bytes(4, "little") not in blob


async def test_no_data_when_the_provider_holds_no_duplicate(people: World) -> None:
    await people.enroll("sakai", "S-0002", "22222222222")
    await people.enroll("jps", "J-0002", "22222222222")
    result = await people.submit("sakai", **pension_query("q-2", "S-0002"))
    assert QS.Name(result.status) == "QUERY_STATUS_NO_DATA"
    assert result.reason == "NO_DUPLICATE_IN_FORCE"
    assert not result.values


async def test_no_data_when_the_provider_does_not_know_the_person(people: World) -> None:
    await people.enroll("sakai", "S-0003", "33333333333")  # never enrolled at jps
    result = await people.submit("sakai", **pension_query("q-3", "S-0003"))
    assert QS.Name(result.status) == "QUERY_STATUS_NO_DATA"
    assert result.reason == "UNKNOWN_PERSON"


async def test_no_data_before_the_duplicate_is_in_force(people: World) -> None:
    result = await people.submit("sakai", **pension_query("q-4", "S-0001", on_date="2026-03-31"))
    assert QS.Name(result.status) == "QUERY_STATUS_NO_DATA"


async def test_denied_by_the_permission_list(people: World) -> None:
    # A municipality may not ask the pension service for local tax under table2:82.
    result = await people.submit(
        "sakai", **pension_query("q-5", "S-0001", data_items=["local_tax"])
    )
    assert QS.Name(result.status) == "QUERY_STATUS_DENIED"
    assert result.reason
    assert len(people.records("sakai", query_id="q-5", event="QUERY_DENIED")) == 1
    assert people.records("jps", query_id="q-5") == []  # it never reached the provider


async def test_query_without_a_linkage_code_fails_precondition(people: World) -> None:
    error = await remote(people.submit("sakai", **pension_query("q-6", "S-9999")))
    assert (error.code, error.reason) == ("FAILED_PRECONDITION", "NO_LINKAGE_CODE")
    assert people.count("alpha", "server_queries", "query_id = 'q-6'") == 0


async def test_retry_returns_the_first_outcome_and_never_provides_twice(people: World) -> None:
    first = await people.submit("sakai", **pension_query("q-7", "S-0001"))
    again = await people.submit("sakai", **pension_query("q-7", "S-0001"))
    assert again.status == first.status == QS.QUERY_STATUS_PROVIDED
    assert again.permit_id == first.permit_id
    assert list(again.values) == list(first.values)
    assert len(people.records("jps", query_id="q-7", event="PROVIDED")) == 1


async def test_concurrent_retries_never_provide_twice(people: World) -> None:
    results = await asyncio.gather(
        *(people.submit("sakai", **pension_query("q-8", "S-0001")) for _ in range(5))
    )
    assert {r.status for r in results} == {QS.QUERY_STATUS_PROVIDED}
    assert len({r.permit_id for r in results}) == 1
    assert len(people.records("jps", query_id="q-8", event="PROVIDED")) == 1
    assert people.count("alpha", "server_permit_nonces", "tenant = 'jps'") == 1


async def test_reusing_a_query_id_for_another_query_fails(people: World) -> None:
    await people.submit("sakai", **pension_query("q-9", "S-0001"))
    error = await remote(
        people.submit("sakai", **pension_query("q-9", "S-0001", on_date="2026-08-01"))
    )
    assert (error.code, error.reason) == ("ALREADY_EXISTS", "QUERY_ID_REUSED")
    stored = await people.ua("sakai").GetQueryResult(
        pb.GetQueryResultRequest(name="organizations/sakai/queries/q-9")
    )
    assert stored.result.status == QS.QUERY_STATUS_PROVIDED


async def test_get_query_result_reads_and_is_not_found_for_unknown(people: World) -> None:
    await people.submit("sakai", **pension_query("q-10", "S-0001"))
    got = await people.ua("sakai").GetQueryResult(
        pb.GetQueryResultRequest(name="organizations/sakai/queries/q-10")
    )
    assert got.result.values[0].content.pension_benefit.annual_amount == 1_500_000
    error = await remote(
        people.ua("sakai").GetQueryResult(
            pb.GetQueryResultRequest(name="organizations/sakai/queries/nope")
        )
    )
    assert (error.code, error.reason) == ("NOT_FOUND", "QUERY_NOT_FOUND")


async def _stream(
    people: World, code: str, batches: list[list[pb.QuerySpec]]
) -> list[pb.QueryResult]:
    async def requests() -> AsyncIterator[pb.StreamQueriesRequest]:
        for batch in batches:
            yield pb.StreamQueriesRequest(parent=f"organizations/{code}", queries=batch)

    results: list[pb.QueryResult] = []
    async for response in people.ua(code).StreamQueries(requests()):
        results.extend(response.results)
    return results


async def test_stream_queries_batches_and_answers_every_query(people: World) -> None:
    for n in range(2, 42):
        await people.enroll("sakai", f"S-{n:04d}", f"{n:011d}")
        await people.enroll("jps", f"J-{n:04d}", f"{n:011d}")
    await people.import_records(
        "jps", [pension(f"J-{n:04d}", amount=n * 1000) for n in range(2, 32)], import_id="i-2"
    )
    specs = [pb.QuerySpec(**pension_query(f"b-{n}", f"S-{n:04d}")) for n in range(2, 42)]
    specs.append(pb.QuerySpec(**pension_query("b-denied", "S-0002", data_items=["local_tax"])))
    results = await _stream(people, "sakai", [specs[:15], specs[15:]])
    seen = statuses(results)
    assert len(results) == len(seen) == 41
    assert [seen[f"b-{n}"] for n in range(2, 32)] == ["QUERY_STATUS_PROVIDED"] * 30
    assert [seen[f"b-{n}"] for n in range(32, 42)] == ["QUERY_STATUS_NO_DATA"] * 10
    assert seen["b-denied"] == "QUERY_STATUS_DENIED"
    amounts = {
        r.query_id: r.values[0].content.pension_benefit.annual_amount for r in results if r.values
    }
    assert amounts == {f"b-{n}": n * 1000 for n in range(2, 32)}


async def test_stream_retry_returns_stored_results(people: World) -> None:
    spec = pb.QuerySpec(**pension_query("s-1", "S-0001"))
    first = await _stream(people, "sakai", [[spec]])
    again = await _stream(people, "sakai", [[spec]])
    assert [r.permit_id for r in first] == [r.permit_id for r in again]
    assert len(people.records("jps", query_id="s-1", event="PROVIDED")) == 1


async def test_stream_with_a_bad_query_is_invalid_argument(people: World) -> None:
    bad = pb.QuerySpec(**pension_query("s-2", "S-0001", on_date="2026/07/01"))
    error = await remote(_stream(people, "sakai", [[bad]]))
    assert error.code == "INVALID_ARGUMENT"
    assert [v.field for v in error.violations] == ["queries[0].on_date"]
    assert people.count("alpha", "server_queries", "query_id = 's-2'") == 0


async def test_held_for_review_then_approved_is_delivered_late(people: World) -> None:
    await people.enroll("sakai", "S-0050", "50505050505")
    await people.enroll("jps", "J-0050", "50505050505")
    await people.import_records("jps", [pension("J-0050", flagged=True)], import_id="i-50")
    held = await people.submit("sakai", **pension_query("h-1", "S-0050"))
    assert QS.Name(held.status) == "QUERY_STATUS_HELD_FOR_REVIEW"
    assert not held.values
    alpha = people.platforms["alpha"]
    [view] = await alpha.review.list_held("jps", limit=10, after=None, staff_id="reviewer-1")
    assert view.permit_id == held.permit_id
    assert view.values[0].content.pension_benefit.annual_amount == 1_200_000

    waiting = asyncio.ensure_future(
        people.ua("sakai").GetQueryResult(
            pb.GetQueryResultRequest(
                name="organizations/sakai/queries/h-1", wait=Duration(seconds=10)
            )
        )
    )
    await asyncio.sleep(0.1)
    assert await alpha.review.approve("jps", held.permit_id, "reviewer-1")
    late = (await waiting).result
    assert QS.Name(late.status) == "QUERY_STATUS_PROVIDED"
    assert late.values[0].content.pension_benefit.annual_amount == 1_200_000
    assert len(people.records("jps", query_id="h-1", event="REVIEW_APPROVED")) == 1
    assert len(people.records("jps", query_id="h-1", event="PROVIDED")) == 1
    # A decision is made once.
    error = await remote_domain(alpha.review.approve("jps", held.permit_id, "reviewer-2"))
    assert error == "ALREADY_DECIDED"


async def test_held_for_review_then_declined(people: World) -> None:
    await people.enroll("sakai", "S-0051", "51515151515")
    await people.enroll("jps", "J-0051", "51515151515")
    await people.import_records("jps", [pension("J-0051")], import_id="i-51")
    flag = await people.ua("jps").SetAutoResponseDisabled(
        pb.SetAutoResponseDisabledRequest(
            parent="organizations/jps", unified_number="J-0051", disabled=True
        )
    )
    assert flag.changed == 1
    held = await people.submit("sakai", **pension_query("h-2", "S-0051"))
    assert QS.Name(held.status) == "QUERY_STATUS_HELD_FOR_REVIEW"
    alpha = people.platforms["alpha"]
    assert await alpha.review.decline("jps", held.permit_id, "reviewer-1", "DV_SUPPORT_MEASURE")
    got = await people.ua("sakai").GetQueryResult(
        pb.GetQueryResultRequest(name="organizations/sakai/queries/h-2")
    )
    assert (QS.Name(got.result.status), got.result.reason) == (
        "QUERY_STATUS_DECLINED",
        "DV_SUPPORT_MEASURE",
    )
    assert not got.result.values


async def test_results_are_purged_after_retention(people: World) -> None:
    await people.submit("sakai", **pension_query("r-1", "S-0001"))
    alpha = people.platforms["alpha"]
    early = await alpha.purge_expired(people.clock() + timedelta(hours=23))
    assert early.query_results_deleted == 0
    report = await alpha.purge_expired(people.clock() + timedelta(hours=25))
    assert report.query_results_deleted == 1
    assert people.count("alpha", "server_queries") == 0
    error = await remote(
        people.ua("sakai").GetQueryResult(
            pb.GetQueryResultRequest(name="organizations/sakai/queries/r-1")
        )
    )
    assert error.code == "NOT_FOUND"


async def test_an_expired_result_is_gone_before_the_purge_runs(people: World) -> None:
    await people.submit("sakai", **pension_query("r-2", "S-0001"))
    people.clock.advance(timedelta(hours=25))
    error = await remote(
        people.ua("sakai").GetQueryResult(
            pb.GetQueryResultRequest(name="organizations/sakai/queries/r-2")
        )
    )
    assert error.code == "NOT_FOUND"


async def test_disclosure_shows_who_looked(people: World) -> None:
    await people.submit("osaka", **tax_query("t-2", "O-0001"))
    response = await people.ua("sakai").DiscloseAccessRecords(
        pb.DiscloseAccessRecordsRequest(parent="organizations/sakai", unified_number="S-0001")
    )
    provided = [r for r in response.records if r.event == "PROVIDED"]
    assert [(r.requester, r.provider, r.procedure) for r in provided] == [
        ("osaka", "sakai", "table2:80")
    ]
    assert all(r.ledger == "server:sakai" for r in response.records)


async def remote_domain(call: object) -> str:
    """Await a domain call that must fail; its reason."""
    from linkage.errors import LinkageError

    try:
        await call  # type: ignore[misc]
    except LinkageError as error:
        return error.reason
    raise AssertionError("the call succeeded")


async def test_a_held_answer_still_opens_after_the_query_key_rotated(bare_world: World) -> None:
    await bare_world.start_platform("alpha", ALPHA, query_key_ttl=timedelta(minutes=10))
    await bare_world.start_platform("beta", BETA)
    await bare_world.enroll("sakai", "S-1", RESIDENT)
    await bare_world.enroll("jps", "J-1", RESIDENT)
    await bare_world.import_records("jps", [pension("J-1", flagged=True)])
    held = await bare_world.submit("sakai", **pension_query("k-1", "S-1"))
    assert held.status == QS.QUERY_STATUS_HELD_FOR_REVIEW
    bare_world.clock.advance(timedelta(minutes=15))  # past the key's use: the next one rotates
    await bare_world.submit("sakai", **pension_query("k-2", "S-1"))
    assert bare_world.count("alpha", "server_query_keys", "tenant = 'sakai'") == 2
    alpha = bare_world.platforms["alpha"]
    assert await alpha.review.approve("jps", held.permit_id, "reviewer-1")
    got = await bare_world.ua("sakai").GetQueryResult(
        pb.GetQueryResultRequest(name="organizations/sakai/queries/k-1")
    )
    assert QS.Name(got.result.status) == "QUERY_STATUS_PROVIDED"


class FlakyDelivery:
    """The real network, except that the first late delivery fails as if it were down."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.failures = 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def deliver_late_answers(self, tenant: str, answer_batch: Any) -> int:
        if self.failures:
            self.failures -= 1
            raise Unavailable("NETWORK_UNAVAILABLE", "down for the test")
        result: int = await self._inner.deliver_late_answers(tenant, answer_batch)
        return result


async def test_a_failed_late_delivery_is_retried_with_the_same_answer(bare_world: World) -> None:
    inner = GrpcNetwork(bare_world.pki_dir, bare_world.network.address, list(ALPHA))
    flaky = FlakyDelivery(inner)
    try:
        await bare_world.start_platform("alpha", ALPHA, network=flaky)
        await bare_world.start_platform("beta", BETA)
        await bare_world.enroll("sakai", "S-1", RESIDENT)
        await bare_world.enroll("jps", "J-1", RESIDENT)
        await bare_world.import_records("jps", [pension("J-1", flagged=True)])
        held = await bare_world.submit("sakai", **pension_query("d-1", "S-1"))
        alpha = bare_world.platforms["alpha"]
        assert not await alpha.review.approve("jps", held.permit_id, "reviewer-1")
        pending = await bare_world.ua("sakai").GetQueryResult(
            pb.GetQueryResultRequest(name="organizations/sakai/queries/d-1")
        )
        assert pending.result.status == QS.QUERY_STATUS_HELD_FOR_REVIEW
        assert await alpha.review.redeliver() == 1
        assert await alpha.review.redeliver() == 0  # delivered: nothing left to retry
        got = await bare_world.ua("sakai").GetQueryResult(
            pb.GetQueryResultRequest(name="organizations/sakai/queries/d-1")
        )
        assert QS.Name(got.result.status) == "QUERY_STATUS_PROVIDED"
    finally:
        await inner.close()


async def test_after_the_requester_key_expires_a_held_answer_can_only_be_declined(
    people: World,
) -> None:
    await people.enroll("sakai", "S-0060", "60606060606")
    await people.enroll("jps", "J-0060", "60606060606")
    await people.import_records("jps", [pension("J-0060", flagged=True)], import_id="i-60")
    held = await people.submit("sakai", **pension_query("h-3", "S-0060"))
    people.clock.advance(timedelta(hours=26))  # past ttl + retention of the query key
    alpha = people.platforms["alpha"]
    reason = await remote_domain(alpha.review.approve("jps", held.permit_id, "reviewer-1"))
    assert reason == "SEAL_DEADLINE_PASSED"
    assert await alpha.review.decline("jps", held.permit_id, "reviewer-1", "EXPIRED")
    assert len(people.records("jps", query_id="h-3", event="REVIEW_DECLINED")) == 1
