"""Authorization: the permissions, the roles that hold them, and the one function that checks.

The names are those of `protos/taskservice/v1/permissions.proto` (a test holds the two equal);
which RPC needs which is declared there too, and checked once per call in
`taskservice.calls.authorization`. The services call `authorize` (or `may`, to choose a query)
for what only they can know: whose resource the call is about.

Shared resources (a task list and its tasks) are decided by `authorize_in_list`: the caller's
permissions *and* its role on the list (VIEWER reads, EDITOR writes tasks, OWNER manages), one
function for every read, write, batch, filter, page and stream. The queries that find a list or
a task join the caller's membership in the same statement and hand the role found (None: not a
member) to it.

Why two outcomes for a missing permission: a caller whose *role* lacks it (a regular user calling
an admin-only method, or naming another owner) is refused exactly as before permissions existed
(ADMIN_REQUIRED, OWNER_NOT_ALLOWED, or NOT_FOUND where existence must not leak), so existing
clients see no change; a caller whose role holds it but whose API key was created without it gets
PERMISSION_MISSING. A service account, which has no role and no older clients, is always told
PERMISSION_MISSING. Every refusal names the permission in the error's metadata.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from taskservice.db.models import TaskListRole
from taskservice.errors import DomainError, FieldViolation, PermissionDenied

if TYPE_CHECKING:
    from taskservice.services.principal import Principal
    from taskservice.services.validation import Violations


class Permission(StrEnum):
    """What a caller may do; the values are the names clients see (`tasks.read`)."""

    TASKS_READ = "tasks.read"
    TASKS_WRITE = "tasks.write"
    TASKS_READ_ALL = "tasks.read_all"
    TASKS_WRITE_ALL = "tasks.write_all"
    USERS_READ = "users.read"
    USERS_MANAGE = "users.manage"
    API_KEYS_MANAGE = "api_keys.manage"
    AUDIT_READ = "audit.read"
    ACCOUNT_MANAGE = "account.manage"


#: A regular user's role: their own tasks, themself, their own password and keys.
USER_ROLE = frozenset(
    {
        Permission.TASKS_READ,
        Permission.TASKS_WRITE,
        Permission.USERS_READ,
        Permission.ACCOUNT_MANAGE,
        Permission.API_KEYS_MANAGE,
    }
)
#: An admin's role: everything.
ADMIN_ROLE = frozenset(Permission)

#: What reaching another owner's resources needs instead of the permission for one's own.
ANY_OWNER: dict[Permission, Permission] = {
    Permission.TASKS_READ: Permission.TASKS_READ_ALL,
    Permission.TASKS_WRITE: Permission.TASKS_WRITE_ALL,
    # Another user's keys are that user's credentials: managing them is managing the user.
    Permission.API_KEYS_MANAGE: Permission.USERS_MANAGE,
}
#: Permissions that bring others with them: every owner's tasks include one's own.
_IMPLIES: dict[Permission, frozenset[Permission]] = {
    Permission.TASKS_READ_ALL: frozenset({Permission.TASKS_READ}),
    Permission.TASKS_WRITE_ALL: frozenset({Permission.TASKS_WRITE}),
}


def role_permissions(is_admin: bool) -> frozenset[Permission]:
    """The permissions of a user's role, as of now."""
    return ADMIN_ROLE if is_admin else USER_ROLE


def effective_permissions(
    is_admin: bool,
    scope: Iterable[Permission] | None,
    granted: Iterable[Permission] | None = None,
) -> frozenset[Permission]:
    """What a caller may do: its role, cut down to `scope` (an API key's) when there is one.

    A service account has no role: `granted`, the permissions it was created with, stands in
    for it.

    Both sides are widened by what their permissions imply before they are intersected, so a
    key granted `tasks.write_all` still writes its user's own tasks after the user stops being
    an admin (and no longer anyone else's).
    """
    base = role_permissions(is_admin) if granted is None else frozenset(granted)
    held = _with_implied(base)
    if scope is not None:
        held = held & _with_implied(frozenset(scope))
    return held


def _with_implied(permissions: frozenset[Permission]) -> frozenset[Permission]:
    return permissions.union(*(_IMPLIES.get(permission, frozenset()) for permission in permissions))


def needed(principal: Principal, permission: Permission, owner_id: int | None) -> Permission:
    """The permission a call about `owner_id`'s resources needs (None: no owner, or the caller)."""
    if owner_id is None or owner_id == principal.user_id:
        return permission
    return ANY_OWNER.get(permission, permission)


def may(principal: Principal, permission: Permission, owner_id: int | None = None) -> bool:
    """Whether the caller may do `permission` on `owner_id`'s resources (None: its own)."""
    return needed(principal, permission, owner_id) in principal.permissions


def may_for_every_owner(principal: Principal, permission: Permission) -> bool:
    """Whether the caller may do `permission` whoever the owner is (to choose a query's shape)."""
    return ANY_OWNER.get(permission, permission) in principal.permissions


