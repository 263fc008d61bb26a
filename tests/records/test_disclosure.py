"""Disclosure to a person, and the export an auditor verifies without our database."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from pathlib import Path

import pytest
from nacl.signing import SigningKey
from sqlalchemy.orm import Session, sessionmaker

from linkage.db import unit_of_work
from linkage.records.disclosure import disclose, export_jsonl
from linkage.records.retention import purge
from linkage.records.verify import ProblemKind, verify_jsonl

from .conftest import KEY_ID, LEDGER, START, Chain, make_record, tamper


@pytest.fixture
def exported(chain: Chain, sessions: sessionmaker[Session], tmp_path: Path) -> Path:
    """The chain fixture exported to a JSON-lines file."""
    path = tmp_path / "export.jsonl"
    with sessions() as session, path.open("w", encoding="utf-8") as out:
        assert export_jsonl(session, LEDGER, out) == 50
    return path


def edit_line(path: Path, seq: int, **changes: object) -> None:
    """Change one record line of an export, as someone with the file could."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    for n, line in enumerate(lines):
        item = json.loads(line)
        if item["type"] == "record" and item["seq"] == seq:
            item.update(changes)
            lines[n] = json.dumps(item, ensure_ascii=False) + "\n"
    path.write_text("".join(lines), encoding="utf-8")


def drop_lines(path: Path, predicate: object) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if not predicate(json.loads(line))]  # type: ignore[operator]
    path.write_text("".join(kept), encoding="utf-8")


# -- disclosure ---------------------------------------------------------------------------------


def test_disclosure_lists_a_persons_records_across_ledgers_oldest_first(
    chain: Chain, sessions: sessionmaker[Session]
) -> None:
    person = "U27140000000007"
    with unit_of_work(sessions) as session:
        chain.ledger.append(
            session, make_record(1, ledger="network", subject=person, occurred_at=START)
        )
    with sessions() as session:
        found = disclose(session, [person])
    assert [(s.record.ledger, s.seq) for s in found] == [("network", 1), (LEDGER, 7)]
    assert found[1].record == chain.records[6]


def test_disclosure_by_several_subject_ids_and_limited_to_a_tenants_ledgers(
    chain: Chain, sessions: sessionmaker[Session]
) -> None:
    with unit_of_work(sessions) as session:
        chain.ledger.append(
            session, make_record(1, ledger="server:osaka", subject="U27140000000003")
        )
    with sessions() as session:
        every = disclose(session, ["U27140000000003", "U27140000000004", "unknown"])
        own = disclose(session, ["U27140000000003", "U27140000000004"], ledgers=[LEDGER])
    assert len(every) == 3
    assert [s.seq for s in own] == [3, 4]


def test_disclosure_of_an_empty_subject_is_refused(sessions: sessionmaker[Session]) -> None:
    with sessions() as session, pytest.raises(ValueError, match="empty"):
        disclose(session, [""])


def test_disclosure_of_many_subjects_is_chunked(
    chain: Chain, sessions: sessionmaker[Session]
) -> None:
    subjects = [f"U27140{i:09d}" for i in range(1, 2001)]
    with sessions() as session:
        assert len(disclose(session, subjects)) == 50


# -- export and independent verification ------------------------------------------------------


def test_an_export_verifies_without_the_database(exported: Path, chain: Chain) -> None:
    report = verify_jsonl(exported, chain.keys)
    assert report.ok, report.describe()
    assert (report.records_checked, report.checkpoints_checked) == (50, 5)


def test_an_export_is_header_checkpoints_records_head_in_that_order(exported: Path) -> None:
    kinds = [json.loads(line)["type"] for line in exported.read_text().splitlines()]
    assert kinds == ["header"] + ["checkpoint"] * 5 + ["record"] * 50 + ["head"]
    first = json.loads(exported.read_text().splitlines()[6])
    assert first["occurred_at"] == "2026-04-01T09:00:01.000000Z"
    assert first["data_items"] == ["local_tax.income", "local_tax.household"]


@pytest.mark.parametrize(
    "change",
    [
        {"subject": "U27140999999999"},
        {"data_items": ["local_tax.income"]},
        {"occurred_at": "2026-04-01T09:00:01.000001Z"},
        {"outcome": "DENIED"},
        {"data_items": ["local_tax.income,local_tax.household"]},
        {"actor_id": "org\u001fcity"},
    ],
)
def test_an_edited_export_line_is_caught_at_its_record(
    exported: Path, chain: Chain, change: dict[str, object]
) -> None:
    edit_line(exported, 12, **change)
    report = verify_jsonl(exported, chain.keys)
    assert report.problem is not None, report.describe()
    assert (report.problem.seq, report.problem.kind) == (12, ProblemKind.EDITED)


def test_a_removed_export_line_is_caught(exported: Path, chain: Chain) -> None:
    drop_lines(exported, lambda item: item["type"] == "record" and item["seq"] == 33)
    report = verify_jsonl(exported, chain.keys)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.kind) == (33, ProblemKind.DELETED)


def test_a_truncated_export_is_caught(exported: Path, chain: Chain) -> None:
    drop_lines(exported, lambda item: item["type"] in ("record", "head") and item["seq"] > 45)
    report = verify_jsonl(exported, chain.keys)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.kind) == (46, ProblemKind.DELETED)


def test_an_export_without_its_head_line_is_caught(exported: Path, chain: Chain) -> None:
    drop_lines(exported, lambda item: item["type"] == "head")
    report = verify_jsonl(exported, chain.keys)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.kind) == (50, ProblemKind.HEAD_MISMATCH)


def test_swapped_export_lines_are_caught(exported: Path, chain: Chain) -> None:
    lines = exported.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[6 + 20], lines[6 + 21] = lines[6 + 21], lines[6 + 20]  # records 21 and 22
    exported.write_text("".join(lines), encoding="utf-8")
    report = verify_jsonl(exported, chain.keys)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.kind) == (21, ProblemKind.REORDERED)


def test_a_tampered_database_exports_its_tampering(
    chain: Chain, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    tamper(chain.engine, "UPDATE access_records SET requester = 'org.spy' WHERE seq = 9")
    out = io.StringIO()
    with sessions() as session:
        export_jsonl(session, LEDGER, out)
    path = tmp_path / "tampered.jsonl"
    path.write_text(out.getvalue(), encoding="utf-8")
    report = verify_jsonl(path, chain.keys)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.kind) == (9, ProblemKind.EDITED)


def test_an_export_after_a_purge_carries_the_anchor(
    chain: Chain, sessions: sessionmaker[Session], signing_key: SigningKey, tmp_path: Path
) -> None:
    with unit_of_work(sessions) as session:
        purge(session, LEDGER, START + timedelta(seconds=21), signing_key, KEY_ID)
    path = tmp_path / "after-purge.jsonl"
    with sessions() as session, path.open("w", encoding="utf-8") as out:
        assert export_jsonl(session, LEDGER, out) == 30
    report = verify_jsonl(path, chain.keys)
    assert report.ok, report.describe()
    assert report.anchor_seq == 20
    lines = path.read_text().splitlines()
    anchor = json.loads(lines[1])
    anchor["seq"] = 19
    lines[1] = json.dumps(anchor)
    path.write_text("\n".join(lines) + "\n")
    report = verify_jsonl(path, chain.keys)
    assert report.problem is not None
    assert report.problem.kind is ProblemKind.BAD_ANCHOR


def test_a_file_that_is_not_an_export_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "not-an-export.jsonl"
    path.write_text('{"hello": "world"}\n')
    with pytest.raises(ValueError, match="not-an-export"):
        verify_jsonl(path, None)
