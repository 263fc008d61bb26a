"""Staff credentials shared by every server that has staff: passwords, user names, tokens.

Owns, for the intermediate server (``server.staff``) and the unified address server
(``unified_address.staff_accounts``) alike:

* password hashes: scrypt (stdlib ``hashlib.scrypt``) in the stored form
  ``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>`` (so the cost can be raised later: a hash made
  with older parameters still verifies, and ``needs_rehash`` says when to replace it at the next
  successful sign-in), the constant-time comparison, and the rules a new password must meet
  (``password_problem``; as INVALID_ARGUMENT for a new account, ``check_new_account``, and for a
  password change, ``check_password_change``). Passwords are NFC-normalized before hashing,
  so the same password typed through different input methods (full-width and composed kana
  alike) is the same password;
* ``PasswordHasher``: hashing and checking off the event loop, a bounded number at once, with a
  dummy hash of the same cost for unknown user names (same work, same timing);
* user names: the syntax, and the rule that an account names one person, never a post or a
  group (no shared accounts); the shape check of sign-in credentials (before any lookup);
* session tokens: opaque random strings of which a database keeps only the sha256 (and the
  shape check of a presented one, before any lookup);
* reading an initial password from standard input for an operator command.

Each server keeps its own accounts, sessions and roles in its own database: only these
mechanics are shared (the lockout and session rules are ``linkage.staffsessions``).

Must never: store or log a password or a token, compare digests with ``==``, or accept stored
parameters so large that verifying one would exhaust memory (a tampered row must not be a
denial of service).
"""

from __future__ import annotations

import asyncio
import base64
import getpass
import hashlib
import hmac
import re
import secrets
import unicodedata
from dataclasses import dataclass
from typing import TextIO

from linkage.errors import FieldViolation, InvalidArgument

SCHEME = "scrypt"
SALT_BYTES = 16
HASH_BYTES = 32
MIN_LENGTH = 12
MAX_LENGTH = 256
# Bounds on parameters read back from the database (2**20 × r=8 is 1 GiB: far beyond any use).
_MAX_N = 2**20
_MAX_R = 32
_MAX_P = 16


@dataclass(frozen=True, slots=True)
class ScryptParams:
    """The scrypt cost: CPU/memory ``n`` (a power of two), block size ``r``, parallelism ``p``."""

    n: int = 2**14
    r: int = 8
    p: int = 1

    def __post_init__(self) -> None:
        if not _valid_params(self.n, self.r, self.p):
            raise ValueError("scrypt parameters out of range")

    @property
    def maxmem(self) -> int:
        """The memory OpenSSL needs for these parameters, with a little room."""
        return 128 * self.r * (self.n + 2) + 128 * self.r * self.p + 1024 * 1024


def _valid_params(n: int, r: int, p: int) -> bool:
    return 2 <= n <= _MAX_N and n & (n - 1) == 0 and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P


def _derive(password: str, salt: bytes, params: ScryptParams) -> bytes:
    return hashlib.scrypt(
        unicodedata.normalize("NFC", password).encode("utf-8"),
        salt=salt,
        n=params.n,
        r=params.r,
        p=params.p,
        maxmem=params.maxmem,
        dklen=HASH_BYTES,
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, params: ScryptParams) -> str:
    """A fresh salted hash of ``password`` in the stored form."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _derive(password, salt, params)
    return f"{SCHEME}${params.n}${params.r}${params.p}${_b64(salt)}${_b64(digest)}"


@dataclass(frozen=True, slots=True)
class _Parsed:
    params: ScryptParams
    salt: bytes
    digest: bytes


def _parse(stored: str) -> _Parsed | None:
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        return None
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except ValueError:
        return None
    if not _valid_params(n, r, p) or not salt or not digest:
        return None
    return _Parsed(ScryptParams(n, r, p), salt, digest)


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (constant-time; a malformed hash never matches)."""
    parsed = _parse(stored)
    if parsed is None:
        return False
    return hmac.compare_digest(_derive(password, parsed.salt, parsed.params), parsed.digest)


def needs_rehash(stored: str, params: ScryptParams) -> bool:
    """Whether ``stored`` was made with parameters other than ``params`` (now the standard)."""
    parsed = _parse(stored)
    return parsed is None or parsed.params != params or len(parsed.digest) != HASH_BYTES


def password_problem(password: str, *, username: str) -> str | None:
    """Why ``password`` may not be set, or None: length, control characters, the user name."""
    if len(password) < MIN_LENGTH:
        return f"at least {MIN_LENGTH} characters"
    if len(password) > MAX_LENGTH:
        return f"at most {MAX_LENGTH} characters"
    if any(unicodedata.category(char).startswith("C") for char in password):
        return "no control characters"
    if username and username.casefold() in password.casefold():
        return "must not contain the user name"
    if len(set(password)) < 4:
        return "too few different characters"
    return None


def invalid_field(reason: str, field_name: str, description: str) -> InvalidArgument:
    """INVALID_ARGUMENT with ``reason`` and one field violation."""
    return InvalidArgument(
        reason,
        f"{field_name}: {description}",
        violations=(FieldViolation(field_name, description),),
    )


def check_password_change(current: str, new: str, *, username: str) -> None:
    """INVALID_ARGUMENT unless a password change may be tried: the current password given
    (MISSING_PASSWORD), the new one strong enough (WEAK_PASSWORD) and different
    (SAME_PASSWORD). Checked before the current password is: bad input counts no attempt."""
    if not current or len(current) > MAX_LENGTH:
        raise invalid_field("MISSING_PASSWORD", "current_password", "required")
    problem = password_problem(new, username=username)
    if problem is not None:
        raise invalid_field("WEAK_PASSWORD", "new_password", problem)
    if new == current:
        raise invalid_field("SAME_PASSWORD", "new_password", "must differ from the current one")


