"""Tasks: CRUD in task lists, full and partial updates with etags, idempotent creation, lists.

Visibility: every task is in a list, and the caller's role on that list decides what they may do
with it (`authorize_in_list`, with the role read in the statement that reads the task). A task of
a list the caller is not a member of is reported as NOT_FOUND with the very message of a missing
task, so ids reveal nothing about other users' data.
Writes lock the task row (PostgreSQL `FOR UPDATE`, SQLite `BEGIN IMMEDIATE`) and change only the
columns they set, so concurrent patches of different fields both survive.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, bindparam, case, delete, insert, null, select, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from taskservice.db.engine import Database
from taskservice.db.models import (
    DESCRIPTION_MAX_LENGTH,
    REQUEST_ID_MAX_LENGTH,
    TITLE_MAX_LENGTH,
    Task,
    TaskCreateRequest,
    TaskLabel,
    TaskList,
    TaskListMember,
    TaskListRole,
    TaskPriority,
    TaskRevision,
    TaskStatus,
    User,
)
from taskservice.db.reads import Prepared, PreparedCache, RowReader
from taskservice.db.records import TaskRecord
from taskservice.db.retry import retries_conflicts
from taskservice.db.types import utcnow
from taskservice.errors import (
    Aborted,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from taskservice.services import audit, task_tree
from taskservice.services.audit import AuditTrail
from taskservice.services.authorization import (
    WRITE_TASKS,
    ListAction,
    Permission,
    authorize,
    authorize_in_list,
    may_for_every_owner,
)
from taskservice.services.filtering import Filter, canonical, parse
from taskservice.services.labels import label_key, normalize_labels
from taskservice.services.pagination import PageTokens, page_size, page_size_violation
from taskservice.services.principal import Principal
from taskservice.services.shared_lists import (
    check_list_live,
    find_list,
    list_not_found,
    lock_membership,
    personal_list_id,
)
from taskservice.services.task_lists import (
    TASK_FILTER_SCHEMA,
    Ordering,
    Seek,
    filter_clause,
    has_label,
    parse_order_by,
    sort_order,
    split_required_label,
    with_owner_label,
)
from taskservice.services.validation import (
    Violations,
    id_violation,
    mask_violations,
    nul_violation,
    raise_if,
    require_id,
)
from taskservice.watch.changes import CURRENT_REVISION

#: Fields that UpdateTask replaces and PatchTask may name.
WRITABLE_TASK_FIELDS = frozenset(
    {"title", "description", "status", "due_time", "priority", "labels", "parent_id"}
)
#: Fields PatchTask may name: UpdateTask's and the assignee (which UpdateTask leaves alone, so
#: clients that predate it never clear it).
PATCHABLE_TASK_FIELDS = WRITABLE_TASK_FIELDS | {"assignee_id"}
#: Fields of a Task that clients never write.
READ_ONLY_TASK_FIELDS = frozenset(
    {
        "id",
        "owner_id",
        "task_list_id",
        "creator_id",
        "create_time",
        "update_time",
        "etag",
        "complete_time",
        "position",
        "delete_time",
        "purge_time",
    }
)


@dataclass(frozen=True)
class TaskValues:
    """Requested values of a task's writable fields.

    `status` None means "not specified"; `title` is checked and trimmed by the service.
    `violations` are what the edge found wrong while converting them (an unknown status or
    priority number, an unrepresentable time): the service reports them with every other bad
    field.
    """

    title: str = ""
    description: str = ""
    status: TaskStatus | None = None
    due_time: datetime | None = None
    priority: TaskPriority = TaskPriority.UNSPECIFIED
    labels: tuple[str, ...] = ()
    parent_id: int = 0
    #: The list to create the task in (0: its parent's, or the owner's personal list).
    task_list_id: int = 0
    #: The member the task is assigned to (0: nobody).
    assignee_id: int = 0
    violations: tuple[FieldViolation, ...] = ()


@dataclass(frozen=True)
class _Checked:
    """Values as stored: the trimmed title and the normalised labels."""

    title: str
    labels: list[str]


@dataclass(frozen=True)
class TaskPage:
    """One page of tasks in the asked order, and the token for the next (empty on the last)."""

    tasks: list[TaskRecord]
    next_page_token: str
    #: The store's revision the page was read at (see ListTasksResponse.revision).
    revision: int = 0


#: Filters remembered parsed: most calls page through lists whose filters were seen before.
FILTER_CACHE_SIZE = 256


@functools.lru_cache(maxsize=FILTER_CACHE_SIZE)
def _parse_filter(text: str) -> Filter:
    """`parse` against the task schema, remembered for the FILTER_CACHE_SIZE latest texts.

    Parsing was 4% of the event loop under a filtered deep page (by profile). A parsed filter
    is immutable (frozen dataclasses of immutable values) and depends on nothing but its text,
    so calls may share it. A text that does not parse raises each time; nothing is remembered.
    """
    return parse(text, TASK_FILTER_SCHEMA, "filter")


def etag(task: TaskRecord) -> str:
    """The task's current etag: opaque to clients, new after every successful write."""
    return f'W/"{task.id}-{task.version}"'


