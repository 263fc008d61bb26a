"""``linkage world up``: the world as separate processes on fixed local ports.

Starts the network, the registry, each intermediate server platform and each organization's
unified address server as its own ``linkage serve`` process, waits until each reports SERVING
on the standard health service, registers the organizations in the network directory through
the admin RPC, writes ``world.json`` (addresses, PKI directory, identities) for clients, and
runs until Ctrl-C or SIGTERM, then stops every process gracefully.

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
from dataclasses import dataclass
from pathlib import Path

from linkage.rpc import Security
from linkage.v1 import common_pb2, network_pb2
from simulator.world import DEFAULT_ORGANIZATIONS, OrganizationSpec, WorldConfig, init_pki


@dataclass(frozen=True, slots=True)
class Process:
    """One planned server process."""

    name: str
    port: int
    args: list[str]


def plan(root: Path, base_port: int, insecure: bool, database_url: str | None) -> list[Process]:
    """The processes of the world, in start order, with their ports."""
    orgs = DEFAULT_ORGANIZATIONS
    platforms = sorted({o.platform for o in orgs})
    common = ["--data-dir", str(root), "--pki-dir", str(root / "pki")]
    if insecure:
        common.append("--insecure")
    net = f"127.0.0.1:{base_port}"
    reg = f"127.0.0.1:{base_port + 1}"
    procs = [
        Process("network", base_port, ["network", *common]),
        Process("registry", base_port + 1, ["registry", *common, "--network", net]),
    ]
    platform_port = {p: base_port + 2 + i for i, p in enumerate(platforms)}
    for name, port in platform_port.items():
        tenants = [f"{o.code}={','.join(o.capacities)}" for o in orgs if o.platform == name]
        args = ["server", *common, "--platform", name, "--network", net]
        for tenant in tenants:
            args += ["--tenant", tenant]
        procs.append(Process(f"platform-{name}", port, args))
    for i, org in enumerate(orgs):
        server = f"127.0.0.1:{platform_port[org.platform]}"
        args = ["unified-address", *common, "--org", org.code, "--server", server]
        procs.append(Process(f"ua-{org.code}", base_port + 10 + i, [*args, "--registry", reg]))
    return [
        Process(
            p.name,
            p.port,
            [
                *p.args,
                "--port",
                str(p.port),
                *(
                    ["--database-url", database_url.format(component=p.name)]
                    if database_url
                    else []
                ),
            ],
        )
        for p in procs
    ]


async def _wait_serving(security: Security, port: int, limit: float = 30.0) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    async with security.channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except Exception:  # noqa: S110 — not up yet: retry until the deadline
                pass
            if loop.time() > deadline:
                raise TimeoutError(f"nothing SERVING on port {port} after {limit:.0f} s")
            await asyncio.sleep(0.2)


async def _register(root: Path, pki: Path | None, network_port: int, ports: dict[str, int]) -> None:
    from linkage.keys import KeyRing
    from linkage.v1 import network_pb2_grpc

    async with Security(pki, "admin").channel(f"127.0.0.1:{network_port}") as channel:
        stub = network_pb2_grpc.NetworkServiceStub(channel)
        for org in DEFAULT_ORGANIZATIONS:
            # The platform created the tenant's key ring on start (server/tenancy.py layout).
            ring = KeyRing.load(
                root / "keys" / f"platform-{org.platform}" / "keys", f"org-{org.code}"
            )
            keys = [
                common_pb2.PublicKey(key_id=k.key_id, key=k.verify_key) for k in ring.public_keys()
            ]
            try:
                await stub.RegisterOrganization(
                    network_pb2.RegisterOrganizationRequest(
                        organization=_organization(org, ports, keys)
                    )
                )
            except Exception as error:  # already registered on a restart is fine
                from linkage.errors import remote_error

                if remote_error(error).code != "ALREADY_EXISTS":  # type: ignore[arg-type]
                    raise


def _organization(
    org: OrganizationSpec, ports: dict[str, int], keys: list[common_pb2.PublicKey]
) -> network_pb2.Organization:
    return network_pb2.Organization(
        code=org.code,
        display_name=org.display_name,
        capacities=list(org.capacities),
        endpoint=f"127.0.0.1:{ports[f'platform-{org.platform}']}",
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
            env={**os.environ, "LINKAGE_LOG_FORMAT": "json"},
        )


async def up(args: argparse.Namespace) -> int:
    root: Path = args.data_dir.resolve()
    await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
    config = WorldConfig(root=root, secure=not args.insecure)
    await asyncio.to_thread(init_pki, config)
    procs = plan(root, args.base_port, args.insecure, args.database_url)
    await asyncio.to_thread((root / "logs").mkdir, exist_ok=True)
    running: list[subprocess.Popen[bytes]] = []
    try:
        for proc in procs:
            running.append(_spawn(proc, root / "logs"))
            await _wait_serving(Security(config.pki_dir, "admin"), proc.port)
            print(f"  {proc.name:<22} 127.0.0.1:{proc.port}", file=sys.stderr)
        ports = {p.name: p.port for p in procs}
        await _register(root, config.pki_dir, args.base_port, ports)
        pids = {p.name: child.pid for p, child in zip(procs, running, strict=True)}
        _write_manifest(root, config, ports, pids)
        print(f"world up; manifest {root / 'world.json'}; Ctrl-C stops it", file=sys.stderr)
        if args.exit_after_start:
            return 0
        await _wait_for_stop()
        return 0
    finally:
        for child in running:
            child.send_signal(signal.SIGTERM)
        for child in running:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()


async def _wait_for_stop() -> None:
    from linkage.rpc import wait_for_signal

    await wait_for_signal()


def _write_manifest(
    root: Path, config: WorldConfig, ports: dict[str, int], pids: dict[str, int]
) -> None:
    manifest = {
        "pki_dir": str(config.pki_dir) if config.pki_dir else None,
        "pids": pids,
        "addresses": {name: f"127.0.0.1:{port}" for name, port in ports.items()},
        "organizations": [
            {
                "code": o.code,
                "capacities": list(o.capacities),
                "platform": o.platform,
                "unified_address": f"127.0.0.1:{ports[f'ua-{o.code}']}",
                "business_systems": {s.system: f"bs.{o.code}.{s.system}" for s in o.systems},
            }
            for o in DEFAULT_ORGANIZATIONS
        ],
    }
    (root / "world.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))


def main(argv: list[str]) -> int:
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
    start.add_argument(
        "--exit-after-start", action="store_true", help="stop again once everything is up (checks)"
    )
    args = parser.parse_args(argv)
    try:
        return asyncio.run(up(args))
    except KeyboardInterrupt:
        return 130
    except TimeoutError as error:
        print(f"linkage world up: {error} (see {args.data_dir}/logs)", file=sys.stderr)
        return 1
