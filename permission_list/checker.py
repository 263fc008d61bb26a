"""The checker: is this flow allowed on this date? O(1), deny-by-default.

Owns ``PermissionList``: the loaded rows, an index from (requester capacity, procedure,
provider capacity, item) to the row that grants it and its validity, and the answer to
``check``. Anything the index does not hold is denied, with the first reason that applies
(unknown capacity or item, unknown procedure, then requester, provider, item, then date).

Speed matters (the network and every provider check each query): an allowed check is one dict
lookup and two date comparisons returning a prebuilt ``Decision``; denials of the same tuple are
cached. Nothing here reads files (see loader.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Final

from permission_list import vocabulary
from permission_list.model import (
    ALLOWED,
    ITEM_NOT_ALLOWED,
    ORDER_BASIS_FROM,
    OUTSIDE_VALIDITY,
    PROVIDER_NOT_ALLOWED,
    REQUESTER_NOT_ALLOWED,
    TABLE2_BASIS_UNTIL,
    UNKNOWN_CAPACITY,
    UNKNOWN_ITEM,
    UNKNOWN_PROCEDURE,
    Decision,
    Row,
    procedure_sort_key,
)

Tuple4 = tuple[str, str, str, str]

# Denials are cached per tuple so that a flood of the same bad query stays cheap; the cap keeps
# a flood of distinct garbage from growing memory without bound.
_DENIAL_CACHE_LIMIT: Final = 4096


@dataclass(frozen=True, slots=True)
class _Grant:
    """Where a 4-tuple is allowed: the two basis eras as closed date intervals (may be empty)."""

    row: Row
    table2_from: date
    table2_to: date
    order_from: date
    order_to: date
    table2_decision: Decision
    order_decision: Decision


@dataclass(frozen=True, slots=True)
class _Procedure:
    """What one procedure allows, for explaining a denial."""

    rows: tuple[Row, ...]
    requesters: frozenset[str]
    items_by_provider: dict[str, frozenset[str]]


class _Today:
    """date.today() costs ~0.5 µs; this re-reads the clock only when local midnight passes."""

    __slots__ = ("_day", "_until")

    def __init__(self) -> None:
        self._day = date.min
        self._until = 0.0

    def __call__(self) -> date:
        if time.time() >= self._until:
            now = datetime.now()
            self._day = now.date()
            midnight = datetime.combine(self._day + timedelta(days=1), datetime.min.time())
            self._until = midnight.timestamp()
        return self._day


class PermissionList:
    """The permission list (照会許可用照合リスト): rows from the law and an O(1) checker."""

    def __init__(self, rows: Sequence[Row], version: str) -> None:
        self.version: Final = version
        self._rows = tuple(rows)
        self._grants: dict[Tuple4, _Grant] = {}
        self._procedures: dict[str, _Procedure] = {}
        self._denials: dict[Tuple4, Decision] = {}
        self._today = _Today()
        self._index()

    # --- building ------------------------------------------------------------------------------

    def _index(self) -> None:
        by_procedure: dict[str, list[Row]] = {}
        for row in self._rows:
            by_procedure.setdefault(row.procedure, []).append(row)
            for key in _tuples_of(row):
                # The loader rejects a tuple granted twice; in memory the first row wins.
                self._grants.setdefault(key, _grant(row, key))
        for procedure, rows in by_procedure.items():
            items: dict[str, set[str]] = {}
            for row in rows:
                for provider in row.providers:
                    items.setdefault(provider, set()).update(row.items)
            self._procedures[procedure] = _Procedure(
                rows=tuple(rows),
                requesters=frozenset(r for row in rows for r in row.requesters),
                items_by_provider={p: frozenset(i) for p, i in items.items()},
            )

    # --- checking ------------------------------------------------------------------------------

    def check(
        self,
        requester_capacity: str,
        procedure: str,
        provider_capacity: str,
        item: str,
        on: date | None = None,
    ) -> Decision:
        """May ``requester_capacity`` ask ``provider_capacity`` for ``item`` under ``procedure``
        on ``on`` (default: today)? Deny-by-default; see Decision.reason for the codes."""
        grant = self._grants.get((requester_capacity, procedure, provider_capacity, item))
        if grant is None:
            return self._denied(requester_capacity, procedure, provider_capacity, item)
        day = self._today() if on is None else on
        if day.__class__ is not date:
            day = _as_date(day)
        if grant.table2_from <= day <= grant.table2_to:
            return grant.table2_decision
        if grant.order_from <= day <= grant.order_to:
            return grant.order_decision
        return _outside_validity(grant.row, day)

    def _denied(self, requester: str, procedure: str, provider: str, item: str) -> Decision:
        key = (requester, procedure, provider, item)
        cached = self._denials.get(key)
        if cached is None:
            cached = self._explain(requester, procedure, provider, item)
            if len(self._denials) >= _DENIAL_CACHE_LIMIT:
                self._denials.clear()
            self._denials[key] = cached
        return cached

    def _explain(self, requester: str, procedure: str, provider: str, item: str) -> Decision:
        """Why a tuple the index lacks is denied: the first failing condition, in order."""
        if requester not in vocabulary.CAPACITIES:
            return _deny(
                UNKNOWN_CAPACITY, f"requester capacity {requester!r} is not a known capacity."
            )
        if provider not in vocabulary.CAPACITIES:
            return _deny(
                UNKNOWN_CAPACITY, f"provider capacity {provider!r} is not a known capacity."
            )
        if item not in vocabulary.ITEMS:
            return _deny(UNKNOWN_ITEM, f"data item {item!r} is not a known item category.")
        found = self._procedures.get(procedure)
        if found is None:
            return _deny(
                UNKNOWN_PROCEDURE, f"procedure {procedure!r} is not in the permission list."
            )
        if requester not in found.requesters:
            return _deny(REQUESTER_NOT_ALLOWED, _requester_detail(requester, procedure, found))
        allowed_items = found.items_by_provider.get(provider)
        if allowed_items is None:
            return _deny(PROVIDER_NOT_ALLOWED, _provider_detail(provider, procedure, found))
        return _deny(ITEM_NOT_ALLOWED, _item_detail(provider, item, procedure, allowed_items))

    # --- listing -------------------------------------------------------------------------------

    def rows(self) -> Sequence[Row]:
        """Every dataset line, in file order (one per law row and provider pair)."""
        return self._rows

    def rows_for(self, procedure: str) -> Sequence[Row]:
        """The lines of one procedure (empty when unknown)."""
        found = self._procedures.get(procedure)
        return found.rows if found else ()

    def allowed_tuples(self) -> Iterable[Tuple4]:
        """(requester_capacity, procedure, provider_capacity, item) for every grant."""
        return iter(self._grants)

    def procedures(self) -> Sequence[str]:
        """Procedure ids in law order (deleted rows included)."""
        return sorted(self._procedures, key=procedure_sort_key)

    def capacities(self) -> Sequence[str]:
        """Capacity ids that appear in the list, as requester or provider (sorted)."""
        used = {c for row in self._rows for c in (*row.requesters, *row.providers)}
        return sorted(used)

    def items(self) -> Sequence[str]:
        """Item category ids that appear in the list (sorted)."""
        return sorted({i for row in self._rows for i in row.items})

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[Row]:
        return iter(self._rows)

    def __repr__(self) -> str:
        return f"PermissionList(version={self.version!r}, rows={len(self._rows)})"


# --- helpers -----------------------------------------------------------------------------------


def _tuples_of(row: Row) -> Iterator[Tuple4]:
    for requester in row.requesters:
        for provider in row.providers:
            for item in row.items:
                yield requester, row.procedure, provider, item


def _grant(row: Row, key: Tuple4) -> _Grant:
    # Only active rows carry capacities, so valid_from is set; date.max stands for "no end".
    valid_from = row.valid_from or date.max
    valid_to = row.valid_to or date.max
    detail = _allowed_detail(key, row)
    return _Grant(
        row=row,
        table2_from=valid_from,
        table2_to=min(valid_to, TABLE2_BASIS_UNTIL),
        order_from=max(valid_from, ORDER_BASIS_FROM),
        order_to=valid_to,
        table2_decision=Decision(True, ALLOWED, detail, row, row.basis_until_2024),
        order_decision=Decision(True, ALLOWED, detail, row, row.basis_from_2024),
    )


def _as_date(value: object) -> date:
    # A datetime is a date subclass but does not compare with one; anything else is a caller bug.
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    raise TypeError(f"on must be a datetime.date, not {type(value).__name__}")


def _deny(reason: str, detail: str) -> Decision:
    return Decision(False, reason, detail, None, "")


def _outside_validity(row: Row, day: date) -> Decision:
    start = row.valid_from.isoformat() if row.valid_from else "?"
    end = row.valid_to.isoformat() if row.valid_to else "no end date"
    detail = (
        f"{row.procedure} ({row.row_label}項) is not in force on {day.isoformat()} "
        f"(valid {start} to {end})."
    )
    return Decision(False, OUTSIDE_VALIDITY, detail, row, "")


def _name(capacity: str) -> str:
    return f"{vocabulary.capacity_label(capacity)} ({capacity})"


def _item_name(item: str) -> str:
    return f"{vocabulary.item_label(item)} ({item})"


def _allowed_detail(key: Tuple4, row: Row) -> str:
    requester, procedure, provider, item = key
    return (
        f"{_name(requester)} may ask {_name(provider)} for {_item_name(item)} "
        f"under {procedure} ({row.statute})."
    )


def _requester_detail(requester: str, procedure: str, found: _Procedure) -> str:
    if not found.requesters:
        return f"{procedure} is deleted (削除) in 別表第二: no one may query under it."
    allowed = ", ".join(_name(r) for r in sorted(found.requesters))
    return f"{_name(requester)} may not query under {procedure}; its requesters are {allowed}."


def _provider_detail(provider: str, procedure: str, found: _Procedure) -> str:
    allowed = ", ".join(_name(p) for p in sorted(found.items_by_provider))
    return f"{_name(provider)} is not a provider under {procedure}; its providers are {allowed}."


def _item_detail(provider: str, item: str, procedure: str, allowed: frozenset[str]) -> str:
    listed = ", ".join(_item_name(i) for i in sorted(allowed))
    return (
        f"{_item_name(item)} may not be asked of {_name(provider)} under {procedure}; "
        f"allowed items are {listed}."
    )
