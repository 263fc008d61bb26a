"""Batch queries (一括照会) from a business system: the domain side of ``StreamPersonQueries``.

Owns the batch path through this server. Each incoming message is checked query by query as
``relay.query_person`` checks one: a query outside the system's scope comes back FAILED with
reason OUT_OF_SCOPE and leaves an ACCESS_DENIED record; an unknown address number, a person
awaiting a manual link or one without a linkage code comes back FAILED with that reason. The
rest are translated from address numbers to unified numbers in bulk (one transaction per
incoming message) and relayed on one upstream ``StreamQueries`` per downstream stream, under
namespaced ids (``<system>:<id>``). Results come back under the caller's ids as they complete,
in any order; each upstream message of results is recorded in one transaction (its relayed
queries and one ledger append). At most ``max_in_flight`` queries are admitted and not yet
taken by the caller: beyond that the stream stops reading its caller (backpressure).

Must never: look a person up before the scope check decides, send an address number or an
individual number upstream, end the stream for one query's failure, hold a transaction across
a network call, or import grpc.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from linkage.errors import LinkageError, Unavailable
from linkage.records.model import AccessRecord, Outcome, RecordEvent
from linkage.v1 import common_pb2, intermediate_server_pb2
from unified_address import relay
from unified_address.audit import upper_snake
from unified_address.models import CodeState
from unified_address.ports import QueryRequest
from unified_address.relay import PersonQuery
from unified_address.repository import RelayedRow, Repository, Subject
from unified_address.runtime import Runtime
from unified_address.scope import BusinessSystemScope

__all__ = [
    "DEFAULT_MAX_IN_FLIGHT",
    "INVALID_QUERY",
    "MAX_QUERIES_PER_MESSAGE",
    "Incoming",
    "Rejected",
    "stream_person_queries",
]

MAX_QUERIES_PER_MESSAGE = 5000  # the contract's limit per StreamPersonQueriesRequest
DEFAULT_MAX_IN_FLIGHT = 5_000  # one full message, or several smaller ones in a pipeline
INVALID_QUERY = "INVALID_QUERY"
UPSTREAM_ENDED_EARLY = "UPSTREAM_ENDED_EARLY"

QueryResult = intermediate_server_pb2.QueryResult


@dataclass(frozen=True, slots=True)
class Rejected:
    """A query that failed its own field checks: answered FAILED at once, never looked up."""

    query_id: str
    reason: str = INVALID_QUERY


Incoming = PersonQuery | Rejected


@dataclass(frozen=True, slots=True)
class _Sent:
    """A query on its way upstream, with whom it is about (for its record)."""

    query: PersonQuery
    subject: str


@dataclass(slots=True)
class _Translation:
    """One incoming message after the checks: answered here, or to send."""

    failed: list[QueryResult] = field(default_factory=list)
    send: list[_Sent] = field(default_factory=list)


class _Window:
    """Queries admitted and not yet taken by the caller, at most ``limit`` (a message larger
    than the limit is admitted alone). One reserver: the stream's reader."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._used = 0
        self._room = asyncio.Event()

    async def reserve(self, count: int) -> None:
        while self._used and self._used + count > self._limit:
            self._room.clear()
            await self._room.wait()
        self._used += count

    def release(self, count: int) -> None:
        self._used -= count
        self._room.set()


class _End:
    """The last item of the result queue: everything admitted has been answered."""


_END = _End()
_Item = list[QueryResult] | BaseException | _End


def _failed(query_id: str, reason: str) -> QueryResult:
    return QueryResult(query_id=query_id, status=common_pb2.QUERY_STATUS_FAILED, reason=reason)


def _relayed(sent: _Sent) -> RelayedRow:
    query = sent.query
    return (query.query_id, sent.subject, query.procedure, query.provider, query.data_items)


def _subject_problem(subject: Subject | None) -> str:
    """Why a query cannot be relayed for this subject; empty when it can."""
    if subject is None:
        return relay.UNKNOWN_ADDRESS_NUMBER
    unified_number, code_state = subject
    if unified_number is None:
        return relay.AWAITING_MANUAL_LINK
    if code_state is not CodeState.ACQUIRED:
        return relay.NO_LINKAGE_CODE
    return ""


