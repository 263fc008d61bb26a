"""Queries on the network's tables; every function takes the caller's ``Session``.

Owns the SQL: bulk reads by ``IN`` lists in chunks (a batch of 5000 queries costs a handful of
statements, not 5000), bulk inserts with ``executemany``, and insert-or-ignore for the rows that
racing retries may write twice. Transactions belong to the caller (``linkage.db.unit_of_work``):
nothing here commits.

Must never: commit, decide policy (that is the domain modules'), or read an answer batch's
content (it is stored and returned as bytes).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Table, select, update
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session

from linkage import sqlfast
from linkage.sqlfast import chunks
from simulator.network.models import (
    AnswerBatch,
    IssuedCode,
    Organization,
    OrganizationKey,
    Permit,
    ProcessingSerial,
)

PERMITS: Table = Permit.__table__  # type: ignore[assignment]
ISSUED_CODES: Table = IssuedCode.__table__  # type: ignore[assignment]


# --- the hot path at the driver -------------------------------------------------------------
#
# Every query passes through ``person_keys``, ``permits_by_query``, ``insert_permits`` and
# ``set_answer_batch``. Building, coercing and compiling a Core statement (or an ORM bulk
# insert's per-row parameter processing) costs more than the statement itself on SQLite, so
# these go to the driver as SQL text (``linkage.sqlfast``): identifiers from the schema, values
# as parameters, each column's bind processor applied here (once per distinct value).


def _bind(table: Table, name: str, dialect: Dialect, value: Any) -> Any:
    processor = sqlfast.bind_processor(table, name, dialect)
    return value if processor is None else processor(value)


def _insert_ignore(session: Session, model: type[Any], rows: list[dict[str, Any]]) -> None:
    """INSERT … ON CONFLICT DO NOTHING on SQLite and PostgreSQL (retries may race), one
    executemany at the driver with each column's bind processor applied here."""
    if not rows:
        return
    conn = sqlfast.connection(session)
    dialect = conn.dialect
    if dialect.name not in ("sqlite", "postgresql"):
        raise NotImplementedError(
            f"INSERT … ON CONFLICT DO NOTHING is written for SQLite and PostgreSQL, "
            f"not {dialect.name}"
        )
    table: Table = model.__table__
    names = list(rows[0])
    sql = sqlfast.insert_sql(dialect, table, names, " ON CONFLICT DO NOTHING")
    processors = [sqlfast.bind_processor(table, name, dialect) for name in names]
    conn.exec_driver_sql(
        sql,
        [
            tuple(
                value if processor is None or value is None else processor(value)
                for processor, value in zip(processors, (row[n] for n in names), strict=True)
            )
            for row in rows
        ],
    )


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
    rows = sqlfast.select_in(
        session,
        ISSUED_CODES,
        ("linkage_code", "person_key"),
        (("organization", organization),),
        "linkage_code",
        codes,
    )
    return {code: bytes(key) for code, key in rows}


# --- permits and answers --------------------------------------------------------------------


def permits_by_query(
    session: Session, requester: str, query_ids: Sequence[str]
) -> dict[str, Permit]:
    found: dict[str, Permit] = {}
    # Repeats are rare: a cheap look for the ids first, whole rows only for those found.
    known = sqlfast.select_in(
        session, PERMITS, ("query_id",), (("requester", requester),), "query_id",
        query_ids,
    )  # fmt: skip
    if not known:
        return found
    for part in chunks([query_id for (query_id,) in known]):
        query = select(Permit).where(Permit.requester == requester, Permit.query_id.in_(part))
        found.update((permit.query_id, permit) for permit in session.scalars(query))
    return found


def permits_by_id(session: Session, permit_ids: Sequence[str]) -> dict[str, Permit]:
    found: dict[str, Permit] = {}
    for part in chunks(permit_ids):
        query = select(Permit).where(Permit.permit_id.in_(part))
        found.update((permit.permit_id or "", permit) for permit in session.scalars(query))
    return found


PERMIT_COLUMNS = (
    "requester",
    "query_id",
    "request_digest",
    "permit_id",
    "provider",
    "procedure",
    "data_items",
    "provider_linkage_code",
    "status",
    "reason",
    "expires_at",
    "answer_batch_id",
    "late_answer_batch_id",
    "created_at",
    "updated_at",
)


def insert_permits(session: Session, rows: list[tuple[Any, ...]]) -> None:
    """Bulk insert (one executemany at the driver); a (requester, query_id) already taken
    raises IntegrityError. Rows are tuples in ``PERMIT_COLUMNS`` order (``data_items`` a
    tuple or list of str)."""
    if not rows:
        return
    conn = sqlfast.connection(session)
    dialect = conn.dialect
    sql = sqlfast.insert_sql(dialect, PERMITS, PERMIT_COLUMNS)
    # Only the columns with a bind processor are touched, each distinct value processed once
    # (a batch shares its item lists and its three times).
    processed = [
        (index, processor, dict[Any, Any]())
        for index, name in enumerate(PERMIT_COLUMNS)
        if (processor := sqlfast.bind_processor(PERMITS, name, dialect)) is not None
    ]
    prepared: list[tuple[Any, ...]] = []
    append = prepared.append
    for row in rows:
        values = list(row)
        for index, processor, memo in processed:
            value = values[index]
            if value is not None:
                key = tuple(value) if type(value) is list else value
                found = memo.get(key, _MISSING)
                if found is _MISSING:
                    found = memo[key] = processor(value)
                values[index] = found
        append(tuple(values))
    conn.exec_driver_sql(sql, prepared)


_MISSING: Any = object()


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
    conn = sqlfast.connection(session)
    dialect = conn.dialect
    quote, marker = dialect.identifier_preparer.quote, sqlfast.marker(dialect)
    stamp = _bind(PERMITS, "updated_at", dialect, now)
    head = "UPDATE {} SET {} = {m}, {} = {m} WHERE {} IN (".format(  # noqa: S608
        dialect.identifier_preparer.format_table(PERMITS),
        quote("answer_batch_id"),
        quote("updated_at"),
        quote("permit_id"),
        m=marker,
    )
    for part in chunks(permit_ids):
        sql = f"{head}{', '.join(marker for _ in part)})"
        conn.exec_driver_sql(sql, (batch_id, stamp, *part))


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
