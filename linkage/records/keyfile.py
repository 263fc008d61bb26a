"""Key files of the records tools: verify keys for auditors, a signing key for purges.

Owns two small JSON formats (FORMAT.md §9): a verify-key file ``{"<key_id>": "<64 hex>"}``
that anyone may read, and a signing-key file ``{"key_id": "…", "signing_key": "<64 hex>"}``
that must be owner-only (0600; refused otherwise, as ssh does).

It must never print, log or ``repr`` a signing key, and never write one readable by others.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from nacl.signing import SigningKey, VerifyKey

from linkage.keys import read_private_file, write_private_file

__all__ = [
    "load_signing_key",
    "load_verify_keys",
    "save_signing_key",
    "save_verify_keys",
]


def load_verify_keys(path: Path) -> dict[str, VerifyKey]:
    """Read a verify-key file; raises ``ValueError`` naming the file and the bad entry."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object mapping key ids to hex verify keys")
    keys: dict[str, VerifyKey] = {}
    for key_id, value in data.items():
        try:
            raw = bytes.fromhex(value)
            if len(raw) != 32:
                raise ValueError("not 32 bytes")
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: key {key_id!r}: expected 64 hex digits") from exc
        keys[key_id] = VerifyKey(raw)
    return keys


def save_verify_keys(path: Path, keys: Mapping[str, VerifyKey]) -> None:
    """Write a verify-key file (public data)."""
    data = {key_id: bytes(key).hex() for key_id, key in sorted(keys.items())}
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def load_signing_key(path: Path) -> tuple[str, SigningKey]:
    """Read an owner-only signing-key file; returns (key_id, key)."""
    try:
        data = json.loads(read_private_file(path))
        key_id = data["key_id"]
        seed = bytes.fromhex(data["signing_key"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: expected {{'key_id': …, 'signing_key': <64 hex>}}") from exc
    if not isinstance(key_id, str) or not key_id or len(seed) != 32:
        raise ValueError(f"{path}: bad key_id or signing key length")
    return key_id, SigningKey(seed)


def save_signing_key(path: Path, key_id: str, key: SigningKey) -> None:
    """Write an owner-only (0600) signing-key file."""
    data = {"key_id": key_id, "signing_key": bytes(key).hex()}
    write_private_file(path, (json.dumps(data) + "\n").encode("utf-8"))
