"""After the main job: one held query and its review, one person's journey, one denial explained.

Owns what the demo shows beyond the counts:

- :func:`review_held`: a provider's reviewer works the queue of queries held by the
  auto-response-disabled flag (自動応答不可フラグ) through the platform's staff console API, over
  gRPC as ``staff-console.<org>`` (:class:`ConsoleReviewer`: the account is created by the
  platform operator, the initial password changed at first sign-in, then ``ReviewService``):
  one held query is approved — its answer is sealed to the requester's key and delivered late
  through the network, and the requester, polling, sees it PROVIDED — and, when the provider
  holds another, that one is declined and the requester sees it DECLINED. The reviewer's staff
  actions are then counted in the provider's own ledger;
- :func:`trace_journey`: one person from code acquisition at each organization, through each
  query's permit and sealed answer, to the access records of one query at the three places that
  keep them (requester, network, provider);
- :func:`explain_denial`: the denied query and the permission list's reason for it;
- :func:`portal_view`: what that person sees on the national portal (情報提供等記録開示): every
  entry recorded about them at every place (the asking municipality's server, the network, each
  other organization), through the same client call as ``linkage records disclose --world``.

Must never: show a personal value. Unified numbers are masked (``linkage.logs.mask``: a keyed
digest, stable within the run, meaningless outside it); answers are shown by data item and
version, never by content; the reviewer's view of the content stays in this module (and
is dropped there: only permit, requester, procedure and data items are kept). The reviewer's
passwords are random, held only in memory for the run, and never shown.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Final, Protocol

from google.protobuf.duration_pb2 import Duration
from sqlalchemy import func, or_, select

from linkage.db import make_engine
from linkage.logs import mask
from linkage.records.models import RECORDS
from linkage.v1 import common_pb2, review_pb2, review_pb2_grpc, staff_pb2, staff_pb2_grpc
from linkage.v1 import intermediate_server_pb2 as isv_pb2
from linkage.v1 import unified_address_pb2 as ua_pb2
from server.records import ledger_of
from simulator.scenario_plan import (
    PENSION_BENEFIT,
    SAKAI,
    Outcome,
    Phase,
    PlannedQuery,
)

if TYPE_CHECKING:
    import grpc

    from simulator.scenario import QueryOutcome, Scenario
    from simulator.world import World

__all__ = [
    "ConsoleReviewer",
    "Decided",
    "Denial",
    "HeldItem",
    "Journey",
    "RecordLine",
    "ReviewReport",
    "Reviewer",
    "explain_denial",
    "review_held",
    "trace_journey",
]

REVIEWER: Final = "sato.h"
"""The staff member who reviews in the demo (one named person: no shared accounts)."""
REVIEW_SERVICE: Final = "ReviewService"
DECLINE_REASON: Final = "NOT_CONSENTED_BY_SUBJECT"
"""Why the demo's reviewer declines the second held provision (UPPER_SNAKE, sent to the
requester): the DV-protected person has not agreed to this provision."""
LATE_ANSWER_WAIT: Final = 10.0
"""How long the requester waits (GetPersonQueryResult) for the answer released by review."""
RPC_TIMEOUT: Final = 30.0
_PAGE: Final = 500


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
    org: str  # the provider whose queue the reviewer works
    via: str  # how the reviewer reaches the queue, for the summary
    calls: list[str]  # the RPCs made, in order

    async def sign_in(self) -> None: ...

    async def held(self) -> list[HeldItem]: ...

    async def approve(self, permit_id: str) -> bool:
        """Approve; True when the late answer reached the requester platform."""
        ...

    async def decline(self, permit_id: str, reason: str) -> bool:
        """Decline with ``reason``; True when the refusal reached the requester platform."""
        ...

    async def sign_out(self) -> None: ...


class ConsoleReviewer:
    """A reviewer at the provider platform's staff console API, over gRPC (mutual TLS as
    ``staff-console.<org>``): ``StaffService`` for the session, ``ReviewService`` for the queue.

    :meth:`enrol` has the platform operator create the account (``App.create_staff_account``,
    role REVIEWER, an initial password the holder must change); :meth:`sign_in` signs in, makes
    the forced password change and signs in again with the new password. Every call carries the
    session as ``authorization: Bearer <token>``.
    """

    via = (
        "ReviewService over gRPC as staff-console.{org} "
        "(StaffService session, initial password changed)"
    )

    def __init__(self, world: World, org: str, name: str = REVIEWER) -> None:
        self.world = world
        self.org = org
        self.name = name
        self.via = ConsoleReviewer.via.format(org=org)
        self.calls: list[str] = []
        self.account = ""
        self._password = secrets.token_urlsafe(18)  # the initial one, given by the operator
        self._token = ""
        self._channel: grpc.aio.Channel | None = None

    @property
    def parent(self) -> str:
        return f"organizations/{self.org}"

    def _stubs(
        self,
    ) -> tuple[staff_pb2_grpc.StaffServiceAsyncStub, review_pb2_grpc.ReviewServiceAsyncStub]:
        if self._channel is None:
            platform = self.world.platform_of(self.org)
            self._channel = self.world.channel(f"staff-console.{self.org}", platform.address)
        # An aio channel makes the generated stubs asynchronous (the typed stubs know this).
        staff: staff_pb2_grpc.StaffServiceAsyncStub
        staff = staff_pb2_grpc.StaffServiceStub(self._channel)
        review: review_pb2_grpc.ReviewServiceAsyncStub
        review = review_pb2_grpc.ReviewServiceStub(self._channel)
        return staff, review

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self._token}"),)

    async def enrol(self) -> str:
        """The operator creates the reviewer's account; returns its resource name."""
        platform = self.world.platform_of(self.org)
        self.account = await platform.create_staff_account(
            self.org, self.name, self._password, ["REVIEWER"], must_change=True
        )
        return self.account

    async def _sign_in_once(self) -> staff_pb2.SignInResponse:
        staff, _ = self._stubs()
        self.calls.append("StaffService.SignIn")
        reply: staff_pb2.SignInResponse = await staff.SignIn(
            staff_pb2.SignInRequest(
                parent=self.parent, username=self.name, password=self._password
            ),
            timeout=RPC_TIMEOUT,
        )
        self._token = reply.session_token
        return reply

    async def sign_in(self) -> None:
        """Sign in; an initial password is changed first, then the reviewer signs in again."""
        reply = await self._sign_in_once()
        if not reply.password_change_required:
            return
        staff, _ = self._stubs()
        new = secrets.token_urlsafe(18)
        self.calls.append("StaffService.ChangePassword")
        await staff.ChangePassword(
            staff_pb2.ChangePasswordRequest(current_password=self._password, new_password=new),
            metadata=self._metadata(),
            timeout=RPC_TIMEOUT,
        )
        self._password = new
        reply = await self._sign_in_once()
        if reply.password_change_required:
            raise RuntimeError("the password change did not take")

    async def held(self) -> list[HeldItem]:
        _, review = self._stubs()
        items: list[HeldItem] = []
        token = ""
        while True:
            self.calls.append(f"{REVIEW_SERVICE}.ListHeldProvisions")
            reply: review_pb2.ListHeldProvisionsResponse = await review.ListHeldProvisions(
                review_pb2.ListHeldProvisionsRequest(
                    parent=self.parent, page_size=_PAGE, page_token=token
                ),
                metadata=self._metadata(),
                timeout=RPC_TIMEOUT,
            )
            # The reviewer's screen shows the subject and the values; the demo keeps neither.
            items += [
                HeldItem(h.name.rsplit("/", 1)[-1], h.requester, h.procedure, tuple(h.data_items))
                for h in reply.held_provisions
            ]
            token = reply.next_page_token
            if not token:
                return items

    def _held_name(self, permit_id: str) -> str:
        return f"{self.parent}/heldProvisions/{permit_id}"

    async def approve(self, permit_id: str) -> bool:
        _, review = self._stubs()
        self.calls.append(f"{REVIEW_SERVICE}.ApproveHeldProvision")
        reply: review_pb2.ApproveHeldProvisionResponse = await review.ApproveHeldProvision(
            review_pb2.ApproveHeldProvisionRequest(name=self._held_name(permit_id)),
            metadata=self._metadata(),
            timeout=RPC_TIMEOUT,
        )
        return reply.delivered

    async def decline(self, permit_id: str, reason: str) -> bool:
        _, review = self._stubs()
        self.calls.append(f"{REVIEW_SERVICE}.DeclineHeldProvision")
        reply: review_pb2.DeclineHeldProvisionResponse = await review.DeclineHeldProvision(
            review_pb2.DeclineHeldProvisionRequest(name=self._held_name(permit_id), reason=reason),
            metadata=self._metadata(),
            timeout=RPC_TIMEOUT,
        )
        return reply.delivered

    async def sign_out(self) -> None:
        if not self._token:
            return
        staff, _ = self._stubs()
        self.calls.append("StaffService.SignOut")
        await staff.SignOut(
            staff_pb2.SignOutRequest(), metadata=self._metadata(), timeout=RPC_TIMEOUT
        )
        self._token = ""


