"""The client examples work against the world as separate processes, as a user would run them.

The world runs as ``linkage serve`` processes (``bench.soak.process_world``, the plan of
``linkage world up``) for the whole module; one person is registered at JPS and Sakai and JPS
holds a pension for them. Then ``examples/query_person.py`` and, when Node and its packages are
at hand, ``examples/node/query_person.js`` run as subprocesses and must print PROVIDED.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.soak import Servers, process_world
from linkage.v1 import common_pb2, unified_address_pb2, unified_address_pb2_grpc
from unified_address.individual_number import complete

ROOT = Path(__file__).resolve().parents[1]
NODE_EXAMPLE = ROOT / "examples" / "node"
NUMBER = complete("12345678901")
RESIDENT = ("10000000001", NUMBER, "sakai")


async def _register_person_with_a_pension(servers: Servers) -> None:
    async with servers.channel("jps", "nenkin") as jps_channel:
        jps = unified_address_pb2_grpc.UnifiedAddressServiceStub(jps_channel)
        await jps.RegisterPerson(
            unified_address_pb2.RegisterPersonRequest(
                address_number="N-1", individual_number=NUMBER
            )
        )
        pension = common_pb2.PensionBenefit(
            fiscal_year=2026,
            pension_kind=common_pb2.PENSION_KIND_OLD_AGE_BASIC,
            annual_amount=816_000,
            payer="jps",
        )
        await jps.PushDuplicates(
            unified_address_pb2.PushDuplicatesRequest(
                import_id="examples-pension",
                duplicates=[
                    unified_address_pb2.AddressedDuplicate(
                        address_number="N-1",
                        value=common_pb2.DuplicateValue(
                            data_item="pension_benefit",
                            effective_from="2026-04-01",
                            content=common_pb2.DataItemContent(pension_benefit=pension),
                        ),
                    )
                ],
            )
        )
    async with servers.channel("sakai", "kouki") as sakai_channel:
        sakai = unified_address_pb2_grpc.UnifiedAddressServiceStub(sakai_channel)
        registered = await sakai.RegisterPerson(
            unified_address_pb2.RegisterPersonRequest(
                address_number="K-1", individual_number=NUMBER
            )
        )
        assert registered.code_status == unified_address_pb2.CODE_STATUS_ACQUIRED


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A running world of processes with K-1 known to Sakai and a pension held at JPS."""
    root = tmp_path_factory.mktemp("world")
    # The processes outlive any one test, so the world is entered and left on a loop of its own
    # rather than on a test's.
    loop = asyncio.new_event_loop()
    world = process_world(root, [RESIDENT])
    try:
        servers = loop.run_until_complete(world.__aenter__())
        try:
            loop.run_until_complete(_register_person_with_a_pension(servers))
            yield root
        finally:
            loop.run_until_complete(world.__aexit__(None, None, None))
    finally:
        loop.close()


def _run(command: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.timeout(180)
def test_the_python_example_gets_the_pension(world_dir: Path) -> None:
    done = _run([sys.executable, "examples/query_person.py", str(world_dir), "K-1"], ROOT, 60)

    assert done.returncode == 0, done.stderr
    assert "status: QUERY_STATUS_PROVIDED" in done.stdout
    assert "annual_amount: 816000" in done.stdout


def _node_packages_installed() -> bool:
    """Install the example's packages once (``npm ci``); False when that is not possible here."""
    modules = NODE_EXAMPLE / "node_modules" / "@grpc"
    if (modules / "grpc-js").is_dir() and (modules / "proto-loader").is_dir():
        return True
    npm = shutil.which("npm")
    if npm is None:
        return False
    try:
        done = _run([npm, "ci", "--no-audit", "--no-fund"], NODE_EXAMPLE, 240)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


@pytest.mark.timeout(420)
def test_the_node_example_gets_the_pension(world_dir: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    if not _node_packages_installed():
        pytest.skip("npm could not install @grpc/grpc-js and @grpc/proto-loader (offline?)")

    done = _run([node, "query_person.js", str(world_dir), "K-1"], NODE_EXAMPLE, 60)

    assert done.returncode == 0, done.stderr
    assert '"status": "QUERY_STATUS_PROVIDED"' in done.stdout
    assert '"annual_amount": "816000"' in done.stdout
    assert "Warning" not in done.stderr
