"""Task lists and their members: the rules of sharing tasks.

Every user has a personal list, made by the database in the transaction that makes the user
(migration 0014), so a task created without a list always has one to go to (clients that know
nothing of lists keep working).

Who may do what is decided by `authorize_in_list` from the caller's role, which every query
here reads in the statement that finds the list. Writes that change who the list's owners are
(UpdateTaskListMember, RemoveTaskListMember, LeaveTaskList) lock the list's row first, so two of
them never both see a second owner and remove the last two (SQLite runs one writer at a time).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from taskservice.db.engine import Database
from taskservice.db.models import (
    REQUEST_ID_MAX_LENGTH,
    TASK_LIST_DESCRIPTION_MAX_LENGTH,
    TASK_LIST_TITLE_MAX_LENGTH,
    Task,
    TaskLabel,
    TaskList,
    TaskListMember,
    TaskListRole,
    User,
)
from taskservice.db.retry import retries_conflicts
from taskservice.db.types import utcnow
from taskservice.errors import (
    Aborted,
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    FieldViolation,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from taskservice.services.authorization import (
    LEAVE_LIST,
    MANAGE_LIST,
    READ_LIST,
    ListAction,
    Permission,
    authorize,
    authorize_in_list,
    may_see_every_list,
)
from taskservice.services.labels import has_control_character
from taskservice.services.pagination import PageTokens, page_size, page_size_violation
from taskservice.services.principal import Principal
from taskservice.services.validation import (
    Violations,
    email_violation,
    id_violation,
    nul_violation,
    raise_if,
    require_id,
)

#: Most members one list may have (its owners included).
MEMBERS_PER_LIST_MAX = 100
#: Most lists one user may be a member of (the personal list included).
LISTS_PER_USER_MAX = 1_000
#: What UpdateTaskList's mask may name.
UPDATABLE_LIST_FIELDS = frozenset({"title", "description"})


@dataclass(frozen=True)
class ListPage:
    """One page of ListTaskLists."""

    task_lists: list[TaskList]
    next_page_token: str


@dataclass(frozen=True)
class Member:
    """One membership, with the member's email (what ListTaskListMembers shows)."""

    task_list_id: int
    user_id: int
    role: int
    create_time: datetime
    email: str


@dataclass(frozen=True)
class MemberPage:
    """One page of ListTaskListMembers."""

    members: list[Member]
    next_page_token: str


def list_etag(task_list: TaskList) -> str:
    """A list's current etag: opaque to clients, new after every write of the list."""
    return f'W/"list-{task_list.id}-{task_list.version}"'


def personal_list_id(owner_id: object) -> object:
    """The id of `owner_id`'s personal list, as a scalar subquery (one statement with its use)."""
    return (
        select(TaskList.id)
        .where(TaskList.owner_id == owner_id, TaskList.personal.is_(True))
        .scalar_subquery()
    )


def list_not_found() -> NotFound:
    """A list the caller may not see, answered exactly as one that does not exist."""
    return NotFound("TASK_LIST_NOT_FOUND", "no task list has this id")


def _title_violation(field: str, title: str) -> FieldViolation | None:
    if not 0 < len(title) <= TASK_LIST_TITLE_MAX_LENGTH:
        return FieldViolation(
            field, f"must be 1 to {TASK_LIST_TITLE_MAX_LENGTH} characters after trimming"
        )
    if has_control_character(title):
        return FieldViolation(field, "must not contain control characters")
    return None


def _description_violation(field: str, description: str) -> FieldViolation | None:
    if len(description) > TASK_LIST_DESCRIPTION_MAX_LENGTH:
        return FieldViolation(field, f"at most {TASK_LIST_DESCRIPTION_MAX_LENGTH} characters")
    return nul_violation(field, description)


def _role_violation(field: str, role: int) -> FieldViolation | None:
    if role not in TaskListRole._value2member_map_:
        return FieldViolation(field, "must be TASK_LIST_ROLE_VIEWER, _EDITOR or _OWNER")
    return None


