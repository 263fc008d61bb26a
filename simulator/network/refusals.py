"""Refused calls in the network's own ledger: one ``ACCESS_DENIED`` record per attempt.

Owns which refusals leave a record and what it says. Recorded: a caller acting beyond its
identity (every ``PERMISSION_DENIED``: another organization's name, a method that is not its
own, a capacity it does not hold, answers it did not sign), a credential that does not hold
(a requester key or an answer batch whose signature, signer or key fails: ``SIGNATURE_REASONS``),
and the first refusal of a rate-limit episode (a flood writes one record, not one per call). Not
recorded: malformed requests (nothing was attempted on anyone's behalf) and other failures.

The record names the caller by its certificate identity and the organization the request named,
only if it has the shape of an organization code; nothing else the caller sent is kept.

Must never: let a failure to record hide or change the refusal, write anything a caller chose
beyond a well-formed organization code, or import grpc. Blocking: call from a worker thread.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from linkage.db import unit_of_work
from linkage.errors import Code, LinkageError
from linkage.logs import get_logger
from linkage.records.ledger import Ledger
from linkage.records.model import AccessRecord, ActorKind, Outcome, RecordEvent
from simulator.network.ledger import LEDGER_ID
from simulator.network.ratelimit import RateLimited

log = get_logger(__name__)

SIGNATURE_REASONS = frozenset(
    {
        "BAD_REQUESTER_KEY",
        "REQUESTER_KEY_EXPIRED",
        "BAD_SIGNATURE",
        "ROUTE_MISMATCH",
    }
)
_ORG_CODE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_ACTOR_KINDS = (
    ("org.", ActorKind.ORGANIZATION),
    ("bs.", ActorKind.BUSINESS_SYSTEM),
    ("staff-console.", ActorKind.STAFF),
)


def worth_recording(error: LinkageError) -> bool:
    """Whether a refusal is an attempt the ledger must show (see the module docstring)."""
    if isinstance(error, RateLimited):
        return error.first
    return error.code == Code.PERMISSION_DENIED or error.reason in SIGNATURE_REASONS


def actor_kind(identity: str) -> ActorKind:
    """How the ledger classifies a certificate identity."""
    for prefix, kind in _ACTOR_KINDS:
        if identity.startswith(prefix):
            return kind
    return ActorKind.SYSTEM


class Refusals:
    """Appends the ``ACCESS_DENIED`` record of a refused call, in a transaction of its own."""

    def __init__(
        self, sessions: sessionmaker[Session], records: Ledger, clock: Callable[[], datetime]
    ) -> None:
        self._sessions = sessions
        self._records = records
        self._clock = clock

    def record(self, identity: str, organization: str, error: LinkageError) -> None:
        """Record that ``identity`` was refused (``error``) acting on ``organization``'s behalf."""
        record = AccessRecord(
            occurred_at=self._clock(),
            ledger=LEDGER_ID,
            event=RecordEvent.ACCESS_DENIED,
            actor_kind=actor_kind(identity),
            actor_id=identity,
            requester=organization if _ORG_CODE.fullmatch(organization) else "",
            outcome=Outcome.DENIED,
            reason=error.reason,
        )
        try:
            with unit_of_work(self._sessions) as session:
                self._records.append_many(session, LEDGER_ID, [record])
        except Exception:
            # The refusal stands whether or not it could be recorded; the log says it was not.
            log.exception("refusal_not_recorded", caller=identity, reason=error.reason)
