"""``linkage conformance``: judge any ``NetworkService`` against the permission list.

Usage::

    linkage conformance --target HOST:PORT (--pki-dir DIR | --insecure) [--on YYYY-MM-DD]
                        [--procedure P ...] [--json] [--file CSV] [--per-field N]
                        [--exhaustive] [--batch-size N] [--timeout S]
                        [--listen HOST:PORT] [--endpoint HOST:PORT]

The kit sets itself up through the contract only (see ``conformance_session``): it registers one
test organization per capacity, gives them one synthetic person, starts a fake provider
(``conformance_provider``) that every test organization names as its endpoint, then asks the
target, in batches, every allowed query of the list and single-field mutations of each
(``conformance_cases``), and judges what the network answered and what reached the provider
(``conformance_report``).

**Who runs it.** With ``--pki-dir`` the kit issues itself client certificates (``admin``,
``registry``, ``platform.conformance``, ``org.cf-…``) from the CA in that directory: it is run
by the network operator, who holds the target's CA. The directory must already hold the CA;
the kit never creates one. ``--insecure`` is for a target started with the insecure debug flag.
The test organizations stay in the target's directory (the contract has no way to remove one);
their codes carry a random run id, so runs never collide.

Exit status: 0 the target conforms; 1 some probe missed (each listed); 2 bad usage, or the
target could not be judged (unreachable, or the setup calls failed).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from permission_list.checker import PermissionList
from permission_list.conformance_cases import DEFAULT_PER_FIELD, Plan, build_plan
from permission_list.conformance_report import (
    Disposition,
    Report,
    judge,
    render_json,
    render_table,
)
from permission_list.loader import load, load_default, parse_date
from permission_list.model import PermissionListError, normalize_procedure

if TYPE_CHECKING:  # grpc is imported only when a run starts, so --help stays fast
    from linkage.rpc import RunningServer
    from permission_list.conformance_provider import FakeProvider
    from permission_list.conformance_session import KitOrganization, Target

PROG = "linkage conformance"
EXIT_CONFORMS = 0
EXIT_MISSES = 1
EXIT_USAGE = 2
DEFAULT_TIMEOUT = 60.0
DEFAULT_SETTLE = 0.2


class UsageError(Exception):
    """Bad command-line input (exit 2)."""


@dataclass(frozen=True)
class Options:
    """One run, as the command line asked for it."""

    target: str
    pki_dir: Path | None
    on: date
    procedures: tuple[str, ...] | None = None
    as_json: bool = False
    permissions_file: Path | None = None
    per_field: int = DEFAULT_PER_FIELD
    exhaustive: bool = False
    batch_size: int = 5000
    timeout: float = DEFAULT_TIMEOUT
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    endpoint: str | None = None
    settle: float = DEFAULT_SETTLE


def main(argv: list[str]) -> int:
    """Run the kit; the process exit status."""
    return asyncio.run(main_async(argv))


async def main_async(
    argv: Sequence[str], out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """``main`` for a caller that already runs an event loop (tests, the world harness)."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        options = parse_args(argv)
        permissions = _permissions(options.permissions_file)
        plan = build_plan(
            permissions,
            options.on,
            procedures=options.procedures,
            per_field=options.per_field,
            exhaustive=options.exhaustive,
        )
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except (UsageError, PermissionListError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=err)
        return EXIT_USAGE
    from permission_list.conformance_session import SetupError, UnreachableError

    try:
        report = await run(options, permissions, plan)
    except UnreachableError as exc:
        print(f"{PROG}: error: {exc}", file=err)
        return EXIT_USAGE
    except SetupError as exc:
        print(f"{PROG}: error: cannot judge the target: {exc}", file=err)
        return EXIT_USAGE
    if options.as_json:
        render_json(report, out)
    else:
        render_table(report, out)
    return EXIT_CONFORMS if report.ok else EXIT_MISSES


def _permissions(path: Path | None) -> PermissionList:
    return load_default() if path is None else load(path)


