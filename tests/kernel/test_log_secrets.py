"""A database error logged with its traceback carries no statement parameter and no number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from linkage import db, logs


def test_a_logged_database_error_shows_neither_its_parameters_nor_a_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure(json=True)
    engine = db.make_engine(f"sqlite:///{tmp_path / 'x.sqlite'}")
    secret = "U-SECRET-UNIFIED-NUMBER"
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (v TEXT PRIMARY KEY)"))
        connection.execute(text("INSERT INTO t VALUES (:v)"), {"v": secret})
    try:
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO t VALUES (:v)"), {"v": secret})
    except IntegrityError:
        logs.get_logger(__name__).exception("insert_failed", note="number 123456789012 inside")
    engine.dispose()
    line = capsys.readouterr().err.strip().splitlines()[-1]
    entry = json.loads(line)
    assert "IntegrityError" in entry["exception"]
    assert secret not in line
    assert "123456789012" not in line
