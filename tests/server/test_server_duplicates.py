"""The duplicate store: all-or-nothing import, idempotency, versions, export, flags, the CLI."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path

import pytest
from server_support import QS, World, local_tax, pb, pension, remote, tax_query

from linkage.db import unit_of_work
from linkage.v1 import common_pb2
from server.cli_duplicates import main as duplicates_cli
from server.duplicates import lookup_in_force


async def _export(world: World, code: str, **request: object) -> list[pb.DuplicateRecord]:
    records: list[pb.DuplicateRecord] = []
    call = world.ua(code).ExportDuplicates(
        pb.ExportDuplicatesRequest(parent=f"organizations/{code}", **request)  # type: ignore[arg-type]
    )
    async for response in call:
        records.extend(response.records)
    return records


async def test_import_is_all_or_nothing_and_names_the_row_and_field(world: World) -> None:
    records = [local_tax(f"S-{n:05d}") for n in range(2600)]
    records[2503].value.content.local_tax.total_income = -1
    before = world.table_counts("alpha")
    error = await remote(world.import_records("sakai", records, chunk=1000))
    assert (error.code, error.reason) == ("INVALID_ARGUMENT", "INVALID_DUPLICATE")
    assert [v.field for v in error.violations] == [
        "records[2503].value.content.local_tax.total_income"
    ]
    assert world.table_counts("alpha") == before  # nothing stored, nothing recorded


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: r.value.ClearField("content"), "records[1].value.content"),
        (
            lambda r: r.value.content.pension_benefit.CopyFrom(common_pb2.PensionBenefit()),
            "records[1].value.content",
        ),
        (lambda r: setattr(r.value, "data_item", "mystery"), "records[1].value.data_item"),
        (
            lambda r: setattr(r.value, "effective_from", "2026/06/01"),
            "records[1].value.effective_from",
        ),
        (
            lambda r: setattr(r.value, "effective_from", "20260601"),
            "records[1].value.effective_from",
        ),
        (lambda r: setattr(r.value, "effective_to", "2020-01-01"), "records[1].value.effective_to"),
        (
            lambda r: setattr(r.value.content.local_tax, "fiscal_year", 1066),
            "records[1].value.content.local_tax.fiscal_year",
        ),
        (
            lambda r: setattr(r.value.content.local_tax, "assessing_municipality", "Sakai City"),
            "records[1].value.content.local_tax.assessing_municipality",
        ),
        (lambda r: setattr(r, "unified_number", "123456789012"), "records[1].unified_number"),
        (lambda r: setattr(r, "unified_number", ""), "records[1].unified_number"),
    ],
)
async def test_each_bad_field_is_named(world: World, mutate: object, field: str) -> None:
    records = [local_tax("S-00001"), local_tax("S-00002")]
    mutate(records[1])  # type: ignore[operator]
    error = await remote(world.import_records("sakai", records))
    assert error.code == "INVALID_ARGUMENT"
    assert field in [v.field for v in error.violations]
    assert world.count("alpha", "server_duplicates") == 0


async def test_import_is_idempotent_by_import_id(world: World) -> None:
    records = [local_tax(f"S-{n:05d}") for n in range(10)]
    first = await world.import_records("sakai", records, import_id="tax-2026")
    assert (first.imported, first.superseded, first.already_imported) == (10, 0, False)
    again = await world.import_records("sakai", records, import_id="tax-2026")
    assert (again.imported, again.already_imported) == (10, True)
    assert world.count("alpha", "server_duplicates") == 10
    assert len(world.records("sakai", event="DUPLICATES_IMPORTED")) == 1


async def test_a_new_value_supersedes_the_old_and_history_is_kept(world: World) -> None:
    await world.import_records(
        "sakai", [local_tax("S-1", fiscal_year=2025, income=1_000_000)], import_id="fy2025"
    )
    second = await world.import_records(
        "sakai", [local_tax("S-1", fiscal_year=2026, income=2_000_000)], import_id="fy2026"
    )
    assert (second.imported, second.superseded) == (1, 1)
    history = await _export(world, "sakai", include_history=True)
    assert [(r.value.version, r.value.effective_from, r.value.effective_to) for r in history] == [
        (1, "2025-06-01", "2026-05-31"),  # closed the day before the new one starts
        (2, "2026-06-01", ""),
    ]
    # Lookup by date finds the version in force on that date.
    app = world.platforms["alpha"]
    tenant = app.tenants.get("sakai")
    with unit_of_work(app.sessions) as session:
        found = lookup_in_force(
            session,
            tenant,
            [
                ("S-1", ["local_tax"], date(2025, 12, 1)),
                ("S-1", ["local_tax"], date(2026, 7, 1)),
                ("S-1", ["local_tax"], date(2025, 5, 31)),
            ],
        )
    assert [[v.content.local_tax.total_income for v in values] for values in found] == [
        [1_000_000],
        [2_000_000],
        [],
    ]


async def test_a_correction_replaces_the_old_value_entirely(world: World) -> None:
    await world.import_records("sakai", [local_tax("S-1", income=1_000_000)], import_id="a")
    fixed = await world.import_records("sakai", [local_tax("S-1", income=1_100_000)], import_id="b")
    assert fixed.superseded == 1
    in_force = await _export(world, "sakai")
    assert [(r.value.version, r.value.content.local_tax.total_income) for r in in_force] == [
        (2, 1_100_000)
    ]
    assert len(await _export(world, "sakai", include_history=True)) == 2


async def test_versions_within_one_import_follow_stream_order(world: World) -> None:
    response = await world.import_records(
        "sakai",
        [
            local_tax("S-1", fiscal_year=2024),
            local_tax("S-1", fiscal_year=2025),
            local_tax("S-1", fiscal_year=2026),
        ],
    )
    assert (response.imported, response.superseded) == (3, 2)
    history = await _export(world, "sakai", include_history=True)
    assert [(r.value.version, r.value.effective_to) for r in history] == [
        (1, "2025-05-31"),
        (2, "2026-05-31"),
        (3, ""),
    ]


async def test_query_finds_the_version_in_force_on_its_date(world: World) -> None:
    await world.enroll("sakai", "S-1", "12345678901")
    await world.enroll("osaka", "O-1", "12345678901")
    await world.import_records(
        "sakai",
        [
            local_tax("S-1", fiscal_year=2025, income=1),
            local_tax("S-1", fiscal_year=2026, income=2),
        ],
    )
    old = await world.submit("osaka", **tax_query("t-old", "O-1", on_date="2025-12-01"))
    new = await world.submit("osaka", **tax_query("t-new", "O-1", on_date="2026-12-01"))
    assert old.values[0].content.local_tax.total_income == 1
    assert new.values[0].content.local_tax.total_income == 2
    assert (old.values[0].version, new.values[0].version) == (1, 2)


async def test_export_filters_by_item_and_carries_flags(world: World) -> None:
    await world.import_records("jps", [pension("J-1", flagged=True), pension("J-2")], import_id="p")
    exported = await _export(world, "jps", data_item="pension_benefit")
    assert {(r.unified_number, r.auto_response_disabled) for r in exported} == {
        ("J-1", True),
        ("J-2", False),
    }
    assert await _export(world, "jps", data_item="local_tax") == []


async def test_an_export_records_each_person_whose_data_it_took_out(world: World) -> None:
    await world.import_records(
        "jps", [pension("J-1"), pension("J-2"), local_tax("J-2")], import_id="p"
    )

    await _export(world, "jps")

    exported = world.records("jps", event="DUPLICATES_EXPORTED")
    assert {(r["subject"], r["data_items"], r["actor_id"]) for r in exported} == {
        ("J-1", "pension_benefit", "ua.jps"),
        ("J-2", "local_tax,pension_benefit", "ua.jps"),
    }
    assert {r["actor_kind"] for r in exported} == {"ORGANIZATION"}


async def test_auto_response_flag_set_and_clear(world: World) -> None:
    await world.import_records("jps", [pension("J-1")])
    ua = world.ua("jps")

    def request(disabled: bool, item: str = "") -> pb.SetAutoResponseDisabledRequest:
        return pb.SetAutoResponseDisabledRequest(
            parent="organizations/jps", unified_number="J-1", data_item=item, disabled=disabled
        )

    assert (await ua.SetAutoResponseDisabled(request(True))).changed == 1
    assert (await ua.SetAutoResponseDisabled(request(True, "pension_benefit"))).changed == 0
    # A routine re-import does not clear a flag a staff member set.
    await world.import_records("jps", [pension("J-1", amount=5)], import_id="again")
    assert world.count("alpha", "server_auto_response_flags") == 1
    assert (await ua.SetAutoResponseDisabled(request(False))).changed == 1
    error = await remote(
        ua.SetAutoResponseDisabled(
            pb.SetAutoResponseDisabledRequest(
                parent="organizations/jps", unified_number="J-404", disabled=True
            )
        )
    )
    assert (error.code, error.reason) == ("NOT_FOUND", "PERSON_NOT_FOUND")
    # Each accepted request is recorded, changed or not; the refused one is not.
    changes = world.records("jps", event="AUTO_RESPONSE_FLAG_CHANGED")
    assert [(r["subject"], r["reason"], r["data_items"], r["actor_id"]) for r in changes] == [
        ("J-1", "SET", "", "ua.jps"),
        ("J-1", "SET", "pension_benefit", "ua.jps"),
        ("J-1", "CLEARED", "", "ua.jps"),
    ]


async def test_chunk_too_large_is_resource_exhausted(world: World) -> None:
    records = [local_tax(f"S-{n}") for n in range(10_001)]
    error = await remote(world.import_records("sakai", records, chunk=10_001))
    assert (error.code, error.reason) == ("RESOURCE_EXHAUSTED", "CHUNK_TOO_LARGE")
    assert world.count("alpha", "server_duplicates") == 0


async def test_contents_are_sealed_at_rest(world: World) -> None:
    await world.import_records("sakai", [local_tax("S-1", municipality="sakai-secret")])
    with world.engines["alpha"].connect() as connection:
        from sqlalchemy import text

        blob = connection.execute(text("SELECT content FROM server_duplicates")).scalar_one()
    assert b"sakai-secret" not in blob


async def test_expired_duplicate_versions_are_purged(world: World) -> None:
    await world.import_records(
        "sakai",
        [
            local_tax("S-1", fiscal_year=2020, effective_to="2021-05-31"),
            local_tax("S-1", fiscal_year=2026),
        ],
    )
    app = world.platforms["alpha"]
    report = await app.purge_expired()
    assert report.duplicates_deleted == 1  # FY2020 ended 2021-05-31, past the retention
    history = await _export(world, "sakai", include_history=True)
    assert [r.value.version for r in history] == [2]


# --- the CLI --------------------------------------------------------------------------------------


def _line(unified_number: str, **content: object) -> str:
    body = {
        "fiscal_year": 2026,
        "assessing_municipality": "sakai",
        "total_income": 2_000_000,
        "taxable_income": 1_000_000,
        "per_capita_levy": 5_000,
        "income_levy": 100_000,
    }
    body.update(content)
    return json.dumps(
        {
            "unified_number": unified_number,
            "data_item": "local_tax",
            "effective_from": "2026-06-01",
            "content": body,
        }
    )


def _cli_args(world: World, *args: str) -> list[str]:
    app = world.platforms["alpha"]
    return [
        *args,
        "--tenant",
        "sakai",
        "--data-dir",
        str(app.config.data_dir),
        "--database-url",
        app.config.database_url,
        "--platform",
        "alpha",
    ]


async def test_cli_import_export_and_reconcile(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "tax.jsonl"
    source.write_text(
        "# FY2026 local tax\n" + "\n".join(_line(f"S-{n}") for n in range(5)) + "\n\n"
    )
    assert duplicates_cli(_cli_args(world, "import", str(source), "--import-id", "f1")) == 0
    assert "stored 5 rows" in capsys.readouterr().err
    out = tmp_path / "out.jsonl"
    assert duplicates_cli(_cli_args(world, "export", "--output", str(out))) == 0
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(e["unified_number"], e["version"]) for e in exported] == [
        (f"S-{n}", 1) for n in range(5)
    ]
    assert duplicates_cli(_cli_args(world, "reconcile", str(source))) == 0
    # Export and reconcile read the plaintext: each person once per command, as the operator.
    taken_out = world.records("sakai", event="DUPLICATES_EXPORTED")
    assert sorted(r["subject"] for r in taken_out) == sorted(2 * [f"S-{n}" for n in range(5)])
    assert {(r["actor_kind"], r["actor_id"]) for r in taken_out} == {("SYSTEM", "operator")}
    changed = tmp_path / "changed.jsonl"
    changed.write_text(_line("S-0", total_income=7) + "\n" + _line("S-9") + "\n")
    capsys.readouterr()
    assert duplicates_cli(_cli_args(world, "reconcile", str(changed))) == 1
    report = capsys.readouterr().out
    assert f"{changed}:1: S-0 local_tax 2026-06-01: content differs" in report
    assert f"{changed}:2: S-9 local_tax 2026-06-01: missing in the store" in report
    assert "S-1 local_tax 2026-06-01: in the store, not in the originals" in report


async def test_cli_bad_row_names_file_line_and_field_and_stores_nothing(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_text(
        "\n".join(
            [
                _line("S-1"),
                _line("S-2", total_income=-5),
                "{not json",
                _line("S-4", income_levvy=1),
            ]
        )
        + "\n"
    )
    assert duplicates_cli(_cli_args(world, "import", str(source))) == 2
    err = capsys.readouterr().err
    assert f"{source}:2: content.local_tax.total_income: must not be negative" in err
    assert f"{source}:3: line: not JSON" in err
    assert f"{source}:4: content.local_tax:" in err
    assert "nothing was imported" in err
    assert world.count("alpha", "server_duplicates") == 0


async def _never() -> AsyncIterator[pb.ImportDuplicatesRequest]:
    if False:
        yield pb.ImportDuplicatesRequest()


async def test_empty_import_stream_is_invalid(world: World) -> None:
    error = await remote(world.ua("sakai").ImportDuplicates(_never()))
    assert (error.code, error.reason) == ("INVALID_ARGUMENT", "EMPTY_IMPORT")


def test_statuses_are_reexported() -> None:
    assert QS.QUERY_STATUS_PROVIDED == 1
