"""Service accounts: machine callers with fixed permissions, no password, API keys only."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import httpx
import pytest

from taskservice.server import Application
from taskservice.v1 import api_key_service_pb2 as keys_pb
from taskservice.v1 import auth_service_pb2 as auth_pb
from taskservice.v1 import permissions_pb2 as perms
from taskservice.v1 import task_service_pb2 as tasks_pb
from taskservice.v1 import user_pb2
from taskservice.v1 import user_service_pb2 as users_pb
from tests.conftest import Stubs
from tests.helpers import PASSWORD, Account, fails, make_admin, register, unique_email
from tests.http_client import auth_headers, connect_failure, connect_json
from tests.test_migrations import _USER, _execute, _fetch

DENIED = grpc.StatusCode.PERMISSION_DENIED
INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
USERS = "/taskservice.v1.UserService"


@pytest.fixture
async def admin(app: Application, stubs: Stubs) -> Account:
    return await make_admin(app, stubs)


async def _service_account(stubs: Stubs, caller: Account, *permissions: int) -> user_pb2.User:
    response = await stubs.users.CreateServiceAccount(
        users_pb.CreateServiceAccountRequest(
            display_name=" nightly sync ", permissions=permissions
        ),
        metadata=caller.metadata,
    )
    return response.user


async def _key_for(stubs: Stubs, admin: Account, user: user_pb2.User, *permissions: int) -> Account:
    created = await stubs.api_keys.CreateApiKey(
        keys_pb.CreateApiKeyRequest(user_id=user.id, display_name="sync", permissions=permissions),
        metadata=admin.metadata,
    )
    return Account(user, created.secret)


async def test_an_admin_creates_a_service_account_that_calls_with_keys_only(
    stubs: Stubs, admin: Account
) -> None:
    account = await _service_account(
        stubs,
        admin,
        perms.PERMISSION_TASKS_WRITE,
        perms.PERMISSION_USERS_READ,
        perms.PERMISSION_TASKS_READ,
    )
    assert account.kind == user_pb2.USER_KIND_SERVICE
    assert account.display_name == "nightly sync"
    assert list(account.permissions) == [
        perms.PERMISSION_TASKS_READ,
        perms.PERMISSION_TASKS_WRITE,
        perms.PERMISSION_USERS_READ,
    ]
    assert (account.is_active, account.is_admin) == (True, False)
    assert account.email.endswith("@service-accounts.invalid")

    machine = await _key_for(stubs, admin, account)
    me = await stubs.users.GetMe(users_pb.GetMeRequest(), metadata=machine.metadata)
    assert me.user == account
    task = (
        await stubs.tasks.CreateTask(
            tasks_pb.CreateTaskRequest(task={"title": "synced"}), metadata=machine.metadata
        )
    ).task
    assert task.owner_id == account.id
    # Exactly what it was given, nothing of a role: no other owner, no user management.
    failure = await fails(
        stubs.tasks.CreateTask(
            tasks_pb.CreateTaskRequest(task={"title": "x", "owner_id": admin.user.id}),
            metadata=machine.metadata,
        ),
        DENIED,
    )
    assert (failure.reason, failure.error_metadata) == (
        "PERMISSION_MISSING",
        {"permission": "tasks.write_all"},
    )
    failure = await fails(
        stubs.users.ListUsers(users_pb.ListUsersRequest(), metadata=machine.metadata), DENIED
    )
    assert (failure.reason, failure.error_metadata) == (
        "PERMISSION_MISSING",
        {"permission": "users.manage"},
    )
    # A key of the account may be limited further.
    reader = await _key_for(stubs, admin, account, perms.PERMISSION_TASKS_READ)
    failure = await fails(
        stubs.tasks.CreateTask(
            tasks_pb.CreateTaskRequest(task={"title": "x"}), metadata=reader.metadata
        ),
        DENIED,
    )
    assert failure.reason == "PERMISSION_MISSING"


async def test_a_service_account_has_no_password_to_sign_in_or_change(
    stubs: Stubs, admin: Account
) -> None:
    account = await _service_account(stubs, admin, perms.PERMISSION_ACCOUNT_MANAGE)
    # Its placeholder address is no address at all: Login refuses it as any unknown email.
    failure = await fails(
        stubs.auth.Login(auth_pb.LoginRequest(email=account.email, password=PASSWORD)),
        UNAUTHENTICATED,
    )
    assert failure.reason == "LOGIN_FAILED"
    # Given a real one, it still has no password, and Login says so.
    email = unique_email("robot")
    await stubs.users.UpdateUser(
        users_pb.UpdateUserRequest(
            user={"id": account.id, "email": email}, update_mask={"paths": ["email"]}
        ),
        metadata=admin.metadata,
    )
    failure = await fails(
        stubs.auth.Login(auth_pb.LoginRequest(email=email, password=PASSWORD)), PRECONDITION
    )
    assert failure.reason == "SERVICE_ACCOUNT_HAS_NO_PASSWORD"
    machine = await _key_for(stubs, admin, account)
    failure = await fails(
        stubs.auth.ChangePassword(
            auth_pb.ChangePasswordRequest(current_password="!", new_password="a new password"),
            metadata=machine.metadata,
        ),
        PRECONDITION,
    )
    assert failure.reason == "SERVICE_ACCOUNT_HAS_NO_PASSWORD"


async def test_only_a_holder_of_users_manage_creates_one_and_grants_nothing_it_lacks(
    stubs: Stubs, admin: Account
) -> None:
    member = await register(stubs)
    failure = await fails(_service_account(stubs, member, perms.PERMISSION_TASKS_READ), DENIED)
    assert failure.reason == "ADMIN_REQUIRED"
    # An admin's key limited to managing users cannot hand out task permissions it lacks.
    limited_key = await stubs.api_keys.CreateApiKey(
        keys_pb.CreateApiKeyRequest(
            display_name="provisioning", permissions=[perms.PERMISSION_USERS_MANAGE]
        ),
        metadata=admin.metadata,
    )
    provisioner = Account(admin.user, limited_key.secret)
    failure = await fails(
        _service_account(stubs, provisioner, perms.PERMISSION_TASKS_WRITE_ALL), DENIED
    )
    assert (failure.reason, failure.error_metadata) == (
        "PERMISSION_MISSING",
        {"permission": "tasks.write_all"},
    )
    made = await _service_account(stubs, provisioner, perms.PERMISSION_USERS_MANAGE)
    assert list(made.permissions) == [perms.PERMISSION_USERS_MANAGE]


async def test_a_service_account_needs_a_name_and_real_permissions(
    stubs: Stubs, admin: Account
) -> None:
    failure = await fails(
        stubs.users.CreateServiceAccount(
            users_pb.CreateServiceAccountRequest(display_name="  ", permissions=[]),
            metadata=admin.metadata,
        ),
        INVALID,
    )
    assert set(failure.fields) == {"display_name", "permissions"}
    failure = await fails(
        _service_account(
            stubs,
            admin,
            perms.PERMISSION_PUBLIC,
            perms.PERMISSION_TASKS_READ,
            perms.PERMISSION_TASKS_READ,
        ),
        INVALID,
    )
    assert set(failure.fields) == {"permissions[0]", "permissions[2]"}


async def test_service_accounts_are_listed_by_kind_and_deactivated_and_deleted_like_users(
    stubs: Stubs, admin: Account
) -> None:
    account = await _service_account(stubs, admin, perms.PERMISSION_USERS_READ)
    machine = await _key_for(stubs, admin, account)
    services = await stubs.users.ListUsers(
        users_pb.ListUsersRequest(kind=user_pb2.USER_KIND_SERVICE), metadata=admin.metadata
    )
    assert [user.id for user in services.users] == [account.id]
    humans = await stubs.users.ListUsers(
        users_pb.ListUsersRequest(kind=user_pb2.USER_KIND_HUMAN), metadata=admin.metadata
    )
    assert account.id not in [user.id for user in humans.users]
    assert {user.kind for user in humans.users} == {user_pb2.USER_KIND_HUMAN}
    everyone = await stubs.users.ListUsers(users_pb.ListUsersRequest(), metadata=admin.metadata)
    assert account.id in [user.id for user in everyone.users]

    failure = await fails(
        stubs.users.UpdateUser(
            users_pb.UpdateUserRequest(
                user={"id": account.id, "is_admin": True}, update_mask={"paths": ["is_admin"]}
            ),
            metadata=admin.metadata,
        ),
        PRECONDITION,
    )
    assert failure.reason == "SERVICE_ACCOUNT_NOT_ADMIN"
    await stubs.users.UpdateUser(
        users_pb.UpdateUserRequest(
            user={"id": account.id, "is_active": False}, update_mask={"paths": ["is_active"]}
        ),
        metadata=admin.metadata,
    )
    failure = await fails(
        stubs.users.GetMe(users_pb.GetMeRequest(), metadata=machine.metadata), UNAUTHENTICATED
    )
    assert failure.reason == "API_KEY_REVOKED"
    await stubs.users.DeleteUser(users_pb.DeleteUserRequest(id=account.id), metadata=admin.metadata)
    await fails(
        stubs.users.GetMe(users_pb.GetMeRequest(), metadata=machine.metadata), UNAUTHENTICATED
    )


@pytest.fixture
async def http(app: Application) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.http_port}") as client:
        yield client


async def test_the_http_edge_creates_and_refuses_service_accounts_alike(
    stubs: Stubs, admin: Account, http: httpx.AsyncClient
) -> None:
    response = await connect_json(
        http,
        f"{USERS}/CreateServiceAccount",
        {"displayName": "exporter", "permissions": ["PERMISSION_TASKS_READ"]},
        **auth_headers(admin.token),
    )
    assert response.status_code == 200, response.text
    user = response.json()["user"]
    assert (user["kind"], user["permissions"]) == ("USER_KIND_SERVICE", ["PERMISSION_TASKS_READ"])
    member = await register(stubs)
    refused = await connect_json(
        http,
        f"{USERS}/CreateServiceAccount",
        {"displayName": "exporter", "permissions": ["PERMISSION_TASKS_READ"]},
        **auth_headers(member.token),
    )
    failure = connect_failure(refused)
    assert (failure.code, failure.reason) == ("PERMISSION_DENIED", "ADMIN_REQUIRED")


def test_users_from_before_service_accounts_are_people_after_the_migration(
    database_url: str,
) -> None:
    """Revision 0013 on a database with users: each becomes a `human`, without name or list."""
    from taskservice.db.migrations import downgrade, upgrade

    downgrade(database_url, "0012")
    _execute(database_url, _USER, [{"id": 1, "email": "a@example.com"}])
    upgrade(database_url)
    assert _fetch(database_url, "SELECT id, email, kind, display_name, permissions FROM users") == [
        (1, "a@example.com", "human", None, None)
    ]