@dataclass(frozen=True, slots=True)
class Decided:
    """One reviewed query: the decision, its delivery, and what the requester then saw."""

    query: PlannedQuery
    permit_id: str
    decision: str  # approved / declined
    reason: str  # the decline reason sent to the requester; "" for an approval
    delivered: bool
    status_after: str  # the requester's status after the review (QueryStatus name)
    items_after: tuple[str, ...]  # data items the requester then holds (no content)


@dataclass(frozen=True, slots=True)
class ReviewReport:
    """The held queries reviewed at one provider, and what the requester saw afterwards.

    The first fields describe the approved query (the demo's main example); ``declined`` the
    second, when the provider held two or more."""

    query: PlannedQuery
    permit_id: str
    reviewer: str
    via: str
    queue_length: int  # held provisions waiting at the provider when the reviewer looked
    delivered: bool
    status_after: str  # the requester's status after the review (QueryStatus name)
    items_after: tuple[str, ...]  # data items the requester then holds (no content)
    seconds: float
    declined: Decided | None = None
    account: str = ""  # organizations/<org>/staff/<name>, created by the platform operator
    calls: tuple[str, ...] = ()  # the staff console RPCs, in order
    ledger: str = ""  # the provider's ledger the staff actions were recorded in
    staff_records: dict[str, int] = field(default_factory=dict)  # STAFF_*/REVIEW_* by event


