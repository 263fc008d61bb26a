"""After the main job: one held query and its review, one person's journey, one denial explained.

Owns what the demo shows beyond the counts:

- :func:`review_held`: a provider's reviewer takes one query held by the auto-response-disabled
  flag (自動応答不可フラグ) from the review queue and approves it; the answer is sealed to the
  requester's key and delivered late through the network, and the requester, polling, sees it
  PROVIDED;
- :func:`trace_journey`: one person from code acquisition at each organization, through each
  query's permit and sealed answer, to the access records of one query at the three places that
  keep them (requester, network, provider);
- :func:`explain_denial`: the denied query and the permission list's reason for it.

Must never: show a personal value. Unified numbers are masked (``linkage.logs.mask``: a keyed
digest, stable within the run, meaningless outside it); answers are shown by data item and
version, never by content; the reviewer's view of the content stays in this module.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Final, Protocol

from google.protobuf.duration_pb2 import Duration
from sqlalchemy import select

from linkage.db import make_engine
from linkage.logs import mask
from linkage.records.models import RECORDS
from linkage.v1 import common_pb2
from linkage.v1 import unified_address_pb2 as ua_pb2
from simulator.scenario_plan import (
    PENSION_BENEFIT,
    SAKAI,
    Outcome,
    Phase,
    PlannedQuery,
)

if TYPE_CHECKING:
    from simulator.scenario import QueryOutcome, Scenario
    from simulator.world import World

__all__ = [
    "Denial",
    "HeldItem",
    "Journey",
    "PlatformReviewer",
    "RecordLine",
    "ReviewReport",
    "Reviewer",
    "explain_denial",
    "review_held",
    "trace_journey",
]

REVIEWER: Final = "reviewer.demo"
"""The staff member who reviews in the demo (one named person: no shared accounts)."""
LATE_ANSWER_WAIT: Final = 10.0
"""How long the requester waits (GetPersonQueryResult) for the answer released by review."""


# --------------------------------------------------------------------------------------------
# Review of a held provision
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeldItem:
    """What the demo needs of a held provision: never its content or subject."""

    permit_id: str
    requester: str
    procedure: str
    data_items: tuple[str, ...]


class Reviewer(Protocol):
    """A provider's staff member with the reviewer role, working its review queue."""

    name: str
    via: str  # how the reviewer reaches the queue, for the summary

    async def held(self, provider: str) -> list[HeldItem]: ...

    async def approve(self, provider: str, permit_id: str) -> bool:
        """Approve; True when the late answer reached the requester platform."""
        ...


class PlatformReviewer:
    """The review queue through the provider platform's in-process review handle.

    TODO(review-rpc): replace with a gRPC reviewer once ``server/app.py`` serves
    ``StaffService`` and ``ReviewService``: ``StaffService.SignIn`` as ``staff-console.<org>``
    (a reviewer account created by the platform's administrator; change the initial password
    if ``password_change_required``), then ``ReviewService.ListHeldProvisions`` and
    ``ApproveHeldProvision(name="organizations/<org>/heldProvisions/<permit_id>")`` with
    ``authorization: Bearer <token>``. The domain calls below are the very ones those RPCs
    wrap (``server.review.Review``), so the records and the late delivery are the same.
    """

    via = "platform review handle (in-process; ReviewService RPC not served yet)"

    def __init__(self, world: World, name: str = REVIEWER) -> None:
        self.world = world
        self.name = name

    async def held(self, provider: str) -> list[HeldItem]:
        review = self.world.platform_of(provider).review
        views = await review.list_held(provider, limit=500, after=None, staff_id=self.name)
        return [HeldItem(v.permit_id, v.requester, v.procedure, v.data_items) for v in views]

    async def approve(self, provider: str, permit_id: str) -> bool:
        review = self.world.platform_of(provider).review
        return await review.approve(provider, permit_id, self.name)


