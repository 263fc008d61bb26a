"""``linkage world up``: the world as separate processes on fixed local ports.

Starts the network, the registry, each intermediate server platform (``--replicas N``: N
processes per platform on one database) and each organization's unified address server as its
own ``linkage serve`` process, waits until each reports SERVING on the standard health service,
registers the organizations in the network directory through the admin RPC, writes
``world.json`` (addresses, PKI directory, identities, pids) for clients, and runs until Ctrl-C
or SIGTERM, then stops every process gracefully.

``ProcessWorld`` is the same world as a handle for tests and tools: start it from a ``plan``,
kill (SIGKILL) or stop (SIGTERM) one process, restart it on its port, stop them all.
``linkage world register`` registers organizations in a network someone else runs (a
deployment's one-shot job).

It never opens a system's database: registration goes through ``NetworkService`` as ``admin``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from linkage.rpc import Security
from linkage.v1 import common_pb2, network_pb2
from simulator.world import DEFAULT_ORGANIZATIONS, OrganizationSpec, WorldConfig, init_pki

LOCALHOST = "127.0.0.1"
START_LIMIT = 60.0  # seconds for one process to report SERVING
STOP_LIMIT = 15.0  # seconds for one process to drain after SIGTERM before it is killed
REPLICA_PORTS = 20  # replicas 1.. of the platforms listen from base_port + 20 on
EXIT_POLL = 0.1  # seconds between looks at whether a starting process died


@dataclass(frozen=True, slots=True)
class Process:
    """One planned server process. ``component`` names its database (replicas share one)."""

    name: str
    port: int
    args: list[str]
    component: str = ""

    @property
    def address(self) -> str:
        return f"{LOCALHOST}:{self.port}"


Replicas = int | Mapping[str, int]  # processes per platform: one count, or per platform name


def replica_counts(platforms: Sequence[str], replicas: Replicas = 1) -> dict[str, int]:
    """How many processes each platform runs (1 for a platform a mapping does not name)."""
    if isinstance(replicas, int):
        return dict.fromkeys(platforms, replicas)
    return {name: replicas.get(name, 1) for name in platforms}


def port_span(
    organizations: Sequence[OrganizationSpec] = DEFAULT_ORGANIZATIONS, replicas: Replicas = 1
) -> int:
    """How many consecutive ports from ``base_port`` a plan uses."""
    counts = replica_counts(sorted({o.platform for o in organizations}), replicas)
    extra = sum(count - 1 for count in counts.values())
    return REPLICA_PORTS + extra if extra else 10 + len(organizations)


def platform_ports(
    base_port: int, platforms: Sequence[str], replicas: Replicas = 1
) -> dict[str, list[int]]:
    """Each platform's replica ports: replica 0 at base+2+i, the others from base+20 on."""
    ports: dict[str, list[int]] = {}
    extra = base_port + REPLICA_PORTS
    for i, (name, count) in enumerate(replica_counts(platforms, replicas).items()):
        ports[name] = [base_port + 2 + i, *range(extra, extra + count - 1)]
        extra += count - 1
    return ports


def replica_name(platform: str, index: int) -> str:
    """``platform-<name>`` for replica 0, ``platform-<name>-r<k>`` for the others."""
    return f"platform-{platform}" if index == 0 else f"platform-{platform}-r{index}"


def endpoints(base_port: int, platforms: Sequence[str], replicas: Replicas = 1) -> dict[str, str]:
    """Each platform's address list (``ip:port,ip:port``; one address without replicas)."""
    return {
        name: ",".join(f"{LOCALHOST}:{port}" for port in ports)
        for name, ports in platform_ports(base_port, platforms, replicas).items()
    }


