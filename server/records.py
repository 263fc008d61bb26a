"""The intermediate server's access records (情報提供等記録), one ledger per tenant.

Owns how the server's events become ``linkage.records.AccessRecord``s in the ledger
``server:<tenant>`` and that they are appended inside the caller's transaction, so a record
commits atomically with the change it records (a query result, a used nonce, a held provision)
or not at all.

Must never: name a person by anything but a unified number or a linkage code, put a personal
value into a record, or append outside the transaction of the change it records.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TypeAlias

from sqlalchemy.orm import Session

from linkage.records.ledger import Ledger
from linkage.records.model import AccessRecord, ActorKind, Outcome, RecordEvent
from linkage.v1 import common_pb2

QS = common_pb2.QueryStatus
Status: TypeAlias = common_pb2.QueryStatus.ValueType

# The requester's record of a query's outcome: (event, outcome) by final status.
REQUESTER_EVENTS: dict[Status, tuple[RecordEvent, Outcome]] = {
    QS.QUERY_STATUS_PROVIDED: (RecordEvent.ANSWER_RECEIVED, Outcome.PROVIDED),
    QS.QUERY_STATUS_NO_DATA: (RecordEvent.ANSWER_RECEIVED, Outcome.NO_DATA),
    QS.QUERY_STATUS_DENIED: (RecordEvent.QUERY_DENIED, Outcome.DENIED),
    QS.QUERY_STATUS_HELD_FOR_REVIEW: (RecordEvent.HELD_FOR_REVIEW, Outcome.HELD),
    QS.QUERY_STATUS_DECLINED: (RecordEvent.REVIEW_DECLINED, Outcome.DECLINED),
    QS.QUERY_STATUS_FAILED: (RecordEvent.FAILED, Outcome.FAILED),
}

# The provider's record of an answer: (event, outcome) by answer status.
PROVIDER_EVENTS: dict[Status, tuple[RecordEvent, Outcome]] = {
    QS.QUERY_STATUS_PROVIDED: (RecordEvent.PROVIDED, Outcome.PROVIDED),
    QS.QUERY_STATUS_NO_DATA: (RecordEvent.NO_DATA, Outcome.NO_DATA),
    QS.QUERY_STATUS_DENIED: (RecordEvent.QUERY_DENIED, Outcome.DENIED),
    QS.QUERY_STATUS_HELD_FOR_REVIEW: (RecordEvent.HELD_FOR_REVIEW, Outcome.HELD),
    QS.QUERY_STATUS_DECLINED: (RecordEvent.REVIEW_DECLINED, Outcome.DECLINED),
    QS.QUERY_STATUS_FAILED: (RecordEvent.FAILED, Outcome.FAILED),
}


def ledger_of(tenant: str) -> str:
    return f"server:{tenant}"


class Recorder:
    """Appends the server's records through one ``Ledger`` (which signs the checkpoints)."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def append(self, session: Session, records: Iterable[AccessRecord]) -> None:
        """Append in the caller's transaction, ledger by ledger in a fixed order (no deadlock)."""
        by_ledger: dict[str, list[AccessRecord]] = {}
        for record in records:
            by_ledger.setdefault(record.ledger, []).append(record)
        for ledger_id in sorted(by_ledger):
            self._ledger.append_many(session, ledger_id, by_ledger[ledger_id])


def record(
    *,
    tenant: str,
    at: datetime,
    event: RecordEvent,
    outcome: Outcome,
    actor_kind: ActorKind,
    actor_id: str,
    procedure: str = "",
    requester: str = "",
    provider: str = "",
    data_items: Sequence[str] = (),
    subject: str = "",
    permit_id: str = "",
    query_id: str = "",
    reason: str = "",
) -> AccessRecord:
    """One record in the tenant's ledger (keyword-only, so fields cannot be swapped)."""
    return AccessRecord(
        occurred_at=at,
        ledger=ledger_of(tenant),
        event=event,
        actor_kind=actor_kind,
        actor_id=actor_id,
        procedure=procedure,
        requester=requester,
        provider=provider,
        data_items=tuple(data_items),
        subject=subject,
        permit_id=permit_id,
        query_id=query_id,
        outcome=outcome,
        reason=reason,
    )
