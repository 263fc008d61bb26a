"""Code management (符号管理): linkage code ↔ unified number, per tenant.

Owns ``acquire``: present a processing serial (処理通番) to the network as the tenant, get the
person's linkage code (符号) and store it against the unified number, unique both ways within
the tenant. A repeat for a person who already has a code returns the stored one without asking
the network again.

Must never: see an individual number or a resident code (only the serial and the unified number
come in), bind one code to two unified numbers, or import grpc.
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from linkage.errors import FailedPrecondition, FieldViolation, InvalidArgument
from linkage.records.model import ActorKind, Outcome, RecordEvent
from server import repository as repo
from server.content import unified_number_problem
from server.ports import Clock, NetworkPort
from server.records import Recorder, record
from server.tenancy import Tenant

# The registry issues URL-safe base64 serials (secrets.token_urlsafe): "_" and a leading "-" occur.
_SERIAL = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.:-]{0,127}")


def check_acquire_request(unified_number: str, processing_serial: str) -> None:
    """INVALID_ARGUMENT naming each bad field."""
    violations = []
    problem = unified_number_problem(unified_number)
    if problem is not None:
        violations.append(FieldViolation("unified_number", problem))
    if _SERIAL.fullmatch(processing_serial) is None:
        violations.append(FieldViolation("processing_serial", "missing or malformed serial"))
    if violations:
        raise InvalidArgument("INVALID_REQUEST", "bad code request", violations=violations)


class CodeManager:
    """Acquires and stores linkage codes for the platform's tenants."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        network: NetworkPort,
        recorder: Recorder,
        clock: Clock,
    ) -> None:
        self._sessions = sessions
        self._network = network
        self._recorder = recorder
        self._clock = clock

    async def acquire(
        self, tenant: Tenant, unified_number: str, processing_serial: str, actor: str
    ) -> datetime:
        """Obtain and store the person's code; returns when it was (first) stored."""
        check_acquire_request(unified_number, processing_serial)
        stored = await asyncio.to_thread(self._stored_at, tenant.code, unified_number)
        if stored is not None:
            return stored
        code = await self._network.obtain_linkage_code(tenant.code, processing_serial)
        return await asyncio.to_thread(self._store, tenant.code, unified_number, code, actor)

    def _stored_at(self, tenant: str, unified_number: str) -> datetime | None:
        with repo.tenant_unit_of_work(self._sessions, tenant) as session:
            row = repo.code_of(session, tenant, unified_number)
            return None if row is None else row.acquired_at

    def _store(self, tenant: str, unified_number: str, code: str, actor: str) -> datetime:
        now = self._clock()
        try:
            with repo.tenant_unit_of_work(self._sessions, tenant) as session:
                repo.add_code(session, tenant, unified_number, code, now)
                self._recorder.append(
                    session,
                    [
                        record(
                            tenant=tenant,
                            at=now,
                            event=RecordEvent.CODE_ACQUIRED,
                            outcome=Outcome.OK,
                            actor_kind=ActorKind.ORGANIZATION,
                            actor_id=actor,
                            subject=unified_number,
                        )
                    ],
                )
            return now
        except IntegrityError:
            pass  # a concurrent acquire, or the code is bound to another person: look
        with repo.tenant_unit_of_work(self._sessions, tenant) as session:
            row = repo.code_of(session, tenant, unified_number)
            if row is not None and row.linkage_code == code:
                return row.acquired_at
            if row is not None:
                raise FailedPrecondition(
                    "UNIFIED_NUMBER_HAS_OTHER_CODE",
                    "the person already has a different linkage code here",
                )
        raise FailedPrecondition(
            "LINKAGE_CODE_BOUND_ELSEWHERE",
            "the linkage code is already bound to another unified number (名寄せ error?)",
        )
