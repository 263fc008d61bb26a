"""Organization key pairs (signing and encryption) and the owner-only files that hold keys.

Owns:

* ``KeyRing``: one organization's (or the network's) Ed25519 signing key and X25519 encryption
  key, generated together as one ``OrgKey`` generation with one key id, persisted in
  ``<directory>/<name>.keyring.json`` (0600, directory 0700). ``rotate()`` makes a new current
  generation and keeps the previous ones, so answers encrypted to, and signatures made with, an
  old key still verify and decrypt until ``retire()`` drops it: rotation without downtime. A
  rotation that must be published first uses ``locked()``, ``pending()`` and ``promote()``;
  a process that holds a ring sees another's rotation through ``refresh()``.
* ``PublicKeys``: what an organization publishes to the network directory (key id, verify key,
  encryption public key), with a JSON-safe ``to_dict``/``from_dict``.
* The owner-only file helpers the PKI and at-rest modules share: ``private_dir``,
  ``write_private_file``, ``read_private_file``, ``exclusive_lock``.

Public API::

    key_id(verify_key: bytes, encryption_key: bytes) -> str
    class PublicKeys:   key_id, verify_key, encryption_key, created_at;
                        to_dict() -> dict[str, str]; from_dict(d) -> PublicKeys;
                        nacl_verify_key() -> VerifyKey; nacl_public_key() -> PublicKey
    class OrgKey:       key_id, created_at, signing_key, encryption_key;
                        generate() -> OrgKey; public() -> PublicKeys
    class KeyRing:      load_or_create(directory, name) -> KeyRing; load(directory, name);
                        name, path, current, previous, keys; get(key_id) -> OrgKey;
                        rotate() -> OrgKey; retire(key_id) -> None; public_keys() -> list[...]
                        locked(); pending() -> OrgKey; promote(key); refresh() -> KeyRing
    private_dir(path) -> Path
    write_private_file(path, data, *, mode=0o600) -> None
    read_private_file(path) -> bytes
    exclusive_lock(lock_file) -> ContextManager[None]

It must never log, print or ``repr`` private key material, never write a key file anyone but
the owner can read, and never read one that others can (``read_private_file`` refuses).
Payload signing and encryption themselves belong to the payload crypto module, not here.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nacl.public import PrivateKey, PublicKey
from nacl.signing import SigningKey, VerifyKey

__all__ = [
    "KeyRing",
    "OrgKey",
    "PublicKeys",
    "exclusive_lock",
    "key_id",
    "private_dir",
    "read_private_file",
    "write_private_file",
]

KEYRING_FORMAT = 1
# Names become file names: keep them to a safe alphabet so no name can escape the directory.
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9.-]{0,63}")
_KEY_ID_DOMAIN = b"linkage.org-key.v1\x00"


# --- owner-only files -----------------------------------------------------------------------


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if needed and make it owner-only (0700)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def write_private_file(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Atomically write ``data`` to ``path`` with ``mode`` (owner-only by default).

    A temporary file in the same directory is created with the final mode from the start (the
    secret is never readable by others, not even briefly) and then renamed over ``path``, so a
    reader sees the old or the new content, never a torn file.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # the umask may have narrowed it; never widened
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_private_file(path: Path) -> bytes:
    """Read a secret file, refusing one that group or others can access (as ssh does)."""
    with path.open("rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if mode & 0o077:
            raise PermissionError(
                f"{path} is accessible by group or others (mode {mode & 0o777:o}); "
                "key files must be 0600"
            )
        return handle.read()


@contextmanager
def exclusive_lock(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_file`` (across processes and threads).

    Key creation is check-then-create; without the lock two processes starting together could
    each create a different CA or key ring and one would silently win.
    """
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


# --- keys -----------------------------------------------------------------------------------


def key_id(verify_key: bytes, encryption_key: bytes) -> str:
    """The id of one key generation: 16 hex digits of SHA-256 over both public keys."""
    return hashlib.sha256(_KEY_ID_DOMAIN + verify_key + encryption_key).hexdigest()[:16]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, length: int, what: str) -> bytes:
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    if len(raw) != length:
        raise ValueError(f"{what} must be {length} bytes, got {len(raw)}")
    return raw


