"""Query batches (一括照会) and late answers through the network, end to end.

Owns the orchestration of SubmitQueries and DeliverLateAnswers: batch-level checks (the
requester is registered, holds the capacity it claims, and signed the requester key), then
three phases per batch so that nothing is half-written and no query is routed twice:

1. admit (one transaction): read the stored dispositions of repeated query ids, translate the
   new queries' codes in bulk, decide each (``permits``), insert every disposition and its
   access records together;
2. route (no transaction open): one signed PermitBatch per provider, all providers at once;
3. settle (one transaction): store each answer batch as opaque bytes and mark its permits, or
   mark them FAILED, with the records of what happened.

Must never: route a query id a second time, hold a database transaction across a network call,
read answer content, or import grpc. Blocking work runs in worker threads.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.protobuf.message import DecodeError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from linkage.db import unit_of_work
from linkage.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from linkage.logs import get_logger
from linkage.records.ledger import Ledger
from linkage.records.model import AccessRecord, Outcome, RecordEvent
from linkage.v1 import common_pb2, payloads_pb2
from simulator.network import ledger, repository
from simulator.network.directory import Directory, OrgEntry
from simulator.network.models import Permit
from simulator.network.permits import (
    DENIED,
    FAILED,
    PermitIssuer,
    QueryRequest,
    RequesterKeyInfo,
    Verdict,
    verify_requester_key,
)
from simulator.network.routing import RouteError, Router, RouteResult, batch_id, batch_id_of

log = get_logger(__name__)

QUERY_ID_REUSED = "QUERY_ID_REUSED"
ADMIT_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class BatchRequest:
    """A validated SubmitQueries request."""

    requester: str
    requester_capacity: str
    requester_key: common_pb2.SignedEnvelope
    queries: tuple[QueryRequest, ...]


@dataclass(frozen=True, slots=True)
class Disposition:
    """What the network did with one query."""

    query_id: str
    permit_id: str
    status: common_pb2.QueryStatus.ValueType
    reason: str


@dataclass(frozen=True, slots=True)
class BatchResult:
    """Dispositions in request order and the answer batches that carry the routed ones."""

    dispositions: list[Disposition]
    answer_batches: list[common_pb2.SignedEnvelope]


@dataclass(slots=True)
class _Admitted:
    """Phase 1's result: stored dispositions of repeats, decisions on new queries."""

    repeats: dict[str, Disposition]
    stored_batches: list[bytes]
    decided: list[Verdict]


