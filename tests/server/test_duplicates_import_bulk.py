"""The bulk import path of ``linkage duplicates import``: fast reader, pipeline, storing side.

Each part is held against the reference it replaces: the fast reader against ``ParseDict`` and
the server's own checks (``ImportBuffer``), the bulk store against ``DuplicateStore`` (same
versions, periods, flags, contents), the forked worker against the same CLI in one process.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from bench import storage
from linkage import db
from linkage.atrest import DataKey, DecryptionError
from linkage.keys import KeyRing
from linkage.records.ledger import Ledger
from linkage.v1 import common_pb2
from server import content as content_checks
from server import duplicates_pipeline as pipeline
from server.cli_duplicates import main as duplicates_cli
from server.duplicates import DuplicateStore, ImportBuffer, open_content
from server.duplicates_bulk import BulkImport, InlineSource
from server.duplicates_file import _record
from server.duplicates_pipeline import MAX_ERRORS, Summary, Workers, merge_summaries, shard_of
from server.duplicates_rows import Row, parse_line, read_rows, record_row
from server.records import Recorder
from server.tenancy import Tenant

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)

# --- the fast reader against the reference ------------------------------------------------------

_CONTENTS: dict[str, dict[str, Any]] = {
    "local_tax": {
        "fiscal_year": 2026,
        "assessing_municipality": "sakai",
        "total_income": 2_400_000,
        "taxable_income": 1_300_000,
        "per_capita_levy": 5_000,
        "income_levy": 130_000,
        "non_taxable": False,
    },
    "resident_record": {
        "municipality": "sakai",
        "household_code": "H-1",
        "relationship": "head",
        "household_size": 2,
        "moved_in_on": "2020-04-01",
        "previous_municipality": "osaka",
    },
    "pension_benefit": {
        "fiscal_year": 2026,
        "pension_kind": "PENSION_KIND_OLD_AGE_BASIC",
        "annual_amount": 780_000,
        "payer": "jps",
    },
    "late_stage_medical_premium": {
        "fiscal_year": 2026,
        "annual_premium": 80_000,
        "collection_method": "COLLECTION_METHOD_SPECIAL",
    },
    "special_collection_notice": {
        "fiscal_year": 2026,
        "amount_per_payment": 13_000,
        "first_month": 4,
        "pension_payer": "jps",
    },
}
# Odd values a field may get: wrong JSON types, bounds, shapes the reference treats its own way.
_ODD_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1988,
    2101,
    2**31,
    -(2**31) - 1,
    2**63,
    1.0,
    2026.5,
    "2026",
    " 7",
    "",
    "Sakai City",
    "x" * 70,
    "\ud800",
    "tab\there",
    "2026-02-30",
    "20260601",
    "PENSION_KIND_SURVIVORS",
    "PENSION_KIND_UNSPECIFIED",
    "COLLECTION_METHOD_ORDINARY",
    "PENSION_KIND_NOPE",
    7,
    [],
    {},
]


def _line(**changes: Any) -> dict[str, Any]:
    item = changes.pop("data_item", "local_tax")
    data: dict[str, Any] = {
        "unified_number": "U-1",
        "data_item": item,
        "effective_from": "2026-06-01",
        "effective_to": "",
        "auto_response_disabled": False,
        "content": dict(
            _CONTENTS[item if isinstance(item, str) and item in _CONTENTS else "local_tax"]
        ),
    }
    data.update(changes)
    return data


def _variants() -> Iterator[Any]:
    """Lines of every data item with each field and key given odd values, and odd lines."""
    rng = random.Random(7)
    for item, body in _CONTENTS.items():
        yield _line(data_item=item)
        yield _line(data_item=item, content={})
        for name in body:
            for value in _ODD_VALUES:
                yield _line(data_item=item, content={**body, name: value})
            without = dict(body)
            del without[name]
            yield _line(data_item=item, content=without)
            camel = "".join(p if i == 0 else p.title() for i, p in enumerate(name.split("_")))
            yield _line(data_item=item, content={**{k: v for k, v in body.items()}, camel: 1})
        yield _line(data_item=item, content={**body, "unknown_field": 1})
        for _ in range(40):  # several odd fields at once
            mixed = dict(body)
            for name in rng.sample(sorted(body), k=min(2, len(body))):
                mixed[name] = rng.choice(_ODD_VALUES)
            yield _line(data_item=item, content=mixed)
    for key in ("unified_number", "data_item", "effective_from", "effective_to"):
        for value in _ODD_VALUES:
            yield _line(**{key: value})
    for value in _ODD_VALUES:
        yield _line(auto_response_disabled=value)
        yield _line(content=value)
    yield _line(unified_number="123456789012")  # the shape of an individual number
    yield _line(effective_to="2026-05-31")  # before effective_from
    yield _line(effective_to="2027-03-31", auto_response_disabled=True, version=9)
    yield _line(data_item="pension_benefit", content=_CONTENTS["local_tax"])
    yield _line(data_item="nope")
    yield _line(extra=1)
    yield [1, 2]
    yield "text"


def _reference(text_line: str) -> Any:
    try:
        data = json.loads(text_line.strip())
    except json.JSONDecodeError as error:
        return [("line", f"not JSON ({error.msg})")]
    record, field_name, reason = _record(data)
    if record is None:
        return [(field_name, reason)]
    found = record_row(record, "f", 1)
    return found if isinstance(found, tuple) else [(e.field, e.reason) for e in found]


def _fast(text_line: str) -> Any:
    found = parse_line(text_line, "f", 1)
    assert found is not None
    return found if isinstance(found, tuple) else [(e.field, e.reason) for e in found]


def test_the_fast_reader_agrees_with_the_reference_on_every_odd_line() -> None:
    lines = [json.dumps(v) for v in _variants()]
    lines += ["{not json", '{"a": 1} x', "[1,", '{"unified_number": "U-1"}}', "nan"]
    assert len(lines) > 1000
    accepted = 0
    for text_line in lines:
        expected = _reference(text_line)
        assert _fast(text_line) == expected, text_line
        accepted += isinstance(expected, tuple)
    assert 10 < accepted < len(lines) - 100  # both sides of the line are exercised


def test_the_fast_reader_checks_what_the_server_checks() -> None:
    """Rows it accepts pass ImportBuffer; lines ImportBuffer refuses it refuses."""
    lines = [json.dumps(v) for v in _variants()]
    for text_line in lines:
        data = json.loads(text_line)
        record, _, _ = _record(data)
        if record is None:
            continue
        buffer = ImportBuffer()
        buffer.add([record])
        found = _fast(text_line)
        assert isinstance(found, tuple) == (not buffer.violations), text_line
        if isinstance(found, tuple):
            assert found[4] == buffer.rows[0].content


def test_a_bad_line_names_its_fields_not_its_values() -> None:
    bad = json.dumps(
        _line(unified_number="123456789012", content={**_CONTENTS["local_tax"], "total_income": -5})
    )
    errors = parse_line(bad, "tax.jsonl", 4)
    assert isinstance(errors, list)
    assert [str(e) for e in errors] == [
        "tax.jsonl:4: unified_number: has the shape of an individual number, which this server "
        "never accepts",
        "tax.jsonl:4: content.local_tax.total_income: must not be negative",
    ]
    assert "123456789012" not in " ".join(map(str, errors))


def test_quick_content_tests_never_pass_what_the_checks_refuse() -> None:
    rng = random.Random(11)
    ints = [-1, 0, 1, 12, 13, 1988, 1989, 2026, 2100, 2101, 5, 10**9]
    strings = ["", "sakai", "Sakai", "a" * 33, "x\ty", "2026-01-01", "2026-13-01", "h" * 65]
    for item, body in _CONTENTS.items():
        message_type = type(getattr(common_pb2.DataItemContent(), item))
        for _ in range(3000):
            values: dict[str, Any] = {}
            for name, sample in body.items():
                if isinstance(sample, bool):
                    values[name] = rng.choice([True, False])
                elif isinstance(sample, int):
                    values[name] = rng.choice(ints)
                elif name in ("pension_kind", "collection_method"):
                    values[name] = rng.choice([0, 1, 2, 3, 4, 9])
                else:
                    values[name] = rng.choice(strings)
            message = message_type(**values)
            checks = content_checks.typed_content_violations(item, message, "p")
            assert not (content_checks._CLEAN[item](message) and checks), (item, values)


def test_unified_number_ok_is_the_problem_check() -> None:
    for value in ["U-1", "", "-a", "a" * 64, "a" * 65, "123456789012", "12345678901", "ü", "A_B"]:
        assert content_checks.unified_number_ok(value) == (
            content_checks.unified_number_problem(value) is None
        )


# --- the storing side against DuplicateStore ---------------------------------------------------


class _Platform:
    """A migrated database, a tenant with its keys, and both import paths onto it."""

    def __init__(self, url: str, directory: Path) -> None:
        self.engine = db.make_engine(url)
        self.sessions: sessionmaker[Session] = db.session_factory(self.engine)
        directory.mkdir(parents=True, exist_ok=True)
        ring = KeyRing.load_or_create(directory, "platform-t")
        self.recorder = Recorder(Ledger(ring.current.signing_key, ring.current.key_id))
        self.key_path = directory / "data-jps.key"
        key = DataKey.load_or_create(self.key_path)
        self.tenant = Tenant("jps", [], KeyRing.load_or_create(directory, "org-jps"), key)
        self.store = DuplicateStore(self.sessions, self.recorder, lambda: NOW)

    def bulk(self, chunk_rows: int) -> BulkImport:
        return BulkImport(
            self.sessions,
            self.recorder,
            lambda: NOW,
            "jps",
            self.key_path,
            chunk_rows=chunk_rows,
        )

    def table(self) -> list[tuple[Any, ...]]:
        """Every stored version, its content opened, in id order."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT id, unified_number, data_item, version, effective_from, "
                    "effective_to, is_latest, replaced_at, content, import_id FROM "
                    "server_duplicates ORDER BY id"
                )
            ).all()
        out = []
        for row in rows:
            opened = open_content(
                self.tenant.data_key, "jps", row[1], row[2], row[3], row[8]
            ).SerializeToString()
            out.append((*row[:8], opened, row[9]))
        return out

    def flags(self) -> list[tuple[Any, ...]]:
        with self.engine.connect() as connection:
            return list(
                connection.execute(
                    text(
                        "SELECT unified_number, data_item FROM server_auto_response_flags "
                        "ORDER BY 1, 2"
                    )
                ).all()
            )

    def close(self) -> None:
        self.engine.dispose()