def held_at(outcomes: list[QueryOutcome], provider: str) -> list[QueryOutcome]:
    """The held queries ``provider`` answers, in query order."""
    held = [
        o
        for o in outcomes
        if o.answer.outcome is Outcome.HELD_FOR_REVIEW
        and o.permit_id
        and o.query.provider == provider
    ]
    return sorted(held, key=lambda o: o.query.query_id)


async def _requester_sees(scenario: Scenario, query: PlannedQuery) -> isv_pb2.QueryResult:
    wait = Duration()
    wait.FromTimedelta(timedelta(seconds=LATE_ANSWER_WAIT))
    stub = scenario.stub(query.requester, query.system)
    reply = await stub.GetPersonQueryResult(
        ua_pb2.GetPersonQueryResultRequest(query_id=query.query_id, wait=wait),
        timeout=LATE_ANSWER_WAIT + 10,
    )
    return reply.result


def _decided(
    query: PlannedQuery,
    permit_id: str,
    decision: str,
    reason: str,
    delivered: bool,
    result: isv_pb2.QueryResult,
) -> Decided:
    return Decided(
        query=query,
        permit_id=permit_id,
        decision=decision,
        reason=reason,
        delivered=delivered,
        status_after=common_pb2.QueryStatus.Name(result.status),
        items_after=tuple(v.data_item for v in result.values),
    )


