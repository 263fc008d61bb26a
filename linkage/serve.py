"""``linkage serve SYSTEM``: run one system as its own gRPC server process.

Every option has an environment variable (LINKAGE_*), so the same command runs on a laptop, in
``linkage world up`` and in a container. Mutual TLS is the default; ``--insecure`` exists only
for local debugging and says so loudly. SIGTERM drains in-flight calls, then exits.

Replicas: the intermediate server keeps nothing another replica needs only in memory, so any
number of ``linkage serve server`` processes may share one database and one data directory
(``--replica-index`` only labels the logs). ``--replicas N`` starts them on one machine: this
process serves on ``--port`` and starts N-1 more of the same command on the next ports; clients
reach them all with the address list ``host:port,host:port+1,...`` (round robin, see
``linkage.rpc.channel_target``). Migrations run under a lock (PostgreSQL advisory lock, a file
lock beside an SQLite file), so replicas may start together; ``--migrate-only`` runs them and
exits (a Kubernetes init container or a Compose one-shot service).

``--health-port`` opens a plaintext port that answers only the gRPC health check, by asking the
real port (``linkage.health``): for probes that cannot present a client certificate. The status
follows the database (probed every ``--database-probe-interval`` seconds: NOT_SERVING while it
does not answer); the service ``liveness`` stays SERVING until shutdown, for liveness probes.
Every app with a ledger also purges the access records past their seven years, every
``--records-retention-interval`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from linkage.cli import env

SYSTEMS = ("network", "registry", "server", "unified-address")
REPLICATED = ("server",)  # systems whose state is all in the database
MIGRATION_LOCK = 0x6C696E6B  # PostgreSQL advisory lock class for migrations ("link")
REPLICA_START_LIMIT = 60.0  # seconds for the other replicas to report SERVING
REPLICA_STOP_LIMIT = 15.0  # seconds for a replica to drain after SIGTERM before it is killed
PARENT_POLL = 1.0  # seconds between looks at whether the parent process is still there
_WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")  # noqa: S104 — compared, never bound here


def _optional_int(text: str) -> int | None:
    return int(text) if text.strip() else None


def _optional_float(text: str) -> float | None:
    return float(text) if text.strip() else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="linkage serve", description=__doc__)
    parser.add_argument("system", choices=SYSTEMS, help="which system to run")
    parser.add_argument("--host", default=env("HOST", "127.0.0.1"), help="bind address")
    parser.add_argument("--port", type=int, default=int(env("PORT", "0")), help="0: any free")
    parser.add_argument("--data-dir", type=Path, default=Path(env("DATA_DIR", "data")))
    parser.add_argument(
        "--database-url",
        default=env("DATABASE_URL"),
        help="SQLAlchemy URL; default an SQLite file under the data dir",
    )
    parser.add_argument("--pki-dir", type=Path, default=Path(env("PKI_DIR", "data/pki")))
    parser.add_argument("--insecure", action="store_true", help="plaintext, debugging only")
    parser.add_argument("--network", default=env("NETWORK_ADDRESS"), help="network host:port")
    parser.add_argument("--registry", default=env("REGISTRY_ADDRESS"), help="registry host:port")
    parser.add_argument("--server", default=env("SERVER_ADDRESS"), help="platform host:port")
    parser.add_argument("--platform", default=env("PLATFORM", "municipal"), help="platform name")
    parser.add_argument(
        "--tenant",
        action="append",
        default=[t for t in env("TENANTS").split() if t],
        metavar="CODE=CAP[,CAP]",
        help="a tenant organization of this platform and its capacities (repeatable)",
    )
    parser.add_argument(
        "--org", default=env("ORG"), help="organization of a unified address server"
    )
    parser.add_argument("--port-file", type=Path, help="write the bound port here once serving")
    parser.add_argument(
        "--replicas",
        type=int,
        default=int(env("REPLICAS", "1")),
        help="server only: run N processes on --port .. --port+N-1 on one database",
    )
    parser.add_argument(
        "--replica-index",
        type=int,
        default=int(env("REPLICA_INDEX", "0")),
        help="which replica this process is (labels its logs)",
    )
    parser.add_argument(
        "--health-port",
        type=_optional_int,
        default=_optional_int(env("HEALTH_PORT")),
        help="also answer plaintext gRPC health checks on this port (probes)",
    )
    parser.add_argument(
        "--migrate-only", action="store_true", help="bring the database schema to head and exit"
    )
    parser.add_argument(
        "--network-timeout",
        type=float,
        default=float(env("NETWORK_TIMEOUT", "30")),
        help="server: deadline of each call to the network, seconds",
    )
    parser.add_argument(
        "--route-timeout",
        type=float,
        default=float(env("ROUTE_TIMEOUT", "10")),
        help="network: deadline of each call to a platform, seconds",
    )
    parser.add_argument(
        "--redelivery-interval",
        type=float,
        default=float(env("REDELIVERY_INTERVAL", "30")),
        help="server: seconds between retries of late answers not yet delivered",
    )
    parser.add_argument(
        "--resend-after",
        type=_optional_float,
        default=_optional_float(env("RESEND_AFTER")),
        help="server: seconds after which a query still in flight is sent again when asked "
        "for (its sender died); more than --network-timeout; default that plus 5",
    )
    parser.add_argument(
        "--provider-wait",
        type=float,
        default=float(env("PROVIDER_WAIT", "2")),
        help="network: seconds a call waits for a platform that is not connected (restarting)",
    )
    parser.add_argument(
        "--database-connect-timeout",
        type=int,
        default=int(env("DATABASE_CONNECT_TIMEOUT", "5")),
        help="seconds to wait for a PostgreSQL connection (a connect_timeout in the URL wins)",
    )
    parser.add_argument(
        "--database-probe-interval",
        type=float,
        default=float(env("DATABASE_PROBE_INTERVAL", "5")),
        help="seconds between database probes: health is NOT_SERVING while it does not answer",
    )
    parser.add_argument(
        "--records-retention-interval",
        type=float,
        default=float(env("RECORDS_RETENTION_INTERVAL", "3600")),
        help="seconds between purges of access records past their seven years",
    )
    return parser


def _database_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The ``Config`` settings every app with a database and a ledger takes from the CLI."""
    from datetime import timedelta

    return {
        "database_connect_timeout": args.database_connect_timeout,
        "database_probe_interval": args.database_probe_interval,
        "records_retention_interval": timedelta(seconds=args.records_retention_interval),
    }


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


