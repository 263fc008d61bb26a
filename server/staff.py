"""Staff authentication and authorization (職員認証・権限管理機能) of a platform's tenants.

Owns: accounts (one person per user name, scrypt hashes from ``linkage.staffauth``, roles),
sign-in with lockout after repeated failures (an unknown user name and a wrong password look the
same: same error, same work, same lockout), sessions (an opaque random token; the database keeps
only its sha256, so replicas share sessions and a leaked table opens none; idle and absolute
expiry), the forced change of an initial password, role checks, and an access record in the
tenant's ledger for every sign-in, sign-out, operation and refusal (actor STAFF, the user name).

The console's tenant arrives already bound to its certificate (``staff-console.<code>``, see
``Tenants.for_staff_console``); a session works only from its own tenant's consoles.

The rules shared with the unified address server (lockout, session expiry, the settings, the
refusals' reasons) are ``linkage.staffsessions``; the credential mechanics (hashes, user names,
tokens, password rules) are ``linkage.staffauth``. Tenancy, the SQL (``server.staff_store``),
roles and access records are this module's own.

Must never: store or log a password or a token, tell whether a user name exists, let a session
act for another tenant, let a session with an initial password do anything but change it or sign
out, or import grpc.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy.orm import Session, sessionmaker

from linkage import staffsessions
from linkage.errors import AlreadyExists, InvalidArgument, LinkageError, PermissionDenied
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
from linkage.staffsessions import SignedIn as SignedIn
from linkage.staffsessions import StaffSettings as StaffSettings
from server import repository as repo
from server import staff_store as store
from server.models import StaffAccountRow, StaffSessionRow, StaffSignInFailureRow
from server.ports import Clock
from server.records import Recorder, record

log = get_logger(__name__)

SIGN_IN = "StaffService.SignIn"
SIGN_OUT = "StaffService.SignOut"
CHANGE_PASSWORD = "StaffService.ChangePassword"  # noqa: S105 (an operation name)
CREATE_STAFF_ACCOUNT = "StaffService.CreateStaffAccount"


class Role(StrEnum):
    """What a staff member may do; each role grants a fixed set of operations."""

    OPERATOR = "OPERATOR"
    REVIEWER = "REVIEWER"
    ADMINISTRATOR = "ADMINISTRATOR"


@dataclass(frozen=True, slots=True)
class Actor:
    """The staff member behind an authorized call."""

    tenant: str
    username: str
    roles: frozenset[Role]
    session_digest: bytes


@dataclass(frozen=True, slots=True)
class _Denial:
    error: LinkageError
    records: list[AccessRecord]


# --- validation ---------------------------------------------------------------------------------


def parse_roles(roles: Iterable[str | Role]) -> frozenset[Role]:
    """Roles by name; INVALID_ARGUMENT when none is given or one is unknown."""
    parsed: set[Role] = set()
    for value in roles:
        try:
            parsed.add(Role(value))
        except ValueError:
            raise invalid_field("INVALID_ROLE", "roles", "unknown role") from None
    if not parsed:
        raise invalid_field("INVALID_ROLE", "roles", "at least one role")
    return frozenset(parsed)


def _roles_text(roles: Iterable[Role]) -> str:
    return ",".join(sorted(role.value for role in roles))


def _roles_of(text: str) -> frozenset[Role]:
    known = {role.value: role for role in Role}
    return frozenset(known[name] for name in text.split(",") if name in known)


# --- the domain ---------------------------------------------------------------------------------


class Staff:
    """Accounts, sign-in and sessions of every tenant of a platform."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        recorder: Recorder,
        clock: Clock,
        settings: StaffSettings | None = None,
    ) -> None:
        self._sessions = sessions
        self._recorder = recorder
        self._clock = clock
        self.settings = settings if settings is not None else StaffSettings()

    @property
    def settings(self) -> StaffSettings:
        return self._settings

    @settings.setter
    def settings(self, settings: StaffSettings) -> None:
        """New settings (raised hash parameters apply from the next hash made)."""
        self._settings = settings
        self._hasher = PasswordHasher(settings.password_params, settings.max_concurrent_hashes)

    # --- records ---------------------------------------------------------------------------------

    def _record(
        self,
        tenant: str,
        at: datetime,
        event: RecordEvent,
        outcome: Outcome,
        username: str,
        operation: str,
        reason: str = "",
    ) -> AccessRecord:
        return record(
            tenant=tenant,
            at=at,
            event=event,
            outcome=outcome,
            actor_kind=ActorKind.STAFF,
            actor_id=username,
            procedure=operation,
            reason=reason,
        )

    def _denied(
        self, tenant: str, at: datetime, username: str, operation: str, error: LinkageError
    ) -> _Denial:
        entry = self._record(
            tenant, at, RecordEvent.ACCESS_DENIED, Outcome.DENIED, username, operation, error.reason
        )
        return _Denial(error, [entry])

    # --- accounts --------------------------------------------------------------------------------

    async def create_account(
        self, actor: Actor, username: str, password: str, roles: Iterable[str | Role]
    ) -> str:
        """CreateStaffAccount by an administrator (the caller checked the role); the name."""
        granted = self._check_account(actor.tenant, username, password, roles)
        hashed = await self._hasher.hash(password)
        return await asyncio.to_thread(
            self._insert_account,
            actor.tenant,
            username,
            hashed,
            granted,
            must_change=True,
            actor_kind=ActorKind.STAFF,
            actor_id=actor.username,
            operation=CREATE_STAFF_ACCOUNT,
            session_digest=actor.session_digest,
        )

    def add_account(
        self,
        tenant: str,
        username: str,
        password: str,
        roles: Iterable[str | Role],
        *,
        must_change: bool = True,
        created_by: str = "operator",
        operation: str = CREATE_STAFF_ACCOUNT,
    ) -> str:
        """An account made by the platform operator (bootstrap, harness); blocking."""
        granted = self._check_account(tenant, username, password, roles)
        hashed = hash_password(password, self.settings.password_params)
        return self._insert_account(
            tenant,
            username,
            hashed,
            granted,
            must_change=must_change,
            actor_kind=ActorKind.SYSTEM,
            actor_id=created_by,
            operation=operation,
            session_digest=None,
        )

    def _check_account(
        self, tenant: str, username: str, password: str, roles: Iterable[str | Role]
    ) -> frozenset[Role]:
        check_new_account(
            username,
            password,
            organization=tenant,
            password_field="initial_password",  # noqa: S106 (a field name)
        )
        return parse_roles(roles)

    def _insert_account(
        self,
        tenant: str,
        username: str,
        password_hash: str,
        roles: frozenset[Role],
        *,
        must_change: bool,
        actor_kind: ActorKind,
        actor_id: str,
        operation: str,
        session_digest: bytes | None,
    ) -> str:
        now = self._clock()
        with repo.tenant_unit_of_work(self._sessions, tenant) as session:
            inserted = store.add_account(
                session,
                {
                    "tenant": tenant,
                    "username": username,
                    "password_hash": password_hash,
                    "roles": _roles_text(roles),
                    "must_change_password": must_change,
                    "created_at": now,
                    "created_by": actor_id,
                    "password_changed_at": now,
                },
            )
            if session_digest is not None:
                store.touch_session(session, tenant, session_digest, now)
            self._recorder.append(
                session,
                [
                    record(
                        tenant=tenant,
                        at=now,
                        event=RecordEvent.STAFF_OPERATION,
                        outcome=Outcome.OK if inserted else Outcome.FAILED,
                        actor_kind=actor_kind,
                        actor_id=actor_id,
                        procedure=operation,
                        reason="" if inserted else "STAFF_ACCOUNT_EXISTS",
                    )
                ],
            )
        if not inserted:
            raise AlreadyExists("STAFF_ACCOUNT_EXISTS", "that user name is taken")
        log.info("staff_account_created", tenant=tenant, roles=_roles_text(roles))
        return f"organizations/{tenant}/staff/{username}"

    # --- signing in ------------------------------------------------------------------------------

    async def sign_in(self, tenant: str, username: str, password: str) -> SignedIn[Role]:
        """A new session, or UNAUTHENTICATED (unknown user and wrong password alike).

        The attempt is counted before the hash is checked, in one atomic write of the failure
        row (which serializes concurrent attempts on the user name): once the limit is reached
        no further guess is evaluated, however many arrive at once. A match issues a session
        only if the user name is still not locked when the result is written."""
        check_credentials_shape(username, password)
        stored = await asyncio.to_thread(self._begin_attempt, tenant, username)
        matched = await self._hasher.check(password, stored)
        rehash = None
        if matched and stored is not None and needs_rehash(stored, self.settings.password_params):
            rehash = await self._hasher.hash(password)
        outcome = await asyncio.to_thread(
            self._after_sign_in, tenant, username, matched, stored, rehash
        )
        if isinstance(outcome, LinkageError):
            raise outcome
        return outcome

    def _begin_attempt(self, tenant: str, username: str, operation: str = SIGN_IN) -> str | None:
        """Count one attempt (atomically, before any hash is checked); the stored hash (None
        for an unknown user). RESOURCE_EXHAUSTED (recorded) while locked, or once the attempt
        passes the limit (which locks the name: an attempt evaluated meanwhile cannot sign in)."""
        now = self._clock()
        settings = self.settings
        with repo.tenant_unit_of_work(self._sessions, tenant) as session:
            # The upsert is the first statement: it holds the row (PostgreSQL) or the database
            # (SQLite) for the rest of the transaction, so the reads below are consistent.
            count = store.note_failure(
                session, tenant, username, at=now, window_start=now - settings.lockout
            )
            until = staffsessions.lock_after_attempt(
                settings, now, count, store.locked_until(session, tenant, username)
            )
            if until is None:
                account = store.account(session, tenant, username)
                return None if account is None else account.password_hash
            store.lock(session, tenant, username, until)  # the count starts afresh after it
            locked = staffsessions.sign_in_locked(until, now)
            self._recorder.append(
                session, self._denied(tenant, now, username, operation, locked).records
            )
        raise locked

    def _failure_row(
        self, session: Session, tenant: str, username: str
    ) -> StaffSignInFailureRow | None:
        """The failure row, re-read under a row lock (FOR UPDATE on PostgreSQL)."""
        return session.get(
            StaffSignInFailureRow, (tenant, username), with_for_update=True, populate_existing=True
        )

    def _after_sign_in(
        self, tenant: str, username: str, matched: bool, stored: str | None, rehash: str | None
    ) -> SignedIn[Role] | LinkageError:
        now = self._clock()
        with repo.tenant_unit_of_work(self._sessions, tenant) as session:
            if not matched:
                return self._count_failure(session, tenant, username, now, SIGN_IN)
            account = store.account(session, tenant, username)
            if account is None:  # deleted while the hash was checked
                return self._count_failure(session, tenant, username, now, SIGN_IN)
            failure = self._failure_row(session, tenant, username)
            until = None if failure is None else failure.locked_until
            if until is not None and until > now:  # locked while the hash was checked
                locked = staffsessions.sign_in_locked(until, now)
                self._recorder.append(
                    session, self._denied(tenant, now, username, SIGN_IN, locked).records
                )
                return locked
            store.clear_failures(session, tenant, username)
            if rehash is not None and stored is not None:
                store.replace_hash(session, tenant, username, stored, rehash)
            token = new_session_token()
            expires_at = now + self.settings.session_lifetime
            store.add_session(
                session,
                StaffSessionRow(
                    token_sha256=token_digest(token),
                    tenant=tenant,
                    username=username,
                    created_at=now,
                    last_used_at=now,
                    expires_at=expires_at,
                ),
            )
            self._recorder.append(
                session,
                [
                    self._record(
                        tenant, now, RecordEvent.STAFF_SIGNED_IN, Outcome.OK, username, SIGN_IN
                    )
                ],
            )
            roles = tuple(sorted(_roles_of(account.roles)))
            return SignedIn(token, expires_at, account.must_change_password, roles)

    def _count_failure(
        self, session: Session, tenant: str, username: str, now: datetime, operation: str
    ) -> LinkageError:
        """A wrong password (already counted when the attempt began): lock at the limit, record
        it; the error to raise."""
        settings = self.settings
        failure = self._failure_row(session, tenant, username)
        if failure is None:  # a success reset the count meanwhile: count this one again
            store.note_failure(
                session, tenant, username, at=now, window_start=now - settings.lockout
            )
        else:
            until = staffsessions.lock_after_failure(
                settings, now, failure.failures, failure.locked_until
            )
            if until is not None:
                store.lock(session, tenant, username, until)
                log.warning("staff_sign_in_locked", tenant=tenant)
        error = staffsessions.invalid_credentials()
        self._recorder.append(
            session, self._denied(tenant, now, username, operation, error).records
        )
        return error

    # --- sessions --------------------------------------------------------------------------------

    async def authorize(self, tenant: str, token: str, operation: str, role: Role | None) -> Actor:
        """The staff member of the session ``token`` at the console of ``tenant``, if they may
        do ``operation`` (``role`` required); a refusal is recorded before it is raised."""
        return await asyncio.to_thread(self._authorize, tenant, token, operation, role, False)

    def _authorize(
        self, tenant: str, token: str, operation: str, role: Role | None, changing: bool
    ) -> Actor:
        now = self._clock()
        with repo.tenant_unit_of_work(self._sessions, tenant) as session:
            checked = self._check_session(session, tenant, token, operation, role, changing, now)
            if isinstance(checked, Actor):
                return checked
            self._recorder.append(session, checked.records)
        raise checked.error

    def _check_session(
        self,
        session: Session,
        tenant: str,
        token: str,
        operation: str,
        role: Role | None,
        changing: bool,
        now: datetime,
    ) -> Actor | _Denial:
        """Who holds the session, or why not: tenant, expiry, password change, role."""
        if not token_shape_ok(token):
            return self._denied(tenant, now, "", operation, staffsessions.no_session())
        digest = token_digest(token)
        found = store.session_with_account(session, digest)
        if found is None:
            found = self._session_of_another_tenant(digest)
        error: LinkageError
        if found is None:
            return self._denied(tenant, now, "", operation, staffsessions.unknown_session())
        row, account = found
        if row.tenant != tenant:
            error = PermissionDenied(
                "TENANT_MISMATCH", "the session belongs to another organization's console"
            )
            theirs = self._denied(row.tenant, now, row.username, operation, error)
            ours = self._denied(tenant, now, row.username, operation, error)
            return _Denial(error, theirs.records + ours.records)
        if account is None or staffsessions.session_ended(
            self.settings, now, last_used_at=row.last_used_at, expires_at=row.expires_at
        ):
            error = staffsessions.session_expired()
            return self._denied(tenant, now, row.username, operation, error)
        if account.must_change_password and not changing:
            error = staffsessions.password_change_required()
            return self._denied(tenant, now, row.username, operation, error)
        roles = _roles_of(account.roles)
        if role is not None and role not in roles:
            error = PermissionDenied(
                "ROLE_REQUIRED", f"this needs the {role.value} role", metadata={"role": role.value}
            )
            return self._denied(tenant, now, row.username, operation, error)
        return Actor(tenant, row.username, roles, digest)

    def _session_of_another_tenant(
        self, digest: bytes
    ) -> tuple[StaffSessionRow, StaffAccountRow | None] | None:
        """The session with this digest whatever its tenant, looked up outside the console's
        tenant binding. Row-level security (PostgreSQL) hides another tenant's session from the
        console's own transaction, yet a token presented at the wrong console must be reported
        as TENANT_MISMATCH (recorded in both ledgers), not as an unknown session: so this one
        read-only lookup, by the unguessable token digest alone, runs across tenants. Its result
        is used only to refuse. (On SQLite the tenant transaction already sees every row.)"""
        with repo.platform_unit_of_work(self._sessions) as session:
            return store.session_with_account(session, digest)

    async def record_operation(
        self, actor: Actor, operation: str, *, failure: LinkageError | None = None
    ) -> None:
        """Record an operation (and keep the session alive: it was used)."""
        await asyncio.to_thread(self._record_operation, actor, operation, failure)

    def _record_operation(self, actor: Actor, operation: str, failure: LinkageError | None) -> None:
        now = self._clock()
        with repo.tenant_unit_of_work(self._sessions, actor.tenant) as session:
            store.touch_session(session, actor.tenant, actor.session_digest, now)
            self._recorder.append(
                session,
                [
                    self._record(
                        actor.tenant,
                        now,
                        RecordEvent.STAFF_OPERATION,
                        Outcome.OK if failure is None else Outcome.FAILED,
                        actor.username,
                        operation,
                        "" if failure is None else failure.reason,
                    )
                ],
            )

    @contextlib.asynccontextmanager
    async def operation(self, actor: Actor, operation: str) -> AsyncIterator[None]:
        """Record the operation in the block when it ends: OK, or FAILED with its reason.

        Bad input (INVALID_ARGUMENT) changes nothing and writes nothing, not even a record.
        """
        try:
            yield
        except InvalidArgument:
            raise
        except LinkageError as error:
            await self.record_operation(actor, operation, failure=error)
            raise
        await self.record_operation(actor, operation)

    async def sign_out(self, tenant: str, token: str) -> None:
        """End the session (allowed even before the initial password is changed)."""
        await asyncio.to_thread(self._sign_out, tenant, token)

    def _sign_out(self, tenant: str, token: str) -> None:
        now = self._clock()
        with repo.tenant_unit_of_work(self._sessions, tenant) as session:
            checked = self._check_session(session, tenant, token, SIGN_OUT, None, True, now)
            if isinstance(checked, Actor):
                store.delete_session(session, tenant, checked.session_digest)
                entry = self._record(
                    tenant,
                    now,
                    RecordEvent.STAFF_SIGNED_OUT,
                    Outcome.OK,
                    checked.username,
                    SIGN_OUT,
                )
                self._recorder.append(session, [entry])
                return
            self._recorder.append(session, checked.records)
        raise checked.error

    # --- changing the password -------------------------------------------------------------------

    async def change_password(self, tenant: str, token: str, current: str, new: str) -> None:
        """Replace the password (ending the user's other sessions); clears the forced change."""
        actor = await asyncio.to_thread(self._authorize, tenant, token, CHANGE_PASSWORD, None, True)
        check_password_change(current, new, username=actor.username)
        stored = await asyncio.to_thread(
            self._begin_attempt, tenant, actor.username, CHANGE_PASSWORD
        )
        if not await self._hasher.check(current, stored):
            error = await asyncio.to_thread(self._wrong_current, actor)
            raise error
        hashed = await self._hasher.hash(new)
        await asyncio.to_thread(self._store_password, actor, hashed)

    def _wrong_current(self, actor: Actor) -> LinkageError:
        now = self._clock()
        with repo.tenant_unit_of_work(self._sessions, actor.tenant) as session:
            return self._count_failure(session, actor.tenant, actor.username, now, CHANGE_PASSWORD)

    def _store_password(self, actor: Actor, password_hash: str) -> None:
        now = self._clock()
        with repo.tenant_unit_of_work(self._sessions, actor.tenant) as session:
            store.set_password(
                session,
                actor.tenant,
                actor.username,
                password_hash=password_hash,
                at=now,
                must_change=False,
            )
            store.delete_other_sessions(session, actor.tenant, actor.username, actor.session_digest)
            store.clear_failures(session, actor.tenant, actor.username)
            store.touch_session(session, actor.tenant, actor.session_digest, now)
            entry = self._record(
                actor.tenant,
                now,
                RecordEvent.STAFF_OPERATION,
                Outcome.OK,
                actor.username,
                CHANGE_PASSWORD,
            )
            self._recorder.append(session, [entry])

    # --- retention -------------------------------------------------------------------------------

    def purge(self, session: Session, now: datetime, tenant: str | None) -> int:
        """Delete ended sessions and forgotten failures (in the caller's purge transaction)."""
        idle_cutoff = now - self.settings.session_idle_timeout
        ended = store.purge_sessions(session, now, idle_cutoff, tenant)
        store.purge_failures(session, now, now - self.settings.lockout, tenant)
        return ended