def plan(
    root: Path,
    base_port: int,
    insecure: bool,
    database_url: str | None,
    *,
    organizations: Sequence[OrganizationSpec] = DEFAULT_ORGANIZATIONS,
    replicas: Replicas = 1,
    unified_address: bool = True,
    extra_args: Mapping[str, Sequence[str]] | None = None,
) -> list[Process]:
    """The processes of the world, in start order, with their ports.

    ``database_url`` is a template with ``{component}`` (``network``, ``registry``,
    ``platform-<name>``, ``ua-<code>``); None: an SQLite file per component under ``root``.
    ``extra_args`` appends arguments to the named processes (the last of a repeated option
    wins: ``--network`` through a proxy, say).
    """
    orgs = list(organizations)
    platforms = sorted({o.platform for o in orgs})
    common = ["--data-dir", str(root), "--pki-dir", str(root / "pki")]
    if insecure:
        common.append("--insecure")
    net = f"{LOCALHOST}:{base_port}"
    reg = f"{LOCALHOST}:{base_port + 1}"
    procs = [
        Process("network", base_port, ["network", *common], "network"),
        Process("registry", base_port + 1, ["registry", *common, "--network", net], "registry"),
    ]
    ports = platform_ports(base_port, platforms, replicas)
    for name in platforms:
        args = ["server", *common, "--platform", name, "--network", net]
        for org in orgs:
            if org.platform == name:
                args += ["--tenant", f"{org.code}={','.join(org.capacities)}"]
        for index, port in enumerate(ports[name]):
            replica = [*args, "--replica-index", str(index)] if len(ports[name]) > 1 else args
            procs.append(Process(replica_name(name, index), port, replica, f"platform-{name}"))
    if unified_address:
        servers = endpoints(base_port, platforms, replicas)
        for i, org in enumerate(orgs):
            args = ["unified-address", *common, "--org", org.code, "--server"]
            args += [servers[org.platform], "--registry", reg]
            procs.append(Process(f"ua-{org.code}", base_port + 10 + i, args, f"ua-{org.code}"))
    extra = extra_args or {}
    return [_finish(p, database_url, extra.get(p.name, ())) for p in procs]


def _finish(proc: Process, database_url: str | None, extra: Sequence[str]) -> Process:
    component = proc.component or proc.name
    args = [*proc.args, "--port", str(proc.port)]
    if database_url:
        args += ["--database-url", database_url.format(component=component)]
    return Process(proc.name, proc.port, [*args, *extra], component)


async def _wait_serving(security: Security, port: int, limit: float = 30.0) -> None:
    """Return once 127.0.0.1:``port`` reports SERVING; ``TimeoutError`` after ``limit``."""
    from linkage.health import wait_serving

    try:
        await wait_serving(security, f"{LOCALHOST}:{port}", limit=limit)
    except TimeoutError:
        raise TimeoutError(f"nothing SERVING on port {port} after {limit:.0f} s") from None


async def _register(
    root: Path,
    pki: Path | None,
    network_port: int,
    ports: dict[str, int],
    *,
    organizations: Sequence[OrganizationSpec] = DEFAULT_ORGANIZATIONS,
    platform_endpoints: Mapping[str, str] | None = None,
) -> None:
    """Register each organization (its platform's address, its tenant keys) as ``admin``.

    ``platform_endpoints`` maps a platform to the endpoint to register; by default the address
    of ``platform-<name>`` in ``ports``.
    """
    chosen = dict(platform_endpoints or {})
    for org in organizations:
        chosen.setdefault(org.platform, f"{LOCALHOST}:{ports[f'platform-{org.platform}']}")
    await register(
        Security(pki, "admin"), f"{LOCALHOST}:{network_port}", root, organizations, chosen
    )