class TaskService:
    """Task rules: ownership, validation, etags, idempotency."""

    def __init__(
        self,
        database: Database,
        page_tokens: PageTokens,
        trash_retention: timedelta = timedelta(days=30),
        audit_trail: AuditTrail | None = None,
    ) -> None:
        self._db = database
        self._page_tokens = page_tokens
        self._trash_retention = trash_retention
        self._audit = audit_trail

    def _audit_admin_action(self, session: AsyncSession, caller: Principal, owner_id: int) -> None:
        """Record, in the write's transaction, an admin's write to another user's task."""
        if self._audit is not None and owner_id != caller.user_id:
            self._audit.record(
                session, audit.TASK_ADMIN_ACTION, actor_id=caller.user_id, target_user_id=owner_id
            )

    @retries_conflicts
    async def create_task(
        self, caller: Principal, values: TaskValues, owner_id: int, request_id: str
    ) -> TaskRecord:
        """Create a task for the caller, or for `owner_id` when an admin sets it.

        With a `request_id`, at most one task is created per caller and key.
        """
        owner = owner_id or caller.user_id
        in_named_list = bool(values.task_list_id or values.parent_id)
        if not values.task_list_id:
            authorize(
                caller,
                Permission.TASKS_WRITE,
                owner,
                otherwise=_owner_not_allowed("you may only create tasks for yourself"),
            )
        checked = _check_values(
            values,
            set(PATCHABLE_TASK_FIELDS),
            also=[
                FieldViolation("request_id", f"at most {REQUEST_ID_MAX_LENGTH} characters")
                if len(request_id) > REQUEST_ID_MAX_LENGTH
                else nul_violation("request_id", request_id),
                FieldViolation("task.task_list_id", "must be 0 (personal list) or a list id")
                if values.task_list_id < 0
                else None,
                FieldViolation("task.assignee_id", "must be 0 (nobody) or a user id")
                if values.assignee_id < 0
                else None,
            ],
        )
        status = values.status or TaskStatus.TODO
        row = {
            "owner_id": owner,
            "title": checked.title,
            "description": values.description,
            "status": status,
            "due_time": values.due_time,
            "priority": values.priority,
            "labels": checked.labels,
            "complete_time": utcnow() if status is TaskStatus.DONE else None,
            "parent_id": task_tree.parent_key(values.parent_id),
            "position": task_tree.first_position(utcnow()),
            "creator_id": caller.user_id,
        }
        try:
            if not (
                request_id
                or checked.labels
                or in_named_list
                or values.assignee_id
                or owner != caller.user_id
            ):
                # One INSERT, atomic by itself: no transaction around it (a missing owner fails
                # the foreign key, handled below like the keyed path's check).
                now = utcnow()
                return await self._db.returning(
                    _INSERT_TASK, {**row, "version": 1, "create_time": now, "update_time": now}
                )
            async with self._db.write() as session:
                if request_id and (earlier := await _by_request(session, caller, request_id)):
                    return earlier
                if in_named_list:
                    task_list, admin = await self._destination(session, caller, values, owner_id)
                    owner = row["owner_id"] = task_list.owner_id
                    list_id = task_list.id
                else:
                    if owner != caller.user_id and not await _lock_caller_and_owner(
                        session, caller, owner
                    ):
                        raise NotFound("OWNER_NOT_FOUND", "no user has this owner_id")
                    admin = owner != caller.user_id
                    found = await session.scalar(select(personal_list_id(owner)))
                    if found is None:  # the owner was deleted while the task was being created
                        raise _owner_gone(caller, owner)
                    list_id = found
                await _check_assignee(session, list_id, values.assignee_id)
                task = Task(**row, task_list_id=list_id, assignee_id=values.assignee_id or None)
                session.add(task)
                if admin:
                    self._audit_admin_action(session, caller, owner)
                await session.flush()
                session.add_all(_label_rows(task, checked.labels))
                if request_id:
                    session.add(
                        TaskCreateRequest(
                            user_id=caller.user_id, request_id=request_id, task_id=task.id
                        )
                    )
        except IntegrityError:
            # A concurrent retry with the same request_id committed first: return its task.
            async with self._db.read() as session:
                earlier = await _by_request(session, caller, request_id) if request_id else None
                owner_exists = await session.get(User, owner) is not None
            if earlier is not None:
                return earlier
            if not owner_exists:  # the owner was deleted while the task was being created
                raise _owner_gone(caller, owner) from None
            raise
        return task

    async def _destination(
        self, session: AsyncSession, caller: Principal, values: TaskValues, owner_id: int
    ) -> tuple[TaskList, bool]:
        """The list a new task goes to (named, or its parent's), checked and locked.

        With whether the caller acts there with admin rights rather than a member's role.
        """
        parent = None
        if values.parent_id:
            parent, _ = await _visible_with_role(session, caller, values.parent_id, lock=True)
        if values.task_list_id:
            task_list, role = await find_list(session, caller, values.task_list_id, WRITE_TASKS)
            field = "task.owner_id"
        else:
            assert parent is not None  # noqa: S101 - in_named_list: a list or a parent
            task_list, role = await find_list(session, caller, parent.task_list_id, WRITE_TASKS)
            field = "task.parent_id"
        await lock_membership(session, caller, task_list.id, role, not_found=list_not_found)
        check_list_live(task_list)
        if owner_id and owner_id != task_list.owner_id:
            raise InvalidArgument.field(field, "the task's owner is its list's owner")
        if parent is not None:
            await task_tree.check_parent(session, None, task_list.id, parent, "task.parent_id")
        return task_list, not _acts_as_member(role, WRITE_TASKS)

    async def get_task(self, caller: Principal, task_id: int) -> tuple[TaskRecord, int]:
        """One task the caller may see, and the revision it was read at (same statement)."""
        require_id("id", task_id)
        async with self._db.reads() as reader:
            every_list = may_for_every_owner(caller, Permission.TASKS_READ)
            task = await reader.first(_GET[every_list], _visible_parameters(caller, task_id))
        if task is None:
            raise _task_not_found()
        return task, task.revision

    async def batch_get_tasks(
        self, caller: Principal, task_ids: list[int]
    ) -> tuple[list[TaskRecord], int]:
        """Several tasks the caller may see, in the order asked; NOT_FOUND names the first gap.

        With the revision they were read at (the same statement).
        """
        raise_if(
            FieldViolation("ids", f"at most {BATCH_GET_MAX_IDS} ids")
            if len(task_ids) > BATCH_GET_MAX_IDS
            else None,
            *(
                FieldViolation(f"ids[{index}]", "must be a positive id")
                for index, task_id in enumerate(task_ids)
                if task_id <= 0
            ),
        )
        if not task_ids:
            async with self._db.rows() as connection:
                return [], int(await connection.scalar(select(CURRENT_REVISION)) or 0)
        query = _BATCH_VISIBLE[may_for_every_owner(caller, Permission.TASKS_READ)]
        parameters = {"task_ids": sorted(set(task_ids)), "caller_id": caller.user_id}
        async with self._db.rows() as connection:
            found = {task.id: task for task in (await connection.execute(query, parameters))}
        for task_id in task_ids:
            if task_id not in found:
                raise NotFound("TASK_NOT_FOUND", f"no task has id {task_id}")
        return [found[task_id] for task_id in task_ids], found[task_ids[0]].revision

    @retries_conflicts
    async def update_task(
        self, caller: Principal, task_id: int, values: TaskValues, expected_etag: str
    ) -> Task:
        """Replace every writable field; an unspecified status becomes TODO."""
        checked = _check_values(
            values, set(WRITABLE_TASK_FIELDS), also=[id_violation("task.id", task_id)]
        )
        async with self._db.write() as session:
            task = await self._writable(session, caller, task_id)
            _check_etag(task, expected_etag)
            _check_live(task)
            await self._reparent(session, caller, task, values.parent_id)
            await _apply(session, task, values, checked, WRITABLE_TASK_FIELDS)
        return task

    @retries_conflicts
    async def patch_task(
        self,
        caller: Principal,
        task_id: int,
        paths: frozenset[str],
        values: TaskValues,
        expected_etag: str,
    ) -> Task:
        """Change only the fields named in `paths`."""
        checked = _check_values(
            values,
            set(paths),
            mask=paths,
            also=[
                id_violation("task.id", task_id),
                FieldViolation("task.assignee_id", "must be 0 (nobody) or a user id")
                if "assignee_id" in paths and values.assignee_id < 0
                else None,
            ],
        )
        if (
            patched := await self._patch_in_one_statement(
                caller, task_id, paths, values, checked, expected_etag
            )
        ) is not None:
            return patched
        async with self._db.write() as session:
            task = await self._writable(session, caller, task_id)
            _check_etag(task, expected_etag)
            _check_live(task)
            if "parent_id" in paths:
                await self._reparent(session, caller, task, values.parent_id)
            if "assignee_id" in paths:
                await _check_assignee(session, task.task_list_id, values.assignee_id)
                task.assignee_id = values.assignee_id or None
            await _apply(session, task, values, checked, paths)
        return task

    async def _writable(self, session: AsyncSession, caller: Principal, task_id: int) -> Task:
        """A task to write, locked, if the caller may (auditing an admin's write)."""
        task, role = await _visible_with_role(session, caller, task_id, lock=True)
        if not _acts_as_member(role, WRITE_TASKS):
            self._audit_admin_action(session, caller, task.owner_id)
        return task

    async def _patch_in_one_statement(
        self,
        caller: Principal,
        task_id: int,
        paths: frozenset[str],
        values: TaskValues,
        checked: _Checked,
        expected_etag: str,
    ) -> TaskRecord | None:
        """The common patch (the caller's own live task, plain fields) as one UPDATE ... RETURNING.

        Its WHERE clause holds every check the transaction makes (visible, live, etag), so the
        row is locked only while the statement runs, instead of across four round trips, and
        patches of one task queue far less. None when the statement matched no row or the patch
        needs more than one statement (labels, a new parent): the transaction then runs, and
        reports the precise error (NOT_FOUND, TASK_DELETED, ETAG_MISMATCH) or applies a patch
        that raced with another write. An admin's patch of another user's task, which the audit
        trail records, always misses here (the WHERE clause names the caller's memberships with
        an EDITOR or OWNER role, key-share locked so that a concurrent removal of the member waits
        for the patch or the patch misses).
        """
        if not paths <= _ONE_STATEMENT_FIELDS:
            return None
        version = _etag_version(task_id, expected_etag) if expected_etag else None
        if expected_etag and version is None:
            return None
        done = values.status is TaskStatus.DONE if "status" in paths else None
        now = utcnow()
        parameters: dict[str, object] = {
            "match_id": task_id,
            "match_owner": caller.user_id,
            "update_time": now,
        }
        if version is not None:
            parameters["match_version"] = version
        if done:
            parameters["done_time"] = now
        given = {
            "title": checked.title,
            "description": values.description,
            "status": values.status,
            "due_time": values.due_time,
            "priority": values.priority,
        }
        parameters.update((name, given[name]) for name in paths)
        statement = _patch_statement(paths, done, version is not None)
        return await self._db.returning(statement, parameters)  # type: ignore[no-any-return]

    @retries_conflicts
    async def delete_task(self, caller: Principal, task_id: int, expected_etag: str) -> Task:
        """Move a task the caller may see to the trash, until its purge time."""
        require_id("id", task_id)
        async with self._db.write() as session:
            task = await self._writable(session, caller, task_id)
            _check_etag(task, expected_etag)
            _check_live(task)
            now = utcnow()
            await session.execute(
                update(Task)
                .where(Task.id.in_(await task_tree.subtree_ids(session, task.id)))
                .values(
                    delete_time=now,
                    purge_time=now + self._trash_retention,
                    trash_root_id=task.id,
                    version=Task.version + 1,
                    update_time=now,
                ),
                execution_options={"synchronize_session": False},
            )
            await session.refresh(task)
        return task

    @retries_conflicts
    async def undelete_task(self, caller: Principal, task_id: int, expected_etag: str) -> Task:
        """Bring a task back from the trash, with what its DeleteTask trashed with it."""
        require_id("id", task_id)
        async with self._db.write() as session:
            task = await self._writable(session, caller, task_id)
            _check_etag(task, expected_etag)
            if task.delete_time is None:
                raise FailedPrecondition("TASK_NOT_DELETED", "the task is not in the trash")
            if await session.scalar(
                select(TaskList.delete_time).where(TaskList.id == task.task_list_id)
            ):
                raise FailedPrecondition(
                    "TASK_LIST_DELETED",
                    "the task went to the trash with its list; undelete the list",
                )
            parent = await session.get(Task, task.parent_id) if task.parent_id else None
            if task.trash_root_id != task.id or (
                parent is not None and parent.delete_time is not None
            ):
                raise FailedPrecondition(
                    "PARENT_DELETED", "the task's parent is in the trash; undelete it first"
                )
            await session.execute(
                update(Task)
                .where(Task.trash_root_id == task.id)
                .values(
                    delete_time=None,
                    purge_time=None,
                    trash_root_id=None,
                    version=Task.version + 1,
                    update_time=utcnow(),
                ),
                execution_options={"synchronize_session": False},
            )
            await session.refresh(task)
        return task

    @retries_conflicts
    async def move_task(
        self,
        caller: Principal,
        task_id: int,
        parent_id: int,
        previous_id: int,
        expected_etag: str,
        task_list_id: int | None = None,
    ) -> Task:
        """Put a task (with its subtree) under `parent_id`, right after sibling `previous_id`.

        In list `task_list_id` (None: the one it is in).
        """
        raise_if(
            id_violation("id", task_id),
            FieldViolation("task_list_id", "must be a list id")
            if task_list_id is not None and task_list_id <= 0
            else None,
            FieldViolation("parent_id", "must be 0 (top level) or a task id")
            if parent_id < 0
            else None,
            FieldViolation("previous_id", "must be 0 (first) or a task id")
            if previous_id < 0
            else None,
        )
        async with self._db.write() as session:
            task = await self._writable(session, caller, task_id)
            _check_etag(task, expected_etag)
            _check_live(task)
            if task_list_id is not None and task_list_id != task.task_list_id:
                await self._move_to_list(session, caller, task, task_list_id)
            parent = await _visible(session, caller, parent_id, lock=True) if parent_id else None
            await task_tree.check_parent(session, task, task.task_list_id, parent, "parent_id")
            await task_tree.lock_siblings(session, task.task_list_id, parent)
            previous = None
            if previous_id:
                previous = await session.get(Task, previous_id)
                if (
                    previous is None
                    or previous.id == task.id
                    or previous.task_list_id != task.task_list_id
                    or previous.parent_id != task_tree.parent_key(parent_id)
                    or previous.delete_time is not None
                ):
                    raise InvalidArgument.field(
                        "previous_id", "must be a live task under the same parent, not the task"
                    )
            task.position = await task_tree.position_after(
                session, task, task_tree.parent_key(parent_id), previous, utcnow()
            )
            task.parent_id = task_tree.parent_key(parent_id)
            task.version += 1
        return task

    async def _move_to_list(
        self, session: AsyncSession, caller: Principal, task: Task, list_id: int
    ) -> None:
        """Move a locked task's live subtree to another list: EDITOR on both lists.

        The subtree takes the list's owner; assignees who are not members of it are unassigned.
        """
        destination, role = await find_list(session, caller, list_id, WRITE_TASKS)
        await lock_membership(session, caller, destination.id, role, not_found=list_not_found)
        check_list_live(destination)
        if not _acts_as_member(role, WRITE_TASKS):
            self._audit_admin_action(session, caller, destination.owner_id)
        subtree = await task_tree.subtree_ids(session, task.id)
        members = select(TaskListMember.user_id).where(TaskListMember.task_list_id == list_id)
        await session.execute(
            update(Task)
            .where(Task.id.in_(subtree))
            .values(
                task_list_id=list_id,
                owner_id=destination.owner_id,
                assignee_id=case((Task.assignee_id.in_(members), Task.assignee_id), else_=null()),
                version=Task.version + 1,
                update_time=utcnow(),
            ),
            execution_options={"synchronize_session": False},
        )
        await session.execute(
            update(TaskLabel)
            .where(TaskLabel.task_id.in_(subtree))
            .values(owner_id=destination.owner_id),
            execution_options={"synchronize_session": False},
        )
        await session.refresh(task)

    async def _reparent(
        self, session: AsyncSession, caller: Principal, task: Task, parent_id: int
    ) -> None:
        """Give a locked task a new parent (0: top level); it goes first among its siblings."""
        if task_tree.parent_key(parent_id) == task.parent_id:
            return
        parent = await _visible(session, caller, parent_id, lock=True) if parent_id else None
        await task_tree.check_parent(session, task, task.task_list_id, parent, "task.parent_id")
        await task_tree.lock_siblings(session, task.task_list_id, parent)
        task.position = await task_tree.position_after(
            session, task, task_tree.parent_key(parent_id), None, utcnow()
        )
        task.parent_id = task_tree.parent_key(parent_id)

    async def purge_expired(self, now: datetime | None = None) -> int:
        """Delete for good every task whose purge time has come (by the system clock)."""
        return await purge_expired_tasks(self._db, now or utcnow())

    async def list_tasks(
        self,
        caller: Principal,
        requested_size: int,
        token: str,
        status: TaskStatus | None,
        owner_id: int | None,
        filter_text: str = "",
        order_by: str = "",
        show_deleted: bool = False,
        violations: Sequence[FieldViolation] = (),
    ) -> TaskPage:
        """Tasks filtered and ordered as asked, by keyset: deep pages cost the same.

        The default list (no `filter`, newest first) runs prebuilt statements that seek on the
        id; any other runs statements built once per shape and kept (`_VIEWS`, see `task_lists`).
        `violations` are what the edge found wrong converting the request (an unknown status),
        reported together with every other bad field.
        """
        if owner_id is not None:
            authorize(
                caller,
                Permission.TASKS_READ,
                owner_id,
                otherwise=_owner_not_allowed("you may only list your own tasks"),
            )
        member_id = None if may_for_every_owner(caller, Permission.TASKS_READ) else caller.user_id
        scope_owner = owner_id if owner_id is not None else member_id
        problems = Violations()
        problems.add(*violations, page_size_violation(requested_size))
        parsed = problems.check(lambda: _parse_filter(filter_text))
        ordering = problems.check(lambda: parse_order_by(order_by))
        if parsed is None or ordering is None:
            # Which list the token was issued for is unknown while these are wrong.
            raise problems.error()
        size = page_size(max(requested_size, 0))  # a negative size is recorded above
        scope: dict[str, object] = {
            "list": "tasks",
            "caller": caller.user_id,
            "status": status.value if status else None,
            # Spelled as before lists existed (a regular user's own id), so older tokens open.
            "owner": scope_owner,
        }
        # Added only when not the default, so tokens issued before these fields existed still
        # open with the very scope they were sealed with.
        if parsed.expression is not None:
            scope["filter"] = canonical(parsed)
        if not ordering.is_default:
            scope["order_by"] = ordering.name
        if show_deleted:
            scope["show_deleted"] = True
        if parsed.expression is None and ordering.is_default and not show_deleted:
            after = problems.check(lambda: self._page_tokens.open(token, scope))
            problems.raise_if_any()
            query = _LISTS[
                owner_id is not None, member_id is not None, status is not None, after is not None
            ]
            parameters = {
                "owner_id": owner_id,
                "member_id": member_id,
                "status": status,
                "after": after,
                "limit": size + 1,
            }
            async with self._db.reads() as reader:
                tasks, revision = await _read_page(reader, (query,), parameters, size)
            return TaskPage(
                *self._page_tokens.page(
                    tasks, size, scope, key=lambda task: task.id, weight=_weight
                ),
                revision=revision or 0,
            )
        seek = problems.check(lambda: ordering.seek(self._page_tokens.open_key(token, scope)))
        if seek is None or problems.found:
            raise problems.error()
        shape = (
            scope.get("filter"),
            ordering.name,
            owner_id is not None,
            member_id is not None,
            status is not None,
            show_deleted,
            seek.found,
            seek.in_missing,
        )
        statements = _VIEWS.get(
            shape,
            lambda: _view_statements(
                parsed,
                ordering,
                seek,
                owner_id is not None,
                member_id is not None,
                status is not None,
                show_deleted,
            ),
        )
        parameters = {
            "owner_id": owner_id,
            "member_id": member_id,
            "status": status,
            "limit": size + 1,
        }
        parameters.update(seek.parameters())
        async with self._db.reads() as reader:
            tasks, revision = await _read_page(reader, statements, parameters, size)
        return TaskPage(
            *self._page_tokens.page(
                tasks[: size + 1], size, scope, key=ordering.page_key, weight=_weight
            ),
            revision=revision or 0,
        )


