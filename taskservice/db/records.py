"""What reads return: the columns of a row, whether an ORM object or a plain Core row.

Hot reads (GetTask, ListTasks, GetMe) fetch plain rows, which skip the ORM's session, identity map
and instance construction (a third of a ListTasks call's CPU, by profile): Core rows, or on
PostgreSQL the fast path's rows with the same attributes (`taskservice.db.reads`); writes load
ORM objects. All have the same column attributes, so servicers convert any through these types.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from taskservice.db.models import TaskStatus


class TaskRecord(Protocol):
    """The columns of a task."""

    id: int
    owner_id: int
    title: str
    description: str
    status: TaskStatus
    due_time: datetime | None
    version: int
    create_time: datetime
    update_time: datetime
    priority: int
    labels: list[str]
    complete_time: datetime | None
    delete_time: datetime | None
    parent_id: int | None
    position: int
    purge_time: datetime | None
    task_list_id: int
    creator_id: int
    assignee_id: int | None


class UserRecord(Protocol):
    """The public columns of a user."""

    id: int
    email: str
    is_active: bool
    is_admin: bool
    create_time: datetime
    update_time: datetime
    kind: str
    display_name: str | None
    permissions: str | None
