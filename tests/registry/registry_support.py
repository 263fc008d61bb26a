"""Helpers for the registry's tests: synthetic residents."""

from __future__ import annotations

from unified_address.individual_number import complete


def resident(i: int, municipality: str = "sakai") -> tuple[str, str, str]:
    """The i-th synthetic resident: (resident code, individual number, municipality)."""
    return f"{i:011d}", complete(f"{(i * 7919) % 10**11:011d}"), municipality


def residents(
    count: int, start: int = 1, municipality: str = "sakai"
) -> list[tuple[str, str, str]]:
    return [resident(i, municipality) for i in range(start, start + count)]
