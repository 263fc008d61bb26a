"""``linkage records``: exit codes and what the operator sees."""

from __future__ import annotations

import json
import sqlite3
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from linkage.db import unit_of_work
from linkage.records.cli import main
from linkage.records.keyfile import load_signing_key, load_verify_keys, save_verify_keys

from .conftest import KEY_ID, LEDGER, Chain, make_record, query, tamper


@pytest.fixture
def keys_file(chain: Chain, tmp_path: Path) -> Path:
    """The verify-key file an auditor is given."""
    path = tmp_path / "verify-keys.json"
    save_verify_keys(path, chain.ledger.verify_keys())
    return path


def test_verify_exits_0_on_an_intact_ledger(
    chain: Chain, keys_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "verify",
                "--database",
                chain.cli_database,
                "--ledger",
                LEDGER,
                "--keys",
                str(keys_file),
            ]
        )
        == 0
    )
    assert "ledger server:sakai: intact: 50 records" in capsys.readouterr().out


def test_verify_exits_1_naming_the_first_bad_record(
    chain: Chain, keys_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tamper(chain.engine, "UPDATE access_records SET subject = 'U27140999999999' WHERE seq = 17")
    url = chain.url  # the URL form, whatever the backend
    assert main(["verify", "--database", url, "--ledger", LEDGER, "--keys", str(keys_file)]) == 1
    assert capsys.readouterr().err.strip() == (
        "ledger server:sakai: record 17: EDITED: hash does not match its content"
    )


def test_verify_without_keys_says_signatures_were_not_checked(
    chain: Chain, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", "--database", chain.cli_database, "--ledger", LEDGER]) == 0
    assert "signatures NOT checked" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--database", "/nonexistent/records.db", "--ledger", LEDGER], "no such database"),
        (["--ledger", "server:nowhere"], "not found"),
    ],
)
def test_verify_exits_2_on_a_missing_database_or_ledger(
    chain: Chain, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    if "--database" not in args:
        args = ["--database", chain.cli_database, *args]
    assert main(["verify", *args]) == 2
    assert message in capsys.readouterr().err


def test_a_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify"]) == 2
    assert "--database" in capsys.readouterr().err


def test_export_then_verify_export_round_trips(
    chain: Chain, keys_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ledger.jsonl"
    assert (
        main(["export", "--database", chain.cli_database, "--ledger", LEDGER, "--output", str(out)])
        == 0
    )
    assert main(["verify-export", str(out), "--keys", str(keys_file)]) == 0
    lines = out.read_text().splitlines()
    lines[10] = lines[10].replace("PROVIDED", "DENIED")
    out.write_text("\n".join(lines) + "\n")
    assert main(["verify-export", str(out), "--keys", str(keys_file)]) == 1
    assert "record 5: EDITED" in capsys.readouterr().err


def test_disclose_prints_a_persons_records_as_json_lines(
    chain: Chain, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["disclose", "--database", chain.cli_database, "--subject", "U27140000000003"]
    assert main([*args, "--subject", "U27140000000004"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(item["seq"], item["subject"]) for item in lines] == [
        (3, "U27140000000003"),
        (4, "U27140000000004"),
    ]
    assert lines[0]["occurred_at"] == "2026-04-01T09:00:03.000000Z"


def test_keygen_and_purge_leave_a_verifying_anchored_chain(
    chain: Chain, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "records-signing.json"
    keys = tmp_path / "keys.json"
    save_verify_keys(keys, chain.ledger.verify_keys())
    assert (
        main(
            [
                "keygen",
                "--signing-key",
                str(secret),
                "--key-id",
                "purge-2033",
                "--verify-keys",
                str(keys),
            ]
        )
        == 0
    )
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert set(load_verify_keys(keys)) == {KEY_ID, "purge-2033"}
    assert load_signing_key(secret)[0] == "purge-2033"
    assert bytes(load_signing_key(secret)[1]).hex() not in capsys.readouterr().out
    cutoff = (chain.records[20].occurred_at + timedelta(microseconds=1)).isoformat()
    args = ["purge", "--database", chain.cli_database, "--ledger", LEDGER]
    assert main([*args, "--signing-key", str(secret), "--older-than", cutoff]) == 0
    assert "purged 21 records" in capsys.readouterr().out
    assert query(chain.engine, "SELECT key_id FROM access_record_anchors") == [("purge-2033",)]
    assert (
        main(["verify", "--database", chain.cli_database, "--ledger", LEDGER, "--keys", str(keys)])
        == 0
    )


def test_purge_refuses_a_signing_key_file_others_can_read(
    chain: Chain, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "records-signing.json"
    assert main(["keygen", "--signing-key", str(secret), "--key-id", "k"]) == 0
    secret.chmod(0o644)
    args = [
        "purge",
        "--database",
        chain.cli_database,
        "--ledger",
        LEDGER,
        "--signing-key",
        str(secret),
    ]
    assert main(args) == 2
    assert "0600" in capsys.readouterr().err


def test_purge_with_the_default_retention_keeps_recent_records(
    chain: Chain, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "records-signing.json"
    assert main(["keygen", "--signing-key", str(secret), "--key-id", "k"]) == 0
    args = [
        "purge",
        "--database",
        chain.cli_database,
        "--ledger",
        LEDGER,
        "--signing-key",
        str(secret),
    ]
    assert main(args) == 0
    assert "purged 0 records" in capsys.readouterr().out


def test_the_cli_module_imports_no_database_or_crypto_library() -> None:
    import subprocess
    import sys

    code = (
        "import sys, linkage.records.cli; "
        "print(any(m in sys.modules for m in ('sqlalchemy', 'nacl')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


# -- verify --all -------------------------------------------------------------------------------


@pytest.fixture
def two_ledgers(chain: Chain, sessions: sessionmaker[Session]) -> Chain:
    """The chain fixture plus a 3-record ``network`` ledger in the same database."""
    with unit_of_work(sessions) as session:
        chain.ledger.append_many(
            session, "network", [make_record(i, ledger="network") for i in range(3)]
        )
    return chain


def test_verify_all_prints_one_line_per_ledger_and_exits_0(
    two_ledgers: Chain, keys_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["verify", "--all", "--database", two_ledgers.cli_database, "--keys", str(keys_file)]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["ledger network", "ledger server"]
    assert lines[0].startswith("ledger network: intact: 3 records")
    assert lines[1].startswith("ledger server:sakai: intact: 50 records")


def test_verify_all_exits_1_if_any_ledger_is_bad_and_still_checks_the_rest(
    two_ledgers: Chain, keys_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tamper(two_ledgers.engine, "UPDATE access_records SET reason = 'X' WHERE ledger = 'network'")
    args = ["verify", "--all", "--database", two_ledgers.url, "--keys", str(keys_file)]
    assert main([*args, "--workers", "1"]) == 1
    out, err = capsys.readouterr()
    assert err.strip() == ("ledger network: record 1: EDITED: hash does not match its content")
    assert out.startswith("ledger server:sakai: intact: 50 records")


def test_verify_all_finds_a_ledger_whose_head_row_was_deleted(
    two_ledgers: Chain, capsys: pytest.CaptureFixture[str]
) -> None:
    tamper(two_ledgers.engine, "DELETE FROM access_record_heads WHERE ledger = 'network'")
    assert main(["verify", "--all", "--database", two_ledgers.cli_database]) == 1
    assert "ledger network: record 3: HEAD_MISMATCH" in capsys.readouterr().err


def test_verify_all_in_a_database_without_ledgers_exits_2(
    database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", "--all", "--database", database]) == 2
    assert "no ledgers" in capsys.readouterr().err


def test_verify_all_in_a_database_without_the_tables_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    assert main(["verify", "--all", "--database", str(empty)]) == 2
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra",
    [["--all", "--ledger", LEDGER], ["--all", "--workers", "0"], []],
)
def test_verify_needs_either_all_or_ledgers_and_positive_workers(
    chain: Chain, capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    assert main(["verify", "--database", chain.cli_database, *extra]) == 2
    capsys.readouterr()
