"""Retention (システム管理機能): the purge of what the server may keep only for a while.

Owns ``Retention.purge_expired``: query results past ``expires_at`` (their retention), duplicate
versions that ended (``effective_to``) or were replaced longer ago than the duplicate retention,
permit nonces of expired permits (an expired permit is refused anyway), query keys past
``not_after`` (nothing can be sealed to them any more), settled held provisions whose
requester key has expired, and ended staff sessions and forgotten failed sign-ins. All of it in
one transaction, for one tenant or all.

Must never: delete access records (``linkage.records.retention`` does, behind signed anchors),
delete a held provision still waiting for a decision, or import grpc.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from server import repository as repo
from server.querykeys import QueryKeys

if TYPE_CHECKING:
    from server.staff import Staff


@dataclass(frozen=True, slots=True)
class PurgeReport:
    query_results_deleted: int
    duplicates_deleted: int
    nonces_deleted: int
    query_keys_deleted: int
    held_deleted: int
    staff_sessions_deleted: int = 0


class Retention:
    """Purges expired data; ``App`` runs it every ``purge_interval``."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        keys: QueryKeys,
        *,
        duplicate_retention: timedelta,
        staff: Staff | None = None,
    ) -> None:
        self._sessions = sessions
        self._keys = keys
        self._duplicate_retention = duplicate_retention
        self._staff = staff

    def _unit_of_work(self, tenant: str | None) -> AbstractContextManager[Session]:
        """One tenant's transaction, or the platform's own across tenants (row-level security)."""
        if tenant is None:
            return repo.platform_unit_of_work(self._sessions)
        return repo.tenant_unit_of_work(self._sessions, tenant)

    def purge_expired(self, now: datetime, tenant: str | None = None) -> PurgeReport:
        """Delete everything expired at ``now`` (blocking: run it in a thread)."""
        cutoff = now - self._duplicate_retention
        with self._unit_of_work(tenant) as session:
            report = PurgeReport(
                query_results_deleted=repo.purge_results(session, now, tenant),
                duplicates_deleted=repo.purge_duplicates(session, cutoff.date(), cutoff, tenant),
                nonces_deleted=repo.purge_nonces(session, now, tenant),
                query_keys_deleted=repo.purge_query_keys(session, now, tenant),
                held_deleted=repo.purge_settled_held(session, now, tenant),
                staff_sessions_deleted=(
                    0 if self._staff is None else self._staff.purge(session, now, tenant)
                ),
            )
        self._keys.forget_expired()
        return report