# --- the command line --------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> Options:
    """Options from the command line; ``UsageError`` (or argparse's exit) when they are bad."""
    args = _parser().parse_args(list(argv))
    on = date.today() if args.on is None else parse_date(args.on)
    if on is None:
        raise UsageError(f"--on: {args.on!r} is not a date (YYYY-MM-DD)")
    host, port = _address(args.listen, "--listen")
    if args.endpoint is not None:
        _address(args.endpoint, "--endpoint")
    _address(args.target, "--target", allow_zero=False)
    if not 1 <= args.batch_size <= 5000:
        raise UsageError("--batch-size: must be 1-5000")
    if args.per_field < 1:
        raise UsageError("--per-field: must be at least 1")
    if args.timeout <= 0:
        raise UsageError("--timeout: must be positive")
    return Options(
        target=args.target,
        pki_dir=args.pki_dir,
        on=on,
        procedures=_procedures(args.procedure),
        as_json=args.json,
        permissions_file=args.file,
        per_field=args.per_field,
        exhaustive=args.exhaustive,
        batch_size=args.batch_size,
        timeout=args.timeout,
        listen_host=host,
        listen_port=port,
        endpoint=args.endpoint,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Judge a NetworkService against the permission list: every allowed query must get "
            "a permit, every single-field mutation of one must be refused. Exit 0 conforms, "
            "1 misses, 2 bad usage or target unreachable."
        ),
    )
    parser.add_argument("--target", required=True, metavar="HOST:PORT", help="the network")
    security = parser.add_mutually_exclusive_group(required=True)
    security.add_argument(
        "--pki-dir",
        type=Path,
        metavar="DIR",
        help="the target's PKI directory (with its CA): the kit issues its certificates there",
    )
    security.add_argument(
        "--insecure", action="store_true", help="plaintext, identities claimed (debug targets)"
    )
    parser.add_argument("--on", metavar="YYYY-MM-DD", help="date of the queries (default today)")
    parser.add_argument(
        "--procedure",
        action="extend",
        nargs="+",
        metavar="P",
        help="only these procedures (table2:82, 82, 56-2); default: all",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON report")
    parser.add_argument("--file", type=Path, metavar="CSV", help="judge against this list")
    parser.add_argument(
        "--per-field",
        type=int,
        default=DEFAULT_PER_FIELD,
        metavar="N",
        help=f"mutations per field per allowed case (default {DEFAULT_PER_FIELD})",
    )
    parser.add_argument(
        "--exhaustive", action="store_true", help="every single-field mutation (~100k queries)"
    )
    parser.add_argument("--batch-size", type=int, default=5000, metavar="N", help="queries/call")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S", help="deadline per call"
    )
    parser.add_argument(
        "--listen",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="where the fake provider listens (default 127.0.0.1, a free port)",
    )
    parser.add_argument(
        "--endpoint",
        metavar="HOST:PORT",
        help="the fake provider's address as the target reaches it (default: --listen's)",
    )
    return parser


def _address(text: str, option: str, *, allow_zero: bool = True) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if (
        not sep
        or not host
        or not port.isdigit()
        or not (0 if allow_zero else 1) <= int(port) < 65536
    ):
        raise UsageError(f"{option}: {text!r} is not HOST:PORT")
    return host, int(port)


def _procedures(values: list[str] | None) -> tuple[str, ...] | None:
    if not values:
        return None
    procedures = []
    for value in values:
        try:
            procedures.append(normalize_procedure(value))
        except ValueError:
            raise UsageError(f"--procedure: {value!r} is not a procedure (82, table2:82)") from None
    return tuple(procedures)


# --- a run -------------------------------------------------------------------------------------


async def run(options: Options, permissions: PermissionList, plan: Plan) -> Report:
    """Set up, probe and judge; ``SetupError`` when the target cannot be judged."""
    with tempfile.TemporaryDirectory(prefix="linkage-conformance-") as keys_dir:
        return await _run(options, permissions, plan, Path(keys_dir))


