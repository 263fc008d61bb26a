"""Staff password hashes: scrypt (stdlib ``hashlib.scrypt``) with its parameters kept beside it.

Owns the stored form ``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>`` (so the cost can be raised
later: a hash made with older parameters still verifies, and ``needs_rehash`` says when to
replace it at the next successful sign-in), the constant-time comparison, and the rules a new
password must meet.

Passwords are NFC-normalized before hashing, so the same password typed through different input
methods (full-width and composed kana alike) is the same password.

Must never: store or log a password, compare digests with ``==``, or accept stored parameters
so large that verifying one would exhaust memory (a tampered row must not be a denial of service).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import unicodedata
from dataclasses import dataclass

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
