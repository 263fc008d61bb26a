"""Staff password hashes of the intermediate server: now ``linkage.staffauth``, shared with the
unified address server. Kept so that existing imports (``server.passwords``) keep working.

Must never: grow code of its own (add it to ``linkage.staffauth``).
"""

from __future__ import annotations

from linkage.staffauth import (
    HASH_BYTES,
    MAX_LENGTH,
    MIN_LENGTH,
    SALT_BYTES,
    SCHEME,
    ScryptParams,
    hash_password,
    needs_rehash,
    password_problem,
    verify_password,
)

__all__ = [
    "HASH_BYTES",
    "MAX_LENGTH",
    "MIN_LENGTH",
    "SALT_BYTES",
    "SCHEME",
    "ScryptParams",
    "hash_password",
    "needs_rehash",
    "password_problem",
    "verify_password",
]