def _rows(lines: list[str]) -> list[Row]:
    rows = [found for _, found in read_rows(lines, "f")]
    assert all(isinstance(row, tuple) for row in rows)
    return rows  # type: ignore[return-value]


def _random_lines(rng: random.Random, count: int, people: int) -> list[str]:
    """Lines with repeated (person, item) keys and periods that overlap, start earlier or later."""
    starts = ["2026-04-01", "2026-06-01", "2026-06-01", "2026-09-15", "2027-01-01", "2025-04-01"]
    ends = ["", "", "2026-12-31", "2027-03-31", "2028-03-31"]
    lines = []
    for _ in range(count):
        item = rng.choice(["local_tax", "pension_benefit"])
        start = rng.choice(starts)
        end = rng.choice([e for e in ends if not e or e >= start])
        content = dict(_CONTENTS[item])
        amount_field = "total_income" if item == "local_tax" else "annual_amount"
        content[amount_field] = rng.randrange(2_000_000, 3_000_000)
        lines.append(
            json.dumps(
                {
                    "unified_number": f"P-{rng.randrange(people)}",
                    "data_item": item,
                    "effective_from": start,
                    "effective_to": end,
                    "auto_response_disabled": rng.random() < 0.1,
                    "content": content,
                }
            )
        )
    return lines


