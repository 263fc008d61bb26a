"""The main job of late-stage elderly medical care (後期高齢者医療), run against a live world.

Owns the runner of issue 9's scenario: it sets the world up (registry load, registrations with
each business system's own address numbers, duplicates pushed in chunks), then runs the three
query phases in the order the law names the parties, each with bounded concurrency through the
business systems' ``QueryPerson``:

1. the regional association (row 80) asks municipalities for resident records and local tax,
   assesses premiums (:func:`~simulator.scenario_plan.assess_premiums`) and pushes them;
2. Sakai (row 82) asks JPS for pensions and the association for premiums, decides each
   person's collection method and pushes special collection notices; it also asks a
   municipality for local tax under row 82 once, which the permission list must deny;
3. JPS (row 83, in the Minister's capacity) asks Sakai for the notices.

Every query ends in exactly one outcome (provided, denied, held for review, no data, error);
a gRPC failure is an error with its code and reason, never an exception out of the run.

The population comes from the caller (tests hand in a tiny hand-built one). The plan — who
knows whom, what is pushed and asked, and the decisions — is pure and lives in
:mod:`simulator.scenario_plan`; the held-query review and a person's journey are in
:mod:`simulator.scenario_review`.

Must never: reach into a system's storage (everything after start-up is gRPC, except the bulk
loads the harness offers: ``load_residents`` and ``register_many``), print or log a personal
value, or let one failed query stop the others.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

import grpc
from google.protobuf.duration_pb2 import Duration

from linkage.errors import remote_error
from linkage.v1 import common_pb2, intermediate_server_pb2
from linkage.v1 import unified_address_pb2 as ua_pb2
from simulator.eligibility import CollectionDecision
from simulator.population import Person, Population
from simulator.scenario_plan import (
    ASSESSMENT_DATE,
    Answer,
    AnswerKey,
    Assessment,
    Collection,
    DuplicateBatch,
    Outcome,
    Phase,
    PlannedQuery,
    RegistrationBatch,
    address_number,
    assess_premiums,
    decide_collections,
    insured_persons,
    municipality_queries,
    notice_duplicates,
    pension_service_queries,
    pension_service_subjects,
    permission_check_query,
    premium_duplicates,
    regional_association_queries,
    registrations,
    setup_duplicates,
)
from unified_address.matching import Registration

if TYPE_CHECKING:
    from linkage.v1.unified_address_pb2_grpc import UnifiedAddressServiceAsyncStub
    from simulator.world import World

__all__ = [
    "DEFAULT_CONCURRENCY",
    "ProgressSink",
    "QueryOutcome",
    "Scenario",
    "ScenarioResult",
    "Tally",
]

DEFAULT_CONCURRENCY: Final = 64
"""Queries in flight at once: enough to keep every server busy, few enough that a deadline
never runs out in a queue."""
PUSH_CHUNK: Final = 2000
"""Duplicates per PushDuplicates call (the server takes up to 10,000): a failed chunk is small
to retry, and progress moves."""
QUERY_TIMEOUT: Final = 120.0
"""Deadline of one QueryPerson, seconds: generous, because a query queues behind others."""
IN_FLIGHT_WAIT: Final = 30.0
"""How long to wait (GetPersonQueryResult) for a query still in flight when QueryPerson ends."""
CODE_RETRIES: Final = 3
"""Rounds of RetryCodeRequests for people whose linkage-code request failed at registration."""

QS = common_pb2.QueryStatus
_SIMPLE_OUTCOMES: Final = {
    QS.QUERY_STATUS_PROVIDED: Outcome.PROVIDED,
    QS.QUERY_STATUS_DENIED: Outcome.DENIED,
    QS.QUERY_STATUS_HELD_FOR_REVIEW: Outcome.HELD_FOR_REVIEW,
    QS.QUERY_STATUS_NO_DATA: Outcome.NO_DATA,
}


class ProgressSink(Protocol):
    """Where the runner reports progress: one phase at a time, a count of a known total."""

    def start(self, phase: str, total: int) -> None: ...

    def advance(self, done: int) -> None: ...

    def finish(self, note: str = "") -> None: ...


class _Silent:
    def start(self, phase: str, total: int) -> None:
        pass

    def advance(self, done: int) -> None:
        pass

    def finish(self, note: str = "") -> None:
        pass


@dataclass(frozen=True, slots=True)
class QueryOutcome:
    """One query as it ended: the plan, the answer, the permit (if any) and its duration."""

    query: PlannedQuery
    answer: Answer
    status: str  # the QueryStatus name, or the gRPC code of a failed call
    permit_id: str
    seconds: float


@dataclass
class Tally:
    """Counts of outcomes; ``queries`` is their sum by construction."""

    counts: Counter[Outcome] = field(default_factory=Counter)

    def add(self, outcome: Outcome) -> None:
        self.counts[outcome] += 1

    @property
    def queries(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return {o.value: self.counts[o] for o in Outcome}


@dataclass
class ScenarioResult:
    """Everything a run produced, for the summary, the result file and the tests."""

    population: Population
    on: date
    insured: tuple[Person, ...]
    registered: dict[str, int] = field(default_factory=dict)  # "org/system" → people
    code_failures: dict[str, int] = field(default_factory=dict)  # reason → people left
    pushed: dict[str, int] = field(default_factory=dict)  # "org/system/item" → values
    outcomes: list[QueryOutcome] = field(default_factory=list)
    assessments: dict[int, Assessment] = field(default_factory=dict)
    collections: dict[int, Collection] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # step → seconds
    unified_numbers: dict[tuple[str, int], str] = field(default_factory=dict)

    def answers(self) -> dict[AnswerKey, Answer]:
        return {
            (o.query.phase, o.query.data_item, o.query.person_id): o.answer for o in self.outcomes
        }

    def outcome_of(self, phase: Phase, data_item: str, person_id: int) -> QueryOutcome | None:
        return next(
            (
                o
                for o in self.outcomes
                if o.query.phase is phase
                and o.query.data_item == data_item
                and o.query.person_id == person_id
            ),
            None,
        )

    def tally(self, outcomes: Sequence[QueryOutcome] | None = None) -> Tally:
        tally = Tally()
        for outcome in self.outcomes if outcomes is None else outcomes:
            tally.add(outcome.answer.outcome)
        return tally

    def decisions(self) -> Counter[CollectionDecision]:
        return Counter(c.decision for c in self.collections.values())


class Scenario:
    """One run of the main job on a started world.

    ``population`` is everyone the world knows; ``on`` the assessment date all queries ask
    about. ``concurrency`` bounds the queries in flight. Call :meth:`run` once.
    """

    def __init__(
        self,
        world: World,
        population: Population,
        *,
        on: date = ASSESSMENT_DATE,
        concurrency: int = DEFAULT_CONCURRENCY,
        progress: ProgressSink | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.world = world
        self.population = population
        self.on = on
        self.concurrency = concurrency
        self.progress: ProgressSink = progress or _Silent()
        self.result = ScenarioResult(population, on, insured_persons(population, on))
        self._stubs: dict[tuple[str, str], UnifiedAddressServiceAsyncStub] = {}

    def stub(self, org: str, system: str) -> UnifiedAddressServiceAsyncStub:
        """The business system's client (one channel each, reused for the whole run)."""
        key = (org, system)
        if key not in self._stubs:
            from linkage.v1.unified_address_pb2_grpc import UnifiedAddressServiceStub

            # World.business_system does the same, but is typed as the sync stub.
            channel = self.world.channel(
                f"bs.{org}.{system}", self.world.unified_address[org].address
            )
            self._stubs[key] = UnifiedAddressServiceStub(channel)
        return self._stubs[key]

    async def run(self) -> ScenarioResult:
        """Set up, then the three phases in order; returns the result (also ``self.result``)."""
        batches = registrations(self.population, self.on)
        await self._timed("registry", self.load_registry())
        await self._timed("registration", self.register(batches))
        await self._timed("duplicates", self.push_all(setup_duplicates(self.population, batches)))
        await self._timed("regional_association", self.regional_association())
        await self._timed("municipality", self.municipality())
        await self._timed("pension_service", self.pension_service())
        return self.result

    async def _timed(self, step: str, work: Awaitable[None]) -> None:
        started = time.perf_counter()
        await work
        self.result.timings[step] = time.perf_counter() - started

    # --- set-up -----------------------------------------------------------------------------

    async def load_registry(self) -> None:
        """Every person in the resident registry, including those another municipality taxed:
        a code can be issued only for someone the registry knows."""
        people = self.population.persons
        self.progress.start("registry: loading residents", len(people))
        loaded = await self.world.registry.load_residents(
            (p.resident_code, p.individual_number, p.municipality) for p in people
        )
        self.progress.advance(loaded)
        self.progress.finish()

    async def register(self, batches: Sequence[RegistrationBatch]) -> None:
        """Each business system registers the people it knows; codes are acquired as it goes."""
        for batch in batches:
            await self._register_batch(batch)

    async def _register_batch(self, batch: RegistrationBatch) -> None:
        label = f"{batch.org}/{batch.system}"
        rows = [
            Registration(address_number(batch.org, batch.system, p.person_id), p.individual_number)
            for p in batch.persons
        ]
        self.progress.start(f"registering: {label}", len(rows))
        summary = await self.world.unified_address[batch.org].register_many(
            batch.system, rows, progress=lambda done, _total: self.progress.advance(done)
        )
        for result in summary.results:
            # Address numbers end in the person id (scenario_plan.address_number).
            person_id = int(result.address_number[-8:])
            self.result.unified_numbers.setdefault((batch.org, person_id), result.unified_number)
        self.result.registered[label] = len(rows)
        failed = summary.failed
        if failed:
            failed = await self._retry_codes(batch.org, batch.system, failed)
        self.progress.finish(f"{failed} code requests failing" if failed else "")

    async def _retry_codes(self, org: str, system: str, failed: int) -> int:
        """Retry failed code requests a few times; the people still failing are counted (their
        queries will fail with NO_LINKAGE_CODE and show as errors)."""
        stub = self.stub(org, system)
        for attempt in range(CODE_RETRIES):
            await asyncio.sleep(0.2 * (attempt + 1))
            reply = await stub.RetryCodeRequests(ua_pb2.RetryCodeRequestsRequest(limit=10_000))
            failed = reply.failed
            if failed == 0:
                break
        if failed:
            key = f"{org}:CODE_REQUEST_FAILED"
            self.result.code_failures[key] = self.result.code_failures.get(key, 0) + failed
        return failed

    async def push_all(self, batches: Sequence[DuplicateBatch]) -> None:
        for batch in batches:
            await self.push(batch)

    async def push(self, batch: DuplicateBatch) -> None:
        """Push one business system's duplicates in chunks; idempotent import ids, so a rerun
        on the same data directory stores nothing twice."""
        label = f"{batch.org}/{batch.system}/{batch.data_item}"
        stub = self.stub(batch.org, batch.system)
        self.progress.start(f"pushing duplicates: {label}", len(batch.rows))
        done = 0
        for index, chunk in enumerate(_chunks(batch.rows, PUSH_CHUNK)):
            request = ua_pb2.PushDuplicatesRequest(
                import_id=f"{batch.org}.{batch.system}.{batch.data_item}.{index:05d}",
                duplicates=[
                    ua_pb2.AddressedDuplicate(
                        address_number=address_number(batch.org, batch.system, row.person_id),
                        value=row.value,
                        auto_response_disabled=row.auto_response_disabled,
                    )
                    for row in chunk
                ],
            )
            await stub.PushDuplicates(request, timeout=QUERY_TIMEOUT)
            done += len(chunk)
            self.progress.advance(done)
        self.result.pushed[label] = len(batch.rows)
        self.progress.finish()

    # --- the three phases -------------------------------------------------------------------

    async def regional_association(self) -> None:
        """Row 80: ask, assess, push the premiums."""
        insured = self.result.insured
        planned = regional_association_queries(self.population, insured, self.on)
        await self.ask("regional association (row 80): tax and resident data", planned)
        self.result.assessments = assess_premiums(self.population, insured, self.result.answers())
        await self.push(premium_duplicates(self.population, self.result.assessments))

    async def municipality(self) -> None:
        """Row 82: ask, decide, push the notices; then the one query the law forbids."""
        insured = self.result.insured
        await self.ask("Sakai (row 82): pensions and premiums", municipality_queries(insured))
        self.result.collections = decide_collections(insured, self.result.answers())
        await self.push(notice_duplicates(self.population, self.result.collections))
        probe = permission_check_query(insured)
        if probe is not None:
            await self.ask("Sakai (row 82): local tax from another municipality", [probe])

    async def pension_service(self) -> None:
        """Row 83: JPS asks Sakai for special collection notices."""
        subjects = pension_service_subjects(self.population, self.on)
        await self.ask(
            "JPS (row 83): special collection notices", pension_service_queries(subjects)
        )

    # --- asking -----------------------------------------------------------------------------

    async def ask(self, title: str, planned: Sequence[PlannedQuery]) -> list[QueryOutcome]:
        """Run ``planned`` with bounded concurrency; outcomes are kept in plan order."""
        gate = asyncio.Semaphore(self.concurrency)
        done = 0
        self.progress.start(title, len(planned))

        async def one(query: PlannedQuery) -> QueryOutcome:
            nonlocal done
            async with gate:
                outcome = await self.query(query)
            done += 1
            self.progress.advance(done)
            return outcome

        outcomes = await asyncio.gather(*(one(q) for q in planned))
        self.result.outcomes.extend(outcomes)
        tally = self.result.tally(outcomes).as_dict()
        self.progress.finish(", ".join(f"{k} {v}" for k, v in tally.items() if v))
        return outcomes

    async def query(self, query: PlannedQuery) -> QueryOutcome:
        """One QueryPerson; any gRPC failure becomes an ERROR outcome with code and reason."""
        stub = self.stub(query.requester, query.system)
        request = ua_pb2.QueryPersonRequest(
            query_id=query.query_id,
            procedure=query.procedure,
            provider=query.provider,
            data_items=[query.data_item],
            address_number=query.address_number,
            on_date=self.on.isoformat(),
        )
        started = time.perf_counter()
        try:
            reply = await stub.QueryPerson(request, timeout=QUERY_TIMEOUT)
            result = reply.result
            if result.status == QS.QUERY_STATUS_IN_FLIGHT:
                result = await self._await_final(stub, query.query_id)
        except grpc.aio.AioRpcError as error:
            failure = remote_error(error)
            reason = f"{failure.code}:{failure.reason}" if failure.reason else failure.code
            answer = Answer(Outcome.ERROR, reason)
            return QueryOutcome(query, answer, failure.code, "", time.perf_counter() - started)
        return QueryOutcome(
            query,
            classify(result),
            QS.Name(result.status),
            result.permit_id,
            time.perf_counter() - started,
        )

    async def _await_final(
        self, stub: UnifiedAddressServiceAsyncStub, query_id: str
    ) -> intermediate_server_pb2.QueryResult:
        wait = Duration()
        wait.FromTimedelta(timedelta(seconds=IN_FLIGHT_WAIT))
        reply = await stub.GetPersonQueryResult(
            ua_pb2.GetPersonQueryResultRequest(query_id=query_id, wait=wait),
            timeout=IN_FLIGHT_WAIT + 10,
        )
        return reply.result


def classify(result: intermediate_server_pb2.QueryResult) -> Answer:
    """The outcome of a query result as the summary counts it.

    FAILED (a technical failure), DECLINED (only after a review) and anything still in flight
    are errors of this run: the client could not use the answer.
    """
    outcome = _SIMPLE_OUTCOMES.get(result.status)
    if outcome is None:
        reason = QS.Name(result.status).removeprefix("QUERY_STATUS_")
        if result.reason:
            reason = f"{reason}:{result.reason}"
        return Answer(Outcome.ERROR, reason)
    values = tuple(result.values) if outcome is Outcome.PROVIDED else ()
    return Answer(outcome, result.reason, values)


_T = TypeVar("_T")


def _chunks(rows: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]
