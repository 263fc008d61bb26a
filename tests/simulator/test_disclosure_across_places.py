"""Disclosure across places (情報提供等記録開示): a person sees who queried which of their data,
when, for which procedure and with what outcome, from the requester's, the network's and the
provider's records, over real gRPC and mutual TLS through the in-process world.

Two people are registered at Sakai and at JPS; Sakai asks JPS for both under row 82. Only the
first has a pension duplicate at JPS (PROVIDED), the second has none (NO_DATA), so an entry of
one person's disclosure that belongs to the other would show as the other's outcome.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest

from linkage.errors import remote_error
from linkage.records.cli import EXIT_INCOMPLETE, EXIT_OK, main
from linkage.records.portal import Disclosure, Target, disclose_person
from linkage.v1 import (
    common_pb2,
    inbound_pb2,
    inbound_pb2_grpc,
    intermediate_server_pb2,
    intermediate_server_pb2_grpc,
    network_pb2,
    network_pb2_grpc,
    unified_address_pb2,
)
from server import repository as server_repository
from simulator.network.service import NetworkService
from simulator.world import World
from unified_address.individual_number import complete

QUERIED = complete("12345678901")
OTHER = complete("22345678901")
PENSION = common_pb2.PensionBenefit(
    fiscal_year=2026,
    pension_kind=common_pb2.PENSION_KIND_OLD_AGE_EMPLOYEES,
    annual_amount=1_234_567,
    payer="jps",
)


async def _register(world: World, org: str, system: str, address_number: str, number: str) -> str:
    stub = world.business_system(org, system)
    registered = await stub.RegisterPerson(
        unified_address_pb2.RegisterPersonRequest(
            address_number=address_number, individual_number=number
        )
    )
    assert registered.code_status == unified_address_pb2.CODE_STATUS_ACQUIRED
    return registered.unified_number


async def _query(world: World, query_id: str, address_number: str) -> int:
    answer = await world.business_system("sakai", "kouki").QueryPerson(
        unified_address_pb2.QueryPersonRequest(
            query_id=query_id,
            procedure="table2:82",
            provider="jps",
            data_items=["pension_benefit"],
            address_number=address_number,
            on_date="2026-06-01",
        )
    )
    return answer.result.status


async def _two_people_queried_by_sakai(world: World) -> tuple[str, str]:
    """Sakai's unified numbers of the person with a pension at JPS and of the one without."""
    queried, other, _ = await _two_people_at_both(world)
    return queried, other


async def _two_people_at_both(world: World) -> tuple[str, str, str]:
    """``_two_people_queried_by_sakai``, and JPS's unified number of the queried person."""
    await world.registry.load_residents(
        [("10000000001", QUERIED, "sakai"), ("10000000002", OTHER, "sakai")]
    )
    at_jps = await _register(world, "jps", "nenkin", "N-1", QUERIED)
    await _register(world, "jps", "nenkin", "N-2", OTHER)
    await world.business_system("jps", "nenkin").PushDuplicates(
        unified_address_pb2.PushDuplicatesRequest(
            import_id="pensions-2026",
            duplicates=[
                unified_address_pb2.AddressedDuplicate(
                    address_number="N-1",
                    value=common_pb2.DuplicateValue(
                        data_item="pension_benefit",
                        effective_from="2026-04-01",
                        content=common_pb2.DataItemContent(pension_benefit=PENSION),
                    ),
                )
            ],
        )
    )
    queried = await _register(world, "sakai", "kouki", "K-1", QUERIED)
    other = await _register(world, "sakai", "kouki", "K-2", OTHER)
    assert await _query(world, "pension-1", "K-1") == common_pb2.QUERY_STATUS_PROVIDED
    assert await _query(world, "pension-2", "K-2") == common_pb2.QUERY_STATUS_NO_DATA
    return queried, other, at_jps


def _linkage_code(world: World, tenant: str, unified_number: str) -> str:
    """The tenant's linkage code for the person (read from its platform's database)."""
    with world.platform_of(tenant).sessions() as session:
        row = server_repository.code_of(session, tenant, unified_number)
        assert row is not None
        return row.linkage_code


def _sakai(world: World) -> Target:
    return Target(
        organization="sakai",
        address=world.platform_of("sakai").address,
        security=world.security("ua.sakai"),
        server="platform.municipal",
    )


def _query_entries(found: Disclosure, place: str) -> list[tuple[str, str]]:
    return [
        (e["event"], e["outcome"])
        for e in found.entries
        if e["place"] == place and e["procedure"] == "table2:82"
    ]


