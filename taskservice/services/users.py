"""Reading and managing users: every method but `get_me` is for administrators."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from taskservice.db.engine import Database
from taskservice.db.models import (
    SERVICE_ACCOUNT_NAME_MAX_LENGTH,
    USER_KIND_HUMAN,
    USER_KIND_SERVICE,
    TaskListMember,
    User,
)
from taskservice.db.reads import Prepared
from taskservice.db.records import UserRecord
from taskservice.db.retry import retries_conflicts
from taskservice.errors import AlreadyExists, FailedPrecondition, FieldViolation, NotFound
from taskservice.security.passwords import PasswordHasher
from taskservice.services import audit
from taskservice.services.audit import AuditTrail
from taskservice.services.auth_state import AuthStateStore
from taskservice.services.authorization import (
    ADMIN_ROLE,
    Permission,
    authorize,
    authorize_granting,
    check_permission_names,
    may_for_every_owner,
    stored_permissions,
)
from taskservice.services.pagination import PageTokens, page_size, page_size_violation
from taskservice.services.principal import Principal
from taskservice.services.shared_lists import hand_over_lists
from taskservice.services.validation import (
    Violations,
    email_violation,
    id_violation,
    mask_violations,
    new_password_violation,
    nul_violation,
    raise_if,
    require_id,
)

#: The reserved domain (RFC 2606) of service accounts' placeholder emails: no mail, no sign-in.
SERVICE_ACCOUNT_EMAIL_DOMAIN = "service-accounts.invalid"
#: A service account's stored password hash: no bcrypt hash looks like it, and every sign-in
#: path refuses service accounts before comparing passwords.
NO_PASSWORD = "!"  # noqa: S105 - a marker, not a password

#: Fields UpdateUser may change.
UPDATABLE_USER_FIELDS = frozenset({"email", "is_active", "is_admin", "display_name", "permissions"})
#: Fields only a service account has, and UpdateUser changes only on one.
SERVICE_ACCOUNT_FIELDS = frozenset({"display_name", "permissions"})
#: Fields that exist on a User but are never written by clients.
READ_ONLY_USER_FIELDS = frozenset({"id", "create_time", "update_time"})
#: One user's public columns (never the password hash), as a plain row.
_USER_COLUMNS = (
    User.id,
    User.email,
    User.is_active,
    User.is_admin,
    User.create_time,
    User.update_time,
    User.kind,
    User.display_name,
    User.permissions,
)
_USER_BY_ID = Prepared(select(*_USER_COLUMNS).where(User.id == bindparam("user_id")))


@dataclass(frozen=True)
class UserChanges:
    """The fields an update names (`paths`) and their requested values."""

    paths: frozenset[str]
    email: str = ""
    is_active: bool = False
    is_admin: bool = False
    display_name: str = ""
    #: Permission names (`tasks.read`); "" for a number no permission has.
    permissions: tuple[str, ...] = ()


@dataclass(frozen=True)
class UserPage:
    """One page of users and the token for the next (empty on the last page)."""

    users: list[User]
    next_page_token: str


class UserService:
    """User administration."""

    def __init__(
        self,
        database: Database,
        page_tokens: PageTokens,
        states: AuthStateStore,
        audit_trail: AuditTrail,
    ) -> None:
        self._db = database
        self._page_tokens = page_tokens
        self._states = states
        self._audit = audit_trail

    async def get_me(self, caller: Principal) -> UserRecord:
        """The caller's own user."""
        return await self._get(caller.user_id)

    async def get_user(self, caller: Principal, user_id: int) -> UserRecord:
        """Any user: the method needs `users.manage`, checked from its declared permission."""
        require_id("id", user_id)
        return await self._get(user_id)

    async def list_users(
        self, caller: Principal, requested_size: int, token: str, kind: str | None = None
    ) -> UserPage:
        """Users oldest first, by keyset on id (the method needs `users.manage`).

        `kind` (`human`, `service`) keeps only users of that kind; None: every user.
        """
        scope: dict[str, object] = {"list": "users"}
        if kind is not None:  # only when set: tokens issued before kinds existed still open
            scope["kind"] = kind
        problems = Violations()
        problems.add(page_size_violation(requested_size))
        after = problems.check(lambda: self._page_tokens.open(token, scope))
        problems.raise_if_any()
        size = page_size(requested_size)
        query = select(User).order_by(User.id).limit(size + 1)
        if kind is not None:
            query = query.where(User.kind == kind)
        if after is not None:
            query = query.where(User.id > after)
        async with self._db.read() as session:
            users = list((await session.scalars(query)).all())
        return UserPage(*self._page_tokens.page(users, size, scope, key=lambda user: user.id))

    async def batch_get_users(
        self, caller: Principal, user_ids: Iterable[int]
    ) -> dict[int, UserRecord]:
        """Several users by id, in one read; ids no user has are left out.

        For views that show each task's owner (the REST task list) without a read per row: a
        caller who may read or write every owner's tasks may see who owns them (a write answers
        with the task written, owner included). Anyone else who may read tasks sees the users
        they share a list with (whom ListTaskListMembers shows them too), and no one else: the
        owner of a shared list's task is its list's owner, a fellow member.
        """
        wanted = sorted(set(user_ids))
        query = select(*_USER_COLUMNS).where(User.id.in_(wanted))
        if not may_for_every_owner(caller, Permission.TASKS_WRITE) and not may_for_every_owner(
            caller, Permission.TASKS_READ
        ):
            authorize(caller, Permission.TASKS_READ, caller.user_id)
            my_lists = select(TaskListMember.task_list_id).where(
                TaskListMember.user_id == caller.user_id
            )
            fellows = select(TaskListMember.user_id).where(
                TaskListMember.task_list_id.in_(my_lists)
            )
            query = query.where(User.id.in_(fellows))
        if not wanted:
            return {}
        async with self._db.read() as session:
            rows = (await session.execute(query)).all()
        return {row.id: row for row in rows}

    @retries_conflicts
    async def update_user(self, caller: Principal, user_id: int, changes: UserChanges) -> User:
        """Change the fields in `changes.paths`; demotion and deactivation revoke tokens.

        A service account's `display_name` and `permissions` may change too (only a service
        account's), the permissions never to more than the caller holds itself.
        """
        email, chosen = _check_changes(changes, id_violation("user.id", user_id))
        granted = None
        if chosen is not None:
            authorize_granting(caller, chosen)
            granted = stored_permissions(chosen)
        if "is_admin" in changes.paths and changes.is_admin:
            authorize_granting(caller, ADMIN_ROLE)  # an administrator holds every permission
        if user_id == caller.user_id and (
            ("is_active" in changes.paths and not changes.is_active)
            or ("is_admin" in changes.paths and not changes.is_admin)
        ):
            raise FailedPrecondition(
                "SELF_LOCKOUT", "administrators cannot deactivate or demote themselves"
            )
        try:
            async with self._db.write() as session:
                may_remove_admin = ("is_admin" in changes.paths and not changes.is_admin) or (
                    "is_active" in changes.paths and not changes.is_active
                )
                admins = await _lock_active_admins(session) if may_remove_admin else []
                user = await session.get(User, user_id, with_for_update=True)
                if user is None:
                    raise _user_not_found()
                if (
                    "is_admin" in changes.paths
                    and changes.is_admin
                    and user.kind != USER_KIND_HUMAN
                ):
                    raise FailedPrecondition(
                        "SERVICE_ACCOUNT_NOT_ADMIN", "a service account cannot be an administrator"
                    )
                if may_remove_admin and user.is_admin and user.is_active:
                    _ensure_another_admin(admins, user_id)
                if changes.paths & SERVICE_ACCOUNT_FIELDS and user.kind != USER_KIND_SERVICE:
                    raise FailedPrecondition(
                        "NOT_A_SERVICE_ACCOUNT",
                        "only a service account has a display_name and permissions",
                    )
                if "display_name" in changes.paths:
                    user.display_name = changes.display_name.strip()
                if email is not None and email != user.email:
                    if await session.scalar(select(User.id).where(User.email == email)):
                        raise email_taken()
                    user.email = email
                revokes = False
                events = []
                if "is_active" in changes.paths and user.is_active != changes.is_active:
                    revokes |= not changes.is_active
                    events.append(
                        audit.USER_ACTIVATED if changes.is_active else audit.USER_DEACTIVATED
                    )
                    user.is_active = changes.is_active
                if "is_admin" in changes.paths and user.is_admin != changes.is_admin:
                    revokes |= not changes.is_admin
                    events.append(audit.USER_ROLE_CHANGED)
                    user.is_admin = changes.is_admin
                if granted is not None and user.permissions != granted:
                    # Its permissions are its role: every key and certificate follows at once.
                    events.append(audit.USER_ROLE_CHANGED)
                    user.permissions = granted
                for name in events:
                    self._audit.record(
                        session, name, actor_id=caller.user_id, target_user_id=user_id
                    )
                if revokes:
                    user.token_version += 1
                if changes.paths & {"is_active", "is_admin", "permissions", "email"}:
                    # Every process forgets the cached state, email included (Principal.email).
                    await self._states.announce(session, user_id)
        except IntegrityError:  # a concurrent change took the email first
            raise email_taken() from None
        self._states.forget(user_id)
        return user

    async def create_service_account(
        self, caller: Principal, display_name: str, permissions: Sequence[str]
    ) -> User:
        """A new service account holding `permissions` (names), none the caller lacks itself.

        It gets a placeholder email in the reserved `.invalid` domain (emails stay unique and
        required for every user) and no password: nothing can sign in as it; an admin creates
        API keys for it.
        """
        problems = Violations()
        name = display_name.strip()
        problems.add(*_display_name_violations("display_name", name))
        chosen = _permission_choice(permissions, problems, "permissions")
        problems.raise_if_any()
        authorize_granting(caller, chosen)
        user = User(
            email=f"service-account-{secrets.token_hex(8)}@{SERVICE_ACCOUNT_EMAIL_DOMAIN}",
            password_hash=NO_PASSWORD,
            is_admin=False,
            is_active=True,
            kind=USER_KIND_SERVICE,
            display_name=name,
            permissions=stored_permissions(chosen),
        )
        async with self._db.write() as session:
            session.add(user)
            await session.flush()
            self._audit.record(
                session, audit.USER_REGISTERED, actor_id=caller.user_id, target_user_id=user.id
            )
        return user

    @retries_conflicts
    async def delete_user(self, caller: Principal, user_id: int) -> None:
        """Delete a user and their tasks in one transaction (the foreign key cascades)."""
        require_id("id", user_id)
        if user_id == caller.user_id:
            raise FailedPrecondition("SELF_LOCKOUT", "administrators cannot delete themselves")
        async with self._db.write() as session:
            admins = await _lock_active_admins(session)
            user = await session.get(User, user_id, with_for_update=True)
            if user is None:
                raise _user_not_found()
            if user.is_admin and user.is_active:
                _ensure_another_admin(admins, user_id)
            await hand_over_lists(session, user_id)
            await session.execute(delete(User).where(User.id == user_id))
            self._audit.record(
                session, audit.USER_DELETED, actor_id=caller.user_id, target_user_id=user_id
            )
            await self._states.announce(session, user_id)
        self._states.forget(user_id)

    async def _get(self, user_id: int) -> UserRecord:
        async with self._db.reads() as reader:
            user = await reader.first(_USER_BY_ID, {"user_id": user_id})
        if user is None:
            raise _user_not_found()
        return user


