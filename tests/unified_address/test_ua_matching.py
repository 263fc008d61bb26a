"""Name matching (名寄せ) over gRPC: one unified number per person across business systems."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from sqlalchemy import inspect, text
from ua_fakes import FakeIntermediateServer, FakeRegistry, Served
from ua_support import ORG, Stub, individual_numbers, read_records

from linkage.db import make_engine
from linkage.errors import remote_error
from linkage.v1 import unified_address_pb2 as ua_pb2
from unified_address.app import App
from unified_address.matching import Registration

Connect = Callable[[str], Awaitable[Stub]]


async def _register(stub: Stub, address: str, number: str = "") -> ua_pb2.RegisterPersonResponse:
    request = ua_pb2.RegisterPersonRequest(address_number=address, individual_number=number)
    return await stub.RegisterPerson(request)


async def test_same_individual_number_from_two_systems_gets_one_unified_number(
    connect: Connect,
) -> None:
    (number,) = individual_numbers(1)
    kokuho = await connect(f"bs.{ORG}.kokuho")
    koki = await connect(f"bs.{ORG}.koki")
    first = await _register(kokuho, "K-0001", number)
    second = await _register(koki, "L-9", number)
    assert first.unified_number == second.unified_number
    assert len(first.unified_number) == 15
    assert first.unified_number.isdigit()
    assert first.code_status == ua_pb2.CODE_STATUS_ACQUIRED
    assert second.code_status == ua_pb2.CODE_STATUS_ACQUIRED


async def test_different_individual_numbers_get_different_unified_numbers(
    connect: Connect,
) -> None:
    numbers = individual_numbers(20, seed=21)
    stub = await connect(f"bs.{ORG}.kokuho")
    unified = [(await _register(stub, f"K-{i}", n)).unified_number for i, n in enumerate(numbers)]
    assert len(set(unified)) == len(numbers)


async def test_registering_again_is_idempotent_and_requests_no_second_code(
    connect: Connect, intermediate: tuple[FakeIntermediateServer, Served]
) -> None:
    (number,) = individual_numbers(1, seed=5)
    stub = await connect(f"bs.{ORG}.kokuho")
    first = await _register(stub, "K-1", number)
    again = await _register(stub, "K-1", number)
    without_number = await _register(stub, "K-1")
    assert first.unified_number == again.unified_number == without_number.unified_number
    assert list(intermediate[0].codes) == [first.unified_number]


async def test_an_address_number_linked_to_one_person_cannot_take_another_number(
    connect: Connect,
) -> None:
    first, second = individual_numbers(2, seed=9)
    stub = await connect(f"bs.{ORG}.kokuho")
    await _register(stub, "K-1", first)
    await _register(stub, "K-2", second)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _register(stub, "K-1", second)
    error = remote_error(caught.value)
    assert (error.code, error.reason) == ("ALREADY_EXISTS", "ADDRESS_NUMBER_LINKED_ELSEWHERE")
    assert first not in error.message
    assert second not in error.message


async def test_without_an_individual_number_the_person_waits_for_a_manual_link(
    connect: Connect, intermediate: tuple[FakeIntermediateServer, Served]
) -> None:
    stub = await connect(f"bs.{ORG}.juki")
    response = await _register(stub, "J-7")
    assert response.unified_number == ""
    assert response.code_status == ua_pb2.CODE_STATUS_NOT_REQUESTED
    assert intermediate[0].codes == {}


async def test_a_waiting_address_number_is_linked_when_its_system_sends_the_number(
    connect: Connect,
) -> None:
    (number,) = individual_numbers(1, seed=13)
    kokuho = await connect(f"bs.{ORG}.kokuho")
    juki = await connect(f"bs.{ORG}.juki")
    person = await _register(kokuho, "K-1", number)
    assert (await _register(juki, "J-1")).unified_number == ""
    assert (await _register(juki, "J-1", number)).unified_number == person.unified_number


def _every_stored_byte(database_url: str) -> bytes:
    """Everything the database holds: on SQLite the file after folding the write-ahead log
    into it, plus any side files; on PostgreSQL the text of every row of every table."""
    if database_url.startswith("sqlite"):
        database = Path(database_url.removeprefix("sqlite+pysqlite:///"))
        with sqlite3.connect(database) as connection:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        side_files = database.parent.glob(f"{database.name}-*")
        return database.read_bytes() + b"".join(path.read_bytes() for path in side_files)
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            tables = inspect(connection).get_table_names()
            rows = [
                repr(row).encode()
                for table in tables
                for row in connection.execute(text(f'SELECT * FROM "{table}"'))  # noqa: S608 (names from the inspector)
            ]
    finally:
        engine.dispose()
    assert tables, "no table found: the check would prove nothing"
    return b"\n".join(rows)


async def test_individual_numbers_are_stored_only_sealed(
    connect: Connect, database_url: str, tmp_path: Path
) -> None:
    numbers = individual_numbers(10, seed=17)
    stub = await connect(f"bs.{ORG}.kokuho")
    for i, number in enumerate(numbers):
        await _register(stub, f"K-{i}", number)
    raw = _every_stored_byte(database_url)
    assert all(number.encode() not in raw for number in numbers)
    key_file = tmp_path / "data" / f"ua.{ORG}.datakey"
    assert key_file.stat().st_mode & 0o077 == 0


async def test_records_name_people_by_unified_number_and_the_system_that_acted(
    connect: Connect, database_url: str
) -> None:
    (number,) = individual_numbers(1, seed=19)
    stub = await connect(f"bs.{ORG}.kokuho")
    person = await _register(stub, "K-1", number)
    (record,) = read_records(database_url)
    assert record.event == "CODE_ACQUIRED"
    assert record.subject == person.unified_number
    assert (record.actor_kind, record.actor_id) == ("BUSINESS_SYSTEM", f"bs.{ORG}.kokuho")


async def test_bulk_registration_matches_across_systems_and_reports_conflicts(
    ua: App, intermediate: tuple[FakeIntermediateServer, Served]
) -> None:
    numbers = individual_numbers(2500, seed=23)
    kokuho = [Registration(f"K-{i}", n) for i, n in enumerate(numbers)]
    seen: list[tuple[int, int]] = []
    summary = await ua.register_many(
        "kokuho", kokuho, progress=lambda done, total: seen.append((done, total))
    )
    assert seen[-1] == (2500, 2500)
    assert len(seen) == 3
    assert summary.acquired == 2500
    assert summary.failed == 0
    # A second system with half the same people, one without a number, one conflicting row.
    koki = [Registration(f"L-{i}", n) for i, n in enumerate(numbers[:1000])]
    koki += [Registration("L-waiting"), Registration("L-0", numbers[1])]
    second = await ua.register_many("koki", koki)
    by_address = {r.address_number: r for r in summary.results}
    assert all(
        r.unified_number == by_address[f"K-{i}"].unified_number
        for i, r in enumerate(second.results[:1000])
    )
    kinds = [r.kind for r in second.results[1000:]]
    assert kinds == ["WAITING", "CONFLICT"]  # L-0 came first with another person's number
    assert len(intermediate[0].codes) == 2500
    assert intermediate[0].max_in_flight <= 4  # the configured bound on concurrent requests


async def test_bulk_registration_reports_a_conflicting_row_without_failing_the_rest(
    ua: App,
) -> None:
    first, second, third = individual_numbers(3, seed=29)
    await ua.register_many("kokuho", [Registration("K-1", first), Registration("K-2", second)])
    summary = await ua.register_many(
        "kokuho", [Registration("K-1", second), Registration("K-3", third)]
    )
    assert [r.kind for r in summary.results] == ["CONFLICT", "NEW"]
    assert summary.results[0].unified_number == ""  # a conflict names nobody


async def test_concurrent_registrations_of_one_person_settle_on_one_unified_number(
    connect: Connect, intermediate: tuple[FakeIntermediateServer, Served]
) -> None:
    numbers = individual_numbers(5, seed=31)
    stubs = [await connect(f"bs.{ORG}.{system}") for system in ("kokuho", "koki", "juki")]
    calls = [
        _register(stub, f"{s}-{i}", number)
        for i, number in enumerate(numbers)
        for s, stub in enumerate(stubs)
    ]
    responses = await asyncio.gather(*calls)
    by_person = [{r.unified_number for r in responses[i * 3 : i * 3 + 3]} for i in range(5)]
    assert all(len(unified) == 1 for unified in by_person)
    assert len(set().union(*by_person)) == 5
    assert sorted(intermediate[0].codes) == sorted(set().union(*by_person))


async def test_bulk_row_naming_an_address_number_twice_asks_a_code_with_the_first_number(
    ua: App, registry: tuple[FakeRegistry, Served]
) -> None:
    first, second = individual_numbers(2, seed=37)
    summary = await ua.register_many(
        "kokuho", [Registration("K-1", first), Registration("K-1", second)]
    )
    assert [r.kind for r in summary.results] == ["NEW", "CONFLICT"]
    assert registry[0].numbers_seen == [first]
