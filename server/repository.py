"""Every SQL statement of the intermediate server, each one scoped to one tenant.

Owns the queries and bulk writes on the ``server_*`` tables. Every function takes a ``Session``
(the caller's unit of work) and the tenant it acts for; large key sets are looked up in chunks
(``IN`` lists of at most ``CHUNK``) and written with one executemany, never row by row.

On PostgreSQL the tables also enforce this with row-level security (migration 0004): a unit of
work that touches them is opened with ``tenant_unit_of_work`` (binds the transaction to one
tenant with ``set_config('linkage.tenant', t, true)``, i.e. ``SET LOCAL``) or, for the platform's
own jobs across tenants (purge), ``platform_unit_of_work`` (binds it to ``*``). The policy holds
only if the platform connects as a non-superuser role without BYPASSRLS: superusers always
bypass row-level security.

Must never: read or write a row of a tenant other than the one passed in, commit (the caller's
unit of work does), or decrypt anything (rows hold at-rest tokens; the domain opens them).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    Table,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session, sessionmaker

from linkage import sqlfast
from linkage.db import unit_of_work
from linkage.sqlfast import CHUNK, chunks
from server.models import (
    AutoResponseFlagRow,
    DuplicateRow,
    HeldProvisionRow,
    ImportRow,
    LinkageCodeRow,
    PermitNonceRow,
    QueryKeyRow,
    QueryRow,
)

CODES: Table = LinkageCodeRow.__table__  # type: ignore[assignment]
DUPLICATES: Table = DuplicateRow.__table__  # type: ignore[assignment]
FLAGS: Table = AutoResponseFlagRow.__table__  # type: ignore[assignment]
IMPORTS: Table = ImportRow.__table__  # type: ignore[assignment]
QUERY_KEYS: Table = QueryKeyRow.__table__  # type: ignore[assignment]
QUERIES: Table = QueryRow.__table__  # type: ignore[assignment]
NONCES: Table = PermitNonceRow.__table__  # type: ignore[assignment]
HELD: Table = HeldProvisionRow.__table__  # type: ignore[assignment]


ALL_TENANTS = "*"  # the row-level security setting of the platform's maintenance path
_BIND = text("SELECT set_config('linkage.tenant', :t, true)")


def bind_tenant(session: Session, tenant: str) -> None:
    """Bind the session's current transaction to ``tenant`` for row-level security (PostgreSQL;
    a no-op elsewhere). Transaction-local: it ends with the commit or rollback."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_BIND, {"t": tenant})


@contextmanager
def tenant_unit_of_work(factory: sessionmaker[Session], tenant: str) -> Iterator[Session]:
    """``linkage.db.unit_of_work`` whose transaction sees and writes only ``tenant``'s rows."""
    if not tenant or tenant == ALL_TENANTS:
        raise ValueError("a tenant unit of work needs one tenant's code")
    with unit_of_work(factory) as session:
        bind_tenant(session, tenant)
        yield session


