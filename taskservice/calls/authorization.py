"""The method-level permission check, read from the contract, made once per call on every edge.

Each RPC declares the permission it needs in the protos (`option (taskservice.v1.requires)`,
see `protos/taskservice/v1/permissions.proto`); `METHOD_PERMISSIONS` is read from the generated
descriptors when this module is imported, so there is no second table to keep in step, and a
method that declares nothing stops the server from starting rather than being left open.
`authorize_method` is called by `taskservice.calls.authentication` as soon as a call's caller is
known, before its request is read any further; who owns what is left to the services.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType

from google.protobuf.descriptor import FileDescriptor

from taskservice.errors import PermissionDenied
from taskservice.services.authorization import Permission, authorize
from taskservice.services.principal import Principal
from taskservice.v1 import (
    api_key_service_pb2,
    audit_service_pb2,
    auth_service_pb2,
    permissions_pb2,
    task_list_service_pb2,
    task_service_pb2,
    user_service_pb2,
)

#: The generated modules of every service the server exposes from the contract.
SERVICE_MODULES: tuple[ModuleType, ...] = (
    auth_service_pb2,
    user_service_pb2,
    task_service_pb2,
    task_list_service_pb2,
    api_key_service_pb2,
    audit_service_pb2,
)

#: Every method of the contract's package starts so; each must declare a permission.
CONTRACT_PREFIX = "/taskservice.v1."
#: What the `public` marker means: the method needs no credential.
PUBLIC = "public"


class UndeclaredPermission(RuntimeError):
    """An RPC of the contract declares no permission: a bug in the protos, caught at startup."""


def permission_names() -> dict[int, str]:
    """Each `Permission` enum number's name (`tasks.read`), from its `permission_name` option."""
    names = {}
    for value in permissions_pb2.Permission.DESCRIPTOR.values:
        name = value.GetOptions().Extensions[permissions_pb2.permission_name]
        if name:
            names[value.number] = name
    return names


def declared_permissions(files: Iterable[FileDescriptor]) -> dict[str, str]:
    """`/package.Service/Method` → the name of the permission it declares (or `public`)."""
    names = permission_names()
    declared = {}
    for file in files:
        for service in file.services_by_name.values():
            for method in service.methods:
                number = method.GetOptions().Extensions[permissions_pb2.requires]
                path = f"/{service.full_name}/{method.name}"
                if number not in names:
                    raise UndeclaredPermission(f"{path} declares no (taskservice.v1.requires)")
                declared[path] = names[number]
    return declared


#: Each Permission enum number's name (`tasks.read`, or `public`), and each name's number.
PERMISSION_NAMES: dict[int, str] = permission_names()
PERMISSION_NUMBERS: dict[str, int] = {name: number for number, name in PERMISSION_NAMES.items()}

#: Every RPC's declared permission, by method path; None for the public ones.
METHOD_PERMISSIONS: dict[str, Permission | None] = {
    path: None if name == PUBLIC else Permission(name)
    for path, name in declared_permissions(module.DESCRIPTOR for module in SERVICE_MODULES).items()
}
#: Methods anyone may call without a credential, as the contract declares them.
PUBLIC_METHODS = frozenset(path for path, need in METHOD_PERMISSIONS.items() if need is None)


def authorize_method(principal: Principal | None, method: str) -> None:
    """Refuse the call unless its caller holds the permission `method` declares.

    Public methods and anonymous callers of optionally authenticated ones pass (the services
    decide what an anonymous caller may do); a method the contract does not declare (health,
    reflection) is not this check's business.
    """
    if principal is None:
        return
    if method not in METHOD_PERMISSIONS:
        if method.startswith(CONTRACT_PREFIX):  # fail closed: nothing declared, nothing allowed
            raise PermissionDenied("PERMISSION_UNDECLARED", "this method declares no permission")
        return
    if (permission := METHOD_PERMISSIONS[method]) is not None:
        authorize(principal, permission)
