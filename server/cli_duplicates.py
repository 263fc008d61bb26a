"""``linkage duplicates``: import, export and reconcile a tenant's duplicates (副本) from files.

Subcommands (file format: ``server/duplicates_file.py``, JSON lines)::

    linkage duplicates import FILE --tenant CODE [--import-id ID] [--business-system NAME]
                                 [--workers N]
    linkage duplicates export --tenant CODE [--data-item ITEM] [--history] [--output FILE]
    linkage duplicates reconcile FILE --tenant CODE

Each works directly on the platform's database and data directory (``--database-url``,
``--data-dir``, ``--platform``, as the server is configured), through the same domain code as
the ImportDuplicates/ExportDuplicates RPCs. Import is all or nothing: a bad line prints
``FILE:LINE: field: reason`` (each bad line, up to a limit) and exits 2 with nothing stored. A
small file is read and checked whole before the database is opened; a large one
(``PIPELINE_MIN_BYTES``) is read, checked and sealed by forked workers (``--workers``, each
sealing the rows of its own people) while this process inserts them, in the one transaction a
bad line rolls back (``server.duplicates_bulk``).
Progress goes to standard error. Exit codes: 0 done (or, for
reconcile, no difference), 1 reconcile found differences, 2 bad usage or input.

Must never: store part of a file, print a personal value (contents are never echoed; unified
numbers are printed only where reconciliation must name the person), or be slow to import at
start-up (heavy modules load inside the subcommand).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from linkage.cli import parse_args

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from linkage.records.model import ActorKind
    from server.duplicates import DuplicateStore
    from server.duplicates_bulk import Source
    from server.duplicates_rows import Row
    from server.records import Recorder
    from server.tenancy import Tenant

EXIT_OK = 0
EXIT_DIFFERENT = 1
EXIT_USAGE = 2
MAX_ERRORS = 50
PROGRESS_EVERY = 50_000
# From this size on, a worker process reads, checks and seals while this one inserts; a smaller
# file is read whole first (its bad lines reported before the database is opened).
PIPELINE_MIN_BYTES = 1 << 20
# Workers leave a core to the inserting process: on two cores one worker and the inserts
# already share both (a second worker measured no faster there: ``make bench``); with more
# cores the inserts are the bound and more workers keep them fed.
USABLE_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
DEFAULT_WORKERS = max(1, min(4, USABLE_CPUS - 1))
MAX_WORKERS = 16


class _UsageError(Exception):
    """Bad input from the command line; printed without a traceback, exit 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="linkage duplicates",
        description="Duplicates (副本) of a tenant: import, export, reconcile (JSON lines).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tenant", required=True, help="organization code of the tenant")
        p.add_argument("--data-dir", type=Path, default=Path("data/server"))
        p.add_argument("--database-url", help="default: SQLite file server.sqlite in --data-dir")
        p.add_argument("--platform", default="local", help="platform name (checkpoint key)")

    imp = sub.add_parser("import", help="import a file, all or nothing")
    imp.add_argument("file", type=Path)
    common(imp)
    imp.add_argument("--import-id", help="idempotency key (default: a new one)")
    imp.add_argument("--business-system", default="cli")
    imp.add_argument(
        "--workers",
        type=_worker_count,
        default=DEFAULT_WORKERS,
        help=f"processes that read, check and seal a large file (default {DEFAULT_WORKERS})",
    )

    exp = sub.add_parser("export", help="write the duplicates in force (or all versions)")
    common(exp)
    exp.add_argument("--data-item", default="")
    exp.add_argument("--history", action="store_true", help="include superseded versions")
    exp.add_argument("--output", type=Path, help="file to write (default: standard output)")

    rec = sub.add_parser("reconcile", help="compare a file of originals with the store")
    rec.add_argument("file", type=Path)
    common(rec)
    return parser


