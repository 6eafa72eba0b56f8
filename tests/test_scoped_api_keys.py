"""Scoped API keys: a key may do only what both its permissions and its user's current role allow.

The end-to-end table at the bottom is derived from the protos' declarations: for every RPC, over
native gRPC and gRPC-Web, a key holding exactly the declared permission gets past the permission
check, and a key holding every other permission is refused with PERMISSION_MISSING.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2

from taskservice.calls.authorization import METHOD_PERMISSIONS, PERMISSION_NUMBERS
from taskservice.db.migrations import downgrade, upgrade
from taskservice.server import Application
from taskservice.services.authorization import Permission
from taskservice.v1 import api_key_service_pb2 as keys_pb
from taskservice.v1 import audit_service_pb2 as audit_pb
from taskservice.v1 import auth_service_pb2 as auth_pb
from taskservice.v1 import permissions_pb2 as perms
from taskservice.v1 import task_list_pb2 as lists_pb
from taskservice.v1 import task_list_service_pb2 as lsvc
from taskservice.v1 import task_list_service_pb2_grpc
from taskservice.v1 import task_service_pb2 as tasks_pb
from taskservice.v1 import user_service_pb2 as users_pb
from tests.conftest import Stubs
from tests.helpers import PASSWORD, Account, bearer, fails, make_admin, register, unique_email
from tests.http_client import grpc_web, grpc_web_failure
from tests.test_migrations import _USER, _execute, _fetch
from tests.test_permissions import _without
from tests.watching import DEADLINE, changes, ended_with, read_until

DENIED = grpc.StatusCode.PERMISSION_DENIED
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


@pytest.fixture
async def admin(app: Application, stubs: Stubs) -> Account:
    return await make_admin(app, stubs)


@pytest.fixture
async def member(stubs: Stubs) -> Account:
    return await register(stubs)


async def _key(stubs: Stubs, owner: Account, *permissions: int) -> tuple[keys_pb.ApiKey, Account]:
    """A key of `owner` limited to `permissions` (none: not limited), and an account using it."""
    created = await stubs.api_keys.CreateApiKey(
        keys_pb.CreateApiKeyRequest(display_name="machine", permissions=permissions),
        metadata=owner.metadata,
    )
    return created.api_key, Account(owner.user, created.secret)


def _number(permission: Permission) -> int:
    return PERMISSION_NUMBERS[permission.value]


async def _create_task(stubs: Stubs, caller: Account, owner_id: int = 0) -> tasks_pb.Task:
    response = await stubs.tasks.CreateTask(
        tasks_pb.CreateTaskRequest(task={"title": "nightly", "owner_id": owner_id}),
        metadata=caller.metadata,
    )
    return response.task


def _missing(failure: object, permission: str) -> None:
    assert (failure.reason, failure.error_metadata) == (  # type: ignore[attr-defined]
        "PERMISSION_MISSING",
        {"permission": permission},
    )


async def test_a_key_shows_the_permissions_it_was_created_with(
    stubs: Stubs, member: Account
) -> None:
    scoped, _ = await _key(stubs, member, perms.PERMISSION_TASKS_WRITE, perms.PERMISSION_TASKS_READ)
    assert list(scoped.permissions) == [perms.PERMISSION_TASKS_READ, perms.PERMISSION_TASKS_WRITE]
    unscoped, _ = await _key(stubs, member)
    assert list(unscoped.permissions) == []
    listed = await stubs.api_keys.ListApiKeys(
        keys_pb.ListApiKeysRequest(), metadata=member.metadata
    )
    assert [list(key.permissions) for key in listed.api_keys] == [
        [],
        [perms.PERMISSION_TASKS_READ, perms.PERMISSION_TASKS_WRITE],
    ]


async def test_a_permission_list_naming_no_permission_or_one_twice_is_invalid(
    stubs: Stubs, member: Account
) -> None:
    failure = await fails(
        _key(
            stubs,
            member,
            perms.PERMISSION_TASKS_READ,
            perms.PERMISSION_UNSPECIFIED,
            perms.PERMISSION_PUBLIC,
            99,
            perms.PERMISSION_TASKS_READ,
        ),
        INVALID,
    )
    assert set(failure.fields) == {
        "permissions[1]",
        "permissions[2]",
        "permissions[3]",
        "permissions[4]",
    }
    listed = await stubs.api_keys.ListApiKeys(
        keys_pb.ListApiKeysRequest(), metadata=member.metadata
    )
    assert list(listed.api_keys) == []


async def test_a_key_limited_to_writing_every_task_cannot_manage_users_audit_or_keys(
    stubs: Stubs, admin: Account, member: Account
) -> None:
    _, machine = await _key(stubs, admin, perms.PERMISSION_TASKS_WRITE_ALL)
    for call, permission in (
        (
            stubs.users.DeleteUser(
                users_pb.DeleteUserRequest(id=member.user.id), metadata=machine.metadata
            ),
            "users.manage",
        ),
        (
            stubs.users.ListUsers(users_pb.ListUsersRequest(), metadata=machine.metadata),
            "users.manage",
        ),
        (
            stubs.audit.ListAuditEvents(
                audit_pb.ListAuditEventsRequest(), metadata=machine.metadata
            ),
            "audit.read",
        ),
        (
            stubs.api_keys.CreateApiKey(
                keys_pb.CreateApiKeyRequest(display_name="more"), metadata=machine.metadata
            ),
            "api_keys.manage",
        ),
        (
            stubs.tasks.ListTasks(tasks_pb.ListTasksRequest(), metadata=machine.metadata),
            "tasks.read",
        ),
    ):
        _missing(await fails(call, DENIED), permission)
    # The member still exists: the refused DeleteUser did nothing.
    await stubs.users.GetUser(users_pb.GetUserRequest(id=member.user.id), metadata=admin.metadata)

    task = await _create_task(stubs, machine, owner_id=member.user.id)
    assert task.owner_id == member.user.id
    own = await _create_task(stubs, machine)  # every owner's tasks include its user's own
    assert own.owner_id == admin.user.id
    patched = await stubs.tasks.PatchTask(
        tasks_pb.PatchTaskRequest(
            task={"id": task.id, "title": "renamed"}, update_mask={"paths": ["title"]}
        ),
        metadata=machine.metadata,
    )
    assert patched.task.title == "renamed"


async def test_a_key_limited_to_reading_every_task_sees_them_but_changes_none(
    stubs: Stubs, admin: Account, member: Account
) -> None:
    task = await _create_task(stubs, member)
    _, reader = await _key(stubs, admin, perms.PERMISSION_TASKS_READ_ALL)
    got = await stubs.tasks.GetTask(tasks_pb.GetTaskRequest(id=task.id), metadata=reader.metadata)
    assert got.task.id == task.id
    listed = await stubs.tasks.ListTasks(
        tasks_pb.ListTasksRequest(owner_id=member.user.id), metadata=reader.metadata
    )
    assert [t.id for t in listed.tasks] == [task.id]
    _missing(
        await fails(
            stubs.tasks.DeleteTask(
                tasks_pb.DeleteTaskRequest(id=task.id), metadata=reader.metadata
            ),
            DENIED,
        ),
        "tasks.write",
    )
    # Writing its user's own tasks does not reach another's it can see: refused, not hidden.
    _, writer = await _key(
        stubs, admin, perms.PERMISSION_TASKS_READ_ALL, perms.PERMISSION_TASKS_WRITE
    )
    failure = await fails(
        stubs.tasks.DeleteTask(tasks_pb.DeleteTaskRequest(id=task.id), metadata=writer.metadata),
        DENIED,
    )
    _missing(failure, "tasks.write_all")
    _missing(
        await fails(_create_task(stubs, writer, owner_id=member.user.id), DENIED), "tasks.write_all"
    )


async def test_a_key_that_writes_but_does_not_read_leaves_its_users_lists(
    stubs: Stubs, channel: grpc.aio.Channel, admin: Account, member: Account
) -> None:
    """LeaveTaskList needs `tasks.write`, as it declares, and nothing else of a member.

    It used to check `tasks.read` as well, so a key limited to writing (its user's tasks, or
    every owner's) was refused PERMISSION_MISSING for leaving a list its user is in; a
    non-member stays NOT_FOUND.
    """
    lists = task_list_service_pb2_grpc.TaskListServiceStub(channel)

    async def shared_with(*people: Account) -> int:
        created = await lists.CreateTaskList(
            lsvc.CreateTaskListRequest(task_list=lists_pb.TaskList(title="team")),
            metadata=member.metadata,
        )
        for person in people:
            await lists.AddTaskListMember(
                lsvc.AddTaskListMemberRequest(
                    task_list_id=created.task_list.id,
                    member=lists_pb.TaskListMember(
                        user_id=person.user.id, role=lists_pb.TASK_LIST_ROLE_VIEWER
                    ),
                ),
                metadata=member.metadata,
            )
        return created.task_list.id

    other = await register(stubs)
    _, own_writer = await _key(stubs, other, perms.PERMISSION_TASKS_WRITE)
    _, every_writer = await _key(stubs, admin, perms.PERMISSION_TASKS_WRITE_ALL)
    _, reading_writer = await _key(
        stubs, admin, perms.PERMISSION_TASKS_READ_ALL, perms.PERMISSION_TASKS_WRITE
    )
    for leaver in (own_writer, every_writer, reading_writer):
        list_id = await shared_with(other, admin)
        await lists.LeaveTaskList(
            lsvc.LeaveTaskListRequest(task_list_id=list_id), metadata=leaver.metadata
        )
        members = await lists.ListTaskListMembers(
            lsvc.ListTaskListMembersRequest(task_list_id=list_id), metadata=member.metadata
        )
        assert leaver.user.id not in {m.user_id for m in members.members}
    # Not a member: NOT_FOUND, whether the caller may see the list (MEMBER_NOT_FOUND) or not.
    list_id = await shared_with()
    for outsider, reason in (
        (own_writer, "TASK_LIST_NOT_FOUND"),
        (every_writer, "MEMBER_NOT_FOUND"),
        (reading_writer, "MEMBER_NOT_FOUND"),
    ):
        failure = await fails(
            lists.LeaveTaskList(
                lsvc.LeaveTaskListRequest(task_list_id=list_id), metadata=outsider.metadata
            ),
            NOT_FOUND,
        )
        assert failure.reason == reason


async def test_a_key_limited_to_its_users_own_tasks_does_not_see_others(
    stubs: Stubs, admin: Account, member: Account
) -> None:
    task = await _create_task(stubs, member)
    _, own = await _key(stubs, admin, perms.PERMISSION_TASKS_READ, perms.PERMISSION_TASKS_WRITE)
    await fails(
        stubs.tasks.GetTask(tasks_pb.GetTaskRequest(id=task.id), metadata=own.metadata), NOT_FOUND
    )
    listed = await stubs.tasks.ListTasks(tasks_pb.ListTasksRequest(), metadata=own.metadata)
    assert list(listed.tasks) == []
    _missing(
        await fails(
            stubs.tasks.ListTasks(
                tasks_pb.ListTasksRequest(owner_id=member.user.id), metadata=own.metadata
            ),
            DENIED,
        ),
        "tasks.read_all",
    )


async def test_a_key_whose_user_loses_admin_loses_the_admin_permissions_at_once(
    app: Application, stubs: Stubs, admin: Account, member: Account
) -> None:
    other_admin = await make_admin(app, stubs)
    _, machine = await _key(
        stubs, other_admin, perms.PERMISSION_TASKS_WRITE_ALL, perms.PERMISSION_USERS_MANAGE
    )
    await _create_task(stubs, machine, owner_id=member.user.id)
    await stubs.users.ListUsers(users_pb.ListUsersRequest(), metadata=machine.metadata)
    await stubs.users.UpdateUser(
        users_pb.UpdateUserRequest(
            user={"id": other_admin.user.id, "is_admin": False}, update_mask={"paths": ["is_admin"]}
        ),
        metadata=admin.metadata,
    )
    failure = await fails(_create_task(stubs, machine, owner_id=member.user.id), DENIED)
    assert failure.reason == "OWNER_NOT_ALLOWED"
    failure = await fails(
        stubs.users.ListUsers(users_pb.ListUsersRequest(), metadata=machine.metadata), DENIED
    )
    assert failure.reason == "ADMIN_REQUIRED"
    own = await _create_task(stubs, machine)  # what the role still allows, within the key's list
    assert own.owner_id == other_admin.user.id


async def test_watching_needs_tasks_read_and_every_owners_tasks_tasks_read_all(
    stubs: Stubs, admin: Account, member: Account
) -> None:
    _, writer = await _key(stubs, admin, perms.PERMISSION_TASKS_WRITE_ALL)
    stream = stubs.tasks.WatchTasks(tasks_pb.WatchTasksRequest(), metadata=writer.metadata)
    _missing(await fails(stream.read(), DENIED), "tasks.read")
    _, reader = await _key(stubs, admin, perms.PERMISSION_TASKS_READ)
    stream = stubs.tasks.WatchTasks(
        tasks_pb.WatchTasksRequest(owner_id=member.user.id), metadata=reader.metadata
    )
    _missing(await fails(stream.read(), DENIED), "tasks.read_all")
    stream = stubs.tasks.WatchTasks(tasks_pb.WatchTasksRequest(), metadata=reader.metadata)
    first = await stream.read()
    assert first.revision >= 0
    stream.cancel()


async def test_a_stream_of_every_task_ends_when_its_keys_user_stops_being_an_admin(
    app: Application, stubs: Stubs, admin: Account
) -> None:
    other_admin = await make_admin(app, stubs)
    _, machine = await _key(stubs, other_admin, perms.PERMISSION_TASKS_READ_ALL)
    stream = stubs.tasks.WatchTasks(tasks_pb.WatchTasksRequest(), metadata=machine.metadata)
    await stream.read()  # the first bookmark: the stream is live
    await stubs.users.UpdateUser(
        users_pb.UpdateUserRequest(
            user={"id": other_admin.user.id, "is_admin": False}, update_mask={"paths": ["is_admin"]}
        ),
        metadata=admin.metadata,
    )
    demoted = time.monotonic()
    _, error = await ended_with(stream)
    assert error.code() == DENIED
    assert time.monotonic() - demoted < 5.0, "within the 5 seconds streams re-check access"


async def test_a_demotion_ends_only_the_keys_streams_it_no_longer_allows(
    app: Application, stubs: Stubs, admin: Account
) -> None:
    """One key, two streams: the one of every owner's tasks ends, the one of its own goes on."""
    other_admin = await make_admin(app, stubs)
    _, machine = await _key(stubs, other_admin)
    every = stubs.tasks.WatchTasks(tasks_pb.WatchTasksRequest(), metadata=machine.metadata)
    own = stubs.tasks.WatchTasks(
        tasks_pb.WatchTasksRequest(owner_id=other_admin.user.id), metadata=machine.metadata
    )
    await every.read()
    await own.read()
    await stubs.users.UpdateUser(
        users_pb.UpdateUserRequest(
            user={"id": other_admin.user.id, "is_admin": False}, update_mask={"paths": ["is_admin"]}
        ),
        metadata=admin.metadata,
    )
    _, error = await ended_with(every)
    assert error.code() == DENIED
    task = await _create_task(stubs, machine)
    seen = changes(await read_until(own, lambda r: len(changes(r)) == 1))
    assert seen[0].change.task.id == task.id
    own.cancel()


async def test_a_stream_opened_during_a_promotion_ends_with_the_demotion(
    app: Application, stubs: Stubs, admin: Account
) -> None:
    """The key's other stream had its rights checked before: the newcomer's are checked too."""
    checks = app.stream_credentials
    assert checks is not None
    user = await register(stubs)
    _, machine = await _key(stubs, user)
    own = stubs.tasks.WatchTasks(tasks_pb.WatchTasksRequest(), metadata=machine.metadata)
    await own.read()
    passes = checks.passes_total
    async with asyncio.timeout(DEADLINE):  # a pass has found the key's user a regular user
        while checks.passes_total < passes + 2:  # noqa: ASYNC110 - polled under a deadline
            await asyncio.sleep(0.05)

    async def set_admin(is_admin: bool) -> None:
        await stubs.users.UpdateUser(
            users_pb.UpdateUserRequest(
                user={"id": user.user.id, "is_admin": is_admin},
                update_mask={"paths": ["is_admin"]},
            ),
            metadata=admin.metadata,
        )

    await set_admin(True)
    every = stubs.tasks.WatchTasks(tasks_pb.WatchTasksRequest(), metadata=machine.metadata)
    await every.read()
    await set_admin(False)
    _, error = await ended_with(every)
    assert error.code() == DENIED
    task = await _create_task(stubs, machine)
    seen = changes(await read_until(own, lambda r: len(changes(r)) == 1))
    assert seen[0].change.task.id == task.id
    own.cancel()


# The end-to-end table: every RPC over both edges, callers made from scoped keys.

#: A request that gets past the permission check and ends at once (the watch asks for a revision
#: not reached yet, so its stream ends with OUT_OF_RANGE instead of staying open).
_REQUESTS = {
    "/taskservice.v1.TaskService/WatchTasks": tasks_pb.WatchTasksRequest(start_revision=10**12)
}
PROTECTED = sorted(
    (path, permission) for path, permission in METHOD_PERMISSIONS.items() if permission is not None
)


def _reason_of(details: bytes | None) -> tuple[str, dict[str, str]]:
    if not details:
        return "", {}
    for detail in status_pb2.Status.FromString(details).details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason, dict(info.metadata)
    return "", {}


async def _over_grpc(
    channel: grpc.aio.Channel, method: str, token: str
) -> tuple[str, dict[str, str]]:
    """The reason and metadata a call with this token ended with ("" when it succeeded)."""
    request = _REQUESTS.get(method)
    payload = request.SerializeToString() if request is not None else b""
    try:
        if method.endswith("/WatchTasks"):
            call = channel.unary_stream(method)(payload, metadata=bearer(token))
            async for _ in call:
                pass
        else:
            await channel.unary_unary(method)(payload, metadata=bearer(token))
    except grpc.aio.AioRpcError as error:
        details = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
        return _reason_of(details)  # type: ignore[arg-type]
    return "", {}


async def _over_grpc_web(
    http: httpx.AsyncClient, method: str, token: str
) -> tuple[str, dict[str, str]]:
    request = _REQUESTS.get(method)
    reply = await grpc_web(
        http, method, request if request is not None else b"", authorization=f"Bearer {token}"
    )
    if reply.grpc_status == 0:
        return "", {}
    failure = grpc_web_failure(reply)
    return failure.reason, failure.error_metadata


@pytest.fixture
async def http(app: Application) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.http_port}") as client:
        yield client