async def _apply(
    session: AsyncSession,
    task: Task,
    values: TaskValues,
    checked: _Checked,
    fields: frozenset[str],
) -> None:
    """Write the named fields into a locked task, keeping complete_time and task_labels in step."""
    if "title" in fields:
        task.title = checked.title
    if "description" in fields:
        task.description = values.description
    if "status" in fields:
        status = values.status or TaskStatus.TODO
        if status is not TaskStatus.DONE:
            task.complete_time = None
        elif task.status is not TaskStatus.DONE:
            task.complete_time = utcnow()
        task.status = status
    if "due_time" in fields:
        task.due_time = values.due_time
    if "priority" in fields:
        task.priority = values.priority
    if "labels" in fields and checked.labels != task.labels:
        await session.execute(delete(TaskLabel).where(TaskLabel.task_id == task.id))
        session.add_all(_label_rows(task, checked.labels))
        task.labels = checked.labels
    task.version += 1


def _label_rows(task: Task, labels: list[str]) -> list[TaskLabel]:
    return [
        TaskLabel(task_id=task.id, key=label_key(label), owner_id=task.owner_id) for label in labels
    ]


def _check_values(
    values: TaskValues,
    fields: set[str],
    mask: frozenset[str] | None = None,
    also: Sequence[FieldViolation | None] = (),
) -> _Checked:
    """Validate the mask (when given) and the named fields; return the values as stored.

    Every bad field is reported at once: the mask's, the values' (including what the edge found
    converting them) and those in `also`.
    """
    violations: list[FieldViolation | None] = [*also, *values.violations]
    if mask is not None:
        violations.extend(
            mask_violations(mask, PATCHABLE_TASK_FIELDS, READ_ONLY_TASK_FIELDS, "Task")
        )
    title = values.title.strip()
    if "title" in fields and not 1 <= len(title) <= TITLE_MAX_LENGTH:
        violations.append(
            FieldViolation("task.title", f"1 to {TITLE_MAX_LENGTH} characters after trimming")
        )
    if "title" in fields:
        violations.append(nul_violation("task.title", title))
    if "description" in fields:
        violations.append(nul_violation("task.description", values.description))
    if "description" in fields and len(values.description) > DESCRIPTION_MAX_LENGTH:
        violations.append(
            FieldViolation("task.description", f"at most {DESCRIPTION_MAX_LENGTH} characters")
        )
    status_converted = all(v.field != "task.status" for v in values.violations)
    if mask is not None and "status" in fields and values.status is None and status_converted:
        violations.append(FieldViolation("task.status", "must be a status, not unspecified"))
    if "parent_id" in fields and values.parent_id < 0:
        violations.append(FieldViolation("task.parent_id", "must be 0 (top level) or a task id"))
    labels: list[str] = []
    if "labels" in fields:
        labels, label_violations = normalize_labels(values.labels, "task.labels")
        violations.extend(label_violations)
    raise_if(*violations)
    return _Checked(title, labels)