def _display_name_violations(field: str, name: str) -> tuple[FieldViolation | None, ...]:
    """What is wrong with a service account's (trimmed) display name, if anything."""
    return (
        nul_violation(field, name),
        FieldViolation(field, f"must be 1 to {SERVICE_ACCOUNT_NAME_MAX_LENGTH} characters")
        if not 0 < len(name) <= SERVICE_ACCOUNT_NAME_MAX_LENGTH
        else None,
    )


def _permission_choice(
    names: Sequence[str], problems: Violations, field: str
) -> frozenset[Permission]:
    """The permissions a service account is to hold: at least one, each known, none twice."""
    chosen = check_permission_names(names, problems, field)
    if not names:
        problems.add(FieldViolation(field, "name at least one permission"))
    return chosen


def _check_changes(
    changes: UserChanges, *also: FieldViolation | None
) -> tuple[str | None, frozenset[Permission] | None]:
    """Validate the update mask and the values it names.

    Returns the normalised new email and the new permissions, each None when not named. Every
    bad field is reported at once, those in `also` included.
    """
    problems = Violations()
    problems.add(
        *also,
        *mask_violations(changes.paths, UPDATABLE_USER_FIELDS, READ_ONLY_USER_FIELDS, "User"),
    )
    email = None
    if "email" in changes.paths:
        email, bad_email = email_violation("user.email", changes.email)
        problems.add(bad_email)
    if "display_name" in changes.paths:
        problems.add(*_display_name_violations("user.display_name", changes.display_name.strip()))
    chosen = None
    if "permissions" in changes.paths:
        chosen = _permission_choice(changes.permissions, problems, "user.permissions")
    problems.raise_if_any()
    return email, chosen


