"""Index each list's tasks by due time, priority and update time, as each owner's already are.

A member's list ordered by one of these is read a page per list they belong to (PostgreSQL), each
page seeking on (task_list_id, key, id). Without these indexes each list's tasks were read and
sorted whole, or every task was walked in the page's order, anyone's, keeping the member's.

On PostgreSQL the indexes are built CONCURRENTLY, outside the migration's transaction: tasks
stay writable while they build, however large the table. An index of the same name is dropped
first (one a failed or cancelled build left behind, invalid), so running it again finishes.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 14:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEYS = ("due_time", "priority", "update_time")


def _name(key: str) -> str:
    return f"ix_tasks_task_list_id_{key}_id"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        for key in _KEYS:
            op.create_index(_name(key), "tasks", ["task_list_id", key, "id"])
        return
    with op.get_context().autocommit_block():
        for key in _KEYS:
            op.drop_index(
                _name(key), table_name="tasks", postgresql_concurrently=True, if_exists=True
            )
            op.create_index(
                _name(key), "tasks", ["task_list_id", key, "id"], postgresql_concurrently=True
            )


def downgrade() -> None:
    for key in reversed(_KEYS):
        op.drop_index(_name(key), table_name="tasks")