async def purge_expired_tasks(database: Database, now: datetime) -> int:
    """Delete for good every task whose purge time is `now` or earlier.

    Returns how many rows the statement deleted (the subtasks a parent's cascade takes may or may
    not be counted, depending on the database).

    Their idempotency keys go with them (the foreign key cascades), so a request_id that created
    a purged task may create a new one. Trashed task lists whose purge time has come go too,
    with their members and every task still in them (the foreign keys cascade).
    """
    async with database.write() as session:
        result = await session.execute(
            delete(Task).where(Task.purge_time <= now),
            execution_options={"synchronize_session": False},
        )
        await session.execute(
            delete(TaskList).where(TaskList.purge_time <= now),
            execution_options={"synchronize_session": False},
        )
    return result.rowcount  # type: ignore[attr-defined,no-any-return]


def _check_live(task: Task) -> None:
    """Refuse writes to a task in the trash: it is read-only until undeleted or purged."""
    if task.delete_time is not None:
        raise FailedPrecondition(
            "TASK_DELETED", "the task is in the trash; undelete it before changing it"
        )


def _check_etag(task: Task, expected: str) -> None:
    if expected and expected != etag(task):
        raise Aborted("ETAG_MISMATCH", "the task changed since this etag; read it again")


#: The caller's membership of a task's list: what every read of tasks joins.
_MEMBERSHIP = and_(
    TaskListMember.task_list_id == Task.task_list_id,
    TaskListMember.user_id == bindparam("caller_id"),
)


