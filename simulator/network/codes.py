"""Linkage codes (情報提供用個人識別符号): derivation and issuance through processing serials.

Owns the keyed-hash derivation of ARCHITECTURE.md, exactly::

    person_key        = HMAC-SHA256(k_person, resident_code)
    linkage_code(org) = base32(HMAC-SHA256(k_code, person_key ‖ org))[:20]

(``person_key`` is 32 bytes, so ``person_key ‖ org`` is unambiguous), the registration of a
processing serial (処理通番) handed over by the registry, and the issuance of a code to the
organization that presents the serial.

Must never: store or return a resident code (it becomes a person key at once), tell apart a
serial that does not exist from one issued for another organization, or give an organization a
code that is not its own. Never imports grpc.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from linkage.codes import CODE_CHARS
from linkage.db import unit_of_work
from linkage.errors import AlreadyExists, FailedPrecondition, NotFound
from linkage.records.ledger import Ledger
from simulator.network import ledger, repository
from simulator.network.keystore import CodeSecrets

RESIDENT_CODE_RE = re.compile(r"[0-9]{11}")
SERIAL_RE = re.compile(r"[A-Za-z0-9_-]{16,128}")


_CODE_BYTES = 5 * math.ceil(CODE_CHARS / 8)
"""Whole 5-byte groups (8 base32 characters each) that cover ``CODE_CHARS`` characters."""


class CodeDeriver:
    """Derives person keys and per-organization linkage codes with the network's two keys."""

    __slots__ = ("_k_code", "_k_person")

    def __init__(self, secrets: CodeSecrets) -> None:
        self._k_person = secrets.k_person
        self._k_code = secrets.k_code

    def __repr__(self) -> str:
        return "CodeDeriver(<secret>)"

    def person_key(self, resident_code: str) -> bytes:
        """The person key of a resident code; the resident code itself is not kept."""
        return hmac.new(self._k_person, resident_code.encode("ascii"), hashlib.sha256).digest()

    def linkage_code(self, person_key: bytes, organization: str) -> str:
        """The person's linkage code at ``organization``."""
        mac = hmac.new(self._k_code, person_key + organization.encode("ascii"), hashlib.sha256)
        # Base32 turns each 5 bytes into 8 characters on its own, so encoding only the bytes the
        # code keeps gives the same characters at a fraction of the (pure Python) cost.
        return base64.b32encode(mac.digest()[:_CODE_BYTES]).decode("ascii")[:CODE_CHARS]

    def codes_everywhere(self, person_key: bytes, organizations: Iterable[str]) -> dict[str, str]:
        """The person's code at each organization (for disclosure: search records by them)."""
        return {org: self.linkage_code(person_key, org) for org in organizations}


@dataclass(frozen=True, slots=True)
class SerialRegistration:
    """What the registry learns back: until when the serial can be presented."""

    expires_at: datetime
    linkage_code: str  # the code at the serial's organization, for the network's own record


def register_serial(
    session: Session,
    deriver: CodeDeriver,
    *,
    serial: str,
    resident_code: str,
    organization: str,
    now: datetime,
    ttl: timedelta,
) -> SerialRegistration:
    """Store a serial as (person key, organization, expiry); a retry with the same values is a
    no-op, reusing the serial for anything else is ALREADY_EXISTS."""
    if not repository.organization_exists(session, organization):
        raise NotFound("ORGANIZATION_NOT_FOUND", f"organization {organization!r} is not registered")
    person_key = deriver.person_key(resident_code)
    # Insert-or-ignore then read back: two registrations racing on one serial cannot both win.
    repository.add_serial(session, serial, person_key, organization, now + ttl, now)
    stored = repository.get_serial(session, serial)
    assert stored is not None
    same = stored.organization == organization and hmac.compare_digest(
        stored.person_key, person_key
    )
    if not same:
        raise AlreadyExists("SERIAL_ALREADY_USED", "the processing serial was issued before")
    return SerialRegistration(stored.expires_at, deriver.linkage_code(person_key, organization))


@dataclass(frozen=True, slots=True)
class IssuedCode:
    """A code issued to an organization, with the person key it stands for (never returned)."""

    organization: str
    linkage_code: str
    person_key: bytes


def obtain_code(
    session: Session, deriver: CodeDeriver, *, organization: str, serial: str, now: datetime
) -> IssuedCode:
    """The organization's code for the person a serial stands for; idempotent."""
    found = repository.get_serial(session, serial)
    if found is None or found.organization != organization:
        # One answer for both: a caller must not learn that a serial exists elsewhere.
        raise NotFound("SERIAL_NOT_FOUND", "no such processing serial for this organization")
    if found.expires_at <= now:
        raise FailedPrecondition("SERIAL_EXPIRED", "the processing serial has expired")
    code = deriver.linkage_code(found.person_key, organization)
    repository.add_issued_code(session, organization, code, found.person_key, now)
    return IssuedCode(organization, code, found.person_key)


class CodeDesk:
    """Serial registration and code issuance, each in one transaction with its record.

    Blocking: call from a worker thread.
    """

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        deriver: CodeDeriver,
        records: Ledger,
        clock: Callable[[], datetime],
        serial_ttl: timedelta,
    ) -> None:
        self._sessions = sessions
        self._deriver = deriver
        self._records = records
        self._clock = clock
        self._ttl = serial_ttl

    def register_serial(self, serial: str, resident_code: str, organization: str) -> datetime:
        """Until when the serial can be presented."""
        with unit_of_work(self._sessions) as session:
            registration = register_serial(
                session,
                self._deriver,
                serial=serial,
                resident_code=resident_code,
                organization=organization,
                now=self._clock(),
                ttl=self._ttl,
            )
        return registration.expires_at

    def obtain(self, organization: str, serial: str) -> str:
        """The organization's linkage code for the serial's person."""
        now = self._clock()
        with unit_of_work(self._sessions) as session:
            issued = obtain_code(
                session, self._deriver, organization=organization, serial=serial, now=now
            )
            record = ledger.code_issued(organization=organization, code=issued.linkage_code, at=now)
            self._records.append_many(session, ledger.LEDGER_ID, [record])
        return issued.linkage_code

    def disclose(
        self, organization: str, code: str, organizations: Sequence[str]
    ) -> list[ledger.DisclosedRecord]:
        """The network's records about the person ``code`` names at ``organization``: searched
        by the person's code at every registered organization, none of which is returned."""
        with unit_of_work(self._sessions) as session:
            found = repository.person_keys(session, organization, [code])
            if code not in found:
                raise NotFound("UNKNOWN_LINKAGE_CODE", "no such linkage code at this organization")
            subjects = self._deriver.codes_everywhere(found[code], organizations)
            return ledger.records_about(session, list(subjects.values()))
