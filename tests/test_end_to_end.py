"""The first end-to-end linkage, over real gRPC and mutual TLS through every part.

A business system registers a person at its unified address server; the intermediate server
obtains a linkage code from the network through the processing-serial flow; the provider's
business system registers a duplicate; the requester queries; the network checks the permission
list and issues a signed permit; the provider verifies it and answers sealed to the requester's
key; the requester decrypts. All three places keep an access record. A query the permission list
does not allow is denied with a reason and recorded.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from linkage import db
from linkage.records.models import AccessRecordRow
from linkage.v1 import common_pb2, unified_address_pb2
from simulator.world import World
from unified_address.individual_number import complete

NUMBER = complete("12345678901")
PENSION = common_pb2.PensionBenefit(
    fiscal_year=2026,
    pension_kind=common_pb2.PENSION_KIND_OLD_AGE_EMPLOYEES,
    annual_amount=1_234_567,
    payer="jps",
)


async def _person_known_to_jps_and_sakai(world: World) -> None:
    await world.registry.load_residents([("10000000001", NUMBER, "sakai")])
    jps = world.business_system("jps", "nenkin")
    registered = await jps.RegisterPerson(
        unified_address_pb2.RegisterPersonRequest(address_number="N-1", individual_number=NUMBER)
    )
    assert registered.code_status == unified_address_pb2.CODE_STATUS_ACQUIRED
    await jps.PushDuplicates(
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
    sakai = world.business_system("sakai", "kouki")
    registered = await sakai.RegisterPerson(
        unified_address_pb2.RegisterPersonRequest(address_number="K-1", individual_number=NUMBER)
    )
    assert registered.code_status == unified_address_pb2.CODE_STATUS_ACQUIRED


def _records(url: str, ledger: str) -> list[Any]:
    engine = db.make_engine(url)
    try:
        with db.session_factory(engine)() as session:
            rows = session.scalars(
                select(AccessRecordRow).where(AccessRecordRow.ledger == ledger)
            ).all()
            return [(r.event, r.outcome, r.procedure, r.requester, r.provider) for r in rows]
    finally:
        engine.dispose()


async def test_sakai_gets_a_pension_from_jps_sealed_and_recorded_at_three_places(
    world: World,
) -> None:
    await _person_known_to_jps_and_sakai(world)
    sakai = world.business_system("sakai", "kouki")

    answer = await sakai.QueryPerson(
        unified_address_pb2.QueryPersonRequest(
            query_id="pension-1",
            procedure="table2:82",
            provider="jps",
            data_items=["pension_benefit"],
            address_number="K-1",
            on_date="2026-06-01",
        )
    )

    assert answer.result.status == common_pb2.QUERY_STATUS_PROVIDED
    assert [v.content.pension_benefit for v in answer.result.values] == [PENSION]
    assert answer.result.permit_id
    cfg = world.config
    requester = _records(cfg.url("platform-municipal"), "server:sakai")
    network = _records(cfg.url("network"), "network")
    provider = _records(cfg.url("platform-jps"), "server:jps")
    for place in (requester, network, provider):
        assert any(r[2:] == ("table2:82", "sakai", "jps") for r in place), place
    assert any(r[1] == "PROVIDED" for r in provider)


async def test_a_query_the_law_does_not_allow_is_denied_with_a_reason_and_recorded(
    world: World,
) -> None:
    await _person_known_to_jps_and_sakai(world)
    sakai = world.business_system("sakai", "kouki")

    # Row 82 lets a municipality ask pension payers and the regional association, not another
    # municipality: Osaka may not be asked for local tax under it.
    answer = await sakai.QueryPerson(
        unified_address_pb2.QueryPersonRequest(
            query_id="tax-1",
            procedure="table2:82",
            provider="osaka",
            data_items=["local_tax"],
            address_number="K-1",
            on_date="2026-06-01",
        )
    )

    assert answer.result.status == common_pb2.QUERY_STATUS_DENIED
    assert answer.result.reason == "PROVIDER_NOT_ALLOWED"
    assert not answer.result.values
    network = _records(world.config.url("network"), "network")
    assert any(r[1] == "DENIED" and r[4] == "osaka" for r in network), network
