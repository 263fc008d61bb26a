"""Sign-in lockout and session rules shared by every server that has staff.

Owns, for the intermediate server (``server.staff``) and the unified address server
(``unified_address.staff_accounts``) alike:

* ``StaffSettings``: session lifetimes, the lockout limit and window, the password hash cost;
* ``SignedIn``: what a successful sign-in returns (the token, shown once, and what it allows);
* the decisions made with those settings, as pure functions of stored values and the clock:
  when a counted attempt or a wrong password locks it and until
  when, whether a session has ended (absolute or idle expiry);
* the refusals both servers give, word for word (gRPC status and machine-readable reason).

Each server keeps its own tables and SQL, tenancy, roles and records (the tenant's access records,
or the unified address audit log): only the rules are shared. Credential mechanics (hashes,
tokens, user names) are ``linkage.staffauth``.

Must never: read or write a database, record or log anything, see a password or a token, or
import grpc.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Generic, TypeVar

from linkage.errors import PermissionDenied, ResourceExhausted, Unauthenticated
from linkage.staffauth import ScryptParams

R = TypeVar("R", bound=StrEnum)


@dataclass(frozen=True)
class StaffSettings:
    """Session lifetimes, lockout and the password hash cost."""

    session_idle_timeout: timedelta = timedelta(minutes=30)
    session_lifetime: timedelta = timedelta(hours=8)
    max_failed_sign_ins: int = 5
    lockout: timedelta = timedelta(minutes=15)
    max_concurrent_hashes: int = 4
    password_params: ScryptParams = field(default_factory=ScryptParams)


@dataclass(frozen=True, slots=True)
class SignedIn(Generic[R]):
    """A new session: the token (shown once, never stored) and what it allows."""

    token: str
    expires_at: datetime
    password_change_required: bool
    roles: tuple[R, ...]


# --- lockout ------------------------------------------------------------------------------------


def _in_force(locked_until: datetime | None, now: datetime) -> bool:
    return locked_until is not None and locked_until > now


def lock_after_attempt(
    settings: StaffSettings, now: datetime, count: int, locked_until: datetime | None
) -> datetime | None:
    """The lock in force once an attempt is counted (``count`` attempts in the window, this one
    included): a lock still in force stays; past ``max_failed_sign_ins`` attempts, a new one
    for ``lockout`` from now; else none."""
    if _in_force(locked_until, now):
        return locked_until
    return now + settings.lockout if count > settings.max_failed_sign_ins else None


def lock_after_failure(
    settings: StaffSettings, now: datetime, failures: int, locked_until: datetime | None
) -> datetime | None:
    """A new lock once a wrong password is found (``failures`` counted): for ``lockout`` from
    now when no lock is in force and the count has reached ``max_failed_sign_ins``; else None
    (nothing to change)."""
    if _in_force(locked_until, now) or failures < settings.max_failed_sign_ins:
        return None
    return now + settings.lockout


# --- sessions -----------------------------------------------------------------------------------


def session_ended(
    settings: StaffSettings, now: datetime, *, last_used_at: datetime, expires_at: datetime
) -> bool:
    """Whether a session is past its absolute expiry or has been idle too long."""
    return now >= expires_at or now >= last_used_at + settings.session_idle_timeout


# --- refusals -----------------------------------------------------------------------------------


def sign_in_locked(until: datetime, now: datetime) -> ResourceExhausted:
    """SIGN_IN_LOCKED, with the whole seconds (at least 1) until the lock ends."""
    seconds = max(1, int((until - now).total_seconds()))
    return ResourceExhausted(
        "SIGN_IN_LOCKED",
        "too many failed sign-ins; try again later",
        metadata={"retryAfterSeconds": str(seconds)},
    )


def invalid_credentials() -> Unauthenticated:
    """INVALID_CREDENTIALS: an unknown user name and a wrong password alike."""
    return Unauthenticated("INVALID_CREDENTIALS", "unknown user name or wrong password")


def no_session() -> Unauthenticated:
    """NO_SESSION: no token, or one that cannot be a token."""
    return Unauthenticated("NO_SESSION", "sign in first")


def unknown_session() -> Unauthenticated:
    """INVALID_SESSION: no session has this token (never issued, signed out or purged)."""
    return Unauthenticated("INVALID_SESSION", "the session is unknown or has ended")


def session_expired() -> Unauthenticated:
    """SESSION_EXPIRED: the session ended, or its account is gone."""
    return Unauthenticated("SESSION_EXPIRED", "the session has expired; sign in again")


def password_change_required() -> PermissionDenied:
    """PASSWORD_CHANGE_REQUIRED: the initial password is still to change."""
    return PermissionDenied("PASSWORD_CHANGE_REQUIRED", "change the initial password first")