async def find_list(
    session: AsyncSession,
    caller: Principal,
    list_id: int,
    action: ListAction,
    *,
    lock: bool = False,
) -> tuple[TaskList, int | None]:
    """A list and the caller's role on it, if the caller may do `action` there (one statement).

    NOT_FOUND alike for a missing list and one the caller may not see.
    """
    query = (
        select(TaskList, TaskListMember.role)
        .outerjoin(
            TaskListMember,
            and_(
                TaskListMember.task_list_id == TaskList.id,
                TaskListMember.user_id == caller.user_id,
            ),
        )
        .where(TaskList.id == list_id)
    )
    if lock:
        query = query.with_for_update(of=TaskList)
    found = (await session.execute(query)).first()
    if found is None:
        raise list_not_found()
    task_list, role = found
    authorize_in_list(caller, action, role, not_found=list_not_found)
    return task_list, role


async def lock_membership(
    session: AsyncSession,
    caller: Principal,
    list_id: int,
    role: int | None,
    *,
    not_found: Callable[[], DomainError],
) -> None:
    """Hold the caller's membership of a list until the write commits (key-share lock).

    A write authorized by a membership must not commit after the member's removal: removing
    the row waits for this lock, and a removal that committed first leaves nothing to lock,
    which is answered with `not_found()` like any list or task the caller cannot see. SQLite
    runs one writer at a time, so there it is the read that authorized the write. Callers
    acting with admin rights (`role` None) hold no membership.
    """
    if role is None or session.bind.dialect.name != "postgresql":
        return
    held = await session.scalar(
        select(TaskListMember.role)
        .where(TaskListMember.task_list_id == list_id, TaskListMember.user_id == caller.user_id)
        .with_for_update(read=True, key_share=True)
    )
    if held is None:
        raise not_found()


def check_list_live(task_list: TaskList) -> None:
    """Refuse writes into a list in the trash."""
    if task_list.delete_time is not None:
        raise FailedPrecondition(
            "TASK_LIST_DELETED", "the task list is in the trash; undelete it first"
        )


async def _check_list_limit(session: AsyncSession, user_id: int) -> None:
    count = await session.scalar(
        select(func.count()).select_from(TaskListMember).where(TaskListMember.user_id == user_id)
    )
    if (count or 0) >= LISTS_PER_USER_MAX:
        raise ResourceExhausted(
            "TASK_LIST_LIMIT", f"a user may be a member of at most {LISTS_PER_USER_MAX} lists"
        )


