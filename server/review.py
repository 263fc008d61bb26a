"""Manual review (自動応答不可) on the provider side: list, approve, decline, deliver late.

Owns the review queue's decisions: a held provision is approved (the value in force on the
permit's date is sealed in a batch of one to the requester key kept with it, signed by the
tenant, and sent through the network's DeliverLateAnswers) or declined (a signed DECLINED
answer goes the same way). A decision is stored, with the signed answer and an access record,
before delivery is tried; a failed delivery keeps the decision and is retried by
``redeliver`` with the very same bytes.

Must never: decide a provision twice, seal after the requester key's ``not_after``, release a
value without a decision by a named staff member, or import grpc.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from linkage import crypto
from linkage.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    LinkageError,
    NotFound,
)
from linkage.logs import get_logger
from linkage.records.model import AccessRecord, ActorKind, Outcome, RecordEvent
from linkage.v1 import common_pb2, payloads_pb2
from server import repository as repo
from server.duplicates import InForce, lookup_in_force
from server.models import HeldProvisionRow
from server.ports import Clock, NetworkPort
from server.provision import HELD, answer_of, sign_answers
from server.records import Recorder, record
from server.tenancy import Tenant, Tenants

log = get_logger(__name__)
QS = common_pb2.QueryStatus
APPROVED = "APPROVED"
DECLINED = "DECLINED"
_REASON = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*")
_STAFF = re.compile(r"[A-Za-z0-9._:@-]{1,128}")


@dataclass(frozen=True, slots=True)
class HeldView:
    """What a reviewer sees of one held provision (values decrypted, for their eyes only)."""

    permit_id: str
    requester: str
    procedure: str
    data_items: tuple[str, ...]
    unified_number: str
    values: tuple[common_pb2.DuplicateValue, ...]
    held_at: datetime
    seal_deadline: datetime


class Review:
    """The review queue of a platform's provider tenants."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        tenants: Tenants,
        network: NetworkPort,
        recorder: Recorder,
        clock: Clock,
    ) -> None:
        self._sessions = sessions
        self._tenants = tenants
        self._network = network
        self._recorder = recorder
        self._clock = clock

    # --- reading -------------------------------------------------------------------------------

    async def list_held(
        self, tenant: str, *, limit: int, after: tuple[datetime, str] | None, staff_id: str
    ) -> list[HeldView]:
        """Held provisions still waiting, oldest first; viewing them is recorded."""
        views, _more = await self.list_held_page(
            tenant, limit=limit, after=after, staff_id=staff_id
        )
        return views

    async def list_held_page(
        self, tenant: str, *, limit: int, after: tuple[datetime, str] | None, staff_id: str
    ) -> tuple[list[HeldView], bool]:
        """A page of ``list_held`` and whether more wait after it (only the page is viewed)."""
        _check_staff(staff_id)
        return await asyncio.to_thread(
            self._list, self._tenants.get(tenant), limit, after, staff_id
        )

    def _list(
        self, tenant: Tenant, limit: int, after: tuple[datetime, str] | None, staff_id: str
    ) -> tuple[list[HeldView], bool]:
        now = self._clock()
        with repo.tenant_unit_of_work(self._sessions, tenant.code) as session:
            rows = repo.held_page(session, tenant.code, state=HELD, after=after, limit=limit + 1)
            more = len(rows) > limit
            views = [self._view(session, tenant, row) for row in rows[:limit]]
            self._recorder.append(
                session,
                [
                    record(
                        tenant=tenant.code,
                        at=now,
                        event=RecordEvent.STAFF_OPERATION,
                        outcome=Outcome.OK,
                        actor_kind=ActorKind.STAFF,
                        actor_id=staff_id,
                        procedure=view.procedure,
                        requester=view.requester,
                        provider=tenant.code,
                        data_items=view.data_items,
                        subject=view.unified_number,
                        permit_id=view.permit_id,
                        reason="REVIEW_VIEWED",
                    )
                    for view in views
                ],
            )
        return views, more

    def _view(self, session: Session, tenant: Tenant, row: HeldProvisionRow) -> HeldView:
        permit = payloads_pb2.Permit.FromString(row.permit)
        values = _values(session, tenant, row, permit)
        return HeldView(
            permit_id=row.permit_id,
            requester=permit.requester,
            procedure=permit.procedure,
            data_items=tuple(permit.data_items),
            unified_number=row.unified_number,
            values=tuple(value.to_value() for value in values),
            held_at=row.held_at,
            seal_deadline=row.seal_deadline,
        )

    # --- deciding ------------------------------------------------------------------------------

    async def approve(self, tenant: str, permit_id: str, staff_id: str) -> bool:
        """Approve and deliver late; True when the requester platform accepted it."""
        _check_staff(staff_id)
        host = self._tenants.get(tenant)
        envelope = await asyncio.to_thread(self._decide, host, permit_id, staff_id, APPROVED, "")
        return await self._deliver(host.code, permit_id, envelope)

    async def decline(self, tenant: str, permit_id: str, staff_id: str, reason: str) -> bool:
        """Decline (the requester gets DECLINED with ``reason``); True when delivered."""
        _check_staff(staff_id)
        if _REASON.fullmatch(reason) is None or len(reason) > 64:
            raise InvalidArgument(
                "INVALID_REASON",
                "a decline reason is UPPER_SNAKE",
                violations=(FieldViolation("reason", "must be UPPER_SNAKE, at most 64"),),
            )
        host = self._tenants.get(tenant)
        envelope = await asyncio.to_thread(
            self._decide, host, permit_id, staff_id, DECLINED, reason
        )
        return await self._deliver(host.code, permit_id, envelope)

    def _decide(
        self, tenant: Tenant, permit_id: str, staff_id: str, decision: str, reason: str
    ) -> common_pb2.SignedEnvelope:
        now = self._clock()
        with repo.tenant_unit_of_work(self._sessions, tenant.code) as session:
            row = repo.held(session, tenant.code, permit_id)
            if row is None:
                raise NotFound("HELD_PROVISION_NOT_FOUND", "no such held provision")
            if row.state != HELD:
                raise FailedPrecondition("ALREADY_DECIDED", "this provision was already decided")
            permit = payloads_pb2.Permit.FromString(row.permit)
            key = payloads_pb2.RequesterKey.FromString(
                common_pb2.SignedEnvelope.FromString(row.requester_key).body
            )
            if decision == APPROVED and row.seal_deadline <= now:
                raise FailedPrecondition(
                    "SEAL_DEADLINE_PASSED",
                    "the requester key has expired; only decline is possible",
                )
            status, values, answer_reason = self._answer_content(
                session, tenant, row, permit, decision, reason
            )
            sealer = crypto.BatchSealer(key.public_key)
            answer = answer_of(permit, status, answer_reason, values, sealer)
            envelope = sign_answers(tenant, permit.requester, key.key_id, sealer, [answer], now)
            if not repo.decide_held(
                session,
                tenant.code,
                permit_id,
                state=decision,
                staff_id=staff_id,
                at=now,
                reason=reason,
                answer_batch=envelope.SerializeToString(),
            ):
                raise FailedPrecondition("ALREADY_DECIDED", "this provision was already decided")
            self._recorder.append(
                session, self._records(tenant, row, permit, decision, status, staff_id, now, reason)
            )
        return envelope

    def _answer_content(
        self,
        session: Session,
        tenant: Tenant,
        row: HeldProvisionRow,
        permit: payloads_pb2.Permit,
        decision: str,
        reason: str,
    ) -> tuple[common_pb2.QueryStatus.ValueType, list[common_pb2.DuplicateValue], str]:
        if decision == DECLINED:
            return QS.QUERY_STATUS_DECLINED, [], reason
        values = _values(session, tenant, row, permit)
        if not values:
            # The duplicate was corrected away while the provision waited.
            return QS.QUERY_STATUS_NO_DATA, [], "NO_DUPLICATE_IN_FORCE"
        return QS.QUERY_STATUS_PROVIDED, [value.to_value() for value in values], ""

    def _records(
        self,
        tenant: Tenant,
        row: HeldProvisionRow,
        permit: payloads_pb2.Permit,
        decision: str,
        status: common_pb2.QueryStatus.ValueType,
        staff_id: str,
        now: datetime,
        reason: str,
    ) -> list[AccessRecord]:
        common = {
            "tenant": tenant.code,
            "at": now,
            "actor_kind": ActorKind.STAFF,
            "actor_id": staff_id,
            "procedure": permit.procedure,
            "requester": permit.requester,
            "provider": tenant.code,
            "data_items": list(permit.data_items),
            "subject": row.unified_number,
            "permit_id": permit.permit_id,
            "query_id": permit.query_id,
        }
        decided = record(
            event=RecordEvent.REVIEW_APPROVED
            if decision == APPROVED
            else RecordEvent.REVIEW_DECLINED,
            outcome=Outcome.APPROVED if decision == APPROVED else Outcome.DECLINED,
            reason=reason,
            **common,  # type: ignore[arg-type]
        )
        if status == QS.QUERY_STATUS_PROVIDED:
            provided = record(
                event=RecordEvent.PROVIDED,
                outcome=Outcome.PROVIDED,
                **common,  # type: ignore[arg-type]
            )
            return [decided, provided]
        return [decided]

    # --- delivering ----------------------------------------------------------------------------

    async def _deliver(
        self, tenant: str, permit_id: str, envelope: common_pb2.SignedEnvelope
    ) -> bool:
        try:
            await self._network.deliver_late_answers(tenant, envelope)
            delivered = True
        except LinkageError as error:
            log.warning("late_delivery_failed", tenant=tenant, reason=error.reason)
            delivered = False
        await asyncio.to_thread(self._note, tenant, permit_id, delivered)
        return delivered

    def _note(self, tenant: str, permit_id: str, delivered: bool) -> None:
        with repo.tenant_unit_of_work(self._sessions, tenant) as session:
            repo.note_delivery(session, tenant, permit_id, delivered)

    async def redeliver(self, limit: int = 100) -> int:
        """Retry late answers whose delivery failed (same signed bytes); returns successes."""
        pending = await asyncio.to_thread(self._undelivered, limit)
        delivered = 0
        for tenant, permit_id, body in pending:
            envelope = common_pb2.SignedEnvelope.FromString(body)
            if await self._deliver(tenant, permit_id, envelope):
                delivered += 1
        return delivered

    def _undelivered(self, limit: int) -> list[tuple[str, str, bytes]]:
        # The platform's retry job, across its tenants (each answer is already signed and sealed).
        with repo.platform_unit_of_work(self._sessions) as session:
            rows = repo.undelivered(session, limit)
            return [
                (row.tenant, row.permit_id, row.answer_batch)
                for row in rows
                if row.answer_batch is not None and row.tenant in self._tenants
            ]


def _values(
    session: Session, tenant: Tenant, row: HeldProvisionRow, permit: payloads_pb2.Permit
) -> list[InForce]:
    on = datetime.strptime(permit.on_date, "%Y-%m-%d").date()  # checked when it was held
    return lookup_in_force(session, tenant, [(row.unified_number, list(permit.data_items), on)])[0]


def _check_staff(staff_id: str) -> None:
    if _STAFF.fullmatch(staff_id) is None:
        raise InvalidArgument(
            "INVALID_STAFF_ID",
            "a decision needs a named staff member",
            violations=(FieldViolation("staff_id", "missing or malformed"),),
        )