async def register(
    admin: Security,
    network: str,
    root: Path,
    organizations: Sequence[OrganizationSpec],
    platform_endpoints: Mapping[str, str],
    platform_data: Mapping[str, Path] | None = None,
) -> list[str]:
    """Register ``organizations`` at the network ``network``; returns the codes newly registered
    (one already registered is left as it is). Tenant keys come from each platform's key ring
    under ``<data dir>/keys/platform-<name>/keys`` (the platform creates it on its first start),
    where the data dir is ``platform_data[name]``, else ``root``."""
    from linkage.errors import remote_error
    from linkage.keys import KeyRing
    from linkage.v1 import network_pb2_grpc

    data = platform_data or {}
    registered: list[str] = []
    async with admin.channel(network) as channel:
        stub = network_pb2_grpc.NetworkServiceStub(channel)
        for org in organizations:
            base = data.get(org.platform, root)
            ring = KeyRing.load(
                base / "keys" / f"platform-{org.platform}" / "keys", f"org-{org.code}"
            )
            keys = [
                common_pb2.PublicKey(key_id=k.key_id, key=k.verify_key) for k in ring.public_keys()
            ]
            request = network_pb2.RegisterOrganizationRequest(
                organization=_organization(org, platform_endpoints[org.platform], keys)
            )
            try:
                await stub.RegisterOrganization(request, timeout=30)
            except Exception as error:  # already registered on a restart is fine
                if remote_error(error).code != "ALREADY_EXISTS":  # type: ignore[arg-type]
                    raise
                continue
            registered.append(org.code)
    return registered


def _organization(
    org: OrganizationSpec, endpoint: str, keys: list[common_pb2.PublicKey]
) -> network_pb2.Organization:
    return network_pb2.Organization(
        code=org.code,
        display_name=org.display_name,
        capacities=list(org.capacities),
        endpoint=endpoint,
        signing_keys=keys,
        local_government_code=org.local_government_code,
    )


def _spawn(proc: Process, log_dir: Path) -> subprocess.Popen[bytes]:
    # The child keeps its own copy of the descriptor; the parent's is closed at once.
    with (log_dir / f"{proc.name}.log").open("ab") as log:
        return subprocess.Popen(  # noqa: S603 — our own entry point with our own arguments
            [sys.executable, "-m", "linkage.cli", "serve", *proc.args],
            stdout=log,
            stderr=log,
            # A server outlives no harness: it stops when this process is gone, even killed.
            env={**os.environ, "LINKAGE_LOG_FORMAT": "json", "LINKAGE_EXIT_WITH_PARENT": "1"},
        )


class ProcessExitedError(RuntimeError):
    """A server process exited while it was expected to start serving."""


