"""The network's secret keys: the two code keys and the permit-signing key ring.

Owns the files under the network's data directory: ``code-person.key`` (k_person) and
``code-code.key`` (k_code), 32 random bytes each, owner-only; and the ``KeyRing`` named
``network`` whose Ed25519 keys sign permit batches. Publishes the permit keys with their
validity windows (current, then previous ones still in their overlap window), and announces a
new key before signing with it: a rotated key is published at once but signs only once it has
been published for ``activation``, so a platform that refreshed its key cache a moment before
the rotation (platforms refresh on an unknown key id at most about once a second) never meets
a batch signed with a key it cannot have learned yet.

Must never: log, return or put into the database any secret byte; write a key readable by
anyone but the owner (``linkage.keys`` refuses); serve a previous permit key after its window;
sign with a key before it has been published for ``activation``.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from linkage.crypto import Signer, key_id
from linkage.keys import KeyRing, exclusive_lock, private_dir, read_private_file, write_private_file

NETWORK_SIGNER = "network"
CODE_KEY_SIZE = 32
PERSON_KEY_FILE = "code-person.key"
CODE_KEY_FILE = "code-code.key"


def load_or_create_secret(path: Path, size: int = CODE_KEY_SIZE) -> bytes:
    """A random secret kept in an owner-only file, created on first use."""
    private_dir(path.parent)
    with exclusive_lock(path.parent / f".{path.name}.lock"):
        if not path.exists():
            write_private_file(path, os.urandom(size))
        secret = read_private_file(path)
    if len(secret) != size:
        raise ValueError(f"{path.name} must hold {size} bytes")
    return secret


@dataclass(frozen=True, slots=True)
class CodeSecrets:
    """k_person and k_code (ARCHITECTURE.md, "Linkage codes"); repr never shows them."""

    k_person: bytes
    k_code: bytes

    def __repr__(self) -> str:
        return "CodeSecrets(<secret>)"

    @classmethod
    def load_or_create(cls, directory: Path) -> CodeSecrets:
        return cls(
            k_person=load_or_create_secret(directory / PERSON_KEY_FILE),
            k_code=load_or_create_secret(directory / CODE_KEY_FILE),
        )


@dataclass(frozen=True, slots=True)
class PublishedKey:
    """A permit-signing public key as the network publishes it (GetNetworkKeys)."""

    key_id: str
    public_key: bytes
    not_before: datetime
    not_after: datetime | None


class PermitKeys:
    """The permit-signing ring: the current signer and the published keys, rotation-aware.

    Replicas share the ring through the data directory; ``signer()`` re-reads the file when
    another process rotated it, so every replica signs with the key the others publish.
    """

    def __init__(
        self, directory: Path, overlap: timedelta, activation: timedelta = timedelta(0)
    ) -> None:
        if not timedelta(0) <= activation < overlap:
            raise ValueError("a permit key activates within its predecessor's overlap window")
        self._directory = directory
        self._overlap = overlap
        self._activation = activation
        self._lock = threading.Lock()
        self._ring = KeyRing.load_or_create(directory, NETWORK_SIGNER)
        self._mtime = self._ring.path.stat().st_mtime_ns

    def _refresh(self) -> KeyRing:
        with self._lock:
            mtime = self._ring.path.stat().st_mtime_ns
            if mtime != self._mtime:
                self._ring = KeyRing.load(self._directory, NETWORK_SIGNER)
                self._mtime = mtime
            return self._ring

    def signer(self, now: datetime | None = None) -> Signer:
        """The signer of the newest key published for ``activation`` at ``now`` (default: the
        current key); the oldest key of the ring if none is (a fresh ring's only key). Key id =
        sha256 of the verify key."""
        keys = self._refresh().keys  # newest first
        chosen = keys[0]
        if now is not None and self._activation:
            active = [key for key in keys if key.created_at + self._activation <= now]
            chosen = active[0] if active else keys[-1]
        verify = bytes(chosen.signing_key.verify_key)
        return Signer(holder=NETWORK_SIGNER, key_id=key_id(verify), key=chosen.signing_key)

    def published(self, now: datetime) -> list[PublishedKey]:
        """Current key first, then previous keys whose overlap window has not ended."""
        keys = self._refresh().keys
        published: list[PublishedKey] = []
        newer_created: datetime | None = None
        for key in keys:  # newest first
            not_after = None if newer_created is None else newer_created + self._overlap
            newer_created = key.created_at
            if not_after is not None and not_after <= now:
                continue
            verify = bytes(key.signing_key.verify_key)
            published.append(PublishedKey(key_id(verify), verify, key.created_at, not_after))
        return published

    def rotate(self, now: datetime) -> PublishedKey:
        """Make a new current key; retire previous keys whose window has ended."""
        with self._lock:
            self._ring.rotate()
            self._mtime = self._ring.path.stat().st_mtime_ns
        live = {key.key_id for key in self.published(now)}
        ring = self._refresh()
        for key in ring.previous:
            if key_id(bytes(key.signing_key.verify_key)) not in live:
                ring.retire(key.key_id)
        return self.published(now)[0]
