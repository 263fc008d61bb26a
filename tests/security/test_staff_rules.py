"""The staff rules both servers share: lockout, session expiry, password and account checks.

``linkage.staffsessions`` and the INVALID_ARGUMENT checks of ``linkage.staffauth``, as pure
functions; each server's own tests cover them through sign-in, sessions and password changes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest

from linkage import staffsessions
from linkage.errors import Code, InvalidArgument, LinkageError
from linkage.staffauth import (
    MAX_LENGTH,
    MAX_TOKEN,
    check_new_account,
    check_password_change,
    token_shape_ok,
)
from server.staff import SignedIn as ServerSignedIn
from server.staff import StaffSettings as ServerSettings
from unified_address.staff_accounts import Role as UaRole
from unified_address.staff_accounts import SignedIn as UaSignedIn
from unified_address.staff_accounts import StaffSettings as UaSettings

NOW = datetime(2030, 4, 1, 9, 0, tzinfo=UTC)
SETTINGS = staffsessions.StaffSettings(max_failed_sign_ins=3, lockout=timedelta(minutes=15))
STRONG = "correct horse battery"


# --- lockout -------------------------------------------------------------------------------------


def test_an_attempt_within_the_limit_locks_nothing() -> None:
    assert staffsessions.lock_after_attempt(SETTINGS, NOW, 3, None) is None
    assert staffsessions.lock_after_attempt(SETTINGS, NOW, 1, NOW - timedelta(seconds=1)) is None


def test_an_attempt_past_the_limit_locks_for_the_lockout_from_now() -> None:
    assert staffsessions.lock_after_attempt(SETTINGS, NOW, 4, None) == NOW + timedelta(minutes=15)
    ended = NOW  # a lock ending exactly now is no longer in force
    assert staffsessions.lock_after_attempt(SETTINGS, NOW, 4, ended) == NOW + timedelta(minutes=15)


def test_an_attempt_while_locked_keeps_the_lock_as_it_is() -> None:
    until = NOW + timedelta(minutes=2)
    assert staffsessions.lock_after_attempt(SETTINGS, NOW, 1, until) == until
    assert staffsessions.lock_after_attempt(SETTINGS, NOW, 99, until) == until


def test_a_wrong_password_locks_once_the_count_reaches_the_limit() -> None:
    assert staffsessions.lock_after_failure(SETTINGS, NOW, 2, None) is None
    assert staffsessions.lock_after_failure(SETTINGS, NOW, 3, None) == NOW + timedelta(minutes=15)
    assert staffsessions.lock_after_failure(SETTINGS, NOW, 3, NOW) == NOW + timedelta(minutes=15)


def test_a_wrong_password_while_locked_changes_nothing() -> None:
    assert staffsessions.lock_after_failure(SETTINGS, NOW, 9, NOW + timedelta(seconds=1)) is None


def test_sign_in_locked_says_the_whole_seconds_left_at_least_one() -> None:
    error = staffsessions.sign_in_locked(NOW + timedelta(seconds=90, milliseconds=900), NOW)
    assert (error.code, error.reason) == (Code.RESOURCE_EXHAUSTED, "SIGN_IN_LOCKED")
    assert error.metadata == {"retryAfterSeconds": "90"}
    assert staffsessions.sign_in_locked(NOW + timedelta(milliseconds=1), NOW).metadata == {
        "retryAfterSeconds": "1"
    }


# --- sessions ------------------------------------------------------------------------------------


def test_a_session_ends_at_its_absolute_expiry_or_after_idling() -> None:
    idle = SETTINGS.session_idle_timeout

    def ended(last_used_at: datetime, expires_at: datetime) -> bool:
        return staffsessions.session_ended(
            SETTINGS, NOW, last_used_at=last_used_at, expires_at=expires_at
        )

    later = NOW + timedelta(hours=1)
    assert not ended(NOW - idle + timedelta(seconds=1), later)
    assert ended(NOW - idle, later)
    assert ended(NOW, NOW)
    assert not ended(NOW, NOW + timedelta(seconds=1))


def test_a_token_of_no_possible_shape_is_refused_before_any_lookup() -> None:
    assert not token_shape_ok("")
    assert not token_shape_ok("x" * (MAX_TOKEN + 1))
    assert token_shape_ok("x")
    assert token_shape_ok("x" * MAX_TOKEN)


@pytest.mark.parametrize(
    ("error", "code", "reason"),
    [
        (staffsessions.invalid_credentials(), Code.UNAUTHENTICATED, "INVALID_CREDENTIALS"),
        (staffsessions.no_session(), Code.UNAUTHENTICATED, "NO_SESSION"),
        (staffsessions.unknown_session(), Code.UNAUTHENTICATED, "INVALID_SESSION"),
        (staffsessions.session_expired(), Code.UNAUTHENTICATED, "SESSION_EXPIRED"),
        (
            staffsessions.password_change_required(),
            Code.PERMISSION_DENIED,
            "PASSWORD_CHANGE_REQUIRED",
        ),
    ],
)
def test_refusals_keep_their_status_and_reason(
    error: LinkageError, code: Code, reason: str
) -> None:
    assert (error.code, error.reason) == (code, reason)


def test_each_refusal_is_a_fresh_error() -> None:
    assert staffsessions.session_expired() is not staffsessions.session_expired()


# --- settings and results of both servers --------------------------------------------------------


def test_both_servers_share_the_settings_and_the_unified_address_adds_its_purge() -> None:
    assert ServerSettings is staffsessions.StaffSettings
    assert issubclass(UaSettings, staffsessions.StaffSettings)
    shared = staffsessions.StaffSettings()
    ua = UaSettings()
    for name in ("session_idle_timeout", "session_lifetime", "max_failed_sign_ins", "lockout"):
        assert getattr(ua, name) == getattr(shared, name)
    assert ua.purge_interval == timedelta(minutes=10)


def test_both_servers_return_the_same_signed_in_result() -> None:
    assert ServerSignedIn is UaSignedIn
    signed = UaSignedIn("t", NOW, True, (UaRole.VIEWER,))
    assert signed.roles == (UaRole.VIEWER,)


# --- password and account checks -----------------------------------------------------------------


def _reason(call: Callable[[], None]) -> tuple[str, list[str]]:
    """The reason and the fields named of the INVALID_ARGUMENT ``call`` raises."""
    with pytest.raises(InvalidArgument) as raised:
        call()
    return raised.value.reason, [v.field for v in raised.value.violations]


def test_a_password_change_needs_the_current_password() -> None:
    for current in ("", "x" * (MAX_LENGTH + 1)):
        call = partial(check_password_change, current, STRONG, username="sato")
        assert _reason(call) == ("MISSING_PASSWORD", ["current_password"])


def test_a_password_change_needs_a_strong_new_password() -> None:
    call = partial(check_password_change, "old password", "short", username="sato")
    assert _reason(call) == ("WEAK_PASSWORD", ["new_password"])


def test_a_password_change_needs_a_different_password() -> None:
    call = partial(check_password_change, STRONG, STRONG, username="sato")
    assert _reason(call) == ("SAME_PASSWORD", ["new_password"])
    check_password_change("old password", STRONG, username="sato")


def test_a_new_account_names_every_problem_under_the_servers_field_name() -> None:
    def both() -> None:
        check_new_account("admin", "short", organization="org1", password_field="initial_password")

    assert _reason(both) == ("INVALID_USERNAME", ["username", "initial_password"])

    def weak() -> None:
        check_new_account("sato", "short", organization="org1", password_field="password")

    assert _reason(weak) == ("WEAK_PASSWORD", ["password"])
    check_new_account("sato", STRONG, organization="org1", password_field="password")
