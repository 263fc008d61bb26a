"""row-level security on the intermediate server's tenant tables (PostgreSQL only)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28

Every ``server_*`` table has a ``tenant`` column; this enables row-level security on each, FORCEd
so the table owner is subject to it too, with one policy: a row is visible and writable only when
its tenant is the transaction's ``linkage.tenant`` setting (set with ``SET LOCAL`` semantics by
``server.repository.tenant_unit_of_work``), or when that setting is ``*`` (the platform's own
maintenance path, ``server.repository.platform_unit_of_work``: purge and the like across tenants).
Without the setting no row is visible and no row can be written.

DEPLOYMENT REQUIREMENT: PostgreSQL superusers (and roles with BYPASSRLS) ALWAYS bypass row-level
security, FORCE or not. The platform must connect as an ordinary role (e.g. ``linkage_app``:
LOGIN, NOSUPERUSER, NOBYPASSRLS, granted the privileges it needs on the schema), or this policy
protects nothing. The database cannot tell the maintenance path from a tenant path within one
role: ``*`` is restricted by the code (only ``platform_unit_of_work`` sets it).

SQLite has no row-level security: a no-op there (isolation rests on the queries' tenant filters).
The statements are frozen here as they were when written.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

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

POLICY = "tenant_isolation"
CONDITION = (
    "(tenant = current_setting('linkage.tenant', true)"
    " OR current_setting('linkage.tenant', true) = '*')"
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(f"DROP POLICY IF EXISTS {POLICY} ON {table}")
        op.execute(f"CREATE POLICY {POLICY} ON {table} USING {CONDITION} WITH CHECK {CONDITION}")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.execute(f"DROP POLICY IF EXISTS {POLICY} ON {table}")
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
