"""``linkage staff``: the platform operator's staff-account commands (bootstrapping).

Subcommand::

    linkage staff create-admin --database-url URL --tenant CODE --username NAME
                               [--data-dir DIR] [--platform NAME]

creates a tenant's first administrator account (every other account is then made by an
administrator through ``StaffService.CreateStaffAccount``). The initial password is read from
standard input (asked twice without echo on a terminal; otherwise the first line), never from
the command line where ``ps`` and shell history would keep it; it must be changed at first
sign-in. The database is migrated first; the creation is an access record in the tenant's
ledger (actor SYSTEM ``operator``), its checkpoints signed with the platform's key from
``--data-dir`` as the server is configured. Exit codes: 0 created, 1 the user name is taken,
2 bad usage or input.

Must never: take a password from argv or the environment, echo it, or print it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from linkage.cli import parse_args

EXIT_OK = 0
EXIT_EXISTS = 1
EXIT_USAGE = 2
OPERATION = "linkage staff create-admin"


class _UsageError(Exception):
    """Bad input; printed without a traceback, exit 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="linkage staff",
        description="Staff accounts of an intermediate server platform (operator commands).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    admin = sub.add_parser(
        "create-admin",
        help="create a tenant's first administrator (password from standard input)",
    )
    admin.add_argument("--database-url", required=True, help="the platform's database")
    admin.add_argument("--tenant", required=True, help="organization code of the tenant")
    admin.add_argument("--username", required=True, help="the administrator's own user name")
    admin.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data/server"),
        help="the platform's data directory (its record-checkpoint key)",
    )
    admin.add_argument("--platform", default="local", help="platform name (checkpoint key)")
    return parser


def main(argv: list[str]) -> int:
    """Run ``linkage staff`` with ``argv``; returns the exit code."""
    args = parse_args(_parser(), argv)
    if isinstance(args, int):  # --help, or a usage error argparse already printed
        return args
    from linkage.errors import AlreadyExists, LinkageError

    try:
        password = read_password(sys.stdin, sys.stderr)
        name = _create_admin(args, password)
    except _UsageError as exc:
        print(f"linkage staff: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AlreadyExists as exc:
        print(f"linkage staff: {exc.reason}: {exc.message}", file=sys.stderr)
        return EXIT_EXISTS
    except LinkageError as exc:
        details = "; ".join(f"{v.field}: {v.description}" for v in exc.violations)
        print(f"linkage staff: {exc.reason}: {details or exc.message}", file=sys.stderr)
        return EXIT_USAGE
    print(f"created {name} (ADMINISTRATOR); the password must be changed at first sign-in")
    return EXIT_OK


def read_password(stdin: TextIO, stderr: TextIO) -> str:
    """The initial password: asked twice without echo on a terminal, else the first line."""
    from linkage.staffauth import PasswordInputError
    from linkage.staffauth import read_password as read

    try:
        return read(stdin, stderr)
    except PasswordInputError as error:
        raise _UsageError(str(error)) from None


def _create_admin(args: argparse.Namespace, password: str) -> str:
    from linkage import db
    from linkage.keys import KeyRing, private_dir
    from linkage.records.ledger import Ledger
    from server.ports import system_clock
    from server.records import Recorder
    from server.staff import Role, Staff
    from server.tenancy import TenantConfig

    try:
        tenant = TenantConfig(args.tenant).code
    except ValueError as error:
        raise _UsageError(str(error)) from None
    try:
        db.migrate(args.database_url)
    except Exception as error:  # a bad URL or an unreachable server: say so, no traceback
        raise _UsageError(f"cannot open the database: {type(error).__name__}") from None
    ring = KeyRing.load_or_create(private_dir(args.data_dir / "keys"), f"platform-{args.platform}")
    ledger = Ledger(ring.current.signing_key, ring.current.key_id, clock=system_clock)
    engine = db.make_engine(args.database_url)
    try:
        staff = Staff(db.session_factory(engine), Recorder(ledger), system_clock)
        return staff.add_account(
            tenant,
            args.username,
            password,
            [Role.ADMINISTRATOR],
            must_change=True,
            created_by="operator",
            operation=OPERATION,
        )
    finally:
        engine.dispose()