def authorize(
    principal: Principal,
    permission: Permission,
    owner_id: int | None = None,
    *,
    otherwise: Callable[[dict[str, str]], DomainError] | None = None,
) -> None:
    """Refuse the call unless the caller may do `permission` on `owner_id`'s resources.

    `otherwise` makes the error for a caller whose role lacks the permission (given the error
    metadata to carry), where a method has always answered in its own way; by default that is
    ADMIN_REQUIRED, since every permission a role lacks is an admin's. A caller whose role holds
    it but whose key does not gets PERMISSION_MISSING.
    """
    wanted = needed(principal, permission, owner_id)
    if wanted in principal.permissions:
        return
    metadata = {"permission": wanted.value}
    if principal.granted is not None or wanted in effective_permissions(principal.is_admin, None):
        # A service account has no older refusals to keep: it is told what it lacks.
        raise permission_missing(wanted)
    if otherwise is not None:
        raise otherwise(metadata)
    raise PermissionDenied("ADMIN_REQUIRED", "this method is for administrators only", metadata)


def check_permission_names(
    names: Sequence[str], problems: Violations, field: str = "permissions"
) -> frozenset[Permission]:
    """The permissions `names` (`tasks.read`) name, noting unknown and repeated ones."""
    seen: set[Permission] = set()
    for index, name in enumerate(names):
        try:
            permission = Permission(name)
        except ValueError:
            problems.add(
                FieldViolation(f"{field}[{index}]", "must be a permission (see Permission)")
            )
            continue
        if permission in seen:
            problems.add(FieldViolation(f"{field}[{index}]", "repeats a permission"))
        seen.add(permission)
    return frozenset(seen)


def stored_permissions(permissions: frozenset[Permission]) -> str:
    """How a list of permissions is stored: names in the enum's order, space-separated."""
    return " ".join(permission.value for permission in Permission if permission in permissions)


def parse_stored(stored: str | None) -> frozenset[Permission] | None:
    """A stored list of permissions (None stays None); names this version lacks grant nothing."""
    if stored is None:
        return None
    known = {permission.value for permission in Permission}
    return frozenset(Permission(name) for name in stored.split() if name in known)


def may_grant(principal: Principal, permissions: Iterable[Permission]) -> bool:
    """Whether the caller holds every one of `permissions` itself (see `authorize_granting`)."""
    return frozenset(permissions) <= principal.permissions


def authorize_granting(principal: Principal, permissions: Iterable[Permission]) -> None:
    """Refuse to hand out a permission the caller lacks: nobody grants more than they hold.

    Applies to a service account's permissions and to making an administrator (who holds
    every permission), so a key scoped to `users.manage` cannot mint a wider credential.
    The first permission lacking, in the enum's order, is named.
    """
    wanted = frozenset(permissions)
    for permission in Permission:
        if permission in wanted and permission not in principal.permissions:
            raise permission_missing(permission)


def permission_missing(permission: Permission) -> PermissionDenied:
    """The error for a caller whose credential does not carry `permission`."""
    return PermissionDenied(
        "PERMISSION_MISSING",
        f"the credential of this call lacks the permission {permission.value!r}",
        {"permission": permission.value},
    )


@dataclass(frozen=True)
class ListAction:
    """What a call does with a list or its tasks: the permission and the list role it needs."""

    permission: Permission
    role: TaskListRole


#: Reading a list, its members and its tasks: any member.
READ_LIST = ListAction(Permission.TASKS_READ, TaskListRole.VIEWER)
#: Creating, changing, moving, trashing and restoring a list's tasks: EDITOR or OWNER.
WRITE_TASKS = ListAction(Permission.TASKS_WRITE, TaskListRole.EDITOR)
#: Renaming, trashing and restoring a list and managing its members: OWNER.
MANAGE_LIST = ListAction(Permission.TASKS_WRITE, TaskListRole.OWNER)
#: Leaving a list: any member, with the permission LeaveTaskList declares (a key that may write
#: but not read its user's tasks still leaves the lists its user is in).
LEAVE_LIST = ListAction(Permission.TASKS_WRITE, TaskListRole.VIEWER)


def authorize_in_list(
    principal: Principal,
    action: ListAction,
    role: int | None,
    *,
    not_found: Callable[[], DomainError],
) -> None:
    """Refuse `action` on a list (or a task in it) unless the caller may do it there.

    `role` is the caller's role on the list, None when not a member. A member whose role is
    enough acts with the permission for its own resources; anyone else needs the `_all`
    variant (an admin, member or not). A caller who may not even see the list gets
    `not_found()`, exactly what a missing id gets; one who may see it (a member, or a key
    reading every list) but not act is told what it lacks: the role (TASK_LIST_ROLE_REQUIRED)
    or the permission (PERMISSION_MISSING).
    """
    if role is not None and role >= action.role and action.permission in principal.permissions:
        return
    every = ANY_OWNER[action.permission]
    if every in principal.permissions:
        return
    if role is None:
        if Permission.TASKS_READ_ALL in principal.permissions:
            raise permission_missing(every)
        raise not_found()
    if role < action.role:
        raise role_required(TaskListRole(action.role))
    raise permission_missing(action.permission)


def may_see_every_list(principal: Principal) -> bool:
    """Whether the caller sees every list, member or not (to choose a query's shape)."""
    return Permission.TASKS_READ_ALL in principal.permissions


def role_required(role: TaskListRole) -> PermissionDenied:
    """The error for a member whose role on the list is too low for the call."""
    name = f"TASK_LIST_ROLE_{role.name}"
    return PermissionDenied(
        "TASK_LIST_ROLE_REQUIRED",
        f"this needs the {role.name} role on the task list",
        {"role": name},
    )
