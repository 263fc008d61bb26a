"""Registering people from business systems, and the linkage-code requests that follow.

Owns the per-person path of ``RegisterPerson`` and the bulk path the world harness uses for a
whole municipality (``register_many``): match in one transaction (``matching``), commit, then
request codes for the new persons (``codes``) and store each outcome with its access record in
a second short transaction. Owns ``retry_code_requests`` too, which claims FAILED persons (and
ones abandoned in flight by a crash), opens their sealed numbers only for the registry call,
and retries them.

Must never: hold a database transaction across a network call, lose a failure (a person whose
request failed is FAILED with a reason until a retry succeeds), or let an individual number
outlive the request in memory or reach anything but the registry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta

from linkage.errors import AlreadyExists
from linkage.logs import get_logger
from linkage.records.model import Outcome, RecordEvent
from unified_address.audit import Actor
from unified_address.codes import CodeOutcome
from unified_address.matching import (
    ADDRESS_NUMBER_LINKED_ELSEWHERE,
    MatchKind,
    MatchResult,
    Registration,
    match,
)
from unified_address.models import CodeState
from unified_address.repository import Repository
from unified_address.runtime import Runtime

__all__ = [
    "RegistrationSummary",
    "RetrySummary",
    "register_many",
    "register_person",
    "retry_code_requests",
]

log = get_logger(__name__)

# A request still PENDING after this long was abandoned (the process died mid-request).
STALE_REQUEST = timedelta(minutes=5)
# Bulk registration commits this many rows per matching transaction.
BULK_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class RegistrationSummary:
    """Counts of a bulk registration, by what matching did and how code requests ended."""

    results: tuple[MatchResult, ...]

    def count(self, kind: MatchKind) -> int:
        return sum(1 for result in self.results if result.kind is kind)

    @property
    def acquired(self) -> int:
        return sum(1 for r in self.results if r.code_state is CodeState.ACQUIRED)

    @property
    def failed(self) -> int:
        return sum(1 for r in self.results if r.code_state is CodeState.FAILED)


@dataclass(frozen=True, slots=True)
class RetrySummary:
    """How a retry of failed code requests went."""

    acquired: int
    failed: int


async def register_person(runtime: Runtime, system: str, row: Registration) -> MatchResult:
    """Link one address number (名寄せ) and, for a new person, request the linkage code.

    ALREADY_EXISTS when the address number is linked to another person. A failed code request
    does not fail the call: the result says FAILED with the reason.
    """
    actor = Actor.business_system(runtime.scopes.identity_of(system))
    (result,) = await _register_chunk(runtime, system, [row], actor)
    if result.kind is MatchKind.CONFLICT:
        raise AlreadyExists(
            ADDRESS_NUMBER_LINKED_ELSEWHERE,
            "the address number is linked to a person with another individual number",
            metadata={"system": system},
        )
    return result


async def register_many(
    runtime: Runtime,
    system: str,
    rows: Sequence[Registration],
    *,
    actor: Actor | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RegistrationSummary:
    """Register many rows of one business system (the world harness, initial loads).

    Rows are matched ``BULK_CHUNK`` at a time, each chunk in one transaction, and its code
    requests run with the runtime's bounded concurrency before the next chunk starts, so memory
    stays flat. Conflicts are reported in the results, not raised. ``progress(done, total)``
    is called after each chunk.
    """
    who = actor or Actor.business_system(runtime.scopes.identity_of(system))
    results: list[MatchResult] = []
    for start in range(0, len(rows), BULK_CHUNK):
        chunk = rows[start : start + BULK_CHUNK]
        results.extend(await _register_chunk(runtime, system, chunk, who))
        if progress is not None:
            progress(len(results), len(rows))
    return RegistrationSummary(tuple(results))


async def _register_chunk(
    runtime: Runtime, system: str, rows: Sequence[Registration], actor: Actor
) -> list[MatchResult]:
    now = runtime.clock()
    results = await runtime.transaction(lambda repo: match(repo, runtime.vault, system, rows, now))
    # Paired by position, not by address number: a batch may name an address number twice.
    wanted = [
        (result.unified_number, row.individual_number)
        for row, result in zip(rows, results, strict=True)
        if result.needs_code
    ]
    if not wanted:
        return results
    outcomes = await runtime.codes.request_many(wanted)
    await runtime.transaction(lambda repo: _store_outcomes(runtime, repo, outcomes, actor))
    _log_failures(outcomes)
    by_number = {outcome.unified_number: outcome for outcome in outcomes}
    return [_with_outcome(result, by_number.get(result.unified_number)) for result in results]


def _with_outcome(result: MatchResult, outcome: CodeOutcome | None) -> MatchResult:
    if outcome is None:  # no request was made for this person in this chunk
        return result
    state = CodeState.ACQUIRED if outcome.acquired else CodeState.FAILED
    return replace(result, code_state=state, code_failure_reason=outcome.reason)


def _store_outcomes(
    runtime: Runtime, repo: Repository, outcomes: Sequence[CodeOutcome], actor: Actor
) -> None:
    """Each outcome on its person, with one access record each, in the caller's transaction."""
    now = runtime.clock()
    repo.record_code_results(
        [
            (o.unified_number, CodeState.ACQUIRED if o.acquired else CodeState.FAILED, o.reason)
            for o in outcomes
        ],
        now,
    )
    records = [
        runtime.audit.record(
            actor,
            RecordEvent.CODE_ACQUIRED if outcome.acquired else RecordEvent.FAILED,
            Outcome.OK if outcome.acquired else Outcome.FAILED,
            subject=outcome.unified_number,
            reason=outcome.reason,
        )
        for outcome in outcomes
    ]
    runtime.audit.append(repo.session, records)


def _log_failures(outcomes: Sequence[CodeOutcome]) -> None:
    failed = [outcome.reason for outcome in outcomes if not outcome.acquired]
    if failed:  # one line per batch: a registry outage must not flood the log per person
        log.warning("code_requests_failed", failed=len(failed), reasons=sorted(set(failed)))


async def retry_code_requests(runtime: Runtime, actor: Actor, limit: int = 1000) -> RetrySummary:
    """Retry up to ``limit`` failed (or abandoned) code requests, oldest first."""
    now = runtime.clock()
    stale_before = now - STALE_REQUEST

    def claim(repo: Repository) -> list[tuple[str, bytes]]:
        candidates = repo.retry_candidates(limit, stale_before)
        return repo.claim_code_requests(candidates, now, stale_before)

    claimed = await runtime.transaction(claim)
    if not claimed:
        return RetrySummary(0, 0)
    # Opened here, used for the registry call only, dropped with this frame.
    people = [(unified, runtime.vault.open(unified, token)) for unified, token in claimed]
    outcomes = await runtime.codes.request_many(people)
    del people
    await runtime.transaction(lambda repo: _store_outcomes(runtime, repo, outcomes, actor))
    _log_failures(outcomes)
    acquired = sum(1 for outcome in outcomes if outcome.acquired)
    return RetrySummary(acquired, len(outcomes) - acquired)
