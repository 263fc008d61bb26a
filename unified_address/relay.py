"""Relays from business systems to the intermediate server, each inside the system's scope.

Owns the door of every business-system call: ``authorize`` turns an authenticated identity into
a configured ``BusinessSystemScope`` (or refuses, recorded); ``push_duplicates``,
``query_person`` and ``get_query_result`` check the scope first (a refusal is recorded with
event ACCESS_DENIED before PERMISSION_DENIED is raised), translate the system's address numbers
into unified numbers, namespace its ids by system (``<system>:<id>``) so no two systems can
touch each other's queries or imports, and record the access with the system's identity.

The batch path (``StreamPersonQueries``) lives in ``unified_address.batch`` and reuses the
checks, namespacing and records here.

Must never: look a person up before the scope check decides (AIP-131), forward an individual
number or an address number to the intermediate server, or let one system read another's query.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from linkage.errors import (
    FailedPrecondition,
    FieldViolation,
    LinkageError,
    PermissionDenied,
    Unauthenticated,
)
from linkage.records.model import AccessRecord, ActorKind, Outcome, RecordEvent
from linkage.v1 import common_pb2, intermediate_server_pb2
from unified_address.audit import Actor, upper_snake
from unified_address.models import CodeState, PersonLink
from unified_address.ports import DuplicateRow, ImportOutcome, QueryRequest
from unified_address.repository import Repository
from unified_address.runtime import Runtime
from unified_address.scope import BusinessSystemScope

__all__ = [
    "AddressedRow",
    "PersonQuery",
    "actor_of",
    "authorize",
    "get_query_result",
    "namespaced",
    "outcome_of",
    "push_duplicates",
    "query_person",
    "query_record",
]

UNKNOWN_ADDRESS_NUMBER = "UNKNOWN_ADDRESS_NUMBER"
AWAITING_MANUAL_LINK = "AWAITING_MANUAL_LINK"
NO_LINKAGE_CODE = "NO_LINKAGE_CODE"
CALLER_NOT_ALLOWED = "CALLER_NOT_ALLOWED"
# Naming every bad row of a 10000-row push would flood the error; the first ones suffice.
MAX_NAMED_ROWS = 20

_STATUS_OUTCOME = {
    common_pb2.QUERY_STATUS_PROVIDED: Outcome.PROVIDED,
    common_pb2.QUERY_STATUS_NO_DATA: Outcome.NO_DATA,
    common_pb2.QUERY_STATUS_DENIED: Outcome.DENIED,
    common_pb2.QUERY_STATUS_HELD_FOR_REVIEW: Outcome.HELD,
    common_pb2.QUERY_STATUS_DECLINED: Outcome.DECLINED,
    common_pb2.QUERY_STATUS_FAILED: Outcome.FAILED,
    common_pb2.QUERY_STATUS_IN_FLIGHT: Outcome.OK,
}


@dataclass(frozen=True, slots=True)
class AddressedRow:
    """One duplicate from a business system, by its address number."""

    address_number: str
    value: common_pb2.DuplicateValue
    auto_response_disabled: bool = False


@dataclass(frozen=True, slots=True)
class PersonQuery:
    """A query from a business system, by its address number and its own query id."""

    query_id: str
    procedure: str
    provider: str
    data_items: tuple[str, ...]
    address_number: str
    on_date: str = ""


def namespaced(system: str, local_id: str) -> str:
    """The id a system's query or import has at the intermediate server."""
    return f"{system}:{local_id}"


def actor_of(runtime: Runtime, scope: BusinessSystemScope) -> Actor:
    """The business system as records name it: its certificate identity."""
    return Actor.business_system(runtime.scopes.identity_of(scope.system))


# --- the door ------------------------------------------------------------------------------


async def authorize(runtime: Runtime, identity: str) -> BusinessSystemScope:
    """The scope of the calling business system; refused (and recorded) for anyone else."""
    if not identity:
        raise Unauthenticated("NO_CLIENT_IDENTITY", "a client certificate is required")
    system = runtime.scopes.system_of(identity)
    scope = runtime.scopes.get(system) if system else None
    if scope is not None:
        return scope
    refusal = PermissionDenied(
        CALLER_NOT_ALLOWED,
        f"{identity} is not a business system of organization {runtime.organization}",
    )
    shown = identity if identity.isprintable() else "<unprintable>"
    actor = (
        Actor.business_system(shown)
        if shown.startswith("bs.")
        else Actor(ActorKind.ORGANIZATION, shown)
    )
    await _append(
        runtime,
        [
            runtime.audit.record(
                actor, RecordEvent.ACCESS_DENIED, Outcome.DENIED, reason=refusal.reason
            )
        ],
    )
    raise refusal


async def _append(runtime: Runtime, records: Sequence[AccessRecord]) -> None:
    """Records with no other change: a transaction of their own."""
    await runtime.transaction(lambda repo: runtime.audit.append(repo.session, records))