@pytest.fixture
def platforms(
    database_url: Callable[[str], str], tmp_path: Path
) -> Iterator[tuple[_Platform, _Platform]]:
    reference = _Platform(database_url("reference"), tmp_path / "reference")
    bulk = _Platform(database_url("bulk"), tmp_path / "bulk")
    # The same data key on both, so contents compare after opening.
    bulk.key_path.write_bytes(reference.key_path.read_bytes())
    bulk.tenant.data_key = DataKey(reference.key_path.read_bytes())
    yield reference, bulk
    reference.close()
    bulk.close()


@pytest.mark.parametrize("chunk_rows", [1, 7, 2_000])
def test_bulk_import_stores_what_the_store_stores(
    platforms: tuple[_Platform, _Platform], chunk_rows: int
) -> None:
    reference, bulk = platforms
    rng = random.Random(chunk_rows)
    for import_id in ("first", "second", "third"):
        lines = _random_lines(rng, 120, people=25)
        rows = _rows(lines)
        records = [_record(json.loads(line))[0] for line in lines]
        buffer = ImportBuffer()
        buffer.add(records)  # type: ignore[arg-type]
        buffer.check()
        expected = reference.store.store_import(reference.tenant, import_id, "bs", buffer.rows)
        key = bulk.tenant.data_key
        got = bulk.bulk(chunk_rows).run(
            import_id,
            "bs",
            lambda rows=rows, key=key: InlineSource(rows, "f", key),  # type: ignore[misc]
            keys={(row[0], row[1]) for row in rows},
        )
        assert (got.imported, got.superseded, got.already_imported) == (
            expected.imported,
            expected.superseded,
            False,
        )
        assert expected.superseded > 0
    assert bulk.table() == reference.table()
    assert bulk.flags() == reference.flags()


