"""The fuzz's model of the service: every row it created, and what every RPC must answer.

For each request the model lists the documented error conditions that apply; the server must
answer OK when none applies and otherwise one of their codes (the order in which a server checks
them is its own business), naming only fields the model also finds bad. An OK answer is checked
against the request and the model, then applied to it, so that after the run every row can be
compared with the last OK answer about it. Task rules live in `fuzz_tasks`, list rules in
`fuzz_lists`, task list rules in `fuzz_shared`, shared vocabulary and limits in `fuzz_rules`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message

from taskservice.v1 import permissions_pb2
from tests.fuzz_credentials import CredentialOracles, CredentialState
from tests.fuzz_rules import (
    ADMIN_ROLE,
    ADMINS_ALONE,
    DENIED,
    EMAIL_MAX,
    EVERY_OWNER,
    EXHAUSTED,
    EXISTS,
    INVALID,
    NEEDS_A_LOGIN,
    NOT_FOUND,
    PRECONDITION,
    SERVICE_ACCOUNT_FIELDS,
    SERVICE_ACCOUNT_NAME_MAX,
    UNAUTHENTICATED,
    USER_FIELDS,
    USER_KIND_HUMAN,
    USER_KIND_SERVICE,
    USER_ROLE,
    Conditions,
    Credential,
    Expect,
    IssuedPage,
    Resync,
    TaskRow,
    UserRow,
    check,
    declared_permissions,
    effective_page_size,
    email_or_none,
    holds,
    only,
    pair,
    password_problem,
    permission_problems,
)
from tests.fuzz_shared import ListOracles, ListRow
from tests.fuzz_tasks import TaskOracles

#: Each method's declared permission; PUBLIC for those that need no credential.
DECLARED = declared_permissions()
PUBLIC = permissions_pb2.PERMISSION_PUBLIC


class Model(ListOracles, TaskOracles, CredentialOracles):
    """Every row and credential of one example, and the oracle of every RPC."""

    def __init__(
        self,
        max_message_bytes: int,
        trash_retention_seconds: float = 30 * 86_400,
        *,
        title_order_exact: bool = True,
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self.trash_retention_seconds = trash_retention_seconds
        self.title_order_exact = title_order_exact
        self.users: dict[int, UserRow] = {}
        self.tasks: dict[int, TaskRow] = {}
        #: (caller id, request_id) -> task id: CreateTask's idempotency keys.
        self.keys: dict[tuple[int, str], int] = {}
        self.credentials: list[Credential] = []
        self.pages: list[IssuedPage] = []
        self.request_ids: list[str] = []
        self.gone_user_ids: list[int] = []
        self.gone_task_ids: list[int] = []
        self.current_revision = 1
        #: Task lists the model has met, CreateTaskList's keys, and each user's personal list.
        self.lists: dict[int, ListRow] = {}
        self.list_keys: dict[tuple[int, str], int] = {}
        self.personal_lists: dict[int, int] = {}
        self.list_pages: dict[str, tuple[int, int, bool, int]] = {}
        self.member_pages: dict[str, tuple[int, int, int]] = {}
        self.joins = 0
        self.cred = CredentialState()
        #: The method being modelled (what a key's caller view is for).
        self._method = ""
        self._oracles: dict[str, Callable[[Credential, Any], Expect]] = {
            "/taskservice.v1.AuthService/Register": self._register,
            "/taskservice.v1.AuthService/Login": self._login,
            "/taskservice.v1.AuthService/ChangePassword": self._change_password,
            "/taskservice.v1.UserService/ListUsers": self._list_users,
            "/taskservice.v1.UserService/GetMe": self._get_me,
            "/taskservice.v1.UserService/GetUser": self._get_user,
            "/taskservice.v1.UserService/UpdateUser": self._update_user,
            "/taskservice.v1.UserService/DeleteUser": self._delete_user,
            "/taskservice.v1.UserService/CreateServiceAccount": self._create_service_account,
            **self.task_oracles(),
            **self.list_oracles(),
            **self.credential_oracles(),
        }

    # --- what the model knows ------------------------------------------------------------------

    @property
    def methods(self) -> frozenset[str]:
        """The full names of the methods the model has an oracle for."""
        return frozenset(self._oracles)

    def add_user(self, user: Message, password: str | None) -> UserRow:
        """Record a user from an OK answer that created it (a service account: no password)."""
        row = UserRow(
            id=user.id,  # type: ignore[attr-defined]
            email=user.email,  # type: ignore[attr-defined]
            is_active=user.is_active,  # type: ignore[attr-defined]
            is_admin=user.is_admin,  # type: ignore[attr-defined]
            password=password,
            create_time=pair(user.create_time),  # type: ignore[attr-defined]
            kind=user.kind,  # type: ignore[attr-defined]
            display_name=user.display_name,  # type: ignore[attr-defined]
            permissions=tuple(user.permissions),  # type: ignore[attr-defined]
        )
        self.users[row.id] = row
        return row

    def add_token(self, user_id: int, token: str) -> Credential:
        """Hold a token the server issued for `user_id` now."""
        credential = Credential(
            f"user {user_id} v{self.users[user_id].version}",
            (("authorization", f"Bearer {token}"),),
            user_id,
            self.users[user_id].version,
        )
        self.credentials.append(credential)
        return credential

    def add_key(self, key_id: int, secret: str) -> Credential:
        """Hold an API key the server issued (its row is in `cred.api_keys`)."""
        row = self.cred.api_keys[key_id]
        credential = Credential(
            f"key {key_id} of user {row.user_id}",
            (("authorization", f"Bearer {secret}"),),
            row.user_id,
            key_id=key_id,
        )
        self.credentials.append(credential)
        return credential

    def caller(self, credential: Credential) -> UserRow | None:
        """The user a credential authenticates as right now, or None.

        For an API key, a copy of its user that is an admin exactly when the key holds the
        admin-only permission that does what the method being modelled does for every owner:
        the one it declares (`audit.read`, `users.manage`), or that one's `_all` variant for the
        task methods (`tasks.read_all` for a read, `tasks.write_all` for a write). The oracles'
        admin checks then stand for that permission: a key reaching every owner's tasks reads
        or writes them as an admin does (every list as its OWNER, other owners named in
        `owner_id`), and one that does not sees a regular user. A key holding `tasks.read_all`
        still sees every list when it writes: a write it may not make there is PERMISSION_DENIED
        (security.md: "refused ... when it writes a task it can see"), not NOT_FOUND.
        """
        if credential.user_id is None:
            return None
        user = self.users.get(credential.user_id)
        if user is None or not user.is_active:
            return None
        if credential.key_id is None:
            return user if user.version == credential.version else None
        if credential.key_id not in self.cred.api_keys:
            return None
        needed = DECLARED.get(self._method, PUBLIC)
        reach = EVERY_OWNER.get(needed, needed)
        held = self._holds(user, credential)
        admin = reach in ADMINS_ALONE and reach in held
        sees = permissions_pb2.PERMISSION_TASKS_READ_ALL in held
        return dataclasses.replace(user, is_admin=admin, sees_every_list=sees)

    def _holds(self, user: UserRow, credential: Credential) -> frozenset[int]:
        """What a key credential may do now."""
        key = self.cred.api_keys[credential.key_id]  # type: ignore[index]
        if user.kind == USER_KIND_SERVICE:
            return holds(user.permissions, key.permissions)
        return holds(ADMIN_ROLE if user.is_admin else USER_ROLE, key.permissions)

    def expect(self, method: str, credential: Credential, request: Message) -> Expect:
        """What `request` by `credential` to `method` may be answered."""
        size = request.ByteSize()
        if size > self.max_message_bytes:
            return only(EXHAUSTED, f"request of {size} bytes is over the server's limit")
        self._method = method
        needed = DECLARED[method]
        if credential.key_id is not None and needed != PUBLIC:
            caller = self.caller(credential)
            if caller is None:
                return only(UNAUTHENTICATED, f"{credential.name} does not authenticate")
            if needed not in self._holds(self.users[caller.id], credential):
                return only(DENIED, "PERMISSION_MISSING: the key lacks the method's permission")
            if method in NEEDS_A_LOGIN:
                return only(DENIED, "API_KEY_NOT_ALLOWED: keys cannot manage keys")
        return self._oracles[method](credential, request)

    def _authenticated(self, credential: Credential) -> tuple[UserRow | None, Expect | None]:
        caller = self.caller(credential)
        if caller is None:
            return None, only(UNAUTHENTICATED, f"{credential.name} does not authenticate")
        return caller, None

    def _admin(self, caller: UserRow, conditions: Conditions) -> None:
        if not caller.is_admin:
            conditions.add(DENIED, "admin-only method called by a regular user")

    # --- AuthService ---------------------------------------------------------------------------

    def _register(self, credential: Credential, request: Any) -> Expect:
        caller = self.caller(credential)
        if not credential.anonymous and caller is None:
            return only(UNAUTHENTICATED, "an authorization entry was sent and is not valid")
        conditions = Conditions()
        if request.is_admin and (caller is None or not caller.is_admin):
            conditions.add(DENIED, "is_admin without an admin's token")
        email = email_or_none(request.email)
        if email is None:
            conditions.add(INVALID, "not a valid email", "email")
        if (problem := password_problem(request.password)) is not None:
            conditions.add(INVALID, f"password {problem}", "password")
        if email is not None and any(user.email == email for user in self.users.values()):
            conditions.add(EXISTS, "email taken")

        def on_ok(response: Any) -> None:
            user = response.user
            check(user.id > 0 and user.id not in self.users, f"new user has id {user.id}")
            check(user.email == email, f"email {user.email!r}, expected {email!r}")
            check(user.is_active and user.is_admin == request.is_admin, "wrong flags")
            check(user.kind == USER_KIND_HUMAN, f"a registered user of kind {user.kind}")
            check(not user.display_name and not user.permissions, "a person with SA fields")
            check(len(user.email) <= EMAIL_MAX, "email longer than 254 characters")
            self._check_token_fields(response)
            self.add_user(user, request.password)
            self.add_token(user.id, response.access_token)
            self.add_refresh_token(user.id, response.refresh_token)

        return conditions.expect(on_ok)

    def _login(self, credential: Credential, request: Any) -> Expect:
        conditions = Conditions()
        if not request.email.strip():
            # Not in Login's error list, but a missing required field (LoginRequest.email).
            conditions.add(INVALID, "email is required", "email")
        if not request.password:
            conditions.add(INVALID, "password is required", "password")
        email = email_or_none(request.email)
        user = next((u for u in self.users.values() if u.email == email), None)
        if user is not None and user.kind == USER_KIND_SERVICE:
            # Refused before any password is compared, active or not: it has none.
            conditions.add(PRECONDITION, "a service account cannot sign in with a password")
        elif user is None or user.password != request.password or not user.is_active:
            conditions.add(UNAUTHENTICATED, "unknown email, wrong password or deactivated")

        def on_ok(response: Any) -> None:
            assert user is not None
            self._check_user(response.user, user)
            self._check_token_fields(response)
            self.add_token(user.id, response.access_token)
            self.add_refresh_token(user.id, response.refresh_token)

        return conditions.expect(on_ok)

    def _change_password(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        conditions = Conditions()
        if (problem := password_problem(request.new_password)) is not None:
            conditions.add(INVALID, f"new_password {problem}", "new_password")
        if request.current_password != caller.password:
            conditions.add(UNAUTHENTICATED, "current_password is wrong")

        def on_ok(response: Any) -> None:
            self._check_token_fields(response)
            caller.password = request.new_password
            caller.version += 1
            self.add_token(caller.id, response.access_token)

        return conditions.expect(on_ok)

    @staticmethod
    def _check_token_fields(response: Any) -> None:
        check(bool(response.access_token), "empty access_token")
        check(response.token_type == "Bearer", f"token_type {response.token_type!r}")
        check(response.expires_in > 0, f"expires_in {response.expires_in}")

    # --- UserService ---------------------------------------------------------------------------

    def _check_user(self, message: Any, row: UserRow) -> None:
        got = (
            message.id,
            message.email,
            message.is_active,
            message.is_admin,
            message.kind,
            message.display_name,
            tuple(message.permissions),
        )
        want = (
            row.id,
            row.email,
            row.is_active,
            row.is_admin,
            row.kind,
            row.display_name,
            row.permissions,
        )
        check(got == want, f"user {got} disagrees with the last OK answer {want}")
        check(
            pair(message.create_time) == row.create_time,
            f"user {row.id}'s create_time changed",
        )

    def _list_users(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        conditions = Conditions()
        self._admin(caller, conditions)
        if request.page_size < 0:
            conditions.add(INVALID, "negative page_size", "page_size")
        # Only a known kind filters; UNSPECIFIED and numbers the enum lacks list every user.
        kind = request.kind if request.kind in {USER_KIND_HUMAN, USER_KIND_SERVICE} else None
        scope: tuple[object, ...] = ("users", kind)
        after = self._page_position(request.page_token, scope, conditions)

        def on_ok(response: Any) -> None:
            remaining = sorted(
                u.id
                for u in self.users.values()
                if (after is None or u.id > after)  # type: ignore[operator]
                and (kind is None or u.kind == kind)
            )
            self._check_page(
                [user.id for user in response.users], remaining, request.page_size, response
            )
            for user in response.users:
                self._check_user(user, self.users[user.id])
            self._record_page(response, scope, [user.id for user in response.users], after)

        return conditions.expect(on_ok)

    def _get_me(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        return Conditions().expect(lambda response: self._check_user(response.user, caller))  # type: ignore[attr-defined]

    def _get_user(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        conditions = Conditions()
        self._admin(caller, conditions)
        if request.id <= 0:
            conditions.add(INVALID, "id not positive", "id")
        elif request.id not in self.users:
            conditions.add(NOT_FOUND, "no such user")

        def on_ok(response: Any) -> None:
            self._check_user(response.user, self.users[request.id])

        return conditions.expect(on_ok)

    def _update_user(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        conditions = Conditions()
        self._admin(caller, conditions)
        paths = frozenset(request.update_mask.paths)
        user_id = request.user.id
        if user_id <= 0:
            conditions.add(INVALID, "user.id not positive", "user.id")
        if not paths:
            conditions.add(INVALID, "empty update_mask", "update_mask")
        if paths - USER_FIELDS:
            conditions.add(INVALID, f"mask paths {sorted(paths - USER_FIELDS)}", "update_mask")
        email = None
        if "email" in paths:
            email = email_or_none(request.user.email)
            if email is None:
                conditions.add(INVALID, "not a valid email", "user.email")
        deactivates = "is_active" in paths and not request.user.is_active
        demotes = "is_admin" in paths and not request.user.is_admin
        if user_id == caller.id and (deactivates or demotes):
            conditions.add(PRECONDITION, "an admin deactivating or demoting themself")
        target = self.users.get(user_id)
        if user_id > 0 and target is None:
            conditions.add(NOT_FOUND, "no such user")
        if (
            target is not None
            and target.kind == USER_KIND_SERVICE
            and "is_admin" in paths
            and request.user.is_admin
        ):
            conditions.add(PRECONDITION, "a service account cannot be made an admin")
        name = request.user.display_name.strip()
        if "display_name" in paths and (
            "\x00" in name or not 0 < len(name) <= SERVICE_ACCOUNT_NAME_MAX
        ):
            conditions.add(INVALID, "display_name empty, too long or with NUL", "user.display_name")
        granted = None
        if "permissions" in paths:
            if not request.user.permissions:
                conditions.add(INVALID, "no permissions", "user.permissions")
            granted = permission_problems(request.user.permissions, conditions, "user.permissions")
        if (
            target is not None
            and target.kind != USER_KIND_SERVICE
            and paths & SERVICE_ACCOUNT_FIELDS
        ):
            conditions.add(PRECONDITION, "display_name or permissions of a person")
        if (
            target is not None
            and email is not None
            and any(u.email == email and u.id != user_id for u in self.users.values())
        ):
            conditions.add(EXISTS, "another user has this email")

        def on_ok(response: Any) -> None:
            assert target is not None
            if email is not None:
                target.email = email
            if (deactivates and target.is_active) or (demotes and target.is_admin):
                target.version += 1  # the user's tokens stop working
            if "is_active" in paths:
                target.is_active = request.user.is_active
            if "is_admin" in paths:
                target.is_admin = request.user.is_admin
            if "display_name" in paths:
                target.display_name = name
            if granted is not None:
                target.permissions = granted
            self._check_user(response.user, target)

        return conditions.expect(on_ok)

    def _delete_user(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        conditions = Conditions()
        self._admin(caller, conditions)
        if request.id <= 0:
            conditions.add(INVALID, "id not positive", "id")
        elif request.id == caller.id:
            conditions.add(PRECONDITION, "an admin deleting themself")
        elif request.id not in self.users:
            conditions.add(NOT_FOUND, "no such user")

        def on_ok(response: Any) -> Resync:
            del self.users[request.id]
            self.gone_user_ids.append(request.id)
            # Shared lists they owned go to their next OWNER (tasks too); the rest go with them.
            gone, changed = self.forget_lists_of(request.id)
            for task in [t for t in self.tasks.values() if t.task_list_id in gone]:
                self._forget_task(task.id)
            self.keys = {k: v for k, v in self.keys.items() if k[0] != request.id}
            self.forget_user_credentials(request.id)
            kept = tuple(task_id for task_id in changed if task_id in self.tasks)
            before = {task_id: self.tasks[task_id].etag for task_id in kept}

            def rewritten() -> None:
                # Handed on or unassigned, each is a write: its old etag no longer holds.
                same = [task_id for task_id in kept if self.tasks[task_id].etag == before[task_id]]
                check(not same, f"tasks {same} changed without a new etag")

            return Resync(kept, frozenset({"etag", "update_time"}), then=rewritten)

        return conditions.expect(on_ok)

    def _create_service_account(self, credential: Credential, request: Any) -> Expect:
        caller, refused = self._authenticated(credential)
        if caller is None:
            return refused  # type: ignore[return-value]
        conditions = Conditions()
        self._admin(caller, conditions)  # users.manage: an admin's alone
        name = request.display_name.strip()
        if "\x00" in name or not 0 < len(name) <= SERVICE_ACCOUNT_NAME_MAX:
            conditions.add(INVALID, "display_name empty, too long or with NUL", "display_name")
        if not request.permissions:
            conditions.add(INVALID, "no permissions", "permissions")
        permissions = permission_problems(request.permissions, conditions)
        # PERMISSION_MISSING for a permission the caller lacks cannot happen here: every caller
        # the fuzz has is a person's access token, and an admin holds every permission.

        def on_ok(response: Any) -> None:
            user = response.user
            check(user.id > 0 and user.id not in self.users, f"new user has id {user.id}")
            check(user.kind == USER_KIND_SERVICE, f"kind {user.kind}")
            check(user.is_active and not user.is_admin, "a new service account's flags")
            check(user.display_name == name, f"display_name {user.display_name!r}, not {name!r}")
            got = tuple(user.permissions)
            check(got == permissions, f"permissions {got}, expected {permissions}")
            check(
                user.email.endswith("@service-accounts.invalid"),
                f"placeholder email {user.email!r} outside the reserved domain",
            )
            check(
                all(u.email != user.email for u in self.users.values()),
                f"email {user.email!r} taken",
            )
            self.add_user(user, None)

        return conditions.expect(on_ok)

    # --- pages ---------------------------------------------------------------------------------

    def _page_position(
        self, token: str, scope: tuple[object, ...], conditions: Conditions
    ) -> object:
        """Where a page token says to continue; INVALID_ARGUMENT unless issued for `scope`."""
        if not token:
            return None
        issued = next((page for page in self.pages if page.token == token), None)
        if issued is None:
            conditions.add(INVALID, "page_token was never issued", "page_token")
            return None
        if issued.scope != scope:
            conditions.add(INVALID, "page_token issued for another list", "page_token")
            return None
        return issued.after

    @staticmethod
    def _check_page(ids: list[int], remaining: list[int], requested: int, response: Any) -> None:
        """A page continues exactly where the token pointed, within the size, to the end."""
        size = effective_page_size(requested)
        check(len(ids) <= size, f"a page of {len(ids)} for page_size {requested}")
        check(ids == remaining[: len(ids)], f"page {ids} is not the start of {remaining}")
        check(bool(ids) or not remaining, f"an empty page while {remaining} remain")
        check(
            bool(response.next_page_token) or len(ids) == len(remaining),
            f"no next_page_token after {ids} while {remaining} remain",
        )

    def _record_page(
        self, response: Any, scope: tuple[object, ...], ids: list[int], after: object
    ) -> None:
        if response.next_page_token:
            last = ids[-1] if ids else after
            check(last is not None, "a first page that is empty yet has a next_page_token")
            self.pages.append(IssuedPage(response.next_page_token, scope, last))

    def _forget_task(self, task_id: int) -> None:
        del self.tasks[task_id]
        self.gone_task_ids.append(task_id)
        self.keys = {k: v for k, v in self.keys.items() if v != task_id}
