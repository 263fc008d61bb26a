"""Storage plumbing shared by every system: the declarative base, engines, units of work.

One project-wide ``Base`` (one MetaData, one Alembic history) keeps the schema in one place.
Each system runs on its own database (an SQLite file per system under the data directory, or a
PostgreSQL database) and uses only its own tables, which are prefixed by system: ``network_*``,
``server_*``, ``ua_*``, ``registry_*``; ``access_records`` is shared in shape and keyed by ledger.

SQLite is opened in WAL mode with ``synchronous=NORMAL`` (durable across process crashes, which
is what the fault tests kill) and a busy timeout so concurrent writers wait instead of failing.

PostgreSQL connections get a ``connect_timeout`` (``DEFAULT_CONNECT_TIMEOUT`` unless the URL or
the caller sets one: libpq has none, so a database that does not answer would hold a call and
a worker thread for as long as TCP keeps trying) and TCP keepalives with a user timeout (a
database host that vanishes mid-statement is noticed within a minute, not after TCP's
retransmissions give up, 15 minutes or more). Either failure is an ``OperationalError``, which
``linkage.rpc`` reports as UNAVAILABLE/DATABASE_UNAVAILABLE.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import MetaData, create_engine, event, make_url, text
from sqlalchemy.engine import URL, Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import NullPool

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """The one declarative base; its MetaData carries the naming convention Alembic shares."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of an SQLite file, escaped: a data directory may hold ``?``, ``#``,
    ``%`` or ``@`` in its path, which a URL would otherwise read as its query or user."""
    url = URL.create("sqlite+pysqlite", database=str(path))
    return url.render_as_string(hide_password=False)


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


DEFAULT_CONNECT_TIMEOUT = 5
"""Seconds to wait for a PostgreSQL connection (libpq counts whole seconds, at least 2)."""
KEEPALIVE_IDLE = 15  # seconds of silence before the first TCP keepalive probe
KEEPALIVE_INTERVAL = 5  # seconds between probes
KEEPALIVE_COUNT = 3  # probes unanswered before the connection is dead
TCP_USER_TIMEOUT_MS = 30_000  # sent data unacknowledged this long: the connection is dead


def make_engine(
    url: str, *, echo: bool = False, connect_timeout: int | None = DEFAULT_CONNECT_TIMEOUT
) -> Engine:
    """Create an engine for ``url``; SQLite files get WAL and a busy timeout.

    Statement parameters are hidden from error messages: they are unified numbers, linkage codes
    and hashes, and an error's text ends up in logs.

    PostgreSQL: ``connect_timeout`` seconds for a connection (a ``connect_timeout`` in the URL
    wins; None leaves libpq's default, no limit) and keepalives (see the module docstring).
    """
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            echo=echo,
            hide_parameters=True,
            connect_args={"check_same_thread": False},
        )
        event.listen(engine, "connect", _on_sqlite_connect)
        return engine
    return create_engine(
        url,
        echo=echo,
        hide_parameters=True,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=10,
        connect_args=postgres_connect_args(url, connect_timeout),
    )


def postgres_connect_args(url: str, connect_timeout: int | None) -> dict[str, Any]:
    """libpq parameters for ``url``: the timeouts above, where the URL does not set them."""
    if make_url(url).get_backend_name() != "postgresql":
        return {}
    args: dict[str, Any] = {
        "keepalives": 1,
        "keepalives_idle": KEEPALIVE_IDLE,
        "keepalives_interval": KEEPALIVE_INTERVAL,
        "keepalives_count": KEEPALIVE_COUNT,
        "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
    }
    if connect_timeout is not None:
        if connect_timeout <= 0:
            raise ValueError("connect_timeout must be positive (or None: no limit)")
        args["connect_timeout"] = connect_timeout
    given = make_url(url).query
    return {name: value for name, value in args.items() if name not in given}


def probe_engine(url: str, *, connect_timeout: int | None = DEFAULT_CONNECT_TIMEOUT) -> Engine:
    """An engine for health probes of the database at ``url``: a fresh connection per probe
    (no pool), so a probe tells whether the database answers now, and never waits for, or
    takes, a connection the app's requests need. An SQLite file is opened read-write but never
    created: a probe of a file that was removed fails, rather than make an empty database."""
    parsed = make_url(url)
    database = parsed.database
    options: dict[str, Any] = {"connect_args": postgres_connect_args(url, connect_timeout)}
    plain_file = parsed.drivername in ("sqlite", "sqlite+pysqlite") and not parsed.query
    if plain_file and database not in (None, "", ":memory:"):
        uri = f"file:{quote(str(database))}?mode=rw"
        options = {"creator": lambda: sqlite3.connect(uri, uri=True, check_same_thread=False)}
    return create_engine(url, poolclass=NullPool, hide_parameters=True, **options)


def ping(engine: Engine) -> None:
    """``SELECT 1`` on a connection of ``engine``; raises when the database does not answer."""
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def migrate(url: str) -> None:
    """Bring the database at ``url`` to the newest schema with Alembic (idempotent)."""
    from alembic import command
    from alembic.config import Config

    root = Path(__file__).resolve().parent.parent
    config = Config()
    config.set_main_option("script_location", str(root / "migrations"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(config, "head")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory that never expires objects on commit (we hand them to callers)."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def unit_of_work(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A transaction: commits when the block ends normally, rolls back on any exception.

    Whatever the block did not commit is rolled back on exit, so a failure half-way never
    leaves a half-written change behind.
    """
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