# --- hashing off the event loop ---------------------------------------------------------------

_DUMMY_PASSWORD = "not-a-password-of-anyone"  # noqa: S105 (hashed to equalize timing only)


class PasswordHasher:
    """scrypt off the event loop, at most ``max_concurrent`` at once (each takes n·r·128 bytes,
    16 MiB by default); ``check`` against no account costs the same as against one."""

    def __init__(self, params: ScryptParams, max_concurrent: int = 4) -> None:
        self.params = params
        self._slots = asyncio.Semaphore(max_concurrent)
        self._dummy: str | None = None

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(hash_password, password, self.params)

    async def check(self, password: str, stored: str | None) -> bool:
        """Whether ``password`` matches ``stored``; None (no such account) never matches."""
        async with self._slots:
            return await asyncio.to_thread(self.verify, password, stored)

    def verify(self, password: str, stored: str | None) -> bool:
        """Blocking ``check``: against the account's hash, or a dummy one of the same cost."""
        if stored is None:
            verify_password(password, self.dummy_hash())
            return False
        return verify_password(password, stored)

    def dummy_hash(self) -> str:
        if self._dummy is None:
            self._dummy = hash_password(_DUMMY_PASSWORD, self.params)
        return self._dummy


# --- user names ---------------------------------------------------------------------------------

_USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_TRAILING_NUMBER = re.compile(r"[._-]*[0-9]*$")
# Names that describe a post or a group, not a person: an account so named would be shared.
GENERIC_NAMES = frozenset(
    {
        "admin",
        "administrator",
        "anonymous",
        "common",
        "console",
        "default",
        "demo",
        "everyone",
        "guest",
        "kanri",
        "office",
        "operator",
        "reviewer",
        "root",
        "service",
        "shared",
        "staff",
        "superuser",
        "support",
        "sysadmin",
        "system",
        "tantou",
        "team",
        "test",
        "user",
    }
)


def username_problem(username: str) -> str | None:
    """Why ``username`` is not a valid user name (syntax only), or None."""
    if _USERNAME.fullmatch(username) is None:
        return "1 to 64 of [a-z0-9._-], starting with a letter or digit"
    return None


def personal_username_problem(username: str, organization: str) -> str | None:
    """Why ``username`` may not name a new account (syntax, or a post rather than a person)."""
    problem = username_problem(username)
    if problem is not None:
        return problem
    base = _TRAILING_NUMBER.sub("", username)
    if base in GENERIC_NAMES or base == organization or username == organization:
        return "names a post or a group, not one person (no shared accounts)"
    return None


def check_new_account(
    username: str, password: str, *, organization: str, password_field: str
) -> None:
    """INVALID_ARGUMENT unless ``username`` may name a new account of ``organization`` and
    ``password`` may be its initial password (each problem a violation; the reason
    INVALID_USERNAME when the user name is one of them, else WEAK_PASSWORD)."""
    violations: list[FieldViolation] = []
    problem = personal_username_problem(username, organization)
    if problem is not None:
        violations.append(FieldViolation("username", problem))
    weak = password_problem(password, username=username)
    if weak is not None:
        violations.append(FieldViolation(password_field, weak))
    if violations:
        raise InvalidArgument(
            "INVALID_USERNAME" if problem is not None else "WEAK_PASSWORD",
            f"{violations[0].field}: {violations[0].description}",
            violations=violations,
        )


def check_credentials_shape(username: str, password: str) -> None:
    """INVALID_ARGUMENT (INVALID_CREDENTIALS_FORMAT) unless the user name has the syntax and the
    password is 1 to ``MAX_LENGTH`` characters: checked before any lookup or hashing."""
    violations: list[FieldViolation] = []
    problem = username_problem(username)
    if problem is not None:
        violations.append(FieldViolation("username", problem))
    if not password or len(password) > MAX_LENGTH:
        violations.append(FieldViolation("password", f"1 to {MAX_LENGTH} characters"))
    if violations:
        raise InvalidArgument(
            "INVALID_CREDENTIALS_FORMAT",
            f"{violations[0].field}: {violations[0].description}",
            violations=violations,
        )


# --- session tokens -----------------------------------------------------------------------------


MAX_TOKEN = 256


def new_session_token() -> str:
    """A fresh opaque session token (256 random bits), shown once to the staff member."""
    return secrets.token_urlsafe(32)


def token_shape_ok(token: str) -> bool:
    """Whether ``token`` could be a session token at all (present, at most ``MAX_TOKEN``)."""
    return 0 < len(token) <= MAX_TOKEN


def token_digest(token: str) -> bytes:
    """The sha256 of a session token: all the database ever holds of it."""
    return hashlib.sha256(token.encode("utf-8")).digest()


# --- operator commands --------------------------------------------------------------------------


class PasswordInputError(ValueError):
    """No usable password on standard input."""


def read_password(stdin: TextIO, stderr: TextIO) -> str:
    """An initial password: asked twice without echo on a terminal, else the first line."""
    if stdin.isatty():
        first = getpass.getpass("initial password: ", stream=stderr)
        if getpass.getpass("again: ", stream=stderr) != first:
            raise PasswordInputError("the two passwords differ")
        password = first
    else:
        password = stdin.readline().removesuffix("\n").removesuffix("\r")
    if not password:
        raise PasswordInputError("no password on standard input")
    return password
