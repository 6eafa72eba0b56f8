"""Add subtasks (tasks.parent_id) and the manual order among siblings (tasks.position).

Existing tasks stay top-level, newest first: their position is minus their creation time in
microseconds, which is what new tasks get (services/task_tree.py).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 17:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    # On SQLite the foreign key means copying the table: keep it AUTOINCREMENT (revision 0004).
    with op.batch_alter_table(
        "tasks", table_kwargs={"sqlite_autoincrement": True} if sqlite else {}
    ) as batch:
        batch.add_column(sa.Column("parent_id", _ID, nullable=True))
        batch.add_column(sa.Column("position", sa.BigInteger(), server_default="0", nullable=False))
        batch.create_foreign_key(
            op.f("fk_tasks_parent_id_tasks"), "tasks", ["parent_id"], ["id"], ondelete="CASCADE"
        )
    if sqlite:
        # SQLAlchemy writes "YYYY-MM-DD HH:MM:SS.ffffff"; anything with a zone suffix that
        # julianday() cannot read falls back to its first 19 characters.
        op.execute(
            "UPDATE tasks SET position = -CAST(ROUND((COALESCE(julianday(create_time), "
            "julianday(substr(create_time, 1, 19))) - 2440587.5) * 86400000000) AS INTEGER)"
        )
    else:
        op.execute(
            "UPDATE tasks SET position = -(EXTRACT(EPOCH FROM create_time) * 1000000)::bigint"
        )
    op.create_index(
        "ix_tasks_owner_id_parent_id_position",
        "tasks",
        ["owner_id", "parent_id", "position"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_owner_id_parent_id_position", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("position")
        batch.drop_column("parent_id")
