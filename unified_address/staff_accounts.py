"""Staff accounts, sign-in, sessions and roles of the unified address server (職員認証・権限).

Owns who may work on name matching (名寄せ) online: accounts in this server's own database (one
person per user name, scrypt hashes, roles), sign-in with lockout after repeated failures (an
unknown user name and a wrong password look the same: same error, same work, same lockout),
sessions (an opaque token; the database keeps only its sha256, so replicas share sessions; idle
and absolute expiry), the forced change of an initial password, and the role check of every
operation. The mechanics (hashes, user-name and password rules, tokens) are ``linkage.staffauth``
and the rules (lockout, session expiry, the settings, the refusals' reasons) are
``linkage.staffsessions``, both shared with the intermediate server's ``server.staff``; the
accounts are not shared: each server has its own staff, roles, tables (the SQL is here) and
ledger.

Roles (``Role``), each a fixed set of operations, deny by default:

* ``VIEWER`` (閲覧担当): search people, list failed code requests and waiting address numbers;
* ``OPERATOR`` (名寄せ担当): what a viewer may, plus manual link, merge, split, undo and the
  retry of failed code requests.

Every call is recorded in the ledger ``ua:<org>`` under the staff member's user name (actor
STAFF): sign-in and sign-out, each operation (``unified_address.staff`` records STAFF_OPERATION
per person it shows or touches, reads included), each failed operation, and each refusal
(ACCESS_DENIED, with the reason) before it is raised.

Must never: store or log a password or a token, tell whether a user name exists, let a session
with an initial password do anything but change it or sign out, or import grpc.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import bindparam, case, delete, null, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from linkage import staffsessions
from linkage.db import unit_of_work
from linkage.errors import (
    AlreadyExists,
    InvalidArgument,
    LinkageError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from linkage.logs import get_logger
from linkage.records.model import AccessRecord, ActorKind, Outcome, RecordEvent
from linkage.staffauth import (
    PasswordHasher,
    check_credentials_shape,
    check_new_account,
    check_password_change,
    hash_password,
    invalid_field,
    needs_rehash,
    new_session_token,
    token_digest,
    token_shape_ok,
)
from linkage.staffsessions import SignedIn
from linkage.staffsessions import StaffSettings as _SharedSettings
from unified_address.audit import Actor, Audit
from unified_address.models import StaffAccount, StaffSession, StaffSignInFailure
from unified_address.repository import Repository
from unified_address.staff import Desk

__all__ = [
    "READ_ROLES",
    "WRITE_ROLES",
    "Role",
    "SignedIn",
    "StaffAccounts",
    "StaffMember",
    "StaffSettings",
    "console_identity",
]

log = get_logger(__name__)
_T = TypeVar("_T")

SIGN_IN = "UnifiedAddressStaffService.SignIn"
SIGN_OUT = "UnifiedAddressStaffService.SignOut"
CHANGE_PASSWORD = "UnifiedAddressStaffService.ChangePassword"  # noqa: S105 (an operation name)
CREATE_ACCOUNT = "linkage ua staff add"
GRANT_ROLES = "linkage ua staff grant"
CALLER_NOT_ALLOWED = "CALLER_NOT_ALLOWED"


class Role(StrEnum):
    """What a staff member of the unified address server may do."""

    VIEWER = "VIEWER"  # 閲覧: search and lists (reading a person's links is an access)
    OPERATOR = "OPERATOR"  # 名寄せ担当: reads, plus link, merge, split, undo, retry


READ_ROLES = frozenset({Role.VIEWER, Role.OPERATOR})
WRITE_ROLES = frozenset({Role.OPERATOR})


def console_identity(organization: str) -> str:
    """The certificate identity of the organization's staff consoles (as at the server)."""
    return f"staff-console.{organization}"


@dataclass(frozen=True)
class StaffSettings(_SharedSettings):
    """Session lifetimes, lockout, the password hash cost (``linkage.staffsessions``) and the
    purge interval."""

    # How often ended sessions and stale failure rows are deleted (None: the app never does).
    purge_interval: timedelta | None = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class StaffMember:
    """The staff member behind an authorized call."""

    username: str
    roles: frozenset[Role]
    session_digest: bytes