@dataclass
class ProcessWorld:
    """Server processes started from a plan; each can be killed, stopped and restarted.

    ``start`` runs stages (the network; the registry and the platforms; the unified address
    servers), each in parallel once the one before is SERVING; ``register`` then puts the
    organizations in the directory. Use as an async context manager to stop everything.
    """

    root: Path
    procs: list[Process]
    pki_dir: Path | None
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    def process(self, name: str) -> Process:
        return next(p for p in self.procs if p.name == name)

    def address(self, name: str) -> str:
        return self.process(name).address

    def pid(self, name: str) -> int:
        return self.children[name].pid

    def admin(self) -> Security:
        return Security(self.pki_dir, "admin")

    async def __aenter__(self) -> ProcessWorld:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def start(self, names: Iterable[str] | None = None) -> None:
        """Start the named processes (default: all not running), stage by stage."""
        wanted = set(names) if names is not None else {p.name for p in self.procs}
        await asyncio.to_thread(self.log_dir.mkdir, parents=True, exist_ok=True)
        for stage in _stages([p for p in self.procs if p.name in wanted]):
            for proc in stage:
                self.children[proc.name] = _spawn(proc, self.log_dir)
            await asyncio.gather(*(self.wait_serving(proc.name) for proc in stage))

    async def wait_serving(self, name: str, limit: float = START_LIMIT) -> None:
        """Wait until ``name`` is SERVING; fail at once if its process exits instead."""
        child = self.children[name]
        waiting = asyncio.create_task(_wait_serving(self.admin(), self.process(name).port, limit))
        try:
            while not waiting.done():
                if child.poll() is not None:
                    raise ProcessExitedError(
                        f"{name} exited with {child.returncode} (see {self.log_dir / name}.log)"
                    )
                await asyncio.wait({waiting}, timeout=EXIT_POLL)
            waiting.result()
        finally:
            waiting.cancel()

    def platform_endpoints(self) -> dict[str, str]:
        """Each platform's address list: every replica, ``ip:port,ip:port,...``."""
        lists: dict[str, list[str]] = {}
        for proc in self.procs:
            if proc.component.startswith("platform-"):
                name = proc.component.removeprefix("platform-")
                lists.setdefault(name, []).append(proc.address)
        return {name: ",".join(addresses) for name, addresses in lists.items()}

    async def register(
        self,
        organizations: Sequence[OrganizationSpec] = DEFAULT_ORGANIZATIONS,
        platform_endpoints: Mapping[str, str] | None = None,
    ) -> None:
        """Register ``organizations``; the network reaches each platform at every replica
        (``platform_endpoints`` chooses otherwise)."""
        if platform_endpoints is None:
            platform_endpoints = self.platform_endpoints()
        ports = {p.name: p.port for p in self.procs}
        await _register(
            self.root,
            self.pki_dir,
            self.process("network").port,
            ports,
            organizations=organizations,
            platform_endpoints=platform_endpoints,
        )

    async def kill(self, name: str) -> None:
        """SIGKILL ``name`` (no draining, no clean-up: a crash) and reap it."""
        child = self.children[name]
        child.send_signal(signal.SIGKILL)
        # Shielded: a caller cancelled meanwhile must not leave the child unreaped.
        await asyncio.shield(asyncio.to_thread(child.wait))

    async def stop(self, name: str) -> int:
        """SIGTERM ``name`` (it drains in-flight calls); killed after ``STOP_LIMIT``."""
        return await asyncio.shield(asyncio.to_thread(_stop, self.children[name]))

    async def restart(self, name: str, extra_args: Sequence[str] = ()) -> None:
        """Start ``name`` again on its port (after a kill or a stop) and wait until it serves;
        ``extra_args`` are appended to its arguments from now on."""
        if self.children[name].poll() is None:
            raise RuntimeError(f"{name} is still running")
        if extra_args:
            index = self.procs.index(self.process(name))
            proc = self.procs[index]
            args = [*proc.args, *extra_args]
            self.procs[index] = Process(proc.name, proc.port, args, proc.component)
        await self.start([name])

    async def close(self) -> None:
        """Stop every process still running (SIGTERM, then SIGKILL after ``STOP_LIMIT``)."""
        children = [c for c in self.children.values() if c.poll() is None]
        for child in children:
            child.send_signal(signal.SIGTERM)
        await asyncio.gather(*(asyncio.to_thread(_stop, child) for child in children))


def _stop(child: subprocess.Popen[bytes]) -> int:
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
    try:
        return child.wait(timeout=STOP_LIMIT)
    except subprocess.TimeoutExpired:
        child.kill()
        return child.wait()


def _stages(procs: Sequence[Process]) -> list[list[Process]]:
    """Start order: the network; the registry and the platforms; everything else."""
    first = [p for p in procs if p.name == "network"]
    second = [p for p in procs if p.name == "registry" or p.name.startswith("platform-")]
    rest = [p for p in procs if p not in first and p not in second]
    return [stage for stage in (first, second, rest) if stage]


async def up(args: argparse.Namespace) -> int:
    root: Path = args.data_dir.resolve()
    await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
    config = WorldConfig(root=root, secure=not args.insecure)
    await asyncio.to_thread(init_pki, config)
    procs = plan(root, args.base_port, args.insecure, args.database_url, replicas=args.replicas)
    async with ProcessWorld(root, procs, config.pki_dir) as world:
        try:
            await world.start()
        except (TimeoutError, ProcessExitedError) as error:
            print(f"linkage world up: {error}", file=sys.stderr)
            return 1
        for proc in procs:
            print(f"  {proc.name:<22} {proc.address}", file=sys.stderr)
        await world.register()  # every replica of a platform: the network balances them
        ports = {p.name: p.port for p in procs}
        pids = {name: child.pid for name, child in world.children.items()}
        _write_manifest(root, config, ports, pids)
        print(f"world up; manifest {root / 'world.json'}; Ctrl-C stops it", file=sys.stderr)
        if not args.exit_after_start:
            await _wait_for_stop()
    return 0


