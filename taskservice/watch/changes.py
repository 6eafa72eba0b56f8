"""Recorded task changes as plain values, and the few queries that read or compact them.

The triggers of migration 0009 store each changed row as JSON text, on PostgreSQL through
`to_jsonb(row)` and on SQLite through `json_object(...)`; both name the columns alike, so one
decoder serves both. Each change is decoded once by the feed and shared by every stream.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Row, bindparam, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from taskservice.db.engine import Database
from taskservice.db.models import TaskChange, TaskChangeType, TaskRevision, TaskStatus
from taskservice.db.reads import Prepared

#: Changes read per query, by the feed and by a stream replaying history.
PAGE_SIZE = 500


@dataclass(frozen=True, slots=True)
class TaskSnapshot:
    """A task's columns at one revision (satisfies `TaskRecord`)."""

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
    purge_time: datetime | None
    parent_id: int | None
    position: int
    task_list_id: int
    creator_id: int
    assignee_id: int | None


@dataclass(frozen=True, slots=True)
class Change:
    """One committed change of one task; `before` is None on create, `after` on purge."""

    revision: int
    task_id: int
    owner_id: int
    type: TaskChangeType
    before: TaskSnapshot | None
    after: TaskSnapshot | None
    #: For an access change, the list; None for a change of a task.
    task_list_id: int | None = None


@dataclass(frozen=True, slots=True)
class Revisions:
    """The store's current revision, and the newest one whose history is gone."""

    current: int
    compacted: int


#: What PostgreSQL's JSON holds for the ends of the timestamp range: asyncpg writes the
#: smallest and largest datetimes (the API's 0001-01-01 and 9999-12-31) as these, and reads
#: them back as the datetimes again; a change must decode to the same task a read returns.
_INFINITIES = {
    "-infinity": datetime.min.replace(tzinfo=UTC),
    "infinity": datetime.max.replace(tzinfo=UTC),
}


def _time(value: str | None) -> datetime | None:
    if value is None:
        return None
    if value in _INFINITIES:
        return _INFINITIES[value]
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def snapshot(text: str | None) -> TaskSnapshot | None:
    """A row as the triggers stored it (None stays None)."""
    if text is None:
        return None
    row = json.loads(text)
    labels = row["labels"]
    return TaskSnapshot(
        id=row["id"],
        owner_id=row["owner_id"],
        title=row["title"],
        description=row["description"],
        status=TaskStatus(row["status"]),
        due_time=_time(row["due_time"]),
        version=row["version"],
        create_time=_time(row["create_time"]),  # type: ignore[arg-type]
        update_time=_time(row["update_time"]),  # type: ignore[arg-type]
        priority=row["priority"],
        labels=json.loads(labels) if isinstance(labels, str) and labels else [],
        complete_time=_time(row["complete_time"]),
        delete_time=_time(row["delete_time"]),
        purge_time=_time(row["purge_time"]),
        parent_id=row["parent_id"],
        position=row["position"],
        # Changes recorded before lists existed (revision 0014) name none of these.
        task_list_id=row.get("task_list_id") or 0,
        creator_id=row.get("creator_id") or row["owner_id"],
        assignee_id=row.get("assignee_id"),
    )


def change(row: Row[tuple[int, int, int, int, str | None, str | None, int | None]]) -> Change:
    """A `task_changes` row as a Change."""
    revision, task_id, owner_id, kind, before, after, task_list_id = row
    return Change(
        revision,
        task_id,
        owner_id,
        TaskChangeType(kind),
        snapshot(before),
        snapshot(after),
        task_list_id,
    )


#: The counter row: current and compacted revision.
_REVISIONS = select(TaskRevision.revision, TaskRevision.compacted_revision).where(
    TaskRevision.id == 1
)
#: The store's revision, as a column any read can carry (same statement, same snapshot).
CURRENT_REVISION = (
    select(TaskRevision.revision).where(TaskRevision.id == 1).scalar_subquery().label("revision")
)
#: Changes after `after` up to `until`, oldest first: what the feed reads on every wake-up.
_PAGE = Prepared(
    select(
        TaskChange.revision,
        TaskChange.task_id,
        TaskChange.owner_id,
        TaskChange.type,
        TaskChange.before,
        TaskChange.after,
        TaskChange.task_list_id,
    )
    .where(TaskChange.revision > bindparam("after"))
    .where(TaskChange.revision <= bindparam("until"))
    .order_by(TaskChange.revision)
    .limit(bindparam("limit"))
)
#: No upper bound: revisions fit in a signed 64-bit integer.
_NO_LIMIT = 2**63 - 1


async def revisions(database: Database) -> Revisions:
    """The current and compacted revisions, read now."""
    async with database.rows() as connection:
        return await read_revisions(connection)


async def read_revisions(connection: AsyncConnection) -> Revisions:
    """The current and compacted revisions, read on `connection`."""
    current, compacted = (await connection.execute(_REVISIONS)).one()
    return Revisions(current, compacted)


async def page(database: Database, after: int, until: int = _NO_LIMIT) -> list[Change]:
    """At most PAGE_SIZE changes with `after < revision <= until`, in revision order."""
    parameters = {"after": after, "until": until, "limit": PAGE_SIZE}
    async with database.reads() as reader:
        rows = await reader.all(_PAGE, parameters)
    return [change(row) for row in rows]


async def compact(database: Database, retention: timedelta, now: datetime) -> int:
    """Forget the changes recorded before `now - retention`; return the new compacted revision.

    The compacted revision is raised (and committed) before the rows go, so a reader that finds
    a change missing always finds the compacted revision past it. Raising it takes the counter
    row's lock for a moment, which writers of tasks wait for.
    """
    cutoff = now - retention
    async with database.write() as session:
        newest = await session.scalar(
            select(func.max(TaskChange.revision)).where(TaskChange.create_time < cutoff)
        )
        if newest is not None:
            await session.execute(
                update(TaskRevision)
                .where(TaskRevision.id == 1, TaskRevision.compacted_revision < newest)
                .values(compacted_revision=newest)
            )
        compacted = await session.scalar(
            select(TaskRevision.compacted_revision).where(TaskRevision.id == 1)
        )
    async with database.write() as session:
        await session.execute(
            delete(TaskChange).where(TaskChange.revision <= compacted),
            execution_options={"synchronize_session": False},
        )
    return int(compacted or 0)
