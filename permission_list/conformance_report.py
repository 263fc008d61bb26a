"""The conformance kit's verdict: probes and what happened to them → misses and a report.

Owns the judging rules and both renderings (a table per procedure, and JSON). Pure: it reads
what the run collected (the network's dispositions, the permits the fake provider received) and
never talks to anything, so every rule is testable without a network.

An **allowed probe** passes when the network did not refuse or fail it, returned a permit id,
and the fake provider received exactly one permit for it, in a batch whose network signature
and requester-key digest verified, saying exactly what was asked: requester and provider
organizations, requester and provider capacities, procedure, items, date, the provider's own
linkage code for the person, the list version the network announces, and the permit id the
network returned. A **mutation** passes when the network answered DENIED with a reason and no
permit id, and the fake provider received nothing for it. Anything the provider received that
no probe asked for is a problem too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from permission_list.conformance_cases import KIND_LABELS, Plan, Probe
from permission_list.model import procedure_sort_key

DENIED = "DENIED"
FAILED = "FAILED"


@dataclass(frozen=True, slots=True)
class Disposition:
    """What the network said about one query (``status`` is the QueryStatus name without its
    prefix, e.g. ``DENIED``; ``CALL_FAILED`` when the whole SubmitQueries call failed)."""

    status: str
    reason: str = ""
    permit_id: str = ""


@dataclass(frozen=True, slots=True)
class ReceivedPermit:
    """One permit as the fake provider received it; ``batch_problem`` is empty when its batch
    verified (network signature, requester key digest)."""

    query_id: str
    permit_id: str
    requester: str
    requester_capacity: str
    provider: str
    provider_capacity: str
    procedure: str
    data_items: tuple[str, ...]
    on_date: str
    provider_linkage_code: str
    permission_list_version: str
    batch_problem: str = ""


@dataclass(frozen=True, slots=True)
class OrganizationFacts:
    """The organization the kit registered for one capacity, and its code for the person."""

    capacity: str
    code: str
    linkage_code: str


@dataclass(frozen=True, slots=True)
class Miss:
    """A probe the network got wrong, and how."""

    probe: Probe
    query_id: str
    problem: str


@dataclass
class RowTally:
    """One procedure's line of the table."""

    procedure: str
    allowed_passed: int = 0
    allowed_total: int = 0
    refused: int = 0
    mutations_total: int = 0
    misses: int = 0


