"""Append-only guards on the access-record ledger (triggers autogenerate cannot see).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

Records and checkpoints may be deleted only at or below a signed anchor (purge writes the
anchor first); nothing in the ledger is ever updated; anchors are never deleted. The statements
are frozen here as they were when written, so later code changes cannot change history.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQLITE = (
    "CREATE TRIGGER IF NOT EXISTS access_records_no_update BEFORE UPDATE ON access_records BEGIN SELECT RAISE(ABORT, 'access records are append-only: delete only behind a signed anchor (purge)'); END",
    "CREATE TRIGGER IF NOT EXISTS access_records_no_delete BEFORE DELETE ON access_records WHEN OLD.seq > COALESCE((SELECT max(purged_through_seq) FROM access_record_anchors WHERE ledger = OLD.ledger), 0) BEGIN SELECT RAISE(ABORT, 'access records are append-only: delete only behind a signed anchor (purge)'); END",
    "CREATE TRIGGER IF NOT EXISTS access_record_checkpoints_no_update BEFORE UPDATE ON access_record_checkpoints BEGIN SELECT RAISE(ABORT, 'access records are append-only: delete only behind a signed anchor (purge)'); END",
    "CREATE TRIGGER IF NOT EXISTS access_record_checkpoints_no_delete BEFORE DELETE ON access_record_checkpoints WHEN OLD.seq > COALESCE((SELECT max(purged_through_seq) FROM access_record_anchors WHERE ledger = OLD.ledger), 0) BEGIN SELECT RAISE(ABORT, 'access records are append-only: delete only behind a signed anchor (purge)'); END",
    "CREATE TRIGGER IF NOT EXISTS access_record_anchors_no_update BEFORE UPDATE ON access_record_anchors BEGIN SELECT RAISE(ABORT, 'access records are append-only: delete only behind a signed anchor (purge)'); END",
    "CREATE TRIGGER IF NOT EXISTS access_record_anchors_no_delete BEFORE DELETE ON access_record_anchors BEGIN SELECT RAISE(ABORT, 'access records are append-only: delete only behind a signed anchor (purge)'); END",
)

POSTGRESQL = (
    "CREATE OR REPLACE FUNCTION access_records_guard() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF TG_OP = 'UPDATE' OR OLD.seq > COALESCE((SELECT max(purged_through_seq) FROM access_record_anchors WHERE ledger = OLD.ledger), 0) THEN RAISE EXCEPTION 'access records are append-only: delete only behind a signed anchor (purge)'; END IF; RETURN OLD; END $$",
    "DROP TRIGGER IF EXISTS access_records_guard ON access_records",
    "CREATE TRIGGER access_records_guard BEFORE UPDATE OR DELETE ON access_records FOR EACH ROW EXECUTE FUNCTION access_records_guard()",
    "CREATE OR REPLACE FUNCTION access_record_checkpoints_guard() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF TG_OP = 'UPDATE' OR OLD.seq > COALESCE((SELECT max(purged_through_seq) FROM access_record_anchors WHERE ledger = OLD.ledger), 0) THEN RAISE EXCEPTION 'access records are append-only: delete only behind a signed anchor (purge)'; END IF; RETURN OLD; END $$",
    "DROP TRIGGER IF EXISTS access_record_checkpoints_guard ON access_record_checkpoints",
    "CREATE TRIGGER access_record_checkpoints_guard BEFORE UPDATE OR DELETE ON access_record_checkpoints FOR EACH ROW EXECUTE FUNCTION access_record_checkpoints_guard()",
    "CREATE OR REPLACE FUNCTION access_record_anchors_guard() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF TRUE THEN RAISE EXCEPTION 'access records are append-only: delete only behind a signed anchor (purge)'; END IF; RETURN OLD; END $$",
    "DROP TRIGGER IF EXISTS access_record_anchors_guard ON access_record_anchors",
    "CREATE TRIGGER access_record_anchors_guard BEFORE UPDATE OR DELETE ON access_record_anchors FOR EACH ROW EXECUTE FUNCTION access_record_anchors_guard()",
)

SQLITE_DROP = (
    "DROP TRIGGER IF EXISTS access_records_no_update",
    "DROP TRIGGER IF EXISTS access_records_no_delete",
    "DROP TRIGGER IF EXISTS access_record_checkpoints_no_update",
    "DROP TRIGGER IF EXISTS access_record_checkpoints_no_delete",
    "DROP TRIGGER IF EXISTS access_record_anchors_no_update",
    "DROP TRIGGER IF EXISTS access_record_anchors_no_delete",
)

POSTGRESQL_DROP = tuple(
    f"DROP TRIGGER IF EXISTS {t}_guard ON {t}"
    for t in ("access_records", "access_record_checkpoints", "access_record_anchors")
)


def upgrade() -> None:
    name = op.get_bind().dialect.name
    for statement in {"sqlite": SQLITE, "postgresql": POSTGRESQL}.get(name, ()):
        op.execute(statement)


def downgrade() -> None:
    name = op.get_bind().dialect.name
    for statement in {"sqlite": SQLITE_DROP, "postgresql": POSTGRESQL_DROP}.get(name, ()):
        op.execute(statement)
