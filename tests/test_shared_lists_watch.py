"""WatchTasks follows access: a client's mirror (ListTasks + WatchTasks) stays exact.

Its user is added to a list, changes role, sees the list trashed and restored, and is removed.

The mirror does what the proto tells clients to do: apply changes, drop hidden, trashed and
purged tasks, relist a list it is granted and drop a list it loses. After each step the user
makes a marker task of their own and reads the stream up to it (changes come in revision
order), then the mirror must equal a fresh ListTasks exactly.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from taskservice.config import Settings
from taskservice.server import Application
from taskservice.v1 import task_list_pb2 as lists_pb
from taskservice.v1 import task_list_service_pb2 as lsvc
from taskservice.v1 import task_list_service_pb2_grpc, task_pb2
from taskservice.v1 import task_service_pb2 as pb
from tests.conftest import Stubs, make_settings
from tests.helpers import Account, register
from tests.watching import read_until

GRANTED = pb.TASK_LIST_ACCESS_CHANGE_TYPE_GRANTED
REVOKED = pb.TASK_LIST_ACCESS_CHANGE_TYPE_REVOKED
GONE = {pb.TASK_CHANGE_TYPE_DELETED, pb.TASK_CHANGE_TYPE_PURGED, pb.TASK_CHANGE_TYPE_HIDDEN}


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url, watch_bookmark_seconds=0.2)


@pytest.fixture
def lists(channel: grpc.aio.Channel) -> task_list_service_pb2_grpc.TaskListServiceStub:
    return task_list_service_pb2_grpc.TaskListServiceStub(channel)


async def _all_tasks(
    stubs: Stubs, account: Account, filter_text: str = ""
) -> tuple[dict[int, Any], int]:
    """Every task a ListTasks walk returns, by id, and the revision read before the first page."""
    found: dict[int, Any] = {}
    token, revision = "", None
    while True:
        page = await stubs.tasks.ListTasks(
            pb.ListTasksRequest(page_token=token, filter=filter_text), metadata=account.metadata
        )
        revision = page.revision if revision is None else revision
        found.update((task.id, task) for task in page.tasks)
        if not (token := page.next_page_token):
            return found, revision


class Mirror:
    """A client's copy of what its user may see, kept by ListTasks and WatchTasks."""

    def __init__(self, stubs: Stubs, account: Account) -> None:
        self.stubs, self.account = stubs, account
        self.tasks: dict[int, Any] = {}
        self.stream: Any = None

    async def start(self) -> None:
        """List everything, then watch from the list's revision."""
        self.tasks, revision = await _all_tasks(self.stubs, self.account)
        self.stream = self.stubs.tasks.WatchTasks(
            pb.WatchTasksRequest(start_revision=revision), metadata=self.account.metadata
        )

    async def sync(self) -> list[pb.WatchTasksResponse]:
        """Make a marker task and apply the stream up to its change; what came."""
        marker = await self.stubs.tasks.CreateTask(
            pb.CreateTaskRequest(task=task_pb2.Task(title="marker")),
            metadata=self.account.metadata,
        )

        def reached_marker(responses: list[pb.WatchTasksResponse]) -> bool:
            return any(r.change.task.id == marker.task.id for r in responses)

        responses = await read_until(self.stream, reached_marker)
        for response in responses:
            await self.apply(response)
        return responses

    async def apply(self, response: pb.WatchTasksResponse) -> None:
        """Apply one response as the proto says a mirror should."""
        if response.HasField("access_change"):
            list_id = response.access_change.task_list_id
            if response.access_change.type == GRANTED:
                relisted, _ = await _all_tasks(
                    self.stubs, self.account, f"task_list_id = {list_id}"
                )
                self.tasks.update(relisted)
            else:
                self.tasks = {
                    key: task for key, task in self.tasks.items() if task.task_list_id != list_id
                }
        elif response.HasField("change"):
            change = response.change
            if change.type in GONE:
                self.tasks.pop(change.task.id, None)
            else:
                self.tasks[change.task.id] = change.task

    async def check(self) -> None:
        """The mirror is exactly what ListTasks returns now."""
        truth, _ = await _all_tasks(self.stubs, self.account)
        assert self.tasks == truth


def _access(responses: list[pb.WatchTasksResponse]) -> list[tuple[int, int]]:
    return [
        (r.access_change.type, r.access_change.task_list_id)
        for r in responses
        if r.HasField("access_change")
    ]