def _component(args: argparse.Namespace) -> str:
    """The name of the system's database (replicas of a platform share one)."""
    return {
        "network": "network",
        "registry": "registry",
        "server": f"platform-{args.platform}",
        "unified-address": f"ua-{args.org}",
    }[args.system]


def _identity(args: argparse.Namespace) -> str:
    """The certificate identity the system serves as (and its health probe calls as)."""
    return {
        "network": "network",
        "registry": "registry",
        "server": f"platform.{args.platform}",
        "unified-address": f"ua.{args.org}",
    }[args.system]


def _require(args: argparse.Namespace, *names: str) -> None:
    missing = [f"--{n}" for n in names if not getattr(args, n)]
    if missing:
        raise SystemExit(f"linkage serve {args.system}: missing {', '.join(missing)}")


async def start_system(args: argparse.Namespace) -> Any:
    """Migrate (under the lock), then start the app of ``args.system``, as ``linkage serve``
    does, without serving forever."""
    await asyncio.to_thread(migrate, _url(args, _component(args)))
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
            database_url=_url(args, _component(args)),
            security=_security(args, _identity(args)),
            data_dir=args.data_dir / "keys" / "network",
            route_timeout=args.route_timeout,
            provider_wait=args.provider_wait,
            host=args.host,
            port=args.port,
            migrate=False,  # done by ``migrate`` (under the lock) before the app starts
            **_database_settings(args),
        )
    )