@pytest.mark.parametrize(("method", "permission"), PROTECTED)
async def test_every_rpc_takes_a_key_with_exactly_its_permission_and_refuses_one_without(
    stubs: Stubs,
    channel: grpc.aio.Channel,
    http: httpx.AsyncClient,
    admin: Account,
    method: str,
    permission: Permission,
) -> None:
    _, holding = await _key(stubs, admin, _number(permission))
    _, lacking = await _key(stubs, admin, *(_number(p) for p in sorted(_without(permission))))
    for edge in ("grpc", "grpc-web"):
        if edge == "grpc":
            allowed = await _over_grpc(channel, method, holding.token)
            refused = await _over_grpc(channel, method, lacking.token)
        else:
            allowed = await _over_grpc_web(http, method, holding.token)
            refused = await _over_grpc_web(http, method, lacking.token)
        assert allowed[0] != "PERMISSION_MISSING", (edge, allowed)
        assert refused == ("PERMISSION_MISSING", {"permission": permission.value}), edge


_API_KEY = (
    "INSERT INTO api_keys (id, user_id, display_name, lookup, secret_hash, create_time) "
    "VALUES (:id, 1, 'old key', :lookup, 'x', '2026-01-01 00:00:00+00')"
)


def test_keys_from_before_permissions_stay_unlimited_across_the_migration(
    database_url: str,
) -> None:
    """Revision 0012 on a database with keys: each keeps its row, not limited (NULL)."""
    downgrade(database_url, "0011")
    _execute(database_url, _USER, [{"id": 1, "email": "a@example.com"}])
    _execute(database_url, _API_KEY, [{"id": 5, "lookup": "0123456789abcdef"}])
    upgrade(database_url)
    assert _fetch(database_url, "SELECT id, display_name, permissions FROM api_keys") == [
        (5, "old key", None)
    ]
    _execute(
        database_url,
        "UPDATE api_keys SET permissions = :scope WHERE id = 5",
        [{"scope": "tasks.read"}],
    )
    downgrade(database_url, "0011")  # and back: the key survives without its list
    assert _fetch(database_url, "SELECT id, display_name FROM api_keys") == [(5, "old key")]
    upgrade(database_url)


