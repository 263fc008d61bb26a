"""Batch queries (一括照会) through the unified address server: ``StreamPersonQueries``.

Runs over real gRPC with mutual TLS in the in-process world (the suite's ``world`` fixture):
Sakai's late-stage medical care system (``bs.sakai.kouki``) streams queries for pensions
(``table2:82``) to the Japan Pension Service, which holds pensions for half the people. Every
query gets one result under the caller's own id; a query that fails its own checks comes back
FAILED without ending the stream; a repeated id gets the first outcome again.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import func, select
from ua_support import individual_numbers, read_records

from linkage import db
from linkage.errors import Unavailable
from linkage.rpc import Security
from linkage.v1 import common_pb2, intermediate_server_pb2, unified_address_pb2_grpc
from linkage.v1 import unified_address_pb2 as ua_pb2
from simulator.world import World
from unified_address import batch
from unified_address.matching import Registration
from unified_address.models import RelayedQuery
from unified_address.relay import PersonQuery
from unified_address.repository import Repository

PEOPLE = 60
WITH_PENSION = 40  # the first 40 people have a pension at JPS; the other 20 have none
ON_DATE = "2026-06-01"
QS = common_pb2.QueryStatus


@pytest.fixture
def database_url(tmp_path: Path) -> Callable[[str], str]:
    """The suite-wide form the world needs (a migrated SQLite file per component); this
    directory's conftest narrows ``database_url`` to one file for a lone server."""

    def make(component: str) -> str:
        url = db.sqlite_url(tmp_path / f"{component}.sqlite")
        db.migrate(url)
        return url

    return make


@dataclass
class Stage:
    """The world with JPS holding pensions and Sakai's kouki system able to ask for them."""

    world: World

    def stub(self, identity: str = "bs.sakai.kouki") -> Any:
        org = identity.split(".")[1]
        channel = self.world.channel(identity, self.world.unified_address[org].address)
        return unified_address_pb2_grpc.UnifiedAddressServiceStub(channel)


def _pension(index: int) -> ua_pb2.AddressedDuplicate:
    return ua_pb2.AddressedDuplicate(
        address_number=f"N-{index}",
        value=common_pb2.DuplicateValue(
            data_item="pension_benefit",
            effective_from="2026-04-01",
            content=common_pb2.DataItemContent(
                pension_benefit=common_pb2.PensionBenefit(
                    fiscal_year=2026,
                    pension_kind=common_pb2.PENSION_KIND_OLD_AGE_BASIC,
                    annual_amount=800_000 + index,
                    payer="jps",
                )
            ),
        ),
    )


@pytest.fixture
async def stage(world: World) -> Stage:
    numbers = individual_numbers(PEOPLE, seed=53)
    await world.registry.load_residents(
        (f"{i + 1:011d}", number, "sakai") for i, number in enumerate(numbers)
    )
    for org, system, prefix in (("jps", "nenkin", "N-"), ("sakai", "kouki", "K-")):
        rows = [Registration(f"{prefix}{i}", n) for i, n in enumerate(numbers)]
        summary = await world.unified_address[org].register_many(system, rows)
        assert (summary.acquired, summary.failed) == (PEOPLE, 0)
    staged = Stage(world)
    pushed = await staged.stub("bs.jps.nenkin").PushDuplicates(
        ua_pb2.PushDuplicatesRequest(
            import_id="pensions", duplicates=[_pension(i) for i in range(WITH_PENSION)]
        )
    )
    assert pushed.imported == WITH_PENSION
    return staged


def _query(
    query_id: str, person: int, *, procedure: str = "table2:82", item: str = "pension_benefit"
) -> ua_pb2.QueryPersonRequest:
    return ua_pb2.QueryPersonRequest(
        query_id=query_id,
        procedure=procedure,
        provider="jps",
        data_items=[item],
        address_number=f"K-{person}",
        on_date=ON_DATE,
    )


async def _stream(
    stub: Any, messages: Iterable[Sequence[ua_pb2.QueryPersonRequest]]
) -> list[intermediate_server_pb2.QueryResult]:
    async def requests() -> AsyncIterator[ua_pb2.StreamPersonQueriesRequest]:
        for queries in messages:
            yield ua_pb2.StreamPersonQueriesRequest(queries=queries)

    results = []
    async for response in stub.StreamPersonQueries(requests(), timeout=60):
        results.extend(response.results)
    return results


def _by_id(
    results: Iterable[intermediate_server_pb2.QueryResult],
) -> dict[str, intermediate_server_pb2.QueryResult]:
    found: dict[str, intermediate_server_pb2.QueryResult] = {}
    for result in results:
        assert result.query_id not in found, f"two results for {result.query_id}"
        found[result.query_id] = result
    return found


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _relayed_count(stage: Stage) -> int:
    engine = db.make_engine(stage.world.config.url("ua-sakai"))
    try:
        with engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(RelayedQuery)).scalar())
    finally:
        engine.dispose()


