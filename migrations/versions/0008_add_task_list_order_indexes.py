"""Add the indexes behind ListTasks' order_by: a user's tasks by due time, priority, update time.

Each leads with owner_id (a regular user's list is always theirs) and ends with the id that keyset
pages break ties on, so a page seeks straight to its position: a deep page costs what the first
does. The missing segments (no due time, priority 0) are served by the same indexes. Orderings by
title and admins' lists across owners are left to a sort; add indexes when they are measured.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26 17:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXES = {
    "ix_tasks_owner_id_due_time_id": ["owner_id", "due_time", "id"],
    "ix_tasks_owner_id_priority_id": ["owner_id", "priority", "id"],
    "ix_tasks_owner_id_update_time_id": ["owner_id", "update_time", "id"],
}


def upgrade() -> None:
    for name, columns in _INDEXES.items():
        op.create_index(name, "tasks", columns, unique=False)


def downgrade() -> None:
    for name in _INDEXES:
        op.drop_index(name, table_name="tasks")