async def test_a_mirror_stays_exact_across_membership_changes(
    app: Application, stubs: Stubs, lists: task_list_service_pb2_grpc.TaskListServiceStub
) -> None:
    ann, bea = await register(stubs), await register(stubs)
    shared = (
        await lists.CreateTaskList(
            lsvc.CreateTaskListRequest(task_list=lists_pb.TaskList(title="Shared")),
            metadata=ann.metadata,
        )
    ).task_list
    (ann_personal,) = [
        tl
        for tl in (
            await lists.ListTaskLists(lsvc.ListTaskListsRequest(), metadata=ann.metadata)
        ).task_lists
        if tl.personal
    ]

    async def ann_task(title: str, **fields: object) -> task_pb2.Task:
        request = pb.CreateTaskRequest(task=task_pb2.Task(title=title, **fields))
        return (await stubs.tasks.CreateTask(request, metadata=ann.metadata)).task

    first = await ann_task("before bea", task_list_id=shared.id)
    await ann_task("ann's own")
    mirror = Mirror(stubs, bea)
    await mirror.start()

    # Not a member yet: nothing of the list arrives.
    await ann_task("still before bea", task_list_id=shared.id)
    assert _access(await mirror.sync()) == []
    await mirror.check()

    # Added: the stream names the list, the mirror relists it.
    await lists.AddTaskListMember(
        lsvc.AddTaskListMemberRequest(
            task_list_id=shared.id, member=lists_pb.TaskListMember(user_id=bea.user.id, role=1)
        ),
        metadata=ann.metadata,
    )
    assert _access(await mirror.sync()) == [(GRANTED, shared.id)]
    assert first.id in mirror.tasks
    await mirror.check()

    # Changes of the list now arrive; a role change changes nothing visible.
    await stubs.tasks.PatchTask(
        pb.PatchTaskRequest(
            task=task_pb2.Task(id=first.id, title="changed"), update_mask=FieldMask(paths=["title"])
        ),
        metadata=ann.metadata,
    )
    await lists.UpdateTaskListMember(
        lsvc.UpdateTaskListMemberRequest(
            task_list_id=shared.id, user_id=bea.user.id, role=lists_pb.TASK_LIST_ROLE_EDITOR
        ),
        metadata=ann.metadata,
    )
    await ann_task("after bea", task_list_id=shared.id)
    assert _access(await mirror.sync()) == []
    await mirror.check()

    # Trashed and restored: the tasks leave and come back as changes.
    await lists.DeleteTaskList(lsvc.DeleteTaskListRequest(id=shared.id), metadata=ann.metadata)
    await mirror.sync()
    await mirror.check()
    assert first.id not in mirror.tasks
    await lists.UndeleteTaskList(lsvc.UndeleteTaskListRequest(id=shared.id), metadata=ann.metadata)
    await mirror.sync()
    await mirror.check()
    assert first.id in mirror.tasks

    # A task moved to a list bea cannot see leaves her mirror.
    await stubs.tasks.MoveTask(
        pb.MoveTaskRequest(id=first.id, task_list_id=ann_personal.id), metadata=ann.metadata
    )
    await mirror.sync()
    await mirror.check()
    assert first.id not in mirror.tasks

    # Removed: the list is dropped, and nothing of it arrives any more.
    await lists.RemoveTaskListMember(
        lsvc.RemoveTaskListMemberRequest(task_list_id=shared.id, user_id=bea.user.id),
        metadata=ann.metadata,
    )
    assert _access(await mirror.sync()) == [(REVOKED, shared.id)]
    await mirror.check()
    await ann_task("after removal", task_list_id=shared.id)
    responses = await mirror.sync()
    assert all(r.change.task.task_list_id != shared.id for r in responses)
    await mirror.check()
    mirror.stream.cancel()


async def test_a_stream_replaying_history_sends_nothing_of_a_list_lost_since(
    app: Application, stubs: Stubs, lists: task_list_service_pb2_grpc.TaskListServiceStub
) -> None:
    """Revocation is immediate: changes recorded before the removal but not yet sent are not."""
    ann, bea = await register(stubs), await register(stubs)
    shared = (
        await lists.CreateTaskList(
            lsvc.CreateTaskListRequest(task_list=lists_pb.TaskList(title="Shared")),
            metadata=ann.metadata,
        )
    ).task_list
    await lists.AddTaskListMember(
        lsvc.AddTaskListMemberRequest(
            task_list_id=shared.id, member=lists_pb.TaskListMember(user_id=bea.user.id, role=1)
        ),
        metadata=ann.metadata,
    )
    await app.database.number_changes()
    start = (
        await stubs.tasks.BatchGetTasks(pb.BatchGetTasksRequest(), metadata=bea.metadata)
    ).revision
    for title in ("one", "two"):
        await stubs.tasks.CreateTask(
            pb.CreateTaskRequest(task=task_pb2.Task(title=title, task_list_id=shared.id)),
            metadata=ann.metadata,
        )
    await lists.RemoveTaskListMember(
        lsvc.RemoveTaskListMemberRequest(task_list_id=shared.id, user_id=bea.user.id),
        metadata=ann.metadata,
    )
    mirror = Mirror(stubs, bea)
    mirror.stream = stubs.tasks.WatchTasks(
        pb.WatchTasksRequest(start_revision=start), metadata=bea.metadata
    )
    responses = await mirror.sync()
    assert [r.change.task.title for r in responses if r.HasField("change")] == ["marker"]
    assert _access(responses) == [(REVOKED, shared.id)]
    mirror.stream.cancel()