async def _run(options: Options, permissions: PermissionList, plan: Plan, keys_dir: Path) -> Report:
    from permission_list import conformance_session as wire

    started = time.monotonic()
    run_id = wire.new_run_id()
    organizations = {
        capacity: wire.KitOrganization.create(run_id, capacity, keys_dir)
        for capacity in plan.capacities()
    }
    if options.pki_dir is not None:
        names = wire.identities([org.code for org in organizations.values()])
        await asyncio.to_thread(_issue, options.pki_dir, names)
    target = wire.Target(options.target, options.pki_dir, options.timeout)
    try:
        target_version = await wire.probe_target(target)
        provider, server = await _start_provider(options, organizations, target)
        try:
            probed = await _probe(options, plan, run_id, organizations, target, server.port)
        finally:
            await server.stop(grace=1.0)
    finally:
        await target.close()
    report = judge(
        plan=plan,
        query_ids=probed.query_ids,
        organizations={c: org.facts() for c, org in organizations.items()},
        dispositions=probed.dispositions,
        received=provider.record.permits,
        target=options.target,
        list_version=permissions.version,
        target_list_version=target_version,
        problems=provider.record.problems,
    )
    stats = {
        "organizations": len(organizations),
        "batches": probed.batches,
        "queries": len(plan.probes),
        "setup_seconds": round(probed.started - started, 3),
        "query_seconds": round(probed.seconds, 3),
        "queries_per_second": round(len(plan.probes) / max(probed.seconds, 1e-9)),
        "permit_batches_received": provider.record.batches,
    }
    return dataclasses.replace(report, seconds=time.monotonic() - started, stats=stats)


async def _start_provider(
    options: Options, organizations: Mapping[str, KitOrganization], target: Target
) -> tuple[FakeProvider, RunningServer]:
    """The fake provider, serving; it fetches the network's keys from the target."""
    from linkage.rpc import Security
    from permission_list import conformance_provider as fake
    from permission_list import conformance_session as wire

    async def fetch_keys() -> dict[str, bytes]:
        keys, _version = await wire.network_keys(target, wire.PROVIDER_IDENTITY)
        return keys

    provider = fake.FakeProvider(
        {org.code: org.signer for org in organizations.values()}, fake.NetworkKeys(fetch_keys)
    )
    security = Security(options.pki_dir, wire.PROVIDER_IDENTITY)
    try:
        server = await fake.serve(provider, security, options.listen_host, options.listen_port)
    except (OSError, RuntimeError) as exc:
        where = f"{options.listen_host}:{options.listen_port}"
        raise wire.SetupError(f"the fake provider cannot listen on {where}: {exc}") from exc
    return provider, server


@dataclass(frozen=True)
class _Probed:
    """What sending the probes gave: ids, dispositions, and when and how long."""

    query_ids: list[str]
    dispositions: Mapping[str, Disposition]
    batches: int
    started: float
    seconds: float


async def _probe(
    options: Options,
    plan: Plan,
    run_id: str,
    organizations: Mapping[str, KitOrganization],
    target: Target,
    provider_port: int,
) -> _Probed:
    """Register the organizations (endpoint: the fake provider), then send every probe."""
    from permission_list import conformance_session as wire

    endpoint = options.endpoint or f"{options.listen_host}:{provider_port}"
    await wire.register_all(target, list(organizations.values()), endpoint)
    started = time.monotonic()
    query_ids = [f"cf-{run_id}-{i:06d}" for i in range(len(plan.probes))]
    pairs = list(zip(plan.probes, query_ids, strict=True))
    batches = wire.batches(pairs, organizations, options.batch_size)
    dispositions = await wire.submit_all(target, batches, organizations)
    await asyncio.sleep(options.settle)  # a late, unasked-for delivery still counts
    return _Probed(query_ids, dispositions, len(batches), started, time.monotonic() - started)


def _issue(pki_dir: Path, names: Sequence[str]) -> None:
    from permission_list.conformance_session import SetupError, issue_certificates

    try:
        issue_certificates(pki_dir, names)
    except OSError as exc:
        raise SetupError(f"cannot issue certificates in {pki_dir}: {exc}") from exc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
