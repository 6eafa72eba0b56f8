"""Add the task trash: delete_time, purge_time and trash_root_id, and the sweep's index.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 17:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("delete_time", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("purge_time", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("trash_root_id", _ID, nullable=True))
    op.create_index("ix_tasks_purge_time", "tasks", ["purge_time"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_tasks_purge_time", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("trash_root_id")
        batch.drop_column("purge_time")
        batch.drop_column("delete_time")
