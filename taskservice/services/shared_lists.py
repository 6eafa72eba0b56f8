"""Task lists and their members: the rules of sharing tasks.

Every user has a personal list, made in the transaction that makes the user, so a task created
without a list always has one to go to (clients that know nothing of lists keep working).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from taskservice.db.models import PERSONAL_LIST_TITLE, TaskList, TaskListMember, TaskListRole
from taskservice.db.types import utcnow


def personal_list_id(owner_id: object) -> object:
    """The id of `owner_id`'s personal list, as a scalar subquery (one statement with its use)."""
    return (
        select(TaskList.id)
        .where(TaskList.owner_id == owner_id, TaskList.personal.is_(True))
        .scalar_subquery()
    )


async def add_personal_list(
    session: AsyncSession, user_id: int, now: datetime | None = None
) -> int:
    """Make `user_id`'s personal list, with the user as its OWNER, in the caller's transaction."""
    now = now or utcnow()
    list_id = await session.scalar(
        insert(TaskList)
        .values(
            owner_id=user_id,
            creator_id=user_id,
            title=PERSONAL_LIST_TITLE,
            description="",
            personal=True,
            version=1,
            create_time=now,
            update_time=now,
        )
        .returning(TaskList.id)
    )
    assert list_id is not None  # noqa: S101 - RETURNING of an INSERT always has its row
    await session.execute(
        insert(TaskListMember).values(
            task_list_id=list_id, user_id=user_id, role=TaskListRole.OWNER, create_time=now
        )
    )
    return list_id