class TaskListService:
    """Task lists and members: validation, roles, etags, the last owner, the trash."""

    def __init__(
        self,
        database: Database,
        page_tokens: PageTokens,
        trash_retention: timedelta = timedelta(days=30),
    ) -> None:
        self._db = database
        self._page_tokens = page_tokens
        self._trash_retention = trash_retention

    @retries_conflicts
    async def create_list(
        self, caller: Principal, title: str, description: str, request_id: str
    ) -> TaskList:
        """A new list with the caller as its OWNER; once per `request_id`."""
        title = title.strip()
        raise_if(
            _title_violation("task_list.title", title),
            _description_violation("task_list.description", description),
            FieldViolation("request_id", f"at most {REQUEST_ID_MAX_LENGTH} characters")
            if len(request_id) > REQUEST_ID_MAX_LENGTH
            else nul_violation("request_id", request_id),
        )
        try:
            async with self._db.write() as session:
                if request_id and (earlier := await self._by_request(session, caller, request_id)):
                    return earlier
                await _check_list_limit(session, caller.user_id)
                now = utcnow()
                task_list = TaskList(
                    owner_id=caller.user_id,
                    creator_id=caller.user_id,
                    request_id=request_id or None,
                    title=title,
                    description=description,
                    personal=False,
                    version=1,
                    create_time=now,
                    update_time=now,
                )
                session.add(task_list)
                await session.flush()
                session.add(
                    TaskListMember(
                        task_list_id=task_list.id,
                        user_id=caller.user_id,
                        role=TaskListRole.OWNER,
                        create_time=now,
                    )
                )
        except IntegrityError:
            # A concurrent retry with the same request_id committed first: return its list.
            async with self._db.read() as session:
                earlier = (
                    await self._by_request(session, caller, request_id) if request_id else None
                )
            if earlier is None:
                raise
            return earlier
        return task_list

    async def _by_request(
        self, session: AsyncSession, caller: Principal, request_id: str
    ) -> TaskList | None:
        return await session.scalar(
            select(TaskList).where(
                TaskList.creator_id == caller.user_id, TaskList.request_id == request_id
            )
        )

    async def get_list(self, caller: Principal, list_id: int) -> TaskList:
        """One list the caller may see, live or in the trash."""
        require_id("id", list_id)
        async with self._db.read() as session:
            task_list, _ = await find_list(session, caller, list_id, READ_LIST)
        return task_list

    async def list_lists(
        self,
        caller: Principal,
        requested_size: int,
        token: str,
        member_id: int | None,
        show_deleted: bool,
    ) -> ListPage:
        """The lists `member_id` (default: the caller) is a member of, oldest first."""
        problems = Violations()
        problems.add(
            page_size_violation(requested_size),
            id_violation("member_id", member_id) if member_id is not None else None,
        )
        member = member_id if member_id is not None and member_id > 0 else caller.user_id
        scope = {
            "list": "task_lists",
            "caller": caller.user_id,
            "member": member,
            "show_deleted": show_deleted,
        }
        after = problems.check(lambda: self._page_tokens.open(token, scope))
        problems.raise_if_any()
        if member != caller.user_id:
            authorize(
                caller,
                Permission.TASKS_READ,
                member,
                otherwise=lambda metadata: PermissionDenied(
                    "OWNER_NOT_ALLOWED", "you may only list your own task lists", metadata
                ),
            )
        size = page_size(requested_size)
        query = (
            select(TaskList)
            .join(
                TaskListMember,
                and_(TaskListMember.task_list_id == TaskList.id, TaskListMember.user_id == member),
            )
            .order_by(TaskList.id)
            .limit(size + 1)
        )
        if not show_deleted:
            query = query.where(TaskList.delete_time.is_(None))
        if after is not None:
            query = query.where(TaskList.id > after)
        async with self._db.read() as session:
            rows = list(await session.scalars(query))
        lists, next_token = self._page_tokens.page(rows, size, scope, key=lambda row: row.id)
        return ListPage(lists, next_token)

    @retries_conflicts
    async def update_list(
        self,
        caller: Principal,
        list_id: int,
        paths: frozenset[str],
        title: str,
        description: str,
        expected_etag: str,
    ) -> TaskList:
        """Change the list's fields named in `paths`. OWNER only."""
        title = title.strip()
        problems = Violations()
        problems.add(id_violation("task_list.id", list_id))
        if not paths:
            problems.add(FieldViolation("update_mask", "name at least one field"))
        for path in sorted(paths - UPDATABLE_LIST_FIELDS):
            problems.add(
                FieldViolation("update_mask", f"{path!r} is not a field UpdateTaskList changes")
            )
        if "title" in paths:
            problems.add(_title_violation("task_list.title", title))
        if "description" in paths:
            problems.add(_description_violation("task_list.description", description))
        problems.raise_if_any()
        async with self._db.write() as session:
            task_list, _ = await find_list(session, caller, list_id, MANAGE_LIST, lock=True)
            _check_etag(task_list, expected_etag)
            check_list_live(task_list)
            if "title" in paths:
                task_list.title = title
            if "description" in paths:
                task_list.description = description
            task_list.version += 1
            task_list.update_time = utcnow()
        return task_list

    @retries_conflicts
    async def delete_list(self, caller: Principal, list_id: int, expected_etag: str) -> TaskList:
        """Move a list and its live tasks to the trash. OWNER only; never a personal list."""
        require_id("id", list_id)
        async with self._db.write() as session:
            task_list, _ = await find_list(session, caller, list_id, MANAGE_LIST, lock=True)
            _check_etag(task_list, expected_etag)
            check_list_live(task_list)
            if task_list.personal:
                raise FailedPrecondition(
                    "PERSONAL_LIST", "a personal list cannot be moved to the trash"
                )
            now = utcnow()
            purge_time = now + self._trash_retention
            # Tasks trashed with their list carry no trash root: that is what UndeleteTaskList
            # restores (tasks trashed on their own keep theirs, and stay in the trash).
            await session.execute(
                update(Task)
                .where(Task.task_list_id == list_id, Task.delete_time.is_(None))
                .values(
                    delete_time=now,
                    purge_time=purge_time,
                    trash_root_id=None,
                    version=Task.version + 1,
                    update_time=now,
                ),
                execution_options={"synchronize_session": False},
            )
            task_list.delete_time = now
            task_list.purge_time = purge_time
            task_list.version += 1
            task_list.update_time = now
        return task_list

    @retries_conflicts
    async def undelete_list(self, caller: Principal, list_id: int, expected_etag: str) -> TaskList:
        """Bring a list back from the trash with the tasks that went there with it."""
        require_id("id", list_id)
        async with self._db.write() as session:
            task_list, _ = await find_list(session, caller, list_id, MANAGE_LIST, lock=True)
            _check_etag(task_list, expected_etag)
            if task_list.delete_time is None:
                raise FailedPrecondition(
                    "TASK_LIST_NOT_DELETED", "the task list is not in the trash"
                )
            now = utcnow()
            await session.execute(
                update(Task)
                .where(
                    Task.task_list_id == list_id,
                    Task.delete_time.is_not(None),
                    Task.trash_root_id.is_(None),
                )
                .values(
                    delete_time=None,
                    purge_time=None,
                    version=Task.version + 1,
                    update_time=now,
                ),
                execution_options={"synchronize_session": False},
            )
            task_list.delete_time = None
            task_list.purge_time = None
            task_list.version += 1
            task_list.update_time = now
        return task_list

    async def list_members(
        self, caller: Principal, list_id: int, requested_size: int, token: str
    ) -> MemberPage:
        """A list's members by user id. Any member."""
        scope = {"list": "task_list_members", "caller": caller.user_id, "task_list": list_id}
        problems = Violations()
        problems.add(id_violation("task_list_id", list_id), page_size_violation(requested_size))
        after = problems.check(lambda: self._page_tokens.open(token, scope))
        problems.raise_if_any()
        size = page_size(requested_size)
        query = (
            select(TaskListMember, User.email)
            .join(User, User.id == TaskListMember.user_id)
            .where(TaskListMember.task_list_id == list_id)
            .order_by(TaskListMember.user_id)
            .limit(size + 1)
        )
        if after is not None:
            query = query.where(TaskListMember.user_id > after)
        async with self._db.read() as session:
            await find_list(session, caller, list_id, READ_LIST)
            rows = [_member(row, email) for row, email in (await session.execute(query))]
        members, next_token = self._page_tokens.page(rows, size, scope, key=lambda m: m.user_id)
        return MemberPage(members, next_token)

    @retries_conflicts
    async def add_member(
        self, caller: Principal, list_id: int, user_id: int, email: str, role: int
    ) -> Member:
        """Add a user (by id or email) with a role. OWNER only; the role is checked first."""
        problems = Violations()
        problems.add(id_violation("task_list_id", list_id), _role_violation("member.role", role))
        normalized = ""
        if bool(user_id) == bool(email):
            problems.add(FieldViolation("member.user_id", "set exactly one of it and `email`"))
        elif user_id:
            problems.add(id_violation("member.user_id", user_id))
        else:
            normalized, bad_email = email_violation("email", email)
            problems.add(bad_email)
        problems.raise_if_any()
        async with self._db.write() as session:
            task_list, _ = await find_list(session, caller, list_id, MANAGE_LIST, lock=True)
            check_list_live(task_list)
            # Only now, to an owner, may the service tell whether such a user exists.
            found = (
                await session.execute(
                    select(User.id, User.email).where(
                        User.id == user_id if user_id else User.email == normalized,
                        User.is_active.is_(True),
                    )
                )
            ).first()
            if found is None:
                raise NotFound("USER_NOT_FOUND", "no active user has this id or email")
            new_id, new_email = found
            if await session.get(TaskListMember, (list_id, new_id)) is not None:
                raise AlreadyExists(
                    "MEMBER_ALREADY_EXISTS", "the user is already a member of this list"
                )
            count = await session.scalar(
                select(func.count())
                .select_from(TaskListMember)
                .where(TaskListMember.task_list_id == list_id)
            )
            if (count or 0) >= MEMBERS_PER_LIST_MAX:
                raise ResourceExhausted(
                    "TASK_LIST_MEMBER_LIMIT",
                    f"a list may have at most {MEMBERS_PER_LIST_MAX} members",
                )
            await _check_list_limit(session, new_id)
            membership = TaskListMember(
                task_list_id=list_id, user_id=new_id, role=role, create_time=utcnow()
            )
            session.add(membership)
        return _member(membership, new_email)

    @retries_conflicts
    async def update_member(
        self, caller: Principal, list_id: int, user_id: int, role: int
    ) -> Member:
        """Change a member's role. OWNER only; never demotes the last owner."""
        raise_if(
            id_violation("task_list_id", list_id),
            id_violation("user_id", user_id),
            _role_violation("role", role),
        )
        async with self._db.write() as session:
            task_list, _ = await find_list(session, caller, list_id, MANAGE_LIST, lock=True)
            check_list_live(task_list)
            membership = await _membership(session, list_id, user_id)
            if role != TaskListRole.OWNER and membership.role == TaskListRole.OWNER:
                await _check_owner_may_go(session, task_list, user_id, "demote")
            membership.role = role
            await _settle_owner(session, task_list)
            email = await session.scalar(select(User.email).where(User.id == user_id))
        return _member(membership, email or "")

    @retries_conflicts
    async def remove_member(self, caller: Principal, list_id: int, user_id: int) -> None:
        """Remove a member and unassign their tasks in the list. OWNER only."""
        raise_if(id_violation("task_list_id", list_id), id_violation("user_id", user_id))
        async with self._db.write() as session:
            task_list, _ = await find_list(session, caller, list_id, MANAGE_LIST, lock=True)
            await self._remove(session, task_list, user_id)

    @retries_conflicts
    async def leave_list(self, caller: Principal, list_id: int) -> None:
        """The caller stops being a member of a list."""
        require_id("task_list_id", list_id)
        async with self._db.write() as session:
            # Leaving is about the caller's own membership: a member needs only the permission
            # the method declares, and a non-member is NOT_FOUND either way (MEMBER_NOT_FOUND
            # when it may see the list, as a caller reading every list may).
            action = READ_LIST if may_see_every_list(caller) else LEAVE_LIST
            task_list, role = await find_list(session, caller, list_id, action, lock=True)
            if role is None:  # an admin who sees the list without being a member
                raise NotFound("MEMBER_NOT_FOUND", "you are not a member of this list")
            await self._remove(session, task_list, caller.user_id)

    async def _remove(self, session: AsyncSession, task_list: TaskList, user_id: int) -> None:
        membership = await _membership(session, task_list.id, user_id)
        if membership.role == TaskListRole.OWNER:
            await _check_owner_may_go(session, task_list, user_id, "remove")
        await session.delete(membership)
        await session.flush()
        await session.execute(
            update(Task)
            .where(Task.task_list_id == task_list.id, Task.assignee_id == user_id)
            .values(assignee_id=None, version=Task.version + 1, update_time=utcnow()),
            execution_options={"synchronize_session": False},
        )
        await _settle_owner(session, task_list)


