"""Add task_create_requests, the idempotency keys of CreateTask.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 17:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "task_create_requests",
        sa.Column("user_id", _ID, nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("task_id", _ID, nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
            name=op.f("fk_task_create_requests_task_id_tasks"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_task_create_requests_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "request_id", name=op.f("pk_task_create_requests")),
    )
    op.create_index(
        op.f("ix_task_create_requests_task_id"), "task_create_requests", ["task_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_task_create_requests_task_id"), table_name="task_create_requests")
    op.drop_table("task_create_requests")
