"""Payload cryptography: signed envelopes, requester keys, sealed answer batches (PyNaCl).

- Envelopes: Ed25519 over the exact serialized body bytes (no canonicalization question).
- Requester keys: an X25519 public key in a ``RequesterKey`` signed by the requester's
  organization; the network binds its digest into every permit of a batch.
- Answer batches: the provider makes one ephemeral X25519 key pair per batch and precomputes
  the shared key with the requester key (``nacl.public.Box``), then seals each answer with
  XSalsa20-Poly1305 under it. One key agreement and one signature per batch, not per answer:
  that is what lets batch queries (一括照会) run at thousands per second.

Never log or return key material; a failed check raises ``InvalidArgument`` or
``PermissionDenied`` with a reason and nothing else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError, CryptoError
from nacl.public import Box, PrivateKey, PublicKey
from nacl.signing import SigningKey, VerifyKey

from linkage.errors import InvalidArgument
from linkage.v1 import common_pb2

NONCE_SIZE = Box.NONCE_SIZE


def key_id(public_key: bytes) -> str:
    """The id of a public key: the first 16 hex digits of its sha256."""
    return hashlib.sha256(public_key).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Signer:
    """An Ed25519 signing key with the name of its holder and the id it is published under."""

    holder: str
    key_id: str
    key: SigningKey

    def sign(self, body: bytes) -> common_pb2.SignedEnvelope:
        """Sign ``body`` into an envelope."""
        signature = self.key.sign(body).signature
        return common_pb2.SignedEnvelope(
            body=body, signature=signature, key_id=self.key_id, signer=self.holder
        )


def open_envelope(
    envelope: common_pb2.SignedEnvelope,
    keys: Mapping[str, bytes],
    *,
    expected_signer: str,
    reason: str = "BAD_SIGNATURE",
) -> bytes:
    """The body of ``envelope`` if ``expected_signer`` signed it with one of ``keys``.

    ``keys`` maps key id to raw Ed25519 public key (current and previous, for rotation).
    Raises ``InvalidArgument(reason)`` on a wrong signer, an unknown key or a bad signature.
    """
    if envelope.signer != expected_signer:
        raise InvalidArgument(reason, f"envelope signed by {envelope.signer!r}, not the expected")
    public = keys.get(envelope.key_id)
    if public is None:
        raise InvalidArgument(reason, "envelope signed with an unknown or retired key")
    try:
        VerifyKey(public).verify(envelope.body, envelope.signature)
    except (BadSignatureError, ValueError) as error:
        raise InvalidArgument(reason, "envelope signature does not verify") from error
    return envelope.body


def digest(data: bytes) -> bytes:
    """sha256 of ``data`` (binds a requester key into a permit batch)."""
    return hashlib.sha256(data).digest()


class BatchSealer:
    """Seals many answers to one requester key with one ephemeral key agreement."""

    def __init__(self, requester_public_key: bytes) -> None:
        try:
            recipient = PublicKey(requester_public_key)
        except (CryptoError, ValueError, TypeError) as error:
            raise InvalidArgument("BAD_REQUESTER_KEY", "requester key is not X25519") from error
        self._ephemeral = PrivateKey.generate()
        self._box = Box(self._ephemeral, recipient)

    @property
    def ephemeral_public_key(self) -> bytes:
        return bytes(self._ephemeral.public_key)

    def seal(self, plaintext: bytes) -> tuple[bytes, bytes]:
        """Encrypt one answer: returns (nonce, ciphertext) with a fresh random nonce."""
        encrypted = self._box.encrypt(plaintext)
        return encrypted.nonce, encrypted.ciphertext


class BatchOpener:
    """Opens answers sealed by a BatchSealer, with the requester's private key."""

    def __init__(self, requester_private_key: PrivateKey, ephemeral_public_key: bytes) -> None:
        try:
            self._box = Box(requester_private_key, PublicKey(ephemeral_public_key))
        except (CryptoError, ValueError, TypeError) as error:
            raise InvalidArgument("BAD_EPHEMERAL_KEY", "ephemeral key is not X25519") from error

    def open(self, nonce: bytes, ciphertext: bytes) -> bytes:
        """Decrypt one answer; a flipped bit or a wrong key raises ``InvalidArgument``."""
        try:
            return bytes(self._box.decrypt(ciphertext, nonce))
        except (CryptoError, ValueError, TypeError) as error:
            raise InvalidArgument("CIPHERTEXT_INVALID", "answer does not decrypt") from error