async def hand_over_lists(session: AsyncSession, user_id: int) -> None:
    """Before a user is deleted: hand each shared list they own first to its next owner.

    The list's tasks go with it. A list with no other owner goes with the user (the foreign
    keys cascade), as their personal list does; their memberships of other lists go too. Their
    assignments in the lists that stay are cleared here, as a write of each task (a new etag, a
    recorded change), as removing a member clears them: the foreign key's SET NULL would change
    the task under an etag that no longer describes it.
    """
    owned = await session.scalars(
        select(TaskList)
        .where(TaskList.owner_id == user_id, TaskList.personal.is_(False))
        .with_for_update()
    )
    for task_list in list(owned):
        membership = await session.get(TaskListMember, (task_list.id, user_id))
        if membership is not None:
            await session.delete(membership)
        await _settle_owner(session, task_list)
    # Tasks still owned by the user are in the lists that go with them.
    await session.execute(
        update(Task)
        .where(Task.assignee_id == user_id, Task.owner_id != user_id)
        .values(assignee_id=None, version=Task.version + 1, update_time=utcnow()),
        execution_options={"synchronize_session": False},
    )


def _member(membership: TaskListMember, email: str) -> Member:
    return Member(
        task_list_id=membership.task_list_id,
        user_id=membership.user_id,
        role=membership.role,
        create_time=membership.create_time,
        email=email,
    )


