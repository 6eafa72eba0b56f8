"""Subtasks and manual order: where a task may go, and the position it gets there.

Positions are integers, smaller first, shown to clients as opaque fixed-width strings. A new task
takes minus the current time in microseconds, which puts it first among its siblings without
reading or locking them (creates stay one statement). A move takes the midpoint of its new
neighbours; when two neighbours leave no room, the sibling list is renumbered. Moves lock the
sibling list they write (the parent's row, or the task list's row for the top level), so
concurrent moves in one sibling list queue up and never compute the same position. A subtask is
always in its parent's task list.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from taskservice.db.models import Task, TaskList
from taskservice.errors import FailedPrecondition, InvalidArgument

#: Deepest a task may sit: a top-level task is at depth 1, its subtasks at 2, and so on.
MAX_DEPTH = 5
#: Distance between neighbours after a sibling list is renumbered.
_SPREAD = 1 << 20
_OFFSET = 1 << 63


def encode_position(position: int) -> str:
    """The opaque form clients see: 16 hex digits that sort like the integers."""
    return f"{position + _OFFSET:016x}"


def first_position(now: datetime) -> int:
    """The position of a task created or moved to the front `now`: before every older one."""
    return -int(now.timestamp() * 1_000_000)


def parent_key(parent_id: int) -> int | None:
    """0 on the wire is the top level, NULL in the database."""
    return parent_id or None


async def check_parent(
    session: AsyncSession, task: Task | None, list_id: int, parent: Task | None, field: str
) -> None:
    """Refuse a parent in another list, in the trash, too deep, or inside `task` itself."""
    if parent is None:
        return
    if parent.task_list_id != list_id:
        raise InvalidArgument.field(field, "the parent must be in the same list as the task")
    if parent.delete_time is not None:
        raise FailedPrecondition("TASK_DELETED", "the parent task is in the trash")
    ancestors = await _ancestors(session, parent)
    if task is not None and (task.id == parent.id or task.id in ancestors):
        raise FailedPrecondition("PARENT_CYCLE", "a task cannot become its own ancestor")
    height = await _subtree_height(session, task.id) if task is not None else 1
    if len(ancestors) + 1 + height > MAX_DEPTH:
        raise FailedPrecondition(
            "MAX_DEPTH_EXCEEDED", f"tasks nest at most {MAX_DEPTH} levels deep"
        )


async def _ancestors(session: AsyncSession, task: Task) -> list[int]:
    """The ids above `task`, nearest first (bounded by the depth limit)."""
    found: list[int] = []
    parent_id = task.parent_id
    while parent_id is not None and len(found) <= MAX_DEPTH:
        found.append(parent_id)
        parent_id = await session.scalar(select(Task.parent_id).where(Task.id == parent_id))
    return found


async def _subtree_height(session: AsyncSession, task_id: int) -> int:
    """Levels in the subtree under and including `task_id` (1 for a leaf)."""
    level, height = [task_id], 0
    while level and height <= MAX_DEPTH:
        height += 1
        level = list(await session.scalars(select(Task.id).where(Task.parent_id.in_(level))))
    return height


async def subtree_ids(session: AsyncSession, task_id: int) -> list[int]:
    """`task_id` and every live task below it."""
    found, level = [task_id], [task_id]
    while level:
        level = list(
            await session.scalars(
                select(Task.id).where(Task.parent_id.in_(level), Task.delete_time.is_(None))
            )
        )
        found.extend(level)
    return found


async def lock_siblings(session: AsyncSession, list_id: int, parent: Task | None) -> None:
    """Queue the writers of one sibling list.

    A parent's subtasks queue on the parent's row, which the caller has locked already; the top
    level queues on the task list's row, locked so that task inserts (which only key-share it)
    pass.
    """
    if parent is None and session.bind.dialect.name == "postgresql":
        await session.execute(
            select(TaskList.id).where(TaskList.id == list_id).with_for_update(key_share=True)
        )


def _siblings(list_id: int, parent_id: int | None, moving: int) -> list[object]:
    return [
        Task.task_list_id == list_id,
        Task.parent_id.is_(None) if parent_id is None else Task.parent_id == parent_id,
        Task.delete_time.is_(None),
        Task.id != moving,
    ]


async def position_after(
    session: AsyncSession,
    task: Task,
    parent_id: int | None,
    previous: Task | None,
    now: datetime,
) -> int:
    """The position that puts `task` right after `previous` (None: first) among its siblings."""
    where = _siblings(task.task_list_id, parent_id, task.id)
    if previous is None:
        first = await session.scalar(select(func.min(Task.position)).where(*where))
        front = first_position(now)
        return front if first is None or front < first else first - _SPREAD
    following = await session.scalar(
        select(func.min(Task.position)).where(*where, Task.position > previous.position)
    )
    if following is None:
        return previous.position + _SPREAD
    if following - previous.position >= 2:
        return (previous.position + following) // 2
    await _renumber(session, where)
    await session.refresh(previous)
    return await position_after(session, task, parent_id, previous, now)


async def _renumber(session: AsyncSession, where: list[object]) -> None:
    """Spread a sibling list out evenly, keeping its order (ties by id)."""
    ids = list(
        await session.scalars(select(Task.id).where(*where).order_by(Task.position, Task.id))
    )
    base = await session.scalar(select(func.min(Task.position)).where(*where)) or 0
    for index, task_id in enumerate(ids):
        await session.execute(
            update(Task)
            .where(Task.id == task_id)
            .values(position=base + index * _SPREAD, version=Task.version + 1),
            execution_options={"synchronize_session": False},
        )
