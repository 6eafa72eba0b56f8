"""A service account's life across two servers sharing one database, and its update rules.

Create, key, call, restrict, deactivate, delete: each change made on one server reaches the
other within the bound that already holds for revoking tokens (PROPAGATION_SECONDS).
"""

from __future__ import annotations

import grpc

from taskservice.server import Application
from taskservice.v1 import api_key_service_pb2 as keys_pb
from taskservice.v1 import permissions_pb2 as perms
from taskservice.v1 import task_service_pb2 as tasks_pb
from taskservice.v1 import user_pb2
from taskservice.v1 import user_service_pb2 as users_pb
from tests.conftest import Stubs, stubs_for
from tests.helpers import Account, fails, make_admin, register
from tests.test_api_keys import replicas  # noqa: F401 - a fixture
from tests.test_auth_state import PROPAGATION_SECONDS, _eventually

DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


async def _account(stubs: Stubs, admin: Account, name: str, *granted: int) -> user_pb2.User:
    request = users_pb.CreateServiceAccountRequest(display_name=name, permissions=granted)
    return (await stubs.users.CreateServiceAccount(request, metadata=admin.metadata)).user


async def _key(stubs: Stubs, admin: Account, account: user_pb2.User) -> Account:
    request = keys_pb.CreateApiKeyRequest(user_id=account.id, display_name="key")
    created = await stubs.api_keys.CreateApiKey(request, metadata=admin.metadata)
    return Account(account, created.secret)


def _grant(account_id: int, *granted: int) -> users_pb.UpdateUserRequest:
    return users_pb.UpdateUserRequest(
        user={"id": account_id, "permissions": granted}, update_mask={"paths": ["permissions"]}
    )


async def _outcome(stubs: Stubs, key: Account) -> str:
    """What CreateTask says to the key now: OK, or the refusal's reason."""
    try:
        await stubs.tasks.CreateTask(
            tasks_pb.CreateTaskRequest(task={"title": "sync"}), metadata=key.metadata
        )
    except grpc.aio.AioRpcError as error:
        details = str(error.trailing_metadata())
        for reason in ("PERMISSION_MISSING", "API_KEY_REVOKED", "API_KEY_INVALID"):
            if reason in details:
                return reason
        return error.code().name
    return "OK"


async def test_a_service_account_is_restricted_deactivated_and_deleted_across_servers(
    replicas: tuple[Application, Application],  # noqa: F811 - the fixture
) -> None:
    first, second = replicas
    async with stubs_for(first) as via_first, stubs_for(second) as via_second:
        admin = await make_admin(first, via_first)
        account = await _account(
            via_first, admin, "sync", perms.PERMISSION_TASKS_READ, perms.PERMISSION_TASKS_WRITE
        )
        key = await _key(via_first, admin, account)
        assert await _outcome(via_second, key) == "OK"

        restricted = await via_first.users.UpdateUser(
            _grant(account.id, perms.PERMISSION_TASKS_READ), metadata=admin.metadata
        )
        assert list(restricted.user.permissions) == [perms.PERMISSION_TASKS_READ]

        async def refused(reasons: tuple[str, ...]) -> bool:
            return await _outcome(via_second, key) in reasons

        await _eventually(lambda: refused(("PERMISSION_MISSING",)), PROPAGATION_SECONDS)
        await via_second.tasks.ListTasks(tasks_pb.ListTasksRequest(), metadata=key.metadata)

        await via_first.users.UpdateUser(
            users_pb.UpdateUserRequest(
                user={"id": account.id, "is_active": False}, update_mask={"paths": ["is_active"]}
            ),
            metadata=admin.metadata,
        )
        await _eventually(lambda: refused(("API_KEY_REVOKED",)), PROPAGATION_SECONDS)

        await via_first.users.DeleteUser(
            users_pb.DeleteUserRequest(id=account.id), metadata=admin.metadata
        )
        await _eventually(
            lambda: refused(("API_KEY_REVOKED", "API_KEY_INVALID")), PROPAGATION_SECONDS
        )


async def test_nobody_grants_a_service_account_more_than_they_hold(
    stubs: Stubs, app: Application
) -> None:
    admin = await make_admin(app, stubs)
    worker = await _account(stubs, admin, "worker", perms.PERMISSION_TASKS_READ)
    manager = await _account(stubs, admin, "manager", perms.PERMISSION_USERS_MANAGE)
    managing = await _key(stubs, admin, manager)
    # users.manage lets it restrict or widen others, within what it holds itself.
    for target in (worker, manager):
        failure = await fails(
            stubs.users.UpdateUser(
                _grant(target.id, perms.PERMISSION_USERS_MANAGE, perms.PERMISSION_AUDIT_READ),
                metadata=managing.metadata,
            ),
            DENIED,
        )
        assert (failure.reason, failure.error_metadata) == (
            "PERMISSION_MISSING",
            {"permission": "audit.read"},
        )
    changed = await stubs.users.UpdateUser(
        _grant(worker.id, perms.PERMISSION_USERS_MANAGE), metadata=managing.metadata
    )
    assert list(changed.user.permissions) == [perms.PERMISSION_USERS_MANAGE]
    # Nothing changed by the refusals.
    got = await stubs.users.GetUser(users_pb.GetUserRequest(id=manager.id), metadata=admin.metadata)
    assert list(got.user.permissions) == [perms.PERMISSION_USERS_MANAGE]


async def test_only_a_service_account_has_a_name_and_permissions_to_change(
    stubs: Stubs, app: Application
) -> None:
    admin = await make_admin(app, stubs)
    person = await register(stubs)
    failure = await fails(
        stubs.users.UpdateUser(
            _grant(person.user.id, perms.PERMISSION_TASKS_READ), metadata=admin.metadata
        ),
        PRECONDITION,
    )
    assert failure.reason == "NOT_A_SERVICE_ACCOUNT"
    account = await _account(stubs, admin, "sync", perms.PERMISSION_TASKS_READ)
    failure = await fails(
        stubs.users.UpdateUser(
            users_pb.UpdateUserRequest(
                user={"id": account.id, "display_name": " ", "permissions": []},
                update_mask={"paths": ["display_name", "permissions"]},
            ),
            metadata=admin.metadata,
        ),
        INVALID,
    )
    assert set(failure.fields) == {"user.display_name", "user.permissions"}
    renamed = await stubs.users.UpdateUser(
        users_pb.UpdateUserRequest(
            user={"id": account.id, "display_name": "  nightly sync  "},
            update_mask={"paths": ["display_name"]},
        ),
        metadata=admin.metadata,
    )
    assert renamed.user.display_name == "nightly sync"
    assert list(renamed.user.permissions) == [perms.PERMISSION_TASKS_READ]
