"""``linkage demo``: the whole world on embedded SQLite, running the main job, with no set-up.

Owns the command line of the demo: it generates a population (plus the showcase households of
:mod:`simulator.scenario_plan`), starts every system in one process over mutual TLS (the world
harness) in a data directory, runs the scenario (:mod:`simulator.scenario`), has Sakai's
reviewer work its review queue over gRPC (a staff account created by the platform operator,
``StaffService`` sign-in with the forced password change, ``ReviewService``: one held query
approved, another declined), traces one person's journey, shows what that person sees on the
national portal (every access record about them at Sakai, the network and each provider, through
the same call as ``linkage records disclose --world``), writes the client's result files
(one row per query, one per collection decision) and prints a summary: as text, or with
``--json`` as one JSON object on stdout. Progress goes to stderr, a line per step (a live
counter on a terminal).

Exit status: 0 when every query ended with an answer (``errors == 0``) and the review worked
(the approved query PROVIDED, the declined one DECLINED at the requester);
1 otherwise, after the summary; 2 for bad usage (e.g. a data directory that is not empty).

Must never: print or write a personal value. Screens show counts, data item names, outcomes,
reasons and masked identifiers; the result files hold the synthetic person id, the business
system's address number, outcomes and decisions — no names, numbers, incomes or amounts.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

from simulator.eligibility import CollectionDecision
from simulator.scenario_plan import Outcome

if TYPE_CHECKING:
    from collections.abc import Callable

    from simulator.population import Population
    from simulator.scenario import ScenarioResult
    from simulator.scenario_plan import PlannedQuery
    from simulator.scenario_review import Decided, Denial, Journey, PortalView, ReviewReport
    from simulator.world import World

DEFAULT_RESIDENTS: Final = 1000
"""The default size: the largest round number that finishes well under a minute on 2 cores
today (about 37 s: registration with code acquisition costs ~13 ms a person, a query ~10 ms).
3000 takes about two minutes; raise this when the shared code and query paths get faster."""
DEFAULT_SEED: Final = 2026
DEFAULT_OUT: Final = "linkage-demo-results.csv"
JOURNEY_LABEL: Final = "mover_from_toyonaka"
"""The showcase household whose head's journey the demo traces (taxed by Toyonaka, moved to
Sakai, special collection): it crosses every organization of the main job."""


# --------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------


class StderrProgress:
    """One line per step on stderr; on a terminal the line counts up while the step runs."""

    def __init__(self, stream: TextIO = sys.stderr, *, enabled: bool = True) -> None:
        self._stream = stream
        self._enabled = enabled
        self._live = enabled and stream.isatty()
        self._origin = time.perf_counter()
        self._phase = ""
        self._total = 0
        self._started = 0.0
        self._shown = -1.0

    def _prefix(self) -> str:
        return f"[{time.perf_counter() - self._origin:6.1f}s] {self._phase}"

    def start(self, phase: str, total: int) -> None:
        self._phase, self._total = phase, total
        self._started = time.perf_counter()
        self._shown = -1.0
        self.advance(0)

    def advance(self, done: int) -> None:
        if not self._live:
            return
        now = time.perf_counter()
        if now - self._shown < 0.1 and done < self._total:
            return  # a terminal needs no more than ten updates a second
        self._shown = now
        self._stream.write(f"\r{self._prefix()}: {done}/{self._total}\x1b[K")
        self._stream.flush()

    def finish(self, note: str = "") -> None:
        if not self._enabled:
            return
        seconds = time.perf_counter() - self._started
        rate = f", {self._total / seconds:.0f}/s" if seconds > 0 and self._total > 1 else ""
        tail = f" — {note}" if note else ""
        start = "\r" if self._live else ""
        line = f"{start}{self._prefix()}: {self._total} in {seconds:.1f}s{rate}{tail}\x1b[K"
        if not self._live:
            line = line.replace("\x1b[K", "")
        self._stream.write(line + "\n")
        self._stream.flush()

    def note(self, text: str) -> None:
        """A one-off line (world start, clean-up)."""
        if self._enabled:
            self._stream.write(f"[{time.perf_counter() - self._origin:6.1f}s] {text}\n")
            self._stream.flush()


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="linkage demo",
        description=(
            "Run the whole world (network, registry, intermediate servers, unified address "
            "servers) on embedded SQLite and the late-stage elderly medical care main job "
            "(別表第二 rows 80-83) over it: premiums assessed from municipalities' tax data, "
            "collection decided from JPS pension data, notices asked for by JPS."
        ),
    )
    parser.add_argument(
        "--residents",
        type=_positive,
        default=DEFAULT_RESIDENTS,
        help=f"residents of Sakai to generate (default {DEFAULT_RESIDENTS})",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="population seed")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="where the world keeps its databases and keys (must be empty or new); "
        "default: a temporary directory, removed at the end unless --keep",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(DEFAULT_OUT),
        help=f"result file, one row per query (default {DEFAULT_OUT}); the collection "
        "decisions go beside it as <name>.decisions.csv",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument(
        "--concurrency", type=_positive, default=64, help="queries in flight at once (default 64)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument(
        "--log-level", default="WARNING", help="log level of the servers (default WARNING)"
    )
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


@dataclass
class _Run:
    """What a finished run hands to the summary."""

    summary: dict[str, Any]
    ok: bool


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; see the module docstring for the exit status."""
    args = _parser().parse_args(argv)
    if args.data_dir is not None and args.data_dir.exists() and any(args.data_dir.iterdir()):
        print(f"linkage demo: error: {args.data_dir} is not empty", file=sys.stderr)
        return 2
    from linkage import logs

    logs.configure(level=args.log_level)
    try:
        run = asyncio.run(_run(args))
    except Exception as error:
        reason = _expected_failure(error)
        if reason is None:
            raise  # a bug: the traceback is the report
        print(f"linkage demo: failed: {reason}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(run.summary, sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render(run.summary))
    return 0 if run.ok else 1


async def _run(args: argparse.Namespace) -> _Run:
    from simulator.population import generate
    from simulator.scenario_plan import with_showcase
    from simulator.world import WorldConfig, start_world

    progress = StderrProgress(enabled=not args.quiet)
    started = time.perf_counter()
    temporary = args.data_dir is None
    root = Path(tempfile.mkdtemp(prefix="linkage-demo-")) if temporary else args.data_dir
    generated = generate(args.residents, args.seed)
    population, showcase = with_showcase(generated)
    progress.note(
        f"population: {len(population)} people ({args.residents} residents, seed {args.seed})"
    )
    timings: dict[str, float] = {"population": time.perf_counter() - started}
    try:
        mark = time.perf_counter()
        world = await start_world(WorldConfig(root=root))
        timings["world_start"] = time.perf_counter() - mark
        progress.note(f"world started in {timings['world_start']:.1f}s under {root}")
        try:
            summary, ok = await _main_job(world, population, showcase, args, progress, timings)
        finally:
            await world.close()
    finally:
        if temporary and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    timings["total"] = time.perf_counter() - started
    summary["timings"] = {k: round(v, 2) for k, v in timings.items()}
    summary["data_dir"] = None if temporary and not args.keep else str(root)
    return _Run(summary, ok)


async def _main_job(
    world: World,
    population: Population,
    showcase: dict[str, tuple[int, ...]],
    args: argparse.Namespace,
    progress: StderrProgress,
    timings: dict[str, float],
) -> tuple[dict[str, Any], bool]:
    from simulator.scenario import Scenario
    from simulator.scenario_plan import SAKAI
    from simulator.scenario_review import (
        ConsoleReviewer,
        explain_denial,
        portal_view,
        review_held,
        trace_journey,
    )

    scenario = Scenario(world, population, concurrency=args.concurrency, progress=progress)
    result = await scenario.run()
    timings.update(result.timings)
    review_error = ""
    review = None
    mark = time.perf_counter()
    try:
        reviewer = ConsoleReviewer(world, SAKAI)
        await reviewer.enrol()
        review = await review_held(scenario, reviewer)
    except Exception as error:  # the summary reports it; the run still ends cleanly
        review_error = _error_text(error)
    timings["review"] = time.perf_counter() - mark
    person = (showcase.get(JOURNEY_LABEL) or (0,))[0]
    journey = (
        await trace_journey(scenario, person, f"showcase: {JOURNEY_LABEL}") if person else None
    )
    denial = explain_denial(scenario)
    portal: PortalView | None = None
    portal_error = ""
    if person:
        try:
            portal = await portal_view(scenario, person, SAKAI)
        except Exception as error:  # the summary reports it; the run still ends cleanly
            portal_error = _error_text(error)
    files = write_results(args.out, result)
    summary = build_summary(args, result, review, review_error, journey, denial, files)
    summary["disclosure"] = _disclosure_summary(portal, portal_error)
    ok = summary["errors"] == 0 and not review_error and not portal_error
    if review is not None and review.status_after != "QUERY_STATUS_PROVIDED":
        ok = False
    if review is not None and review.declined is not None:
        ok = ok and review.declined.status_after == "QUERY_STATUS_DECLINED"
    return summary, ok


def _expected_failure(error: Exception) -> str | None:
    """The reason of a failure a run can meet (a system refused or was unreachable, a file
    could not be written), or None for anything else."""
    import grpc

    from linkage.errors import LinkageError, remote_error

    if isinstance(error, grpc.aio.AioRpcError):
        failure = remote_error(error)
        return f"{failure.code}:{failure.reason}" if failure.reason else failure.code
    if isinstance(error, LinkageError):
        return error.reason
    if isinstance(error, OSError):
        return f"{type(error).__name__}: {error.strerror or error}"
    return None


def _error_text(error: Exception) -> str:
    return _expected_failure(error) or type(error).__name__


# --------------------------------------------------------------------------------------------
# Result files
# --------------------------------------------------------------------------------------------

QUERY_COLUMNS: Final = (
    "query_id",
    "phase",
    "requester",
    "business_system",
    "procedure",
    "provider",
    "data_item",
    "person_id",
    "address_number",
    "outcome",
    "reason",
    "permit_id",
    "elapsed_ms",
)
DECISION_COLUMNS: Final = ("person_id", "address_number", "decision", "reason")


def decisions_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.decisions{out.suffix or '.csv'}")


def write_results(out: Path, result: ScenarioResult) -> dict[str, str]:
    """The client's result files: every query with its outcome, then every decision."""
    from simulator.scenario_plan import KOUKI, SAKAI, address_number

    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(QUERY_COLUMNS)
        for o in result.outcomes:
            q = o.query
            writer.writerow(
                (
                    q.query_id, q.phase.value, q.requester, q.system, q.procedure, q.provider,
                    q.data_item, q.person_id, q.address_number, o.answer.outcome.value,
                    o.answer.reason, o.permit_id, round(o.seconds * 1000, 1),
                )
            )  # fmt: skip
    decisions = decisions_path(out)
    with decisions.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(DECISION_COLUMNS)
        for pid, c in sorted(result.collections.items()):
            writer.writerow((pid, address_number(SAKAI, KOUKI, pid), c.decision.value, c.reason))
    return {"results_file": str(out), "decisions_file": str(decisions)}


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------


def _nested() -> defaultdict[str, Counter[str]]:
    return defaultdict(Counter)


def build_summary(
    args: argparse.Namespace,
    result: ScenarioResult,
    review: ReviewReport | None,
    review_error: str,
    journey: Journey | None,
    denial: Denial | None,
    files: dict[str, str],
) -> dict[str, Any]:
    """The run as one JSON-ready object; the counts add up: provided + denied +
    held_for_review + no_data + errors == queries."""
    tally = result.tally()
    by_provider: defaultdict[str, defaultdict[str, Counter[str]]] = defaultdict(_nested)
    by_item: defaultdict[str, Counter[str]] = defaultdict(Counter)
    by_phase: defaultdict[str, Counter[str]] = defaultdict(Counter)
    error_reasons: Counter[str] = Counter()
    for o in result.outcomes:
        outcome = o.answer.outcome.value
        by_provider[o.query.provider][o.query.data_item][outcome] += 1
        by_item[o.query.data_item][outcome] += 1
        by_phase[o.query.phase.value][outcome] += 1
        if o.answer.outcome is Outcome.ERROR:
            error_reasons[o.answer.reason] += 1
    decisions = result.decisions()
    assessed = sum(1 for a in result.assessments.values() if a.premium is not None)
    counts = tally.as_dict()
    summary: dict[str, Any] = {
        "residents": args.residents,
        "seed": args.seed,
        "persons": len(result.population),
        "assessment_date": result.on.isoformat(),
        "insured": len(result.insured),
        "queries": tally.queries,
        "provided": counts["provided"],
        "denied": counts["denied"],
        "held_for_review": counts["held_for_review"],
        "no_data": counts["no_data"],
        "errors": counts["error"],
        "error_reasons": dict(error_reasons),
        "by_provider": {
            p: {i: dict(c) for i, c in items.items()} for p, items in sorted(by_provider.items())
        },
        "by_item": {i: dict(c) for i, c in sorted(by_item.items())},
        "by_phase": {
            phase: {**dict(c), "seconds": round(result.timings.get(phase, 0.0), 2)}
            for phase, c in by_phase.items()
        },
        "premiums": {"assessed": assessed, "not_assessed": len(result.assessments) - assessed},
        "collection": {d.value: decisions.get(d, 0) for d in CollectionDecision},
        "registrations": dict(result.registered),
        "code_failures": dict(result.code_failures),
        "duplicates_pushed": dict(result.pushed),
        "review": _review_summary(review, review_error),
        "journey": None if journey is None else _as_dict(journey),
        "denied_example": None if denial is None else _denial_summary(denial),
        **files,
    }
    return summary


def _as_dict(value: Any) -> Any:
    """Dataclasses and tuples to JSON-ready values."""
    from dataclasses import fields, is_dataclass

    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _as_dict(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (tuple, list)):
        return [_as_dict(v) for v in value]
    return value


def _query_dict(query: PlannedQuery) -> dict[str, Any]:
    return {
        "phase": query.phase.value,
        "requester": f"{query.requester}/{query.system}",
        "procedure": query.procedure,
        "provider": query.provider,
        "data_item": query.data_item,
        "query_id": query.query_id,
    }


def _review_summary(review: ReviewReport | None, error: str) -> dict[str, Any] | None:
    if error:
        return {"error": error}
    if review is None:
        return None
    return {
        "query": _query_dict(review.query),
        "permit_id": review.permit_id,
        "reviewer": review.reviewer,
        "via": review.via,
        "queue_length": review.queue_length,
        "decision": "approved",
        "delivered": review.delivered,
        "status_before": "QUERY_STATUS_HELD_FOR_REVIEW",
        "status_after": review.status_after,
        "items_after": list(review.items_after),
        "seconds": round(review.seconds, 2),
        "service": "ReviewService",
        "account": review.account,
        "calls": list(review.calls),
        "declined": None if review.declined is None else _decided_summary(review.declined),
        "ledger": review.ledger,
        "staff_records": dict(review.staff_records),
        "staff_records_total": sum(review.staff_records.values()),
    }


def _decided_summary(decided: Decided) -> dict[str, Any]:
    return {
        "query": _query_dict(decided.query),
        "permit_id": decided.permit_id,
        "decision": decided.decision,
        "reason": decided.reason,
        "delivered": decided.delivered,
        "status_before": "QUERY_STATUS_HELD_FOR_REVIEW",
        "status_after": decided.status_after,
        "items_after": list(decided.items_after),
    }


def _disclosure_summary(portal: PortalView | None, error: str) -> dict[str, Any] | None:
    if error:
        return {"error": error}
    if portal is None:
        return None
    return {
        "organization": portal.organization,
        "person": portal.person,
        "places": portal.places,
        "unanswered": [{"place": p, "reason": r} for p, r in portal.unanswered],
        "entries": list(portal.entries),
    }


def _denial_summary(denial: Denial) -> dict[str, Any]:
    return {
        "query": _query_dict(denial.query),
        "reason": denial.reason,
        "explanation": denial.explanation,
        "allowed_under_procedure": [f"{p}: {i}" for p, i in denial.allowed_for_procedure],
    }


# --------------------------------------------------------------------------------------------
# Text rendering
# --------------------------------------------------------------------------------------------

_OUTCOMES: Final = ("provided", "denied", "held_for_review", "no_data", "error")


def _row(cells: Sequence[object], widths: Sequence[int]) -> str:
    return (
        "  "
        + "  ".join(
            f"{c!s:<{w}}" if i < 2 else f"{c!s:>{w}}"
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()
    )


def render(summary: dict[str, Any]) -> str:
    """The summary as text for a terminal."""
    out: list[str] = []
    add = out.append
    t = summary["timings"]
    add(
        f"linkage demo — {summary['residents']} residents of Sakai (seed {summary['seed']}), "
        f"{summary['persons']} people with movers and showcase households"
    )
    add(
        f"assessment date {summary['assessment_date']}: {summary['insured']} insured persons "
        "living in Sakai"
    )
    add("")
    add(
        f"queries: {summary['queries']} — provided {summary['provided']}, denied "
        f"{summary['denied']}, held for review {summary['held_for_review']}, no data "
        f"{summary['no_data']}, errors {summary['errors']}"
    )
    for reason, n in summary["error_reasons"].items():
        add(f"  error {reason}: {n}")
    add("")
    add("by provider and data item:")
    widths = (14, 28, 9, 7, 6, 8, 6)
    add(
        _row(
            ("provider", "data item", *("provided", "denied", "held", "no data", "errors")), widths
        )
    )
    for provider, items in summary["by_provider"].items():
        for item, counts in items.items():
            add(_row((provider, item, *(counts.get(o, 0) for o in _OUTCOMES)), widths))
    add("")
    add("phases:")
    for phase, counts in summary["by_phase"].items():
        n = sum(counts.get(o, 0) for o in _OUTCOMES)
        seconds = counts.get("seconds", 0.0)
        rate = f", {n / seconds:.0f} queries/s" if seconds else ""
        add(f"  {phase:<22} {n:>6} queries in {seconds:.1f}s{rate}")
    p, c = summary["premiums"], summary["collection"]
    add("")
    add(f"premiums assessed by the association: {p['assessed']} (not yet: {p['not_assessed']})")
    add(
        f"collection decided by Sakai: special {c['special']}, ordinary {c['ordinary']}, "
        f"undecided {c['undecided']}"
    )
    add("")
    add(
        "timings: "
        + ", ".join(f"{k} {v:.1f}s" for k, v in t.items() if k != "total")
        + f"; total {t['total']:.1f}s"
    )
    _render_journey(add, summary.get("journey"))
    _render_denial(add, summary.get("denied_example"))
    _render_review(add, summary.get("review"))
    _render_disclosure(add, summary.get("disclosure"))
    add("")
    add(f"results: {summary['results_file']} (queries), {summary['decisions_file']} (decisions)")
    if summary.get("data_dir"):
        add(f"data directory kept: {summary['data_dir']}")
    return "\n".join(out) + "\n"


def _render_journey(add: Callable[[str], None], journey: dict[str, Any] | None) -> None:
    if not journey:
        return
    add("")
    add(f"one person's journey ({journey['label']}, person {journey['person']}):")
    add("  1. code acquisition: registered by each organization's business system, a linkage")
    add("     code obtained through the registry's processing serial and the network:")
    for code in journey["codes"]:
        add(f"       {code['org']:<14} unified number {code['unified_number']} ↔ linkage code")
    add("  2. queries: permit from the network → sealed answer → decrypted by the requester:")
    for q in journey["queries"]:
        permit = q["permit_id"][:12] or "—"
        add(
            f"       {q['requester']:>12} → {q['provider']:<12} {q['procedure']} "
            f"{q['data_item']:<27} {q['outcome']:<15} permit {permit}"
        )
        if q["outcome"] == "provided":
            add(f"         {q['answer']}")
    if journey["decision"]:
        add(f"  3. Sakai's decision: {journey['decision']} collection")
    if journey["records"]:
        add(f"  4. access records of permit {journey['traced_permit'][:12]} at three places:")
        for r in journey["records"]:
            add(
                f"       {r['place']:<9} {r['ledger']:<14} {r['event']:<20} {r['outcome']:<10} "
                f"by {r['actor']} about {r['subject']}"
            )


def _render_denial(add: Callable[[str], None], denial: dict[str, Any] | None) -> None:
    if not denial:
        return
    q = denial["query"]
    add("")
    add(
        f"a denied query: {q['requester']} asked {q['provider']} for {q['data_item']} under "
        f"{q['procedure']} → DENIED ({denial['reason']})"
    )
    add(f"  why: {denial['explanation']}")
    add(f"  {q['procedure']} allows only: " + "; ".join(denial["allowed_under_procedure"]))


def _render_review(add: Callable[[str], None], review: dict[str, Any] | None) -> None:
    add("")
    if review is None:
        add("held for review: none in this run")
        return
    if "error" in review:
        add(f"review failed: {review['error']}")
        return
    q = review["query"]
    add(
        f"a held query and its review: {q['requester']} asked {q['provider']} for "
        f"{q['data_item']} under {q['procedure']} → HELD_FOR_REVIEW (auto-response disabled)"
    )
    add(
        f"  {q['provider']}'s reviewer {review['reviewer']} saw {review['queue_length']} held "
        f"provision(s) and approved permit {review['permit_id'][:12]} "
        f"({'delivered late through the network' if review['delivered'] else 'delivery pending'})"
    )
    add(
        f"  the requester then saw {review['status_after'].removeprefix('QUERY_STATUS_')}"
        f" with {', '.join(review['items_after']) or 'no values'} ({review['seconds']:.1f}s)"
    )
    declined = review.get("declined")
    if declined:
        d = declined["query"]
        add(
            f"  and declined permit {declined['permit_id'][:12]} ({d['requester']}: "
            f"{d['data_item']}) with {declined['reason']}; the requester then saw "
            f"{declined['status_after'].removeprefix('QUERY_STATUS_')}"
        )
    add(f"  via: {review['via']}")
    if review.get("calls"):
        add(f"  staff console calls: {' → '.join(c.split('.')[-1] for c in review['calls'])}")
    if review.get("ledger"):
        by_event = ", ".join(f"{e} {n}" for e, n in review["staff_records"].items())
        add(
            f"  staff actions in ledger {review['ledger']}: {review['staff_records_total']} "
            f"STAFF_*/REVIEW_* records ({by_event})"
        )


def _render_disclosure(add: Callable[[str], None], disclosure: dict[str, Any] | None) -> None:
    if not disclosure:
        return
    add("")
    if "error" in disclosure:
        add(f"portal disclosure failed: {disclosure['error']}")
        return
    places = ", ".join(f"{place} {n}" for place, n in sorted(disclosure["places"].items()))
    add(
        f"what person {disclosure['person']} sees on the portal (情報提供等記録開示), asked by "
        f"{disclosure['organization']}: {sum(disclosure['places'].values())} entries ({places})"
    )
    add("  (linkage records disclose --world <dir>/world.json shows the same for a running world)")
    for missing in disclosure["unanswered"]:
        add(f"  no answer from {missing['place']}: {missing['reason']}")
    for e in disclosure["entries"]:
        flow = f"{e['requester']} → {e['provider']}" if e["provider"] else e["requester"]
        items = ",".join(e["data_items"])
        add(
            f"  {e['occurred_at'][:19]} {e['place']:<13} {e['event']:<16} {e['outcome']:<9} "
            f"{flow:<15} {e['procedure']:<10} {items}".rstrip()
        )


if __name__ == "__main__":
    sys.exit(main())