async def review_held(scenario: Scenario, reviewer: Reviewer) -> ReviewReport | None:
    """At the reviewer's provider: sign in, approve the first held query and decline the
    second (if any), sign out; the requester then polls for both. None when the provider
    holds nothing this run made."""
    held = held_at(scenario.result.outcomes, reviewer.org)
    if not held:
        return None
    started = time.perf_counter()
    await reviewer.sign_in()
    try:
        queue = await reviewer.held()
        waiting = {item.permit_id for item in queue}
        mine = [o for o in held if o.permit_id in waiting]
        if not mine:
            return None
        approved = mine[0]
        delivered = await reviewer.approve(approved.permit_id)
        declined = mine[1] if len(mine) > 1 else None
        declined_delivered = False
        if declined is not None:
            declined_delivered = await reviewer.decline(declined.permit_id, DECLINE_REASON)
    finally:
        await reviewer.sign_out()
    seen = [_requester_sees(scenario, approved.query)]
    if declined is not None:
        seen.append(_requester_sees(scenario, declined.query))
    results = await asyncio.gather(*seen)
    first = _decided(approved.query, approved.permit_id, "approved", "", delivered, results[0])
    second = (
        None
        if declined is None
        else _decided(
            declined.query,
            declined.permit_id,
            "declined",
            DECLINE_REASON,
            declined_delivered,
            results[1],
        )
    )
    ledger = ledger_of(reviewer.org)
    counts = await asyncio.to_thread(staff_records, scenario.world, reviewer.org)
    return ReviewReport(
        query=first.query,
        permit_id=first.permit_id,
        reviewer=reviewer.name,
        via=reviewer.via,
        queue_length=len(queue),
        delivered=first.delivered,
        status_after=first.status_after,
        items_after=first.items_after,
        seconds=time.perf_counter() - started,
        declined=second,
        account=getattr(reviewer, "account", ""),
        calls=tuple(reviewer.calls),
        ledger=ledger,
        staff_records=counts,
    )


def staff_records(world: World, org: str) -> dict[str, int]:
    """STAFF_* and REVIEW_* records in ``org``'s ledger by event, read as an auditor does
    (read-only, from the platform's own database)."""
    component = f"platform-{world.organization(org).platform}"
    engine = make_engine(world.config.url(component))
    counts: Counter[str] = Counter()
    try:
        with engine.connect() as connection:
            c = RECORDS.c
            rows = connection.execute(
                select(c.event, func.count())
                .where(
                    c.ledger == ledger_of(org),
                    or_(
                        c.event.like("STAFF\\_%", escape="\\"),
                        c.event.like("REVIEW\\_%", escape="\\"),
                    ),
                )
                .group_by(c.event)
            )
            for event, n in rows:
                counts[str(event)] += int(n)
    finally:
        engine.dispose()
    return dict(sorted(counts.items()))


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


@dataclass(frozen=True, slots=True)
class PortalView:
    """A person's disclosure as the portal shows it, asked for by one organization."""

    organization: str
    person: str  # masked reference
    places: dict[str, int]  # entries per place
    unanswered: tuple[tuple[str, str], ...]  # (place, reason)
    entries: tuple[dict[str, object], ...]  # record fields and place (linkage.records.portal)


async def portal_view(scenario: Scenario, person_id: int, organization: str = SAKAI) -> PortalView:
    """Everything recorded about ``person_id``, asked for by ``organization`` with its unified
    number, over gRPC as that organization's unified address server (``ua.<org>``)."""
    from linkage.records.portal import Target, disclose_person

    world = scenario.world
    number = scenario.result.unified_numbers.get((organization, person_id), "")
    if not number:
        raise LookupError(f"person {mask(f'person:{person_id}')} is not known at {organization}")
    target = Target(
        organization=organization,
        address=world.platform_of(organization).address,
        security=world.security(f"ua.{organization}"),
        server=f"platform.{world.organization(organization).platform}",
    )
    found = await disclose_person(target, number)
    return PortalView(
        organization=organization,
        person=mask(f"person:{person_id}"),
        places=found.places(),
        unanswered=tuple(found.unanswered),
        entries=tuple(found.entries),
    )