class _StreamRelay:
    """One downstream stream: its reader, its upstream stream and the results between them."""

    def __init__(self, runtime: Runtime, scope: BusinessSystemScope, max_in_flight: int) -> None:
        self._runtime = runtime
        self._scope = scope
        self._actor = relay.actor_of(runtime, scope)
        self._identity = runtime.scopes.identity_of(scope.system)
        self._window = _Window(max_in_flight)
        self._sent: dict[str, deque[_Sent]] = {}  # namespaced id → queries awaiting a result
        self._out: asyncio.Queue[_Item] = asyncio.Queue()
        self._upstream: asyncio.Queue[list[QueryRequest] | None] = asyncio.Queue()
        self._input_error: Exception | None = None

    async def run(
        self, messages: AsyncIterator[Sequence[Incoming]], deadline: float | None
    ) -> AsyncIterator[list[QueryResult]]:
        reader = asyncio.create_task(self._read(messages))
        answers = asyncio.create_task(self._answer(deadline))
        try:
            while not isinstance(item := await self._out.get(), _End):
                if isinstance(item, BaseException):
                    raise item
                yield item
                self._window.release(len(item))
            if self._input_error is not None:
                raise self._input_error  # a bad message: after everything admitted is answered
        finally:
            for task in (reader, answers):
                task.cancel()
            await asyncio.gather(reader, answers, return_exceptions=True)

    # --- from the caller --------------------------------------------------------------------

    async def _read(self, messages: AsyncIterator[Sequence[Incoming]]) -> None:
        try:
            async for message in messages:
                await self._window.reserve(len(message))
                translate = functools.partial(self._translate, message=message)
                translation = await self._runtime.transaction(translate)
                if translation.failed:
                    self._out.put_nowait(translation.failed)
                if translation.send:
                    self._upstream.put_nowait(self._requests(translation.send))
        except Exception as error:  # the input ended badly; what was admitted is still answered
            self._input_error = error
        finally:
            self._upstream.put_nowait(None)

    def _translate(self, repo: Repository, message: Sequence[Incoming]) -> _Translation:
        """Checks, then one read of every subject; denials recorded in the same transaction."""
        out = _Translation()
        refused: list[tuple[PersonQuery, str]] = []
        inside: list[PersonQuery] = []
        for query in message:
            if isinstance(query, Rejected):
                out.failed.append(_failed(query.query_id, query.reason))
                continue
            refusal = self._scope.query_refusal(query.procedure, query.data_items)
            if refusal is None:
                inside.append(query)
            else:
                refused.append((query, refusal.reason))
        # Decided: now look up (refused ones only to name the person in their record).
        wanted = {q.address_number for q in inside} | {q.address_number for q, _ in refused}
        subjects = repo.subjects(self._scope.system, wanted) if wanted else {}
        denials = [self._denial(query, reason, subjects) for query, reason in refused]
        out.failed.extend(_failed(query.query_id, reason) for query, reason in refused)
        for query in inside:
            subject = subjects.get(query.address_number)
            problem = _subject_problem(subject)
            if problem:
                out.failed.append(_failed(query.query_id, problem))
            else:
                assert subject is not None
                assert subject[0] is not None
                out.send.append(_Sent(query, subject[0]))
        self._runtime.audit.append(repo.session, denials)
        return out

    def _denial(
        self, query: PersonQuery, reason: str, subjects: dict[str, Subject]
    ) -> AccessRecord:
        unified_number = subjects.get(query.address_number, (None, None))[0] or ""
        return self._record(
            query, unified_number, RecordEvent.ACCESS_DENIED, Outcome.DENIED, reason
        )

    def _requests(self, sent: list[_Sent]) -> list[QueryRequest]:
        """Upstream requests for ``sent``, each remembered until its result comes back."""
        requests = []
        for item in sent:
            query_id = relay.namespaced(self._scope.system, item.query.query_id)
            self._sent.setdefault(query_id, deque()).append(item)
            requests.append(
                QueryRequest(
                    query_id=query_id,
                    requester_capacity=self._scope.capacity,
                    procedure=item.query.procedure,
                    provider=item.query.provider,
                    data_items=item.query.data_items,
                    unified_number=item.subject,
                    on_date=item.query.on_date,
                    business_system=self._identity,
                )
            )
        return requests

    # --- from upstream ----------------------------------------------------------------------

    async def _answer(self, deadline: float | None) -> None:
        """Relay on one upstream stream, opened with the first query to send (if any)."""
        try:
            first = await self._upstream.get()
            if first is not None:
                stream = self._runtime.server.stream_queries(self._batches(first), deadline)
                async for results in stream:
                    self._out.put_nowait(await self._settle(results))
            if self._sent:
                raise Unavailable(UPSTREAM_ENDED_EARLY, "the intermediate server ended the batch")
        except LinkageError as error:
            await self._fail_outstanding(upper_snake(error.reason))
            self._out.put_nowait(error)
        except Exception as error:
            self._out.put_nowait(error)
        else:
            self._out.put_nowait(_END)

    async def _batches(self, first: list[QueryRequest]) -> AsyncIterator[list[QueryRequest]]:
        batch: list[QueryRequest] | None = first
        while batch is not None:
            yield batch
            batch = await self._upstream.get()

    def _take(self, query_id: str) -> _Sent | None:
        waiting = self._sent.get(query_id)
        if not waiting:
            return None  # not ours (cannot happen): dropped
        item = waiting.popleft()
        if not waiting:
            del self._sent[query_id]
        return item

    async def _settle(self, results: list[QueryResult]) -> list[QueryResult]:
        """Record one upstream message of results, then hand them over under the caller's ids."""
        answered = [(r, sent) for r in results if (sent := self._take(r.query_id)) is not None]
        await self._runtime.transaction(lambda repo: self._store(repo, answered))
        for result, sent in answered:
            result.query_id = sent.query.query_id
        return [result for result, _ in answered]

    def _store(self, repo: Repository, answered: list[tuple[QueryResult, _Sent]]) -> None:
        """The relayed queries not yet known (a retry keeps the first) and one ledger append."""
        first: dict[str, _Sent] = {}
        for _, sent in answered:
            first.setdefault(sent.query.query_id, sent)
        known = repo.relayed_query_ids(self._scope.system, first.keys())
        repo.add_relayed_queries(
            self._scope.system,
            self._runtime.clock(),
            [_relayed(sent) for query_id, sent in first.items() if query_id not in known],
        )
        records = [
            self._record(
                sent.query,
                sent.subject,
                RecordEvent.QUERY_REQUESTED,
                relay.outcome_of(result),
                upper_snake(result.reason),
                result.permit_id,
            )
            for result, sent in answered
        ]
        self._runtime.audit.append(repo.session, records)

    async def _fail_outstanding(self, reason: str) -> None:
        """The stream failed upstream: record every query still waiting as FAILED (one append).
        Their callers learn it from the stream's error and may resend (ids are idempotent)."""
        waiting = [sent for queue in self._sent.values() for sent in queue]
        self._sent.clear()
        if not waiting:
            return
        records = [
            self._record(s.query, s.subject, RecordEvent.FAILED, Outcome.FAILED, reason)
            for s in waiting
        ]
        await self._runtime.transaction(
            lambda repo: self._runtime.audit.append(repo.session, records)
        )

    def _record(
        self,
        query: PersonQuery,
        subject: str,
        event: RecordEvent,
        outcome: Outcome,
        reason: str,
        permit_id: str = "",
    ) -> AccessRecord:
        return relay.query_record(
            self._runtime, self._actor, self._scope, query, subject, event, outcome, reason,
            permit_id,
        )  # fmt: skip


async def stream_person_queries(
    runtime: Runtime,
    scope: BusinessSystemScope,
    messages: AsyncIterator[Sequence[Incoming]],
    *,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    deadline: float | None = None,
) -> AsyncIterator[list[QueryResult]]:
    """Results of the queries in ``messages``, one per query, in any order, as they complete.

    A bad message (say, too large) raised by ``messages`` ends the input: the queries admitted
    before it are still answered, then its error is raised. An upstream failure of the whole
    stream is raised as its ``LinkageError``. ``deadline`` (seconds) bounds the upstream stream,
    say by the caller's own deadline; None: no bound.
    """
    if max_in_flight < 1:
        raise ValueError("max_in_flight must be at least 1")
    async for results in _StreamRelay(runtime, scope, max_in_flight).run(messages, deadline):
        yield results
