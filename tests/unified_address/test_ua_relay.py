"""Relays to the intermediate server, and each business system held to its own scope."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
import pytest
from google.protobuf import duration_pb2
from ua_fakes import FakeIntermediateServer, Served
from ua_support import ORG, Stub, individual_numbers, read_records

from linkage.errors import InvalidArgument, remote_error
from linkage.v1 import common_pb2
from linkage.v1 import unified_address_pb2 as ua_pb2

Connect = Callable[[str], Awaitable[Stub]]


def _tax(address: str, income: int = 1_000_000) -> ua_pb2.AddressedDuplicate:
    return ua_pb2.AddressedDuplicate(
        address_number=address,
        value=common_pb2.DuplicateValue(
            data_item="local_tax",
            content=common_pb2.DataItemContent(
                local_tax=common_pb2.LocalTax(
                    fiscal_year=2026, assessing_municipality=ORG, total_income=income
                )
            ),
            effective_from="2026-04-01",
        ),
    )


def _query(query_id: str, address: str, **overrides: object) -> ua_pb2.QueryPersonRequest:
    fields: dict[str, object] = {
        "procedure": "table2:82",
        "provider": "osaka-city",
        "data_items": ["local_tax"],
        "on_date": "2026-06-01",
    }
    fields.update({"query_id": query_id, "address_number": address, **overrides})
    return ua_pb2.QueryPersonRequest(**fields)  # type: ignore[arg-type]


async def _people(stub: Stub, count: int, seed: int = 51) -> dict[str, str]:
    """Register ``count`` people as K-0.. and return address number -> unified number."""
    found = {}
    for i, number in enumerate(individual_numbers(count, seed=seed)):
        response = await stub.RegisterPerson(
            ua_pb2.RegisterPersonRequest(address_number=f"K-{i}", individual_number=number)
        )
        found[f"K-{i}"] = response.unified_number
    return found


async def _denied(call: Awaitable[object]) -> tuple[str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = remote_error(caught.value)
    return error.code, error.reason


# --- duplicates ----------------------------------------------------------------------------


async def test_push_translates_address_numbers_and_namespaces_the_import(
    connect: Connect, intermediate: tuple[FakeIntermediateServer, Served]
) -> None:
    stub = await connect(f"bs.{ORG}.kokuho")
    people = await _people(stub, 3)
    response = await stub.PushDuplicates(
        ua_pb2.PushDuplicatesRequest(import_id="fy2026-1", duplicates=[_tax(a) for a in people])
    )
    assert (response.imported, response.already_imported) == (3, False)
    (chunk,) = intermediate[0].imports["kokuho:fy2026-1"]
    assert chunk.parent == f"organizations/{ORG}"
    assert chunk.business_system == f"bs.{ORG}.kokuho"
    assert [r.unified_number for r in chunk.records] == list(people.values())
    assert all(not r.auto_response_disabled for r in chunk.records)


async def test_a_repeated_push_is_reported_as_already_imported(connect: Connect) -> None:
    stub = await connect(f"bs.{ORG}.kokuho")
    people = await _people(stub, 1)
    request = ua_pb2.PushDuplicatesRequest(import_id="p1", duplicates=[_tax(a) for a in people])
    await stub.PushDuplicates(request)
    assert (await stub.PushDuplicates(request)).already_imported


async def test_push_with_an_unknown_address_number_names_the_row_and_sends_nothing(
    connect: Connect, intermediate: tuple[FakeIntermediateServer, Served]
) -> None:
    stub = await connect(f"bs.{ORG}.kokuho")
    await _people(stub, 2)
    request = ua_pb2.PushDuplicatesRequest(
        import_id="p1", duplicates=[_tax("K-0"), _tax("K-404"), _tax("K-1")]
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PushDuplicates(request)
    error = remote_error(caught.value)
    assert (error.code, error.reason) == ("FAILED_PRECONDITION", "UNKNOWN_ADDRESS_NUMBER")
    assert [v.field for v in error.violations] == ["duplicates[1].address_number"]
    assert intermediate[0].imports == {}


async def test_push_of_an_address_number_awaiting_a_manual_link_is_refused(
    connect: Connect,
) -> None:
    stub = await connect(f"bs.{ORG}.kokuho")
    await stub.RegisterPerson(ua_pb2.RegisterPersonRequest(address_number="K-w"))
    code, reason = await _denied(
        stub.PushDuplicates(ua_pb2.PushDuplicatesRequest(import_id="p", duplicates=[_tax("K-w")]))
    )
    assert (code, reason) == ("FAILED_PRECONDITION", "AWAITING_MANUAL_LINK")


async def test_a_server_rejection_of_a_row_is_named_in_the_callers_terms(
    connect: Connect, intermediate: tuple[FakeIntermediateServer, Served]
) -> None:
    from linkage.errors import FieldViolation

    stub = await connect(f"bs.{ORG}.kokuho")
    people = await _people(stub, 2)
    intermediate[0].failures.fail_next(
        InvalidArgument(
            "INVALID_DUPLICATE",
            "bad row",
            violations=(FieldViolation("records[1].value.effective_from", "not a date"),),
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PushDuplicates(
            ua_pb2.PushDuplicatesRequest(import_id="p", duplicates=[_tax(a) for a in people])
        )
    error = remote_error(caught.value)
    assert (error.code, error.reason) == ("INVALID_ARGUMENT", "INVALID_DUPLICATE")
    assert [v.field for v in error.violations] == ["duplicates[1].value.effective_from"]


async def test_push_of_an_item_out_of_scope_is_denied_and_recorded(
    connect: Connect, intermediate: tuple[FakeIntermediateServer, Served], database_url: str
) -> None:
    kokuho = await connect(f"bs.{ORG}.kokuho")
    await _people(kokuho, 1)
    koki = await connect(f"bs.{ORG}.koki")  # may push premiums, not local tax
    code, reason = await _denied(
        koki.PushDuplicates(ua_pb2.PushDuplicatesRequest(import_id="p", duplicates=[_tax("K-0")]))
    )
    assert (code, reason) == ("PERMISSION_DENIED", "OUT_OF_SCOPE")
    assert intermediate[0].imports == {}
    denial = read_records(database_url)[-1]
    assert (denial.event, denial.outcome, denial.reason) == (
        "ACCESS_DENIED",
        "DENIED",
        "OUT_OF_SCOPE",
    )
    assert denial.actor_id == f"bs.{ORG}.koki"
    assert denial.data_items == ("local_tax",)


async def test_push_records_each_person_under_the_business_systems_identity(
    connect: Connect, database_url: str
) -> None:
    stub = await connect(f"bs.{ORG}.kokuho")
    people = await _people(stub, 2)
    await stub.PushDuplicates(
        ua_pb2.PushDuplicatesRequest(import_id="p", duplicates=[_tax(a) for a in people])
    )
    pushed = [r for r in read_records(database_url) if r.event == "DUPLICATES_IMPORTED"]
    assert sorted(r.subject for r in pushed) == sorted(people.values())
    assert {(r.actor_id, r.data_items) for r in pushed} == {(f"bs.{ORG}.kokuho", ("local_tax",))}


# --- queries -------------------------------------------------------------------------------


async def test_query_is_relayed_by_unified_number_in_the_systems_capacity(
    connect: Connect, intermediate: tuple[FakeIntermediateServer, Served], database_url: str
) -> None:
    stub = await connect(f"bs.{ORG}.kokuho")
    people = await _people(stub, 1)
    response = await stub.QueryPerson(_query("q-1", "K-0"))
    assert response.result.status == common_pb2.QUERY_STATUS_PROVIDED
    assert response.result.query_id == "q-1"  # the caller's id, not the namespaced one
    spec = intermediate[0].queries["kokuho:q-1"]
    assert spec.unified_number == people["K-0"]
    assert (spec.requester_capacity, spec.business_system) == ("municipality", f"bs.{ORG}.kokuho")
    assert (spec.procedure, spec.provider, list(spec.data_items)) == (
        "table2:82",
        "osaka-city",
        ["local_tax"],
    )
    record = read_records(database_url)[-1]
    assert (record.event, record.outcome) == ("QUERY_REQUESTED", "PROVIDED")
    assert (record.subject, record.query_id, record.permit_id) == (
        people["K-0"],
        "kokuho:q-1",
        "permit-1",
    )


async def test_query_results_are_read_back_under_the_callers_query_id(
    connect: Connect, database_url: str
) -> None:
    stub = await connect(f"bs.{ORG}.kokuho")
    people = await _people(stub, 1)
    await stub.QueryPerson(_query("q-1", "K-0"))
    result = await stub.GetPersonQueryResult(
        ua_pb2.GetPersonQueryResultRequest(query_id="q-1", wait=duration_pb2.Duration(seconds=1))
    )
    assert result.result.query_id == "q-1"
    assert [v.data_item for v in result.result.values] == ["local_tax"]
    record = read_records(database_url)[-1]
    assert (record.event, record.subject) == ("ANSWER_DELIVERED", people["K-0"])


async def test_one_system_cannot_read_another_systems_query(connect: Connect) -> None:
    kokuho = await connect(f"bs.{ORG}.kokuho")
    await _people(kokuho, 1)
    await kokuho.QueryPerson(_query("q-1", "K-0"))
    koki = await connect(f"bs.{ORG}.koki")
    code, reason = await _denied(
        koki.GetPersonQueryResult(ua_pb2.GetPersonQueryResultRequest(query_id="q-1"))
    )
    assert (code, reason) == ("NOT_FOUND", "QUERY_NOT_FOUND")


async def test_query_for_a_procedure_out_of_scope_is_denied_and_recorded(
    connect: Connect, intermediate: tuple[FakeIntermediateServer, Served], database_url: str
) -> None:
    stub = await connect(f"bs.{ORG}.kokuho")
    people = await _people(stub, 1)
    code, reason = await _denied(stub.QueryPerson(_query("q-1", "K-0", procedure="table2:80")))
    assert (code, reason) == ("PERMISSION_DENIED", "OUT_OF_SCOPE")
    assert intermediate[0].queries == {}
    denial = read_records(database_url)[-1]
    assert (denial.event, denial.outcome, denial.reason) == (
        "ACCESS_DENIED",
        "DENIED",
        "OUT_OF_SCOPE",
    )
    assert (denial.actor_id, denial.procedure) == (f"bs.{ORG}.kokuho", "table2:80")
    assert denial.subject == people["K-0"]


async def test_query_for_an_item_out_of_scope_is_denied_and_recorded(
    connect: Connect, intermediate: tuple[FakeIntermediateServer, Served], database_url: str
) -> None:
    stub = await connect(f"bs.{ORG}.kokuho")
    await _people(stub, 1)
    request = _query("q-1", "K-0", data_items=["local_tax", "pension_benefit"])
    assert await _denied(stub.QueryPerson(request)) == ("PERMISSION_DENIED", "OUT_OF_SCOPE")
    assert intermediate[0].queries == {}
    denial = read_records(database_url)[-1]
    assert denial.event == "ACCESS_DENIED"
    assert denial.data_items == ("local_tax", "pension_benefit")


async def test_a_system_without_query_scope_may_not_query_at_all(connect: Connect) -> None:
    juki = await connect(f"bs.{ORG}.juki")
    code, reason = await _denied(juki.QueryPerson(_query("q-1", "J-0")))
    assert (code, reason) == ("PERMISSION_DENIED", "OUT_OF_SCOPE")


async def test_scope_is_checked_before_the_person_is_looked_up(connect: Connect) -> None:
    # An unknown address number out of scope gets PERMISSION_DENIED, not FAILED_PRECONDITION:
    # the refusal must not reveal whether the person exists (AIP-131).
    stub = await connect(f"bs.{ORG}.kokuho")
    request = _query("q-1", "K-nobody", procedure="table2:80")
    assert await _denied(stub.QueryPerson(request)) == ("PERMISSION_DENIED", "OUT_OF_SCOPE")


async def test_query_about_a_person_without_a_code_fails_its_precondition(
    connect: Connect,
) -> None:
    stub = await connect(f"bs.{ORG}.kokuho")
    await stub.RegisterPerson(ua_pb2.RegisterPersonRequest(address_number="K-w"))
    assert await _denied(stub.QueryPerson(_query("q-1", "K-w"))) == (
        "FAILED_PRECONDITION",
        "AWAITING_MANUAL_LINK",
    )
    assert await _denied(stub.QueryPerson(_query("q-2", "K-none"))) == (
        "FAILED_PRECONDITION",
        "UNKNOWN_ADDRESS_NUMBER",
    )


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"query_id": ""}, "query_id"),
        ({"query_id": "has space"}, "query_id"),
        ({"provider": "Osaka City"}, "provider"),
        ({"data_items": []}, "data_items"),
        ({"on_date": "2026/06/01"}, "on_date"),
        ({"on_date": "2026-02-30"}, "on_date"),
    ],
)
async def test_malformed_queries_are_rejected_with_the_field_named(
    connect: Connect, overrides: dict[str, object], field: str
) -> None:
    stub = await connect(f"bs.{ORG}.kokuho")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.QueryPerson(_query(**{"query_id": "q-1", "address": "K-0", **overrides}))
    error = remote_error(caught.value)
    assert error.code == "INVALID_ARGUMENT"
    assert field in [v.field for v in error.violations]


# --- who may call --------------------------------------------------------------------------


@pytest.mark.parametrize("identity", [f"bs.{ORG}.rogue", "bs.osaka.kokuho", "registry"])
async def test_callers_that_are_not_configured_business_systems_are_denied_and_recorded(
    connect: Connect, database_url: str, identity: str
) -> None:
    stub = await connect(identity)
    code, reason = await _denied(
        stub.RegisterPerson(ua_pb2.RegisterPersonRequest(address_number="X-1"))
    )
    assert (code, reason) == ("PERMISSION_DENIED", "CALLER_NOT_ALLOWED")
    (denial,) = read_records(database_url)
    assert (denial.event, denial.actor_id) == ("ACCESS_DENIED", identity)
