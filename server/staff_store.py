"""Every SQL statement on the staff tables (accounts, sessions, failed sign-ins), per tenant.

Owns the reads and writes behind ``server.staff``: each function takes the caller's ``Session``
(its unit of work commits) and the tenant it acts for. Writes that replicas may race on are
single atomic statements (insert-or-nothing, insert-or-increment), never read-then-write.

Must never: see a password or a session token (only hashes and sha256 digests arrive here),
commit, or touch another tenant's rows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Table, and_, case, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from server.models import StaffAccountRow, StaffSessionRow, StaffSignInFailureRow

ACCOUNTS: Table = StaffAccountRow.__table__  # type: ignore[assignment]
SESSIONS: Table = StaffSessionRow.__table__  # type: ignore[assignment]
FAILURES: Table = StaffSignInFailureRow.__table__  # type: ignore[assignment]


def _insert(session: Session, table: Table) -> Any:
    """The dialect's INSERT (both SQLite and PostgreSQL have ON CONFLICT)."""
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


# --- accounts -----------------------------------------------------------------------------------


def account(session: Session, tenant: str, username: str) -> StaffAccountRow | None:
    return session.get(StaffAccountRow, (tenant, username))


def add_account(session: Session, values: dict[str, Any]) -> bool:
    """Insert an account; False (and nothing written) when the user name is taken."""
    statement = (
        _insert(session, ACCOUNTS)
        .values(values)
        .on_conflict_do_nothing()
        .returning(ACCOUNTS.c.username)  # a row only if inserted (rowcount varies by driver)
    )
    return session.execute(statement).first() is not None


def set_password(
    session: Session,
    tenant: str,
    username: str,
    *,
    password_hash: str,
    at: datetime,
    must_change: bool,
) -> None:
    session.execute(
        update(ACCOUNTS)
        .where(ACCOUNTS.c.tenant == tenant, ACCOUNTS.c.username == username)
        .values(
            password_hash=password_hash, password_changed_at=at, must_change_password=must_change
        )
    )


def replace_hash(session: Session, tenant: str, username: str, old: str, new: str) -> None:
    """Store a rehash (raised parameters) unless the password changed meanwhile."""
    session.execute(
        update(ACCOUNTS)
        .where(
            ACCOUNTS.c.tenant == tenant,
            ACCOUNTS.c.username == username,
            ACCOUNTS.c.password_hash == old,
        )
        .values(password_hash=new)
    )


# --- failed sign-ins ----------------------------------------------------------------------------


def locked_until(session: Session, tenant: str, username: str) -> datetime | None:
    row = session.get(StaffSignInFailureRow, (tenant, username))
    return None if row is None else row.locked_until


def note_failure(
    session: Session, tenant: str, username: str, *, at: datetime, window_start: datetime
) -> int:
    """Count one failed sign-in (a count older than the window starts again); the new count."""
    c = FAILURES.c
    statement = (
        _insert(session, FAILURES)
        .values(tenant=tenant, username=username, failures=1, last_failure_at=at, locked_until=None)
        .on_conflict_do_update(
            index_elements=[c.tenant, c.username],
            set_={
                "failures": case((c.last_failure_at < window_start, 1), else_=c.failures + 1),
                "last_failure_at": at,
            },
        )
        .returning(c.failures)
    )
    return int(session.execute(statement).scalar_one())


def lock(session: Session, tenant: str, username: str, until: datetime) -> None:
    """Lock the user name until ``until`` and start counting afresh after it."""
    session.execute(
        update(FAILURES)
        .where(FAILURES.c.tenant == tenant, FAILURES.c.username == username)
        .values(locked_until=until, failures=0)
    )


def clear_failures(session: Session, tenant: str, username: str) -> None:
    session.execute(
        delete(FAILURES).where(FAILURES.c.tenant == tenant, FAILURES.c.username == username)
    )


# --- sessions -----------------------------------------------------------------------------------


def add_session(session: Session, row: StaffSessionRow) -> None:
    session.add(row)


def session_with_account(
    session: Session, digest: bytes
) -> tuple[StaffSessionRow, StaffAccountRow | None] | None:
    """The session with this token digest and its account (None if the account is gone)."""
    statement = (
        select(StaffSessionRow, StaffAccountRow)
        .outerjoin(
            StaffAccountRow,
            and_(
                StaffAccountRow.tenant == StaffSessionRow.tenant,
                StaffAccountRow.username == StaffSessionRow.username,
            ),
        )
        .where(StaffSessionRow.token_sha256 == digest)
    )
    found = session.execute(statement).first()
    return None if found is None else (found[0], found[1])


def touch_session(session: Session, tenant: str, digest: bytes, at: datetime) -> None:
    session.execute(
        update(SESSIONS)
        .where(SESSIONS.c.tenant == tenant, SESSIONS.c.token_sha256 == digest)
        .values(last_used_at=at)
    )


def delete_session(session: Session, tenant: str, digest: bytes) -> int:
    result = session.execute(
        delete(SESSIONS).where(SESSIONS.c.tenant == tenant, SESSIONS.c.token_sha256 == digest)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def delete_other_sessions(session: Session, tenant: str, username: str, keep: bytes) -> int:
    """End every session of the user but ``keep`` (after a password change)."""
    result = session.execute(
        delete(SESSIONS).where(
            SESSIONS.c.tenant == tenant,
            SESSIONS.c.username == username,
            SESSIONS.c.token_sha256 != keep,
        )
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


# --- purge --------------------------------------------------------------------------------------


def _scoped(table: Table, tenant: str | None) -> Any:
    return table.c.tenant == tenant if tenant is not None else True


def purge_sessions(
    session: Session, now: datetime, idle_cutoff: datetime, tenant: str | None
) -> int:
    """Delete sessions past their absolute expiry or idle since before ``idle_cutoff``."""
    c = SESSIONS.c
    result = session.execute(
        delete(SESSIONS).where(
            _scoped(SESSIONS, tenant), or_(c.expires_at <= now, c.last_used_at <= idle_cutoff)
        )
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def purge_failures(session: Session, now: datetime, cutoff: datetime, tenant: str | None) -> int:
    """Forget failed sign-ins older than ``cutoff`` whose lock (if any) has ended."""
    c = FAILURES.c
    result = session.execute(
        delete(FAILURES).where(
            _scoped(FAILURES, tenant),
            c.last_failure_at < cutoff,
            or_(c.locked_until.is_(None), c.locked_until <= now),
        )
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