class QueryDesk:
    """SubmitQueries and DeliverLateAnswers without the gRPC edge."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        directory: Directory,
        issuer: PermitIssuer,
        router: Router,
        records: Ledger,
        clock: Callable[[], datetime],
    ) -> None:
        self._sessions = sessions
        self._directory = directory
        self._issuer = issuer
        self._router = router
        self._records = records
        self._clock = clock

    # --- SubmitQueries ------------------------------------------------------------------------

    async def submit(self, request: BatchRequest) -> BatchResult:
        now = self._clock()
        codes = [query.provider for query in request.queries]
        # The requester and every provider in one directory read (from the cache, or one thread
        # hand-off): the providers' entries are only read here, checked below after the
        # requester's.
        wanted = list(dict.fromkeys([request.requester, *codes]))
        providers = self._directory.cached_many(wanted)
        if providers is None:
            providers = await asyncio.to_thread(self._directory.get_many, wanted)
        requester = providers.get(request.requester)
        if requester is None:
            raise PermissionDenied(
                "ORGANIZATION_NOT_REGISTERED",
                f"{request.requester} is not in the network directory",
            )
        if request.requester_capacity not in requester.capacities:
            raise PermissionDenied(
                "CAPACITY_NOT_HELD",
                f"{request.requester} does not act as {request.requester_capacity!r}",
            )
        key = await self._requester_key(request.requester_key, requester, now)
        admitted = await asyncio.to_thread(self._admit_with_retry, request, providers, now)
        groups = _groups(admitted.decided, providers)
        results = await self._router.route(key, groups, now) if groups else []
        if results:
            await asyncio.to_thread(self._settle, request, admitted.decided, results)
        return _result(request, admitted, results)

    async def _registered(self, code: str) -> OrgEntry:
        entry = await asyncio.to_thread(self._directory.get, code)
        if entry is None:
            raise PermissionDenied(
                "ORGANIZATION_NOT_REGISTERED", f"{code} is not in the network directory"
            )
        return entry

    async def _requester_key(
        self, envelope: common_pb2.SignedEnvelope, requester: OrgEntry, now: datetime
    ) -> RequesterKeyInfo:
        try:
            return verify_requester_key(envelope, requester, now)
        except InvalidArgument:
            # The requester may have rotated its signing key on another replica a moment ago.
            self._directory.invalidate(requester.code)
            fresh = await self._registered(requester.code)
            return verify_requester_key(envelope, fresh, now)

    def _admit_with_retry(
        self, request: BatchRequest, providers: Mapping[str, OrgEntry | None], now: datetime
    ) -> _Admitted:
        for _ in range(ADMIT_ATTEMPTS - 1):
            try:
                return self._admit(request, providers, now)
            except IntegrityError:
                # A concurrent retry of the same query ids committed first: its rows now
                # exist, so the next pass treats them as repeats and routes nothing twice.
                continue
        return self._admit(request, providers, now)

    def _admit(
        self, request: BatchRequest, providers: Mapping[str, OrgEntry | None], now: datetime
    ) -> _Admitted:
        query_ids = [query.query_id for query in request.queries]
        with unit_of_work(self._sessions) as session:
            stored = repository.permits_by_query(session, request.requester, query_ids)
            new = [query for query in request.queries if query.query_id not in stored]
            codes = list(dict.fromkeys(query.linkage_code for query in new))
            person_keys = repository.person_keys(session, request.requester, codes)
            decided = self._issuer.decide(
                requester=request.requester,
                requester_capacity=request.requester_capacity,
                queries=new,
                providers=providers,
                person_keys=person_keys,
                now=now,
            )
            repository.insert_permits(session, [_row(request, d, now) for d in decided])
            self._records.append_many(
                session, ledger.LEDGER_ID, _admission_records(request, decided, now)
            )
            repeats = {
                query.query_id: _repeat(stored[query.query_id], query)
                for query in request.queries
                if query.query_id in stored
            }
            batch_ids = _stored_batch_ids(stored, repeats)
            stored_batches = repository.answer_batches(session, batch_ids)
        return _Admitted(repeats, [stored_batches[i] for i in batch_ids], decided)

    def _settle(
        self, request: BatchRequest, decided: Sequence[Verdict], results: Sequence[RouteResult]
    ) -> None:
        now = self._clock()
        by_permit = {d.permit.permit_id: d for d in decided if d.permit is not None}
        records: list[AccessRecord] = []
        with unit_of_work(self._sessions) as session:
            for result in results:
                if result.answer_batch is not None:
                    raw = result.answer_batch.SerializeToString(deterministic=True)
                    stored_id = batch_id_of(raw)
                    repository.add_answer_batch(
                        session,
                        batch_id=stored_id,
                        requester=request.requester,
                        provider=result.provider,
                        kind="answer",
                        envelope=raw,
                        now=now,
                    )
                    repository.set_answer_batch(session, result.permit_ids, stored_id, now)
                else:
                    repository.fail_permits(session, result.permit_ids, FAILED, result.failure, now)
                records.extend(
                    _route_record(request.requester, by_permit[permit_id], result, now)
                    for permit_id in result.permit_ids
                )
            self._records.append_many(session, ledger.LEDGER_ID, records)
        failed = [r for r in results if r.answer_batch is None]
        if failed:
            log.warning(
                "routing_failed",
                providers=[r.provider for r in failed],
                reasons=sorted({r.failure for r in failed}),
            )

    # --- DeliverLateAnswers -------------------------------------------------------------------

    async def deliver_late(self, provider_code: str, envelope: common_pb2.SignedEnvelope) -> int:
        """Route a provider's late answer batch to the requester's platform."""
        provider = await self._registered(provider_code)
        if envelope.signer != provider_code:
            raise PermissionDenied("NOT_THE_SIGNER", "the answer batch is signed by another party")
        if not await self._router.signed_by(envelope, provider, self._clock()):
            raise InvalidArgument(
                "BAD_SIGNATURE",
                "the answer batch signature does not verify",
                violations=[FieldViolation("answer_batch", "signature does not verify")],
            )
        batch = _answer_batch(envelope)
        if batch.provider != provider_code:
            raise PermissionDenied("NOT_THE_PROVIDER", "the answer batch names another provider")
        permit_ids = [answer.permit_id for answer in batch.answers]
        facts = await asyncio.to_thread(self._accept_late, batch, permit_ids, envelope)
        requester = await asyncio.to_thread(self._directory.get, batch.requester)
        try:
            if requester is None:
                raise RouteError("REQUESTER_NOT_FOUND", unavailable=False)
            accepted = await self._router.deliver_late(requester, envelope)
        except RouteError as failure:
            await asyncio.to_thread(self._late_outcome, facts, failure.reason)
            if failure.unavailable:
                raise Unavailable(failure.reason, "the requester is unreachable; retry") from None
            raise FailedPrecondition(failure.reason, "the requester refused the answers") from None
        await asyncio.to_thread(self._late_outcome, facts, "")
        return accepted

    def _accept_late(
        self,
        batch: payloads_pb2.AnswerBatch,
        permit_ids: list[str],
        envelope: common_pb2.SignedEnvelope,
    ) -> list[tuple[ledger.QueryFacts, str]]:
        """Check the permits, store the batch, record its receipt; returns the record facts."""
        now = self._clock()
        stored_id = batch_id(envelope)
        with unit_of_work(self._sessions) as session:
            permits = repository.permits_by_id(session, permit_ids)
            _check_late_permits(batch, permit_ids, permits, stored_id)
            repository.add_answer_batch(
                session,
                batch_id=stored_id,
                requester=batch.requester,
                provider=batch.provider,
                kind="late",
                envelope=envelope.SerializeToString(deterministic=True),
                now=now,
            )
            repository.set_late_answer_batch(session, permit_ids, stored_id, now)
            facts = [
                (_facts(permits[pid]), permits[pid].provider_linkage_code) for pid in permit_ids
            ]
            self._records.append_many(
                session,
                ledger.LEDGER_ID,
                [
                    ledger.by_organization(
                        RecordEvent.ANSWER_RECEIVED,
                        fact,
                        actor=batch.provider,
                        subject=subject,
                        outcome=Outcome.OK,
                        at=now,
                        reason="LATE_ANSWER",
                    )
                    for fact, subject in facts
                ],
            )
        return facts

    def _late_outcome(self, facts: Sequence[tuple[ledger.QueryFacts, str]], failure: str) -> None:
        now = self._clock()
        event = RecordEvent.FAILED if failure else RecordEvent.ANSWER_DELIVERED
        outcome = Outcome.FAILED if failure else Outcome.OK
        records = [
            ledger.by_network(event, fact, subject=subject, outcome=outcome, at=now, reason=failure)
            for fact, subject in facts
        ]
        with unit_of_work(self._sessions) as session:
            self._records.append_many(session, ledger.LEDGER_ID, records)


# --- helpers: pure functions over the phases' data ----------------------------------------------


def _row(request: BatchRequest, decided: Verdict, now: datetime) -> tuple[Any, ...]:
    """The permits row of one decision, in ``repository.PERMIT_COLUMNS`` order."""
    query, permit = decided.query, decided.permit
    return (
        request.requester,
        query.query_id,
        query.digest(),
        permit.permit_id if permit is not None else None,
        query.provider,
        query.procedure,
        query.data_items,
        permit.provider_linkage_code if permit is not None else "",
        decided.status,
        decided.reason,
        decided.expires_at,
        None,
        None,
        now,
        now,
    )


def _facts(permit: Permit) -> ledger.QueryFacts:
    return ledger.QueryFacts(
        requester=permit.requester,
        provider=permit.provider,
        procedure=permit.procedure,
        data_items=tuple(permit.data_items),
        query_id=permit.query_id,
        permit_id=permit.permit_id or "",
    )


def _admission_records(
    request: BatchRequest, decided: Sequence[Verdict], now: datetime
) -> list[AccessRecord]:
    """Per new query: the request (by the requester), then the network's decision."""
    records: list[AccessRecord] = []
    append = records.append
    requester = request.requester
    for d in decided:
        query = d.query
        record = _query_record(requester, query, now)
        append(
            record(
                RecordEvent.QUERY_REQUESTED,
                by_network=False,
                actor=requester,
                permit_id="",
                subject=query.linkage_code,
                outcome=Outcome.OK,
            )
        )
        permit = d.permit
        if permit is not None:
            append(
                record(
                    RecordEvent.PERMIT_ISSUED,
                    by_network=True,
                    actor="",
                    permit_id=permit.permit_id,
                    subject=permit.provider_linkage_code,
                    outcome=Outcome.OK,
                )
            )
        else:
            denied = d.status == DENIED
            append(
                record(
                    RecordEvent.QUERY_DENIED if denied else RecordEvent.FAILED,
                    by_network=True,
                    actor="",
                    permit_id="",
                    subject=query.linkage_code,  # before translation: the requester's code
                    outcome=Outcome.DENIED if denied else Outcome.FAILED,
                    reason=d.reason,
                )
            )
    return records


