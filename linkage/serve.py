"""``linkage serve SYSTEM``: run one system as its own gRPC server process.

Every option has an environment variable (LINKAGE_*), so the same command runs on a laptop, in
``linkage world up`` and in a container. Mutual TLS is the default; ``--insecure`` exists only
for local debugging and says so loudly. SIGTERM drains in-flight calls, then exits.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

SYSTEMS = ("network", "registry", "server", "unified-address")


def _env(name: str, default: str = "") -> str:
    return os.environ.get(f"LINKAGE_{name}", default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="linkage serve", description=__doc__)
    parser.add_argument("system", choices=SYSTEMS, help="which system to run")
    parser.add_argument("--host", default=_env("HOST", "127.0.0.1"), help="bind address")
    parser.add_argument("--port", type=int, default=int(_env("PORT", "0")), help="0: any free")
    parser.add_argument("--data-dir", type=Path, default=Path(_env("DATA_DIR", "data")))
    parser.add_argument(
        "--database-url",
        default=_env("DATABASE_URL"),
        help="SQLAlchemy URL; default an SQLite file under the data dir",
    )
    parser.add_argument("--pki-dir", type=Path, default=Path(_env("PKI_DIR", "data/pki")))
    parser.add_argument("--insecure", action="store_true", help="plaintext, debugging only")
    parser.add_argument("--network", default=_env("NETWORK_ADDRESS"), help="network host:port")
    parser.add_argument("--registry", default=_env("REGISTRY_ADDRESS"), help="registry host:port")
    parser.add_argument("--server", default=_env("SERVER_ADDRESS"), help="platform host:port")
    parser.add_argument("--platform", default=_env("PLATFORM", "municipal"), help="platform name")
    parser.add_argument(
        "--tenant",
        action="append",
        default=[t for t in _env("TENANTS").split() if t],
        metavar="CODE=CAP[,CAP]",
        help="a tenant organization of this platform and its capacities (repeatable)",
    )
    parser.add_argument(
        "--org", default=_env("ORG"), help="organization of a unified address server"
    )
    parser.add_argument("--port-file", type=Path, help="write the bound port here once serving")
    return parser


def _tenants(values: list[str]) -> list[Any]:
    from server.tenancy import TenantConfig

    tenants = []
    for value in values:
        code, _, caps = value.partition("=")
        tenants.append(TenantConfig(code=code, capacities=tuple(c for c in caps.split(",") if c)))
    return tenants


def _security(args: argparse.Namespace, identity: str) -> Any:
    from linkage.rpc import Security

    return Security(None if args.insecure else args.pki_dir, identity)


def _url(args: argparse.Namespace, component: str) -> str:
    from linkage.db import sqlite_url

    if args.database_url:
        return str(args.database_url)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    return sqlite_url(args.data_dir / f"{component}.sqlite")


def _require(args: argparse.Namespace, *names: str) -> None:
    missing = [f"--{n}" for n in names if not getattr(args, n)]
    if missing:
        raise SystemExit(f"linkage serve {args.system}: missing {', '.join(missing)}")


async def _start(args: argparse.Namespace) -> Any:
    starters: dict[str, Callable[[argparse.Namespace], Awaitable[Any]]] = {
        "network": _start_network,
        "registry": _start_registry,
        "server": _start_server,
        "unified-address": _start_unified_address,
    }
    return await starters[args.system](args)


async def _start_network(args: argparse.Namespace) -> Any:
    from simulator.network import app

    return await app.start(
        app.Config(
            database_url=_url(args, "network"),
            security=_security(args, "network"),
            data_dir=args.data_dir / "keys" / "network",
            host=args.host,
            port=args.port,
        )
    )


async def _start_registry(args: argparse.Namespace) -> Any:
    from simulator.registry import app

    _require(args, "network")
    return await app.start(
        app.Config(
            database_url=_url(args, "registry"),
            security=_security(args, "registry"),
            data_dir=args.data_dir / "keys" / "registry",
            network_address=args.network,
            host=args.host,
            port=args.port,
        )
    )


async def _start_server(args: argparse.Namespace) -> Any:
    from server import app

    _require(args, "network", "tenant")
    return await app.start(
        app.Config(
            platform=args.platform,
            database_url=_url(args, f"platform-{args.platform}"),
            security=_security(args, f"platform.{args.platform}"),
            data_dir=args.data_dir / "keys" / f"platform-{args.platform}",
            network_address=args.network,
            tenants=_tenants(args.tenant),
            host=args.host,
            port=args.port,
        )
    )


async def _start_unified_address(args: argparse.Namespace) -> Any:
    from simulator.world import DEFAULT_ORGANIZATIONS
    from unified_address import app

    _require(args, "org", "server", "registry")
    spec = next((o for o in DEFAULT_ORGANIZATIONS if o.code == args.org), None)
    systems = [s.scope() for s in spec.systems] if spec else []
    return await app.start(
        app.Config(
            organization=args.org,
            database_url=_url(args, f"ua-{args.org}"),
            security=_security(args, f"ua.{args.org}"),
            data_dir=args.data_dir / "keys" / f"ua-{args.org}",
            server_address=args.server,
            registry_address=args.registry,
            business_systems=systems,
            host=args.host,
            port=args.port,
        )
    )


async def _serve(args: argparse.Namespace) -> None:
    from linkage import logs
    from linkage.rpc import wait_for_signal

    logs.configure(json=True)
    log = logs.get_logger("linkage.serve")
    if args.insecure:
        log.warning("insecure_mode", detail="plaintext gRPC: for local debugging only")
    app = await _start(args)
    if args.port_file:
        args.port_file.write_text(str(app.port))
    log.info("serving", system=args.system, address=app.address)
    try:
        await wait_for_signal()
    finally:
        await app.close()  # graceful: health NOT_SERVING, in-flight calls finish


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        return 130
    except FileNotFoundError as error:
        print(f"linkage serve {args.system}: {error}", file=sys.stderr)
        return 2
    return 0
