"""ReviewService over real gRPC with mutual TLS: a reviewer's session at a staff console lists,
approves and declines held provisions (自動応答不可), and the requester's result follows.

jps (pension service, platform alpha) holds sakai's pension queries for people whose duplicate
has the auto-response-disabled flag; sakai (alpha) holds osaka's (beta) local tax queries the
same way, so a decision also travels across platforms.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration
from server_support import (
    QS,
    World,
    bearer,
    local_tax,
    pb,
    pension,
    pension_query,
    remote,
    tax_query,
)

from linkage.v1 import review_pb2

rv = review_pb2


@pytest.fixture
async def held(world: World) -> World:
    """Three held pension queries of sakai at jps (h-1, h-2, h-3) and one of osaka at sakai."""
    records = []
    for n in (1, 2, 3):
        resident = f"5050505050{n}"
        await world.enroll("sakai", f"S-005{n}", resident)
        await world.enroll("jps", f"J-005{n}", resident)
        records.append(pension(f"J-005{n}", amount=1_000_000 + n, flagged=True))
    await world.import_records("jps", records, import_id="flagged")
    for n in (3, 1, 2):  # the queue is by time held, whatever the order of the names
        world.clock.advance(timedelta(seconds=1))
        result = await world.submit("sakai", **pension_query(f"h-{n}", f"S-005{n}"))
        assert QS.Name(result.status) == "QUERY_STATUS_HELD_FOR_REVIEW"
    await world.enroll("sakai", "S-0060", "60606060606")
    await world.enroll("osaka", "O-0060", "60606060606")
    await world.import_records("sakai", [local_tax("S-0060", flagged=True)], import_id="t")
    taxed = await world.submit("osaka", **tax_query("t-1", "O-0060"))
    assert QS.Name(taxed.status) == "QUERY_STATUS_HELD_FOR_REVIEW"
    return world


async def _list(world: World, code: str, token: str, **fields: Any) -> Any:
    return await world.console(code).review.ListHeldProvisions(
        rv.ListHeldProvisionsRequest(parent=f"organizations/{code}", **fields),
        metadata=bearer(token),
    )


async def _result(world: World, code: str, query_id: str, wait: int = 0) -> pb.QueryResult:
    response = await world.ua(code).GetQueryResult(
        pb.GetQueryResultRequest(
            name=f"organizations/{code}/queries/{query_id}", wait=Duration(seconds=wait)
        )
    )
    result: pb.QueryResult = response.result
    return result


async def test_reviewer_lists_oldest_first_with_the_content(held: World) -> None:
    token = await held.signed_in("jps", "hayashi.r", "REVIEWER")
    listing = await _list(held, "jps", token)
    assert [h.unified_number for h in listing.held_provisions] == ["J-0053", "J-0051", "J-0052"]
    first = listing.held_provisions[1]
    assert first.name.startswith("organizations/jps/heldProvisions/")
    assert (first.requester, first.procedure, list(first.data_items)) == (
        "sakai",
        "table2:82",
        ["pension_benefit"],
    )
    assert first.values[0].content.pension_benefit.annual_amount == 1_000_001
    assert first.seal_deadline.ToDatetime() > first.held_at.ToDatetime()
    assert not listing.next_page_token
    # Seeing the content is itself recorded, per provision, with the reviewer's name.
    viewed = held.records("jps", reason="REVIEW_VIEWED")
    assert sorted(v["subject"] for v in viewed) == ["J-0051", "J-0052", "J-0053"]
    assert {(v["actor_kind"], v["actor_id"]) for v in viewed} == {("STAFF", "hayashi.r")}
    [op] = held.records("jps", procedure="ReviewService.ListHeldProvisions")
    assert (op["event"], op["outcome"], op["actor_id"]) == ("STAFF_OPERATION", "OK", "hayashi.r")
    # Each tenant sees its own queue only.
    sakai = await _list(held, "sakai", await held.signed_in("sakai", "hayashi.r", "REVIEWER"))
    assert [h.requester for h in sakai.held_provisions] == ["osaka"]


async def test_pages_follow_the_queue(held: World) -> None:
    token = await held.signed_in("jps", "ueda.s", "REVIEWER")
    page = await _list(held, "jps", token, page_size=2)
    assert [h.unified_number for h in page.held_provisions] == ["J-0053", "J-0051"]
    assert page.next_page_token
    rest = await _list(held, "jps", token, page_size=2, page_token=page.next_page_token)
    assert [h.unified_number for h in rest.held_provisions] == ["J-0052"]
    assert not rest.next_page_token
    # Only what was returned counts as seen.
    assert len(held.records("jps", reason="REVIEW_VIEWED")) == 3
    before = held.table_counts("alpha")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"page_token": "not!a-token"}, "INVALID_PAGE_TOKEN"),
        ({"page_token": "MTIzOg=="}, "INVALID_PAGE_TOKEN"),  # "123:" without a permit id
        ({"page_size": -1}, "INVALID_PAGE_SIZE"),
    ]
    for fields, reason in cases:
        error = await remote(_list(held, "jps", token, **fields))
        assert (error.code, error.reason) == ("INVALID_ARGUMENT", reason)
    assert held.table_counts("alpha") == before


async def test_approval_delivers_the_answer_to_the_requester(held: World) -> None:
    token = await held.signed_in("jps", "fujita.k", "REVIEWER")
    listing = await _list(held, "jps", token)
    target = listing.held_provisions[2]  # J-0052, sakai's h-2
    waiting = asyncio.ensure_future(_result(held, "sakai", "h-2", wait=10))
    await asyncio.sleep(0.1)
    review = held.console("jps").review
    approved = await review.ApproveHeldProvision(
        rv.ApproveHeldProvisionRequest(name=target.name), metadata=bearer(token)
    )
    assert approved.delivered
    late = await waiting
    assert QS.Name(late.status) == "QUERY_STATUS_PROVIDED"
    assert late.values[0].content.pension_benefit.annual_amount == 1_000_002
    [decided] = held.records("jps", query_id="h-2", event="REVIEW_APPROVED")
    assert (decided["actor_kind"], decided["actor_id"]) == ("STAFF", "fujita.k")
    assert len(held.records("jps", query_id="h-2", event="PROVIDED")) == 1
    [op] = held.records("jps", procedure="ReviewService.ApproveHeldProvision")
    assert (op["outcome"], op["actor_id"]) == ("OK", "fujita.k")
    remaining = await _list(held, "jps", token)
    assert [h.unified_number for h in remaining.held_provisions] == ["J-0053", "J-0051"]
    # A decision is made once; the failed attempt is recorded too.
    again = await remote(
        review.ApproveHeldProvision(
            rv.ApproveHeldProvisionRequest(name=target.name), metadata=bearer(token)
        )
    )
    assert (again.code, again.reason) == ("FAILED_PRECONDITION", "ALREADY_DECIDED")
    failed = held.records("jps", procedure="ReviewService.ApproveHeldProvision", outcome="FAILED")
    assert [f["reason"] for f in failed] == ["ALREADY_DECIDED"]


async def test_decline_across_platforms_reaches_the_requester(held: World) -> None:
    token = await held.signed_in("sakai", "ogawa.m", "REVIEWER")
    [target] = (await _list(held, "sakai", token)).held_provisions
    declined = await held.console("sakai").review.DeclineHeldProvision(
        rv.DeclineHeldProvisionRequest(name=target.name, reason="DV_SUPPORT_MEASURE"),
        metadata=bearer(token),
    )
    assert declined.delivered
    result = await _result(held, "osaka", "t-1")
    assert (QS.Name(result.status), result.reason) == (
        "QUERY_STATUS_DECLINED",
        "DV_SUPPORT_MEASURE",
    )
    assert not result.values
    [decided] = held.records("sakai", query_id="t-1", event="REVIEW_DECLINED")
    assert (decided["actor_id"], decided["reason"]) == ("ogawa.m", "DV_SUPPORT_MEASURE")
    assert held.records("sakai", query_id="t-1", event="PROVIDED") == []


async def test_bad_review_requests(held: World) -> None:
    token = await held.signed_in("jps", "ikeda.t", "REVIEWER")
    [first, *_] = (await _list(held, "jps", token)).held_provisions
    review = held.console("jps").review
    meta = bearer(token)
    before = held.table_counts("alpha")
    bad_reason = await remote(
        review.DeclineHeldProvision(
            rv.DeclineHeldProvisionRequest(name=first.name, reason="because I said so"),
            metadata=meta,
        )
    )
    assert (bad_reason.code, bad_reason.reason) == ("INVALID_ARGUMENT", "INVALID_REASON")
    no_id = await remote(
        review.ApproveHeldProvision(
            rv.ApproveHeldProvisionRequest(name="organizations/jps/heldProvisions/"), metadata=meta
        )
    )
    assert (no_id.code, no_id.reason) == ("INVALID_ARGUMENT", "INVALID_ID")
    assert held.table_counts("alpha") == before  # nothing decided, nothing recorded
    other = await remote(
        review.ApproveHeldProvision(
            rv.ApproveHeldProvisionRequest(name=first.name.replace("/jps/", "/sakai/")),
            metadata=meta,
        )
    )
    assert (other.code, other.reason) == ("PERMISSION_DENIED", "TENANT_MISMATCH")
    unknown = await remote(
        review.ApproveHeldProvision(
            rv.ApproveHeldProvisionRequest(name="organizations/jps/heldProvisions/nope"),
            metadata=meta,
        )
    )
    assert (unknown.code, unknown.reason) == ("NOT_FOUND", "HELD_PROVISION_NOT_FOUND")
    # The provision is still waiting.
    assert first.name in [h.name for h in (await _list(held, "jps", token)).held_provisions]
