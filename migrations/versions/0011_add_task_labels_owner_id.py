"""Give task_labels its task's owner_id, and index a user's labels by (owner_id, key, task_id).

A label filter on a user's list (`labels:"home"`) read the owner's tasks and merged them with every
user's keys for that label: a deep page cost a read of each of the owner's tasks. With the owner
beside the key, the page seeks straight to its place in the owner's own keys, in id order, and reads
only the tasks it returns. A task never changes owner, so the copy cannot drift; it is written with
the task's labels and goes with them.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-27 05:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_INDEX = "ix_task_labels_owner_id_key_task_id"


def upgrade() -> None:
    with op.batch_alter_table("task_labels") as batch:
        batch.add_column(sa.Column("owner_id", _ID, nullable=True))
    op.execute(
        "UPDATE task_labels SET owner_id = "
        "(SELECT tasks.owner_id FROM tasks WHERE tasks.id = task_labels.task_id)"
    )
    with op.batch_alter_table("task_labels") as batch:
        batch.alter_column("owner_id", existing_type=_ID, nullable=False)
    op.create_index(_INDEX, "task_labels", ["owner_id", "key", "task_id"], unique=False)


def downgrade() -> None:
    op.drop_index(_INDEX, table_name="task_labels")
    with op.batch_alter_table("task_labels") as batch:
        batch.drop_column("owner_id")
