"""Shared task lists: members and roles decide who sees and changes which tasks, on both edges."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import httpx
import pytest
from google.protobuf import timestamp_pb2
from google.protobuf.field_mask_pb2 import FieldMask

from taskservice.server import Application
from taskservice.v1 import task_list_pb2 as lists_pb
from taskservice.v1 import task_list_service_pb2 as lsvc
from taskservice.v1 import task_list_service_pb2_grpc, task_pb2
from taskservice.v1 import task_service_pb2 as pb
from taskservice.v1 import user_service_pb2 as users_pb
from tests.conftest import Stubs
from tests.helpers import Account, fails, make_admin, register
from tests.http_client import auth_headers, connect_failure, connect_json
from tests.watching import read_until

NOT_FOUND = grpc.StatusCode.NOT_FOUND
DENIED = grpc.StatusCode.PERMISSION_DENIED
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
ABORTED = grpc.StatusCode.ABORTED
VIEWER = lists_pb.TASK_LIST_ROLE_VIEWER
EDITOR = lists_pb.TASK_LIST_ROLE_EDITOR
OWNER = lists_pb.TASK_LIST_ROLE_OWNER
LISTS = "/taskservice.v1.TaskListService"
TASKS = "/taskservice.v1.TaskService"


@pytest.fixture
def lists(channel: grpc.aio.Channel) -> task_list_service_pb2_grpc.TaskListServiceStub:
    return task_list_service_pb2_grpc.TaskListServiceStub(channel)


@dataclass
class Team:
    """A shared list with an owner, an editor and a viewer, and someone outside it."""

    owner: Account
    editor: Account
    viewer: Account
    outsider: Account
    task_list: lists_pb.TaskList


@pytest.fixture
async def team(stubs: Stubs, lists: task_list_service_pb2_grpc.TaskListServiceStub) -> Team:
    owner, editor, viewer, outsider = [await register(stubs) for _ in range(4)]
    created = await lists.CreateTaskList(
        lsvc.CreateTaskListRequest(task_list=lists_pb.TaskList(title="  Launch  ")),
        metadata=owner.metadata,
    )
    task_list = created.task_list
    await lists.AddTaskListMember(
        lsvc.AddTaskListMemberRequest(
            task_list_id=task_list.id,
            email=editor.user.email.upper(),
            member=lists_pb.TaskListMember(role=EDITOR),
        ),
        metadata=owner.metadata,
    )
    await lists.AddTaskListMember(
        lsvc.AddTaskListMemberRequest(
            task_list_id=task_list.id,
            member=lists_pb.TaskListMember(user_id=viewer.user.id, role=VIEWER),
        ),
        metadata=owner.metadata,
    )
    return Team(owner, editor, viewer, outsider, task_list)


async def _task(stubs: Stubs, account: Account, **fields: object) -> task_pb2.Task:
    created = await stubs.tasks.CreateTask(
        pb.CreateTaskRequest(task=task_pb2.Task(title="t", **fields)), metadata=account.metadata
    )
    return created.task


async def _my_lists(
    lists: task_list_service_pb2_grpc.TaskListServiceStub, account: Account
) -> list[lists_pb.TaskList]:
    response = await lists.ListTaskLists(lsvc.ListTaskListsRequest(), metadata=account.metadata)
    return list(response.task_lists)


async def test_every_user_has_a_personal_list_where_their_tasks_go(
    stubs: Stubs, lists: task_list_service_pb2_grpc.TaskListServiceStub
) -> None:
    alice = await register(stubs)
    (personal,) = await _my_lists(lists, alice)
    assert (personal.title, personal.owner_id, personal.personal) == (
        "My Tasks",
        alice.user.id,
        True,
    )
    task = await _task(stubs, alice)
    assert (task.task_list_id, task.owner_id, task.creator_id, task.assignee_id) == (
        personal.id,
        alice.user.id,
        alice.user.id,
        0,
    )
    members = await lists.ListTaskListMembers(
        lsvc.ListTaskListMembersRequest(task_list_id=personal.id), metadata=alice.metadata
    )
    assert [(m.user_id, m.role, m.email) for m in members.members] == [
        (alice.user.id, OWNER, alice.user.email)
    ]
    refused = await fails(
        lists.DeleteTaskList(lsvc.DeleteTaskListRequest(id=personal.id), metadata=alice.metadata),
        PRECONDITION,
    )
    assert refused.reason == "PERSONAL_LIST"


async def test_members_see_and_work_on_a_shared_lists_tasks_by_their_role(
    stubs: Stubs, team: Team
) -> None:
    task = await _task(stubs, team.editor, task_list_id=team.task_list.id)
    # The task belongs to the list's owner; the editor made it.
    assert (task.owner_id, task.creator_id) == (team.owner.user.id, team.editor.user.id)
    for member in (team.owner, team.editor, team.viewer):
        got = await stubs.tasks.GetTask(pb.GetTaskRequest(id=task.id), metadata=member.metadata)
        assert got.task == task
        listed = await stubs.tasks.ListTasks(
            pb.ListTasksRequest(filter=f"task_list_id = {team.task_list.id}"),
            metadata=member.metadata,
        )
        assert [t.id for t in listed.tasks] == [task.id]
    patch = pb.PatchTaskRequest(
        task=task_pb2.Task(id=task.id, title="renamed"), update_mask=FieldMask(paths=["title"])
    )
    refused = await fails(stubs.tasks.PatchTask(patch, metadata=team.viewer.metadata), DENIED)
    assert refused.reason == "TASK_LIST_ROLE_REQUIRED"
    assert refused.error_metadata == {"role": "TASK_LIST_ROLE_EDITOR"}
    patched = await stubs.tasks.PatchTask(patch, metadata=team.editor.metadata)
    assert patched.task.title == "renamed"


async def test_a_members_pages_merge_their_lists_newest_first_whoever_writes_meanwhile(
    stubs: Stubs, team: Team
) -> None:
    """The editor's tasks: their own list's and the shared list's, interleaved, newest first.

    Each list is read a page at a time and the pages merged (see `_member_list_query`): every
    task comes exactly once, in id order, at any page size, with the status filter, and tasks
    of lists the editor is not in (written in between) never appear.
    """
    shared = team.task_list.id
    mine: list[int] = []
    done: list[int] = []
    for round_ in range(4):
        mine.append((await _task(stubs, team.editor)).id)
        mine.append((await _task(stubs, team.owner, task_list_id=shared)).id)
        await _task(stubs, team.outsider)
        if round_ % 2:
            done.append((await _task(stubs, team.editor, status=task_pb2.TASK_STATUS_DONE)).id)
            mine.append(done[-1])
    expected = sorted(mine, reverse=True)
    for page_size in (1, 2, 3, 50):
        seen: list[int] = []
        token = ""
        while True:
            page = await stubs.tasks.ListTasks(
                pb.ListTasksRequest(page_size=page_size, page_token=token),
                metadata=team.editor.metadata,
            )
            seen.extend(task.id for task in page.tasks)
            token = page.next_page_token
            if not token:
                break
        assert seen == expected, page_size
    for status, wanted in (
        (task_pb2.TASK_STATUS_TODO, [task_id for task_id in expected if task_id not in done]),
        (task_pb2.TASK_STATUS_DONE, sorted(done, reverse=True)),
    ):
        page = await stubs.tasks.ListTasks(
            pb.ListTasksRequest(status=status, page_size=2), metadata=team.editor.metadata
        )
        assert [task.id for task in page.tasks] == wanted[:2], status


#: Filtered and ordered views of a member's lists: (filter, order_by).
_VIEWS = (
    ("", "due_time"),
    ("", "due_time desc"),
    ("status != TASK_STATUS_DONE", "due_time"),
    ("", "priority desc"),
    ("", "priority"),
    ("", "update_time desc"),
    ('labels:"home"', ""),
    ('labels:"home"', "priority desc"),
)


def _view_key(order_by: str, task: task_pb2.Task) -> int | None:
    """A task's value of the ordering's key: None for a task in the missing segment."""
    name = order_by.split()[0] if order_by else "create_time"
    if name == "due_time":
        return task.due_time.ToMicroseconds() if task.HasField("due_time") else None
    if name == "priority":
        return task.priority or None
    if name == "update_time":
        return task.update_time.ToMicroseconds()
    return task.id


def _view_order(tasks: list[task_pb2.Task], filter_text: str, order_by: str) -> list[int]:
    """The ids a view lists, worked out here: (key, id) in order, then the keyless by id."""
    descending = order_by.endswith(" desc") or not order_by
    kept = [
        task
        for task in tasks
        if ("home" in task.labels or "home" not in filter_text)
        and (task.status != task_pb2.TASK_STATUS_DONE or "status" not in filter_text)
    ]
    present = sorted(
        ((key, task.id) for task in kept if (key := _view_key(order_by, task)) is not None),
        reverse=descending,
    )
    missing = sorted(
        (task.id for task in kept if _view_key(order_by, task) is None), reverse=descending
    )
    return [task_id for _, task_id in present] + missing


async def test_a_members_filtered_and_ordered_pages_merge_their_lists(
    stubs: Stubs, team: Team
) -> None:
    """Each view of the editor's lists lists their tasks once, in the view's order, at any size.

    On PostgreSQL each list is read a page at a time in the view's order and the pages merged
    (see `_merged_from_member_lists`); ties on a key across lists break on the id, and tasks of
    lists the editor is not in (the same values, written in between) never appear.
    """
    base = timestamp_pb2.Timestamp(seconds=1_900_000_000)
    mine: list[task_pb2.Task] = []
    for index in range(12):
        for account, in_list in ((team.editor, 0), (team.owner, team.task_list.id)):
            fields: dict[str, object] = {
                "priority": (index + in_list % 2) % 5,
                "labels": ["home"] if index % 2 else ["work"],
                "status": task_pb2.TASK_STATUS_DONE
                if index % 3 == 0
                else task_pb2.TASK_STATUS_TODO,
            }
            if index % 4:
                fields["due_time"] = timestamp_pb2.Timestamp(
                    seconds=base.seconds + 86_400 * (index % 3)
                )
            if in_list:
                fields["task_list_id"] = in_list
            mine.append(await _task(stubs, account, **fields))
        await _task(stubs, team.outsider, priority=index % 5, labels=["home"], due_time=base)
    for filter_text, order_by in _VIEWS:
        expected = _view_order(mine, filter_text, order_by)
        assert expected, (filter_text, order_by)
        for page_size in (1, 3, 50):
            seen: list[int] = []
            token = ""
            while True:
                page = await stubs.tasks.ListTasks(
                    pb.ListTasksRequest(
                        page_size=page_size,
                        page_token=token,
                        filter=filter_text,
                        order_by=order_by,
                    ),
                    metadata=team.editor.metadata,
                )
                seen.extend(task.id for task in page.tasks)
                token = page.next_page_token
                if not token:
                    break
            assert seen == expected, (filter_text, order_by, page_size)


async def test_a_task_or_list_one_may_not_see_is_not_found_exactly_like_a_missing_one(
    stubs: Stubs, lists: task_list_service_pb2_grpc.TaskListServiceStub, team: Team
) -> None:
    task = await _task(stubs, team.owner, task_list_id=team.task_list.id)
    hidden_task = await fails(
        stubs.tasks.GetTask(pb.GetTaskRequest(id=task.id), metadata=team.outsider.metadata),
        NOT_FOUND,
    )
    missing_task = await fails(
        stubs.tasks.GetTask(
            pb.GetTaskRequest(id=task.id + 10_000), metadata=team.outsider.metadata
        ),
        NOT_FOUND,
    )
    assert (hidden_task.reason, hidden_task.message) == (missing_task.reason, missing_task.message)
    hidden_list = await fails(
        lists.GetTaskList(
            lsvc.GetTaskListRequest(id=team.task_list.id), metadata=team.outsider.metadata
        ),
        NOT_FOUND,
    )
    missing_list = await fails(
        lists.GetTaskList(
            lsvc.GetTaskListRequest(id=team.task_list.id + 10_000),
            metadata=team.outsider.metadata,
        ),
        NOT_FOUND,
    )
    assert (hidden_list.reason, hidden_list.message) == (missing_list.reason, missing_list.message)
    # Creating into it, or adding members by email, tells an outsider nothing either.
    into = await fails(
        stubs.tasks.CreateTask(
            pb.CreateTaskRequest(task=task_pb2.Task(title="x", task_list_id=team.task_list.id)),
            metadata=team.outsider.metadata,
        ),
        NOT_FOUND,
    )
    assert into.reason == missing_list.reason
    by_email = await fails(
        lists.AddTaskListMember(
            lsvc.AddTaskListMemberRequest(
                task_list_id=team.task_list.id,
                email="nobody@example.com",
                member=lists_pb.TaskListMember(role=VIEWER),
            ),
            metadata=team.outsider.metadata,
        ),
        NOT_FOUND,
    )
    assert (by_email.reason, by_email.message) == (missing_list.reason, missing_list.message)
    # An editor is told the role it lacks before any user is looked up.
    editor_tries = await fails(
        lists.AddTaskListMember(
            lsvc.AddTaskListMemberRequest(
                task_list_id=team.task_list.id,
                email="nobody@example.com",
                member=lists_pb.TaskListMember(role=VIEWER),
            ),
            metadata=team.editor.metadata,
        ),
        DENIED,
    )
    assert editor_tries.error_metadata == {"role": "TASK_LIST_ROLE_OWNER"}


async def test_assignees_must_be_members_and_removal_unassigns_them(
    stubs: Stubs, lists: task_list_service_pb2_grpc.TaskListServiceStub, team: Team
) -> None:
    task = await _task(stubs, team.editor, task_list_id=team.task_list.id)

    def assign(user_id: int) -> pb.PatchTaskRequest:
        return pb.PatchTaskRequest(
            task=task_pb2.Task(id=task.id, assignee_id=user_id),
            update_mask=FieldMask(paths=["assignee_id"]),
        )

    refused = await fails(
        stubs.tasks.PatchTask(assign(team.outsider.user.id), metadata=team.editor.metadata),
        PRECONDITION,
    )
    assert refused.reason == "ASSIGNEE_NOT_MEMBER"
    unchanged = await stubs.tasks.GetTask(
        pb.GetTaskRequest(id=task.id), metadata=team.editor.metadata
    )
    assert unchanged.task == task
    assigned = await stubs.tasks.PatchTask(
        assign(team.viewer.user.id), metadata=team.editor.metadata
    )
    assert assigned.task.assignee_id == team.viewer.user.id
    mine = await stubs.tasks.ListTasks(
        pb.ListTasksRequest(filter=f"assignee_id = {team.viewer.user.id}"),
        metadata=team.viewer.metadata,
    )
    assert [t.id for t in mine.tasks] == [task.id]
    await lists.RemoveTaskListMember(
        lsvc.RemoveTaskListMemberRequest(
            task_list_id=team.task_list.id, user_id=team.viewer.user.id
        ),
        metadata=team.owner.metadata,
    )
    after = await stubs.tasks.GetTask(pb.GetTaskRequest(id=task.id), metadata=team.editor.metadata)
    assert after.task.assignee_id == 0
    assert after.task.etag != assigned.task.etag
    unassigned = await stubs.tasks.ListTasks(
        pb.ListTasksRequest(filter="NOT assignee_id:*"), metadata=team.editor.metadata
    )
    assert task.id in [t.id for t in unassigned.tasks]
    await fails(
        stubs.tasks.GetTask(pb.GetTaskRequest(id=task.id), metadata=team.viewer.metadata), NOT_FOUND
    )


async def test_deleting_an_assignee_unassigns_their_tasks_as_a_recorded_change(
    app: Application, stubs: Stubs, team: Team
) -> None:
    """A deleted user's assignments in lists that outlive them are cleared like a removal's.

    Each task gets a new etag (the old one no longer writes), and its list's members see the
    change on their streams.
    """
    admin = await make_admin(app, stubs)
    task = await _task(stubs, team.editor, task_list_id=team.task_list.id)
    assigned = await stubs.tasks.PatchTask(
        pb.PatchTaskRequest(
            task=task_pb2.Task(id=task.id, assignee_id=team.viewer.user.id),
            update_mask=FieldMask(paths=["assignee_id"]),
        ),
        metadata=team.editor.metadata,
    )
    listed = await stubs.tasks.ListTasks(pb.ListTasksRequest(), metadata=team.editor.metadata)
    stream = stubs.tasks.WatchTasks(
        pb.WatchTasksRequest(start_revision=listed.revision), metadata=team.editor.metadata
    )
    try:
        await stubs.users.DeleteUser(
            users_pb.DeleteUserRequest(id=team.viewer.user.id), metadata=admin.metadata
        )
        after = await stubs.tasks.GetTask(
            pb.GetTaskRequest(id=task.id), metadata=team.editor.metadata
        )
        assert after.task.assignee_id == 0
        assert after.task.etag != assigned.task.etag
        seen = await read_until(
            stream,
            lambda responses: any(
                r.change.task.id == task.id and r.change.task.assignee_id == 0 for r in responses
            ),
        )
        # (The assignment itself may come first: a change is numbered just after its commit.)
        assert seen[-1].change.task == after.task
        stale = pb.PatchTaskRequest(
            task=task_pb2.Task(id=task.id, title="stale", etag=assigned.task.etag),
            update_mask=FieldMask(paths=["title"]),
        )
        await fails(stubs.tasks.PatchTask(stale, metadata=team.editor.metadata), ABORTED)
    finally:
        stream.cancel()


async def test_a_list_keeps_an_owner_and_its_first_owner_owns_its_tasks(
    stubs: Stubs, lists: task_list_service_pb2_grpc.TaskListServiceStub, team: Team
) -> None:
    list_id = team.task_list.id
    task = await _task(stubs, team.editor, task_list_id=list_id)
    for call in (
        lists.LeaveTaskList(
            lsvc.LeaveTaskListRequest(task_list_id=list_id), metadata=team.owner.metadata
        ),
        lists.UpdateTaskListMember(
            lsvc.UpdateTaskListMemberRequest(
                task_list_id=list_id, user_id=team.owner.user.id, role=EDITOR
            ),
            metadata=team.owner.metadata,
        ),
        lists.RemoveTaskListMember(
            lsvc.RemoveTaskListMemberRequest(task_list_id=list_id, user_id=team.owner.user.id),
            metadata=team.owner.metadata,
        ),
    ):
        refused = await fails(call, PRECONDITION)
        assert refused.reason == "LAST_OWNER"
    await lists.UpdateTaskListMember(
        lsvc.UpdateTaskListMemberRequest(
            task_list_id=list_id, user_id=team.editor.user.id, role=OWNER
        ),
        metadata=team.owner.metadata,
    )
    await lists.LeaveTaskList(
        lsvc.LeaveTaskListRequest(task_list_id=list_id), metadata=team.owner.metadata
    )
    got = await lists.GetTaskList(
        lsvc.GetTaskListRequest(id=list_id), metadata=team.editor.metadata
    )
    assert got.task_list.owner_id == team.editor.user.id
    moved = await stubs.tasks.GetTask(pb.GetTaskRequest(id=task.id), metadata=team.editor.metadata)
    assert moved.task.owner_id == team.editor.user.id
    await fails(
        lists.GetTaskList(lsvc.GetTaskListRequest(id=list_id), metadata=team.owner.metadata),
        NOT_FOUND,
    )


async def test_trashing_a_list_trashes_its_tasks_and_undelete_brings_back_what_went_with_it(
    stubs: Stubs, lists: task_list_service_pb2_grpc.TaskListServiceStub, team: Team
) -> None:
    list_id = team.task_list.id
    kept, alone = [await _task(stubs, team.editor, task_list_id=list_id) for _ in range(2)]
    await stubs.tasks.DeleteTask(pb.DeleteTaskRequest(id=alone.id), metadata=team.editor.metadata)
    refused = await fails(
        lists.DeleteTaskList(lsvc.DeleteTaskListRequest(id=list_id), metadata=team.editor.metadata),
        DENIED,
    )
    assert refused.reason == "TASK_LIST_ROLE_REQUIRED"
    trashed = await lists.DeleteTaskList(
        lsvc.DeleteTaskListRequest(id=list_id, etag=team.task_list.etag),
        metadata=team.owner.metadata,
    )
    assert trashed.task_list.HasField("delete_time")
    assert trashed.task_list.HasField("purge_time")
    gone = await stubs.tasks.GetTask(pb.GetTaskRequest(id=kept.id), metadata=team.viewer.metadata)
    assert gone.task.HasField("delete_time")
    refused = await fails(
        stubs.tasks.UndeleteTask(pb.UndeleteTaskRequest(id=kept.id), metadata=team.editor.metadata),
        PRECONDITION,
    )
    assert refused.reason == "TASK_LIST_DELETED"
    refused = await fails(
        stubs.tasks.CreateTask(
            pb.CreateTaskRequest(task=task_pb2.Task(title="x", task_list_id=list_id)),
            metadata=team.editor.metadata,
        ),
        PRECONDITION,
    )
    assert refused.reason == "TASK_LIST_DELETED"
    assert list_id not in [tl.id for tl in await _my_lists(lists, team.viewer)]
    restored = await lists.UndeleteTaskList(
        lsvc.UndeleteTaskListRequest(id=list_id), metadata=team.owner.metadata
    )
    assert not restored.task_list.HasField("delete_time")
    back = await stubs.tasks.BatchGetTasks(
        pb.BatchGetTasksRequest(ids=[kept.id, alone.id]), metadata=team.viewer.metadata
    )
    assert [t.HasField("delete_time") for t in back.tasks] == [False, True]


async def test_moving_a_task_to_another_list_moves_its_subtree_and_needs_editor_on_both(
    stubs: Stubs, lists: task_list_service_pb2_grpc.TaskListServiceStub, team: Team
) -> None:
    parent = await _task(stubs, team.editor, task_list_id=team.task_list.id)
    child = await _task(stubs, team.editor, parent_id=parent.id)
    assert child.task_list_id == team.task_list.id
    await stubs.tasks.PatchTask(
        pb.PatchTaskRequest(
            task=task_pb2.Task(id=child.id, assignee_id=team.viewer.user.id),
            update_mask=FieldMask(paths=["assignee_id"]),
        ),
        metadata=team.editor.metadata,
    )
    (editors_own,) = [tl for tl in await _my_lists(lists, team.editor) if tl.personal]
    viewer_moves = await fails(
        stubs.tasks.MoveTask(
            pb.MoveTaskRequest(id=parent.id, task_list_id=editors_own.id),
            metadata=team.viewer.metadata,
        ),
        DENIED,
    )
    assert viewer_moves.reason == "TASK_LIST_ROLE_REQUIRED"
    moved = await stubs.tasks.MoveTask(
        pb.MoveTaskRequest(id=parent.id, task_list_id=editors_own.id),
        metadata=team.editor.metadata,
    )
    assert (moved.task.task_list_id, moved.task.owner_id) == (editors_own.id, team.editor.user.id)
    moved_child = await stubs.tasks.GetTask(
        pb.GetTaskRequest(id=child.id), metadata=team.editor.metadata
    )
    # The subtree went along; the viewer is no member there, so the child is unassigned.
    assert (moved_child.task.task_list_id, moved_child.task.parent_id) == (
        editors_own.id,
        parent.id,
    )
    assert moved_child.task.assignee_id == 0
    await fails(
        stubs.tasks.GetTask(pb.GetTaskRequest(id=child.id), metadata=team.viewer.metadata),
        NOT_FOUND,
    )


async def test_concurrent_removals_of_the_last_two_owners_leave_one(
    stubs: Stubs, lists: task_list_service_pb2_grpc.TaskListServiceStub, team: Team
) -> None:
    list_id = team.task_list.id
    await lists.UpdateTaskListMember(
        lsvc.UpdateTaskListMemberRequest(
            task_list_id=list_id, user_id=team.editor.user.id, role=OWNER
        ),
        metadata=team.owner.metadata,
    )
    results = await asyncio.gather(
        lists.RemoveTaskListMember(
            lsvc.RemoveTaskListMemberRequest(task_list_id=list_id, user_id=team.editor.user.id),
            metadata=team.owner.metadata,
        ),
        lists.RemoveTaskListMember(
            lsvc.RemoveTaskListMemberRequest(task_list_id=list_id, user_id=team.owner.user.id),
            metadata=team.editor.metadata,
        ),
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(failures) == 1
    assert failures[0].code() in (PRECONDITION, NOT_FOUND)
    owners = []
    for account in (team.owner, team.editor):
        try:
            members = await lists.ListTaskListMembers(
                lsvc.ListTaskListMembersRequest(task_list_id=list_id), metadata=account.metadata
            )
        except grpc.aio.AioRpcError:
            continue
        owners = [m.user_id for m in members.members if m.role == OWNER]
    assert len(owners) == 1


async def test_admins_reach_every_list_without_being_members(
    app: Application,
    stubs: Stubs,
    lists: task_list_service_pb2_grpc.TaskListServiceStub,
    team: Team,
) -> None:
    admin = await make_admin(app, stubs)
    task = await _task(stubs, admin, task_list_id=team.task_list.id)
    assert (task.owner_id, task.creator_id) == (team.owner.user.id, admin.user.id)
    listed = await lists.ListTaskLists(
        lsvc.ListTaskListsRequest(member_id=team.viewer.user.id), metadata=admin.metadata
    )
    assert team.task_list.id in [tl.id for tl in listed.task_lists]
    refused = await fails(
        lists.ListTaskLists(
            lsvc.ListTaskListsRequest(member_id=team.viewer.user.id), metadata=team.owner.metadata
        ),
        DENIED,
    )
    assert refused.reason == "OWNER_NOT_ALLOWED"


@pytest.fixture
async def http(app: Application) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.http_port}") as client:
        yield client


async def test_sharing_and_assigning_over_connect(stubs: Stubs, http: httpx.AsyncClient) -> None:
    ada, bob = await register(stubs), await register(stubs)
    ada_h, bob_h = auth_headers(ada.token), auth_headers(bob.token)
    created = await connect_json(
        http, f"{LISTS}/CreateTaskList", {"taskList": {"title": "Trip"}}, **ada_h
    )
    assert created.status_code == 200, created.text
    list_id = int(created.json()["taskList"]["id"])
    added = await connect_json(
        http,
        f"{LISTS}/AddTaskListMember",
        {
            "taskListId": list_id,
            "email": bob.user.email,
            "member": {"role": "TASK_LIST_ROLE_EDITOR"},
        },
        **ada_h,
    )
    assert added.json()["member"]["role"] == "TASK_LIST_ROLE_EDITOR"
    task = await connect_json(
        http,
        f"{TASKS}/CreateTask",
        {"task": {"title": "Book", "taskListId": list_id, "assigneeId": bob.user.id}},
        **bob_h,
    )
    body = task.json()["task"]
    assert (int(body["taskListId"]), int(body["assigneeId"]), int(body["ownerId"])) == (
        list_id,
        bob.user.id,
        ada.user.id,
    )
    denied = await connect_json(http, f"{LISTS}/DeleteTaskList", {"id": list_id}, **bob_h)
    failure = connect_failure(denied)
    assert (failure.code, failure.reason) == ("PERMISSION_DENIED", "TASK_LIST_ROLE_REQUIRED")
    hidden = await connect_json(
        http, f"{LISTS}/GetTaskList", {"id": list_id}, **auth_headers((await register(stubs)).token)
    )
    assert connect_failure(hidden).code == "NOT_FOUND"


async def test_a_member_removed_while_patching_never_writes_after_the_removal(
    stubs: Stubs, lists: task_list_service_pb2_grpc.TaskListServiceStub, team: Team
) -> None:
    task = await _task(stubs, team.owner, task_list_id=team.task_list.id)

    async def patch_until_refused() -> list[str]:
        outcomes: list[str] = []
        for n in range(5000):  # until refused: the removal comes within a few calls
            if outcomes and outcomes[-1] == "NOT_FOUND":
                break
            try:
                await stubs.tasks.PatchTask(
                    pb.PatchTaskRequest(
                        task=task_pb2.Task(id=task.id, title=f"edit {n}"),
                        update_mask=FieldMask(paths=["title"]),
                    ),
                    metadata=team.editor.metadata,
                )
                outcomes.append("OK")
            except grpc.aio.AioRpcError as error:
                outcomes.append(error.code().name)
        return outcomes

    async def remove_then_read() -> str:
        await asyncio.sleep(0)  # let the patches start
        await lists.RemoveTaskListMember(
            lsvc.RemoveTaskListMemberRequest(
                task_list_id=team.task_list.id, user_id=team.editor.user.id
            ),
            metadata=team.owner.metadata,
        )
        got = await stubs.tasks.GetTask(pb.GetTaskRequest(id=task.id), metadata=team.owner.metadata)
        return got.task.etag

    outcomes, etag_at_removal = await asyncio.gather(patch_until_refused(), remove_then_read())
    # Writes succeed up to the removal, then every one is NOT_FOUND; none lands after it.
    assert set(outcomes) <= {"OK", "NOT_FOUND"}
    assert outcomes[-1] == "NOT_FOUND"
    assert "OK" not in outcomes[outcomes.index("NOT_FOUND") :]
    final = await stubs.tasks.GetTask(pb.GetTaskRequest(id=task.id), metadata=team.owner.metadata)
    assert final.task.etag == etag_at_removal