async def _start_registry(args: argparse.Namespace) -> Any:
    from simulator.registry import app

    _require(args, "network")
    return await app.start(
        app.Config(
            database_url=_url(args, _component(args)),
            security=_security(args, _identity(args)),
            data_dir=args.data_dir / "keys" / "registry",
            network_address=args.network,
            host=args.host,
            port=args.port,
            migrate=False,  # done by ``migrate`` (under the lock) before the app starts
            **_database_settings(args),
        )
    )


async def _start_server(args: argparse.Namespace) -> Any:
    from datetime import timedelta

    from server import app

    _require(args, "network", "tenant")
    return await app.start(
        app.Config(
            platform=args.platform,
            database_url=_url(args, _component(args)),
            security=_security(args, _identity(args)),
            data_dir=args.data_dir / "keys" / f"platform-{args.platform}",
            network_address=args.network,
            tenants=_tenants(args.tenant),
            host=args.host,
            port=args.port,
            migrate=False,  # done by ``migrate`` (under the lock) before the app starts
            network_timeout=args.network_timeout,
            redelivery_interval=timedelta(seconds=args.redelivery_interval),
            resend_after=(
                None if args.resend_after is None else timedelta(seconds=args.resend_after)
            ),
            **_database_settings(args),
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
            database_url=_url(args, _component(args)),
            security=_security(args, _identity(args)),
            data_dir=args.data_dir / "keys" / f"ua-{args.org}",
            server_address=args.server,
            registry_address=args.registry,
            business_systems=systems,
            host=args.host,
            port=args.port,
            migrate=False,  # done by ``migrate`` (under the lock) before the app starts
            server_identity=f"platform.{spec.platform if spec else args.platform}",
            **_database_settings(args),
        )
    )


# --- migrations under a lock ------------------------------------------------------------------


@contextlib.contextmanager
def _migration_lock(url: str) -> Iterator[None]:
    """Hold the database's migration lock: replicas starting together migrate one at a time
    (Alembic itself would race: both see the old version, both run the DDL, one fails)."""
    from sqlalchemy import create_engine, make_url, text

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        from linkage.keys import exclusive_lock

        with exclusive_lock(Path(f"{parsed.database}.migrate-lock")):
            yield
        return
    if parsed.get_backend_name() != "postgresql":
        yield
        return
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            key = text("SELECT pg_advisory_lock(:cls, hashtext(current_schema()))")
            connection.execute(key, {"cls": MIGRATION_LOCK})
            connection.commit()
            try:
                yield
            finally:
                unlock = text("SELECT pg_advisory_unlock(:cls, hashtext(current_schema()))")
                connection.execute(unlock, {"cls": MIGRATION_LOCK})
                connection.commit()
    finally:
        engine.dispose()


def migrate(url: str) -> None:
    """Bring the database at ``url`` to head, one process at a time."""
    from linkage import db

    with _migration_lock(url):
        db.migrate(url)


# --- replicas on one machine -----------------------------------------------------------------


