"""Tenants of a platform and the identity rules that keep them apart.

Owns: ``TenantConfig`` (what the operator configures), ``Tenant`` (a hosted organization with
its key ring and signer), ``Tenants`` (the lookup) and the binding of a caller's certificate
identity to the tenant a request names (AIP-131: checked before anything is looked up).

Must never: let a caller act for a tenant other than its own, tell a caller whether a tenant it
may not see exists, or import grpc (identities arrive here as plain strings).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from linkage.atrest import DataKey
from linkage.crypto import Signer
from linkage.errors import FieldViolation, InvalidArgument, NotFound, PermissionDenied
from linkage.keys import KeyRing, PublicKeys

ORGANIZATIONS = "organizations/"
_CODE_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def valid_code(code: str) -> bool:
    """An organization code as the directory spells it: [a-z0-9-], at most 32 characters."""
    return _CODE_RE.fullmatch(code) is not None


@dataclass(frozen=True)
class TenantConfig:
    """One organization hosted on the platform and the capacities it acts in."""

    code: str
    capacities: Sequence[str] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not valid_code(self.code):
            raise ValueError(f"invalid organization code {self.code!r}")
        object.__setattr__(self, "capacities", tuple(self.capacities))


class Tenant:
    """A hosted organization: its code, capacities and key ring (signing + encryption)."""

    def __init__(
        self, code: str, capacities: Iterable[str], keyring: KeyRing, data_key: DataKey
    ) -> None:
        self.code = code
        self.capacities = frozenset(capacities)
        self.keyring = keyring
        # Personal data at rest is sealed with the tenant's own key: one tenant's key file
        # opens nothing of another's, even on a shared database.
        self.data_key = data_key
        self.ledger = f"server:{code}"

    def __repr__(self) -> str:
        return f"Tenant({self.code!r})"

    @property
    def signer(self) -> Signer:
        """The current organization signing key, read each time: ``linkage keys rotate`` may
        have rotated the ring's file since (one ``stat`` per call tells)."""
        current = self.keyring.refresh().current
        return Signer(holder=self.code, key_id=current.key_id, key=current.signing_key)

    def public_keys(self) -> list[PublicKeys]:
        return self.keyring.refresh().public_keys()


class Tenants:
    """The tenants of one platform, by code."""

    def __init__(self, tenants: Iterable[Tenant]) -> None:
        self._by_code = {tenant.code: tenant for tenant in tenants}

    @classmethod
    def load(cls, configs: Iterable[TenantConfig], key_dir: Path) -> Tenants:
        """Each tenant's key ring and data key from ``key_dir`` (created on first start)."""
        return cls(
            Tenant(
                c.code,
                c.capacities,
                KeyRing.load_or_create(key_dir, f"org-{c.code}"),
                DataKey.load_or_create(key_dir / f"data-{c.code}.key"),
            )
            for c in configs
        )

    def __iter__(self) -> Iterator[Tenant]:
        return iter(self._by_code.values())

    def __contains__(self, code: object) -> bool:
        return code in self._by_code

    def codes(self) -> list[str]:
        return list(self._by_code)

    def get(self, code: str) -> Tenant:
        """The tenant ``code``; NOT_FOUND when this platform does not host it."""
        tenant = self._by_code.get(code)
        if tenant is None:
            raise NotFound("TENANT_NOT_HOSTED", "the organization is not hosted on this platform")
        return tenant

    def for_unified_address(self, caller: str, named_code: str) -> Tenant:
        """The tenant a ``ua.<code>`` caller may act for, if it names its own organization.

        The caller's own code is compared with the named one before the name is parsed any
        further or looked up, so a caller learns nothing about other tenants.
        """
        return self._bound("ua.", "a unified address server", caller, named_code)

    def for_staff_console(self, caller: str, named_code: str | None = None) -> Tenant:
        """The tenant of a ``staff-console.<code>`` caller (職員端末), checked like
        ``for_unified_address``; ``named_code`` None when the request names no tenant."""
        return self._bound("staff-console.", "a staff console", caller, named_code)

    def _bound(self, prefix: str, what: str, caller: str, named_code: str | None) -> Tenant:
        own = caller.removeprefix(prefix) if caller.startswith(prefix) else None
        if own is None:
            raise PermissionDenied("CALLER_NOT_ALLOWED", f"only {what} may call")
        if (named_code is not None and named_code != own) or own not in self._by_code:
            raise PermissionDenied(
                "TENANT_MISMATCH", "the caller may act only for its own organization"
            )
        return self._by_code[own]


def code_of_parent(parent: str) -> str:
    """``organizations/{code}`` → ``code``; anything else → "" (which matches no caller)."""
    return parent.removeprefix(ORGANIZATIONS) if parent.startswith(ORGANIZATIONS) else ""


def split_child_name(name: str, collection: str) -> tuple[str, str]:
    """``organizations/{code}/{collection}/{id}`` → (code, id); the code may be checked first.

    A malformed name returns the best guess of the code and an empty id, so the caller can
    check permission before complaining about the name (AIP-131).
    """
    if not name.startswith(ORGANIZATIONS):
        return "", ""
    code, _, rest = name.removeprefix(ORGANIZATIONS).partition("/")
    prefix = f"{collection}/"
    if not rest.startswith(prefix):
        return code, ""
    return code, rest.removeprefix(prefix)


def require_id(value: str, field_name: str) -> str:
    """An id chosen by a client (query id, import id): ``[A-Za-z0-9][A-Za-z0-9._:-]{0,127}``.

    No ``/`` so it can sit in a resource name, no spaces or controls so it can sit in a record.
    """
    if _ID_RE.fullmatch(value) is None:
        raise InvalidArgument(
            "INVALID_ID",
            f"{field_name} must match [A-Za-z0-9][A-Za-z0-9._:-]{{0,127}}",
            violations=[FieldViolation(field_name, "missing or malformed id")],
        )
    return value
