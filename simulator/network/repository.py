"""Queries on the network's tables; every function takes the caller's ``Session``.

Owns the SQL: bulk reads by ``IN`` lists in chunks (a batch of 5000 queries costs a handful of
statements, not 5000), bulk inserts with ``executemany``, and insert-or-ignore for the rows that
racing retries may write twice. Transactions belong to the caller (``linkage.db.unit_of_work``):
nothing here commits.

Must never: commit, decide policy (that is the domain modules'), or read an answer batch's
content (it is stored and returned as bytes).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Insert, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from simulator.network.models import (
    AnswerBatch,
    IssuedCode,
    Organization,
    OrganizationKey,
    Permit,
    ProcessingSerial,
)

# Well under SQLite's bound-parameter limit, and a reasonable IN list for PostgreSQL.
CHUNK = 500
T = TypeVar("T")


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _insert_ignore(session: Session, model: type[Any], rows: list[dict[str, Any]]) -> None:
    """INSERT … ON CONFLICT DO NOTHING on SQLite and PostgreSQL (retries may race)."""
    if not rows:
        return
    statement: Insert
    if session.get_bind().dialect.name == "postgresql":
        statement = postgresql.insert(model).on_conflict_do_nothing()
    else:
        statement = sqlite.insert(model).on_conflict_do_nothing()
    session.execute(statement, rows)


# --- directory ------------------------------------------------------------------------------


def organization_exists(session: Session, code: str) -> bool:
    return session.get(Organization, code) is not None


def get_organization(session: Session, code: str) -> Organization | None:
    return session.get(Organization, code)


def organizations(session: Session, codes: Sequence[str]) -> list[Organization]:
    """The registered organizations among ``codes`` (one query per chunk, not per code)."""
    found: list[Organization] = []
    for part in chunks(codes):
        found.extend(session.scalars(select(Organization).where(Organization.code.in_(part))))
    return found


def list_organizations(session: Session, *, after: str, limit: int) -> list[Organization]:
    """Organizations ordered by code, strictly after ``after`` (keyset paging)."""
    query = select(Organization).where(Organization.code > after).order_by(Organization.code)
    return list(session.scalars(query.limit(limit)))


def all_organizations(session: Session) -> list[Organization]:
    return list(session.scalars(select(Organization).order_by(Organization.code)))


def add_organization(session: Session, organization: Organization) -> None:
    session.add(organization)
    session.flush()


def keys_of(session: Session, codes: Sequence[str]) -> dict[str, list[OrganizationKey]]:
    """Every stored signing key of each organization, newest first."""
    found: dict[str, list[OrganizationKey]] = {code: [] for code in codes}
    for part in chunks(codes):
        query = (
            select(OrganizationKey)
            .where(OrganizationKey.organization.in_(part))
            .order_by(OrganizationKey.id.desc())
        )
        for key in session.scalars(query):
            found[key.organization].append(key)
    return found


def add_keys(session: Session, keys: Iterable[OrganizationKey]) -> None:
    session.add_all(list(keys))
    session.flush()


# --- codes ----------------------------------------------------------------------------------


def get_serial(session: Session, serial: str) -> ProcessingSerial | None:
    # populate_existing: the insert-or-ignore just before bypassed the identity map.
    return session.get(ProcessingSerial, serial, populate_existing=True)


def add_serial(
    session: Session,
    serial: str,
    person_key: bytes,
    organization: str,
    expires_at: datetime,
    now: datetime,
) -> None:
    row = {
        "serial": serial,
        "person_key": person_key,
        "organization": organization,
        "expires_at": expires_at,
        "created_at": now,
    }
    _insert_ignore(session, ProcessingSerial, [row])


def add_issued_code(
    session: Session, organization: str, code: str, person_key: bytes, now: datetime
) -> None:
    row = {
        "organization": organization,
        "linkage_code": code,
        "person_key": person_key,
        "issued_at": now,
    }
    _insert_ignore(session, IssuedCode, [row])


def person_keys(session: Session, organization: str, codes: Sequence[str]) -> dict[str, bytes]:
    """code → person key for the codes issued to ``organization`` (unknown codes are absent)."""
    found: dict[str, bytes] = {}
    for part in chunks(codes):
        query = select(IssuedCode.linkage_code, IssuedCode.person_key).where(
            IssuedCode.organization == organization, IssuedCode.linkage_code.in_(part)
        )
        found.update((code, key) for code, key in session.execute(query))
    return found


# --- permits and answers --------------------------------------------------------------------


def permits_by_query(
    session: Session, requester: str, query_ids: Sequence[str]
) -> dict[str, Permit]:
    found: dict[str, Permit] = {}
    for part in chunks(query_ids):
        query = select(Permit).where(Permit.requester == requester, Permit.query_id.in_(part))
        found.update((permit.query_id, permit) for permit in session.scalars(query))
    return found


def permits_by_id(session: Session, permit_ids: Sequence[str]) -> dict[str, Permit]:
    found: dict[str, Permit] = {}
    for part in chunks(permit_ids):
        query = select(Permit).where(Permit.permit_id.in_(part))
        found.update((permit.permit_id or "", permit) for permit in session.scalars(query))
    return found


def insert_permits(session: Session, rows: list[dict[str, Any]]) -> None:
    """Bulk insert (executemany); a (requester, query_id) already taken raises IntegrityError."""
    if rows:
        session.execute(insert(Permit), rows)


def add_answer_batch(
    session: Session,
    *,
    batch_id: str,
    requester: str,
    provider: str,
    kind: str,
    envelope: bytes,
    now: datetime,
) -> None:
    row = {
        "batch_id": batch_id,
        "requester": requester,
        "provider": provider,
        "kind": kind,
        "envelope": envelope,
        "received_at": now,
    }
    _insert_ignore(session, AnswerBatch, [row])


def answer_batches(session: Session, batch_ids: Sequence[str]) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for part in chunks(batch_ids):
        query = select(AnswerBatch.batch_id, AnswerBatch.envelope).where(
            AnswerBatch.batch_id.in_(part)
        )
        found.update((batch_id, envelope) for batch_id, envelope in session.execute(query))
    return found


def set_answer_batch(
    session: Session, permit_ids: Sequence[str], batch_id: str, now: datetime
) -> None:
    for part in chunks(permit_ids):
        session.execute(
            update(Permit)
            .where(Permit.permit_id.in_(part))
            .values(answer_batch_id=batch_id, updated_at=now)
        )


def set_late_answer_batch(
    session: Session, permit_ids: Sequence[str], batch_id: str, now: datetime
) -> None:
    for part in chunks(permit_ids):
        session.execute(
            update(Permit)
            .where(Permit.permit_id.in_(part))
            .values(late_answer_batch_id=batch_id, updated_at=now)
        )


def fail_permits(
    session: Session, permit_ids: Sequence[str], status: int, reason: str, now: datetime
) -> None:
    for part in chunks(permit_ids):
        session.execute(
            update(Permit)
            .where(Permit.permit_id.in_(part))
            .values(status=status, reason=reason, updated_at=now)
        )
