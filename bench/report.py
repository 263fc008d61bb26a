"""The benchmark's report: figures, their targets, the printed tables and ``results.json``.

Owns ``Target`` (a bound on the gateway/floor ratio or on the gateway's own value, higher or
lower being better), ``Figure`` (one line of the report, with ``met`` computed, never typed in),
the text tables, and the JSON document: per figure ``gateway``, ``floor``, ``ratio``,
``target``, ``met``; the machine (CPU count and model, Python, date); the raw floor rounds.

``ratio`` is always gateway ÷ floor, so a throughput target reads "≥ 2× floor" and a latency
target "≤ 1.5× floor". ``met`` is ``None`` (JSON ``null``) when the value a target needs was
not measured, e.g. a gateway figure not yet plugged in, and for a figure that is reported with
no target (``Target.reported()``: the issue sets none, so none is invented).
"""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.floor import FloorResult

__all__ = [
    "Figure",
    "Target",
    "cpu_counters",
    "cpu_usage",
    "figure",
    "format_floor_table",
    "format_table",
    "is_met",
    "machine_info",
    "results_document",
    "write_json",
]

FIGURE_KEYS = ("gateway", "floor", "ratio", "target", "met")


def is_met(value: float, bound: float, higher_is_better: bool) -> bool:
    """Whether ``value`` reaches ``bound``: at least it when higher is better, at most if not."""
    return value >= bound if higher_is_better else value <= bound


@dataclass(frozen=True, slots=True)
class Target:
    """What a figure must reach: ``bound`` on the ratio (``relative``) or on the value itself."""

    bound: float
    higher_is_better: bool = True
    relative: bool = True
    unit: str = ""
    judged: bool = True

    @classmethod
    def reported(cls, *, higher_is_better: bool = True) -> Target:
        """No target: the figure is measured and shown beside its floor, never judged."""
        return cls(0.0, higher_is_better, judged=False)

    def describe(self) -> str:
        if not self.judged:
            return "reported (no target)"
        sign = "≥" if self.higher_is_better else "≤"
        if self.relative:
            return f"{sign} {self.bound:g}× floor"
        return f"{sign} {_number(self.bound)} {self.unit}".rstrip()

    def judge(self, gateway: float | None, ratio: float | None) -> bool | None:
        if not self.judged:
            return None
        value = ratio if self.relative else gateway
        return None if value is None else is_met(value, self.bound, self.higher_is_better)


@dataclass(frozen=True, slots=True)
class Figure:
    """One line of the report."""

    name: str
    unit: str
    gateway: float | None
    floor: float | None
    ratio: float | None
    target: str
    met: bool | None
    higher_is_better: bool
    notes: str = ""
    judged: bool = True

    def as_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "gateway": self.gateway,
            "floor": self.floor,
            "ratio": self.ratio,
            "target": self.target,
            "met": self.met,
            "higher_is_better": self.higher_is_better,
            "notes": self.notes,
        }


def figure(
    name: str,
    unit: str,
    target: Target,
    *,
    gateway: float | None,
    floor: float | None,
    notes: str = "",
) -> Figure:
    """A figure with ``ratio`` (gateway ÷ floor, when both are known) and ``met`` computed."""
    ratio = gateway / floor if gateway is not None and floor else None
    return Figure(
        name=name,
        unit=unit,
        gateway=gateway,
        floor=floor,
        ratio=ratio,
        target=target.describe(),
        met=target.judge(gateway, ratio),
        higher_is_better=target.higher_is_better,
        notes=notes,
        judged=target.judged,
    )


# --- text -----------------------------------------------------------------------------------


def _number(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 1000 or value == int(value):
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _met(met: bool | None) -> str:
    return {True: "yes", False: "NO", None: "—"}[met]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def format_table(figures: Sequence[Figure]) -> str:
    """figure, gateway, floor, ratio, target, met? — one line per figure."""
    header = ("figure", "unit", "gateway", "floor", "ratio", "target", "met?")
    rows = [
        (
            f.name,
            f.unit,
            _number(f.gateway),
            _number(f.floor),
            "—" if f.ratio is None else f"{f.ratio:.3f}×",
            f.target,
            _met(f.met) if f.judged else "n/a",
        )
        for f in figures
    ]
    return _table(header, rows)


def format_floor_table(
    floor: Mapping[str, FloorResult], reference: Mapping[str, str] | None = None
) -> str:
    """Every raw floor figure (median of its rounds) beside a published reference, if any."""
    header = ("floor", "value", "unit", "rounds", "reference (2-core)")
    rows = [
        (
            key,
            _number(result.value),
            result.unit,
            str(len(result.rounds) or "—"),
            (reference or {}).get(key, ""),
        )
        for key, result in floor.items()
    ]
    return _table(header, rows)


# --- JSON -----------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_counters() -> list[int]:
    """The machine-wide ``cpu`` line of ``/proc/stat`` (jiffies), empty where there is none."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return []
    return [int(value) for value in first[1:9]] if first[:1] == ["cpu"] else []


def cpu_usage(before: Sequence[int], after: Sequence[int]) -> dict[str, float]:
    """Shares of CPU time between two ``cpu_counters()``: busy, and stolen by the hypervisor.

    A high steal share means other guests took the CPU: figures measured then are noisy.
    """
    if len(before) < 8 or len(after) < 8:
        return {}
    delta = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(delta) or 1
    idle = delta[3] + delta[4]  # idle, iowait
    return {"busy": round(1 - idle / total, 3), "steal": round(delta[7] / total, 3)}


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    import grpc
    import nacl

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 0
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": _cpu_model(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "grpcio": grpc.__version__,
        "pynacl": nacl.__version__,
        "sqlite": sqlite3.sqlite_version,
        "loadavg": [round(value, 2) for value in os.getloadavg()],
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def results_document(
    figures: Sequence[Figure],
    floor: Mapping[str, FloorResult],
    *,
    machine: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    judged = [f.met for f in figures if f.met is not None]
    return {
        "machine": dict(machine if machine is not None else machine_info()),
        "summary": {
            "figures": len(figures),
            "judged": len(judged),
            "met": sum(judged),
            "missed": [f.name for f in figures if f.met is False],
            "not_measured": [f.name for f in figures if f.judged and f.met is None],
            "reported_only": [f.name for f in figures if not f.judged],
        },
        "figures": {f.name: f.as_json() for f in figures},
        "floor": {key: result.as_json() for key, result in floor.items()},
        "extra": dict(extra or {}),
    }


def write_json(
    path: Path,
    figures: Sequence[Figure],
    floor: Mapping[str, FloorResult],
    *,
    machine: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the results document to ``path`` (parents created) and return it."""
    document = results_document(figures, floor, machine=machine, extra=extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return document
