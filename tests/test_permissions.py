"""Permissions: declared once per RPC in the protos, checked by one function, on every edge.

The table of which RPC needs which permission is the contract's (`option
(taskservice.v1.requires)`): these tests read it from the descriptors, so a new RPC is covered
(and one that declares nothing fails) without editing them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf.descriptor import FileDescriptor
from grpc_health.v1 import health_pb2

from taskservice.api.reflection import contract_files
from taskservice.calls.authorization import (
    METHOD_PERMISSIONS,
    PUBLIC_METHODS,
    SERVICE_MODULES,
    UndeclaredPermission,
    authorize_method,
    declared_permissions,
    permission_names,
)
from taskservice.errors import PermissionDenied
from taskservice.server import SERVICE_NAMES, Application
from taskservice.services.authorization import (
    ADMIN_ROLE,
    USER_ROLE,
    Permission,
    authorize,
    effective_permissions,
)
from taskservice.services.principal import Principal
from taskservice.v1 import permissions_pb2
from taskservice.v1 import user_service_pb2 as users_pb
from tests.conftest import Stubs
from tests.helpers import Account, fails, register
from tests.http_client import auth_headers, connect_failure, connect_json
from tests.test_health_and_reflection import _grpcurl, grpcurl  # noqa: F401 - a fixture

DENIED = grpc.StatusCode.PERMISSION_DENIED
USERS = "/taskservice.v1.UserService"

#: The RPCs that need no credential, as the contract must declare them.
EXPECTED_PUBLIC = {
    "/taskservice.v1.AuthService/Register",
    "/taskservice.v1.AuthService/Login",
    "/taskservice.v1.AuthService/RefreshToken",
    "/taskservice.v1.AuthService/Logout",
}


def _contract_methods() -> list[tuple[str, int]]:
    """Every RPC of the contract's own files, with the number its `requires` option holds."""
    methods = []
    for file in contract_files():
        if not file.name.startswith("taskservice/"):
            continue
        for service in file.service:
            for method in service.method:
                number = method.options.Extensions[permissions_pb2.requires]
                methods.append((f"/{file.package}.{service.name}/{method.name}", number))
    return methods


def test_every_rpc_declares_the_permission_it_needs_in_the_protos() -> None:
    methods = _contract_methods()
    assert len(methods) >= 24
    undeclared = [
        path for path, number in methods if number == permissions_pb2.PERMISSION_UNSPECIFIED
    ]
    assert undeclared == []
    public = {path for path, number in methods if number == permissions_pb2.PERMISSION_PUBLIC}
    assert public == EXPECTED_PUBLIC
    # The server's table is exactly the contract's, read from the same descriptors.
    assert set(METHOD_PERMISSIONS) == {path for path, _ in methods}
    assert set(PUBLIC_METHODS) == EXPECTED_PUBLIC


def test_the_server_checks_every_service_it_serves() -> None:
    covered = {
        service.full_name
        for module in SERVICE_MODULES
        for service in module.DESCRIPTOR.services_by_name.values()
    }
    assert covered == set(SERVICE_NAMES)


def test_a_service_whose_rpcs_declare_no_permission_stops_the_server_from_starting() -> None:
    health: FileDescriptor = health_pb2.DESCRIPTOR  # its RPCs carry no `requires` option
    with pytest.raises(UndeclaredPermission, match=r"grpc\.health\.v1\.Health/Check"):
        declared_permissions([health])


def test_the_permission_names_are_the_protos() -> None:
    names = set(permission_names().values())
    assert names == {permission.value for permission in Permission} | {"public"}


def test_an_admin_holds_every_permission_and_a_user_only_their_own() -> None:
    assert effective_permissions(True, None) == frozenset(Permission)
    assert effective_permissions(False, None) == {
        Permission.TASKS_READ,
        Permission.TASKS_WRITE,
        Permission.USERS_READ,
        Permission.ACCOUNT_MANAGE,
        Permission.API_KEYS_MANAGE,
    }
    # A credential limited to a permission its user's role lacks gains nothing.
    assert effective_permissions(False, {Permission.USERS_MANAGE}) == frozenset()
    # Every owner's tasks include one's own.
    assert effective_permissions(True, {Permission.TASKS_WRITE_ALL}) == {
        Permission.TASKS_WRITE_ALL,
        Permission.TASKS_WRITE,
    }


def _without(permission: Permission) -> frozenset[Permission]:
    """Every permission but `permission` and those that would bring it back."""
    return frozenset(
        held
        for held in ADMIN_ROLE
        if permission not in effective_permissions(True, {held}) or held is permission
    ) - {permission}


PROTECTED = sorted(
    (path, permission) for path, permission in METHOD_PERMISSIONS.items() if permission is not None
)


