"""Encryption of personal data at rest, with a key kept outside the database.

Owns the sealing of personal data that systems must store: individual numbers at the unified
address server, duplicated contents (副本) at the intermediate server. A stolen database alone
reveals nothing: the 32-byte data key lives in its own owner-only file (``DataKey``).

Public API::

    class DecryptionError(ValueError)
    class DataKey:
        DataKey(secret: bytes)                      # 32 bytes
        generate() -> DataKey
        load_or_create(path: Path) -> DataKey       # file of 32 random bytes, 0600
        key_id: bytes                               # 8 bytes, carried in every token
        encrypt(plaintext: bytes, *, context: bytes) -> bytes
        encrypt_many(plaintexts, contexts) -> list[bytes]  # a batch: one nonce draw
        decrypt(token: bytes, *, context: bytes) -> bytes
        blind_index(value: bytes) -> bytes          # 32 bytes, deterministic
    class DataKeyRing:                              # current key + previous keys, for rotation
        DataKeyRing(current: DataKey, previous: Iterable[DataKey] = ())
        encrypt / decrypt / blind_index as above; needs_reencryption(token) -> bool
    token_key_id(token: bytes) -> bytes

Token layout: ``version (1 byte, 0x01) | key id (8) | nonce (12) | AES-256-GCM ciphertext+tag``.
The associated data is the header (version and key id) plus the caller's ``context``, which must
name where the value belongs (for example ``b"ua.individual_number:" + row_id``): a token copied
into another row or tenant then fails to decrypt. Nonces are random (96 bits), so one key must
seal fewer than 2**32 values; rotate long before that.

The AES key and the blind-index key are derived from the data key with HKDF under different
labels, so the index (which must be deterministic) shares no key with the encryption.

It must never log, print or ``repr`` a key or a plaintext, never store the key in the database,
and never fall back to an unauthenticated mode: any tampering raises ``DecryptionError``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from linkage.keys import exclusive_lock, private_dir, read_private_file, write_private_file

__all__ = ["DataKey", "DataKeyRing", "DecryptionError", "token_key_id"]

VERSION = 1
KEY_SIZE = 32
KEY_ID_SIZE = 8
NONCE_SIZE = 12
TAG_SIZE = 16
_HEADER_SIZE = 1 + KEY_ID_SIZE
_MIN_TOKEN = _HEADER_SIZE + NONCE_SIZE + TAG_SIZE


class DecryptionError(ValueError):
    """A token that is malformed, tampered with, sealed for another context or another key."""


def _derive(secret: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(secret)


def token_key_id(token: bytes) -> bytes:
    """The id of the key that sealed ``token`` (to pick a key, or to find tokens to re-seal)."""
    if len(token) < _MIN_TOKEN or token[0] != VERSION:
        raise DecryptionError("not an at-rest token of a known version")
    return token[1:_HEADER_SIZE]


class DataKey:
    """One data key: AES-256-GCM sealing plus an HMAC-SHA256 blind index."""

    __slots__ = ("_aead", "_header", "_index_key", "key_id")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != KEY_SIZE:
            raise ValueError(f"a data key is {KEY_SIZE} bytes, got {len(secret)}")
        # Built once and reused: constructing AESGCM per call would dominate the cost.
        self._aead = AESGCM(_derive(secret, b"linkage.atrest.aes-256-gcm.v1"))
        self._index_key = _derive(secret, b"linkage.atrest.blind-index.v1")
        self.key_id = _derive(secret, b"linkage.atrest.key-id.v1")[:KEY_ID_SIZE]
        self._header = bytes([VERSION]) + self.key_id

    def __repr__(self) -> str:
        return f"DataKey(key_id={self.key_id.hex()})"

    @classmethod
    def generate(cls) -> DataKey:
        return cls(os.urandom(KEY_SIZE))

    @classmethod
    def load_or_create(cls, path: Path) -> DataKey:
        """Load the key file at ``path`` or create it (32 random bytes, 0600)."""
        if not path.parent.exists():
            private_dir(path.parent)  # an existing parent may be shared: leave its mode alone
        with exclusive_lock(path.with_name(f".{path.name}.lock")):
            if not path.exists():
                write_private_file(path, os.urandom(KEY_SIZE))
            return cls(read_private_file(path))

    def encrypt(self, plaintext: bytes, *, context: bytes) -> bytes:
        """Seal ``plaintext`` for the place named by ``context`` (must not be empty)."""
        _check_context(context)
        nonce = os.urandom(NONCE_SIZE)
        return self._header + nonce + self._aead.encrypt(nonce, plaintext, self._header + context)

    def encrypt_many(self, plaintexts: Sequence[bytes], contexts: Sequence[bytes]) -> list[bytes]:
        """``encrypt`` of each plaintext for its context, for bulk paths: the nonces of the
        batch come from one draw of the system's randomness (each still random, 96 bits)."""
        if len(plaintexts) != len(contexts):
            raise ValueError("one context per plaintext")
        if not all(contexts):
            _check_context(b"")
        header = self._header
        seal = self._aead.encrypt
        nonces = os.urandom(NONCE_SIZE * len(plaintexts))
        tokens = []
        offset = 0
        for plaintext, context in zip(plaintexts, contexts, strict=True):
            nonce = nonces[offset : offset + NONCE_SIZE]
            offset += NONCE_SIZE
            tokens.append(header + nonce + seal(nonce, plaintext, header + context))
        return tokens

    def decrypt(self, token: bytes, *, context: bytes) -> bytes:
        """Open a token sealed with this key for the same ``context``; else ``DecryptionError``."""
        _check_context(context)
        if token_key_id(token) != self.key_id:
            raise DecryptionError(f"token was sealed with key {token_key_id(token).hex()}")
        nonce = token[_HEADER_SIZE : _HEADER_SIZE + NONCE_SIZE]
        try:
            return self._aead.decrypt(
                nonce, token[_HEADER_SIZE + NONCE_SIZE :], token[:_HEADER_SIZE] + context
            )
        except InvalidTag:
            raise DecryptionError(
                "token failed authentication (tampered or wrong context)"
            ) from None

    def blind_index(self, value: bytes) -> bytes:
        """A keyed, deterministic digest of ``value`` for equality lookups (HMAC-SHA256)."""
        return hmac.new(self._index_key, value, hashlib.sha256).digest()


class DataKeyRing:
    """Seals with the current key, opens with whichever key a token names: rotation.

    The blind index always uses the current key, so rotating the key means recomputing the
    index column (and re-sealing the rows ``needs_reencryption`` flags) before retiring keys.
    """

    def __init__(self, current: DataKey, previous: Iterable[DataKey] = ()) -> None:
        self.current = current
        self._by_id = {key.key_id: key for key in (*previous, current)}

    def __repr__(self) -> str:
        return f"DataKeyRing(current={self.current!r}, keys={len(self._by_id)})"

    def encrypt(self, plaintext: bytes, *, context: bytes) -> bytes:
        return self.current.encrypt(plaintext, context=context)

    def decrypt(self, token: bytes, *, context: bytes) -> bytes:
        key = self._by_id.get(token_key_id(token))
        if key is None:
            raise DecryptionError(f"token was sealed with unknown key {token_key_id(token).hex()}")
        return key.decrypt(token, context=context)

    def blind_index(self, value: bytes) -> bytes:
        return self.current.blind_index(value)

    def needs_reencryption(self, token: bytes) -> bool:
        return token_key_id(token) != self.current.key_id


def _check_context(context: bytes) -> None:
    # An empty context would let a token be moved anywhere: refuse rather than seal unbound.
    if not context:
        raise ValueError("an at-rest context must name where the value is stored")
