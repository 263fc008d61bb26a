"""The gateway figures' parts: the client drivers against a real world, the import file, the
people, and the hot-spot tables of profiles.

The drivers run against the in-process world (the suite's ``world`` fixture: every system over
real gRPC with mutual TLS); ``linkage bench`` runs them against the world as processes.
"""

from __future__ import annotations

import asyncio
import cProfile
from pathlib import Path
from typing import Any

import pytest

from bench import gateway, hotspots, storage
from bench.world import People
from linkage.v1 import common_pb2, unified_address_pb2
from server.duplicates import ImportBuffer
from server.duplicates_file import LineError, read_records
from simulator.world import World
from unified_address.individual_number import validate
from unified_address.matching import Registration

PEOPLE = People(count=12, with_pension=6)


def _pension(index: int) -> unified_address_pb2.AddressedDuplicate:
    return unified_address_pb2.AddressedDuplicate(
        address_number=f"N-{index}",
        value=common_pb2.DuplicateValue(
            data_item="pension_benefit",
            effective_from="2026-04-01",
            content=common_pb2.DataItemContent(
                pension_benefit=common_pb2.PensionBenefit(
                    fiscal_year=2026,
                    pension_kind=common_pb2.PENSION_KIND_OLD_AGE_BASIC,
                    annual_amount=700_000,
                    payer="jps",
                )
            ),
        ),
    )


@pytest.fixture
async def kouki(world: World) -> Any:
    """Sakai's kouki system, with PEOPLE known at JPS and Sakai and half their pensions at JPS
    (as ``bench.world`` prepares the world of processes)."""
    await world.registry.load_residents(PEOPLE.residents())
    for org, system, prefix in (("jps", "nenkin", "N-"), ("sakai", "kouki", "K-")):
        rows = [
            Registration(f"{prefix}{i}", PEOPLE.individual_number(i)) for i in range(PEOPLE.count)
        ]
        await world.unified_address[org].register_many(system, rows)
    await world.business_system("jps", "nenkin").PushDuplicates(
        unified_address_pb2.PushDuplicatesRequest(
            import_id="pensions", duplicates=[_pension(i) for i in range(PEOPLE.with_pension)]
        )
    )
    return world.business_system("sakai", "kouki")


async def test_a_batch_round_counts_right_answers_within_its_window(kouki: Any) -> None:
    settings = gateway.GatewaySettings(message_size=7, in_flight=21)

    rate, tally = await gateway._stream_round(kouki, PEOPLE, "t", 0.3, settings)

    assert rate > 0
    assert tally.ok == sum(tally.statuses.values()) > 0
    assert tally.statuses["QUERY_STATUS_PROVIDED"] > 0
    assert tally.statuses["QUERY_STATUS_NO_DATA"] > 0
    assert tally.wrong == 0


async def test_latencies_and_a_paced_load_against_the_world(kouki: Any) -> None:
    samples = await gateway._latencies(kouki, PEOPLE, "l", 4)
    assert len(samples) == 4
    assert samples == sorted(samples)
    assert samples[0] > 0

    stop = asyncio.Event()
    load = asyncio.create_task(gateway._paced_load(kouki, PEOPLE, 100.0, 5, stop))
    await asyncio.sleep(0.3)
    stop.set()
    assert await load > 0


async def test_the_client_window_holds_the_sender_until_answers_come() -> None:
    window = gateway._Window(10)
    await window.reserve(6)
    waiting = asyncio.create_task(window.reserve(6))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    window.release(6)
    await asyncio.wait_for(waiting, 1)
    assert window.outstanding == 6


def test_the_people_have_valid_distinct_numbers_and_half_a_pension() -> None:
    people = People(count=500, with_pension=250)
    numbers = [people.individual_number(i) for i in range(people.count)]
    assert all(validate(number) == number for number in numbers)
    assert len(set(numbers)) == people.count
    assert len({code for code, _, _ in people.residents()}) == people.count
    assert people.has_pension(249)
    assert not people.has_pension(250)
    assert people.address(501) == "K-1"


def test_the_import_file_passes_the_servers_own_format_checks(tmp_path: Path) -> None:
    path = storage.duplicate_file(tmp_path / "d.jsonl", 250)
    buffer = ImportBuffer()
    with path.open(encoding="utf-8") as handle:
        items = [item for _, item in read_records(handle, str(path))]

    assert not [item for item in items if isinstance(item, LineError)]
    buffer.add([item for item in items if not isinstance(item, LineError)])
    buffer.check()
    assert len(buffer.rows) == 250
    assert sum(row.auto_response_disabled for row in buffer.rows) == 3


def test_hot_spots_of_py_spy_stacks(tmp_path: Path) -> None:
    raw = tmp_path / "pyspy-batch-ua.txt"
    raw.write_text(
        "<module> (a.py:1);main (a.py:5);work (pkg/b.py:9) 30\n"
        "<module> (a.py:1);main (a.py:5);work (pkg/b.py:10);leaf (c.py:2) 10\n"
        "<module> (a.py:1);idle (a.py:7) 60\n"
        "<module> (a.py:1);EpollSelector.select (selectors.py:451) 500\n"  # a wait: dropped
    )

    spots = {s.function: s for s in hotspots.top_of_raw(raw)}

    assert spots["a.py:<module>"].cumulative_pct == 100
    assert (spots["pkg/b.py:work"].cumulative_pct, spots["pkg/b.py:work"].own_pct) == (40, 30)
    assert spots["c.py:leaf"].own_pct == 10
    assert "pkg/b.py:work" in hotspots.format_hotspots("t", list(spots.values()))
    assert "selectors.py:EpollSelector.select" not in spots
    assert hotspots.sample_count(raw) == 100


def test_hot_spots_of_a_cprofile_and_the_summary_file(tmp_path: Path) -> None:
    def busy() -> int:
        return sum(i * i for i in range(200_000))

    profiler = cProfile.Profile()
    profiler.runcall(busy)
    profiler.dump_stats(tmp_path / "figure-x.prof")
    (tmp_path / "pyspy-l-ua.txt").write_text("f (a.py:1) 5\n")

    spots = hotspots.top_of_prof(tmp_path / "figure-x.prof")
    text = hotspots.summarize(tmp_path)

    assert any(s.function.endswith(":busy") and s.cumulative_pct > 90 for s in spots)
    assert "figure-x.prof" in text
    assert "pyspy-l-ua.txt" in text
    assert (tmp_path / "hotspots.txt").read_text() == text


def test_py_spy_is_optional() -> None:
    spy = hotspots.PySpy({}, Path("unused"), "x")
    assert spy.available == (hotspots.py_spy_path() is not None)
