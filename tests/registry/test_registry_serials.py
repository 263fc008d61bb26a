"""IssueProcessingSerial: the registry finds the resident and hands the serial to the network."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from network_support import remote, unused_port
from registry_support import resident, residents
from sqlalchemy import select
from sqlalchemy.orm import Session

from linkage.db import make_engine
from linkage.records.models import AccessRecordRow
from linkage.v1 import network_pb2, registry_pb2, registry_pb2_grpc
from simulator.registry import app as registry_app

Stub = Callable[[str], Any]


def _issue(org: str, number: str) -> registry_pb2.IssueProcessingSerialRequest:
    return registry_pb2.IssueProcessingSerialRequest(organization=org, individual_number=number)


async def test_a_serial_is_issued_and_the_network_accepts_it_for_that_organization(
    registry: registry_app.App, registry_stub: Stub, network_stub: Stub
) -> None:
    await registry.load_residents(residents(5))
    _, number, _ = resident(3)
    issued = await registry_stub("ua.sakai").IssueProcessingSerial(_issue("sakai", number))
    assert len(issued.processing_serial) >= 16
    code = await network_stub("org.sakai").ObtainLinkageCode(
        network_pb2.ObtainLinkageCodeRequest(
            organization="sakai", processing_serial=issued.processing_serial
        )
    )
    # The same person through another serial gets the same code: the serial stood for them.
    again = await registry_stub("ua.sakai").IssueProcessingSerial(_issue("sakai", number))
    assert again.processing_serial != issued.processing_serial
    same = await network_stub("org.sakai").ObtainLinkageCode(
        network_pb2.ObtainLinkageCodeRequest(
            organization="sakai", processing_serial=again.processing_serial
        )
    )
    assert same.linkage_code == code.linkage_code
    other_number = resident(4)[1]
    other = await registry_stub("ua.sakai").IssueProcessingSerial(_issue("sakai", other_number))
    different = await network_stub("org.sakai").ObtainLinkageCode(
        network_pb2.ObtainLinkageCodeRequest(
            organization="sakai", processing_serial=other.processing_serial
        )
    )
    assert different.linkage_code != code.linkage_code


@pytest.mark.parametrize("number", ["12345678901", "1234567890123", "12345678901a", "123456789012"])
async def test_a_malformed_individual_number_is_invalid_argument_without_echoing_it(
    registry: registry_app.App, registry_stub: Stub, number: str
) -> None:
    error = await remote(registry_stub("ua.sakai").IssueProcessingSerial(_issue("sakai", number)))
    assert (error.code, error.reason) == ("INVALID_ARGUMENT", "INVALID_INDIVIDUAL_NUMBER")
    assert [v.field for v in error.violations] == ["individual_number"]
    assert number not in error.message


async def test_asking_for_another_organization_is_permission_denied_and_recorded(
    registry: registry_app.App, registry_stub: Stub, registry_url: str
) -> None:
    await registry.load_residents(residents(1))
    number = resident(1)[1]
    attempts = (
        ("ua.sakai", "jps", ("PERMISSION_DENIED", "NOT_THIS_ORGANIZATION")),
        ("org.sakai", "sakai", ("PERMISSION_DENIED", "NOT_THIS_ORGANIZATION")),
        ("network", "Not a code", ("INVALID_ARGUMENT", "INVALID_ORGANIZATION")),  # not recorded
    )
    for identity, org, expected in attempts:
        error = await remote(registry_stub(identity).IssueProcessingSerial(_issue(org, number)))
        assert (error.code, error.reason) == expected
    engine = make_engine(registry_url)
    with Session(engine) as session:
        refusals = [
            (r.event, r.actor_id, r.requester, r.outcome, r.reason, r.subject)
            for r in session.scalars(
                select(AccessRecordRow).where(AccessRecordRow.ledger == "registry")
            )
        ]
    engine.dispose()
    assert refusals == [
        ("ACCESS_DENIED", "ua.sakai", "jps", "DENIED", "NOT_THIS_ORGANIZATION", ""),
        ("ACCESS_DENIED", "org.sakai", "sakai", "DENIED", "NOT_THIS_ORGANIZATION", ""),
    ]


async def test_a_person_the_registry_does_not_know_is_not_found(
    registry: registry_app.App, registry_stub: Stub
) -> None:
    await registry.load_residents(residents(3))
    error = await remote(
        registry_stub("ua.sakai").IssueProcessingSerial(_issue("sakai", resident(99)[1]))
    )
    assert (error.code, error.reason) == ("NOT_FOUND", "RESIDENT_NOT_FOUND")


async def test_an_organization_the_network_does_not_know_is_not_found(
    registry: registry_app.App, registry_stub: Stub
) -> None:
    await registry.load_residents(residents(1))
    error = await remote(
        registry_stub("ua.jps").IssueProcessingSerial(_issue("jps", resident(1)[1]))
    )
    assert (error.code, error.reason) == ("NOT_FOUND", "ORGANIZATION_NOT_REGISTERED")


async def test_an_unreachable_network_is_unavailable_within_the_deadline(
    start_registry: Callable[..., Any], channels: Callable[[str, str], grpc.aio.Channel]
) -> None:
    registry = await start_registry(
        network_address=f"127.0.0.1:{unused_port()}", network_deadline=1.0
    )
    await registry.load_residents(residents(1))
    client = registry_pb2_grpc.ResidentRegistryServiceStub(channels("ua.sakai", registry.address))
    started = time.monotonic()
    error = await remote(client.IssueProcessingSerial(_issue("sakai", resident(1)[1])))
    assert time.monotonic() - started < 3.0
    assert (error.code, error.reason) == ("UNAVAILABLE", "NETWORK_UNAVAILABLE")


async def test_each_issuance_is_recorded_in_the_registry_ledger(
    registry: registry_app.App, registry_stub: Stub, registry_url: str
) -> None:
    await registry.load_residents(residents(2))
    await registry_stub("ua.sakai").IssueProcessingSerial(_issue("sakai", resident(2)[1]))
    engine = make_engine(registry_url)
    with Session(engine) as session:
        rows = list(
            session.scalars(select(AccessRecordRow).where(AccessRecordRow.ledger == "registry"))
        )
    engine.dispose()
    assert [(r.event, r.actor_id, r.requester, r.subject, r.outcome) for r in rows] == [
        ("CODE_ISSUED", "ua.sakai", "sakai", resident(2)[0], "OK")
    ]