async def test_a_stream_of_hundreds_gets_one_result_per_query_recorded_in_bulk(
    stage: Stage, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = stage.world.unified_address["sakai"].runtime
    appends: list[int] = []
    reads: list[int] = []
    append, subjects = runtime.audit.append, Repository.subjects

    def counted_append(session: Any, records: Sequence[Any]) -> None:
        appends.append(len(records))
        append(session, records)

    def counted_subjects(self: Repository, system: str, numbers: Any) -> Any:
        reads.append(len(numbers))
        return subjects(self, system, numbers)

    monkeypatch.setattr(runtime.audit, "append", counted_append)
    monkeypatch.setattr(Repository, "subjects", counted_subjects)
    queries = [_query(f"q{n}", n % PEOPLE) for n in range(6 * PEOPLE)]  # 360 queries
    messages = _chunks(queries, 90)

    results = _by_id(await _stream(stage.stub(), messages))

    assert set(results) == {q.query_id for q in queries}
    for n in range(len(queries)):
        result = results[f"q{n}"]
        if n % PEOPLE < WITH_PENSION:
            assert result.status == QS.QUERY_STATUS_PROVIDED, result
            [value] = result.values
            assert value.content.pension_benefit.annual_amount == 800_000 + n % PEOPLE
            assert result.permit_id
        else:
            assert result.status == QS.QUERY_STATUS_NO_DATA, result
            assert not result.values
    # One subject read per incoming message; records appended per message, never per query.
    assert len(reads) == len(messages)
    assert sum(appends) == len(queries)
    assert len([n for n in appends if n]) <= 2 * len(messages)
    records = read_records(stage.world.config.url("ua-sakai"))
    requested = [r for r in records if r.event.value == "QUERY_REQUESTED"]
    assert len(requested) == len(queries)
    assert {r.query_id for r in requested} == {f"kouki:{q.query_id}" for q in queries}
    assert all(r.actor_id == "bs.sakai.kouki" and r.subject for r in requested)
    assert _relayed_count(stage) == len(queries)


async def test_a_query_out_of_scope_fails_alone_and_is_recorded_as_denied(stage: Stage) -> None:
    first = [_query("in-1", 0), _query("late", 1, procedure="table2:80"), _query("in-2", 45)]
    second = [
        _query("other-item", 2, item="resident_record"),
        _query("unknown", 999),
        ua_pb2.QueryPersonRequest(query_id="bad", procedure="table2:82"),  # no items, no person
        _query("in-3", 3),
    ]

    results = _by_id(await _stream(stage.stub(), [first, second]))

    assert {k: (r.status, r.reason) for k, r in results.items()} == {
        "in-1": (QS.QUERY_STATUS_PROVIDED, ""),
        "late": (QS.QUERY_STATUS_FAILED, "OUT_OF_SCOPE"),
        "in-2": (QS.QUERY_STATUS_NO_DATA, results["in-2"].reason),
        "other-item": (QS.QUERY_STATUS_FAILED, "OUT_OF_SCOPE"),
        "unknown": (QS.QUERY_STATUS_FAILED, "UNKNOWN_ADDRESS_NUMBER"),
        "bad": (QS.QUERY_STATUS_FAILED, "INVALID_QUERY"),
        "in-3": (QS.QUERY_STATUS_PROVIDED, ""),
    }
    records = read_records(stage.world.config.url("ua-sakai"))
    denied = {r.query_id: r for r in records if r.event.value == "ACCESS_DENIED"}
    assert set(denied) == {"kouki:late", "kouki:other-item"}
    assert all(r.outcome.value == "DENIED" and r.reason == "OUT_OF_SCOPE" for r in denied.values())
    assert all(r.subject for r in denied.values())  # named by unified number, never by address


async def test_a_repeated_query_id_gets_the_first_outcome(stage: Stage) -> None:
    stub = stage.stub()
    first = _by_id(await _stream(stub, [[_query("again", 5), _query("none", 50)]]))

    # Repeated in a later message of one stream, twice in one message, and in a new stream.
    repeated = await _stream(stub, [[_query("again", 5)], [_query("again", 5), _query("again", 5)]])
    later = _by_id(await _stream(stub, [[_query("again", 5), _query("none", 50)]]))

    assert first["again"].status == QS.QUERY_STATUS_PROVIDED
    assert first["none"].status == QS.QUERY_STATUS_NO_DATA
    assert len(repeated) == 3
    for result in [*repeated, later["again"]]:
        assert (result.query_id, result.status) == ("again", QS.QUERY_STATUS_PROVIDED)
        assert result.permit_id == first["again"].permit_id
        assert list(result.values) == list(first["again"].values)
    assert later["none"].permit_id == first["none"].permit_id
    # The same id asked about someone else is not answered with the first person's data.
    reused = _by_id(await _stream(stub, [[_query("again", 6)]]))
    assert (reused["again"].status, reused["again"].reason) == (
        QS.QUERY_STATUS_FAILED,
        "QUERY_ID_REUSED",
    )
    assert _relayed_count(stage) == 2


async def test_whole_stream_errors_are_for_the_caller_and_the_message_size(stage: Stage) -> None:
    pki_dir = stage.world.config.pki_dir
    assert pki_dir is not None
    staff = Security(pki_dir, "staff-console.sakai").channel(
        stage.world.unified_address["sakai"].address
    )
    try:
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await _stream(unified_address_pb2_grpc.UnifiedAddressServiceStub(staff), [[]])
    finally:
        await staff.close(None)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

    too_many = [_query(f"m{n}", 0) for n in range(batch.MAX_QUERIES_PER_MESSAGE + 1)]
    received: list[intermediate_server_pb2.QueryResult] = []

    async def requests() -> AsyncIterator[ua_pb2.StreamPersonQueriesRequest]:
        yield ua_pb2.StreamPersonQueriesRequest(queries=[_query("before", 0)])
        yield ua_pb2.StreamPersonQueriesRequest(queries=too_many)

    async def read_all() -> None:
        async for response in stage.stub().StreamPersonQueries(requests(), timeout=60):
            received.extend(response.results)

    with pytest.raises(grpc.aio.AioRpcError) as exhausted:
        await read_all()
    assert exhausted.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # What was admitted before the bad message is still answered, then the stream fails.
    assert [(r.query_id, r.status) for r in received] == [("before", QS.QUERY_STATUS_PROVIDED)]


class _FailingServer:
    """An intermediate server whose batch stream breaks after taking the first message."""

    def __init__(self) -> None:
        self.taken = 0

    async def stream_queries(
        self, batches: AsyncIterator[Sequence[Any]], deadline: float | None = None
    ) -> AsyncIterator[list[intermediate_server_pb2.QueryResult]]:
        async for sent in batches:
            self.taken += len(sent)
            raise Unavailable("NETWORK_DOWN", "the intermediate server went away")
        yield []  # pragma: no cover - never reached


async def test_an_upstream_failure_ends_the_stream_and_records_what_was_in_flight(
    stage: Stage,
) -> None:
    runtime = stage.world.unified_address["sakai"].runtime
    broken = dataclasses.replace(runtime, server=_FailingServer())  # type: ignore[arg-type]
    scope = runtime.scopes.get("kouki")
    assert scope is not None

    async def messages() -> AsyncIterator[list[batch.Incoming]]:
        yield [
            PersonQuery(f"f{n}", "table2:82", "jps", ("pension_benefit",), f"K-{n}", ON_DATE)
            for n in range(3)
        ]

    async def drain() -> None:
        async for _ in batch.stream_person_queries(broken, scope, messages()):
            pass

    with pytest.raises(Unavailable) as failed:
        await drain()

    assert failed.value.reason == "NETWORK_DOWN"
    records = read_records(stage.world.config.url("ua-sakai"))
    failures = {r.query_id: r for r in records if r.event.value == "FAILED"}
    assert set(failures) == {"kouki:f0", "kouki:f1", "kouki:f2"}
    assert all(r.reason == "NETWORK_DOWN" and r.subject for r in failures.values())


async def test_the_stream_stops_reading_its_caller_while_its_window_is_full(stage: Stage) -> None:
    runtime = stage.world.unified_address["sakai"].runtime
    scope = runtime.scopes.get("kouki")
    assert scope is not None
    pulled: list[int] = []

    async def messages() -> AsyncIterator[list[batch.Incoming]]:
        for m in range(8):
            pulled.append(m)
            items = ("pension_benefit",)
            yield [
                PersonQuery(f"w{m}-{n}", "table2:82", "jps", items, f"K-{n}", ON_DATE)
                for n in range(25)
            ]

    results = batch.stream_person_queries(runtime, scope, messages(), max_in_flight=50)
    first = await anext(results)
    await asyncio.sleep(0.3)  # the reader may run on, but only into a full window

    assert first
    assert len(pulled) <= 3  # two messages admitted, the third waiting for room
    rest = [result async for chunk in results for result in chunk]
    assert len(first) + len(rest) == 8 * 25
    assert len(pulled) == 8