@dataclass(frozen=True, slots=True)
class ReviewReport:
    """One held query, its review, and what the requester saw afterwards."""

    query: PlannedQuery
    permit_id: str
    reviewer: str
    via: str
    queue_length: int  # held provisions waiting at the provider when the reviewer looked
    delivered: bool
    status_after: str  # the requester's status after the review (QueryStatus name)
    items_after: tuple[str, ...]  # data items the requester then holds (no content)
    seconds: float


def pick_held(outcomes: list[QueryOutcome]) -> QueryOutcome | None:
    """The held query to review: one Sakai provides if any (the demo is seen from Sakai)."""
    held = [o for o in outcomes if o.answer.outcome is Outcome.HELD_FOR_REVIEW and o.permit_id]
    if not held:
        return None
    return min(held, key=lambda o: (o.query.provider != SAKAI, o.query.query_id))


async def review_held(scenario: Scenario, reviewer: Reviewer) -> ReviewReport | None:
    """Approve one held query at its provider; the requester then polls for the answer."""
    chosen = pick_held(scenario.result.outcomes)
    if chosen is None:
        return None
    query = chosen.query
    started = time.perf_counter()
    queue = await reviewer.held(query.provider)
    delivered = await reviewer.approve(query.provider, chosen.permit_id)
    wait = Duration()
    wait.FromTimedelta(timedelta(seconds=LATE_ANSWER_WAIT))
    stub = scenario.stub(query.requester, query.system)
    reply = await stub.GetPersonQueryResult(
        ua_pb2.GetPersonQueryResultRequest(query_id=query.query_id, wait=wait),
        timeout=LATE_ANSWER_WAIT + 10,
    )
    result = reply.result
    return ReviewReport(
        query=query,
        permit_id=chosen.permit_id,
        reviewer=reviewer.name,
        via=reviewer.via,
        queue_length=len(queue),
        delivered=delivered,
        status_after=common_pb2.QueryStatus.Name(result.status),
        items_after=tuple(v.data_item for v in result.values),
        seconds=time.perf_counter() - started,
    )


# --------------------------------------------------------------------------------------------
# One person's journey
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CodeLine:
    """The person at one organization: the masked unified number its code is stored against."""

    org: str
    unified_number: str  # masked


@dataclass(frozen=True, slots=True)
class QueryLine:
    """One query about the person: who asked whom, the permit, and what came back (by item)."""

    phase: str
    requester: str
    provider: str
    procedure: str
    data_item: str
    outcome: str
    permit_id: str
    answer: str  # e.g. "pension_benefit v1 decrypted at sakai"


@dataclass(frozen=True, slots=True)
class RecordLine:
    """One access record of the traced query, at one of the three places."""

    place: str  # requester / network / provider
    ledger: str
    event: str
    outcome: str
    actor: str
    subject: str  # masked


@dataclass(frozen=True, slots=True)
class Journey:
    """One person through the main job, as the three places recorded it."""

    label: str
    person: str  # masked reference, not an identifier anyone holds
    codes: tuple[CodeLine, ...]
    queries: tuple[QueryLine, ...]
    decision: str
    traced_permit: str
    records: tuple[RecordLine, ...]


def _answer_text(outcome: QueryOutcome) -> str:
    if outcome.answer.outcome is not Outcome.PROVIDED:
        return outcome.answer.reason or outcome.status
    values = ", ".join(f"{v.data_item} v{v.version}" for v in outcome.answer.values)
    return f"sealed to {outcome.query.requester}, verified and decrypted there: {values}"