@dataclass(frozen=True, eq=False)
class PublicKeys:
    """The public half of one key generation, as published in the network directory."""

    key_id: str
    verify_key: bytes  # Ed25519, 32 bytes
    encryption_key: bytes  # X25519, 32 bytes
    created_at: datetime

    def nacl_verify_key(self) -> VerifyKey:
        return VerifyKey(self.verify_key)

    def nacl_public_key(self) -> PublicKey:
        return PublicKey(self.encryption_key)

    def to_dict(self) -> dict[str, str]:
        return {
            "key_id": self.key_id,
            "verify_key": _b64(self.verify_key),
            "encryption_key": _b64(self.encryption_key),
            "created_at": self.created_at.isoformat(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> PublicKeys:
        """Parse and check: the key id must match the keys, so a swapped key is detected."""
        keys = cls(
            key_id=data["key_id"],
            verify_key=_unb64(data["verify_key"], 32, "verify_key"),
            encryption_key=_unb64(data["encryption_key"], 32, "encryption_key"),
            created_at=datetime.fromisoformat(data["created_at"]),
        )
        if key_id(keys.verify_key, keys.encryption_key) != keys.key_id:
            raise ValueError(f"key id {keys.key_id!r} does not match the public keys")
        return keys


@dataclass(frozen=True, eq=False)
class OrgKey:
    """One key generation: an Ed25519 signing key and an X25519 encryption key."""

    key_id: str
    created_at: datetime
    signing_key: SigningKey = field(repr=False)
    encryption_key: PrivateKey = field(repr=False)

    @classmethod
    def generate(cls) -> OrgKey:
        return cls._from_parts(SigningKey.generate(), PrivateKey.generate(), datetime.now(UTC))

    @classmethod
    def _from_parts(cls, sign: SigningKey, enc: PrivateKey, created_at: datetime) -> OrgKey:
        kid = key_id(bytes(sign.verify_key), bytes(enc.public_key))
        return cls(key_id=kid, created_at=created_at, signing_key=sign, encryption_key=enc)

    def public(self) -> PublicKeys:
        return PublicKeys(
            key_id=self.key_id,
            verify_key=bytes(self.signing_key.verify_key),
            encryption_key=bytes(self.encryption_key.public_key),
            created_at=self.created_at,
        )

    def _to_record(self) -> dict[str, str]:
        return {
            "key_id": self.key_id,
            "created_at": self.created_at.isoformat(),
            "signing_seed": _b64(bytes(self.signing_key)),
            "encryption_secret": _b64(bytes(self.encryption_key)),
        }

    @classmethod
    def _from_record(cls, record: dict[str, Any]) -> OrgKey:
        key = cls._from_parts(
            SigningKey(_unb64(record["signing_seed"], 32, "signing_seed")),
            PrivateKey(_unb64(record["encryption_secret"], 32, "encryption_secret")),
            datetime.fromisoformat(record["created_at"]),
        )
        if key.key_id != record["key_id"]:
            raise ValueError(f"key ring record {record['key_id']!r} does not match its keys")
        return key


class KeyRing:
    """The current key generation plus the previous ones not yet retired, kept on disk."""

    def __init__(self, path: Path, name: str, keys: list[OrgKey]) -> None:
        if not keys:
            raise ValueError("a key ring needs at least one key")
        self.path = path
        self.name = name
        self._keys = keys  # current first, then previous from newest to oldest
        self._stamp = _stamp(path)  # the file as read: ``refresh`` re-reads a changed one

    def __repr__(self) -> str:
        return f"KeyRing(name={self.name!r}, key_ids={[k.key_id for k in self._keys]!r})"

    @staticmethod
    def _path(directory: Path, name: str) -> Path:
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"invalid key ring name {name!r}")
        return directory / f"{name}.keyring.json"

    @classmethod
    def load(cls, directory: Path, name: str) -> KeyRing:
        """Load an existing ring; ``FileNotFoundError`` if there is none."""
        path = cls._path(directory, name)
        return cls(path, name, _read_keys(path))

    @classmethod
    def load_or_create(cls, directory: Path, name: str) -> KeyRing:
        """Load the ring ``name`` from ``directory``, creating it with one fresh key if absent."""
        path = cls._path(directory, name)
        private_dir(directory)
        with exclusive_lock(directory / ".lock"):
            if path.exists():
                return cls(path, name, _read_keys(path))
            keys = [OrgKey.generate()]
            _write_keys(path, name, keys)
            return cls(path, name, keys)

    @property
    def current(self) -> OrgKey:
        return self._keys[0]

    @property
    def previous(self) -> tuple[OrgKey, ...]:
        return tuple(self._keys[1:])

    @property
    def keys(self) -> tuple[OrgKey, ...]:
        return tuple(self._keys)

    def get(self, kid: str) -> OrgKey:
        """The key generation with id ``kid`` (current or previous); ``KeyError`` if unknown."""
        for key in self._keys:
            if key.key_id == kid:
                return key
        raise KeyError(kid)

    def public_keys(self) -> list[PublicKeys]:
        """Public halves of every live generation, current first, for the network directory."""
        return [key.public() for key in self._keys]

    def rotate(self) -> OrgKey:
        """Make a new current generation; the old ones stay until retired. Returns the new one."""
        with self.locked():
            new = OrgKey.generate()
            self.promote(new)
        return new

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the ring's lock (across processes) through a change of several steps, such as
        ``pending``, publishing, ``promote``."""
        with exclusive_lock(self.path.parent / ".lock"):
            yield

    @property
    def pending_path(self) -> Path:
        return self.path.with_name(f"{self.name}.pending.json")

    def pending(self) -> OrgKey:
        """The next generation, made once and kept on disk (0600) until ``promote``: a rotation
        cut short (process killed, network unreachable) is finished with the same key when run
        again, so no key is ever published that no ring holds. Call inside ``locked``."""
        if self.pending_path.exists():
            return OrgKey._from_record(json.loads(read_private_file(self.pending_path)))
        new = OrgKey.generate()
        write_private_file(self.pending_path, json.dumps(new._to_record()).encode("utf-8"))
        return new

    def promote(self, new: OrgKey) -> None:
        """Make ``new`` the current generation (nothing changes if it is already) and drop the
        pending file. Call inside ``locked``."""
        # Re-read under the lock so a rotation made by another process is not overwritten.
        keys = _read_keys(self.path) if self.path.exists() else self._keys
        if keys[0].key_id != new.key_id:
            keys = [new, *keys]
            _write_keys(self.path, self.name, keys)
        self._keys, self._stamp = keys, _stamp(self.path)
        self.pending_path.unlink(missing_ok=True)

    def refresh(self) -> KeyRing:
        """Re-read the file if it changed since this ring read or wrote it (another process,
        say ``linkage keys rotate``, rotated it); one ``stat`` when it did not. Returns self.

        A changed file that cannot be read (wrong owner or mode, torn by hand) leaves the keys
        already loaded in use, so signing goes on with them; the next call tries again."""
        stamp = _stamp(self.path)
        if stamp != self._stamp and stamp is not None:
            try:
                self._keys, self._stamp = _read_keys(self.path), stamp
            except (OSError, ValueError, KeyError) as error:
                _log_unreadable(self.path, error)
        return self

    def retire(self, kid: str) -> None:
        """Drop a previous generation for good; the current one cannot be retired."""
        with exclusive_lock(self.path.parent / ".lock"):
            keys = _read_keys(self.path) if self.path.exists() else self._keys
            if keys[0].key_id == kid:
                raise ValueError(f"cannot retire the current key {kid}; rotate first")
            remaining = [key for key in keys if key.key_id != kid]
            if len(remaining) == len(keys):
                raise KeyError(kid)
            _write_keys(self.path, self.name, remaining)
            self._keys, self._stamp = remaining, _stamp(self.path)


def _log_unreadable(path: Path, error: Exception) -> None:
    from linkage.logs import get_logger  # only on this rare path: keys.py stays light

    get_logger(__name__).warning("key_ring_unreadable", ring=path.name, error=type(error).__name__)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells a rewritten file from the one read (files are replaced, never edited)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_ino, info.st_mtime_ns, info.st_size


def _read_keys(path: Path) -> list[OrgKey]:
    document = json.loads(read_private_file(path))
    if document.get("format") != KEYRING_FORMAT:
        raise ValueError(f"{path}: unsupported key ring format {document.get('format')!r}")
    return [OrgKey._from_record(record) for record in document["keys"]]


def _write_keys(path: Path, name: str, keys: list[OrgKey]) -> None:
    document = {"format": KEYRING_FORMAT, "name": name, "keys": [k._to_record() for k in keys]}
    write_private_file(path, json.dumps(document, indent=2).encode("utf-8"))
