"""A first end-to-end check: code acquisition, import and a provided query."""

from __future__ import annotations

from server_support import QS, World, pension, pension_query


async def test_pension_query_is_provided(world: World) -> None:
    await world.enroll("sakai", "S-0001", "12345678901")
    await world.enroll("jps", "J-0001", "12345678901")
    response = await world.import_records("jps", [pension("J-0001", amount=1_500_000)])
    assert response.imported == 1
    result = await world.submit("sakai", **pension_query("q-1", "S-0001"))
    assert result.status == QS.QUERY_STATUS_PROVIDED, result
    assert result.values[0].content.pension_benefit.annual_amount == 1_500_000
