"""A PostgreSQL that does not answer costs a call ``connect_timeout`` seconds, not minutes.

``make_engine`` gives every PostgreSQL engine a connect timeout (5 s unless the URL or the caller
says otherwise) and TCP keepalives; a connection attempt to a host that accepts and then says
nothing fails with an error ``linkage.rpc`` reports as UNAVAILABLE/DATABASE_UNAVAILABLE. No
PostgreSQL is needed: the silent host is a socket that never answers.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from linkage import db
from linkage.rpc import database_unavailable

PG = "postgresql+psycopg://postgres@127.0.0.1:{port}/test"


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel does) and never sends a byte."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


def test_a_postgresql_engine_has_a_connect_timeout_and_keepalives_by_default() -> None:
    args = db.postgres_connect_args(PG.format(port=5432), db.DEFAULT_CONNECT_TIMEOUT)
    assert args["connect_timeout"] == db.DEFAULT_CONNECT_TIMEOUT
    assert args["keepalives"] == 1
    assert args["tcp_user_timeout"] > 0


def test_a_connect_timeout_in_the_url_wins_and_none_means_no_limit() -> None:
    in_url = PG.format(port=5432) + "?connect_timeout=9"
    assert "connect_timeout" not in db.postgres_connect_args(in_url, 3)
    assert "connect_timeout" not in db.postgres_connect_args(PG.format(port=5432), None)
    with pytest.raises(ValueError, match="positive"):
        db.postgres_connect_args(PG.format(port=5432), 0)


def test_sqlite_engines_get_no_postgresql_parameters() -> None:
    assert db.postgres_connect_args("sqlite+pysqlite:///x.sqlite", 5) == {}


def test_a_silent_database_fails_after_the_connect_timeout_as_unavailable(
    silent_port: int,
) -> None:
    engine = db.make_engine(PG.format(port=silent_port), connect_timeout=2)
    started = time.monotonic()
    try:
        with pytest.raises(OperationalError) as failed:
            db.ping(engine)
    finally:
        engine.dispose()
    elapsed = time.monotonic() - started
    assert 1.5 <= elapsed < 6, elapsed
    assert database_unavailable(failed.value)


def test_a_probe_engine_keeps_no_connection_and_says_when_the_database_is_away(
    silent_port: int,
) -> None:
    probe = db.probe_engine(PG.format(port=silent_port), connect_timeout=2)
    try:
        with pytest.raises(OperationalError):
            db.ping(probe)
        assert isinstance(probe.pool, NullPool)
    finally:
        probe.dispose()