def _strip(argv: list[str], *options: str) -> list[str]:
    """``argv`` without the given options (``--opt value`` and ``--opt=value`` forms)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in options:
            skip = True
            continue
        if any(arg.startswith(f"{option}=") for option in options):
            continue
        out.append(arg)
    return out


def replica_argv(argv: list[str], args: argparse.Namespace, index: int) -> list[str]:
    """The ``linkage serve`` arguments of replica ``index`` (> 0) of this command."""
    out = _strip(argv, "--replicas", "--port", "--port-file", "--replica-index", "--health-port")
    out += ["--replicas", "1", "--replica-index", str(index), "--port", str(args.port + index)]
    if args.health_port:
        out += ["--health-port", str(args.health_port + index)]
    return out


def _check_replicas(args: argparse.Namespace) -> None:
    if args.replicas < 1:
        raise SystemExit("linkage serve: --replicas must be at least 1")
    if args.replicas > 1 and args.system not in REPLICATED:
        raise SystemExit(f"linkage serve {args.system}: only {REPLICATED} run as replicas")
    if args.replicas > 1 and args.port == 0:
        raise SystemExit("linkage serve: --replicas needs a fixed --port (replica k: port+k)")


def _local(host: str) -> str:
    """Where this machine reaches a server bound to ``host``."""
    return "127.0.0.1" if host in _WILDCARD_HOSTS else host


@contextlib.asynccontextmanager
async def _other_replicas(argv: list[str], args: argparse.Namespace) -> AsyncIterator[list[int]]:
    """Start replicas 1..N-1 and wait until they serve; SIGTERM them (then kill) on exit.
    Yields their ports. They log to this process's stdout and stderr."""
    from linkage import health, logs

    log = logs.get_logger("linkage.serve")
    children: list[asyncio.subprocess.Process] = []
    ports = [args.port + k for k in range(1, args.replicas)]
    try:
        for index in range(1, args.replicas):
            children.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "linkage.cli",
                    "serve",
                    *replica_argv(argv, args, index),
                    env={**os.environ, "LINKAGE_EXIT_WITH_PARENT": "1"},
                )
            )
        security = _security(args, _identity(args))
        await asyncio.gather(
            *(
                health.wait_serving(
                    security, f"{_local(args.host)}:{port}", limit=REPLICA_START_LIMIT
                )
                for port in ports
            )
        )
        log.info("replicas_serving", ports=ports)
        yield ports
    finally:
        await _stop_children(children)


async def _stop_children(children: list[asyncio.subprocess.Process]) -> None:
    for child in children:
        if child.returncode is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            await asyncio.wait_for(child.wait(), REPLICA_STOP_LIMIT)
        except TimeoutError:
            child.kill()
            await child.wait()


# --- serving ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _probe(args: argparse.Namespace, port: int) -> AsyncIterator[None]:
    """The plaintext health port, when asked for."""
    if args.health_port is None:
        yield
        return
    from linkage import health

    probe = await health.serve_probe(
        _security(args, _identity(args)),
        f"{_local(args.host)}:{port}",
        host=args.host,
        port=args.health_port,
    )
    try:
        yield
    finally:
        await probe.stop()


async def _until_stopped() -> None:
    """Until SIGTERM or SIGINT; with ``LINKAGE_EXIT_WITH_PARENT=1`` (set by ``linkage world``
    for its children) also until the parent process is gone, so that a harness killed outright
    leaves no server behind."""
    from linkage.rpc import wait_for_signal

    signalled = asyncio.ensure_future(wait_for_signal())
    if env("EXIT_WITH_PARENT") != "1":
        await signalled
        return
    parent = os.getppid()
    try:
        while not signalled.done() and os.getppid() == parent:
            await asyncio.wait({signalled}, timeout=PARENT_POLL)
    finally:
        signalled.cancel()


async def _serve(args: argparse.Namespace, argv: list[str]) -> None:
    import structlog

    from linkage import logs

    logs.configure(json=True)
    structlog.contextvars.bind_contextvars(replica=args.replica_index)
    log = logs.get_logger("linkage.serve")
    if args.insecure:
        log.warning("insecure_mode", detail="plaintext gRPC: for local debugging only")
    app = await start_system(args)
    try:
        async with _probe(args, app.port), contextlib.AsyncExitStack() as stack:
            ports = [app.port]
            if args.replicas > 1:
                ports += await stack.enter_async_context(_other_replicas(argv, args))
            if args.port_file:
                args.port_file.write_text(",".join(str(port) for port in ports))
            log.info("serving", system=args.system, address=app.address, replicas=len(ports))
            await _until_stopped()
    finally:
        await app.close()  # graceful: health NOT_SERVING, in-flight calls finish


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    _check_replicas(args)
    try:
        if args.migrate_only:
            migrate(_url(args, _component(args)))
            return 0
        asyncio.run(_serve(args, argv))
    except KeyboardInterrupt:
        return 130
    except FileNotFoundError as error:
        print(f"linkage serve {args.system}: {error}", file=sys.stderr)
        return 2
    return 0