@pytest.mark.parametrize(("method", "permission"), PROTECTED)
def test_exactly_the_declared_permission_passes_the_method_check(
    method: str, permission: Permission
) -> None:
    authorize_method(Principal(user_id=1, is_admin=True, scope=frozenset({permission})), method)
    lacking = Principal(user_id=1, is_admin=True, scope=_without(permission))
    with pytest.raises(PermissionDenied) as refused:
        authorize_method(lacking, method)
    assert refused.value.reason == "PERMISSION_MISSING"
    assert refused.value.metadata == {"permission": permission.value}


def test_an_undeclared_method_of_the_contract_is_refused_to_every_caller() -> None:
    with pytest.raises(PermissionDenied) as refused:
        authorize_method(Principal(user_id=1, is_admin=True), "/taskservice.v1.X/Y")
    assert refused.value.reason == "PERMISSION_UNDECLARED"
    # Other packages' methods (health, reflection, test stand-ins) are left to their servers.
    authorize_method(Principal(user_id=1, is_admin=False), "/test.v1.StreamService/Count")


def test_owner_level_checks_need_the_all_variant_for_another_owner() -> None:
    own = Principal(user_id=1, is_admin=True, scope=frozenset({Permission.TASKS_WRITE}))
    authorize(own, Permission.TASKS_WRITE, owner_id=1)
    with pytest.raises(PermissionDenied) as refused:
        authorize(own, Permission.TASKS_WRITE, owner_id=2)
    assert (refused.value.reason, refused.value.metadata) == (
        "PERMISSION_MISSING",
        {"permission": "tasks.write_all"},
    )
    # A regular user's role lacks it: refused as the method always refused them.
    regular = Principal(user_id=1, is_admin=False)
    assert regular.permissions == USER_ROLE
    with pytest.raises(PermissionDenied) as refused:
        authorize(regular, Permission.TASKS_WRITE, owner_id=2)
    assert refused.value.reason == "ADMIN_REQUIRED"


def _denials(app: Application, method: str, permission: str) -> float:
    service, _, name = method.lstrip("/").rpartition("/")
    value = app.metrics.registry.get_sample_value(
        "taskservice_permission_denied_total",
        {"grpc_service": service, "grpc_method": name, "permission": permission},
    )
    return value or 0.0


async def test_a_regular_user_on_an_admin_method_keeps_admin_required_and_is_counted(
    app: Application, stubs: Stubs
) -> None:
    member: Account = await register(stubs)
    method = f"{USERS}/ListUsers"
    before = _denials(app, method, "users.manage")
    failure = await fails(
        stubs.users.ListUsers(users_pb.ListUsersRequest(), metadata=member.metadata), DENIED
    )
    assert failure.reason == "ADMIN_REQUIRED"
    assert failure.error_metadata == {"permission": "users.manage"}
    # The status is sent when the call is aborted, before the outermost interceptor records
    # the call's end: the client can hold the refusal a loop turn before the server counted it.
    async with asyncio.timeout(5):
        while _denials(app, method, "users.manage") < before + 1:  # noqa: ASYNC110 - polled under a deadline
            await asyncio.sleep(0.01)
    assert _denials(app, method, "users.manage") == before + 1


@pytest.fixture
async def http(app: Application) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.http_port}") as client:
        yield client


async def test_the_http_edge_refuses_and_counts_alike(
    app: Application, stubs: Stubs, http: httpx.AsyncClient
) -> None:
    member = await register(stubs)
    method = f"{USERS}/GetUser"
    before = _denials(app, method, "users.manage")
    response = await connect_json(
        http, method, {"id": member.user.id}, **auth_headers(member.token)
    )
    failure = connect_failure(response)
    assert (failure.code, failure.reason) == ("PERMISSION_DENIED", "ADMIN_REQUIRED")
    assert failure.error_metadata == {"permission": "users.manage"}
    assert _denials(app, method, "users.manage") == before + 1


async def test_grpcurl_describe_shows_the_permission_an_rpc_needs(
    grpcurl: Path,  # noqa: F811 - the fixture
    app: Application,
) -> None:
    exit_code, output = await _grpcurl(
        grpcurl, app, "describe", "taskservice.v1.TaskService.CreateTask"
    )
    assert exit_code == 0, output
    assert "option (.taskservice.v1.requires) = PERMISSION_TASKS_WRITE;" in output, output
    exit_code, output = await _grpcurl(grpcurl, app, "describe", "taskservice.v1.Permission")
    assert exit_code == 0, output
    assert (
        'PERMISSION_TASKS_READ_ALL = 4 [(.taskservice.v1.permission_name) = "tasks.read_all"];'
        in output
    )