async def _wait_for_stop() -> None:
    from linkage.rpc import wait_for_signal

    await wait_for_signal()


def _write_manifest(
    root: Path, config: WorldConfig, ports: dict[str, int], pids: dict[str, int]
) -> None:
    manifest = {
        "pki_dir": str(config.pki_dir) if config.pki_dir else None,
        "pids": pids,
        "addresses": {name: f"{LOCALHOST}:{port}" for name, port in ports.items()},
        "organizations": [
            {
                "code": o.code,
                "capacities": list(o.capacities),
                "platform": o.platform,
                "unified_address": f"{LOCALHOST}:{ports[f'ua-{o.code}']}",
                "business_systems": {s.system: f"bs.{o.code}.{s.system}" for s in o.systems},
            }
            for o in DEFAULT_ORGANIZATIONS
            if f"ua-{o.code}" in ports
        ],
    }
    (root / "world.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))


def _pairs(items: Sequence[str], option: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise SystemExit(f"linkage world register: {option} takes NAME=VALUE, not {item!r}")
        pairs[key] = value
    return pairs


async def register_command(args: argparse.Namespace) -> int:
    """``linkage world register``: the directory entries of a deployment, as ``admin``."""
    from linkage.health import wait_serving

    chosen = _pairs(args.endpoint, "--endpoint")
    data = {k: Path(v) for k, v in _pairs(args.platform_data, "--platform-data").items()}
    orgs = [o for o in DEFAULT_ORGANIZATIONS if o.platform in chosen]
    admin = Security(None if args.insecure else args.pki_dir, "admin")
    await wait_serving(admin, args.network, limit=args.wait)
    done = await register(admin, args.network, args.data_dir, orgs, chosen, data)
    print(f"registered {len(done)} of {len(orgs)} organizations: {' '.join(done)}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="linkage world", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("up", help="start every system as its own process")
    start.add_argument("--data-dir", type=Path, default=Path("data/world"))
    start.add_argument("--base-port", type=int, default=50051)
    start.add_argument("--insecure", action="store_true", help="plaintext (debugging only)")
    start.add_argument(
        "--database-url",
        help="URL template with {component}, e.g. postgresql+psycopg://127.0.0.1/{component}",
    )
    start.add_argument("--replicas", type=int, default=1, help="processes per platform")
    start.add_argument(
        "--exit-after-start", action="store_true", help="stop again once everything is up (checks)"
    )
    reg = sub.add_parser("register", help="register the organizations at a running network")
    reg.add_argument("--network", required=True, help="host:port of the network")
    reg.add_argument(
        "--endpoint",
        action="append",
        default=[],
        metavar="PLATFORM=HOST:PORT",
        help="where the network reaches a platform (repeatable); its tenants are registered",
    )
    reg.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("LINKAGE_DATA_DIR", "data")),
        help="holds keys/platform-<name>/keys (the platforms' key rings, read only)",
    )
    reg.add_argument(
        "--platform-data",
        action="append",
        default=[],
        metavar="PLATFORM=DIR",
        help="a platform's own data directory, where it is not under --data-dir (repeatable)",
    )
    reg.add_argument(
        "--pki-dir", type=Path, default=Path(os.environ.get("LINKAGE_PKI_DIR", "data/pki"))
    )
    reg.add_argument("--insecure", action="store_true", help="plaintext (debugging only)")
    reg.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the network")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "register":
            return asyncio.run(register_command(args))
        return asyncio.run(up(args))
    except KeyboardInterrupt:
        return 130
    except TimeoutError as error:
        print(f"linkage world {args.command}: {error} (see {args.data_dir}/logs)", file=sys.stderr)
        return 1
