"""SQLite: ids are never reused again in organizations, data_sources and tokens

Migrations 0004, 0005 and 0009 rebuilt these tables (batch mode) without AUTOINCREMENT, so SQLite could give
a new row the id of the last deleted one: a new source could meet cached answers or files kept under the
id of a deleted one. This rebuilds every table the models mark ``sqlite_autoincrement`` that lost it (other
databases: nothing to do). Foreign keys are off while migrating (carnet/migrations/env.py), so a rebuild
deletes nothing that references the table.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# The tables the models create with sqlite_autoincrement (NO_ID_REUSE), as of this revision.
NEVER_REUSE_IDS = (
    "api_keys",
    "app_favourites",
    "app_public_links",
    "app_shares",
    "app_versions",
    "apps",
    "audit_events",
    "connections",
    "data_sources",
    "job_runs",
    "jobs",
    "memberships",
    "organizations",
    "push_endpoints",
    "tokens",
    "users",
    "viewer_group_members",
    "viewer_groups",
    "warehouse_loads",
)


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    for table in NEVER_REUSE_IDS:
        sql = bind.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).scalar()
        if sql and "AUTOINCREMENT" not in sql.upper():
            with op.batch_alter_table(table, recreate="always", table_kwargs={"sqlite_autoincrement": True}):
                pass


def downgrade() -> None:
    pass  # AUTOINCREMENT is what the models ask for; nothing to undo
