"""The scenarios: what each sends, built from the seeded data for a given concurrency.

A scenario is one or more h2load loads started together. Where a scenario needs several bodies
(PatchTask on several tasks, the mixed workload), each body is a load of its own; at
concurrency 1 those loads run one after another, since a lone client's calls never overlap.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf import json_format
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message

from bench.echo_server import ECHO_PATH
from bench.floor_server import READ_PATH
from bench.h2load import Load, frame
from bench.seed import PASSWORD
from taskservice.v1 import auth_service_pb2, task_pb2, task_service_pb2, user_service_pb2

TASKS = "/taskservice.v1.TaskService/"
USERS = "/taskservice.v1.UserService/"
AUTH = "/taskservice.v1.AuthService/"
#: The original REST API's tasks (docs/rest.md), on the HTTP edge.
REST_TASKS = "/api/v1/tasks/"
#: PatchTask at concurrency C patches this many different tasks, C / this at a time on each.
PATCHED_TASKS = 4


@dataclass(frozen=True)
class Fixture:
    """Accounts, tokens and rows the scenarios address, found once after seeding."""

    user_token: str
    login_email: str
    task_id: int
    patch_task_ids: list[int]
    deep_page_token: str
    admin_token: str
    admin_deep_page_token: str
    #: Deep-page tokens of the filtered and ordered list scenarios, by LIST_VIEWS name.
    view_deep_page_tokens: dict[str, str]
    #: An EDITOR of the seeded shared list (10 members), and a task of that list.
    shared_member_token: str
    shared_task_id: int


#: Filtered and ordered lists users keep open, each served by an index (docs/benchmarks.md):
#: name -> (filter, order_by).
LIST_VIEWS: dict[str, tuple[str, str]] = {
    "ListTasks open by due time, deep page": ("status != TASK_STATUS_DONE", "due_time"),
    "ListTasks by priority, deep page": ("", "priority desc"),
    "ListTasks with a label, deep page": ('labels:"home"', ""),
}


def view_request(name: str, page_token: str = "", page_size: int = 50) -> object:
    """The ListTasks request of a LIST_VIEWS view."""
    filter_text, order_by = LIST_VIEWS[name]
    return task_service_pb2.ListTasksRequest(
        page_size=page_size, page_token=page_token, filter=filter_text, order_by=order_by
    )


@dataclass(frozen=True)
class Scenario:
    """A named workload; `loads(fixture, concurrency, calls)` builds its h2load loads."""

    name: str
    loads: Callable[[Fixture, int, int], list[Load]]
    #: Calls at concurrency 1 and 32 are scaled by this (bcrypt-bound Login is far slower).
    calls_factor: float = 1.0
    baseline: bool = False
    #: Sent to the HTTP edge (Connect JSON or REST, over HTTP/1.1) instead of the gRPC port.
    http: bool = False


def _single(path: str, message: object, token: str | None = None) -> Callable[..., list[Load]]:
    body = frame(message)  # type: ignore[arg-type]

    def loads(_fixture: Fixture, concurrency: int, calls: int) -> list[Load]:
        return [Load(path, body, concurrency, calls, token)]

    return loads


def _with_fixture(
    build: Callable[[Fixture], tuple[str, object, str | None]],
) -> Callable[..., list[Load]]:
    def loads(fixture: Fixture, concurrency: int, calls: int) -> list[Load]:
        path, message, token = build(fixture)
        return _single(path, message, token)(fixture, concurrency, calls)

    return loads


def _split(
    concurrency: int, calls: int, parts: list[tuple[int, str, bytes, str | None]]
) -> list[Load]:
    """Loads sharing `concurrency` and `calls` by weight (each at least one client and call)."""
    total = sum(weight for weight, *_ in parts)
    loads = []
    for weight, path, body, token in parts:
        share = max(1, round(concurrency * weight / total)) if concurrency > 1 else 1
        loads.append(Load(path, body, share, max(share, round(calls * weight / total)), token))
    return loads


def _patch(fixture: Fixture, concurrency: int, calls: int) -> list[Load]:
    parts = []
    for task_id in fixture.patch_task_ids[: min(concurrency, PATCHED_TASKS)]:
        message = task_service_pb2.PatchTaskRequest(
            task=task_pb2.Task(id=task_id, title="Renamed by the benchmark"),
            update_mask=FieldMask(paths=["title"]),
        )
        parts.append((1, f"{TASKS}PatchTask", frame(message), fixture.user_token))
    return _split(concurrency, calls, parts)


#: What every CreateTask scenario creates, on every edge, so their figures compare.
NEW_TASK_TITLE = "Prepare the quarterly review"
NEW_TASK_DESCRIPTION = "Collect the figures, draft the summary and book a room for Thursday."


def _new_task() -> task_pb2.Task:
    return task_pb2.Task(
        title=NEW_TASK_TITLE,
        description=NEW_TASK_DESCRIPTION,
        status=task_pb2.TASK_STATUS_TODO,
    )


def _create_body() -> bytes:
    return frame(task_service_pb2.CreateTaskRequest(task=_new_task()))


def _mixed(fixture: Fixture, concurrency: int, calls: int) -> list[Load]:
    """About 80% reads (gets, first pages, GetMe) and 20% writes (creates, patches)."""
    token = fixture.user_token
    patch = task_service_pb2.PatchTaskRequest(
        task=task_pb2.Task(id=fixture.patch_task_ids[0], status=task_pb2.TASK_STATUS_DONE),
        update_mask=FieldMask(paths=["status"]),
    )
    return _split(
        concurrency,
        calls,
        [
            (
                16,
                f"{TASKS}GetTask",
                frame(task_service_pb2.GetTaskRequest(id=fixture.task_id)),
                token,
            ),
            (6, f"{TASKS}ListTasks", frame(task_service_pb2.ListTasksRequest(page_size=50)), token),
            (4, f"{USERS}GetMe", frame(user_service_pb2.GetMeRequest()), token),
            (3, f"{TASKS}CreateTask", _create_body(), token),
            (3, f"{TASKS}PatchTask", frame(patch), token),
        ],
    )


def _create(fixture: Fixture, concurrency: int, calls: int) -> list[Load]:
    return [Load(f"{TASKS}CreateTask", _create_body(), concurrency, calls, fixture.user_token)]


def connect_json(message: Message) -> bytes:
    """The Connect JSON body of a request, as curl or a browser would send it."""
    return json_format.MessageToJson(message, indent=None).encode()


def _connect_get_task(fixture: Fixture, concurrency: int, calls: int) -> list[Load]:
    body = connect_json(task_service_pb2.GetTaskRequest(id=fixture.task_id))
    return [Load(f"{TASKS}GetTask", body, concurrency, calls, fixture.user_token, "connect")]


def _connect_create(fixture: Fixture, concurrency: int, calls: int) -> list[Load]:
    body = connect_json(task_service_pb2.CreateTaskRequest(task=_new_task()))
    return [Load(f"{TASKS}CreateTask", body, concurrency, calls, fixture.user_token, "connect")]


#: The original REST API's CreateTask body: the same task as the other edges create.
REST_CREATE_BODY = json.dumps(
    {"title": NEW_TASK_TITLE, "description": NEW_TASK_DESCRIPTION, "status": "todo"}
).encode()


def _rest_get_task(fixture: Fixture, concurrency: int, calls: int) -> list[Load]:
    path = f"{REST_TASKS}{fixture.task_id}"
    return [Load(path, b"", concurrency, calls, fixture.user_token, "rest", rpc="GetTask")]


def _rest_create(fixture: Fixture, concurrency: int, calls: int) -> list[Load]:
    return [
        Load(
            REST_TASKS,
            REST_CREATE_BODY,
            concurrency,
            calls,
            fixture.user_token,
            "rest",
            rpc="CreateTask",
        )
    ]


ECHO = Scenario(
    "echo (baseline)",
    _single(ECHO_PATH, task_service_pb2.GetTaskRequest(id=123456)),
    baseline=True,
)

#: The floor (bench/floor_server.py): one asyncpg `fetchrow` per call; the CPU targets' unit.
FLOOR = Scenario(
    "floor (baseline)",
    _single(READ_PATH, task_service_pb2.GetTaskRequest(id=123456)),
    baseline=True,
)

SCENARIOS = [
    Scenario(
        "GetTask",
        _with_fixture(
            lambda f: (
                f"{TASKS}GetTask",
                task_service_pb2.GetTaskRequest(id=f.task_id),
                f.user_token,
            )
        ),
    ),
    Scenario(
        "GetMe",
        _with_fixture(lambda f: (f"{USERS}GetMe", user_service_pb2.GetMeRequest(), f.user_token)),
    ),
    Scenario(
        "ListTasks first page",
        _with_fixture(
            lambda f: (
                f"{TASKS}ListTasks",
                task_service_pb2.ListTasksRequest(page_size=50),
                f.user_token,
            )
        ),
        calls_factor=0.5,
    ),
    Scenario(
        "GetTask, shared list (10 members)",
        _with_fixture(
            lambda f: (
                f"{TASKS}GetTask",
                task_service_pb2.GetTaskRequest(id=f.shared_task_id),
                f.shared_member_token,
            )
        ),
    ),
    Scenario(
        "ListTasks first page, shared list (10 members)",
        _with_fixture(
            lambda f: (
                f"{TASKS}ListTasks",
                task_service_pb2.ListTasksRequest(page_size=50),
                f.shared_member_token,
            )
        ),
        calls_factor=0.5,
    ),
    Scenario(
        "ListTasks deep page",
        _with_fixture(
            lambda f: (
                f"{TASKS}ListTasks",
                task_service_pb2.ListTasksRequest(page_size=50, page_token=f.deep_page_token),
                f.user_token,
            )
        ),
        calls_factor=0.5,
    ),
    Scenario(
        "ListTasks deep page, admin",
        _with_fixture(
            lambda f: (
                f"{TASKS}ListTasks",
                task_service_pb2.ListTasksRequest(page_size=50, page_token=f.admin_deep_page_token),
                f.admin_token,
            )
        ),
        calls_factor=0.5,
    ),
    *(
        Scenario(
            name,
            _with_fixture(
                lambda f, name=name: (
                    f"{TASKS}ListTasks",
                    view_request(name, f.view_deep_page_tokens[name]),
                    f.user_token,
                )
            ),
            calls_factor=0.5,
        )
        for name in LIST_VIEWS
    ),
    Scenario("CreateTask", _create),
    Scenario("PatchTask", _patch),
    Scenario(
        "Login",
        _with_fixture(
            lambda f: (
                f"{AUTH}Login",
                auth_service_pb2.LoginRequest(email=f.login_email, password=PASSWORD),
                None,
            )
        ),
        calls_factor=0.01,
    ),
    Scenario("mixed read/write", _mixed),
    Scenario("Connect JSON GetTask (HTTP/1.1)", _connect_get_task, http=True),
    Scenario("Connect JSON CreateTask (HTTP/1.1)", _connect_create, http=True),
    Scenario("REST GetTask (HTTP/1.1)", _rest_get_task, http=True),
    Scenario("REST CreateTask (HTTP/1.1)", _rest_create, http=True),
]


def by_name(name: str) -> Scenario:
    """The scenario called `name`."""
    return next(scenario for scenario in SCENARIOS if scenario.name == name)


#: The storm's Login load: more calls than any measurement lasts; it is stopped when done.
STORM_CALLS = 1_000_000


def login_storm(fixture: Fixture, concurrency: int) -> Load:
    """Logins, `concurrency` at a time, run in the background of a GetTask measurement."""
    message = auth_service_pb2.LoginRequest(email=fixture.login_email, password=PASSWORD)
    return Load(f"{AUTH}Login", frame(message), concurrency, STORM_CALLS)
