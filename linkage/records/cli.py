"""``linkage records``: verify, export, disclose and purge access-record ledgers.

Owns the command line over the ledger API for operators and auditors. Exit codes: 0 intact or
done, 1 a ledger failed verification (the first bad position is printed), 2 bad usage or input
(no such database or ledger, unreadable key file), 3 a disclosure is incomplete (a place did
not answer; the entries of the others are printed, the missing places on stderr), 4 a running
system refused or could not be reached.

``disclose`` reads one database offline (``--database``, by subject), or asks a running world
(``--world world.json --organization ORG --unified-number U``) for everything recorded about a
person at every place (the organization's server, the network, every other organization), as
the portal shows it: one JSON line per entry, each with its ``place``.

It must stay light at import time (``linkage --help`` starts fast: SQLAlchemy and PyNaCl are
imported by the subcommand that needs them), never print a signing key, and never modify a
ledger except through ``purge``.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from linkage.cli import parse_args

if TYPE_CHECKING:
    from nacl.signing import VerifyKey
    from sqlalchemy import Engine

    from linkage.records.disclosure import StoredRecord

__all__ = ["main"]

EXIT_OK = 0
EXIT_TAMPERED = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3
EXIT_UNAVAILABLE = 4


class _UsageError(Exception):
    """Bad input from the command line; printed without a traceback, exit 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="linkage records",
        description="Access-record ledgers (情報提供等記録): verify, export, disclose, purge.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def database(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--database", required=True, help="SQLAlchemy URL, or the path of an SQLite file"
        )

    verify = sub.add_parser("verify", help="verify ledgers in a database")
    database(verify)
    which = verify.add_mutually_exclusive_group(required=True)
    which.add_argument("--ledger", action="append", help="ledger id (repeatable)")
    which.add_argument("--all", action="store_true", help="every ledger in the database")
    verify.add_argument("--keys", type=Path, help="verify-key file (FORMAT.md §9)")
    verify.add_argument(
        "--workers",
        type=int,
        help="processes per ledger (default: more than one only for very long chains)",
    )

    check = sub.add_parser("verify-export", help="verify an export file without a database")
    check.add_argument("file", type=Path)
    check.add_argument("--keys", type=Path, help="verify-key file (FORMAT.md §9)")

    export = sub.add_parser("export", help="write a ledger as JSON lines (FORMAT.md §8)")
    database(export)
    export.add_argument("--ledger", required=True)
    export.add_argument("--output", type=Path, help="file to write (default: standard output)")

    disclose = sub.add_parser(
        "disclose",
        help="the records about a person, as JSON lines: from one database, or from every "
        "place of a running world",
    )
    source = disclose.add_mutually_exclusive_group(required=True)
    source.add_argument("--database", help="offline: SQLAlchemy URL, or the path of an SQLite file")
    source.add_argument(
        "--world", type=Path, help="online: the world manifest (world.json of linkage world up)"
    )
    disclose.add_argument(
        "--subject", action="append", help="offline: unified number or linkage code (repeatable)"
    )
    disclose.add_argument(
        "--ledger", action="append", help="offline: only these ledgers (repeatable)"
    )
    disclose.add_argument("--organization", help="online: the organization asking, e.g. sakai")
    disclose.add_argument("--unified-number", help="online: the person's number there")
    disclose.add_argument(
        "--timeout", type=float, default=30.0, help="online: seconds to wait (default 30)"
    )

    purge = sub.add_parser("purge", help="purge records past retention behind a signed anchor")
    database(purge)
    purge.add_argument("--ledger", required=True)
    purge.add_argument("--signing-key", required=True, type=Path, help="0600 signing-key file")
    when = purge.add_mutually_exclusive_group()
    when.add_argument("--older-than", help="ISO 8601 cut-off with a time zone")
    when.add_argument("--retention-days", type=int, help="keep this many days (default 7 years)")

    keygen = sub.add_parser("keygen", help="create a signing-key file and publish its verify key")
    keygen.add_argument("--signing-key", required=True, type=Path)
    keygen.add_argument("--key-id", required=True)
    keygen.add_argument("--verify-keys", type=Path, help="verify-key file to add the key to")
    return parser