def _query_record(
    requester: str, query: QueryRequest, now: datetime
) -> Callable[..., AccessRecord]:
    """``ledger.query_record`` with what every record of ``query`` says the same."""
    return functools.partial(
        ledger.query_record,
        requester=requester,
        provider=query.provider,
        procedure=query.procedure,
        data_items=query.data_items,
        query_id=query.query_id,
        at=now,
    )


def _route_record(
    requester: str, decided: Verdict, result: RouteResult, now: datetime
) -> AccessRecord:
    """The network's record of routing one permit: ``QUERY_ROUTED`` for the round trip (sent to
    the provider, its sealed answer batch received and passed back in the same call), or
    ``FAILED`` with the routing failure."""
    permit = decided.permit
    assert permit is not None
    ok = result.answer_batch is not None
    return _query_record(requester, decided.query, now)(
        RecordEvent.QUERY_ROUTED if ok else RecordEvent.FAILED,
        by_network=True,
        actor="",
        permit_id=permit.permit_id,
        subject=permit.provider_linkage_code,
        outcome=Outcome.OK if ok else Outcome.FAILED,
        reason="" if ok else result.failure,
    )


def _repeat(stored: Permit, query: QueryRequest) -> Disposition:
    if stored.request_digest != query.digest():
        # Same id, different question: answering with the stored result would mislead.
        return Disposition(query.query_id, "", FAILED, QUERY_ID_REUSED)
    status = common_pb2.QueryStatus.ValueType(stored.status)
    return Disposition(query.query_id, stored.permit_id or "", status, stored.reason)