# --- duplicates ----------------------------------------------------------------------------


async def push_duplicates(
    runtime: Runtime, scope: BusinessSystemScope, import_id: str, rows: Sequence[AddressedRow]
) -> ImportOutcome:
    """Relay duplicates (副本) to the intermediate server by unified number, all or nothing."""
    actor = actor_of(runtime, scope)
    refusal = scope.push_refusal(row.value.data_item for row in rows)
    if refusal is not None:
        denial = runtime.audit.record(
            actor, RecordEvent.ACCESS_DENIED, Outcome.DENIED, reason=refusal.reason,
            data_items=refusal.metadata["dataItems"].split(","),
        )  # fmt: skip
        await _append(runtime, [denial])
        raise refusal
    links = await runtime.transaction(
        lambda repo: repo.links(scope.system, {row.address_number for row in rows})
    )
    subjects = _unified_numbers(rows, links)
    upstream = [
        DuplicateRow(subject, row.value, row.auto_response_disabled)
        for subject, row in zip(subjects, rows, strict=True)
    ]
    try:
        outcome = await runtime.server.import_duplicates(
            namespaced(scope.system, import_id), runtime.scopes.identity_of(scope.system), upstream
        )
    except LinkageError as error:
        await _append(
            runtime, _push_records(runtime, actor, subjects, rows, upper_snake(error.reason))
        )
        raise _as_push_error(error) from None
    reason = "ALREADY_IMPORTED" if outcome.already_imported else ""
    await _append(runtime, _push_records(runtime, actor, subjects, rows, reason, ok=True))
    return outcome


def _unified_numbers(rows: Sequence[AddressedRow], links: dict[str, PersonLink]) -> list[str]:
    """Each row's unified number; FAILED_PRECONDITION naming the rows that have none."""
    subjects: list[str] = []
    violations: list[FieldViolation] = []
    reasons: list[str] = []
    for position, row in enumerate(rows):
        link = links.get(row.address_number)
        if link is not None and link.unified_number is not None:
            subjects.append(link.unified_number)
            continue
        reason, problem = (
            (UNKNOWN_ADDRESS_NUMBER, "is not registered")
            if link is None
            else (AWAITING_MANUAL_LINK, "awaits a manual link")
        )
        reasons.append(reason)
        if len(violations) < MAX_NAMED_ROWS:
            field = f"duplicates[{position}].address_number"
            violations.append(FieldViolation(field, f"the address number {problem}"))
    if violations:
        raise FailedPrecondition(
            reasons[0],
            f"{violations[0].field} has no unified number ({len(reasons)} rows); "
            "nothing was pushed",
            violations=tuple(violations),
        )
    return subjects


def _as_push_error(error: LinkageError) -> LinkageError:
    """The server's error with its row references in the caller's terms (records → duplicates:
    one push is one chunk, so row positions are the same)."""
    if not error.violations:
        return error
    violations = tuple(
        FieldViolation(v.field.replace("records[", "duplicates[", 1), v.description)
        for v in error.violations
    )
    return type(error)(error.reason, error.message, dict(error.metadata), violations)


def _push_records(
    runtime: Runtime,
    actor: Actor,
    subjects: Sequence[str],
    rows: Sequence[AddressedRow],
    reason: str,
    *,
    ok: bool = False,
) -> list[AccessRecord]:
    """One record per person pushed, with the data items pushed for that person."""
    items: defaultdict[str, set[str]] = defaultdict(set)
    for subject, row in zip(subjects, rows, strict=True):
        items[subject].add(row.value.data_item)
    event = RecordEvent.DUPLICATES_IMPORTED if ok else RecordEvent.FAILED
    outcome = Outcome.OK if ok else Outcome.FAILED
    return [
        runtime.audit.record(
            actor, event, outcome, subject=subject, data_items=sorted(its), reason=reason
        )
        for subject, its in items.items()
    ]


# --- queries -------------------------------------------------------------------------------


