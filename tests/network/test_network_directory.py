"""The organization directory: registration (admin only), reads, paging, key rotation."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from network_support import Clock, Net, OrgKeys, Stub, organization, remote, requester_key

from linkage.v1 import common_pb2, network_pb2
from simulator.network import app as network_app


def _register(org: network_pb2.Organization) -> network_pb2.RegisterOrganizationRequest:
    return network_pb2.RegisterOrganizationRequest(organization=org)


async def test_admin_registers_and_anyone_authenticated_reads(
    network: network_app.App, connect: Callable[[str, str], Stub]
) -> None:
    keys = OrgKeys("osaka")
    stored = await connect("admin", network.address).RegisterOrganization(
        _register(organization(keys, ["regional_association"], "127.0.0.1:5001", "大阪府広域連合"))
    )
    assert stored.organization.name == "organizations/osaka"
    assert stored.organization.display_name == "大阪府広域連合"
    assert [k.key_id for k in stored.organization.signing_keys] == [keys.key_id]

    for reader in ("org.jps", "registry", "ua.sakai"):
        read = await connect(reader, network.address).GetOrganization(
            network_pb2.GetOrganizationRequest(name="organizations/osaka")
        )
        assert read.organization == stored.organization


async def test_registration_by_an_organization_certificate_is_permission_denied(
    network: network_app.App, connect: Callable[[str, str], Stub]
) -> None:
    keys = OrgKeys("osaka")
    error = await remote(
        connect("org.osaka", network.address).RegisterOrganization(
            _register(organization(keys, ["regional_association"], "127.0.0.1:5001"))
        )
    )
    assert (error.code, error.reason) == ("PERMISSION_DENIED", "CALLER_NOT_ALLOWED")
    missing = await remote(
        connect("admin", network.address).GetOrganization(
            network_pb2.GetOrganizationRequest(name="organizations/osaka")
        )
    )
    assert (missing.code, missing.reason) == ("NOT_FOUND", "ORGANIZATION_NOT_FOUND")


async def test_registering_a_code_twice_is_already_exists(
    network: network_app.App, connect: Callable[[str, str], Stub]
) -> None:
    admin = connect("admin", network.address)
    await admin.RegisterOrganization(
        _register(organization(OrgKeys("osaka"), ["municipality"], "127.0.0.1:5001"))
    )
    error = await remote(
        admin.RegisterOrganization(
            _register(organization(OrgKeys("osaka"), ["municipality"], "127.0.0.1:5002"))
        )
    )
    assert (error.code, error.reason) == ("ALREADY_EXISTS", "ORGANIZATION_EXISTS")


async def test_bad_registration_lists_every_bad_field(
    network: network_app.App, connect: Callable[[str, str], Stub]
) -> None:
    bad = network_pb2.Organization(
        code="Osaka!",
        display_name="",
        capacities=["wizard"],
        endpoint="nowhere",
        local_government_code="12",
        signing_keys=[common_pb2.PublicKey(key_id="xyz", key=b"short")],
    )
    error = await remote(connect("admin", network.address).RegisterOrganization(_register(bad)))
    assert (error.code, error.reason) == ("INVALID_ARGUMENT", "INVALID_FIELDS")
    fields = {v.field for v in error.violations}
    assert fields >= {
        "organization.code",
        "organization.display_name",
        "organization.capacities[0]",
        "organization.endpoint",
        "organization.local_government_code",
        "organization.signing_keys[0].key",
    }


async def test_list_pages_through_every_organization_in_code_order(
    network: network_app.App, connect: Callable[[str, str], Stub]
) -> None:
    admin = connect("admin", network.address)
    codes = sorted(f"city-{i:02d}" for i in range(7))
    for code in reversed(codes):
        await admin.RegisterOrganization(
            _register(organization(OrgKeys(code), ["municipality"], "127.0.0.1:5001"))
        )
    reader = connect("org.sakai", network.address)
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await reader.ListOrganizations(
            network_pb2.ListOrganizationsRequest(page_size=3, page_token=token)
        )
        seen += [o.code for o in page.organizations]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == codes
    assert pages == 3


@pytest.mark.parametrize("token", ["garbage!", "djE6", "bm90LWEtdG9rZW4="])
async def test_a_forged_page_token_is_invalid_argument(
    network: network_app.App, connect: Callable[[str, str], Stub], token: str
) -> None:
    error = await remote(
        connect("org.sakai", network.address).ListOrganizations(
            network_pb2.ListOrganizationsRequest(page_token=token)
        )
    )
    assert (error.code, error.reason) == ("INVALID_ARGUMENT", "INVALID_PAGE_TOKEN")
    assert [v.field for v in error.violations] == ["page_token"]


async def test_rotation_makes_the_new_key_current_and_keeps_the_old_for_the_overlap(
    net: Net, clock: Clock
) -> None:
    old = net.keys["sakai"]
    new = old.rotated()
    rotated = await net.stub("org.sakai").RotateOrganizationKeys(
        network_pb2.RotateOrganizationKeysRequest(
            name="organizations/sakai", signing_key=new.public_key()
        )
    )
    keys = rotated.organization.signing_keys
    assert [k.key_id for k in keys] == [new.key_id, old.key_id]
    assert not keys[0].HasField("not_after")
    assert keys[1].not_after.ToDatetime().timestamp() == pytest.approx(
        (clock.now + net.app.config.key_overlap).timestamp(), abs=1
    )

    # A requester key signed with the old key still works during the overlap...
    code = await net.issue_code("10000000001", "sakai")
    await net.issue_code("10000000001", "jps")
    response = await net.submit([net.query("q-old-key", code)])
    assert response.dispositions[0].status == common_pb2.QUERY_STATUS_IN_FLIGHT

    # ...and is refused once the window has passed.
    clock.advance(net.app.config.key_overlap + timedelta(seconds=1))
    net.app.directory.invalidate("sakai")
    old_key = requester_key(old, not_after=clock.now + timedelta(hours=1))
    error = await remote(net.submit([net.query("q-after-window", code)], key=old_key))
    assert (error.code, error.reason) == ("INVALID_ARGUMENT", "BAD_REQUESTER_KEY")
    net.keys["sakai"] = new
    fresh_key = requester_key(new, not_after=clock.now + timedelta(hours=1))
    response = await net.submit([net.query("q-new-key", code)], key=fresh_key)
    assert response.dispositions[0].status == common_pb2.QUERY_STATUS_IN_FLIGHT
    read = await net.stub("org.jps").GetOrganization(
        network_pb2.GetOrganizationRequest(name="organizations/sakai")
    )
    assert [k.key_id for k in read.organization.signing_keys] == [new.key_id]


async def test_an_organization_cannot_rotate_another_organizations_keys(net: Net) -> None:
    error = await remote(
        net.stub("org.jps").RotateOrganizationKeys(
            network_pb2.RotateOrganizationKeysRequest(
                name="organizations/sakai", signing_key=OrgKeys("sakai").public_key()
            )
        )
    )
    assert (error.code, error.reason) == ("PERMISSION_DENIED", "NOT_THIS_ORGANIZATION")


async def test_network_keys_publish_current_and_previous_permit_keys_after_rotation(
    network: network_app.App, connect: Callable[[str, str], Stub]
) -> None:
    reader = connect("org.sakai", network.address)
    before = await reader.GetNetworkKeys(network_pb2.GetNetworkKeysRequest())
    assert len(before.permit_keys) == 1
    assert before.permission_list_version == network.permission_list_version
    new = await network.rotate_permit_key()
    after = await reader.GetNetworkKeys(network_pb2.GetNetworkKeysRequest())
    assert [k.key_id for k in after.permit_keys] == [new.key_id, before.permit_keys[0].key_id]
    assert after.permit_keys[1].HasField("not_after")
    assert not after.permit_keys[0].HasField("not_after")


async def test_a_caller_over_its_rate_is_resource_exhausted(
    start_network: Callable[..., object], connect: Callable[[str, str], Stub]
) -> None:
    from simulator.network.ratelimit import RateLimit

    app = await start_network(rate_limit=RateLimit(per_second=0.5, burst=3))  # type: ignore[misc]
    reader = connect("org.sakai", app.address)
    for _ in range(3):
        await reader.GetNetworkKeys(network_pb2.GetNetworkKeysRequest())
    error = await remote(reader.GetNetworkKeys(network_pb2.GetNetworkKeysRequest()))
    assert (error.code, error.reason) == ("RESOURCE_EXHAUSTED", "RATE_LIMITED")
    assert "retryAfterMs" in error.metadata
    # Another caller has its own bucket.
    await connect("org.jps", app.address).GetNetworkKeys(network_pb2.GetNetworkKeysRequest())
