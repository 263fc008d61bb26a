"""The ``linkage`` command: one entry point for every system of the simulation.

Each subcommand is owned by the package of the system it drives and is imported only when it
runs, so ``linkage --help`` stays fast (no grpc, SQLAlchemy or crypto import at start-up).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

# name → (module with `main(argv) -> int`, one-line help). Order is the order in --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("simulator.demo", "run the whole world on embedded SQLite and show the main job"),
    "world": ("simulator.world_cli", "start network, servers and organizations as processes"),
    "serve": ("linkage.serve", "run one system as a gRPC server (network, registry, server, ...)"),
    "permissions": ("permission_list.cli", "check, list, show, validate and diff the list"),
    "conformance": ("permission_list.conformance", "judge a network against the permission list"),
    "records": ("linkage.records.cli", "verify, export, disclose and purge access records"),
    "duplicates": ("server.cli_duplicates", "import, export and reconcile duplicates (副本)"),
    "ua": ("unified_address.cli", "staff operations of the unified address server (名寄せ)"),
    "staff": ("server.cli_staff", "create a tenant's first staff administrator (職員)"),
    "keys": ("server.cli_keys", "rotate a tenant's signing key (publish, then use) and list keys"),
    "pki": ("linkage.pki", "create the local CA and certificates for mutual TLS"),
    "health": ("linkage.health", "check a server's gRPC health service (for probes)"),
    "bench": ("bench.run", "measure the gateway against the machine's own floor"),
    "soak": ("bench.soak", "drive the world at a steady rate and report errors and memory"),
}

USAGE = "usage: linkage [-h] [--version] COMMAND [ARGS ...]"
EXIT_USAGE = 2  # every subcommand's exit code for bad usage


def env(name: str, default: str = "") -> str:
    """``LINKAGE_<name>`` from the environment: a subcommand's option default."""
    return os.environ.get(f"LINKAGE_{name}", default)


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace | int:
    """``parser``'s arguments, or the exit code argparse chose instead of returning them (0
    after ``--help``, 2 after a usage error it has printed): a subcommand returns it."""
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE


def _help() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        USAGE,
        "",
        "A simulation of Japan's My Number information linkage (情報連携): the intermediate",
        "server (中間サーバー), the Information Provision Network, the unified address server.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "Run `linkage COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a subcommand's ``main``; exit codes are the subcommand's."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_help())
        return 0 if args else 2
    if args[0] == "--version":
        from linkage import __version__

        print(f"linkage {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"{USAGE}\nlinkage: error: unknown command {name!r}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    entry: Callable[[list[str]], int] = module.main
    return entry(rest)


if __name__ == "__main__":
    sys.exit(main())