async def test_a_key_limited_to_managing_users_cannot_make_an_administrator(
    stubs: Stubs, admin: Account, member: Account
) -> None:
    """An administrator holds every permission: making one needs them all, not `users.manage`."""
    _, machine = await _key(stubs, admin, perms.PERMISSION_USERS_MANAGE)
    promote = users_pb.UpdateUserRequest(
        user={"id": member.user.id, "is_admin": True}, update_mask={"paths": ["is_admin"]}
    )
    _missing(
        await fails(stubs.users.UpdateUser(promote, metadata=machine.metadata), DENIED),
        "tasks.read",
    )
    created = auth_pb.RegisterRequest(email=unique_email(), password=PASSWORD, is_admin=True)
    _missing(
        await fails(stubs.auth.Register(created, metadata=machine.metadata), DENIED),
        "tasks.read",
    )
    # Nothing changed; what the key may do, it still does.
    got = await stubs.users.GetUser(
        users_pb.GetUserRequest(id=member.user.id), metadata=admin.metadata
    )
    assert got.user.is_admin is False
    deactivate = users_pb.UpdateUserRequest(
        user={"id": member.user.id, "is_active": False}, update_mask={"paths": ["is_active"]}
    )
    assert (
        await stubs.users.UpdateUser(deactivate, metadata=machine.metadata)
    ).user.is_active is False
    # A service account cannot be granted more than the key that creates it holds either.
    wider = users_pb.CreateServiceAccountRequest(
        display_name="wider", permissions=[perms.PERMISSION_AUDIT_READ]
    )
    _missing(
        await fails(stubs.users.CreateServiceAccount(wider, metadata=machine.metadata), DENIED),
        "audit.read",
    )