async def trace_journey(scenario: Scenario, person_id: int, label: str = "") -> Journey:
    """The journey of ``person_id``; the records traced are those of Sakai's pension query
    (requester Sakai, provider JPS), or of the person's first provided query."""
    result = scenario.result
    codes = tuple(
        CodeLine(org, mask(number))
        for (org, pid), number in sorted(result.unified_numbers.items())
        if pid == person_id and number
    )
    mine = [o for o in result.outcomes if o.query.person_id == person_id]
    lines = tuple(
        QueryLine(
            phase=o.query.phase.value,
            requester=o.query.requester,
            provider=o.query.provider,
            procedure=o.query.procedure,
            data_item=o.query.data_item,
            outcome=o.answer.outcome.value,
            permit_id=o.permit_id,
            answer=_answer_text(o),
        )
        for o in mine
    )
    traced = _traced(mine)
    records: tuple[RecordLine, ...] = ()
    if traced is not None:
        records = await asyncio.to_thread(_records_of, scenario.world, traced)
    collection = result.collections.get(person_id)
    return Journey(
        label=label,
        person=mask(f"person:{person_id}"),
        codes=codes,
        queries=lines,
        decision="" if collection is None else collection.decision.value,
        traced_permit="" if traced is None else traced.permit_id,
        records=records,
    )


def _traced(outcomes: list[QueryOutcome]) -> QueryOutcome | None:
    provided = [o for o in outcomes if o.answer.outcome is Outcome.PROVIDED and o.permit_id]
    preferred = [
        o
        for o in provided
        if o.query.phase is Phase.MUNICIPALITY and o.query.data_item == PENSION_BENEFIT
    ]
    candidates = preferred or provided
    return candidates[0] if candidates else None


def _records_of(world: World, traced: QueryOutcome) -> tuple[RecordLine, ...]:
    """The records of one permit in the three ledgers that keep them, read as an auditor does
    (``linkage records``): read-only, from each place's own database."""
    query = traced.query

    def platform(org: str) -> str:
        return f"platform-{world.organization(org).platform}"

    places = (
        ("requester", platform(query.requester), f"server:{query.requester}"),
        ("network", "network", "network"),
        ("provider", platform(query.provider), f"server:{query.provider}"),
    )
    lines: list[RecordLine] = []
    for place, component, ledger in places:
        engine = make_engine(world.config.url(component))
        try:
            with engine.connect() as connection:
                c = RECORDS.c
                rows = connection.execute(
                    select(c.event, c.outcome, c.actor_kind, c.actor_id, c.subject)
                    .where(c.ledger == ledger, c.permit_id == traced.permit_id)
                    .order_by(c.seq)
                )
                lines += [
                    RecordLine(place, ledger, event, outcome, f"{kind}:{actor}", mask(subject))
                    for event, outcome, kind, actor, subject in rows
                ]
        finally:
            engine.dispose()
    return tuple(lines)


# --------------------------------------------------------------------------------------------
# A denial explained
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Denial:
    """A denied query with the network's reason and the permission list's explanation."""

    query: PlannedQuery
    reason: str
    explanation: str
    allowed_for_procedure: tuple[tuple[str, str], ...]  # (provider capacity, item) pairs


def explain_denial(scenario: Scenario) -> Denial | None:
    """The first denied query, explained from the permission list the network applies: the
    requester's capacity is its business system's, and no capacity of the provider may be
    asked for the item under the procedure."""
    denied = next((o for o in scenario.result.outcomes if o.answer.outcome is Outcome.DENIED), None)
    if denied is None:
        return None
    from permission_list import load_default

    query = denied.query
    permissions = load_default()
    requester = scenario.world.organization(query.requester)
    capacity = next(s.capacity for s in requester.systems if s.system == query.system)
    decisions = [
        permissions.check(capacity, query.procedure, provider, query.data_item, scenario.on)
        for provider in scenario.world.organization(query.provider).capacities
    ]
    allowed = tuple(
        (provider, item)
        for row in permissions.rows_for(query.procedure)
        for provider in row.providers
        for item in row.items
    )
    # The first capacity is the one the organization is known by (a municipality is also a
    # medical insurer); the others are denied for the same reason and need not be repeated.
    explanation = decisions[0].detail if decisions else ""
    return Denial(query, denied.answer.reason, explanation, allowed)