def _stored_batch_ids(
    stored: Mapping[str, Permit], repeats: Mapping[str, Disposition]
) -> list[str]:
    """The answer batches (first and late) that carry the repeated queries, each once."""
    ids: dict[str, None] = {}
    for query_id, disposition in repeats.items():
        if disposition.reason == QUERY_ID_REUSED:
            continue
        permit = stored[query_id]
        for stored_id in (permit.answer_batch_id, permit.late_answer_batch_id):
            if stored_id:
                ids[stored_id] = None
    return list(ids)


def _groups(
    decided: Sequence[Verdict], providers: Mapping[str, OrgEntry | None]
) -> list[tuple[OrgEntry, list[payloads_pb2.Permit]]]:
    """Permits grouped per provider, in first-seen order."""
    grouped: dict[str, list[payloads_pb2.Permit]] = {}
    for d in decided:
        if d.permit is not None:
            grouped.setdefault(d.permit.provider, []).append(d.permit)
    result: list[tuple[OrgEntry, list[payloads_pb2.Permit]]] = []
    for code, permits in grouped.items():
        provider = providers[code]
        assert provider is not None  # a permit is issued only for a known provider
        result.append((provider, permits))
    return result


def _result(
    request: BatchRequest, admitted: _Admitted, results: Sequence[RouteResult]
) -> BatchResult:
    failures = {
        permit_id: result.failure
        for result in results
        if result.answer_batch is None
        for permit_id in result.permit_ids
    }
    fresh = {d.query.query_id: d for d in admitted.decided}
    dispositions: list[Disposition] = []
    for query in request.queries:
        repeat = admitted.repeats.get(query.query_id)
        if repeat is not None:
            dispositions.append(repeat)
            continue
        d = fresh[query.query_id]
        permit_id = d.permit.permit_id if d.permit is not None else ""
        if permit_id in failures:
            dispositions.append(Disposition(query.query_id, permit_id, FAILED, failures[permit_id]))
        else:
            dispositions.append(Disposition(query.query_id, permit_id, d.status, d.reason))
    batches = [r.answer_batch for r in results if r.answer_batch is not None]
    if not admitted.stored_batches:
        return BatchResult(dispositions, batches)
    seen = {batch_id(b) for b in batches}
    for raw in admitted.stored_batches:
        envelope = common_pb2.SignedEnvelope.FromString(raw)
        if batch_id(envelope) not in seen:
            seen.add(batch_id(envelope))
            batches.append(envelope)
    return BatchResult(dispositions, batches)