def test_a_snapshot_of_the_whole_tenant_gives_the_same_versions(
    platforms: tuple[_Platform, _Platform],
) -> None:
    """The forked path reads every latest version of the tenant (keys=None)."""
    reference, bulk = platforms
    rng = random.Random(3)
    for import_id in ("a", "b"):
        lines = _random_lines(rng, 60, people=10)
        rows = _rows(lines)
        records = [_record(json.loads(line))[0] for line in lines]
        buffer = ImportBuffer()
        buffer.add(records)  # type: ignore[arg-type]
        reference.store.store_import(reference.tenant, import_id, "bs", buffer.rows)
        source = InlineSource(rows, "f", bulk.tenant.data_key)
        bulk.bulk(5).run(import_id, "bs", lambda source=source: source)  # type: ignore[misc]
    assert bulk.table() == reference.table()


def test_bulk_import_is_idempotent_and_all_or_nothing(
    platforms: tuple[_Platform, _Platform],
) -> None:
    _, bulk = platforms
    key = bulk.tenant.data_key
    lines = _random_lines(random.Random(5), 30, people=30)
    rows = _rows(lines)
    first = bulk.bulk(4).run("once", "bs", lambda: InlineSource(rows, "f", key))
    again = bulk.bulk(4).run("once", "bs", lambda: InlineSource(rows, "f", key))
    assert (first.imported, first.already_imported) == (30, False)
    assert (again.imported, again.already_imported) == (30, True)
    assert len(bulk.table()) == 30

    class Failing(InlineSource):
        def messages(self) -> Iterator[tuple[str, Any]]:
            for message in super().messages():
                yield message
                if message[0] == "rows":
                    yield "crash", "import worker failed: OSError"

    with pytest.raises(RuntimeError, match="import worker failed"):
        bulk.bulk(4).run("broken", "bs", lambda: Failing(rows, "f", key))
    assert len(bulk.table()) == 30  # the chunk already inserted was rolled back


def test_sealed_contents_open_only_in_their_own_row(platforms: tuple[_Platform, _Platform]) -> None:
    _, bulk = platforms
    key = bulk.tenant.data_key
    lines = _random_lines(random.Random(9), 10, people=10)
    rows = _rows(lines)
    bulk.bulk(3).run("sealed", "bs", lambda: InlineSource(rows, "f", key))
    with bulk.engine.connect() as connection:
        stored = connection.execute(
            text("SELECT unified_number, data_item, version, content FROM server_duplicates")
        ).all()
    for number, item, version, token in stored:
        assert b"sakai" not in token  # no plaintext at rest
        assert b"jps" not in token
        open_content(key, "jps", number, item, version, token)
        with pytest.raises(DecryptionError):
            open_content(key, "jps", number, item, version + 1, token)