def _member_query(*, every_list: bool) -> Select[tuple[Task]]:
    """Tasks the caller may see: in its lists (joined in the same statement), or any."""
    query = select(Task)
    return query if every_list else query.join(TaskListMember, _MEMBERSHIP)


def _visible_query(*, lock: bool) -> Select[tuple[Task, int | None]]:
    """A task with the caller's role on its list (None: not a member), to authorize a write."""
    query = (
        select(Task, TaskListMember.role)
        .outerjoin(TaskListMember, _MEMBERSHIP)
        .where(Task.id == bindparam("task_id"))
    )
    return query.with_for_update(of=Task.__table__) if lock else query


#: The two shapes of `_visible`'s query, built once: building and hashing a statement on every
#: call cost as much CPU as running it (by profile).
_VISIBLE = {lock: _visible_query(lock=lock) for lock in (False, True)}


#: Most ids one BatchGetTasks may ask for.
BATCH_GET_MAX_IDS = 100


#: GetTask's two query shapes (every list for admins, the caller's lists otherwise), each
#: reading the store's revision in the same statement.
_GET = {
    every_list: Prepared(
        _member_query(every_list=every_list)
        .add_columns(CURRENT_REVISION)
        .where(Task.id == bindparam("task_id"))
    )
    for every_list in (False, True)
}
#: The store's revision alone, for a ListTasks page with no row to carry it.
_REVISION = Prepared(select(TaskRevision.revision).where(TaskRevision.id == 1))