def _answer_batch(envelope: common_pb2.SignedEnvelope) -> payloads_pb2.AnswerBatch:
    """The routing metadata of an answer batch (provider, requester, permit ids); the sealed
    content stays sealed."""
    try:
        batch = payloads_pb2.AnswerBatch.FromString(envelope.body)
    except DecodeError as error:
        raise InvalidArgument(
            "MALFORMED_ANSWER_BATCH",
            "the answer batch body is not an AnswerBatch",
            violations=[FieldViolation("answer_batch.body", "not an AnswerBatch")],
        ) from error
    permit_ids = [answer.permit_id for answer in batch.answers]
    if (
        not permit_ids
        or any(not pid for pid in permit_ids)
        or len(set(permit_ids)) != len(permit_ids)
    ):
        raise InvalidArgument(
            "MALFORMED_ANSWER_BATCH",
            "an answer batch needs answers with distinct permit ids",
            violations=[FieldViolation("answer_batch.body.answers", "missing or repeated permit")],
        )
    return batch


def _check_late_permits(
    batch: payloads_pb2.AnswerBatch,
    permit_ids: Sequence[str],
    permits: Mapping[str, Permit],
    stored_id: str,
) -> None:
    if any(pid not in permits for pid in permit_ids):
        raise NotFound("PERMIT_NOT_FOUND", "an answer names a permit the network never issued")
    for pid in permit_ids:
        permit = permits[pid]
        if permit.provider != batch.provider:
            raise PermissionDenied(
                "NOT_THE_PERMIT_PROVIDER", "a permit was issued to another provider"
            )
        if permit.requester != batch.requester:
            raise InvalidArgument(
                "ROUTE_MISMATCH",
                "the answer batch names another requester than its permits",
                violations=[FieldViolation("answer_batch.body.requester", "not the permit's")],
            )
        if permit.late_answer_batch_id not in (None, stored_id):
            # One late answer per permit; a provider retrying must resend the same bytes.
            raise AlreadyExists(
                "LATE_ANSWER_ALREADY_DELIVERED", "a late answer for this permit was delivered"
            )