def main(argv: list[str]) -> int:
    """Run ``linkage duplicates`` with ``argv``; returns the exit code."""
    args = parse_args(_parser(), argv)
    if isinstance(args, int):  # --help, or a usage error argparse already printed
        return args
    from linkage.errors import LinkageError

    handlers = {"import": _import, "export": _export, "reconcile": _reconcile}
    try:
        return handlers[args.command](args)
    except (_UsageError, OSError) as exc:
        print(f"linkage duplicates: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LinkageError as exc:
        print(f"linkage duplicates: {exc.reason}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE


# --- wiring -------------------------------------------------------------------------------------


@dataclass
class _Store:
    store: DuplicateStore
    tenant: Tenant
    sessions: sessionmaker[Session]
    engine: Engine
    recorder: Recorder
    clock: Callable[[], datetime]
    key_path: Path

    def close(self) -> None:
        self.engine.dispose()


def _open_store(args: argparse.Namespace) -> _Store:
    from linkage import db
    from linkage.keys import KeyRing
    from linkage.records.ledger import Ledger
    from server.duplicates import DuplicateStore
    from server.ports import system_clock
    from server.records import Recorder
    from server.tenancy import TenantConfig, Tenants

    try:
        config = TenantConfig(args.tenant)
    except ValueError as error:
        raise _UsageError(str(error)) from None
    key_dir = args.data_dir / "keys"
    url = args.database_url or db.sqlite_url(args.data_dir / "server.sqlite")
    if (
        url.startswith("sqlite")
        and not (args.data_dir / "server.sqlite").exists()
        and (args.database_url is None)
    ):
        raise _UsageError(
            f"no database in {args.data_dir} (start the server once, or pass --database-url)"
        )
    tenants = Tenants.load([config], key_dir)
    ring = KeyRing.load_or_create(key_dir, f"platform-{args.platform}")
    recorder = Recorder(Ledger(ring.current.signing_key, ring.current.key_id))
    engine = db.make_engine(url)
    sessions = db.session_factory(engine)
    store = DuplicateStore(sessions, recorder, system_clock)
    tenant = tenants.get(args.tenant)
    # Where Tenants.load keeps the tenant's data key: a forked import worker loads it there.
    key_path = key_dir / f"data-{tenant.code}.key"
    return _Store(store, tenant, sessions, engine, recorder, system_clock, key_path)


class _Progress:
    """Counts on standard error: a rewritten line on a terminal, a line per step otherwise."""

    def __init__(self, stream: TextIO, label: str) -> None:
        self._stream = stream
        self._label = label
        self._tty = stream.isatty()
        self._start = time.monotonic()

    def update(self, count: int, *, final: bool = False) -> None:
        if not final and count % PROGRESS_EVERY:
            return
        elapsed = max(time.monotonic() - self._start, 1e-9)
        text = f"{self._label}: {count:,} rows ({count / elapsed:,.0f}/s)"
        if self._tty:
            self._stream.write("\r" + text + ("\n" if final else ""))
        else:
            self._stream.write(text + "\n")
        self._stream.flush()


# --- import -------------------------------------------------------------------------------------


def _import(args: argparse.Namespace) -> int:
    path = str(args.file)
    size = args.file.stat().st_size  # a missing file is a usage error before anything starts
    from server import duplicates_pipeline as pipeline  # light: no protobuf, no SQLAlchemy

    if pipeline.fork_available() and size >= PIPELINE_MIN_BYTES:
        # Fork the reader first: it loads its modules, checks and seals while this process
        # loads the storing side and opens the database; then one core seals, one inserts.
        first = [pipeline.start_workers(path, args.workers)]
        try:
            import_id = _import_id(args)
            opened = _open_store(args)
        except BaseException:
            first[0].close()
            raise

        def worker() -> pipeline.Worker | pipeline.Workers:
            return first.pop() if first else pipeline.start_workers(path, args.workers)

        return _store_import(args, opened, import_id, worker, None)
    import_id = _import_id(args)
    rows, errors = _read_rows(args.file)
    if errors:
        return _rejected(errors, len(errors))
    if not rows:
        return _rejected([f"{path}: no records"], 1)
    opened = _open_store(args)
    from server.duplicates_bulk import InlineSource

    keys = {(row[0], row[1]) for row in rows}
    key = opened.tenant.data_key
    return _store_import(args, opened, import_id, lambda: InlineSource(rows, path, key), keys)


def _worker_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= count <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_WORKERS}")
    return count


def _import_id(args: argparse.Namespace) -> str:
    from linkage.errors import LinkageError
    from server.tenancy import require_id

    import_id: str = args.import_id or f"cli-{uuid.uuid4().hex}"
    try:
        require_id(import_id, "import_id")
    except LinkageError as error:
        raise _UsageError(f"--import-id: {error.message}") from None
    return import_id


def _read_rows(file: Path) -> tuple[list[Row], list[str]]:
    """Every row of a (small) file, or its errors (``FILE:LINE: field: reason``)."""
    from server.duplicates_rows import read_rows

    rows: list[Row] = []
    errors: list[str] = []
    with file.open("r", encoding="utf-8") as handle:
        try:
            for _number, found in read_rows(handle, str(file)):
                if isinstance(found, list):
                    errors.extend(str(error) for error in found)
                elif not errors:
                    rows.append(found)
        except UnicodeDecodeError as error:
            raise _UsageError(f"{file}: not UTF-8 text (byte {error.start})") from None
    return rows, errors


def _rejected(errors: list[str], count: int) -> int:
    for problem in errors[:MAX_ERRORS]:
        print(problem, file=sys.stderr)
    if count > MAX_ERRORS:
        print(f"... and {count - MAX_ERRORS} more", file=sys.stderr)
    print("nothing was imported", file=sys.stderr)
    return EXIT_USAGE


def _store_import(
    args: argparse.Namespace,
    opened: _Store,
    import_id: str,
    open_source: Callable[[], Source],
    keys: set[tuple[str, str]] | None,
) -> int:
    from server.duplicates_bulk import BulkImport, WorkerFailed

    bulk = BulkImport(
        opened.sessions, opened.recorder, opened.clock, opened.tenant.code, opened.key_path
    )
    progress = _Progress(sys.stderr, "stored")
    started = time.monotonic()
    try:
        result = bulk.run(
            import_id, args.business_system, open_source, keys=keys, on_rows=progress.update
        )
    except WorkerFailed as error:
        raise _UsageError(str(error)) from None
    finally:
        opened.close()
    if result.error_count:
        return _rejected(list(result.errors), result.error_count)
    if result.already_imported:
        print(f"import {import_id} was already imported; nothing stored again", file=sys.stderr)
        return EXIT_OK
    if not result.imported:
        return _rejected([f"{args.file}: no records"], 1)
    elapsed = max(time.monotonic() - started, 1e-9)
    print(
        f"stored {result.imported:,} rows ({result.superseded:,} superseded) "
        f"in {elapsed:.1f} s ({result.imported / elapsed:,.0f}/s), import id {import_id}",
        file=sys.stderr,
    )
    return EXIT_OK


# --- export -------------------------------------------------------------------------------------


def _operator() -> tuple[ActorKind, str]:
    """Who reads the store's plaintext from this command: the platform's operator (the
    records name the actor SYSTEM ``operator``, as ``linkage staff create-admin`` does)."""
    from linkage.records.model import ActorKind

    return ActorKind.SYSTEM, "operator"


def _export(args: argparse.Namespace) -> int:
    from linkage.errors import LinkageError
    from server.duplicates_file import write_records

    opened = _open_store(args)
    progress = _Progress(sys.stderr, "exported")
    output = args.output.open("w", encoding="utf-8") if args.output else sys.stdout
    count = 0
    try:
        pages = opened.store.export_pages(
            opened.tenant, args.data_item, args.history, actor=_operator()
        )
        for page in pages:
            count += write_records(output, page)
            progress.update(count)
    except LinkageError as error:
        raise _UsageError(error.message) from None
    finally:
        opened.close()
        if args.output:
            output.close()
    progress.update(count, final=True)
    return EXIT_OK


# --- reconcile ----------------------------------------------------------------------------------


def _reconcile(args: argparse.Namespace) -> int:
    from server.duplicates_file import LineError, open_text, read_records

    originals: dict[tuple[str, str, str], tuple[int, bytes]] = {}
    errors: list[str] = []
    with open_text(args.file) as handle:
        for number, item in read_records(handle, str(args.file)):
            if isinstance(item, LineError):
                errors.append(str(item))
                continue
            key = (item.unified_number, item.value.data_item, item.value.effective_from)
            content = item.value.content.SerializeToString(deterministic=True)
            originals[key] = (number, content)
    if errors:
        for error in errors[:MAX_ERRORS]:
            print(error, file=sys.stderr)
        return EXIT_USAGE
    items = {item for _, item, _ in originals}
    opened = _open_store(args)
    stored: dict[tuple[str, str, str], bytes] = {}
    try:
        # One item in the originals: only its rows are read (and recorded as read).
        only = next(iter(items)) if len(items) == 1 else ""
        for page in opened.store.export_pages(
            opened.tenant, only, include_history=False, actor=_operator()
        ):
            for record in page:
                if record.value.data_item in items:
                    value = record.value
                    key = (record.unified_number, value.data_item, value.effective_from)
                    stored[key] = value.content.SerializeToString(deterministic=True)
    finally:
        opened.close()
    differences = 0
    for key, (line, content) in sorted(originals.items(), key=lambda kv: kv[1][0]):
        if key not in stored:
            print(f"{args.file}:{line}: {key[0]} {key[1]} {key[2]}: missing in the store")
            differences += 1
        elif stored[key] != content:
            print(f"{args.file}:{line}: {key[0]} {key[1]} {key[2]}: content differs")
            differences += 1
    for key in sorted(set(stored) - set(originals)):
        print(f"{args.file}: {key[0]} {key[1]} {key[2]}: in the store, not in the originals")
        differences += 1
    print(
        f"{len(originals):,} originals, {len(stored):,} stored, {differences:,} difference(s)",
        file=sys.stderr,
    )
    return EXIT_DIFFERENT if differences else EXIT_OK