def main(argv: list[str]) -> int:
    """Run ``linkage records`` with ``argv`` (without the program name); returns the exit code."""
    args = parse_args(_parser(), argv)
    if isinstance(args, int):  # --help, or a usage error argparse already printed
        return args
    handlers = {
        "verify": _verify,
        "verify-export": _verify_export,
        "export": _export,
        "disclose": _disclose,
        "purge": _purge,
        "keygen": _keygen,
    }
    try:
        return handlers[args.command](args)
    except (_UsageError, ValueError, OSError) as exc:
        print(f"linkage records: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _engine(database: str) -> Engine:
    from sqlalchemy.engine import make_url

    from linkage.db import make_engine, sqlite_url

    url = database if "://" in database else sqlite_url(Path(database))
    parsed = make_url(url)
    # SQLite would silently create an empty file: an auditor's typo must not "verify".
    is_sqlite = parsed.get_backend_name() == "sqlite"
    if is_sqlite and not (parsed.database and Path(parsed.database).is_file()):
        raise _UsageError(f"no such database: {parsed.database}")
    return make_engine(url)


def _keys(path: Path | None) -> dict[str, VerifyKey] | None:
    if path is None:
        return None
    from linkage.records.keyfile import load_verify_keys

    return load_verify_keys(path)


def _verify(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from linkage.records.verify import ledger_ids, verify_many

    if args.workers is not None and args.workers < 1:
        raise _UsageError("--workers must be at least 1")
    engine = _engine(args.database)
    keys = _keys(args.keys)
    status = EXIT_OK
    try:
        wanted = ledger_ids(engine) if args.all else args.ledger
        if args.all and not wanted:
            raise _UsageError(f"no ledgers in {args.database}")
        if not args.all:
            _require_ledgers(engine, wanted, args.database)
        for report in verify_many(engine, wanted, keys, workers=args.workers):
            print(report.describe(), file=sys.stdout if report.ok else sys.stderr, flush=True)
            if not report.ok:
                status = EXIT_TAMPERED
    except SQLAlchemyError as exc:  # e.g. a database without the ledger's tables
        raise _UsageError(f"cannot read {args.database}: {exc.__class__.__name__}") from exc
    finally:
        engine.dispose()
    return status


def _require_ledgers(engine: Engine, wanted: list[str], database: str) -> None:
    """Refuse a ledger id the database does not know (a typo must not "verify")."""
    from linkage.records.verify import ledger_ids

    known = set(ledger_ids(engine))
    for ledger_id in wanted:
        if ledger_id not in known:
            raise _UsageError(f"ledger {ledger_id}: not found in {database}")


def _verify_export(args: argparse.Namespace) -> int:
    from linkage.records.verify import verify_jsonl

    report = verify_jsonl(args.file, _keys(args.keys))
    print(report.describe(), file=sys.stdout if report.ok else sys.stderr)
    return EXIT_OK if report.ok else EXIT_TAMPERED


def _export(args: argparse.Namespace) -> int:
    from sqlalchemy.orm import Session

    from linkage.records.disclosure import export_jsonl

    engine = _engine(args.database)
    try:
        with Session(engine) as session:
            if args.output is None:
                count = export_jsonl(session, args.ledger, sys.stdout)
            else:
                with args.output.open("w", encoding="utf-8") as out:
                    count = export_jsonl(session, args.ledger, out)
    finally:
        engine.dispose()
    print(f"ledger {args.ledger}: exported {count} records", file=sys.stderr)
    return EXIT_OK


def _disclose(args: argparse.Namespace) -> int:
    if args.world is not None:
        return _disclose_online(args)
    if args.organization or args.unified_number:
        raise _UsageError("--organization and --unified-number go with --world")
    if not args.subject:
        raise _UsageError("--database needs --subject")
    from sqlalchemy.orm import Session

    from linkage.records.disclosure import disclose

    engine = _engine(args.database)
    try:
        with Session(engine) as session:
            found = disclose(session, args.subject, ledgers=args.ledger)
    finally:
        engine.dispose()
    for stored in found:
        sys.stdout.write(_disclosure_line(stored))
    return EXIT_OK


def _disclose_online(args: argparse.Namespace) -> int:
    import asyncio

    import grpc

    from linkage.errors import remote_error
    from linkage.records.portal import disclose_person, entry_line, target_in_manifest

    if args.subject or args.ledger:
        raise _UsageError("--subject and --ledger go with --database")
    if not args.organization or not args.unified_number:
        raise _UsageError("--world needs --organization and --unified-number")
    if args.timeout <= 0:
        raise _UsageError("--timeout must be positive")
    target = target_in_manifest(args.world, args.organization)
    try:
        found = asyncio.run(disclose_person(target, args.unified_number, deadline=args.timeout))
    except grpc.aio.AioRpcError as error:
        failure = remote_error(error)
        print(
            f"linkage records: the server of {args.organization} failed: "
            f"{failure.code} {failure.reason}".rstrip(),
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE
    for entry in found.entries:
        sys.stdout.write(entry_line(entry))
    for place, reason in found.unanswered:
        print(f"linkage records: {place} did not answer ({reason})", file=sys.stderr)
    return EXIT_INCOMPLETE if found.unanswered else EXIT_OK


def _disclosure_line(stored: StoredRecord) -> str:
    from linkage.records.disclosure import iso

    record = stored.record
    item = {
        "seq": stored.seq,
        "ledger": record.ledger,
        "occurred_at": iso(record.occurred_at_us),
        "event": record.event.value,
        "actor_kind": record.actor_kind.value,
        "actor_id": record.actor_id,
        "procedure": record.procedure,
        "requester": record.requester,
        "provider": record.provider,
        "data_items": list(record.data_items),
        "subject": record.subject,
        "permit_id": record.permit_id,
        "query_id": record.query_id,
        "outcome": record.outcome.value,
        "reason": record.reason,
    }
    return json.dumps(item, ensure_ascii=False) + "\n"


def _purge(args: argparse.Namespace) -> int:
    from linkage.db import session_factory, unit_of_work
    from linkage.records.keyfile import load_signing_key
    from linkage.records.retention import DEFAULT_RETENTION, purge, retention_cutoff

    if args.older_than is not None:
        cutoff = datetime.fromisoformat(args.older_than)
        if cutoff.tzinfo is None:
            raise _UsageError("--older-than needs a time zone, e.g. 2019-04-01T00:00:00+09:00")
    else:
        days = args.retention_days
        retention = DEFAULT_RETENTION if days is None else timedelta(days=days)
        cutoff = retention_cutoff(datetime.now(UTC), retention)
    key_id, signing_key = load_signing_key(args.signing_key)
    engine = _engine(args.database)
    try:
        with unit_of_work(session_factory(engine)) as session:
            count = purge(session, args.ledger, cutoff, signing_key, key_id)
    finally:
        engine.dispose()
    print(f"ledger {args.ledger}: purged {count} records older than {cutoff.isoformat()}")
    return EXIT_OK


def _keygen(args: argparse.Namespace) -> int:
    from nacl.signing import SigningKey

    from linkage.records.keyfile import load_verify_keys, save_signing_key, save_verify_keys

    if args.signing_key.exists():
        raise _UsageError(f"{args.signing_key} exists; refusing to overwrite a key")
    key = SigningKey.generate()
    save_signing_key(args.signing_key, args.key_id, key)
    if args.verify_keys is not None:
        keys = load_verify_keys(args.verify_keys) if args.verify_keys.exists() else {}
        keys[args.key_id] = key.verify_key
        save_verify_keys(args.verify_keys, keys)
    print(f"key {args.key_id}: verify key {bytes(key.verify_key).hex()}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
