"""Access records (情報提供等記録) of the unified address server: ledger ``ua:<org>``.

Owns which record each event of this server writes and the fields it fills: linkage-code
requests, relayed pushes, queries and result reads, refusals of out-of-scope calls, and every
staff operation on name matching. Records are appended with ``linkage.records.ledger.Ledger``
in the caller's transaction, so a record commits atomically with the change it records.

Must never: name a person by anything but a unified number (never an individual number, never
an address number, which is a business system's own key), or drop a refusal unrecorded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from linkage.records.ledger import Ledger
from linkage.records.model import AccessRecord, ActorKind, Outcome, RecordEvent, utc_now

__all__ = ["Actor", "Audit", "upper_snake"]

_NOT_UPPER_SNAKE = re.compile(r"[^A-Z0-9]+")


def upper_snake(reason: str) -> str:
    """``reason`` as UPPER_SNAKE, which records require. Upstream reasons already are by
    contract; a stray one is normalized rather than allowed to fail a relay after the fact."""
    return _NOT_UPPER_SNAKE.sub("_", reason.upper()).strip("_")


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acted: a business system (``bs.<org>.<system>``), a staff member, or the system."""

    kind: ActorKind
    id: str

    @classmethod
    def business_system(cls, identity: str) -> Actor:
        return cls(ActorKind.BUSINESS_SYSTEM, identity)

    @classmethod
    def staff(cls, staff_id: str) -> Actor:
        return cls(ActorKind.STAFF, staff_id)


class Audit:
    """Builds and appends this server's records; one per organization."""

    def __init__(
        self, organization: str, ledger: Ledger, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self.organization = organization
        self.ledger_id = f"ua:{organization}"
        self._ledger = ledger
        self._clock = clock

    def record(
        self,
        actor: Actor,
        event: RecordEvent,
        outcome: Outcome,
        *,
        subject: str = "",
        reason: str = "",
        procedure: str = "",
        provider: str = "",
        data_items: Iterable[str] = (),
        query_id: str = "",
        permit_id: str = "",
    ) -> AccessRecord:
        """One record of this ledger; ``requester`` is always this organization."""
        return AccessRecord(
            occurred_at=self._clock(),
            ledger=self.ledger_id,
            event=event,
            actor_kind=actor.kind,
            actor_id=actor.id,
            outcome=outcome,
            procedure=procedure,
            requester=self.organization,
            provider=provider,
            data_items=tuple(data_items),
            subject=subject,
            permit_id=permit_id,
            query_id=query_id,
            reason=reason,
        )

    def append(self, session: Session, records: Sequence[AccessRecord]) -> None:
        """Append in the caller's transaction (the head stays locked until it ends)."""
        self._ledger.append_many(session, self.ledger_id, records)

    def staff_operation(
        self, session: Session, staff_id: str, operation: str, subjects: Iterable[str]
    ) -> None:
        """Record a staff operation once per person it touched (or once with no subject)."""
        people = sorted(set(subjects)) or [""]
        self.append(
            session,
            [
                self.record(
                    Actor.staff(staff_id),
                    RecordEvent.STAFF_OPERATION,
                    Outcome.OK,
                    subject=subject,
                    reason=operation,
                )
                for subject in people
            ],
        )
