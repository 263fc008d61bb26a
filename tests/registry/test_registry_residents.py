"""Loading residents: fast bulk upsert, all or nothing, no individual number in the clear."""

from __future__ import annotations

import time

import pytest
from network_support import stored_bytes
from registry_support import resident, residents

from simulator.registry import app as registry_app


async def test_loading_stores_a_blind_index_and_never_the_individual_number(
    registry: registry_app.App, registry_url: str
) -> None:
    rows = residents(200)
    assert await registry.load_residents(rows) == 200
    assert await registry.resident_count() == 200
    stored = stored_bytes(registry_url)
    for _, number, _ in rows:
        assert number.encode() not in stored


async def test_reloading_updates_residents_who_moved(registry: registry_app.App) -> None:
    await registry.load_residents(residents(10))
    moved = [resident(i, "osaka") for i in range(1, 6)]
    assert await registry.load_residents(moved) == 5
    assert await registry.resident_count() == 10


async def test_a_bad_row_names_its_position_and_nothing_of_the_load_is_kept(
    registry: registry_app.App,
) -> None:
    rows = residents(50)
    code, number, _ = rows[30]
    rows[30] = (code, number[:-1] + str((int(number[-1]) + 1) % 10), "sakai")
    with pytest.raises(ValueError, match="row 30: individual_number") as raised:
        await registry.load_residents(rows)
    assert number[:-1] not in str(raised.value)
    assert await registry.resident_count() == 0


async def test_two_hundred_thousand_residents_load_in_seconds(registry: registry_app.App) -> None:
    started = time.monotonic()
    count = await registry.load_residents(
        resident(i) for i in range(1, 200_001)
    )  # a generator: rows are not all held in memory
    elapsed = time.monotonic() - started
    assert count == 200_000
    assert elapsed < 20, f"{elapsed:.1f}s"
