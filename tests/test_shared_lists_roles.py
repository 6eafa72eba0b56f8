"""The role matrix: every TaskService and TaskListService RPC, for each role, on both edges.

Each row names an RPC, how to build its request on a fresh scene (a shared list with an owner,
an editor, a viewer and one more viewer, and a task in it), and what each caller gets: a
viewer reads, an editor also writes tasks, an owner also manages the list; someone outside
gets NOT_FOUND exactly as for a missing id; an admin reaches everything without being a member.
WatchTasks is covered by tests/test_shared_lists_watch.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message

from taskservice.server import Application
from taskservice.v1 import task_list_pb2 as lists_pb
from taskservice.v1 import task_list_service_pb2 as lsvc
from taskservice.v1 import task_list_service_pb2_grpc, task_pb2
from taskservice.v1 import task_service_pb2 as pb
from tests.conftest import Stubs
from tests.helpers import Account, make_admin, register
from tests.http_client import auth_headers, connect_failure, connect_json

ROLES = ("viewer", "editor", "owner", "outsider", "admin")
OK, NOT_FOUND, DENIED, PRECONDITION = "OK", "NOT_FOUND", "PERMISSION_DENIED", "FAILED_PRECONDITION"
READERS = {"viewer": OK, "editor": OK, "owner": OK, "outsider": NOT_FOUND, "admin": OK}
WRITERS = {"viewer": DENIED, "editor": OK, "owner": OK, "outsider": NOT_FOUND, "admin": OK}
MANAGERS = {"viewer": DENIED, "editor": DENIED, "owner": OK, "outsider": NOT_FOUND, "admin": OK}


@dataclass
class Scene:
    """A fresh shared list, its people, and a live and a trashed task in it."""

    accounts: dict[str, Account]
    extra: Account
    task_list: lists_pb.TaskList
    task: task_pb2.Task
    trashed: task_pb2.Task


@dataclass(frozen=True)
class Row:
    """One RPC: its service path, its request on a scene, and each role's outcome."""

    method: str
    request: Callable[[Scene], Message]
    outcomes: dict[str, str]
    response: type[Message]
    #: Prepares the scene for the call (trash the list first, say).
    prepare: str = ""


def _task_patch(scene: Scene) -> Message:
    return pb.PatchTaskRequest(
        task=task_pb2.Task(id=scene.task.id, title="patched"),
        update_mask=FieldMask(paths=["title"]),
    )


ROWS = [
    Row(
        "TaskService/ListTasks",
        lambda s: pb.ListTasksRequest(filter=f"task_list_id = {s.task_list.id}"),
        {role: OK for role in ROLES},
        pb.ListTasksResponse,
    ),
    Row(
        "TaskService/GetTask",
        lambda s: pb.GetTaskRequest(id=s.task.id),
        READERS,
        pb.GetTaskResponse,
    ),
    Row(
        "TaskService/BatchGetTasks",
        lambda s: pb.BatchGetTasksRequest(ids=[s.task.id]),
        READERS,
        pb.BatchGetTasksResponse,
    ),
    Row(
        "TaskService/CreateTask",
        lambda s: pb.CreateTaskRequest(
            task=task_pb2.Task(title="new", task_list_id=s.task_list.id)
        ),
        WRITERS,
        pb.CreateTaskResponse,
    ),
    Row(
        "TaskService/UpdateTask",
        lambda s: pb.UpdateTaskRequest(task=task_pb2.Task(id=s.task.id, title="replaced")),
        WRITERS,
        pb.UpdateTaskResponse,
    ),
    Row("TaskService/PatchTask", _task_patch, WRITERS, pb.PatchTaskResponse),
    Row(
        "TaskService/DeleteTask",
        lambda s: pb.DeleteTaskRequest(id=s.task.id),
        WRITERS,
        pb.DeleteTaskResponse,
    ),
    Row(
        "TaskService/UndeleteTask",
        lambda s: pb.UndeleteTaskRequest(id=s.trashed.id),
        WRITERS,
        pb.UndeleteTaskResponse,
    ),
    Row(
        "TaskService/MoveTask",
        lambda s: pb.MoveTaskRequest(id=s.task.id),
        WRITERS,
        pb.MoveTaskResponse,
    ),
    Row(
        "TaskListService/ListTaskLists",
        lambda s: lsvc.ListTaskListsRequest(),
        {role: OK for role in ROLES},
        lsvc.ListTaskListsResponse,
    ),
    Row(
        "TaskListService/CreateTaskList",
        lambda s: lsvc.CreateTaskListRequest(task_list=lists_pb.TaskList(title="mine")),
        {role: OK for role in ROLES},
        lsvc.CreateTaskListResponse,
    ),
    Row(
        "TaskListService/GetTaskList",
        lambda s: lsvc.GetTaskListRequest(id=s.task_list.id),
        READERS,
        lsvc.GetTaskListResponse,
    ),
    Row(
        "TaskListService/UpdateTaskList",
        lambda s: lsvc.UpdateTaskListRequest(
            task_list=lists_pb.TaskList(id=s.task_list.id, title="renamed"),
            update_mask=FieldMask(paths=["title"]),
        ),
        MANAGERS,
        lsvc.UpdateTaskListResponse,
    ),
    Row(
        "TaskListService/DeleteTaskList",
        lambda s: lsvc.DeleteTaskListRequest(id=s.task_list.id),
        MANAGERS,
        lsvc.DeleteTaskListResponse,
    ),
    Row(
        "TaskListService/UndeleteTaskList",
        lambda s: lsvc.UndeleteTaskListRequest(id=s.task_list.id),
        MANAGERS,
        lsvc.UndeleteTaskListResponse,
        prepare="trash list",
    ),
    Row(
        "TaskListService/ListTaskListMembers",
        lambda s: lsvc.ListTaskListMembersRequest(task_list_id=s.task_list.id),
        READERS,
        lsvc.ListTaskListMembersResponse,
    ),
    Row(
        "TaskListService/AddTaskListMember",
        lambda s: lsvc.AddTaskListMemberRequest(
            task_list_id=s.task_list.id,
            member=lists_pb.TaskListMember(
                user_id=s.accounts["outsider"].user.id, role=lists_pb.TASK_LIST_ROLE_VIEWER
            ),
        ),
        MANAGERS,
        lsvc.AddTaskListMemberResponse,
    ),
    Row(
        "TaskListService/UpdateTaskListMember",
        lambda s: lsvc.UpdateTaskListMemberRequest(
            task_list_id=s.task_list.id,
            user_id=s.extra.user.id,
            role=lists_pb.TASK_LIST_ROLE_EDITOR,
        ),
        MANAGERS,
        lsvc.UpdateTaskListMemberResponse,
    ),
    Row(
        "TaskListService/RemoveTaskListMember",
        lambda s: lsvc.RemoveTaskListMemberRequest(
            task_list_id=s.task_list.id, user_id=s.extra.user.id
        ),
        MANAGERS,
        lsvc.RemoveTaskListMemberResponse,
    ),
    Row(
        "TaskListService/LeaveTaskList",
        lambda s: lsvc.LeaveTaskListRequest(task_list_id=s.task_list.id),
        {
            "viewer": OK,
            "editor": OK,
            "owner": PRECONDITION,
            "outsider": NOT_FOUND,
            "admin": NOT_FOUND,
        },
        lsvc.LeaveTaskListResponse,
    ),
]


