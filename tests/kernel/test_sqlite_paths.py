"""An SQLite database lives at exactly the path it is given, whatever characters the path
holds: a URL would read ``?`` as its query, ``#`` as a fragment, ``%xx`` as an escape and
``@``/``:`` as a user and password, and open (or create) a different file."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from linkage import db

ODD_NAMES = ["a?mode=ro", "b#c", "d%20e", "f%", "g@h:i", "j k", "京都"]


@pytest.mark.parametrize("name", ODD_NAMES)
def test_an_sqlite_database_is_made_and_read_at_exactly_its_path(tmp_path: Path, name: str) -> None:
    path = tmp_path / name / "app.sqlite"
    path.parent.mkdir()
    url = db.sqlite_url(path)
    db.migrate(url)
    engine = db.make_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE marker (value TEXT)"))
            connection.execute(text("INSERT INTO marker VALUES ('here')"))
    finally:
        engine.dispose()
    probe = db.probe_engine(url)
    try:
        db.ping(probe)
    finally:
        probe.dispose()
    # Only the one directory was touched, and the file in it holds what was written.
    assert [p.name for p in tmp_path.iterdir()] == [name]
    assert path.is_file()
    engine = db.make_engine(url)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT value FROM marker")).scalar_one() == "here"
    finally:
        engine.dispose()