async def _read_page(
    reader: RowReader, statements: Sequence[Prepared], parameters: dict[str, Any], size: int
) -> tuple[list[TaskRecord], int]:
    """A ListTasks page's rows (up to `size` + 1, and maybe more), and the revision it was read at.

    Each statement reads the store's revision beside its rows, so a page whose first statement
    finds rows costs no statement more than its rows: that revision is of the same snapshot. A
    page of two statements (an ordering's present and missing segments) reads the second later,
    so changes after the revision may already show in it, which the response's contract allows.
    When the first finds nothing there is no row to carry the revision: it is read on its own
    and the page read again after it, so that no change before the revision is missing from the
    page (one read before the revision would miss what committed in between).
    """
    first = await reader.all(statements[0], parameters)
    if first:
        revision = int(first[0].revision)
    else:
        revision = int(await reader.scalar(_REVISION) or 0)
        first = await reader.all(statements[0], parameters)
    tasks: list[TaskRecord] = first
    for statement in statements[1:]:
        if len(tasks) > size:
            break
        tasks.extend(await reader.all(statement, parameters))
    return tasks, revision


def _batch_visible_query(*, any_owner: bool) -> Select[tuple[Task]]:
    return (
        _member_query(every_list=any_owner)
        .add_columns(CURRENT_REVISION)
        .where(Task.id.in_(bindparam("task_ids", expanding=True)))
    )


#: BatchGetTasks' two query shapes (any owner for admins, the caller's own otherwise).
_BATCH_VISIBLE = {
    any_owner: _batch_visible_query(any_owner=any_owner) for any_owner in (False, True)
}


def _insert_task() -> Prepared:
    """CreateTask without an idempotency key: insert and return the row in one statement.

    The task goes to its owner's personal list, found by a subquery of the same statement.
    """
    values: dict[Any, Any] = {
        column: bindparam(column.key, type_=column.type)
        for column in Task.__table__.columns
        if column.key
        not in ("id", "delete_time", "purge_time", "trash_root_id", "task_list_id", "assignee_id")
    }
    values[Task.__table__.c.task_list_id] = personal_list_id(values[Task.__table__.c.owner_id])
    return Prepared(insert(Task).values(values).returning(*Task.__table__.columns))


#: CreateTask without an idempotency key, in its owner's personal list.
_INSERT_TASK = _insert_task()


#: What `_patch_in_one_statement` may write: columns of the task row alone.
_ONE_STATEMENT_FIELDS = frozenset({"title", "description", "status", "due_time", "priority"})


@functools.cache
def _patch_statement(fields: frozenset[str], done: bool | None, match_version: bool) -> Prepared:
    """PatchTask's UPDATE ... RETURNING for one set of fields: at most 96 shapes, built once.

    `done` is whether the new status is DONE (None: status unchanged). complete_time follows
    the transaction's rule: cleared unless DONE, kept when already DONE, else the patch's time.
    Parameter names differ from column names: SQLAlchemy reserves those for the SET clause.
    """
    table = Task.__table__
    assignments: dict[Any, Any] = {
        table.c[name]: bindparam(name, type_=table.c[name].type) for name in fields
    }
    if done is not None:
        assignments[table.c.complete_time] = (
            case(
                (table.c.status == TaskStatus.DONE, table.c.complete_time),
                else_=bindparam("done_time", type_=table.c.complete_time.type),
            )
            if done
            else null()
        )
    assignments[table.c.version] = table.c.version + 1
    assignments[table.c.update_time] = bindparam("update_time", type_=table.c.update_time.type)
    statement = (
        update(table)
        .where(table.c.id == bindparam("match_id", type_=table.c.id.type))
        .where(
            table.c.task_list_id.in_(
                select(TaskListMember.task_list_id)
                .where(
                    TaskListMember.user_id
                    == bindparam("match_owner", type_=TaskListMember.user_id.type),
                    TaskListMember.role >= TaskListRole.EDITOR,
                )
                .with_for_update(read=True, key_share=True)
            )
        )
        .where(table.c.delete_time.is_(None))
        .values(assignments)
        .returning(*table.columns)
    )
    if match_version:
        statement = statement.where(table.c.version == bindparam("match_version"))
    return Prepared(statement)


