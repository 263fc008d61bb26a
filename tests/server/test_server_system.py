"""SystemManagementService over real gRPC with mutual TLS: statistics from the tenant's ledger
and the purge of expired data, for administrators at a staff console.

A known sequence of sakai's pension queries at jps (provided, held, no data, denied) must come
back as exactly those counts, per event and per data item, at both ends.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from server_support import QS, World, bearer, pension, pension_query, remote

from linkage.records.model import from_micros
from linkage.v1 import system_management_pb2

sm = system_management_pb2


def _stamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


@pytest.fixture
async def queried(world: World) -> World:
    """sakai asked jps: q-1, q-2 provided; q-3 held; q-4 no data; q-5, q-6 denied."""
    for n in (1, 2, 3, 4):
        await world.enroll("sakai", f"S-000{n}", f"1000000000{n}")
        await world.enroll("jps", f"J-000{n}", f"1000000000{n}")
    await world.import_records(
        "jps", [pension("J-0001"), pension("J-0002"), pension("J-0003", flagged=True)]
    )
    expected = {
        "q-1": ("S-0001", ["pension_benefit"], "QUERY_STATUS_PROVIDED"),
        "q-2": ("S-0002", ["pension_benefit"], "QUERY_STATUS_PROVIDED"),
        "q-3": ("S-0003", ["pension_benefit"], "QUERY_STATUS_HELD_FOR_REVIEW"),
        "q-4": ("S-0004", ["pension_benefit"], "QUERY_STATUS_NO_DATA"),
        "q-5": ("S-0001", ["local_tax"], "QUERY_STATUS_DENIED"),
        "q-6": ("S-0002", ["pension_benefit", "local_tax"], "QUERY_STATUS_DENIED"),
    }
    for query_id, (person, items, status) in expected.items():
        result = await world.submit("sakai", **pension_query(query_id, person, data_items=items))
        assert QS.Name(result.status) == status, query_id
    return world


async def _statistics(
    world: World, code: str, token: str, **period: Any
) -> dict[tuple[str, str], int]:
    response = await world.console(code).system.GetStatistics(
        sm.GetStatisticsRequest(parent=f"organizations/{code}", **period), metadata=bearer(token)
    )
    counts = {(row.event, row.data_item): row.count for row in response.rows}
    assert len(counts) == len(response.rows)  # one row per (event, item)
    return counts


def _from_ledger(world: World, code: str) -> dict[tuple[str, str], int]:
    """The same counts computed the slow way from every record of the tenant's ledger."""
    counts: Counter[tuple[str, str]] = Counter()
    for entry in world.records(code):
        counts[(entry["event"], "")] += 1
        for item in filter(None, entry["data_items"].split(",")):
            counts[(entry["event"], item)] += 1
    return dict(counts)


async def test_statistics_count_the_known_queries(queried: World) -> None:
    jps = await queried.signed_in("jps", "okada.y", "ADMINISTRATOR")
    sakai = await queried.signed_in("sakai", "okada.y", "ADMINISTRATOR")
    expected_jps = _from_ledger(queried, "jps")
    expected_sakai = _from_ledger(queried, "sakai")
    at_jps = await _statistics(queried, "jps", jps)
    at_sakai = await _statistics(queried, "sakai", sakai)
    assert at_jps == expected_jps
    assert at_sakai == expected_sakai
    # The provider's view: what it provided, held and had no data for.
    assert at_jps[("PROVIDED", "pension_benefit")] == 2
    assert at_jps[("PROVIDED", "")] == 2
    assert at_jps[("HELD_FOR_REVIEW", "pension_benefit")] == 1
    assert at_jps[("NO_DATA", "pension_benefit")] == 1
    assert ("QUERY_DENIED", "") not in at_jps  # denied queries never reached jps
    # The requester's view: a two-item denial counts once in total, once per item.
    assert at_sakai[("QUERY_DENIED", "")] == 2
    assert at_sakai[("QUERY_DENIED", "local_tax")] == 2
    assert at_sakai[("QUERY_DENIED", "pension_benefit")] == 1
    assert at_sakai[("ANSWER_RECEIVED", "pension_benefit")] == 3
    assert at_sakai[("HELD_FOR_REVIEW", "pension_benefit")] == 1
    assert at_sakai[("STAFF_SIGNED_IN", "")] == 1
    # Asking is recorded (after counting, so it does not count itself).
    [op] = queried.records("jps", procedure="SystemManagementService.GetStatistics")
    assert (op["event"], op["outcome"], op["actor_id"]) == ("STAFF_OPERATION", "OK", "okada.y")