@dataclass(frozen=True, slots=True)
class _Denial:
    error: LinkageError
    username: str


def parse_roles(roles: Iterable[str | Role]) -> frozenset[Role]:
    """Roles by name; INVALID_ARGUMENT when none is given or one is unknown."""
    parsed: set[Role] = set()
    for value in roles:
        try:
            parsed.add(Role(value))
        except ValueError:
            raise invalid_field("INVALID_ROLE", "roles", f"unknown role {value!r}") from None
    if not parsed:
        raise invalid_field("INVALID_ROLE", "roles", "at least one role")
    return frozenset(parsed)


def _roles_text(roles: Iterable[Role]) -> str:
    return ",".join(sorted(role.value for role in roles))


def _roles_of(text: str) -> frozenset[Role]:
    known = {role.value: role for role in Role}
    return frozenset(known[name] for name in text.split(",") if name in known)


def _insert(session: Session, table: Any) -> Any:
    """The dialect's INSERT (both SQLite and PostgreSQL have ON CONFLICT)."""
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


class StaffAccounts:
    """Accounts, sign-in, sessions and authorized operations of one unified address server."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        audit: Audit,
        clock: Callable[[], datetime],
        settings: StaffSettings | None = None,
    ) -> None:
        self._sessions = sessions
        self._audit = audit
        self._clock = clock
        self.settings = settings if settings is not None else StaffSettings()
        self._hasher = PasswordHasher(
            self.settings.password_params, self.settings.max_concurrent_hashes
        )
        self._purge_task: asyncio.Task[None] | None = None

    @property
    def organization(self) -> str:
        return self._audit.organization

    # --- plumbing --------------------------------------------------------------------------

    def _transaction(self, fn: Callable[[Session], _T]) -> _T:
        with unit_of_work(self._sessions) as session:
            return fn(session)

    async def _run(self, fn: Callable[[Session], _T]) -> _T:
        return await asyncio.to_thread(self._transaction, fn)

    def _entry(
        self,
        username: str,
        event: RecordEvent,
        outcome: Outcome,
        operation: str,
        reason: str = "",
        subject: str = "",
    ) -> AccessRecord:
        return self._audit.record(
            Actor.staff(username),
            event,
            outcome,
            procedure=operation,
            reason=reason,
            subject=subject,
        )

    def _deny(self, session: Session, denial: _Denial, operation: str) -> None:
        entry = self._entry(
            denial.username,
            RecordEvent.ACCESS_DENIED,
            Outcome.DENIED,
            operation,
            denial.error.reason,
        )
        self._audit.append(session, [entry])

    # --- the console -----------------------------------------------------------------------

    async def check_console(self, identity: str, operation: str) -> None:
        """Only the organization's staff consoles (by certificate) reach the staff service;
        anyone else is refused, and the refusal recorded."""
        if identity == console_identity(self.organization):
            return
        if not identity:
            raise Unauthenticated("NO_CLIENT_IDENTITY", "a client certificate is required")
        error = PermissionDenied(
            CALLER_NOT_ALLOWED,
            f"only {console_identity(self.organization)} may use the staff service",
        )
        shown = identity if identity.isprintable() else "<unprintable>"
        entry = self._audit.record(
            Actor(ActorKind.ORGANIZATION, shown),
            RecordEvent.ACCESS_DENIED,
            Outcome.DENIED,
            procedure=operation,
            reason=error.reason,
        )
        await self._run(lambda session: self._audit.append(session, [entry]))
        raise error

    # --- accounts (operator commands) ------------------------------------------------------

    def add_account(
        self,
        username: str,
        password: str,
        roles: Iterable[str | Role],
        *,
        created_by: str = "operator",
        must_change: bool = True,
    ) -> str:
        """A new account (blocking: the CLI); ALREADY_EXISTS when the name is taken."""
        check_new_account(
            username,
            password,
            organization=self.organization,
            password_field="password",  # noqa: S106 (a field name)
        )
        granted = parse_roles(roles)
        hashed = hash_password(password, self.settings.password_params)
        now = self._clock()

        def insert(session: Session) -> None:
            if session.get(StaffAccount, username) is not None:
                raise AlreadyExists("STAFF_ACCOUNT_EXISTS", "that user name is taken")
            session.add(
                StaffAccount(
                    username=username,
                    password_hash=hashed,
                    roles=_roles_text(granted),
                    must_change_password=must_change,
                    created_at=now,
                    created_by=created_by,
                    password_changed_at=now,
                )
            )
            session.flush()
            self._system_record(session, created_by, CREATE_ACCOUNT)

        try:
            self._transaction(insert)
        except IntegrityError:  # a concurrent insert of the same name won
            raise AlreadyExists("STAFF_ACCOUNT_EXISTS", "that user name is taken") from None
        log.info("ua_staff_account_created", roles=_roles_text(granted))
        return f"organizations/{self.organization}/unifiedAddressStaff/{username}"

    def set_roles(
        self, username: str, roles: Iterable[str | Role], *, changed_by: str = "operator"
    ) -> frozenset[Role]:
        """Replace an account's roles (blocking: the CLI); NOT_FOUND for an unknown name."""
        granted = parse_roles(roles)

        def change(session: Session) -> None:
            account = session.get(StaffAccount, username)
            if account is None:
                raise NotFound("STAFF_ACCOUNT_NOT_FOUND", "no staff account of that name")
            account.roles = _roles_text(granted)
            self._system_record(session, changed_by, GRANT_ROLES)

        self._transaction(change)
        return granted

    def _system_record(self, session: Session, actor_id: str, operation: str) -> None:
        """An account change by the platform operator (actor SYSTEM): the ledger's subjects
        are people, so the account itself is not named; the log is not told either."""
        entry = self._audit.record(
            Actor(ActorKind.SYSTEM, actor_id),
            RecordEvent.STAFF_OPERATION,
            Outcome.OK,
            procedure=operation,
        )
        self._audit.append(session, [entry])

    # --- signing in ------------------------------------------------------------------------

    async def sign_in(self, username: str, password: str) -> SignedIn[Role]:
        """A new session, or UNAUTHENTICATED (unknown user and wrong password alike).

        The attempt is counted before the hash is checked, in one atomic write of the failure
        row (which serializes concurrent attempts on the user name): once the limit is reached
        no further guess is evaluated, however many arrive at once. A match issues a session
        only if the user name is still not locked when the result is written."""
        check_credentials_shape(username, password)
        stored = await self._run(lambda s: self._begin_attempt(s, username, SIGN_IN))
        if isinstance(stored, LinkageError):
            raise stored
        matched = await self._hasher.check(password, stored)
        rehash = None
        params = self.settings.password_params
        if matched and stored is not None and needs_rehash(stored, params):
            rehash = await self._hasher.hash(password)
        outcome = await self._run(
            lambda s: self._after_sign_in(s, username, matched, stored, rehash)
        )
        if isinstance(outcome, LinkageError):
            raise outcome
        return outcome

    def _begin_attempt(
        self, session: Session, username: str, operation: str
    ) -> str | LinkageError | None:
        """Count one attempt (atomically, before any hash is checked); the stored hash (None
        for an unknown user), or the lock (recorded) while locked or at the limit. The lock is
        decided as ``linkage.staffsessions.lock_after_attempt`` decides it, inside the upsert."""
        now = self._clock()
        settings = self.settings
        table = StaffSignInFailure.__table__
        c = table.c
        locked = c.locked_until > now
        restart = (c.locked_until <= now) | (c.last_failure_at < now - settings.lockout)
        count = case((locked, c.failures), (restart, 1), else_=c.failures + 1)
        until = bindparam("until", now + settings.lockout, type_=c.locked_until.type)
        row = session.execute(
            _insert(session, table)
            .values(username=username, failures=1, last_failure_at=now, locked_until=None)
            .on_conflict_do_update(
                index_elements=[c.username],
                set_={
                    "failures": count,
                    "last_failure_at": now,
                    # Past the limit: lock (an attempt evaluated meanwhile cannot sign in).
                    "locked_until": case(
                        (locked, c.locked_until),
                        (count > settings.max_failed_sign_ins, until),
                        else_=null(),
                    ),
                },
            )
            .returning(c.locked_until)
        ).one()
        locked_until: datetime | None = row[0]
        if locked_until is not None and locked_until > now:
            error = staffsessions.sign_in_locked(locked_until, now)
            self._deny(session, _Denial(error, username), operation)
            return error
        account = session.get(StaffAccount, username)
        return None if account is None else account.password_hash

    def _failure_row(self, session: Session, username: str) -> StaffSignInFailure | None:
        """The failure row, re-read under a row lock (FOR UPDATE on PostgreSQL)."""
        return session.execute(
            select(StaffSignInFailure)
            .where(StaffSignInFailure.username == username)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).scalar_one_or_none()

    def _after_sign_in(
        self,
        session: Session,
        username: str,
        matched: bool,
        stored: str | None,
        rehash: str | None,
    ) -> SignedIn[Role] | LinkageError:
        now = self._clock()
        account = session.get(StaffAccount, username) if matched else None
        if account is None:  # wrong password, unknown user, or deleted meanwhile
            return self._count_failure(session, username, now, SIGN_IN)
        failure = self._failure_row(session, username)
        if failure is not None and failure.locked_until is not None and failure.locked_until > now:
            error = staffsessions.sign_in_locked(failure.locked_until, now)
            self._deny(session, _Denial(error, username), SIGN_IN)
            return error
        session.execute(delete(StaffSignInFailure).where(StaffSignInFailure.username == username))
        if rehash is not None and account.password_hash == stored:
            account.password_hash = rehash
        token = new_session_token()
        expires_at = now + self.settings.session_lifetime
        session.add(
            StaffSession(
                token_sha256=token_digest(token),
                username=username,
                created_at=now,
                last_used_at=now,
                expires_at=expires_at,
            )
        )
        entry = self._entry(username, RecordEvent.STAFF_SIGNED_IN, Outcome.OK, SIGN_IN)
        self._audit.append(session, [entry])
        roles = tuple(sorted(_roles_of(account.roles)))
        return SignedIn(token, expires_at, account.must_change_password, roles)

    def _count_failure(
        self, session: Session, username: str, now: datetime, operation: str
    ) -> LinkageError:
        """A wrong password (already counted when the attempt began): lock at the limit, record
        it; the error to raise."""
        settings = self.settings
        failure = self._failure_row(session, username)
        if failure is None:  # a success reset the count meanwhile: count this one again
            c = StaffSignInFailure.__table__.c
            session.execute(
                _insert(session, StaffSignInFailure.__table__)
                .values(username=username, failures=1, last_failure_at=now, locked_until=None)
                .on_conflict_do_update(
                    index_elements=[c.username],
                    set_={"failures": c.failures + 1, "last_failure_at": now},
                )
            )
        else:
            until = staffsessions.lock_after_failure(
                settings, now, failure.failures, failure.locked_until
            )
            if until is not None:
                failure.locked_until = until
                log.warning("ua_staff_sign_in_locked")
        error = staffsessions.invalid_credentials()
        self._deny(session, _Denial(error, username), operation)
        return error

    # --- sessions --------------------------------------------------------------------------

    def _check_session(
        self,
        session: Session,
        token: str,
        allowed: frozenset[Role] | None,
        *,
        changing: bool = False,
    ) -> StaffMember | _Denial:
        """Who holds the session and may act, or why not: expiry, password change, role."""
        now = self._clock()
        if not token_shape_ok(token):
            return _Denial(staffsessions.no_session(), "")
        digest = token_digest(token)
        row = session.get(StaffSession, digest)
        account = None if row is None else session.get(StaffAccount, row.username)
        error: LinkageError
        if row is None:
            return _Denial(staffsessions.unknown_session(), "")
        if account is None or staffsessions.session_ended(
            self.settings, now, last_used_at=row.last_used_at, expires_at=row.expires_at
        ):
            return _Denial(staffsessions.session_expired(), row.username)
        if account.must_change_password and not changing:
            return _Denial(staffsessions.password_change_required(), row.username)
        roles = _roles_of(account.roles)
        if allowed is not None and not roles & allowed:
            needed = _roles_text(allowed)
            error = PermissionDenied(
                "ROLE_REQUIRED", f"this needs one of the roles {needed}", metadata={"roles": needed}
            )
            return _Denial(error, row.username)
        row.last_used_at = now
        return StaffMember(row.username, roles, digest)

    def _authorized(
        self, session: Session, token: str, operation: str, allowed: frozenset[Role] | None
    ) -> StaffMember | _Denial:
        checked = self._check_session(session, token, allowed)
        if isinstance(checked, _Denial):
            self._deny(session, checked, operation)
        return checked

    async def at_desk(
        self,
        token: str,
        operation: str,
        allowed: frozenset[Role],
        fn: Callable[[Desk], _T],
    ) -> _T:
        """``fn`` at the desk of the session's staff member, in one transaction with the session
        check, if one of their roles is ``allowed``. A refusal is recorded and raised; a failed
        operation (bad input aside) is rolled back and recorded as FAILED."""

        def work(session: Session) -> _T | _Denial:
            checked = self._authorized(session, token, operation, allowed)
            if isinstance(checked, _Denial):
                return checked
            desk = Desk(Repository(session), self._audit, checked.username, self._clock())
            return fn(desk)

        try:
            result = await self._run(work)
        except InvalidArgument:
            raise
        except LinkageError as error:
            await self._record_failure(token, operation, error)
            raise
        if isinstance(result, _Denial):
            raise result.error
        return result

    async def authorize(self, token: str, operation: str, allowed: frozenset[Role]) -> StaffMember:
        """The session's staff member, if one of their roles is ``allowed`` (a refusal is
        recorded and raised). For work done outside a transaction of ours: the caller records
        its outcome with ``record_outcome`` once the work is done."""

        def work(session: Session) -> StaffMember | _Denial:
            return self._authorized(session, token, operation, allowed)

        checked = await self._run(work)
        if isinstance(checked, _Denial):
            raise checked.error
        return checked

    async def record_outcome(
        self, member: StaffMember, operation: str, failure: LinkageError | None = None
    ) -> None:
        """Record an authorized operation once done: OK, or FAILED with ``failure``'s reason."""
        outcome = Outcome.OK if failure is None else Outcome.FAILED
        reason = "" if failure is None else failure.reason
        entry = self._entry(
            member.username, RecordEvent.STAFF_OPERATION, outcome, operation, reason
        )
        await self._run(lambda session: self._audit.append(session, [entry]))

    async def _record_failure(self, token: str, operation: str, error: LinkageError) -> None:
        def work(session: Session) -> None:
            checked = self._check_session(session, token, None)
            username = checked.username if isinstance(checked, StaffMember) else ""
            entry = self._entry(
                username, RecordEvent.STAFF_OPERATION, Outcome.FAILED, operation, error.reason
            )
            self._audit.append(session, [entry])

        await self._run(work)

    async def sign_out(self, token: str) -> None:
        """End the session (allowed even before the initial password is changed)."""

        def work(session: Session) -> _Denial | None:
            checked = self._check_session(session, token, None, changing=True)
            if isinstance(checked, _Denial):
                self._deny(session, checked, SIGN_OUT)
                return checked
            session.execute(
                delete(StaffSession).where(StaffSession.token_sha256 == checked.session_digest)
            )
            entry = self._entry(
                checked.username, RecordEvent.STAFF_SIGNED_OUT, Outcome.OK, SIGN_OUT
            )
            self._audit.append(session, [entry])
            return None

        denial = await self._run(work)
        if denial is not None:
            raise denial.error

    async def change_password(self, token: str, current: str, new: str) -> None:
        """Replace the password (ending the user's other sessions); clears the forced change."""

        def check(session: Session) -> StaffMember | _Denial:
            checked = self._check_session(session, token, None, changing=True)
            if isinstance(checked, _Denial):
                self._deny(session, checked, CHANGE_PASSWORD)
            return checked

        member = await self._run(check)
        if isinstance(member, _Denial):
            raise member.error
        check_password_change(current, new, username=member.username)
        stored = await self._run(lambda s: self._begin_attempt(s, member.username, CHANGE_PASSWORD))
        if isinstance(stored, LinkageError):
            raise stored
        if not await self._hasher.check(current, stored):
            now = self._clock()
            raise await self._run(
                lambda s: self._count_failure(s, member.username, now, CHANGE_PASSWORD)
            )
        hashed = await self._hasher.hash(new)
        await self._run(lambda s: self._store_password(s, member, hashed))

    def _store_password(self, session: Session, member: StaffMember, hashed: str) -> None:
        now = self._clock()
        session.execute(
            update(StaffAccount)
            .where(StaffAccount.username == member.username)
            .values(password_hash=hashed, password_changed_at=now, must_change_password=False)
        )
        session.execute(
            delete(StaffSession).where(
                StaffSession.username == member.username,
                StaffSession.token_sha256 != member.session_digest,
            )
        )
        session.execute(
            delete(StaffSignInFailure).where(StaffSignInFailure.username == member.username)
        )
        entry = self._entry(
            member.username, RecordEvent.STAFF_OPERATION, Outcome.OK, CHANGE_PASSWORD
        )
        self._audit.append(session, [entry])

    def purge(self, session: Session, now: datetime) -> tuple[int, int]:
        """Delete ended sessions (past absolute expiry or idle) and failure rows older than the
        lockout window whose lock (if any) has ended; the numbers deleted."""
        idle_cutoff = now - self.settings.session_idle_timeout
        ended = session.execute(
            delete(StaffSession).where(
                (StaffSession.expires_at <= now) | (StaffSession.last_used_at <= idle_cutoff)
            )
        )
        failure = StaffSignInFailure
        stale = session.execute(
            delete(failure).where(
                failure.last_failure_at < now - self.settings.lockout,
                failure.locked_until.is_(None) | (failure.locked_until <= now),
            )
        )
        return int(ended.rowcount), int(stale.rowcount)  # type: ignore[attr-defined]

    async def purge_now(self) -> tuple[int, int]:
        """Run the purge once now: ended sessions and stale failure rows deleted."""
        now = self._clock()
        return await self._run(lambda session: self.purge(session, now))

    def start_purge(self, interval: float | None = None) -> asyncio.Task[None]:
        """Purge every ``interval`` seconds (default ``settings.purge_interval``) in the
        background until ``stop_purge``; a failed round is logged and the next one runs."""
        if self._purge_task is not None and not self._purge_task.done():
            return self._purge_task
        if interval is None:
            every = self.settings.purge_interval
            interval = 600.0 if every is None else every.total_seconds()
        seconds = interval
        self._purge_task = asyncio.create_task(self._purge_loop(seconds))
        return self._purge_task

    async def stop_purge(self) -> None:
        task, self._purge_task = self._purge_task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _purge_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                sessions, failures = await self.purge_now()
            except Exception as error:  # the database may be away: retry at the next round
                log.warning("ua_staff_purge_failed", error=type(error).__name__)
                continue
            if sessions or failures:
                log.info("ua_staff_purged", sessions=sessions, failures=failures)

    def accounts(self) -> list[tuple[str, frozenset[Role], bool]]:
        """Every account: user name, roles, whether the initial password is still to change."""

        def read(session: Session) -> list[tuple[str, frozenset[Role], bool]]:
            rows = session.scalars(select(StaffAccount).order_by(StaffAccount.username))
            return [(r.username, _roles_of(r.roles), r.must_change_password) for r in rows]

        return self._transaction(read)
