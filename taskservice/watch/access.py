"""Which task lists a member's WatchTasks stream may see, at every revision it goes through.

A regular user's stream sees a change when the user was a member of the task's list at the
revision of the change. Memberships are recorded in the change log as access changes (migration
0014), so the stream keeps a timeline: the lists the user was a member of at its start revision,
and every access change since, in revision order. It starts from one statement (the user's
memberships now, and their access changes after the start revision: one snapshot), and learns
later ones as the feed offers them.

Revocation is immediate: once the stream knows the user lost a list, it sends no change of that
list any more, not even one recorded earlier that it had not sent yet.
"""

from __future__ import annotations

import bisect

from sqlalchemy import literal, null, select, union_all

from taskservice.db.engine import Database
from taskservice.db.models import TaskChange, TaskChangeType, TaskListMember
from taskservice.watch.changes import Change

#: Access change types, and whether each gives access.
_GIVES = {TaskChangeType.ACCESS_GRANTED: True, TaskChangeType.ACCESS_REVOKED: False}


def is_access(change: Change) -> bool:
    """Whether a change is a user gaining or losing a list (not a change of a task)."""
    return change.type in _GIVES


class ListAccess:
    """The lists one user may see, as of any revision from the stream's start on."""

    def __init__(self, user_id: int) -> None:
        self.user_id = user_id
        #: The lists at the start revision; None until `load` ran.
        self._base: set[int] | None = None
        #: Access changes after the start revision: (revision, list, gives), in revision order.
        self._events: list[tuple[int, int, bool]] = []
        self._known: set[int] = set()

    @property
    def loaded(self) -> bool:
        """Whether the lists at the start revision are known."""
        return self._base is not None

    async def load(self, database: Database, start_revision: int) -> None:
        """Read the user's lists now and their access changes after `start_revision`."""
        await database.number_changes()  # so that every committed access change has a revision
        memberships = select(
            TaskListMember.task_list_id,
            null().label("revision"),
            literal(0).label("type"),
        ).where(TaskListMember.user_id == self.user_id)
        history = select(TaskChange.task_list_id, TaskChange.revision, TaskChange.type).where(
            TaskChange.owner_id == self.user_id,
            TaskChange.task_id == 0,
            TaskChange.revision > start_revision,
            TaskChange.type.in_([int(kind) for kind in _GIVES]),
        )
        async with database.rows() as connection:
            rows = list(await connection.execute(union_all(memberships, history)))
        now = {list_id for list_id, revision, _ in rows if revision is None}
        for list_id, revision, kind in rows:
            if revision is not None:
                self._record(revision, list_id, _GIVES[TaskChangeType(kind)])
        # Roll the present back over the changes since the start: the lists at the start.
        base = set(now)
        for _, list_id, gives in reversed(self._events):
            if gives:
                base.discard(list_id)
            else:
                base.add(list_id)
        self._base = base

    def record(self, change: Change) -> bool:
        """Note an access change of this user; whether the change is one."""
        if not is_access(change) or change.owner_id != self.user_id:
            return False
        assert change.task_list_id is not None  # noqa: S101 - access changes name their list
        self._record(change.revision, change.task_list_id, _GIVES[change.type])
        return True

    def _record(self, revision: int, list_id: int, gives: bool) -> None:
        if revision in self._known:
            return
        self._known.add(revision)
        bisect.insort(self._events, (revision, list_id, gives))

    def lists_at(self, revision: int) -> set[int]:
        """The lists the user was a member of right after `revision`."""
        lists = set(self._base or ())
        for event_revision, list_id, gives in self._events:
            if event_revision > revision:
                break
            if gives:
                lists.add(list_id)
            else:
                lists.discard(list_id)
        return lists

    def sees(self, change: Change) -> Change | None:
        """What the stream sends for a change of a task: the change, its hidden form, or None.

        Sent when the task's list (before or after) was the user's at the change's revision and
        still is as far as the stream knows; a task moved out of the user's lists arrives as
        TASK_CHANGE_TYPE_HIDDEN with only its id.
        """
        at = self.lists_at(change.revision)
        still = self.lists_at(2**63 - 1)
        before = change.before is not None and change.before.task_list_id in at
        after = change.after is not None and change.after.task_list_id in at
        if change.after is not None and change.after.task_list_id not in still:
            after = False
        if change.before is not None and change.before.task_list_id not in still:
            before = False
        if after:
            return change
        if before:
            if change.after is None:  # purged: the change itself says so
                return change
            return Change(
                change.revision,
                change.task_id,
                change.owner_id,
                TaskChangeType.HIDDEN,
                change.before,
                None,
            )
        return None