async def test_statistics_of_a_period(queried: World) -> None:
    start = queried.clock()
    queried.clock.advance(timedelta(hours=1))
    middle = queried.clock()
    result = await queried.submit("sakai", **pension_query("q-7", "S-0001"))
    assert QS.Name(result.status) == "QUERY_STATUS_PROVIDED"
    queried.clock.advance(timedelta(hours=1))
    token = await queried.signed_in("jps", "endo.h", "ADMINISTRATOR")
    later = await _statistics(queried, "jps", token, start_time=_stamp(middle))
    assert later[("PROVIDED", "pension_benefit")] == 1
    earlier = await _statistics(
        queried, "jps", token, start_time=_stamp(start), end_time=_stamp(middle)
    )
    assert earlier[("PROVIDED", "pension_benefit")] == 2
    assert ("STAFF_SIGNED_IN", "") not in earlier
    empty = await _statistics(
        queried,
        "jps",
        token,
        start_time=_stamp(from_micros(0)),
        end_time=_stamp(from_micros(1)),
    )
    assert empty == {}


async def test_bad_periods_are_invalid_argument_and_write_nothing(queried: World) -> None:
    token = await queried.signed_in("jps", "ishii.k", "ADMINISTRATOR")
    now = queried.clock()
    before = queried.table_counts("alpha")
    cases = [
        ({"start_time": _stamp(now), "end_time": _stamp(now)}, "INVALID_PERIOD"),
        ({"start_time": _stamp(now + timedelta(days=1))}, "INVALID_PERIOD"),
        ({"end_time": Timestamp(seconds=10**12)}, "INVALID_TIME"),
        ({"start_time": Timestamp(seconds=0, nanos=-1)}, "INVALID_TIME"),
    ]
    for period, reason in cases:
        error = await remote(_statistics(queried, "jps", token, **period))
        assert (error.code, error.reason) == ("INVALID_ARGUMENT", reason), period
    assert queried.table_counts("alpha") == before


async def test_purge_expired_through_the_rpc(queried: World) -> None:
    stored = queried.count("alpha", "server_queries", "tenant = 'sakai'")
    assert stored == 6
    duplicates = queried.count("alpha", "server_duplicates")
    queried.clock.advance(timedelta(hours=25))  # past the 24-hour result retention
    token = await queried.signed_in("sakai", "matsui.r", "ADMINISTRATOR")
    response = await queried.console("sakai").system.PurgeExpired(
        sm.PurgeExpiredRequest(parent="organizations/sakai"), metadata=bearer(token)
    )
    assert (response.query_results_deleted, response.duplicates_deleted) == (stored, 0)
    assert queried.count("alpha", "server_queries") == 0
    assert queried.count("alpha", "server_duplicates") == duplicates  # jps's, in force
    [op] = queried.records("sakai", procedure="SystemManagementService.PurgeExpired")
    assert (op["event"], op["outcome"], op["actor_id"]) == ("STAFF_OPERATION", "OK", "matsui.r")
    again = await queried.console("sakai").system.PurgeExpired(
        sm.PurgeExpiredRequest(parent="organizations/sakai"), metadata=bearer(token)
    )
    assert again.query_results_deleted == 0