def _check_etag(task_list: TaskList, expected: str) -> None:
    if expected and expected != list_etag(task_list):
        raise Aborted("ETAG_MISMATCH", "the task list changed since this etag; read it again")


async def _membership(session: AsyncSession, list_id: int, user_id: int) -> TaskListMember:
    membership = await session.get(TaskListMember, (list_id, user_id))
    if membership is None:
        raise NotFound("MEMBER_NOT_FOUND", "the user is not a member of this list")
    return membership


async def _check_owner_may_go(
    session: AsyncSession, task_list: TaskList, user_id: int, verb: str
) -> None:
    """Refuse to take the OWNER role from a personal list's user or from the last owner."""
    if task_list.personal and user_id == task_list.owner_id:
        raise FailedPrecondition(
            "PERSONAL_LIST", f"a personal list's user stays its owner: cannot {verb} them"
        )
    owners = await session.scalar(
        select(func.count())
        .select_from(TaskListMember)
        .where(
            TaskListMember.task_list_id == task_list.id,
            TaskListMember.role == TaskListRole.OWNER,
        )
    )
    if (owners or 0) <= 1:
        raise FailedPrecondition(
            "LAST_OWNER", f"a list keeps at least one owner: cannot {verb} its only owner"
        )


async def _settle_owner(session: AsyncSession, task_list: TaskList) -> None:
    """Make the earliest remaining OWNER the list's primary owner, and its tasks' owner."""
    await session.flush()
    owner = await session.scalar(
        select(TaskListMember.user_id)
        .where(
            TaskListMember.task_list_id == task_list.id,
            TaskListMember.role == TaskListRole.OWNER,
        )
        .order_by(TaskListMember.create_time, TaskListMember.user_id)
        .limit(1)
    )
    if owner is None or owner == task_list.owner_id:
        return
    task_list.owner_id = owner
    await session.execute(
        update(Task)
        .where(Task.task_list_id == task_list.id)
        .values(owner_id=owner, version=Task.version + 1),
        execution_options={"synchronize_session": False},
    )
    await session.execute(
        update(TaskLabel)
        .where(TaskLabel.task_id.in_(select(Task.id).where(Task.task_list_id == task_list.id)))
        .values(owner_id=owner),
        execution_options={"synchronize_session": False},
    )
