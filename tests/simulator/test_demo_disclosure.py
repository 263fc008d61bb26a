"""``linkage demo`` ends with what one queried person sees on the portal: entries from Sakai
(the requester), the network and the providers, each with its place, and nothing personal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulator import demo

RECORD_FIELDS = {
    "place",
    "occurred_at",
    "ledger",
    "event",
    "actor",
    "requester",
    "provider",
    "procedure",
    "data_items",
    "outcome",
    "reason",
}


def test_the_demo_shows_a_queried_persons_entries_from_all_three_places(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = demo.main(["--residents", "40", "--json", "--quiet", "--out", str(tmp_path / "r.csv")])
    summary = json.loads(capsys.readouterr().out)

    assert code == 0
    disclosure = summary["disclosure"]
    assert disclosure["organization"] == "sakai"
    assert disclosure["unanswered"] == []
    assert {"sakai", "network", "jps"} <= set(disclosure["places"])
    entries = disclosure["entries"]
    assert len(entries) == sum(disclosure["places"].values())
    assert all(set(entry) == RECORD_FIELDS for entry in entries)
    # Sakai's pension query about the person, as each of the three places recorded it.
    pension = {
        (e["place"], e["event"])
        for e in entries
        if (e["requester"], e["provider"], e["procedure"]) == ("sakai", "jps", "table2:82")
    }
    assert {("sakai", "ANSWER_RECEIVED"), ("network", "QUERY_ROUTED"), ("jps", "PROVIDED")} <= (
        pension
    )