async def test_a_person_sees_entries_from_requester_network_and_provider_and_only_their_own(
    world: World,
) -> None:
    queried, other = await _two_people_queried_by_sakai(world)

    found = await disclose_person(_sakai(world), queried)

    assert found.unanswered == []
    assert set(found.places()) == {"sakai", "network", "jps"}
    for place in ("sakai", "network", "jps"):
        asked = [e for e in found.entries if e["place"] == place and e["procedure"]]
        assert asked, place
        assert all((e["requester"], e["provider"]) == ("sakai", "jps") for e in asked), place
    assert ("PROVIDED", "PROVIDED") in _query_entries(found, "jps")
    assert ("ANSWER_RECEIVED", "PROVIDED") in _query_entries(found, "sakai")
    assert ("QUERY_ROUTED", "OK") in _query_entries(found, "network")
    assert all(e["outcome"] != "NO_DATA" for e in found.entries)  # the other person's query
    times = [e["occurred_at"] for e in found.entries]
    assert times == sorted(times)

    theirs = await disclose_person(_sakai(world), other)
    assert set(theirs.places()) == {"sakai", "network", "jps"}
    assert ("NO_DATA", "NO_DATA") in _query_entries(theirs, "jps")
    assert all(e["outcome"] != "PROVIDED" for e in theirs.entries)


async def test_the_disclosure_carries_record_fields_only_never_numbers_codes_or_contents(
    world: World,
) -> None:
    queried, _, at_jps = await _two_people_at_both(world)
    codes = [_linkage_code(world, "sakai", queried), _linkage_code(world, "jps", at_jps)]
    stub = intermediate_server_pb2_grpc.IntermediateServerServiceStub(
        world.channel("ua.sakai", world.platform_of("sakai").address)
    )

    response = await stub.DisclosePersonAccessRecords(
        intermediate_server_pb2.DisclosePersonAccessRecordsRequest(
            parent="organizations/sakai", unified_number=queried
        )
    )

    raw = response.SerializeToString()
    assert queried.encode() not in raw
    assert at_jps.encode() not in raw
    assert QUERIED.encode() not in raw
    assert str(PENSION.annual_amount).encode() not in raw
    for code in codes:
        assert code.encode() not in raw
    assert {r.place for r in response.records} == {"sakai", "network", "jps"}


async def test_another_places_records_reach_the_caller_without_actor_ids_or_ledger(
    world: World,
) -> None:
    queried, _, at_jps = await _two_people_at_both(world)
    jps = intermediate_server_pb2_grpc.IntermediateServerServiceStub(
        world.channel("ua.jps", world.platform_of("jps").address)
    )
    own = await jps.DiscloseAccessRecords(
        intermediate_server_pb2.DiscloseAccessRecordsRequest(
            parent="organizations/jps", unified_number=at_jps
        )
    )
    # JPS's own caller sees who acted (its staff, business systems): Sakai's must not.
    kinds = {"organization", "business_system", "staff", "network", "system"}
    jps_actors = {r.actor for r in own.records} - {"", "jps", "sakai", "network"} - kinds
    assert jps_actors
    sakai = intermediate_server_pb2_grpc.IntermediateServerServiceStub(
        world.channel("ua.sakai", world.platform_of("sakai").address)
    )

    response = await sakai.DisclosePersonAccessRecords(
        intermediate_server_pb2.DisclosePersonAccessRecordsRequest(
            parent="organizations/sakai", unified_number=queried
        )
    )

    raw = response.SerializeToString()
    for actor in jps_actors:
        assert actor.encode() not in raw, actor
    elsewhere = [r.record for r in response.records if r.place != "sakai"]
    assert elsewhere
    assert all(r.ledger == "" for r in elsewhere)
    assert all(r.actor in kinds for r in elsewhere)
    # What the person needs is still there: who asked whom, for what, with what outcome.
    provided = [r for r in elsewhere if r.event == "PROVIDED"]
    assert [(r.requester, r.provider, r.procedure, r.outcome) for r in provided] == [
        ("sakai", "jps", "table2:82", "PROVIDED")
    ]
    assert list(provided[0].data_items) == ["pension_benefit"]
    own_records = [r.record for r in response.records if r.place == "sakai"]
    assert all(r.ledger == "server:sakai" and r.actor for r in own_records)


async def test_the_disclosure_is_recorded_at_the_asking_platform_and_the_network(
    world: World,
) -> None:
    queried, _ = await _two_people_queried_by_sakai(world)
    before = await disclose_person(_sakai(world), queried)
    assert not [e for e in before.entries if e["event"] == "STAFF_OPERATION"]

    after = await disclose_person(_sakai(world), queried)

    recorded = {
        (e["place"], e["procedure"], e["requester"], e["outcome"])
        for e in after.entries
        if e["event"] == "STAFF_OPERATION"
    }
    assert recorded == {
        ("sakai", "IntermediateServerService.DisclosePersonAccessRecords", "sakai", "OK"),
        ("network", "NetworkService.CollectPersonAccessRecords", "sakai", "OK"),
    }