@dataclass(frozen=True)
class Report:
    """The outcome of a run."""

    target: str
    on: str
    list_version: str
    target_list_version: str
    rows: tuple[RowTally, ...]
    misses: tuple[Miss, ...]
    problems: tuple[str, ...]
    seconds: float = 0.0
    stats: Mapping[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.misses and not self.problems

    @property
    def allowed_passed(self) -> int:
        return sum(row.allowed_passed for row in self.rows)

    @property
    def allowed_total(self) -> int:
        return sum(row.allowed_total for row in self.rows)

    @property
    def refused(self) -> int:
        return sum(row.refused for row in self.rows)

    @property
    def mutations_total(self) -> int:
        return sum(row.mutations_total for row in self.rows)


# --- judging -----------------------------------------------------------------------------------


def judge(
    *,
    plan: Plan,
    query_ids: Sequence[str],
    organizations: Mapping[str, OrganizationFacts],
    dispositions: Mapping[str, Disposition],
    received: Iterable[ReceivedPermit],
    target: str,
    list_version: str,
    target_list_version: str,
    problems: Sequence[str] = (),
) -> Report:
    """Judge every probe of ``plan`` (``query_ids[i]`` is the id ``plan.probes[i]`` was sent
    under) and tally them per procedure."""
    probes = plan.probes
    if len(query_ids) != len(probes):
        raise ValueError("one query id per probe is needed")
    by_query: dict[str, list[ReceivedPermit]] = {}
    for permit in received:
        by_query.setdefault(permit.query_id, []).append(permit)
    rows = {p: RowTally(p) for p in plan.procedures}
    misses: list[Miss] = []
    for probe, query_id in zip(probes, query_ids, strict=True):
        got = by_query.get(query_id, [])
        disposition = dispositions.get(query_id)
        if probe.expect_permit:
            expected = _expected(probe, organizations, target_list_version)
            problem = allowed_problem(disposition, got, expected)
        else:
            problem = mutation_problem(disposition, got)
        _tally(rows[probe.row], probe, problem is None)
        if problem is not None:
            misses.append(Miss(probe, query_id, problem))
    known = set(query_ids)
    extra = [_unexpected(query_id, permits) for query_id, permits in by_query.items()]
    stray = [text for (query_id, text) in extra if query_id not in known]
    return Report(
        target=target,
        on=plan.on.isoformat(),
        list_version=list_version,
        target_list_version=target_list_version,
        rows=tuple(rows[p] for p in sorted(rows, key=procedure_sort_key)),
        misses=tuple(misses),
        problems=(*problems, *stray),
    )


def _tally(row: RowTally, probe: Probe, passed: bool) -> None:
    if probe.expect_permit:
        row.allowed_total += 1
        row.allowed_passed += passed
    else:
        row.mutations_total += 1
        row.refused += passed
    row.misses += not passed


def _expected(
    probe: Probe, organizations: Mapping[str, OrganizationFacts], version: str
) -> dict[str, object]:
    requester = organizations[probe.requester_capacity]
    provider = organizations[probe.provider_capacity]
    return {
        "requester": requester.code,
        "requester_capacity": probe.requester_capacity,
        "provider": provider.code,
        "provider_capacity": probe.provider_capacity,
        "procedure": probe.procedure,
        "data_items": probe.items,
        "on_date": probe.on.isoformat(),
        "provider_linkage_code": provider.linkage_code,
        "permission_list_version": version,
    }


def allowed_problem(
    disposition: Disposition | None,
    received: Sequence[ReceivedPermit],
    expected: Mapping[str, object],
) -> str | None:
    """Why an allowed probe fails, or None when it passes."""
    if disposition is None:
        return "the network returned no disposition for it"
    if disposition.status in (DENIED, FAILED, "CALL_FAILED", "UNSPECIFIED"):
        return f"not permitted: {_said(disposition)}"
    if not disposition.permit_id:
        return f"no permit id returned ({_said(disposition)})"
    if not received:
        return "the provider received no permit for it"
    if len(received) > 1:
        return f"the provider received {len(received)} permits for it (routed twice)"
    permit = received[0]
    if permit.batch_problem:
        return f"permit batch rejected: {permit.batch_problem}"
    wrong = [
        f"{name} is {getattr(permit, name)!r}, expected {value!r}"
        for name, value in expected.items()
        if getattr(permit, name) != value
    ]
    if permit.permit_id != disposition.permit_id:
        wrong.append(f"permit_id differs from the disposition's {disposition.permit_id!r}")
    if wrong:
        return "permit fields wrong: " + "; ".join(wrong)
    return None


def mutation_problem(
    disposition: Disposition | None, received: Sequence[ReceivedPermit]
) -> str | None:
    """Why a mutation fails (the network let it through somehow), or None when refused."""
    problems = []
    if disposition is None:
        problems.append("the network returned no disposition for it")
    elif disposition.status != DENIED:
        problems.append(f"not refused: {_said(disposition)}")
    else:
        if not disposition.reason:
            problems.append("DENIED without a reason")
        if disposition.permit_id:
            problems.append(f"DENIED but permit {disposition.permit_id} was issued")
    if received:
        problems.append(f"the provider received a permit for it ({len(received)}x)")
    return "; ".join(problems) if problems else None


def _said(disposition: Disposition) -> str:
    text = disposition.status
    if disposition.reason:
        text += f" {disposition.reason}"
    if disposition.permit_id:
        text += f" (permit {disposition.permit_id})"
    return text


def _unexpected(query_id: str, permits: Sequence[ReceivedPermit]) -> tuple[str, str]:
    first = permits[0]
    return query_id, (
        f"the provider received a permit no probe asked for: query {query_id!r}, "
        f"{first.requester} -[{first.procedure}]-> {first.provider}"
    )


# --- rendering ---------------------------------------------------------------------------------


def render_table(report: Report, out: TextIO) -> None:
    """The human report: a header, a line per procedure, totals, then every miss."""
    print(f"target:      {report.target}", file=out)
    print(f"date:        {report.on}", file=out)
    print(f"list:        {report.list_version}", file=out)
    same = " (same)" if report.target_list_version == report.list_version else " (differs)"
    print(f"target list: {report.target_list_version}{same}", file=out)
    print("", file=out)
    header = f"{'procedure':<13} {'allowed':>13} {'mutations':>15} {'misses':>7}"
    print(header, file=out)
    print("-" * len(header), file=out)
    for row in report.rows:
        print(_table_line(row), file=out)
    print("-" * len(header), file=out)
    totals = RowTally(
        "total",
        report.allowed_passed,
        report.allowed_total,
        report.refused,
        report.mutations_total,
        len(report.misses),
    )
    print(_table_line(totals), file=out)
    print("", file=out)
    for problem in report.problems:
        print(f"problem: {problem}", file=out)
    if report.misses:
        print(f"misses ({len(report.misses)}):", file=out)
        for miss in report.misses:
            print(f"  {_miss_line(miss)}", file=out)
    verdict = "CONFORMS" if report.ok else "DOES NOT CONFORM"
    count = len(report.misses) + len(report.problems)
    suffix = "" if report.ok else f": {count} miss(es)"
    print(f"{verdict}{suffix} ({report.seconds:.1f} s)", file=out)


def _table_line(row: RowTally) -> str:
    allowed = f"{row.allowed_passed}/{row.allowed_total}"
    mutations = f"{row.refused}/{row.mutations_total}"
    return f"{row.procedure:<13} {allowed:>13} {mutations:>15} {row.misses:>7}"


def _miss_line(miss: Miss) -> str:
    label = KIND_LABELS[miss.probe.kind]
    return f"{miss.probe.row} [{label}] {miss.probe.describe()}: {miss.problem}"


def to_json(report: Report) -> dict[str, Any]:
    """The machine-readable report (``--json``)."""
    return {
        "target": report.target,
        "on": report.on,
        "list_version": report.list_version,
        "target_list_version": report.target_list_version,
        "conforms": report.ok,
        "allowed": {"passed": report.allowed_passed, "total": report.allowed_total},
        "mutations": {"refused": report.refused, "total": report.mutations_total},
        "rows": [
            {
                "procedure": row.procedure,
                "allowed_passed": row.allowed_passed,
                "allowed_total": row.allowed_total,
                "mutations_refused": row.refused,
                "mutations_total": row.mutations_total,
                "misses": row.misses,
            }
            for row in report.rows
        ],
        "misses": [_miss_json(miss) for miss in report.misses],
        "problems": list(report.problems),
        "seconds": round(report.seconds, 3),
        "stats": dict(report.stats),
    }


def _miss_json(miss: Miss) -> dict[str, Any]:
    probe = miss.probe
    return {
        "row": probe.row,
        "kind": probe.kind,
        "query_id": miss.query_id,
        "requester_capacity": probe.requester_capacity,
        "procedure": probe.procedure,
        "provider_capacity": probe.provider_capacity,
        "items": list(probe.items),
        "on_date": probe.on.isoformat(),
        "origin": list(probe.origin),
        "problem": miss.problem,
    }


def render_json(report: Report, out: TextIO) -> None:
    print(json.dumps(to_json(report), ensure_ascii=False, indent=2), file=out)