def _etag_version(task_id: int, expected: str) -> int | None:
    """The version an etag of `task_id` names, or None when it is no such etag."""
    prefix = f'W/"{task_id}-'
    if not (expected.startswith(prefix) and expected.endswith('"')):
        return None
    digits = expected[len(prefix) : -1]
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 18:
        return None
    version = int(digits)
    # Spelled exactly as `etag()` spells it, or the transaction would refuse it.
    return version if str(version) == digits else None


#: Bytes a task takes in a response beyond its title and description (ids, times, etag, tags).
_TASK_OVERHEAD_BYTES = 96


def _weight(task: TaskRecord) -> int:
    """A task's approximate encoded size: its text in UTF-8 plus a fixed overhead."""
    return _text_bytes(task.title) + _text_bytes(task.description) + _TASK_OVERHEAD_BYTES


def _text_bytes(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


def _in_member_lists(member: Any) -> Any:
    """Tasks of the lists `member` (a bound parameter) is a member of."""
    return Task.task_list_id.in_(
        select(TaskListMember.task_list_id).where(TaskListMember.user_id == member)
    )


def _list_query(
    *, by_owner: bool, by_member: bool, by_status: bool, after: bool
) -> Select[tuple[Task]]:
    query = (
        select(Task)
        .where(Task.delete_time.is_(None))
        .order_by(Task.id.desc())
        .limit(bindparam("limit"))
    )
    if by_owner:
        query = query.where(Task.owner_id == bindparam("owner_id"))
    if by_member:
        query = query.where(_in_member_lists(bindparam("member_id")))
    if by_status:
        query = query.where(Task.status == bindparam("status"))
    if after:
        query = query.where(Task.id < bindparam("after"))
    return query


def _member_list_query(*, by_owner: bool, by_status: bool, after: bool) -> Select[Any]:
    """PostgreSQL's form of a member's default page (see `_merged_from_member_lists`)."""
    per_list = _list_query(by_owner=by_owner, by_member=False, by_status=by_status, after=after)
    return _merged_from_member_lists(per_list, (Task.id,), descending=True)


def _merged_from_member_lists(
    query: Select[Any], sort: tuple[Any, ...], *, descending: bool
) -> Select[Any]:
    """PostgreSQL's form of a member's page: each of their lists read in order, then merged.

    `query` reads everyone's page, sorted on `sort` and limited. The one-statement form
    (`task_list_id IN (their lists) ORDER BY ...`) is read by walking every task in the page's
    order and keeping the member's, or by reading all their tasks and sorting them, whichever
    the planner estimates cheaper. The walk passes over every task that sorts before their
    lists' first, anyone's: a member of quiet lists paid for the whole service's tasks. Here
    each list gives at most a page, read on an index that leads with `task_list_id` (LATERAL),
    so a page costs at most a page per list, however many tasks others have. The rows and their
    order are the same.
    """
    lists = (
        select(TaskListMember.task_list_id)
        .where(TaskListMember.user_id == bindparam("member_id"))
        .subquery("member_lists")
    )
    page = query.where(Task.task_list_id == lists.c.task_list_id).lateral("list_page")
    order = [page.c[column.key] for column in sort]
    return (
        select(*page.c)
        .select_from(lists)
        .join(page, true())
        .order_by(*sort_order(order, descending=descending))
        .limit(bindparam("limit"))
    )


def _list_statement(*, by_owner: bool, by_member: bool, by_status: bool, after: bool) -> Prepared:
    """One ListTasks shape, with PostgreSQL's per-list form for a member's lists."""
    query = _list_query(by_owner=by_owner, by_member=by_member, by_status=by_status, after=after)
    if not by_member:
        return _page_statement(query)
    lateral = _member_list_query(by_owner=by_owner, by_status=by_status, after=after)
    return _page_statement(query, lateral)


def _page_statement(query: Select[Any], postgresql: Select[Any] | None = None) -> Prepared:
    """A page's statement, each row with the store's revision (see `_read_page`)."""
    variants = (
        None if postgresql is None else {"postgresql": postgresql.add_columns(CURRENT_REVISION)}
    )
    return Prepared(query.add_columns(CURRENT_REVISION), variants)


#: ListTasks' query shapes (owner filter, the caller's lists, status filter, page token),
#: built once.
_LISTS = {
    (by_owner, by_member, by_status, after): _list_statement(
        by_owner=by_owner, by_member=by_member, by_status=by_status, after=after
    )
    for by_owner in (False, True)
    for by_member in (False, True)
    for by_status in (False, True)
    for after in (False, True)
}


#: The filtered and ordered lists' statements, by shape (see `list_tasks`).
_VIEWS = PreparedCache(256)


def _view_statements(
    parsed: Filter,
    ordering: Ordering,
    seek: Seek,
    by_owner: bool,
    by_member: bool,
    by_status: bool,
    show_deleted: bool,
) -> list[Prepared]:
    """A filtered list's statements; owner, status, seek and limit are bound parameters.

    A user's list that needs a label reads that user's keys of it, in id order (see
    `with_owner_label`); across owners there is no such index, and the label stays a test. A
    member's list across their lists is read on PostgreSQL a page per list, each in its order,
    then merged (`_merged_from_member_lists`).
    """

    def narrowed(query: Select[tuple[Task]], rest: Filter) -> Select[tuple[Task]]:
        if not show_deleted:
            query = query.where(Task.delete_time.is_(None))
        if by_owner:
            query = query.where(Task.owner_id == bindparam("owner_id"))
        if by_status:
            query = query.where(Task.status == bindparam("status", type_=Task.status.type))
        if rest.expression is not None:
            query = query.where(filter_clause(rest))
        return query

    if by_owner:
        label, rest = split_required_label(parsed)
        base = select(Task)
        id_column: Any = Task.id
        if label is not None:
            base = with_owner_label(base, label)
            id_column = TaskLabel.task_id
        base = narrowed(base, rest)
        if by_member:
            # The owner's indexes serve it; the lists are only a test on the owner's rows.
            base = base.where(_in_member_lists(bindparam("member_id")))
        return [
            _page_statement(statement)
            for statement in ordering.statements(base, seek.found, seek.in_missing, id_column)
        ]
    base = narrowed(select(Task), parsed)
    if not by_member:
        return [
            _page_statement(statement)
            for statement in ordering.statements(base, seek.found, seek.in_missing)
        ]
    in_lists = base.where(_in_member_lists(bindparam("member_id")))
    statements = ordering.statements(in_lists, seek.found, seek.in_missing)
    label, rest = split_required_label(parsed)
    per_list_base = narrowed(select(Task), rest)
    if label is not None:
        per_list_base = per_list_base.where(has_label(label))
    per_list = ordering.segments(per_list_base, seek.found, seek.in_missing)
    return [
        _page_statement(
            statement,
            _merged_from_member_lists(
                segment.statement, segment.sort, descending=segment.descending
            ),
        )
        for statement, segment in zip(statements, per_list, strict=True)
    ]


async def _visible(session: AsyncSession, caller: Principal, task_id: int, *, lock: bool) -> Task:
    """A task to write, if the caller may; see `_visible_with_role`."""
    task, _ = await _visible_with_role(session, caller, task_id, lock=lock)
    return task


async def _visible_with_role(
    session: AsyncSession,
    caller: Principal,
    task_id: int,
    *,
    lock: bool,
    action: ListAction = WRITE_TASKS,
) -> tuple[Task, int | None]:
    """A task the caller may do `action` to, and the caller's role on its list.

    NOT_FOUND alike for missing tasks and tasks of lists the caller may not see. A member who
    may see it but whose role is too low is told the role needed; a caller that may read every
    list's tasks but not write them (a key limited to `tasks.read_all`) is refused with
    PERMISSION_MISSING: a caller that can see a task learns nothing from being told it may not
    change it. Locking, the caller's membership is key-share locked too, so that a concurrent
    removal of the member waits for this write (or this write finds the member gone).
    """
    found = (await session.execute(_VISIBLE[lock], _visible_parameters(caller, task_id))).first()
    if found is None:
        raise _task_not_found()
    task, role = found
    authorize_in_list(caller, action, role, not_found=_task_not_found)
    if lock:
        await lock_membership(session, caller, task.task_list_id, role, not_found=_task_not_found)
    return task, role


def _acts_as_member(role: int | None, action: ListAction) -> bool:
    """Whether a caller with `role` does `action` as a member (not with admin rights)."""
    return role is not None and role >= action.role


async def _check_assignee(session: AsyncSession, list_id: int, assignee_id: int) -> None:
    """Refuse an assignee who is not a member of the list (0: nobody, always fine)."""
    if not assignee_id:
        return
    if await session.get(TaskListMember, (list_id, assignee_id)) is None:
        raise FailedPrecondition(
            "ASSIGNEE_NOT_MEMBER", "a task may only be assigned to a member of its list"
        )


def _owner_not_allowed(message: str) -> Callable[[dict[str, str]], PermissionDenied]:
    """The refusal a regular user naming another owner has always had (OWNER_NOT_ALLOWED)."""

    def refused(metadata: dict[str, str]) -> PermissionDenied:
        return PermissionDenied("OWNER_NOT_ALLOWED", message, metadata)

    return refused


def _visible_parameters(caller: Principal, task_id: int) -> dict[str, int]:
    return {"task_id": task_id, "caller_id": caller.user_id}


def _owner_gone(caller: Principal, owner: int) -> NotFound | Unauthenticated:
    """The error for an owner deleted while their task was being created.

    When the owner is the caller, the call is answered as any call of theirs made after the
    deletion is (their token names a user that no longer exists), not with the NOT_FOUND that
    only an admin's `owner_id` gets.
    """
    if owner == caller.user_id:
        return Unauthenticated("TOKEN_REVOKED", "the user of this access token no longer exists")
    return NotFound("OWNER_NOT_FOUND", "no user has this owner_id")


def _task_not_found() -> NotFound:
    return NotFound("TASK_NOT_FOUND", "no task has this id")


#: The caller's and the owner's rows, share-locked in the order DeleteUser and UpdateUser lock
#: users: active admins by id, then the others.
_LOCK_CALLER_AND_OWNER = (
    select(User.id)
    .where(User.id.in_([bindparam("caller_id"), bindparam("owner_id")]))
    .order_by((User.is_admin & User.is_active).desc(), User.id)
    .with_for_update(read=True, key_share=True)
)


async def _lock_caller_and_owner(session: AsyncSession, caller: Principal, owner: int) -> bool:
    """Key-share lock the caller's and the owner's rows, deadlock-free; True if the owner exists.

    For an admin's keyed create for another owner. The inserts take these locks anyway (foreign
    keys), but the owner's first: the task's, then the idempotency key's on the caller. DeleteUser
    and UpdateUser (demoting, deactivating) lock every active admin, the caller among them, before
    the user they change, so a create holding that user's row while waiting for the caller's
    closed a cycle PostgreSQL could only break by aborting one side, and a stream of creates for
    that user kept closing it again, retries or not. Taken here in the deleters' order, a create
    waits before it holds anything they want. A deleted owner's row is skipped once its deletion
    commits: the owner is then missing.
    """
    parameters = {"caller_id": caller.user_id, "owner_id": owner}
    return owner in (await session.scalars(_LOCK_CALLER_AND_OWNER, parameters)).all()


async def _by_request(session: AsyncSession, caller: Principal, request_id: str) -> Task | None:
    return await session.scalar(
        select(Task)
        .join(TaskCreateRequest, TaskCreateRequest.task_id == Task.id)
        .where(TaskCreateRequest.user_id == caller.user_id)
        .where(TaskCreateRequest.request_id == request_id)
    )
