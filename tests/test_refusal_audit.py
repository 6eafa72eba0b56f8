"""Calls refused with PERMISSION_MISSING reach the audit trail, once a minute per kind."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest

from taskservice.server import Application
from taskservice.v1 import api_key_service_pb2 as keys_pb
from taskservice.v1 import audit_service_pb2 as audit_pb
from taskservice.v1 import permissions_pb2 as perms
from taskservice.v1 import task_service_pb2 as tasks_pb
from taskservice.v1 import user_service_pb2 as users_pb
from tests.conftest import ManualClock, Stubs
from tests.helpers import Account, fails, make_admin, register
from tests.http_client import auth_headers, connect_failure, connect_json
from tests.test_access_log import log_lines  # noqa: F401 - a fixture

DENIED = grpc.StatusCode.PERMISSION_DENIED
CREATE_TASK = "/taskservice.v1.TaskService/CreateTask"
DELETE_USER = "/taskservice.v1.UserService/DeleteUser"


@pytest.fixture
async def admin(app: Application, stubs: Stubs) -> Account:
    return await make_admin(app, stubs)


@pytest.fixture
async def http(app: Application) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.http_port}") as client:
        yield client


async def _reader_key(stubs: Stubs, admin: Account) -> Account:
    """An admin's key limited to reading tasks."""
    created = await stubs.api_keys.CreateApiKey(
        keys_pb.CreateApiKeyRequest(
            display_name="reader", permissions=[perms.PERMISSION_TASKS_READ]
        ),
        metadata=admin.metadata,
    )
    return Account(admin.user, created.secret)


async def _refusals(stubs: Stubs, admin: Account) -> list[audit_pb.AuditEvent]:
    page = await stubs.audit.ListAuditEvents(
        audit_pb.ListAuditEventsRequest(filter='event = "permission_missing"', page_size=1000),
        metadata=admin.metadata,
    )
    return list(page.audit_events)


async def _refuse_create_task(stubs: Stubs, http: httpx.AsyncClient, key: Account) -> None:
    """One refused CreateTask over each edge: gRPC, Connect and REST."""
    failure = await fails(
        stubs.tasks.CreateTask(
            tasks_pb.CreateTaskRequest(task={"title": "no"}), metadata=key.metadata
        ),
        DENIED,
    )
    assert failure.reason == "PERMISSION_MISSING"
    response = await connect_json(
        http, CREATE_TASK, {"task": {"title": "no"}}, **auth_headers(key.token)
    )
    assert connect_failure(response).reason == "PERMISSION_MISSING"
    rest = await http.post("/api/v1/tasks/", json={"title": "no"}, headers=auth_headers(key.token))
    assert rest.status_code == 403


async def test_a_refusal_is_audited_once_per_caller_method_and_permission_a_minute(
    stubs: Stubs, admin: Account, http: httpx.AsyncClient, clock: ManualClock
) -> None:
    key = await _reader_key(stubs, admin)
    for _ in range(3):
        await _refuse_create_task(stubs, http, key)
    await fails(
        stubs.users.DeleteUser(users_pb.DeleteUserRequest(id=admin.user.id), metadata=key.metadata),
        DENIED,
    )
    events = await _refusals(stubs, admin)
    assert [(e.actor_id, e.method, e.permission, e.outcome) for e in events] == [
        (admin.user.id, DELETE_USER, "users.manage", "denied"),
        (admin.user.id, CREATE_TASK, "tasks.write", "denied"),
    ]
    assert all(event.request_id and event.target_user_id == 0 for event in events)

    clock.advance(seconds=59)
    await _refuse_create_task(stubs, http, key)
    assert len(await _refusals(stubs, admin)) == 2
    clock.advance(seconds=2)
    await _refuse_create_task(stubs, http, key)
    events = await _refusals(stubs, admin)
    assert [(e.method, e.permission) for e in events][:2] == [
        (CREATE_TASK, "tasks.write"),
        (DELETE_USER, "users.manage"),
    ]
    assert len(events) == 3


async def test_refusals_that_predate_permissions_are_not_audited(
    stubs: Stubs, admin: Account, http: httpx.AsyncClient
) -> None:
    # A regular user calling an admin method is refused as before (ADMIN_REQUIRED), unaudited.
    user = await register(stubs)
    failure = await fails(
        stubs.users.ListUsers(users_pb.ListUsersRequest(), metadata=user.metadata), DENIED
    )
    assert failure.reason == "ADMIN_REQUIRED"
    assert await _refusals(stubs, admin) == []


async def test_the_refusal_log_line_names_the_method_and_permission(
    stubs: Stubs,
    admin: Account,
    http: httpx.AsyncClient,
    log_lines: io.StringIO,  # noqa: F811
) -> None:
    key = await _reader_key(stubs, admin)
    await _refuse_create_task(stubs, http, key)
    lines = [json.loads(line) for line in log_lines.getvalue().splitlines() if line.startswith("{")]
    audited = [line for line in lines if line.get("event") == "permission_missing"]
    assert len(audited) == 1
    assert audited[0]["grpc_method"] == CREATE_TASK
    assert audited[0]["permission"] == "tasks.write"
    assert audited[0]["actor_id"] == admin.user.id
    assert key.token not in log_lines.getvalue()
