"""Business systems (既存システム) and their scopes: who may call, and what each may do.

Owns the configuration type ``BusinessSystemScope`` and the pure checks: which configured
system an authenticated identity (``bs.<org>.<system>``) is, and whether a procedure, the data
items of a query, or the items of a push are inside that system's scope. A check returns the
refusal (a ``PermissionDenied``); the caller records it before raising, so every denial leaves an
access record.

Must never: trust anything but the certificate identity for who the caller is, or widen a scope
(an empty set allows nothing).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from linkage.errors import PermissionDenied

__all__ = [
    "OUT_OF_SCOPE",
    "BusinessSystemScope",
    "ScopeRegistry",
]

OUT_OF_SCOPE = "OUT_OF_SCOPE"


@dataclass(frozen=True, slots=True)
class BusinessSystemScope:
    """What one business system of the organization may do through this server.

    ``capacity`` is the requester capacity its queries are made in (e.g. "municipality");
    ``query_procedures`` and ``query_items`` bound its queries; ``push_items`` bounds the data
    items it may push as duplicates (副本).
    """

    system: str
    capacity: str
    query_procedures: frozenset[str] = frozenset()
    query_items: frozenset[str] = frozenset()
    push_items: frozenset[str] = frozenset()

    def query_refusal(self, procedure: str, data_items: Iterable[str]) -> PermissionDenied | None:
        """Why a query is out of scope, or ``None`` when it is inside."""
        if procedure not in self.query_procedures:
            return PermissionDenied(
                OUT_OF_SCOPE,
                f"business system {self.system} may not query for procedure {procedure}",
                metadata={"system": self.system, "procedure": procedure},
            )
        outside = sorted(set(data_items) - self.query_items)
        if outside:
            return PermissionDenied(
                OUT_OF_SCOPE,
                f"business system {self.system} may not query data items {', '.join(outside)}",
                metadata={"system": self.system, "dataItems": ",".join(outside)},
            )
        return None

    def push_refusal(self, data_items: Iterable[str]) -> PermissionDenied | None:
        """Why pushing these items is out of scope, or ``None`` when every one is inside."""
        outside = sorted(set(data_items) - self.push_items)
        if outside:
            return PermissionDenied(
                OUT_OF_SCOPE,
                f"business system {self.system} may not push data items {', '.join(outside)}",
                metadata={"system": self.system, "dataItems": ",".join(outside)},
            )
        return None


class ScopeRegistry:
    """The configured business systems of one organization, found by caller identity."""

    def __init__(self, organization: str, scopes: Iterable[BusinessSystemScope]) -> None:
        self.organization = organization
        self._prefix = f"bs.{organization}."
        self._by_system: Mapping[str, BusinessSystemScope] = {s.system: s for s in scopes}

    def __contains__(self, system: object) -> bool:
        return system in self._by_system

    def system_of(self, identity: str) -> str | None:
        """The system part of ``bs.<org>.<system>`` for this organization, else ``None``."""
        if not identity.startswith(self._prefix):
            return None
        system = identity.removeprefix(self._prefix)
        return system if system and "." not in system else None

    def get(self, system: str) -> BusinessSystemScope | None:
        return self._by_system.get(system)

    def identity_of(self, system: str) -> str:
        """The certificate identity of ``system``: what records and the intermediate server keep."""
        return f"{self._prefix}{system}"

    @property
    def systems(self) -> tuple[str, ...]:
        return tuple(self._by_system)