async def _lock_active_admins(session: AsyncSession) -> list[int]:
    """Lock the active admins' rows, in id order, before any change that may remove one.

    Taking these locks first and in one order means two admins demoting each other at once
    queue (PostgreSQL) instead of deadlocking, and the second sees the first's change. SQLite
    serialises writers anyway (BEGIN IMMEDIATE).
    """
    query = select(User.id).where(User.is_admin, User.is_active).order_by(User.id)
    return list((await session.scalars(query.with_for_update())).all())


def _ensure_another_admin(active_admins: list[int], user_id: int) -> None:
    """Keep at least one active admin besides `user_id`."""
    if not any(admin_id != user_id for admin_id in active_admins):
        raise FailedPrecondition("LAST_ADMIN", "the last active administrator cannot be removed")


def _user_not_found() -> NotFound:
    return NotFound("USER_NOT_FOUND", "no user has this id")


def email_taken() -> AlreadyExists:
    """The error for an email another user already has."""
    return AlreadyExists("EMAIL_TAKEN", "a user with this email already exists")


async def ensure_admin(
    database: Database,
    hasher: PasswordHasher,
    states: AuthStateStore,
    email: str,
    read_password: Callable[[], str],
) -> tuple[User, bool]:
    """Make `email` an active admin: promote an existing user, or create one.

    `read_password` is called only when the user has to be created. Returns the user and whether
    it was created. This is how the first admin comes to exist (`taskservice create-admin`).
    """
    normalized, bad_email = email_violation("email", email)
    raise_if(bad_email)
    async with database.write() as session:
        user = await session.scalar(select(User).where(User.email == normalized))
        if user is not None:
            user.is_admin = True
            user.is_active = True
            await states.announce(session, user.id)
            return user, False
    password = read_password()
    raise_if(new_password_violation("password", password))
    user = User(
        email=normalized, password_hash=await hasher.hash(password), is_admin=True, is_active=True
    )
    try:
        async with database.write() as session:
            session.add(user)
    except IntegrityError:
        raise email_taken() from None
    return user, True
