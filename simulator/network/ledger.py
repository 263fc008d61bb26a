"""The network's access records (情報提供等記録) in the ``network`` ledger.

Owns the shape of every record the network writes: who asked (requester), whom (provider), for
what (procedure, items), about whom (``subject``: the provider-side linkage code once a permit
is issued, the requester-side code before translation), with what outcome. Records are built
here and appended by the caller inside the same transaction as the change they record
(``linkage.records.ledger.Ledger.append_many``), so a record and its permit commit together.
Also owns the disclosure query: records whose subject is one of a person's codes.

Must never: put a resident code, a person key or any answer content into a record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from linkage.records.disclosure import disclose
from linkage.records.model import AccessRecord, ActorKind, Outcome, RecordEvent

LEDGER_ID = "network"
NETWORK_ACTOR = "network"


@dataclass(frozen=True, slots=True)
class QueryFacts:
    """What a record says about one query; ``subject`` is chosen by the caller."""

    requester: str
    provider: str
    procedure: str
    data_items: tuple[str, ...]
    query_id: str
    permit_id: str = ""


def by_organization(
    event: RecordEvent,
    facts: QueryFacts,
    *,
    actor: str,
    subject: str,
    outcome: Outcome,
    at: datetime,
    reason: str = "",
) -> AccessRecord:
    """A record of something an organization did (asked, delivered late)."""
    return _record(event, facts, ActorKind.ORGANIZATION, actor, subject, outcome, at, reason)


def by_network(
    event: RecordEvent,
    facts: QueryFacts,
    *,
    subject: str,
    outcome: Outcome,
    at: datetime,
    reason: str = "",
) -> AccessRecord:
    """A record of something the network decided or did (permit, denial, routing)."""
    return _record(event, facts, ActorKind.NETWORK, NETWORK_ACTOR, subject, outcome, at, reason)


def _record(
    event: RecordEvent,
    facts: QueryFacts,
    actor_kind: ActorKind,
    actor: str,
    subject: str,
    outcome: Outcome,
    at: datetime,
    reason: str,
) -> AccessRecord:
    return query_record(
        event,
        by_network=actor_kind is ActorKind.NETWORK,
        actor=actor,
        requester=facts.requester,
        provider=facts.provider,
        procedure=facts.procedure,
        data_items=facts.data_items,
        query_id=facts.query_id,
        permit_id=facts.permit_id,
        subject=subject,
        outcome=outcome,
        at=at,
        reason=reason,
    )


def query_record(
    event: RecordEvent,
    *,
    by_network: bool,
    actor: str,
    requester: str,
    provider: str,
    procedure: str,
    data_items: tuple[str, ...],
    query_id: str,
    permit_id: str,
    subject: str,
    outcome: Outcome,
    at: datetime,
    reason: str = "",
) -> AccessRecord:
    """A record about one query (``by_organization``/``by_network`` come here too; the hot path
    calls it directly, without building ``QueryFacts``)."""
    return AccessRecord(
        occurred_at=at,
        ledger=LEDGER_ID,
        event=event,
        actor_kind=ActorKind.NETWORK if by_network else ActorKind.ORGANIZATION,
        actor_id=NETWORK_ACTOR if by_network else actor,
        procedure=procedure,
        requester=requester,
        provider=provider,
        data_items=data_items,
        subject=subject,
        permit_id=permit_id,
        query_id=query_id,
        outcome=outcome,
        reason=reason,
    )


def code_issued(*, organization: str, code: str, at: datetime) -> AccessRecord:
    """The network issued ``organization`` its code for a person (ObtainLinkageCode)."""
    return AccessRecord(
        occurred_at=at,
        ledger=LEDGER_ID,
        event=RecordEvent.CODE_ISSUED,
        actor_kind=ActorKind.ORGANIZATION,
        actor_id=organization,
        requester=organization,
        subject=code,
        outcome=Outcome.OK,
    )


@dataclass(frozen=True, slots=True)
class DisclosedRecord:
    """One record as disclosed to the person (no subject: it would reveal another code)."""

    occurred_at: datetime
    event: str
    requester: str
    provider: str
    procedure: str
    data_items: tuple[str, ...]
    outcome: str
    reason: str
    actor: str


def records_about(session: Session, subjects: Sequence[str]) -> list[DisclosedRecord]:
    """The ``network`` ledger's records whose subject is one of ``subjects``, oldest first."""
    stored = disclose(session, subjects, ledgers=[LEDGER_ID])
    return [
        DisclosedRecord(
            occurred_at=item.record.occurred_at,
            event=item.record.event.value,
            requester=item.record.requester,
            provider=item.record.provider,
            procedure=item.record.procedure,
            data_items=item.record.data_items,
            outcome=item.record.outcome.value,
            reason=item.record.reason,
            actor=item.record.actor_id,
        )
        for item in stored
    ]
