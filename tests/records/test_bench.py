"""The ledger benchmark runs end to end on a scratch database (figures are not asserted)."""

from __future__ import annotations

from pathlib import Path

from linkage.records.bench import measure


async def test_the_benchmark_appends_verifies_and_reports_positive_rates(tmp_path: Path) -> None:
    result = await measure(tmp_path, records=2000, handlers=20)
    assert result.records == 2000
    assert min(result.append_per_s, result.verify_per_s, result.bare_chain_per_s) > 0
    assert 0 < result.verify_ratio < 1
