"""Tenant isolation and bad input: every RPC refuses before it looks, and changes nothing.

Platform alpha hosts sakai and jps; ``ua.sakai`` may act only for sakai, ``ua.osaka`` (whose
organization lives on beta) for nobody on alpha, and only the network may call InboundService.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration
from server_support import World, local_tax, pb, pension, pension_query, remote

from linkage.rpc import Security
from linkage.v1 import common_pb2, inbound_pb2, inbound_pb2_grpc

Call = Callable[[Any, str], Awaitable[Any]]


async def _one(stream: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in stream]


def _import(parent: str) -> AsyncIterator[pb.ImportDuplicatesRequest]:
    async def chunks() -> AsyncIterator[pb.ImportDuplicatesRequest]:
        yield pb.ImportDuplicatesRequest(
            parent=parent, import_id="x", records=[pension("J-1")], business_system="bs"
        )

    return chunks()


def _stream(parent: str) -> AsyncIterator[pb.StreamQueriesRequest]:
    async def messages() -> AsyncIterator[pb.StreamQueriesRequest]:
        yield pb.StreamQueriesRequest(
            parent=parent, queries=[pb.QuerySpec(**pension_query("x", "J-1"))]
        )

    return messages()


# Each call acts for the organization named by ``parent`` (the code after "organizations/").
CALLS: dict[str, Call] = {
    "AcquireLinkageCode": lambda ua, p: ua.AcquireLinkageCode(
        pb.AcquireLinkageCodeRequest(
            parent=p, unified_number="J-1", processing_serial="serial-0000000000001"
        )
    ),
    "ImportDuplicates": lambda ua, p: ua.ImportDuplicates(_import(p)),
    "ExportDuplicates": lambda ua, p: _one(
        ua.ExportDuplicates(pb.ExportDuplicatesRequest(parent=p))
    ),
    "SetAutoResponseDisabled": lambda ua, p: ua.SetAutoResponseDisabled(
        pb.SetAutoResponseDisabledRequest(parent=p, unified_number="J-1", disabled=True)
    ),
    "SubmitQuery": lambda ua, p: ua.SubmitQuery(
        pb.SubmitQueryRequest(parent=p, query=pb.QuerySpec(**pension_query("x", "J-1")))
    ),
    "StreamQueries": lambda ua, p: _one(ua.StreamQueries(_stream(p))),
    "GetQueryResult": lambda ua, p: ua.GetQueryResult(
        pb.GetQueryResultRequest(name=f"{p}/queries/x")
    ),
    "DiscloseAccessRecords": lambda ua, p: ua.DiscloseAccessRecords(
        pb.DiscloseAccessRecordsRequest(parent=p, unified_number="J-1")
    ),
    "DisclosePersonAccessRecords": lambda ua, p: ua.DisclosePersonAccessRecords(
        pb.DisclosePersonAccessRecordsRequest(parent=p, unified_number="J-1")
    ),
}


@pytest.fixture
async def seeded(world: World) -> World:
    """jps holds a person, a duplicate and a query result that sakai must never touch."""
    await world.enroll("jps", "J-1", "12345678901")
    await world.import_records("jps", [pension("J-1")], import_id="seed")
    return world


@pytest.mark.parametrize("rpc", sorted(CALLS))
async def test_a_tenant_cannot_act_for_another(seeded: World, rpc: str) -> None:
    before = seeded.table_counts("alpha")
    denied = seeded.records("jps", event="ACCESS_DENIED")
    error = await remote(CALLS[rpc](seeded.ua("sakai", platform="alpha"), "organizations/jps"))
    assert (error.code, error.reason) == ("PERMISSION_DENIED", "TENANT_MISMATCH")
    # Nothing changes but one record of the refusal, in the ledger of the tenant it named.
    new = seeded.records("jps", event="ACCESS_DENIED")[len(denied) :]
    assert [(r["actor_id"], r["reason"], r["procedure"]) for r in new] == [
        ("ua.sakai", "TENANT_MISMATCH", f"IntermediateServerService.{rpc}")
    ]
    assert seeded.table_counts("alpha") == before | {"access_records": before["access_records"] + 1}


@pytest.mark.parametrize("rpc", sorted(CALLS))
async def test_an_organization_not_hosted_here_is_denied(seeded: World, rpc: str) -> None:
    before = seeded.table_counts("alpha")
    error = await remote(CALLS[rpc](seeded.ua("osaka", platform="alpha"), "organizations/osaka"))
    assert error.code == "PERMISSION_DENIED"
    assert seeded.table_counts("alpha") == before


@pytest.mark.parametrize("rpc", sorted(CALLS))
async def test_only_a_unified_address_server_may_call(seeded: World, rpc: str) -> None:
    stub = seeded.ua("sakai", platform="alpha", identity="bs.sakai.tax")
    error = await remote(CALLS[rpc](stub, "organizations/sakai"))
    assert (error.code, error.reason) == ("PERMISSION_DENIED", "CALLER_NOT_ALLOWED")


@pytest.mark.parametrize("rpc", sorted(CALLS))
async def test_a_malformed_parent_is_denied_not_looked_up(seeded: World, rpc: str) -> None:
    error = await remote(CALLS[rpc](seeded.ua("sakai"), "sakai"))
    assert error.code == "PERMISSION_DENIED"


async def test_the_same_unified_number_in_two_tenants_stays_apart(world: World) -> None:
    await world.import_records("sakai", [local_tax("X-1", income=111)], import_id="s")
    await world.import_records("jps", [pension("X-1", amount=222)], import_id="j")
    sakai = [
        r
        async for page in world.ua("sakai").ExportDuplicates(
            pb.ExportDuplicatesRequest(parent="organizations/sakai")
        )
        for r in page.records
    ]
    assert [r.value.data_item for r in sakai] == ["local_tax"]


async def test_inbound_service_is_for_the_network_only(world: World) -> None:
    channel = Security(world.pki_dir, "ua.sakai").channel(world.platforms["alpha"].address)
    world.channels.append(channel)
    inbound = inbound_pb2_grpc.InboundServiceStub(channel)
    envelope = common_pb2.SignedEnvelope(body=b"x", signer="network")
    error = await remote(
        inbound.ProvideAnswers(inbound_pb2.ProvideAnswersRequest(permit_batch=envelope))
    )
    assert (error.code, error.reason) == ("PERMISSION_DENIED", "CALLER_NOT_NETWORK")
    error = await remote(
        inbound.AcceptLateAnswers(inbound_pb2.AcceptLateAnswersRequest(answer_batch=envelope))
    )
    assert (error.code, error.reason) == ("PERMISSION_DENIED", "CALLER_NOT_NETWORK")


# --- bad input: INVALID_ARGUMENT with a reason and the field, nothing written --------------------


SAKAI = "organizations/sakai"


def _query(**overrides: Any) -> pb.SubmitQueryRequest:
    spec = pension_query("q-bad", "S-1")
    spec.update(overrides)
    return pb.SubmitQueryRequest(parent=SAKAI, query=pb.QuerySpec(**spec))


BAD: dict[str, tuple[Call, str]] = {
    "acquire_bad_number": (
        lambda ua, _: ua.AcquireLinkageCode(
            pb.AcquireLinkageCodeRequest(
                parent=SAKAI, unified_number="123456789012", processing_serial="serial-0000000001"
            )
        ),
        "unified_number",
    ),
    "acquire_no_serial": (
        lambda ua, _: ua.AcquireLinkageCode(
            pb.AcquireLinkageCodeRequest(parent=SAKAI, unified_number="S-1")
        ),
        "processing_serial",
    ),
    "import_bad_id": (
        lambda ua, _: ua.ImportDuplicates(_import_with(import_id="has space")),
        "import_id",
    ),
    "export_unknown_item": (
        lambda ua, _: _one(
            ua.ExportDuplicates(pb.ExportDuplicatesRequest(parent=SAKAI, data_item="nope"))
        ),
        "data_item",
    ),
    "flag_unknown_item": (
        lambda ua, _: ua.SetAutoResponseDisabled(
            pb.SetAutoResponseDisabledRequest(
                parent=SAKAI, unified_number="S-1", data_item="nope", disabled=True
            )
        ),
        "data_item",
    ),
    "query_no_id": (lambda ua, _: ua.SubmitQuery(_query(query_id="")), "query.query_id"),
    "query_bad_capacity": (
        lambda ua, _: ua.SubmitQuery(_query(requester_capacity="Mayor!")),
        "query.requester_capacity",
    ),
    "query_no_procedure": (lambda ua, _: ua.SubmitQuery(_query(procedure="")), "query.procedure"),
    "query_bad_provider": (lambda ua, _: ua.SubmitQuery(_query(provider="JPS")), "query.provider"),
    "query_no_items": (lambda ua, _: ua.SubmitQuery(_query(data_items=[])), "query.data_items"),
    "query_repeated_item": (
        lambda ua, _: ua.SubmitQuery(_query(data_items=["pension_benefit"] * 2)),
        "query.data_items",
    ),
    "query_bad_date": (lambda ua, _: ua.SubmitQuery(_query(on_date="2026-02-30")), "query.on_date"),
    "query_bad_number": (
        lambda ua, _: ua.SubmitQuery(_query(unified_number="")),
        "query.unified_number",
    ),
    "get_no_id": (
        lambda ua, _: ua.GetQueryResult(pb.GetQueryResultRequest(name=f"{SAKAI}/queries/")),
        "name",
    ),
    "get_negative_wait": (
        lambda ua, _: ua.GetQueryResult(
            pb.GetQueryResultRequest(name=f"{SAKAI}/queries/q", wait=Duration(seconds=-1))
        ),
        "wait",
    ),
    "disclose_bad_number": (
        lambda ua, _: ua.DiscloseAccessRecords(
            pb.DiscloseAccessRecordsRequest(parent=SAKAI, unified_number="a b")
        ),
        "unified_number",
    ),
}


def _import_with(**fields: Any) -> AsyncIterator[pb.ImportDuplicatesRequest]:
    async def chunks() -> AsyncIterator[pb.ImportDuplicatesRequest]:
        yield pb.ImportDuplicatesRequest(
            parent=SAKAI, records=[local_tax("S-1")], business_system="tax", **fields
        )

    return chunks()


@pytest.mark.parametrize("case", sorted(BAD))
async def test_bad_input_is_invalid_argument_and_changes_nothing(world: World, case: str) -> None:
    await world.enroll("sakai", "S-1", "12345678901")
    before = world.table_counts("alpha")
    call, field = BAD[case]
    error = await remote(call(world.ua("sakai"), ""))
    assert error.code == "INVALID_ARGUMENT", error
    assert error.reason
    assert field in [v.field for v in error.violations]
    assert world.table_counts("alpha") == before


async def test_an_unknown_serial_is_not_found(world: World) -> None:
    error = await remote(
        world.ua("sakai").AcquireLinkageCode(
            pb.AcquireLinkageCodeRequest(
                parent=SAKAI, unified_number="S-1", processing_serial="serial-unknown-000001"
            )
        )
    )
    assert error.code == "NOT_FOUND"
    assert world.count("alpha", "server_linkage_codes") == 0


async def test_acquire_is_idempotent_and_codes_are_unique(world: World) -> None:
    await world.enroll("sakai", "S-1", "12345678901")
    await world.enroll("sakai", "S-1", "12345678901")  # a repeat: the stored code stands
    assert world.count("alpha", "server_linkage_codes") == 1
    # The same person under a second unified number is a 名寄せ error, refused.
    error = await remote(world.enroll("sakai", "S-2", "12345678901"))
    assert (error.code, error.reason) == ("FAILED_PRECONDITION", "LINKAGE_CODE_BOUND_ELSEWHERE")
    assert world.count("alpha", "server_linkage_codes") == 1


async def test_inbound_rejects_garbage_from_the_network(world: World) -> None:
    channel = Security(world.pki_dir, "network").channel(world.platforms["alpha"].address)
    world.channels.append(channel)
    inbound = inbound_pb2_grpc.InboundServiceStub(channel)
    before = world.table_counts("alpha")
    garbage = common_pb2.SignedEnvelope(
        body=b"\xff\x00garbage", signature=b"x" * 64, signer="network"
    )
    error = await remote(
        inbound.ProvideAnswers(inbound_pb2.ProvideAnswersRequest(permit_batch=garbage))
    )
    assert (error.code, error.reason) == ("INVALID_ARGUMENT", "PERMIT_BATCH_SIGNATURE_INVALID")
    late = common_pb2.SignedEnvelope(body=b"\xff", signature=b"x" * 64, signer="jps")
    error = await remote(
        inbound.AcceptLateAnswers(inbound_pb2.AcceptLateAnswersRequest(answer_batch=late))
    )
    assert (error.code, error.reason) == ("INVALID_ARGUMENT", "ANSWER_SIGNATURE_INVALID")
    assert world.table_counts("alpha") == before
