"""``linkage ua``: the staff surface of the unified address server (名寄せ), on its database.

Owns the command line for the staff operations of ``unified_address.staff`` (``search``,
``waiting``, ``link``, ``merge``, ``split``, ``undo``, ``failures``) and for retrying failed
linkage-code requests (``retry``, which calls the registry and the intermediate server as
``ua.<org>``). Every such command names the staff member (``--staff``) and is recorded in the
ledger ``ua:<org>``; each runs in one transaction. It works on the database directly (with the
server's ``--data-dir`` for its key files): an operator's tool on the server's host. Staff at
their consoles use ``UnifiedAddressStaffService`` instead, with sessions and roles.

Also owns the accounts of that service (operator commands, ``--staff`` not needed)::

    linkage ua ... staff add --username NAME --role VIEWER|OPERATOR [--role ...]
    linkage ua ... staff grant --username NAME --role ...     (replaces the roles)
    linkage ua ... staff list

``staff add`` reads the initial password from standard input (asked twice without echo on a
terminal), never from argv; it must be changed at first sign-in. Account changes are recorded
in the ledger (actor SYSTEM ``operator``).

Must never: print an individual number or take one as an argument (argv is visible to other
users in ``ps`` and kept in shell history): ``search --individual-number-stdin`` reads it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from linkage.db import make_engine, session_factory, unit_of_work
from linkage.errors import LinkageError
from unified_address import staff
from unified_address.audit import Actor
from unified_address.repository import Repository

__all__ = ["main"]

_T = TypeVar("_T")
_ROLES = ("VIEWER", "OPERATOR")


def _pair(text: str) -> tuple[str, str]:
    system, sep, address_number = text.partition(":")
    if not sep or not system or not address_number:
        raise argparse.ArgumentTypeError(f"expected SYSTEM:ADDRESS_NUMBER, got {text!r}")
    return system, address_number


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="linkage ua",
        description="Staff operations of the unified address server (名寄せ). "
        "Every command is recorded under --staff.",
    )
    parser.add_argument("--database-url", required=True, help="the server's database")
    parser.add_argument("--organization", required=True, help="organization code, e.g. sakai")
    parser.add_argument("--data-dir", type=Path, required=True, help="the server's key files")
    parser.add_argument("--staff", default="", help="your staff id (recorded; name matching)")
    commands = parser.add_subparsers(dest="command", required=True)

    accounts = commands.add_parser("staff", help="accounts of the staff service (operator)")
    account_commands = accounts.add_subparsers(dest="staff_command", required=True)
    add = account_commands.add_parser("add", help="new account; password from standard input")
    add.add_argument("--username", required=True, help="the staff member's own user name")
    add.add_argument("--role", action="append", required=True, choices=_ROLES)
    grant = account_commands.add_parser("grant", help="replace an account's roles")
    grant.add_argument("--username", required=True)
    grant.add_argument("--role", action="append", required=True, choices=_ROLES)
    account_commands.add_parser("list", help="accounts, roles, initial password pending")

    search = commands.add_parser("search", help="find a person; show links and history")
    search.add_argument("--unified-number", default="")
    search.add_argument("--address", type=_pair, help="SYSTEM:ADDRESS_NUMBER")
    search.add_argument(
        "--individual-number-stdin",
        action="store_true",
        help="read an individual number from standard input (never from argv)",
    )
    waiting = commands.add_parser("waiting", help="address numbers waiting for a manual link")
    waiting.add_argument("--limit", type=int, default=100)

    link = commands.add_parser("link", help="link a waiting address number by hand")
    link.add_argument("address", type=_pair, help="SYSTEM:ADDRESS_NUMBER")
    link.add_argument("--to", default="", help="unified number (default: a new person)")
    link.add_argument("--note", default="")

    merge = commands.add_parser("merge", help="fold ABSORB into KEEP (one person, two numbers)")
    merge.add_argument("keep")
    merge.add_argument("absorb")
    merge.add_argument("--note", default="")

    split = commands.add_parser("split", help="move some links of a person to a new person")
    split.add_argument("unified_number")
    split.add_argument("links", type=_pair, nargs="+", metavar="SYSTEM:ADDRESS_NUMBER")
    split.add_argument("--note", default="")

    undo = commands.add_parser("undo", help="reverse a link, merge or split by change id")
    undo.add_argument("change_id", type=int)
    undo.add_argument("--note", default="")

    failures = commands.add_parser("failures", help="persons whose code request failed")
    failures.add_argument("--limit", type=int, default=100)

    retry = commands.add_parser("retry", help="retry failed linkage-code requests now")
    retry.add_argument("--limit", type=int, default=1000)
    retry.add_argument("--pki-dir", type=Path, help="mutual TLS (omit only for debugging)")
    retry.add_argument("--server-address", required=True)
    retry.add_argument("--registry-address", required=True)
    return parser


class _Session:
    """What one invocation works with: the database, the keys, the staff member."""

    def __init__(self, args: argparse.Namespace) -> None:
        from unified_address.app import open_keys

        self.args = args
        self.vault, self.audit = open_keys(args.data_dir, args.organization)
        self.engine = make_engine(args.database_url)
        self.sessions = session_factory(self.engine)

    def desk_run(self, fn: Callable[[staff.Desk], _T]) -> _T:
        """``fn`` at this staff member's desk, in one transaction."""
        with unit_of_work(self.sessions) as session:
            desk = staff.Desk(Repository(session), self.audit, self.args.staff, datetime.now(UTC))
            return fn(desk)


