"""No individual number ever reaches the intermediate server, or a log line, or a record.

The fake intermediate server records every request byte it receives (each serialized message of
every call, streamed chunks included, and the call metadata) before parsing it, so the check
covers fields this test does not know about too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
import pytest
from structlog.testing import capture_logs
from ua_fakes import FakeIntermediateServer, FakeRegistry, Served
from ua_support import ORG, Stub, individual_numbers, read_records

from linkage.errors import Unavailable
from linkage.v1 import common_pb2
from linkage.v1 import unified_address_pb2 as ua_pb2
from unified_address.app import App
from unified_address.matching import Registration

Connect = Callable[[str], Awaitable[Stub]]
PEOPLE = 60


def _value(item: str) -> common_pb2.DuplicateValue:
    content = (
        common_pb2.DataItemContent(local_tax=common_pb2.LocalTax(fiscal_year=2026))
        if item == "local_tax"
        else common_pb2.DataItemContent(
            late_stage_medical_premium=common_pb2.LateStageMedicalPremium(fiscal_year=2026)
        )
    )
    return common_pb2.DuplicateValue(data_item=item, content=content, effective_from="2026-04-01")


async def _exercise(ua: App, connect: Connect, numbers: list[str]) -> None:
    """Register, fail and retry codes, push, query and read results, from two systems."""
    kokuho = await connect(f"bs.{ORG}.kokuho")
    koki = await connect(f"bs.{ORG}.koki")
    half = len(numbers) // 2
    for i, number in enumerate(numbers[:half]):
        await kokuho.RegisterPerson(
            ua_pb2.RegisterPersonRequest(address_number=f"K-{i}", individual_number=number)
        )
    await ua.register_many("koki", [Registration(f"L-{i}", n) for i, n in enumerate(numbers)])
    await kokuho.RetryCodeRequests(ua_pb2.RetryCodeRequestsRequest())
    await kokuho.PushDuplicates(
        ua_pb2.PushDuplicatesRequest(
            import_id="tax",
            duplicates=[
                ua_pb2.AddressedDuplicate(address_number=f"K-{i}", value=_value("local_tax"))
                for i in range(half)
            ],
        )
    )
    await koki.PushDuplicates(
        ua_pb2.PushDuplicatesRequest(
            import_id="premium",
            duplicates=[
                ua_pb2.AddressedDuplicate(
                    address_number=f"L-{i}",
                    value=_value("late_stage_medical_premium"),
                    auto_response_disabled=i % 7 == 0,
                )
                for i in range(len(numbers))
            ],
        )
    )
    for i in range(half):
        await kokuho.QueryPerson(
            ua_pb2.QueryPersonRequest(
                query_id=f"q{i}",
                procedure="table2:82",
                provider="osaka-city",
                data_items=["local_tax"],
                address_number=f"K-{i}",
            )
        )
        await kokuho.GetPersonQueryResult(ua_pb2.GetPersonQueryResultRequest(query_id=f"q{i}"))
    # Error paths carry requests too: a bad number, an out-of-scope query.
    with pytest.raises(grpc.aio.AioRpcError):
        await kokuho.RegisterPerson(
            ua_pb2.RegisterPersonRequest(
                address_number="K-bad", individual_number=numbers[0][:11] + "x"
            )
        )
    with pytest.raises(grpc.aio.AioRpcError):
        await koki.QueryPerson(
            ua_pb2.QueryPersonRequest(
                query_id="q-denied",
                procedure="table2:82",
                provider="osaka-city",
                data_items=["local_tax"],
                address_number="L-0",
            )
        )


async def test_no_individual_number_reaches_the_intermediate_server(
    ua: App,
    connect: Connect,
    registry: tuple[FakeRegistry, Served],
    intermediate: tuple[FakeIntermediateServer, Served],
    database_url: str,
) -> None:
    numbers = individual_numbers(PEOPLE, seed=61)
    # Some code requests fail once, so the retry path (which decrypts numbers) runs too.
    intermediate[0].failures.fail_next(*(Unavailable("BUSY", "busy") for _ in range(5)))
    with capture_logs() as logs:
        await _exercise(ua, connect, numbers)

    received = intermediate[1].recorder
    assert len(intermediate[0].codes) == PEOPLE  # every person got a code in the end
    assert {m.rsplit("/", 1)[-1] for m in received.methods} == {
        "AcquireLinkageCode",
        "ImportDuplicates",
        "SubmitQuery",
        "GetQueryResult",
    }
    assert len(received.messages) > 3 * PEOPLE
    leaked = [n for n in numbers if any(n.encode() in blob for blob in received.messages)]
    assert leaked == []
    # The check could not pass by accident: the registry did receive them, as ASCII digits.
    assert all(any(n.encode() in blob for blob in registry[1].recorder.messages) for n in numbers)
    assert not any(n in repr(event) for event in logs for n in numbers)
    assert not any(n in repr(record) for record in read_records(database_url) for n in numbers)
