"""The conformance kit's cases: what to ask a network, and what the list says must happen.

Owns the plan of one conformance run, computed from the permission list alone (no network, no
grpc): one **allowed probe** per allowed (requester capacity, procedure, provider capacity,
item) tuple in force on the run's date, which must get a permit, and **mutations**: single-field
changes of an allowed probe that the list does not allow, which must be refused.

Mutations, per allowed probe (each checked against the list: a candidate the list allows is
never a mutation):

* ``provider_capacity``: ask a provider acting in another capacity;
* ``item``: ask for another item instead;
* ``extra_item``: ask for the allowed item *and* one more (every item must be allowed);
* ``procedure``: ask under another procedure (the deleted row 36 included);
* ``requester_capacity``: ask as a requester acting in another capacity;
* ``date``: ask about a day outside the row's validity (the day before ``valid_from``, and the
  day after ``valid_to`` when the row has one).

For the first four fields a few values are picked (``per_field``), alternating *near misses*
(the likely mistakes of a loosened list; closest first: the procedure's other pairs' providers
and items, the rows just before and after, the procedure's providers as requesters; then what
the provider gives under other procedures, the requester's other procedures, the requesters of
the same provider and item elsewhere) and *far* values (anything else in the list's
vocabulary), each tier ordered by a hash of the case and the value: deterministic, and spread
across the vocabulary rather than always the alphabetically first. ``exhaustive`` takes every
value instead. The same query produced from two probes is asked once (credited to the first).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Final

from permission_list.checker import PermissionList
from permission_list.model import procedure_sort_key

Tuple4 = tuple[str, str, str, str]

ALLOWED: Final = "allowed"
PROVIDER_CAPACITY: Final = "provider_capacity"
ITEM: Final = "item"
EXTRA_ITEM: Final = "extra_item"
PROCEDURE: Final = "procedure"
REQUESTER_CAPACITY: Final = "requester_capacity"
DATE: Final = "date"
MUTATION_KINDS: Final = (
    PROVIDER_CAPACITY,
    ITEM,
    EXTRA_ITEM,
    PROCEDURE,
    REQUESTER_CAPACITY,
    DATE,
)
# Human words for each kind, for reports.
KIND_LABELS: Final = {
    ALLOWED: "allowed",
    PROVIDER_CAPACITY: "other provider capacity",
    ITEM: "other item",
    EXTRA_ITEM: "extra item",
    PROCEDURE: "other procedure",
    REQUESTER_CAPACITY: "other requester capacity",
    DATE: "date outside validity",
}
DEFAULT_PER_FIELD: Final = 3


@dataclass(frozen=True, slots=True)
class Probe:
    """One query the kit sends and what must happen to it.

    ``origin`` is the allowed tuple it comes from (itself for an allowed probe); the report
    credits the probe to the origin's procedure.
    """

    kind: str
    origin: Tuple4
    requester_capacity: str
    procedure: str
    provider_capacity: str
    items: tuple[str, ...]
    on: date

    @property
    def expect_permit(self) -> bool:
        return self.kind == ALLOWED

    @property
    def row(self) -> str:
        """The procedure the probe is reported under (its origin's)."""
        return self.origin[1]

    def key(self) -> tuple[str, str, str, tuple[str, ...], date]:
        """What the network sees of the probe (apart from who asks as whom): its identity."""
        return (
            self.requester_capacity,
            self.procedure,
            self.provider_capacity,
            tuple(sorted(self.items)),
            self.on,
        )

    def describe(self) -> str:
        """``municipality -[table2:82]-> pension_service: pension_benefit on 2026-01-05``."""
        return (
            f"{self.requester_capacity} -[{self.procedure}]-> {self.provider_capacity}: "
            f"{','.join(self.items)} on {self.on.isoformat()}"
        )


@dataclass(frozen=True, slots=True)
class Plan:
    """Every probe of one run: allowed probes first, then mutations, in a stable order."""

    on: date
    procedures: tuple[str, ...]
    allowed: tuple[Probe, ...]
    mutations: tuple[Probe, ...]
    per_field: int
    exhaustive: bool

    @property
    def probes(self) -> tuple[Probe, ...]:
        return self.allowed + self.mutations

    def capacities(self) -> list[str]:
        """Every capacity some probe acts in (as requester or provider), sorted."""
        used = {c for p in self.probes for c in (p.requester_capacity, p.provider_capacity)}
        return sorted(used)


def build_plan(
    permissions: PermissionList,
    on: date,
    *,
    procedures: Sequence[str] | None = None,
    per_field: int = DEFAULT_PER_FIELD,
    exhaustive: bool = False,
) -> Plan:
    """The probes of a run on ``on``, limited to ``procedures`` (all when None).

    Raises ``ValueError`` for a procedure the list does not have or a ``per_field`` below 1.
    """
    if per_field < 1:
        raise ValueError("per_field must be at least 1")
    known = permissions.procedures()
    if procedures is None:
        selected = tuple(known)
    else:
        unknown = [p for p in procedures if p not in known]
        if unknown:
            raise ValueError(f"not in the permission list: {', '.join(unknown)}")
        selected = tuple(sorted(set(procedures), key=procedure_sort_key))
    index = _Index(permissions, on)
    allowed = tuple(index.allowed_probes(frozenset(selected)))
    limit = None if exhaustive else per_field
    seen = {probe.key() for probe in allowed}
    mutations: list[Probe] = []
    for probe in allowed:
        for mutation in index.mutations_of(probe, limit):
            if mutation.key() not in seen:
                seen.add(mutation.key())
                mutations.append(mutation)
    return Plan(on, selected, allowed, tuple(mutations), per_field, exhaustive)


# --- the index over the list -------------------------------------------------------------------


@dataclass
class _Index:
    """The list's vocabulary in use and its neighbourhoods, for picking mutations."""

    permissions: PermissionList
    on: date
    capacities: tuple[str, ...] = ()
    items: tuple[str, ...] = ()
    procedures: tuple[str, ...] = ()
    providers_of_procedure: dict[str, set[str]] = field(default_factory=dict)
    items_of_procedure: dict[str, set[str]] = field(default_factory=dict)
    items_of_provider: dict[str, set[str]] = field(default_factory=dict)
    providers_of_item: dict[str, set[str]] = field(default_factory=dict)
    procedures_of_requester: dict[str, set[str]] = field(default_factory=dict)
    procedures_of_supply: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    requesters_of_supply: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    allowed_on: set[Tuple4] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.capacities = tuple(self.permissions.capacities())
        self.items = tuple(self.permissions.items())
        self.procedures = tuple(self.permissions.procedures())
        for requester, procedure, provider, item in self.permissions.allowed_tuples():
            self.providers_of_procedure.setdefault(procedure, set()).add(provider)
            self.items_of_procedure.setdefault(procedure, set()).add(item)
            self.items_of_provider.setdefault(provider, set()).add(item)
            self.providers_of_item.setdefault(item, set()).add(provider)
            self.procedures_of_requester.setdefault(requester, set()).add(procedure)
            self.procedures_of_supply.setdefault((provider, item), set()).add(procedure)
            self.requesters_of_supply.setdefault((provider, item), set()).add(requester)
            if self.permissions.check(requester, procedure, provider, item, self.on).allowed:
                self.allowed_on.add((requester, procedure, provider, item))

    def allows(self, requester: str, procedure: str, provider: str, items: Iterable[str]) -> bool:
        """Whether the list allows every item on the run's date (the checker, memoised)."""
        return all((requester, procedure, provider, i) in self.allowed_on for i in items)

    def allowed_probes(self, procedures: frozenset[str]) -> Iterator[Probe]:
        tuples = sorted(
            (t for t in self.permissions.allowed_tuples() if t[1] in procedures),
            key=lambda t: (procedure_sort_key(t[1]), t),
        )
        for requester, procedure, provider, item in tuples:
            if self.allows(requester, procedure, provider, (item,)):
                origin = (requester, procedure, provider, item)
                yield Probe(ALLOWED, origin, requester, procedure, provider, (item,), self.on)

    # --- mutations -----------------------------------------------------------------------------

    def mutations_of(self, probe: Probe, limit: int | None) -> Iterator[Probe]:
        item = probe.origin[3]
        yield from self._providers(probe, limit)
        other_items = self._items(probe, limit)
        yield from other_items
        if other_items:
            extra = (item, other_items[0].items[0])
            yield self._mutant(probe, EXTRA_ITEM, items=extra)
        yield from self._procedures(probe, limit)
        yield from self._requesters(probe, limit)
        yield from self._dates(probe)

    def _providers(self, probe: Probe, limit: int | None) -> list[Probe]:
        requester, procedure, provider, item = probe.origin
        tiers = (self.providers_of_procedure.get(procedure, set()), self.providers_of_item[item])
        picked = self._pick(
            probe,
            PROVIDER_CAPACITY,
            self.capacities,
            tiers,
            lambda c: c != provider and not self.allows(requester, procedure, c, (item,)),
            limit,
        )
        return [self._mutant(probe, PROVIDER_CAPACITY, provider=c) for c in picked]

    def _items(self, probe: Probe, limit: int | None) -> list[Probe]:
        requester, procedure, provider, item = probe.origin
        tiers = (self.items_of_procedure.get(procedure, set()), self.items_of_provider[provider])
        picked = self._pick(
            probe,
            ITEM,
            self.items,
            tiers,
            lambda i: i != item and not self.allows(requester, procedure, provider, (i,)),
            limit,
        )
        return [self._mutant(probe, ITEM, items=(i,)) for i in picked]

    def _procedures(self, probe: Probe, limit: int | None) -> list[Probe]:
        requester, procedure, provider, item = probe.origin
        tiers = (
            self._neighbours(procedure),
            self.procedures_of_requester.get(requester, set())
            | self.procedures_of_supply[(provider, item)],
        )
        picked = self._pick(
            probe,
            PROCEDURE,
            self.procedures,
            tiers,
            lambda p: p != procedure and not self.allows(requester, p, provider, (item,)),
            limit,
        )
        return [self._mutant(probe, PROCEDURE, procedure=p) for p in picked]

    def _requesters(self, probe: Probe, limit: int | None) -> list[Probe]:
        requester, procedure, provider, item = probe.origin
        tiers = (
            self.providers_of_procedure.get(procedure, set()),
            self.requesters_of_supply[(provider, item)],
        )
        picked = self._pick(
            probe,
            REQUESTER_CAPACITY,
            self.capacities,
            tiers,
            lambda c: c != requester and not self.allows(c, procedure, provider, (item,)),
            limit,
        )
        return [self._mutant(probe, REQUESTER_CAPACITY, requester=c) for c in picked]

    def _neighbours(self, procedure: str) -> set[str]:
        """The rows just before and after in law order (a row mix-up is off by one)."""
        at = self.procedures.index(procedure)
        return set(self.procedures[max(0, at - 1) : at + 2]) - {procedure}

    def _dates(self, probe: Probe) -> list[Probe]:
        requester, procedure, provider, item = probe.origin
        decision = self.permissions.check(requester, procedure, provider, item, self.on)
        row = decision.row
        days: list[date] = []
        if row is not None and row.valid_from is not None and row.valid_from > date.min:
            days.append(row.valid_from - timedelta(days=1))
        if row is not None and row.valid_to is not None and row.valid_to < date.max:
            days.append(row.valid_to + timedelta(days=1))
        return [
            self._mutant(probe, DATE, on=day)
            for day in days
            if not self.permissions.check(requester, procedure, provider, item, day).allowed
        ]

    def _pick(
        self,
        probe: Probe,
        kind: str,
        universe: Sequence[str],
        tiers: Sequence[set[str]],
        denied: Callable[[str], bool],
        limit: int | None,
    ) -> list[str]:
        """Up to ``limit`` values (all when None) the list denies, near and far alternating.

        Near values come tier by tier (closest first); within a tier, and among far values,
        the order is a hash of the case and the value.
        """
        seed = "|".join((*probe.origin, kind))
        candidates = [value for value in universe if denied(value)]
        near: list[str] = []
        for tier in tiers:
            fresh = (v for v in candidates if v in tier and v not in near)
            near.extend(sorted(fresh, key=lambda v: _rank(seed, v)))
        far = sorted((v for v in candidates if v not in near), key=lambda v: _rank(seed, v))
        ordered = list(_interleave(near, far))
        return ordered if limit is None else ordered[:limit]

    @staticmethod
    def _mutant(
        probe: Probe,
        kind: str,
        *,
        requester: str | None = None,
        procedure: str | None = None,
        provider: str | None = None,
        items: tuple[str, ...] | None = None,
        on: date | None = None,
    ) -> Probe:
        return Probe(
            kind=kind,
            origin=probe.origin,
            requester_capacity=requester or probe.requester_capacity,
            procedure=procedure or probe.procedure,
            provider_capacity=provider or probe.provider_capacity,
            items=items or probe.items,
            on=on or probe.on,
        )


def _rank(seed: str, value: str) -> bytes:
    return hashlib.sha256(f"{seed}|{value}".encode()).digest()


def _interleave(first: Sequence[str], second: Sequence[str]) -> Iterator[str]:
    for i in range(max(len(first), len(second))):
        if i < len(first):
            yield first[i]
        if i < len(second):
            yield second[i]
