"""Linkage-code requests (符号要求): the serial flow, failures kept visible, and retries."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from ua_fakes import FakeIntermediateServer, FakeRegistry, Served
from ua_support import ORG, Stub, individual_numbers, read_records

from linkage.errors import NotFound, Unavailable
from linkage.v1 import unified_address_pb2 as ua_pb2
from unified_address import cli
from unified_address.app import App, Config
from unified_address.matching import Registration

Connect = Callable[[str], Awaitable[Stub]]


async def _register(stub: Stub, address: str, number: str) -> ua_pb2.RegisterPersonResponse:
    return await stub.RegisterPerson(
        ua_pb2.RegisterPersonRequest(address_number=address, individual_number=number)
    )


async def test_a_new_person_gets_a_serial_from_the_registry_and_a_code_at_the_server(
    connect: Connect,
    registry: tuple[FakeRegistry, Served],
    intermediate: tuple[FakeIntermediateServer, Served],
) -> None:
    (number,) = individual_numbers(1, seed=31)
    response = await _register(await connect(f"bs.{ORG}.kokuho"), "K-1", number)
    assert registry[0].numbers_seen == [number]
    assert intermediate[0].codes == {response.unified_number: "serial-1"}
    assert response.code_status == ua_pb2.CODE_STATUS_ACQUIRED
    assert response.code_failure_reason == ""


async def test_a_registry_failure_marks_the_person_failed_and_a_retry_acquires_the_code(
    connect: Connect,
    registry: tuple[FakeRegistry, Served],
    intermediate: tuple[FakeIntermediateServer, Served],
    database_url: str,
) -> None:
    (number,) = individual_numbers(1, seed=37)
    registry[0].failures.fail_next(Unavailable("NETWORK_UNREACHABLE", "network down"))
    stub = await connect(f"bs.{ORG}.kokuho")
    response = await _register(stub, "K-1", number)
    assert response.unified_number  # registration itself succeeded
    assert response.code_status == ua_pb2.CODE_STATUS_FAILED
    assert response.code_failure_reason == "REGISTRY_NETWORK_UNREACHABLE"
    assert intermediate[0].codes == {}

    retried = await stub.RetryCodeRequests(ua_pb2.RetryCodeRequestsRequest())
    assert (retried.acquired, retried.failed) == (1, 0)
    assert list(intermediate[0].codes) == [response.unified_number]
    again = await _register(stub, "K-1", number)
    assert again.code_status == ua_pb2.CODE_STATUS_ACQUIRED
    assert again.code_failure_reason == ""
    events = [(r.event, r.reason) for r in read_records(database_url)]
    assert events == [("FAILED", "REGISTRY_NETWORK_UNREACHABLE"), ("CODE_ACQUIRED", "")]


async def test_a_server_failure_marks_the_person_failed_and_a_retry_acquires_the_code(
    connect: Connect,
    registry: tuple[FakeRegistry, Served],
    intermediate: tuple[FakeIntermediateServer, Served],
) -> None:
    (number,) = individual_numbers(1, seed=41)
    intermediate[0].failures.fail_next(NotFound("SERIAL_NOT_FOUND", "unknown serial"))
    stub = await connect(f"bs.{ORG}.koki")
    response = await _register(stub, "L-1", number)
    assert response.code_status == ua_pb2.CODE_STATUS_FAILED
    assert response.code_failure_reason == "SERVER_SERIAL_NOT_FOUND"

    retried = await stub.RetryCodeRequests(ua_pb2.RetryCodeRequestsRequest(limit=10))
    assert (retried.acquired, retried.failed) == (1, 0)
    # The retry asked the registry for a fresh serial: the number went there twice, only there.
    assert registry[0].numbers_seen == [number, number]
    assert intermediate[0].codes == {response.unified_number: "serial-2"}


async def test_a_retry_that_fails_again_keeps_the_person_failed_with_the_new_reason(
    connect: Connect, registry: tuple[FakeRegistry, Served]
) -> None:
    (number,) = individual_numbers(1, seed=43)
    registry[0].failures.fail_next(
        Unavailable("NETWORK_UNREACHABLE", "down"), Unavailable("REGISTRY_BUSY", "busy")
    )
    stub = await connect(f"bs.{ORG}.kokuho")
    await _register(stub, "K-1", number)
    retried = await stub.RetryCodeRequests(ua_pb2.RetryCodeRequestsRequest())
    assert (retried.acquired, retried.failed) == (0, 1)
    again = await _register(stub, "K-1", number)
    assert again.code_status == ua_pb2.CODE_STATUS_FAILED
    assert again.code_failure_reason == "REGISTRY_REGISTRY_BUSY"


async def test_an_unreachable_registry_fails_requests_without_failing_registration(
    ua: App, registry: tuple[FakeRegistry, Served]
) -> None:
    await registry[1].server.stop(None)
    numbers = individual_numbers(3, seed=47)
    summary = await ua.register_many(
        "kokuho", [Registration(f"K-{i}", n) for i, n in enumerate(numbers)]
    )
    assert summary.failed == 3
    assert {r.code_failure_reason for r in summary.results} == {"REGISTRY_UNAVAILABLE"}


async def test_a_retry_with_nothing_failed_does_nothing(connect: Connect) -> None:
    stub = await connect(f"bs.{ORG}.kokuho")
    retried = await stub.RetryCodeRequests(ua_pb2.RetryCodeRequestsRequest())
    assert (retried.acquired, retried.failed) == (0, 0)


async def test_staff_can_retry_failed_requests_from_the_cli(
    connect: Connect,
    config: Config,
    registry: tuple[FakeRegistry, Served],
    intermediate: tuple[FakeIntermediateServer, Served],
    database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (number,) = individual_numbers(1, seed=53)
    registry[0].failures.fail_next(Unavailable("NETWORK_UNREACHABLE", "down"))
    response = await _register(await connect(f"bs.{ORG}.kokuho"), "K-1", number)
    assert response.code_status == ua_pb2.CODE_STATUS_FAILED
    common = [
        "--database-url", database_url, "--organization", ORG,
        "--data-dir", str(config.data_dir), "--staff", "kato",
    ]  # fmt: skip
    assert await asyncio.to_thread(cli.main, [*common, "failures"]) == 0
    assert response.unified_number in capsys.readouterr().out
    retry = [
        "retry", "--pki-dir", str(config.security.pki_dir),
        "--server-address", intermediate[1].address, "--registry-address", registry[1].address,
    ]  # fmt: skip
    assert await asyncio.to_thread(cli.main, [*common, *retry]) == 0
    assert "acquired=1 failed=0" in capsys.readouterr().out
    assert list(intermediate[0].codes) == [response.unified_number]
    acquired = [r for r in read_records(database_url) if r.event == "CODE_ACQUIRED"]
    assert [(r.actor_kind, r.actor_id) for r in acquired] == [("STAFF", "kato")]
