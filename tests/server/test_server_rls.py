"""PostgreSQL row-level security keeps a transaction bound to one tenant off other tenants' rows.

Migration 0004 enables and FORCEs row-level security on every ``server_*`` table. Superusers
always bypass it (and the suite connects as ``postgres``), so these tests connect as an ordinary
role, ``linkage_app`` (LOGIN, NOSUPERUSER, NOBYPASSRLS), made the owner of the test schema's
tables, which also proves FORCE: the owner is subject to the policy. That is the deployment
requirement: the platform must connect as such a role. Skipped on SQLite (no row-level security).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest
from server_support import ALPHA, QS, World, bearer, pb, pension, pension_query, remote
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.sql.elements import TextClause

from linkage.v1 import review_pb2, staff_pb2
from server import repository as repo
from tests.conftest import BACKEND, POSTGRES_BASE, DatabaseUrl

pytestmark = pytest.mark.skipif(
    BACKEND != "postgresql", reason="row-level security is PostgreSQL's (LINKAGE_TEST_DATABASE)"
)

APP_ROLE = "linkage_app"
TABLES = (
    "server_linkage_codes",
    "server_duplicates",
    "server_auto_response_flags",
    "server_imports",
    "server_query_keys",
    "server_queries",
    "server_permit_nonces",
    "server_held_provisions",
    "server_staff_accounts",
    "server_staff_sessions",
    "server_staff_sign_in_failures",
)
INSERT_CODE = text(
    "INSERT INTO server_linkage_codes (tenant, unified_number, linkage_code, acquired_at)"
    " VALUES (:t, :u, :c, :at)"
)
BIND = text("SELECT set_config('linkage.tenant', :t, true)")


def _schema_of(url: str) -> str:
    options = parse_qs(urlsplit(url).query)["options"][0]
    return options.removeprefix("-csearch_path=")


def _as_app_role(url: str) -> str:
    """Make ``linkage_app`` the owner of every table of ``url``'s (migrated) schema; the URL of
    the same schema connecting as ``linkage_app``."""
    schema = _schema_of(url)
    admin = create_engine(url)
    with admin.begin() as connection:
        connection.execute(
            text(
                f"DO $$ BEGIN CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS;"
                " EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
            )
        )
        connection.execute(text(f'GRANT USAGE ON SCHEMA "{schema}" TO {APP_ROLE}'))
        tables = connection.execute(
            text("SELECT tablename FROM pg_tables WHERE schemaname = :s"), {"s": schema}
        ).scalars()
        for table in list(tables):
            connection.execute(text(f'ALTER TABLE "{schema}"."{table}" OWNER TO {APP_ROLE}'))
    admin.dispose()
    user_url = POSTGRES_BASE.replace("//postgres@", f"//{APP_ROLE}@", 1)
    assert user_url != POSTGRES_BASE, "LINKAGE_TEST_POSTGRES_URL must name the user postgres"
    return f"{user_url}?options=-csearch_path%3D{schema}"


@pytest.fixture
def app_engine(database_url: DatabaseUrl) -> Iterator[Engine]:
    """An engine connected as ``linkage_app`` (owner of a migrated schema), with one code each
    for tenants "a" and "b" written by the superuser."""
    url = database_url("rls")
    admin = create_engine(url)
    with admin.begin() as connection:
        at = datetime(2026, 6, 1, tzinfo=UTC)
        for tenant in ("a", "b"):
            connection.execute(INSERT_CODE, {"t": tenant, "u": f"U-{tenant}", "c": "C", "at": at})
    admin.dispose()
    engine = create_engine(_as_app_role(url))
    with engine.connect() as connection:
        assert connection.execute(text("SELECT current_user")).scalar() == APP_ROLE
    try:
        yield engine
    finally:
        engine.dispose()


def test_the_tenant_tables_force_row_level_security_with_a_tenant_policy(
    app_engine: Engine,
) -> None:
    with app_engine.connect() as connection:
        flags = connection.execute(
            text(
                "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class"
                " WHERE relkind = 'r' AND relname LIKE 'server\\_%'"
                " AND relnamespace = current_schema()::regnamespace"
            )
        ).all()
        policies = connection.execute(
            text("SELECT tablename FROM pg_policies WHERE schemaname = current_schema()")
        ).scalars()
        assert sorted(flags) == sorted((t, True, True) for t in TABLES)
        assert sorted(policies) == sorted(TABLES)


def test_a_transaction_bound_to_one_tenant_reads_none_of_anothers_rows(app_engine: Engine) -> None:
    with app_engine.begin() as connection:
        connection.execute(BIND, {"t": "a"})
        everything = connection.execute(
            text("SELECT tenant, unified_number FROM server_linkage_codes")
        ).all()
        theirs = connection.execute(
            text("SELECT count(*) FROM server_linkage_codes WHERE tenant = 'b'")
        ).scalar()
    assert everything == [("a", "U-a")]
    assert theirs == 0


def test_a_transaction_bound_to_one_tenant_cannot_change_anothers_rows(
    app_engine: Engine,
) -> None:
    with app_engine.begin() as connection:
        connection.execute(BIND, {"t": "a"})
        updated = connection.execute(
            text("UPDATE server_linkage_codes SET linkage_code = 'X' WHERE tenant = 'b'")
        ).rowcount
        deleted = connection.execute(
            text("DELETE FROM server_linkage_codes WHERE tenant = 'b'")
        ).rowcount
    assert (updated, deleted) == (0, 0)


def _write(engine: Engine, tenant: str | None, statement: TextClause, **params: object) -> None:
    """Run ``statement`` in one transaction, bound to ``tenant`` (None: unbound)."""
    with engine.begin() as connection:
        if tenant is not None:
            connection.execute(BIND, {"t": tenant})
        connection.execute(statement, params)


NEW_CODE = {"u": "U-new", "c": "C2", "at": datetime(2026, 6, 2, tzinfo=UTC)}


def test_a_row_cannot_be_written_into_or_moved_to_another_tenant(app_engine: Engine) -> None:
    with pytest.raises(ProgrammingError, match="row-level security"):
        _write(app_engine, "a", INSERT_CODE, t="b", **NEW_CODE)
    with pytest.raises(ProgrammingError, match="row-level security"):
        _write(app_engine, "a", text("UPDATE server_linkage_codes SET tenant = 'b'"))


def test_an_unbound_transaction_sees_and_writes_nothing(app_engine: Engine) -> None:
    with app_engine.begin() as connection:
        count = connection.execute(text("SELECT count(*) FROM server_linkage_codes")).scalar()
    assert count == 0
    with pytest.raises(ProgrammingError, match="row-level security"):
        _write(app_engine, None, INSERT_CODE, t="a", **NEW_CODE)


def test_the_binding_ends_with_its_transaction(app_engine: Engine) -> None:
    with app_engine.connect() as connection:
        with connection.begin():
            connection.execute(BIND, {"t": "a"})
        with connection.begin():
            count = connection.execute(text("SELECT count(*) FROM server_linkage_codes")).scalar()
    assert count == 0


def test_the_repositorys_units_of_work_bind_one_tenant_or_the_platform(
    app_engine: Engine,
) -> None:
    from linkage.db import session_factory

    sessions = session_factory(app_engine)
    with repo.tenant_unit_of_work(sessions, "a") as session:
        own = repo.code_of(session, "a", "U-a")
        other = repo.code_of(session, "b", "U-b")
    with repo.platform_unit_of_work(sessions) as session:
        everyone = session.execute(text("SELECT tenant FROM server_linkage_codes")).scalars()
        tenants = sorted(everyone)
    assert own is not None
    assert other is None
    assert tenants == ["a", "b"]
    with pytest.raises(ValueError, match="one tenant"), repo.tenant_unit_of_work(sessions, "*"):
        pass


async def test_a_platform_connected_as_the_app_role_serves_query_review_and_staff(
    bare_world: World,
) -> None:
    """The whole platform under row-level security: every transaction of a query held for
    review, the reviewer's sign-in, listing, approval and late delivery, and a session refused
    at another tenant's console must be bound (an unbound one sees and writes nothing)."""
    fresh = bare_world.database_url
    bare_world.database_url = lambda component: _as_app_role(fresh(component))
    world = bare_world
    await world.start_platform("alpha", ALPHA)
    with world.engines["alpha"].connect() as connection:
        assert connection.execute(text("SELECT current_user")).scalar() == APP_ROLE
    await world.enroll("sakai", "S-0001", "10101010101")
    await world.enroll("jps", "J-0001", "10101010101")
    await world.import_records("jps", [pension("J-0001", amount=1_234_567, flagged=True)])
    held = await world.submit("sakai", **pension_query("q-1", "S-0001"))
    assert QS.Name(held.status) == "QUERY_STATUS_HELD_FOR_REVIEW"

    token = await world.signed_in("jps", "hayashi.r", "REVIEWER")
    review = world.console("jps").review
    listing = await review.ListHeldProvisions(
        review_pb2.ListHeldProvisionsRequest(parent="organizations/jps"), metadata=bearer(token)
    )
    [target] = listing.held_provisions
    approved = await review.ApproveHeldProvision(
        review_pb2.ApproveHeldProvisionRequest(name=target.name), metadata=bearer(token)
    )
    assert approved.delivered
    response = await world.ua("sakai").GetQueryResult(
        pb.GetQueryResultRequest(name="organizations/sakai/queries/q-1")
    )
    assert QS.Name(response.result.status) == "QUERY_STATUS_PROVIDED"
    assert response.result.values[0].content.pension_benefit.annual_amount == 1_234_567
    assert await world.platform_of("jps").review.redeliver() == 0

    # jps's session presented at sakai's console: found across tenants, refused as a mismatch.
    error = await remote(
        world.console("sakai").review.ListHeldProvisions(
            review_pb2.ListHeldProvisionsRequest(parent="organizations/sakai"),
            metadata=bearer(token),
        )
    )
    assert (error.code, error.reason) == ("PERMISSION_DENIED", "TENANT_MISMATCH")
    await world.console("jps").staff.SignOut(staff_pb2.SignOutRequest(), metadata=bearer(token))
    ended = await remote(
        review.ListHeldProvisions(
            review_pb2.ListHeldProvisionsRequest(parent="organizations/jps"),
            metadata=bearer(token),
        )
    )
    assert (ended.code, ended.reason) == ("UNAUTHENTICATED", "INVALID_SESSION")