@contextmanager
def platform_unit_of_work(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A unit of work across every tenant: only for the platform's own jobs (purge, platform
    statistics), never for a request made on behalf of a tenant."""
    with unit_of_work(factory) as session:
        bind_tenant(session, ALL_TENANTS)
        yield session


def _select_in(
    session: Session,
    table: Table,
    columns: Sequence[str],
    tenant: str,
    in_column: str,
    values: Sequence[Any],
    extra: str = "",
) -> list[Any]:
    """``SELECT columns FROM table WHERE tenant = ? AND in_column IN (…)`` (plus ``extra``, a
    condition on our own columns with no parameter), in chunks, at the driver: on the hot path
    of every query (see ``linkage.sqlfast``, which flushes the session first)."""
    return sqlfast.select_in(
        session, table, columns, (("tenant", tenant),), in_column, values, extra=extra, chunk=CHUNK
    )


# --- linkage codes ---------------------------------------------------------------------------


def code_of(session: Session, tenant: str, unified_number: str) -> LinkageCodeRow | None:
    return session.get(LinkageCodeRow, (tenant, unified_number))


def unified_number_of_code(session: Session, tenant: str, linkage_code: str) -> str | None:
    return session.execute(
        select(LinkageCodeRow.unified_number).where(
            LinkageCodeRow.tenant == tenant, LinkageCodeRow.linkage_code == linkage_code
        )
    ).scalar_one_or_none()


def codes_by_unified_number(
    session: Session, tenant: str, unified_numbers: Iterable[str]
) -> dict[str, str]:
    """unified_number → linkage_code for those that have one."""
    wanted = sorted(set(unified_numbers))
    rows = _select_in(
        session, CODES, ("unified_number", "linkage_code"), tenant, "unified_number", wanted
    )
    return {number: code for number, code in rows}


def unified_numbers_by_code(
    session: Session, tenant: str, linkage_codes: Iterable[str]
) -> dict[str, str]:
    """linkage_code → unified_number for the codes this tenant knows."""
    wanted = sorted(set(linkage_codes))
    rows = _select_in(
        session, CODES, ("linkage_code", "unified_number"), tenant, "linkage_code", wanted
    )
    return {code: number for code, number in rows}


def add_code(
    session: Session, tenant: str, unified_number: str, linkage_code: str, at: datetime
) -> None:
    session.add(
        LinkageCodeRow(
            tenant=tenant, unified_number=unified_number, linkage_code=linkage_code, acquired_at=at
        )
    )
    session.flush()


def person_known(session: Session, tenant: str, unified_number: str) -> bool:
    """Whether the tenant knows the person at all (a linkage code or any duplicate)."""
    if code_of(session, tenant, unified_number) is not None:
        return True
    return (
        session.execute(
            select(DUPLICATES.c.id)
            .where(DUPLICATES.c.tenant == tenant, DUPLICATES.c.unified_number == unified_number)
            .limit(1)
        ).first()
        is not None
    )


# --- duplicates ------------------------------------------------------------------------------


def find_import(session: Session, tenant: str, import_id: str) -> ImportRow | None:
    return session.get(ImportRow, (tenant, import_id))


def add_import(session: Session, row: ImportRow) -> None:
    session.add(row)
    session.flush()


def latest_versions(
    session: Session, tenant: str, keys: set[tuple[str, str]]
) -> dict[tuple[str, str], tuple[int, int, date, date | None]]:
    """(unified_number, data_item) → (row id, version, effective_from, effective_to) of the
    newest version of each key that exists.

    A small import looks its people up by number; a large one reads the tenant's newest
    versions of the items it touches once, which is cheaper than thousands of IN lists.
    """
    columns = (
        DUPLICATES.c.unified_number,
        DUPLICATES.c.data_item,
        DUPLICATES.c.id,
        DUPLICATES.c.version,
        DUPLICATES.c.effective_from,
        DUPLICATES.c.effective_to,
    )
    base = select(*columns).where(DUPLICATES.c.tenant == tenant, DUPLICATES.c.is_latest)
    found: dict[tuple[str, str], tuple[int, int, date, date | None]] = {}
    people = sorted({number for number, _ in keys})
    items = sorted({item for _, item in keys})
    if len(people) <= 20 * CHUNK:
        statements = [
            base.where(DUPLICATES.c.unified_number.in_(part), DUPLICATES.c.data_item.in_(items))
            for part in chunks(people)
        ]
    else:
        statements = [base.where(DUPLICATES.c.data_item.in_(items))]
    for statement in statements:
        for number, item, row_id, version, start, end in session.execute(statement):
            if (number, item) in keys:
                found[(number, item)] = (row_id, version, start, end)
    return found


def supersede(session: Session, tenant: str, changes: Sequence[dict[str, Any]]) -> None:
    """Mark earlier versions as no longer latest; close or replace them (executemany).

    Each change has ``b_id``, ``v_effective_to`` and ``v_replaced_at``.
    """
    if not changes:
        return
    session.execute(
        update(DUPLICATES)
        .where(DUPLICATES.c.tenant == tenant, DUPLICATES.c.id == bindparam("b_id"))
        .values(
            is_latest=False,
            effective_to=bindparam("v_effective_to"),
            replaced_at=bindparam("v_replaced_at"),
        ),
        list(changes),
    )


def bulk_insert(
    session: Session,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    constants: dict[str, Any] | None = None,
) -> None:
    """One DBAPI executemany of ``rows`` (tuples in ``columns`` order) plus ``constants``.

    For the hot bulk paths (a municipality's duplicates): SQLAlchemy's per-row, per-column
    bind processing costs more than the insert itself, so each column's processor is applied
    here once per distinct value (a constant once; a column only if its type has a processor
    for this dialect), and the statement goes to the driver as is.
    """
    if not rows:
        return
    connection = sqlfast.connection(session)
    dialect = connection.dialect
    constants = constants or {}
    names = [*columns, *constants]
    processors = [sqlfast.bind_processor(table, name, dialect) for name in columns]
    fixed = [
        processor(value)
        if (processor := table.c[name].type._cached_bind_processor(dialect))
        else value
        for name, value in constants.items()
    ]
    prepared = [[*row, *fixed] for row in rows]
    for index, processor in enumerate(processors):
        if processor is not None:
            _process_column(prepared, index, processor)
    sql = sqlfast.insert_sql(dialect, table, names)
    connection.exec_driver_sql(sql, [tuple(row) for row in prepared])


def _process_column(rows: list[list[Any]], index: int, processor: Any) -> None:
    """Apply a bind processor down one column, once per distinct value (dates, flags and
    None repeat across a municipality's rows; processing each again is the slow part)."""
    memo: dict[Any, Any] = {}
    for row in rows:
        value = row[index]
        try:
            row[index] = memo[value]
        except KeyError:
            row[index] = memo[value] = processor(value)
        except TypeError:  # unhashable: process it every time
            row[index] = processor(value)


DUPLICATE_COLUMNS = (
    "unified_number",
    "data_item",
    "version",
    "effective_from",
    "effective_to",
    "content",
    "is_latest",
    "replaced_at",
)


def insert_duplicates(
    session: Session, rows: Sequence[Sequence[Any]], constants: dict[str, Any]
) -> None:
    """Bulk insert of new versions (tuples in ``DUPLICATE_COLUMNS`` order): one executemany."""
    bulk_insert(session, DUPLICATES, DUPLICATE_COLUMNS, rows, constants)


def in_force(
    session: Session, tenant: str, unified_numbers: Iterable[str], data_items: Iterable[str]
) -> dict[tuple[str, str], list[tuple[int, date, date | None, bytes]]]:
    """(unified_number, data_item) → [(version, from, to, content token)] of every version not
    replaced, for the caller to pick the one in force on its date."""
    people = sorted(set(unified_numbers))
    items = sorted(set(data_items))
    found: dict[tuple[str, str], list[tuple[int, date, date | None, bytes]]] = {}
    if not people or not items:
        return found
    wanted = set(items)
    rows = _select_in(
        session,
        DUPLICATES,
        ("unified_number", "data_item", "version", "effective_from", "effective_to", "content"),
        tenant,
        "unified_number",
        people,
        extra=f"{session.get_bind().dialect.identifier_preparer.quote('replaced_at')} IS NULL AND ",
    )
    for number, item, version, start, end, content in rows:
        if item in wanted:
            found.setdefault((number, item), []).append((version, start, end, content))
    return found


def duplicates_page(
    session: Session,
    tenant: str,
    *,
    after_id: int,
    limit: int,
    data_item: str,
    include_history: bool,
) -> list[DuplicateRow]:
    """One page of the tenant's duplicates in id order (keyset pagination for export)."""
    statement = select(DuplicateRow).where(
        DuplicateRow.tenant == tenant, DuplicateRow.id > after_id
    )
    if data_item:
        statement = statement.where(DuplicateRow.data_item == data_item)
    if not include_history:
        statement = statement.where(DuplicateRow.replaced_at.is_(None))
    return list(session.scalars(statement.order_by(DuplicateRow.id).limit(limit)))


def items_of_person(session: Session, tenant: str, unified_number: str) -> list[str]:
    return list(
        session.scalars(
            select(DuplicateRow.data_item)
            .where(DuplicateRow.tenant == tenant, DuplicateRow.unified_number == unified_number)
            .distinct()
        )
    )


# --- auto-response flags ---------------------------------------------------------------------


def flags_of(session: Session, tenant: str, unified_numbers: Iterable[str]) -> set[tuple[str, str]]:
    """(unified_number, data_item) pairs whose auto-response is disabled."""
    people = sorted(set(unified_numbers))
    rows = _select_in(
        session, FLAGS, ("unified_number", "data_item"), tenant, "unified_number", people
    )
    return {(number, item) for number, item in rows}


def set_flags(session: Session, tenant: str, pairs: Iterable[tuple[str, str]], at: datetime) -> int:
    """Set flags (insert the missing ones); returns how many were newly set."""
    wanted = set(pairs)
    existing = flags_of(session, tenant, {number for number, _ in wanted})
    new = sorted(wanted - existing)
    if new:
        session.execute(
            insert(FLAGS),
            [
                {"tenant": tenant, "unified_number": number, "data_item": item, "set_at": at}
                for number, item in new
            ],
        )
    return len(new)


def clear_flags(session: Session, tenant: str, unified_number: str, data_item: str) -> int:
    """Clear one flag, or every flag of the person when ``data_item`` is empty."""
    statement = delete(FLAGS).where(
        FLAGS.c.tenant == tenant, FLAGS.c.unified_number == unified_number
    )
    if data_item:
        statement = statement.where(FLAGS.c.data_item == data_item)
    return session.execute(statement).rowcount or 0  # type: ignore[attr-defined]


# --- query keys ------------------------------------------------------------------------------


def usable_query_key(session: Session, tenant: str, now: datetime) -> QueryKeyRow | None:
    """The newest key still in use for new queries."""
    return session.scalars(
        select(QueryKeyRow)
        .where(QueryKeyRow.tenant == tenant, QueryKeyRow.use_until > now)
        .order_by(QueryKeyRow.created_at.desc())
        .limit(1)
    ).first()


def query_key(session: Session, tenant: str, key_id: str) -> QueryKeyRow | None:
    return session.get(QueryKeyRow, (tenant, key_id))


def add_query_key(session: Session, row: QueryKeyRow) -> None:
    session.add(row)
    session.flush()


# --- queries ---------------------------------------------------------------------------------


def queries_by_id(session: Session, tenant: str, query_ids: Iterable[str]) -> dict[str, QueryRow]:
    wanted = sorted(set(query_ids))
    found: dict[str, QueryRow] = {}
    # New query ids are the rule: a cheap look for the ids first, whole rows only for those.
    known = [
        qid for (qid,) in _select_in(session, QUERIES, ("query_id",), tenant, "query_id", wanted)
    ]
    for part in chunks(known):
        rows = session.scalars(
            select(QueryRow).where(QueryRow.tenant == tenant, QueryRow.query_id.in_(part))
        )
        found.update({row.query_id: row for row in rows})
    return found


QUERY_COLUMNS = (
    "query_id",
    "spec_digest",
    "requester_capacity",
    "procedure",
    "provider",
    "data_items",
    "unified_number",
    "on_date",
    "business_system",
)


def insert_queries(
    session: Session, tenant: str, rows: Sequence[Sequence[Any]], at: datetime, expires: datetime
) -> None:
    """New queries (tuples in ``QUERY_COLUMNS`` order), IN_FLIGHT, in one executemany."""
    from linkage.v1 import common_pb2

    bulk_insert(
        session,
        QUERIES,
        QUERY_COLUMNS,
        rows,
        {
            "tenant": tenant,
            "status": common_pb2.QUERY_STATUS_IN_FLIGHT,
            "reason": "",
            "permit_id": "",
            "requester_key_id": "",
            "result": None,
            "created_at": at,
            "updated_at": at,
            "expires_at": expires,
        },
    )


# (query_id, permit_id, status, reason, requester_key_id, sealed result or None)
ResultRow = tuple[str, str, int, str, str, bytes | None]


def store_results(
    session: Session, tenant: str, results: Sequence[ResultRow], at: datetime, expires: datetime
) -> int:
    """Write final (or held) results onto queries still waiting for them: one executemany.

    Only rows IN_FLIGHT or HELD_FOR_REVIEW change, and only if they hold no permit or the same
    one: a result that is already final (say a late answer that overtook the first reply) is
    never overwritten. Returns how many rows changed. Hot path of every query: the statement
    goes to the driver as is, the two times processed once for all rows.
    """
    if not results:
        return 0
    from linkage.v1 import common_pb2

    connection = session.connection()
    dialect = connection.dialect
    marker = "?" if dialect.paramstyle == "qmark" else "%s"
    quote = dialect.identifier_preparer.quote
    stamp: Any = QUERIES.c.updated_at.type._cached_bind_processor(dialect)
    at_value, expires_value = (stamp(at), stamp(expires)) if stamp else (at, expires)
    assignments = ", ".join(
        f"{quote(name)} = {marker}"
        for name in (
            "status",
            "reason",
            "permit_id",
            "requester_key_id",
            "result",
            "updated_at",
            "expires_at",
        )
    )
    sql = (
        f"UPDATE {dialect.identifier_preparer.format_table(QUERIES)} SET {assignments} "  # noqa: S608
        f"WHERE tenant = {marker} AND query_id = {marker} "
        f"AND (status = {marker} OR status = {marker}) "
        f"AND (permit_id = '' OR permit_id = {marker})"
    )
    in_flight, held = common_pb2.QUERY_STATUS_IN_FLIGHT, common_pb2.QUERY_STATUS_HELD_FOR_REVIEW
    params = [
        (
            status,
            reason,
            permit_id,
            key_id,
            sealed,
            at_value,
            expires_value,
            tenant,
            query_id,
            in_flight,
            held,
            permit_id,
        )
        for query_id, permit_id, status, reason, key_id, sealed in results
    ]
    outcome = connection.exec_driver_sql(sql, params)
    return outcome.rowcount or 0


def mark_dispatch_failed(
    session: Session, tenant: str, query_ids: Sequence[str], reason: str, at: datetime
) -> None:
    """Note that queries never reached the network; a retry may send them again."""
    from linkage.v1 import common_pb2

    for part in chunks(query_ids):
        session.execute(
            update(QUERIES)
            .where(
                QUERIES.c.tenant == tenant,
                QUERIES.c.query_id.in_(part),
                QUERIES.c.status == common_pb2.QUERY_STATUS_IN_FLIGHT,
            )
            .values(reason=reason, updated_at=at)
        )


def query_by_permit(
    session: Session, tenant: str, permit_ids: Iterable[str]
) -> dict[str, QueryRow]:
    wanted = sorted(set(permit_ids))
    found: dict[str, QueryRow] = {}
    for part in chunks(wanted):
        rows = session.scalars(
            select(QueryRow).where(QueryRow.tenant == tenant, QueryRow.permit_id.in_(part))
        )
        found.update({row.permit_id: row for row in rows})
    return found


# --- permits and held provisions -------------------------------------------------------------


def used_nonces(session: Session, tenant: str, nonces: Iterable[bytes]) -> set[bytes]:
    wanted = sorted(set(nonces))
    return {
        bytes(nonce)
        for (nonce,) in _select_in(session, NONCES, ("nonce",), tenant, "nonce", wanted)
    }


def add_nonces(session: Session, tenant: str, rows: Sequence[tuple[bytes, str, datetime]]) -> None:
    """Used nonces as (nonce, permit_id, expires_at): one executemany."""
    bulk_insert(session, NONCES, ("nonce", "permit_id", "expires_at"), rows, {"tenant": tenant})


def add_held(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        session.execute(insert(HELD), list(rows))


def held(session: Session, tenant: str, permit_id: str) -> HeldProvisionRow | None:
    return session.get(HeldProvisionRow, (tenant, permit_id))


def held_page(
    session: Session, tenant: str, *, state: str, after: tuple[datetime, str] | None, limit: int
) -> list[HeldProvisionRow]:
    """Held provisions in (held_at, permit_id) order after a keyset position."""
    statement = select(HeldProvisionRow).where(
        HeldProvisionRow.tenant == tenant, HeldProvisionRow.state == state
    )
    if after is not None:
        at, permit_id = after
        statement = statement.where(
            or_(
                HeldProvisionRow.held_at > at,
                and_(HeldProvisionRow.held_at == at, HeldProvisionRow.permit_id > permit_id),
            )
        )
    statement = statement.order_by(HeldProvisionRow.held_at, HeldProvisionRow.permit_id)
    return list(session.scalars(statement.limit(limit)))


def decide_held(
    session: Session,
    tenant: str,
    permit_id: str,
    *,
    state: str,
    staff_id: str,
    at: datetime,
    reason: str,
    answer_batch: bytes,
) -> bool:
    """Move a HELD provision to ``state`` once; False if someone decided it first."""
    outcome = session.execute(
        update(HELD)
        .where(HELD.c.tenant == tenant, HELD.c.permit_id == permit_id, HELD.c.state == "HELD")
        .values(
            state=state,
            decided_by=staff_id,
            decided_at=at,
            decision_reason=reason,
            answer_batch=answer_batch,
        )
    )
    return bool(outcome.rowcount)  # type: ignore[attr-defined]


def note_delivery(session: Session, tenant: str, permit_id: str, delivered: bool) -> None:
    session.execute(
        update(HELD)
        .where(HELD.c.tenant == tenant, HELD.c.permit_id == permit_id)
        .values(delivered=delivered, delivery_attempts=HELD.c.delivery_attempts + 1)
    )


MAX_DELIVERY_ATTEMPTS = 50  # then it needs an operator: the requester refuses or is gone


def undelivered(session: Session, limit: int) -> list[HeldProvisionRow]:
    """Decided provisions whose late answer has not reached the network yet (all tenants)."""
    return list(
        session.scalars(
            select(HeldProvisionRow)
            .where(
                HeldProvisionRow.state != "HELD",
                HeldProvisionRow.delivered.is_(False),
                HeldProvisionRow.delivery_attempts < MAX_DELIVERY_ATTEMPTS,
            )
            .order_by(HeldProvisionRow.decided_at)
            .limit(limit)
        )
    )


# --- retention -------------------------------------------------------------------------------


def _scoped(table: Any, tenant: str | None) -> Any:
    return table.c.tenant == tenant if tenant is not None else True


def purge_results(session: Session, now: datetime, tenant: str | None) -> int:
    result = session.execute(
        delete(QUERIES).where(_scoped(QUERIES, tenant), QUERIES.c.expires_at <= now)
    )
    return result.rowcount or 0  # type: ignore[attr-defined]


def purge_duplicates(
    session: Session, ended_before: date, replaced_before: datetime, tenant: str | None
) -> int:
    result = session.execute(
        delete(DUPLICATES).where(
            _scoped(DUPLICATES, tenant),
            or_(
                DUPLICATES.c.effective_to < ended_before,
                DUPLICATES.c.replaced_at < replaced_before,
            ),
        )
    )
    return result.rowcount or 0  # type: ignore[attr-defined]


def purge_nonces(session: Session, now: datetime, tenant: str | None) -> int:
    result = session.execute(
        delete(NONCES).where(_scoped(NONCES, tenant), NONCES.c.expires_at < now)
    )
    return result.rowcount or 0  # type: ignore[attr-defined]


def purge_query_keys(session: Session, now: datetime, tenant: str | None) -> int:
    result = session.execute(
        delete(QUERY_KEYS).where(_scoped(QUERY_KEYS, tenant), QUERY_KEYS.c.not_after < now)
    )
    return result.rowcount or 0  # type: ignore[attr-defined]


def purge_settled_held(session: Session, now: datetime, tenant: str | None) -> int:
    """Decided and delivered provisions whose requester key can no longer be sealed to."""
    result = session.execute(
        delete(HELD).where(
            _scoped(HELD, tenant),
            HELD.c.state != "HELD",
            HELD.c.delivered.is_(True),
            HELD.c.seal_deadline < now,
        )
    )
    return result.rowcount or 0  # type: ignore[attr-defined]


def count_queries(session: Session, tenant: str) -> int:
    return session.execute(
        select(func.count()).select_from(QUERIES).where(QUERIES.c.tenant == tenant)
    ).scalar_one()