async def test_collecting_is_charged_once_per_organization_asked(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    queried, _ = await _two_people_queried_by_sakai(world)
    charged: list[tuple[str, float]] = []
    admit = NetworkService._admit

    def recording(self: NetworkService, identity: str, cost: int = 1) -> None:
        charged.append((identity, cost))
        admit(self, identity, cost)

    monkeypatch.setattr(NetworkService, "_admit", recording)

    found = await disclose_person(_sakai(world), queried)

    assert set(found.places()) == {"sakai", "network", "jps"}
    # The call itself, then JPS (the one other organization asked).
    assert [cost for who, cost in charged if who == "org.sakai"] == [1, 1]


async def test_only_the_network_may_ask_a_platform_for_an_organizations_records(
    world: World,
) -> None:
    request = inbound_pb2.DiscloseOrganizationAccessRecordsRequest(
        organization="jps", linkage_code="A" * 20
    )
    address = world.platform_of("jps").address
    for identity in ("org.sakai", "ua.jps", "org.jps"):
        stub = inbound_pb2_grpc.InboundServiceStub(world.channel(identity, address))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.DiscloseOrganizationAccessRecords(request)
        failure = remote_error(raised.value)
        assert (failure.code, failure.reason) == ("PERMISSION_DENIED", "CALLER_NOT_NETWORK")

    as_network = inbound_pb2_grpc.InboundServiceStub(world.channel("network", address))
    answered = await as_network.DiscloseOrganizationAccessRecords(request)
    assert list(answered.records) == []


async def test_a_tenant_caller_cannot_ask_for_another_tenants_person(world: World) -> None:
    queried, _ = await _two_people_queried_by_sakai(world)
    platform = world.platform_of("sakai").address  # Osaka is hosted on the same platform
    stub = intermediate_server_pb2_grpc.IntermediateServerServiceStub(
        world.channel("ua.osaka", platform)
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.DisclosePersonAccessRecords(
            intermediate_server_pb2.DisclosePersonAccessRecordsRequest(
                parent="organizations/sakai", unified_number=queried
            )
        )
    assert remote_error(raised.value).code == "PERMISSION_DENIED"

    network = network_pb2_grpc.NetworkServiceStub(world.channel("org.jps", world.network.address))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await network.CollectPersonAccessRecords(
            network_pb2.CollectPersonAccessRecordsRequest(
                organization="sakai", linkage_code="A" * 20
            )
        )
    failure = remote_error(raised.value)
    assert (failure.code, failure.reason) == ("PERMISSION_DENIED", "NOT_THIS_ORGANIZATION")


async def test_a_place_that_does_not_answer_is_reported_missing_not_dropped(
    world: World,
) -> None:
    queried, _ = await _two_people_queried_by_sakai(world)
    await world.platforms["jps"].server.stop(0)

    found = await disclose_person(_sakai(world), queried, deadline=20)

    assert found.unanswered == [("jps", "ORGANIZATION_UNAVAILABLE")]
    assert set(found.places()) == {"sakai", "network"}


def _manifest(world: World, path: Path) -> Path:
    """A world.json as ``linkage world up`` writes it, for the in-process world."""
    manifest = {
        "pki_dir": str(world.config.pki_dir),
        "addresses": {f"platform-{name}": app.address for name, app in world.platforms.items()},
        "organizations": [
            {"code": org.code, "platform": org.platform} for org in world.config.organizations
        ],
    }
    path.write_text(json.dumps(manifest))
    return path


def _json_lines(out: str) -> list[dict[str, object]]:
    """The CLI's JSON lines (the in-process servers log to the same stdout)."""
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


async def test_the_cli_prints_one_json_line_per_entry_with_its_place(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    queried, _ = await _two_people_queried_by_sakai(world)
    manifest = _manifest(world, tmp_path / "world.json")
    argv = ["disclose", "--world", str(manifest), "--organization", "sakai"]
    capsys.readouterr()

    status = await asyncio.to_thread(main, [*argv, "--unified-number", queried])

    assert status == EXIT_OK
    lines = _json_lines(capsys.readouterr().out)
    assert {line["place"] for line in lines} == {"sakai", "network", "jps"}
    assert all(set(line) >= {"occurred_at", "event", "procedure", "outcome"} for line in lines)

    await world.platforms["jps"].server.stop(0)
    status = await asyncio.to_thread(main, [*argv, "--unified-number", queried])
    captured = capsys.readouterr()
    assert status == EXIT_INCOMPLETE
    assert "jps did not answer (ORGANIZATION_UNAVAILABLE)" in captured.err
    assert {line["place"] for line in _json_lines(captured.out)} == {"sakai", "network"}


async def test_without_a_linkage_code_the_network_is_listed_unanswered_not_skipped(
    world: World,
) -> None:
    found = await disclose_person(_sakai(world), "S-NEVER-REGISTERED")

    assert found.entries == []
    assert found.unanswered == [("network", "NO_LINKAGE_CODE")]


async def test_an_individual_number_is_refused_as_a_subject(world: World) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await disclose_person(_sakai(world), QUERIED)
    failure = remote_error(raised.value)
    assert (failure.code, failure.reason) == ("INVALID_ARGUMENT", "INVALID_UNIFIED_NUMBER")