@dataclass
class Caller:
    """Calls an RPC on one edge and reports its code and response."""

    stubs: Stubs
    lists: task_list_service_pb2_grpc.TaskListServiceStub
    http: httpx.AsyncClient
    edge: str

    async def __call__(
        self, method: str, request: Message, response_type: type[Message], account: Account
    ) -> tuple[str, Message | None]:
        """The call's code name (OK on success) and its response."""
        service, name = method.split("/")
        if self.edge == "grpc":
            stub: Any = self.stubs.tasks if service == "TaskService" else self.lists
            try:
                return OK, await getattr(stub, name)(request, metadata=account.metadata)
            except grpc.aio.AioRpcError as error:
                return error.code().name, None
        reply = await connect_json(
            self.http,
            f"/taskservice.v1.{method}",
            json_format.MessageToDict(request),
            **auth_headers(account.token),
        )
        if reply.status_code != 200:
            return connect_failure(reply).code, None
        return OK, json_format.ParseDict(reply.json(), response_type(), ignore_unknown_fields=True)


async def _scene(
    caller: Caller, accounts: dict[str, Account], extra: Account, prepare: str
) -> Scene:
    owner = accounts["owner"]
    created = await caller.lists.CreateTaskList(
        lsvc.CreateTaskListRequest(task_list=lists_pb.TaskList(title="Shared")),
        metadata=owner.metadata,
    )
    task_list = created.task_list
    for account, role in (
        (accounts["editor"], lists_pb.TASK_LIST_ROLE_EDITOR),
        (accounts["viewer"], lists_pb.TASK_LIST_ROLE_VIEWER),
        (extra, lists_pb.TASK_LIST_ROLE_VIEWER),
    ):
        await caller.lists.AddTaskListMember(
            lsvc.AddTaskListMemberRequest(
                task_list_id=task_list.id,
                member=lists_pb.TaskListMember(user_id=account.user.id, role=role),
            ),
            metadata=owner.metadata,
        )
    tasks = []
    for title in ("live", "trashed"):
        created_task = await caller.stubs.tasks.CreateTask(
            pb.CreateTaskRequest(task=task_pb2.Task(title=title, task_list_id=task_list.id)),
            metadata=owner.metadata,
        )
        tasks.append(created_task.task)
    await caller.stubs.tasks.DeleteTask(
        pb.DeleteTaskRequest(id=tasks[1].id), metadata=owner.metadata
    )
    if prepare == "trash list":
        await caller.lists.DeleteTaskList(
            lsvc.DeleteTaskListRequest(id=task_list.id), metadata=owner.metadata
        )
    return Scene(accounts, extra, task_list, tasks[0], tasks[1])


@pytest.mark.parametrize("edge", ["grpc", "connect"])
@pytest.mark.parametrize("row", ROWS, ids=[row.method for row in ROWS])
async def test_each_role_gets_what_its_role_allows(
    app: Application,
    stubs: Stubs,
    channel: grpc.aio.Channel,
    row: Row,
    edge: str,
) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.http_port}") as http:
        caller = Caller(stubs, task_list_service_pb2_grpc.TaskListServiceStub(channel), http, edge)
        accounts = {role: await register(stubs) for role in ROLES if role != "admin"}
        accounts["admin"] = await make_admin(app, stubs)
        extra = await register(stubs)
        got = {}
        for role in ROLES:
            scene = await _scene(caller, accounts, extra, row.prepare)
            code, response = await caller(
                row.method, row.request(scene), row.response, accounts[role]
            )
            got[role] = code
            if row.method == "TaskService/ListTasks" and response is not None:
                # Listing is allowed to everyone; only members and admins see the list's task.
                seen = scene.task.id in [task.id for task in response.tasks]  # type: ignore[attr-defined]
                assert seen == (role != "outsider"), role
        assert got == row.outcomes