async def query_person(
    runtime: Runtime, scope: BusinessSystemScope, query: PersonQuery
) -> intermediate_server_pb2.QueryResult:
    """Relay one query by unified number, in the system's capacity; the outcome as reported."""
    actor = actor_of(runtime, scope)
    refusal = scope.query_refusal(query.procedure, query.data_items)
    if refusal is not None:
        # Looked up only to name the person in the record; the caller learns nothing of it.
        link = await runtime.transaction(lambda r: r.link(scope.system, query.address_number))
        subject = (link.unified_number or "") if link is not None else ""
        denial = query_record(
            runtime, actor, scope, query, subject, RecordEvent.ACCESS_DENIED, Outcome.DENIED,
            refusal.reason,
        )  # fmt: skip
        await _append(runtime, [denial])
        raise refusal
    subject = await runtime.transaction(lambda repo: _subject_with_code(repo, scope, query))
    request = QueryRequest(
        query_id=namespaced(scope.system, query.query_id),
        requester_capacity=scope.capacity,
        procedure=query.procedure,
        provider=query.provider,
        data_items=query.data_items,
        unified_number=subject,
        on_date=query.on_date,
        business_system=runtime.scopes.identity_of(scope.system),
    )
    try:
        result = await runtime.server.submit_query(request)
    except LinkageError as error:
        failure = query_record(
            runtime, actor, scope, query, subject, RecordEvent.FAILED, Outcome.FAILED,
            upper_snake(error.reason),
        )  # fmt: skip
        await _append(runtime, [failure])
        raise
    await runtime.transaction(
        lambda repo: _store_query(runtime, repo, actor, scope, query, subject, result)
    )
    return _as_callers(result, query.query_id)


def _subject_with_code(repo: Repository, scope: BusinessSystemScope, query: PersonQuery) -> str:
    # The batch path's driver-level reads of the subject, not ORM loads.
    subject = repo.subjects(scope.system, {query.address_number}).get(query.address_number)
    if subject is None:
        raise _no_subject(UNKNOWN_ADDRESS_NUMBER, "is not registered")
    unified_number, code_state = subject
    if unified_number is None:
        raise _no_subject(AWAITING_MANUAL_LINK, "awaits a manual link")
    if code_state != CodeState.ACQUIRED:
        raise FailedPrecondition(NO_LINKAGE_CODE, "the person has no linkage code yet")
    return unified_number


def _no_subject(reason: str, problem: str) -> FailedPrecondition:
    return FailedPrecondition(
        reason,
        f"the address number {problem}",
        violations=(FieldViolation("address_number", f"the address number {problem}"),),
    )


def _store_query(
    runtime: Runtime,
    repo: Repository,
    actor: Actor,
    scope: BusinessSystemScope,
    query: PersonQuery,
    subject: str,
    result: intermediate_server_pb2.QueryResult,
) -> None:
    """Remember whom the query is about (for result reads) and record it, in one transaction."""
    if not repo.relayed_query_ids(scope.system, (query.query_id,)):  # a retry keeps the first
        repo.add_relayed_queries(
            scope.system,
            runtime.clock(),
            [(query.query_id, subject, query.procedure, query.provider, query.data_items)],
        )
    record = query_record(
        runtime, actor, scope, query, subject, RecordEvent.QUERY_REQUESTED,
        outcome_of(result), upper_snake(result.reason), result.permit_id,
    )  # fmt: skip
    runtime.audit.append(repo.session, [record])


def query_record(
    runtime: Runtime,
    actor: Actor,
    scope: BusinessSystemScope,
    query: PersonQuery,
    subject: str,
    event: RecordEvent,
    outcome: Outcome,
    reason: str,
    permit_id: str = "",
) -> AccessRecord:
    """The record of one query of a business system, under its namespaced id."""
    return runtime.audit.record(
        actor,
        event,
        outcome,
        subject=subject,
        procedure=query.procedure,
        provider=query.provider,
        data_items=query.data_items,
        query_id=namespaced(scope.system, query.query_id),
        permit_id=permit_id,
        reason=reason,
    )


def outcome_of(result: intermediate_server_pb2.QueryResult) -> Outcome:
    """The record outcome of a result's status."""
    return _STATUS_OUTCOME.get(result.status, Outcome.FAILED)


def _as_callers(
    result: intermediate_server_pb2.QueryResult, query_id: str
) -> intermediate_server_pb2.QueryResult:
    """The result as the business system knows it: under its own query id."""
    copy = intermediate_server_pb2.QueryResult()
    copy.CopyFrom(result)
    copy.query_id = query_id
    return copy


async def get_query_result(
    runtime: Runtime, scope: BusinessSystemScope, query_id: str, wait_seconds: float
) -> intermediate_server_pb2.QueryResult:
    """Relay a result read; only the system's own queries are reachable (namespaced ids)."""
    result = await runtime.server.get_query_result(namespaced(scope.system, query_id), wait_seconds)
    actor = actor_of(runtime, scope)

    def record(repo: Repository) -> None:
        known = repo.relayed_query(scope.system, query_id)
        query = PersonQuery(
            query_id=query_id,
            procedure=known.procedure if known else "",
            provider=known.provider if known else "",
            data_items=tuple(known.data_items) if known else (),
            address_number="",
        )
        entry = query_record(
            runtime, actor, scope, query, known.unified_number if known else "",
            RecordEvent.ANSWER_DELIVERED, outcome_of(result), upper_snake(result.reason),
            result.permit_id,
        )  # fmt: skip
        runtime.audit.append(repo.session, [entry])

    await runtime.transaction(record)
    return _as_callers(result, query_id)
