"""Add task priority, labels (with task_labels for filtering) and complete_time.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 16:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(
            sa.Column("priority", sa.SmallInteger(), server_default="0", nullable=False)
        )
        batch.add_column(sa.Column("labels", sa.Text(), server_default="[]", nullable=False))
        batch.add_column(sa.Column("complete_time", sa.DateTime(timezone=True), nullable=True))
    # Tasks already done were completed when they last changed, as far as anyone can tell.
    op.execute("UPDATE tasks SET complete_time = update_time WHERE status = 'done'")
    op.create_table(
        "task_labels",
        sa.Column("task_id", _ID, nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_task_labels_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("task_id", "key", name=op.f("pk_task_labels")),
    )
    op.create_index("ix_task_labels_key_task_id", "task_labels", ["key", "task_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_task_labels_key_task_id", table_name="task_labels")
    op.drop_table("task_labels")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("complete_time")
        batch.drop_column("labels")
        batch.drop_column("priority")
