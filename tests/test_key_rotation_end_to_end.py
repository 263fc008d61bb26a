"""``linkage keys rotate`` against a running world: the provider's key is rotated while it
serves, published at the network before it signs, and queries go on; a refused run changes
nothing and the retry finishes it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from linkage.v1 import common_pb2, network_pb2, network_pb2_grpc, unified_address_pb2
from server.cli_keys import main as keys_cli
from simulator.world import World
from tests.test_end_to_end import PENSION, _person_known_to_jps_and_sakai


def _rotate_args(world: World, tenant: str, platform: str) -> list[str]:
    root = world.config.root
    return [
        "rotate",
        "--tenant",
        tenant,
        "--platform",
        platform,
        "--data-dir",
        str(root),
        "--pki-dir",
        str(world.config.pki_dir),
        "--network",
        world.network.address,
    ]


async def _directory_keys(world: World, code: str) -> list[tuple[str, bool]]:
    channel = world.channel("org.sakai", world.network.address)
    stub = network_pb2_grpc.NetworkServiceStub(channel)
    found = await stub.GetOrganization(
        network_pb2.GetOrganizationRequest(name=f"organizations/{code}")
    )
    return [(key.key_id, key.HasField("not_after")) for key in found.organization.signing_keys]


async def test_the_command_rotates_a_serving_providers_key_and_queries_go_on(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    await _person_known_to_jps_and_sakai(world)
    jps = world.platform_of("jps").tenants.get("jps")
    before = jps.signer.key_id

    code = await asyncio.to_thread(keys_cli, _rotate_args(world, "jps", "jps"))

    assert code == 0, capsys.readouterr().err
    now = jps.signer.key_id
    assert now != before
    assert f"current key {now}, previous {before}" in capsys.readouterr().out
    keys = dict(await _directory_keys(world, "jps"))
    assert keys[now] is False  # current: no end
    assert keys[before] is True  # previous: valid until its overlap window ends
    # The answer is signed with the new key; Sakai's platform accepts it only because the
    # network published the key before the provider used it.
    answer = await world.business_system("sakai", "kouki").QueryPerson(
        unified_address_pb2.QueryPersonRequest(
            query_id="after-rotation",
            procedure="table2:82",
            provider="jps",
            data_items=["pension_benefit"],
            address_number="K-1",
            on_date="2026-06-01",
        )
    )
    assert answer.result.status == common_pb2.QUERY_STATUS_PROVIDED
    assert [v.content.pension_benefit for v in answer.result.values] == [PENSION]


async def test_the_command_refuses_an_unknown_tenant_without_making_a_key(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await asyncio.to_thread(keys_cli, _rotate_args(world, "nowhere", "jps"))
    assert code == 2
    assert "no key ring of tenant 'nowhere'" in capsys.readouterr().err
    keys = world.config.root / "keys" / "platform-jps" / "keys"
    assert not list(keys.glob("org-nowhere*"))


async def test_the_command_keeps_the_pending_key_when_the_network_cannot_be_reached(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    jps = world.platform_of("jps").tenants.get("jps")
    before = jps.signer.key_id
    args = _rotate_args(world, "jps", "jps")
    args[-1] = "127.0.0.1:1"  # nothing listens there

    code = await asyncio.to_thread(keys_cli, args)

    assert code == 1
    assert "NETWORK_UNAVAILABLE" in capsys.readouterr().err
    assert jps.signer.key_id == before
    assert jps.keyring.pending_path.exists()
    code = await asyncio.to_thread(keys_cli, _rotate_args(world, "jps", "jps"))
    assert code == 0
    assert "finished the rotation an earlier run started" in capsys.readouterr().out
    assert jps.signer.key_id != before
