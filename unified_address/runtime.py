"""What every operation of the unified address server shares: storage, keys, scopes, upstream.

Owns the ``Runtime`` the domain modules take (one per running server or CLI invocation) and the
one way they touch the database from asyncio: ``transaction(fn)`` runs ``fn(Repository)`` in a
unit of work in a worker thread, so the event loop never blocks on SQL and each request is one
short transaction that holds no lock across a network call.

Must never: import grpc, or keep state another replica would need (everything lives in the
database; the runtime holds only configuration and connections).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from linkage.db import unit_of_work
from linkage.records.model import utc_now
from unified_address.audit import Audit
from unified_address.codes import CodeRequester
from unified_address.ports import IntermediateServer, SerialIssuer
from unified_address.repository import Repository
from unified_address.scope import ScopeRegistry
from unified_address.vault import NumberVault

__all__ = ["Runtime"]

_T = TypeVar("_T")
# Concurrent registrations of one person (two systems at once) or a unified-number collision
# make one transaction lose on a unique key; the second try sees the winner's rows.
_INTEGRITY_ATTEMPTS = 3


@dataclass(slots=True)
class Runtime:
    """Dependencies of the domain for one organization."""

    organization: str
    sessions: sessionmaker[Session]
    vault: NumberVault
    audit: Audit
    scopes: ScopeRegistry
    registry: SerialIssuer
    server: IntermediateServer
    code_concurrency: int = 16
    clock: Callable[[], datetime] = utc_now
    codes: CodeRequester = field(init=False)

    def __post_init__(self) -> None:
        self.codes = CodeRequester(self.registry, self.server, concurrency=self.code_concurrency)

    def run_sync(self, fn: Callable[[Repository], _T]) -> _T:
        """``fn`` in one transaction, retried on a unique-key race (blocking: for threads)."""
        for attempt in range(1, _INTEGRITY_ATTEMPTS + 1):
            try:
                with unit_of_work(self.sessions) as session:
                    return fn(Repository(session))
            except IntegrityError:
                if attempt == _INTEGRITY_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    async def transaction(self, fn: Callable[[Repository], _T]) -> _T:
        """``fn`` in one transaction in a worker thread."""
        return await asyncio.to_thread(self.run_sync, fn)