def _print_person(view: staff.PersonView) -> None:
    merged = f" merged-into={view.merged_into}" if view.merged_into else ""
    reason = f" ({view.code_failure_reason})" if view.code_failure_reason else ""
    held = "held" if view.has_individual_number else "none"
    print(f"{view.unified_number} individual-number={held} code={view.code_state}{reason}{merged}")
    for system, address_number in view.links:
        print(f"  link {system}:{address_number}")
    for line in view.history:
        print(f"  {line}")


def _search(s: _Session) -> int:
    args = s.args
    number = sys.stdin.readline().strip() if args.individual_number_stdin else ""
    system, address_number = args.address or ("", "")
    if not (args.unified_number or system or number):
        print(
            "linkage ua: error: give --unified-number, --address or --individual-number-stdin",
            file=sys.stderr,
        )
        return 2
    found = s.desk_run(
        lambda desk: staff.search(
            desk,
            s.vault,
            unified_number=args.unified_number,
            system=system,
            address_number=address_number,
            individual_number=number,
        )
    )
    for view in found:
        _print_person(view)
    if not found:
        print("no person found")
    return 0 if found else 1


def _retry(s: _Session) -> int:
    from linkage.rpc import Security
    from unified_address import registration
    from unified_address.runtime import Runtime
    from unified_address.scope import ScopeRegistry
    from unified_address.upstream import GrpcIntermediateServer, GrpcRegistry

    args = s.args

    async def run() -> registration.RetrySummary:
        security = Security(args.pki_dir, f"ua.{args.organization}")
        server_channel = security.channel(args.server_address)
        registry_channel = security.channel(args.registry_address)
        try:
            runtime = Runtime(
                organization=args.organization,
                sessions=s.sessions,
                vault=s.vault,
                audit=s.audit,
                scopes=ScopeRegistry(args.organization, ()),
                registry=GrpcRegistry(registry_channel, args.organization, 30.0),
                server=GrpcIntermediateServer(server_channel, args.organization, 30.0),
            )
            with unit_of_work(s.sessions) as session:
                s.audit.staff_operation(session, args.staff, "RETRY_CODE_REQUESTS", ())
            return await registration.retry_code_requests(
                runtime, Actor.staff(args.staff), args.limit
            )
        finally:
            await server_channel.close(None)
            await registry_channel.close(None)

    summary = asyncio.run(run())
    print(f"acquired={summary.acquired} failed={summary.failed}")
    return 0 if summary.failed == 0 else 1


def _staff_accounts(s: _Session) -> int:
    from linkage.records.model import utc_now
    from linkage.staffauth import PasswordInputError, read_password
    from unified_address.staff_accounts import StaffAccounts

    args = s.args
    accounts = StaffAccounts(s.sessions, s.audit, utc_now)
    by = args.staff or "operator"
    if args.staff_command == "list":
        for username, roles, must_change in accounts.accounts():
            pending = " (initial password)" if must_change else ""
            print(f"{username} {','.join(sorted(roles))}{pending}")
        return 0
    if args.staff_command == "grant":
        roles = accounts.set_roles(args.username, args.role, changed_by=by)
        print(f"{args.username}: {','.join(sorted(roles))}")
        return 0
    try:
        password = read_password(sys.stdin, sys.stderr)
    except PasswordInputError as error:
        print(f"linkage ua: error: {error}", file=sys.stderr)
        return 2
    name = accounts.add_account(args.username, password, args.role, created_by=by)
    print(f"created {name}; the password must be changed at first sign-in")
    return 0


def _dispatch(s: _Session) -> int:
    args = s.args
    command: str = args.command
    if command == "staff":
        return _staff_accounts(s)
    if not args.staff:
        print(f"linkage ua: error: {command} needs --staff (your staff id)", file=sys.stderr)
        return 2
    if command == "search":
        return _search(s)
    if command == "retry":
        return _retry(s)
    if command == "waiting":
        for link in s.desk_run(lambda desk: staff.waiting(desk, args.limit)).items:
            print(f"{link.system}:{link.address_number} since {link.registered_at:%Y-%m-%d}")
    elif command == "failures":
        for view in s.desk_run(lambda desk: staff.failures(desk, args.limit)).items:
            _print_person(view)
    elif command == "link":
        system, address_number = args.address
        change, number = s.desk_run(
            lambda desk: staff.link_manually(desk, system, address_number, args.to, note=args.note)
        )
        print(f"change #{change}: linked {system}:{address_number} to {number}")
    elif command == "merge":
        change = s.desk_run(lambda desk: staff.merge(desk, args.keep, args.absorb, note=args.note))
        print(f"change #{change}: merged {args.absorb} into {args.keep}")
    elif command == "split":
        change, number = s.desk_run(
            lambda desk: staff.split(desk, args.unified_number, args.links, note=args.note)
        )
        print(f"change #{change}: split {len(args.links)} link(s) off to {number}")
    elif command == "undo":
        change = s.desk_run(lambda desk: staff.undo(desk, args.change_id, note=args.note))
        print(f"change #{change}: undid #{args.change_id}")
    return 0


def main(argv: Sequence[str]) -> int:
    """``linkage ua ...``; 0 on success, 1 on a refused operation, 2 on bad usage."""
    args = _parser().parse_args(list(argv))
    session = _Session(args)
    try:
        return _dispatch(session)
    except LinkageError as error:
        print(f"linkage ua: {error.code.name}: {error.reason}: {error.message}", file=sys.stderr)
        return 1
    finally:
        session.engine.dispose()