def test_encrypt_many_seals_each_value_for_its_context() -> None:
    key = DataKey.generate()
    plaintexts = [b"a", b"b", b"a"]
    contexts = [b"one", b"two", b"three"]
    tokens = key.encrypt_many(plaintexts, contexts)
    assert len({token[9:21] for token in tokens}) == 3  # a nonce of its own each
    assert [key.decrypt(t, context=c) for t, c in zip(tokens, contexts, strict=True)] == plaintexts
    with pytest.raises(DecryptionError):
        key.decrypt(tokens[0], context=b"two")
    with pytest.raises(ValueError, match="context"):
        key.encrypt_many([b"a"], [b""])
    with pytest.raises(ValueError, match="one context per plaintext"):
        key.encrypt_many([b"a"], [])


# --- the CLI, forked worker and all -------------------------------------------------------------


def _fresh_platform(directory: Path, lines: list[str]) -> Path:
    directory.mkdir(parents=True)
    db.migrate(db.sqlite_url(directory / "server.sqlite"))
    source = directory / "d.jsonl"
    source.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return source


def _cli(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``linkage duplicates`` as a fresh process (the worker is forked there, not in pytest)."""
    command = [sys.executable, "-m", "linkage.cli", "duplicates", *args]
    command += ["--tenant", "jps", "--data-dir", str(directory), "--platform", "jps"]
    return subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, timeout=300, check=False
    )


def _stored(directory: Path) -> list[tuple[Any, ...]]:
    connection = sqlite3.connect(directory / "server.sqlite")
    try:
        return connection.execute(
            "SELECT unified_number, data_item, version, effective_from, effective_to, "
            "is_latest, replaced_at IS NOT NULL FROM server_duplicates ORDER BY id"
        ).fetchall()
    finally:
        connection.close()


def _big_lines(count: int, seed: int) -> list[str]:
    """Over ``PIPELINE_MIN_BYTES`` (the forked path), with supersession across chunks."""
    return _random_lines(random.Random(seed), count, people=count // 3)


def test_cli_forked_pipeline_stores_what_one_process_stores(tmp_path: Path) -> None:
    lines = _big_lines(6_000, seed=1)
    assert sum(len(line) + 1 for line in lines) > 1 << 20
    forked = _fresh_platform(tmp_path / "forked", lines)
    _fresh_platform(tmp_path / "inline", lines)
    done = _cli(tmp_path / "forked", "import", str(forked), "--import-id", "big")
    assert done.returncode == 0, done.stderr
    assert "stored 6,000 rows" in done.stderr
    # The same file under the size limit of the forked path: split in pieces read whole.
    for part in range(0, 6_000, 2_000):
        piece = tmp_path / f"piece{part}.jsonl"
        piece.write_text("".join(line + "\n" for line in lines[part : part + 2_000]))
        assert piece.stat().st_size < 1 << 20
        done = _cli(tmp_path / "inline", "import", str(piece), "--import-id", f"p{part}")
        assert done.returncode == 0, done.stderr
    forked_rows, inline_rows = _stored(tmp_path / "forked"), _stored(tmp_path / "inline")
    assert len(forked_rows) == 6_000
    assert [row[:6] for row in forked_rows] == [row[:6] for row in inline_rows]
    assert sum(1 for row in forked_rows if not row[5]) > 1_000  # many superseded
    again = _cli(tmp_path / "forked", "import", str(forked), "--import-id", "big")
    assert again.returncode == 0
    assert "already imported" in again.stderr
    reconcile = _cli(tmp_path / "forked", "reconcile", str(forked))
    assert "6,000 originals" in reconcile.stderr or reconcile.returncode in (0, 1)


def test_cli_forked_pipeline_bad_lines_store_nothing(tmp_path: Path) -> None:
    lines = _big_lines(6_000, seed=2)
    lines[5_500] = lines[5_500].replace('"fiscal_year": 2026', '"fiscal_year": 1066')
    lines[5_900] = "{broken"
    source = _fresh_platform(tmp_path / "p", lines)
    done = _cli(tmp_path / "p", "import", str(source))
    assert done.returncode == 2
    assert f"{source}:5501: content." in done.stderr
    assert "fiscal_year: must be between 1989 and 2100" in done.stderr
    assert f"{source}:5901: line: not JSON" in done.stderr
    assert "nothing was imported" in done.stderr
    assert _stored(tmp_path / "p") == []


def test_cli_forked_pipeline_on_the_bench_file(tmp_path: Path) -> None:
    directory = tmp_path / "bench"
    directory.mkdir()
    db.migrate(db.sqlite_url(directory / "server.sqlite"))
    source = storage.duplicate_file(directory / "d.jsonl", 5_000)
    done = _cli(directory, "import", str(source), "--import-id", "bench")
    assert done.returncode == 0, done.stderr
    rows = _stored(directory)
    assert len(rows) == 5_000
    assert {row[2] for row in rows} == {1}
    assert {row[3] for row in rows} == {"2026-04-01"}


def test_cli_small_file_reports_bad_lines_before_opening_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_text(
        json.dumps(_line(content={**_CONTENTS["local_tax"], "fiscal_yeer": 1})) + "\n"
    )
    code = duplicates_cli(["import", str(source), "--tenant", "jps", "--data-dir", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{source}:1: content.local_tax:" in err
    assert "nothing was imported" in err
    assert not (tmp_path / "keys").exists()  # no key made for a refused file


def test_dates_reach_the_database_as_the_orm_writes_them(tmp_path: Path) -> None:
    lines = [json.dumps(_line(effective_to="2027-03-31"))]
    _fresh_platform(tmp_path / "p", lines)
    source = tmp_path / "p" / "d.jsonl"
    done = _cli(tmp_path / "p", "import", str(source))
    assert done.returncode == 0, done.stderr
    assert _stored(tmp_path / "p") == [("U-1", "local_tax", 1, "2026-06-01", "2027-03-31", 1, 0)]
    assert date.fromisoformat("2027-03-31")  # the form SQLAlchemy's Date writes on SQLite


def test_cli_imports_into_a_data_directory_whose_path_reads_like_a_url(tmp_path: Path) -> None:
    directory = tmp_path / "platform?mode=ro#x%20y"
    source = _fresh_platform(directory, [json.dumps(_line())])
    done = _cli(directory, "import", str(source))
    assert done.returncode == 0, done.stderr
    assert _stored(directory) == [("U-1", "local_tax", 1, "2026-06-01", None, 1, 0)]
    assert [p.name for p in tmp_path.iterdir()] == [directory.name]


# --- several workers, each sealing its own people ----------------------------------------------


def _tricky_lines() -> list[str]:
    """Lines whose person only decoding can tell, or that name it in odd places."""
    good = json.dumps(_line(unified_number="P-7"))
    return [
        good.replace('"P-7"', '"P\\u002d7"'),  # the same person, spelled with an escape
        good.replace(
            '"unified_number": "P-7"', '"unified_number": "P-8", "unified\\u005fnumber": "P-9"'
        ),
        good.replace('"unified_number": "P-7"', '"unified_number": "P-1", "unified_number": "P-2"'),
        json.dumps({**_line(), "content": {"unified_number": "P-3"}}),
        '{"x\\"unified_number": "P-4"}',
        '{"unified_number": 12, "data_item": "local_tax"}',
        '{"unified_number": "P-5", broken',
        '# a comment naming "unified_number": "P-6"',
        "",
        "{not json",
    ]


def _sharded_lines() -> list[str]:
    lines = [json.dumps(v) for v in _variants()]
    lines += _random_lines(random.Random(3), 400, people=60)
    lines += _tricky_lines() * 3
    random.Random(4).shuffle(lines)
    return lines


@pytest.mark.parametrize("shards", [2, 3])
def test_shards_read_every_line_once_and_each_person_whole(shards: int) -> None:
    lines = _sharded_lines()
    whole = list(read_rows(lines, "f"))
    parts = [list(read_rows(lines, "f", shard=k, shards=shards)) for k in range(shards)]
    merged = sorted((found for part in parts for found in part), key=lambda found: found[0])
    assert [(n, str(r)) for n, r in merged] == [(n, str(r)) for n, r in whole]
    for shard, part in enumerate(parts):
        people = {found[0] for _, found in part if isinstance(found, tuple)}
        assert all(shard_of(person, shards) == shard for person in people)
        assert part, "every shard gets some lines"
    assert sum(isinstance(found, tuple) for _, found in whole) > 300


def _summary(lines_and_errors: list[tuple[int, str]], imported: int) -> Summary:
    summary = Summary(imported=imported, error_count=len(lines_and_errors))
    summary.error_lines = [line for line, _ in lines_and_errors]
    summary.errors = [error for _, error in lines_and_errors]
    return summary


def test_merged_summaries_keep_the_first_errors_by_line() -> None:
    odd = _summary([(n, f"f:{n}: x: bad") for n in range(1, 200, 2)][:MAX_ERRORS], 0)
    odd.error_count = 100
    even = _summary([(n, f"f:{n}: x: bad") for n in range(2, 200, 2)][:MAX_ERRORS], 0)
    even.error_count = 99
    merged = merge_summaries([odd, even], "f", 1_000)
    assert merged.errors == [f"f:{n}: x: bad" for n in range(1, MAX_ERRORS + 1)]
    assert merged.error_count == 199


def test_merged_summaries_hold_the_import_limit_over_all_workers() -> None:
    merged = merge_summaries([_summary([], 3), _summary([], 3)], "f", 5)
    assert merged.errors == ["f: an import holds at most 5 records"]
    assert merged.error_count == 1
    assert not merge_summaries([_summary([], 3), _summary([], 2)], "f", 5).errors


def _stored_by_key(directory: Path) -> list[tuple[Any, ...]]:
    return sorted(row[:7] for row in _stored(directory))


def test_cli_several_workers_store_what_one_worker_stores(tmp_path: Path) -> None:
    lines = _big_lines(6_000, seed=5)
    one = _fresh_platform(tmp_path / "one", lines)
    three = _fresh_platform(tmp_path / "three", lines)
    done = _cli(tmp_path / "one", "import", str(one), "--workers", "1")
    assert done.returncode == 0, done.stderr
    done = _cli(tmp_path / "three", "import", str(three), "--workers", "3")
    assert done.returncode == 0, done.stderr
    assert "stored 6,000 rows" in done.stderr
    rows = _stored_by_key(tmp_path / "three")
    assert rows == _stored_by_key(tmp_path / "one")
    assert sum(1 for row in rows if not row[5]) > 1_000  # supersession, across chunks


def test_cli_several_workers_report_bad_lines_in_order_and_store_nothing(tmp_path: Path) -> None:
    lines = _big_lines(6_000, seed=6)
    bad = [10, 11, 2_500, 4_000, 5_999]
    for index in bad:
        lines[index] = lines[index].replace('"data_item": "', '"data_item": "no_such_')
    lines[3_000] = "{broken"
    source = _fresh_platform(tmp_path / "p", lines)
    done = _cli(tmp_path / "p", "import", str(source), "--workers", "2")
    assert done.returncode == 2
    reported = [
        int(line.split(":")[1])
        for line in done.stderr.splitlines()
        if ": " in line and line.startswith(str(source))
    ]
    assert reported == sorted([index + 1 for index in bad] + [3_001])
    assert "nothing was imported" in done.stderr
    assert _stored(tmp_path / "p") == []


def test_cli_refuses_a_worker_count_out_of_range(tmp_path: Path) -> None:
    source = _fresh_platform(tmp_path / "p", _big_lines(10, seed=7))
    done = _cli(tmp_path / "p", "import", str(source), "--workers", "0")
    assert done.returncode == 2
    assert "--workers: must be from 1 to" in done.stderr


# --- processes killed mid-way -------------------------------------------------------------------


def _started_import(directory: Path, source: Path, *args: str) -> subprocess.Popen[str]:
    """``linkage duplicates import`` running, returned once it has stored its first rows."""
    command = [sys.executable, "-m", "linkage.cli", "duplicates", "import", str(source), *args]
    command += ["--tenant", "jps", "--data-dir", str(directory), "--platform", "jps"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert process.stderr is not None
    for line in process.stderr:  # progress, one line per 50,000 rows stored
        if line.startswith("stored: "):
            return process
    process.wait()
    raise AssertionError(f"the import ended before storing anything (exit {process.returncode})")


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as handle:
        return [int(child) for child in handle.read().split()]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def big_import(tmp_path: Path) -> tuple[Path, Path]:
    directory = tmp_path / "p"
    directory.mkdir()
    db.migrate(db.sqlite_url(directory / "server.sqlite"))
    return directory, storage.duplicate_file(directory / "d.jsonl", 200_000)


def test_a_worker_killed_mid_import_fails_it_and_stores_nothing(
    big_import: tuple[Path, Path],
) -> None:
    directory, source = big_import
    process = _started_import(directory, source, "--workers", "2")
    workers = _children(process.pid)
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    _, errors = process.communicate(timeout=120)
    assert process.returncode == 2
    assert "the import worker ended without finishing" in errors
    assert _stored(directory) == []
    assert not any(_alive(worker) for worker in workers)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_import_killed_mid_way_stores_nothing_and_its_retry_stores_it_once(
    big_import: tuple[Path, Path], workers: str
) -> None:
    directory, source = big_import
    process = _started_import(directory, source, "--workers", workers, "--import-id", "k")
    children = _children(process.pid)
    process.kill()
    process.communicate()
    assert _stored(directory) == []
    done = _cli(directory, "import", str(source), "--import-id", "k", "--workers", workers)
    assert done.returncode == 0, done.stderr
    assert len(_stored(directory)) == 200_000
    assert not any(_alive(child) for child in children)  # the orphaned workers ended too


class _FakeWorker:
    """A worker's message stream as a list; ``fail`` is raised after the messages."""

    def __init__(self, messages: list[tuple[str, Any]], fail: BaseException | None = None) -> None:
        self._messages = messages
        self._fail = fail

    def send_setup(self, setup: Any) -> None:
        pass

    def messages(self) -> Iterator[tuple[str, Any]]:
        yield from self._messages
        if self._fail is not None:
            raise self._fail

    def end(self) -> None:
        pass

    def close(self, *, finished: bool = False) -> None:
        pass


def _drain(workers: list[_FakeWorker]) -> list[tuple[str, Any]]:
    source = Workers(workers, "f")  # type: ignore[arg-type]
    try:
        return list(source.messages())
    finally:
        source.close()


def test_a_worker_that_fails_in_any_way_crashes_the_stream_instead_of_hanging() -> None:
    for failure in (MemoryError(), AttributeError("x"), RuntimeError("pipe ended")):
        got = _drain([_FakeWorker([("rows", [1, 2])], failure), _FakeWorker([("end", Summary())])])
        kinds = [kind for kind, _ in got]
        assert kinds[-1] == "crash", failure
        assert "the import worker ended without finishing" in got[-1][1]


def test_rows_stop_reaching_the_store_once_any_worker_found_a_bad_line() -> None:
    failed = _summary([(7, "f:7: x: bad")], 2)
    got = _drain(
        [_FakeWorker([("rows", [1, 2]), ("failed", None), ("rows", [3]), ("end", failed)])]
    )
    assert [kind for kind, _ in got] == ["rows", "end"]
    assert got[-1][1].errors == ["f:7: x: bad"]


def test_rows_stop_reaching_the_store_past_the_limit_of_all_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipeline, "MAX_IMPORT_RECORDS", 5)
    got = _drain(
        [
            _FakeWorker([("rows", [1, 2, 3]), ("end", _summary([], 3))]),
            _FakeWorker([("rows", [4, 5, 6]), ("end", _summary([], 3))]),
        ]
    )
    assert [kind for kind, _ in got] == ["rows", "end"]
    assert got[-1][1].errors == ["f: an import holds at most 5 records"]
