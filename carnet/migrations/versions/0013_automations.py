"""Automations: job kinds and their config, retries, timeouts, webhooks, after-job triggers, alerts' state,
the mail outbox, carnet.state, chains' steps

jobs.app_id and jobs.cron become nullable (kinds without an app; jobs started only by a webhook or another
job): on SQLite that rebuilds ``jobs`` (batch mode, AUTOINCREMENT kept; foreign keys are off while migrating,
carnet/migrations/env.py). Every other change adds columns or tables.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.alter_column("app_id", existing_type=sa.Integer(), nullable=True)
        batch.alter_column("cron", existing_type=sa.String(length=120), nullable=True)
        batch.add_column(sa.Column("config", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("timeout_seconds", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("max_retries", sa.Integer(), nullable=False, server_default="3"))
        batch.add_column(
            sa.Column("retry_backoff_seconds", sa.Integer(), nullable=False, server_default="60")
        )
        batch.add_column(sa.Column("webhook_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("after_job_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("alert_active", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("alert_sent_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_unique_constraint("uq_jobs_webhook_hash", ["webhook_hash"])
        batch.create_foreign_key(
            "fk_jobs_after_job_id_jobs", "jobs", ["after_job_id"], ["id"], ondelete="SET NULL"
        )
        batch.create_index("ix_jobs_after_job_id", ["after_job_id"])

    with op.batch_alter_table("job_runs", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.add_column(sa.Column("triggered_by", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("payload", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("attempt", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("not_before", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("parent_run_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("outputs_removed_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_foreign_key(
            "fk_job_runs_parent_run_id_job_runs", "job_runs", ["parent_run_id"], ["id"], ondelete="CASCADE"
        )
        batch.create_index("ix_job_runs_parent_run_id", ["parent_run_id"])

    with op.batch_alter_table("tokens", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.add_column(sa.Column("job_run_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            "fk_tokens_job_run_id_job_runs", "job_runs", ["job_run_id"], ["id"], ondelete="CASCADE"
        )
        batch.create_index("ix_tokens_job_run_id", ["job_run_id"])

    op.create_table(
        "mail_outbox",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("job_runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column(
            "org_id", sa.Integer(), sa.ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("recipient", sa.String(length=320), nullable=False),
        sa.Column("subject", sa.String(length=300), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("attachments", sa.JSON(), nullable=False),
        sa.Column(
            "status",
            sa.Enum("pending", "sending", "sent", "failed", name="mailstatus", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("run_id", "purpose", "recipient"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_mail_outbox_run_id", "mail_outbox", ["run_id"])
    op.create_index("ix_mail_outbox_org_id", "mail_outbox", ["org_id"])
    op.create_index("ix_mail_outbox_next_attempt_at", "mail_outbox", ["next_attempt_at"])
    op.create_table(
        "job_state",
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("key", sa.String(length=200), primary_key=True),
        sa.Column("value", sa.JSON(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("job_state")
    op.drop_table("mail_outbox")
    with op.batch_alter_table("tokens", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_index("ix_tokens_job_run_id")
        batch.drop_constraint("fk_tokens_job_run_id_job_runs", type_="foreignkey")
        batch.drop_column("job_run_id")
    with op.batch_alter_table("job_runs", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_index("ix_job_runs_parent_run_id")
        batch.drop_constraint("fk_job_runs_parent_run_id_job_runs", type_="foreignkey")
        for column in (
            "outputs_removed_at",
            "parent_run_id",
            "not_before",
            "attempt",
            "payload",
            "triggered_by",
        ):
            batch.drop_column(column)
    with op.batch_alter_table("jobs", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_index("ix_jobs_after_job_id")
        batch.drop_constraint("fk_jobs_after_job_id_jobs", type_="foreignkey")
        batch.drop_constraint("uq_jobs_webhook_hash", type_="unique")
        for column in (
            "alert_sent_at",
            "alert_active",
            "after_job_id",
            "webhook_hash",
            "retry_backoff_seconds",
            "max_retries",
            "timeout_seconds",
            "config",
        ):
            batch.drop_column(column)
        batch.alter_column("cron", existing_type=sa.String(length=120), nullable=False)
        batch.alter_column("app_id", existing_type=sa.Integer(), nullable=False)
