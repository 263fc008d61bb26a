"""The organization directory: who exists, what capacities they act in, where, and their keys.

Owns registration (admin), reads (any member), key rotation with an overlap window, and a short
read cache: every query batch looks up its requester and providers, and a database round trip
per lookup would dominate a batch. The cache holds only what the database holds and expires
after ``cache_ttl`` seconds, so replicas converge; a replica's own writes invalidate at once.

Must never: let a rotation drop a key before its overlap window ends (envelopes signed just
before a rotation must still verify), or import grpc.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from linkage.db import unit_of_work
from linkage.errors import AlreadyExists, NotFound
from simulator.network import repository
from simulator.network.models import Organization, OrganizationKey


@dataclass(frozen=True, slots=True)
class SigningKey:
    """An organization's Ed25519 public key with its validity window."""

    key_id: str
    public_key: bytes
    not_before: datetime
    not_after: datetime | None = None

    def valid_at(self, now: datetime) -> bool:
        return self.not_before <= now and (self.not_after is None or now <= self.not_after)


@dataclass(frozen=True, slots=True)
class OrgEntry:
    """One organization as the directory publishes it; keys current first."""

    code: str
    display_name: str
    capacities: tuple[str, ...]
    endpoint: str
    local_government_code: str = ""
    signing_keys: tuple[SigningKey, ...] = field(default=())

    def verify_keys(self, now: datetime) -> dict[str, bytes]:
        """key id → raw public key, for the keys valid at ``now`` (for ``open_envelope``)."""
        return {k.key_id: k.public_key for k in self.signing_keys if k.valid_at(now)}

    def published_keys(self, now: datetime) -> tuple[SigningKey, ...]:
        """Keys not yet past their window, current first."""
        return tuple(k for k in self.signing_keys if k.not_after is None or k.not_after > now)


Clock = Callable[[], datetime]


class Directory:
    """Reads and writes the directory; call from a worker thread (it blocks on the database)."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        *,
        clock: Clock,
        key_overlap: timedelta,
        cache_ttl: float = 5.0,
    ) -> None:
        self._factory = factory
        self._clock = clock
        self._overlap = key_overlap
        self._ttl = cache_ttl
        self._cache: dict[str, tuple[float, OrgEntry | None]] = {}
        self._lock = threading.Lock()

    # --- reads ------------------------------------------------------------------------------

    def get(self, code: str) -> OrgEntry | None:
        return self.get_many([code])[code]

    def require(self, code: str) -> OrgEntry:
        entry = self.get(code)
        if entry is None:
            raise NotFound("ORGANIZATION_NOT_FOUND", f"organization {code!r} is not registered")
        return entry

    def cached_many(self, codes: Sequence[str]) -> dict[str, OrgEntry | None] | None:
        """``get_many`` when every entry is fresh in the cache, else None: never touches the
        database, so the event loop may call it (most calls, with no thread hand-off)."""
        now = time.monotonic()
        found: dict[str, OrgEntry | None] = {}
        for code in codes:
            cached = self._cache.get(code)
            if cached is None or now - cached[0] >= self._ttl:
                return None
            found[code] = cached[1]
        return found

    def get_many(self, codes: Sequence[str]) -> dict[str, OrgEntry | None]:
        """Entries for ``codes`` (None for unknown ones), from the cache where fresh."""
        now = time.monotonic()
        found: dict[str, OrgEntry | None] = {}
        missing: list[str] = []
        for code in dict.fromkeys(codes):
            cached = self._cache.get(code)
            if cached is not None and now - cached[0] < self._ttl:
                found[code] = cached[1]
            else:
                missing.append(code)
        if missing:
            with self._factory() as session:
                loaded = _load(session, missing)
            with self._lock:
                for code in missing:
                    self._cache[code] = (now, loaded.get(code))
                    found[code] = loaded.get(code)
        return found

    def page(self, *, after: str, limit: int) -> list[OrgEntry]:
        """Up to ``limit`` organizations ordered by code, after ``after``."""
        with self._factory() as session:
            rows = repository.list_organizations(session, after=after, limit=limit)
            keys = repository.keys_of(session, [row.code for row in rows])
        return [_entry(row, keys[row.code]) for row in rows]

    def codes(self) -> list[str]:
        """Every registered organization code (for disclosure)."""
        with self._factory() as session:
            return [row.code for row in repository.all_organizations(session)]

    # --- writes -----------------------------------------------------------------------------

    def register(self, entry: OrgEntry) -> OrgEntry:
        """Add an organization with its keys (current first); ALREADY_EXISTS if the code is."""
        now = self._clock()
        try:
            with unit_of_work(self._factory) as session:
                if repository.organization_exists(session, entry.code):
                    raise AlreadyExists(
                        "ORGANIZATION_EXISTS", f"organization {entry.code!r} is registered"
                    )
                repository.add_organization(session, _row(entry, now))
                # Oldest first, so the newest id is the current key.
                repository.add_keys(
                    session, [_key_row(entry.code, k, now) for k in reversed(entry.signing_keys)]
                )
        except IntegrityError as error:  # a concurrent registration of the same code won
            raise AlreadyExists(
                "ORGANIZATION_EXISTS", f"organization {entry.code!r} is registered"
            ) from error
        self.invalidate(entry.code)
        return self.require(entry.code)

    def rotate(self, code: str, new_key: SigningKey) -> OrgEntry:
        """Make ``new_key`` current; previous keys stay valid for the overlap window.

        Idempotent: presenting a key that is already stored changes nothing.
        """
        now = self._clock()
        with unit_of_work(self._factory) as session:
            if not repository.organization_exists(session, code):
                raise NotFound("ORGANIZATION_NOT_FOUND", f"organization {code!r} is not registered")
            keys = repository.keys_of(session, [code])[code]
            if all(k.key_id != new_key.key_id for k in keys):
                window_end = now + self._overlap
                for key in keys:
                    if key.not_after is None or key.not_after > window_end:
                        key.not_after = window_end
                repository.add_keys(session, [_key_row(code, new_key, now)])
                organization = repository.get_organization(session, code)
                assert organization is not None
                organization.updated_at = now
        self.invalidate(code)
        return self.require(code)

    def invalidate(self, code: str) -> None:
        with self._lock:
            self._cache.pop(code, None)


def _load(session: Session, codes: Sequence[str]) -> dict[str, OrgEntry]:
    rows = repository.organizations(session, codes)
    keys = repository.keys_of(session, [row.code for row in rows])
    return {row.code: _entry(row, keys[row.code]) for row in rows}


def _entry(row: Organization, keys: Sequence[OrganizationKey]) -> OrgEntry:
    return OrgEntry(
        code=row.code,
        display_name=row.display_name,
        capacities=tuple(row.capacities),
        endpoint=row.endpoint,
        local_government_code=row.local_government_code,
        signing_keys=tuple(
            SigningKey(k.key_id, k.public_key, k.not_before, k.not_after) for k in keys
        ),
    )


def _row(entry: OrgEntry, now: datetime) -> Organization:
    return Organization(
        code=entry.code,
        display_name=entry.display_name,
        capacities=list(entry.capacities),
        endpoint=entry.endpoint,
        local_government_code=entry.local_government_code,
        created_at=now,
        updated_at=now,
    )


def _key_row(code: str, key: SigningKey, now: datetime) -> OrganizationKey:
    return OrganizationKey(
        organization=code,
        key_id=key.key_id,
        public_key=key.public_key,
        not_before=key.not_before,
        not_after=key.not_after,
        created_at=now,
    )
