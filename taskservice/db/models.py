"""Typed SQLAlchemy models: the schema Alembic migrates and `alembic check` compares against."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    text,
)
from sqlalchemy.engine.default import DefaultExecutionContext
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from taskservice.db.types import BigIntId, LabelList, UTCDateTime, utcnow

#: Stable constraint names, so migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Longest email address we store (RFC 5321 path limit less the angle brackets).
EMAIL_MAX_LENGTH = 254
#: Longest task title, after trimming.
TITLE_MAX_LENGTH = 200
#: Longest task description.
DESCRIPTION_MAX_LENGTH = 10_000
#: Most labels on one task, counted after merging spellings that differ only in case.
LABELS_MAX_COUNT = 20
#: Longest label, after trimming.
LABEL_MAX_LENGTH = 50
#: Longest idempotency key accepted on CreateTask and CreateTaskList.
REQUEST_ID_MAX_LENGTH = 128
#: Room for a label's case-folded key: folding can lengthen a label ("ß" -> "ss").
LABEL_KEY_MAX_LENGTH = 4 * LABEL_MAX_LENGTH


def _same_as_create_time(context: DefaultExecutionContext) -> datetime:
    """A new row was last updated when it was created: the very same instant."""
    return context.get_current_parameters()["create_time"]


class Base(DeclarativeBase):
    """Declarative base carrying the naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class TaskStatus(enum.StrEnum):
    """Where a task stands; stored as its lower-case name."""

    TODO = "todo"
    IN_PROGRESS = "in_progress"
    DONE = "done"


class TaskPriority(enum.IntEnum):
    """How urgent a task is; stored as this number, 0 for none."""

    UNSPECIFIED = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    URGENT = 4


#: `User.kind` of a person, and of a service account.
USER_KIND_HUMAN = "human"
USER_KIND_SERVICE = "service"
#: Longest display name of a service account.
SERVICE_ACCOUNT_NAME_MAX_LENGTH = 100
#: Room for every permission's name, space-separated (API keys' and service accounts' lists),
#: with margin for names to come.
API_KEY_PERMISSIONS_MAX_LENGTH = 255


class User(Base):
    """A person who signs in, or a service account (a machine caller with API keys only).

    Emails are stored normalised (lower-case), so uniqueness is case-insensitive, and a check
    constraint keeps any writer from storing another spelling.
    """

    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint("email = lower(email)", name="email_lower_case"),
        # Never reuse a deleted user's id (SQLite would): tokens name their user by id.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    email: Mapped[str] = mapped_column(String(EMAIL_MAX_LENGTH), unique=True)
    password_hash: Mapped[str] = mapped_column(String(100))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    # Credential generation, carried in each access token as `ver`: bumped when the password
    # changes, the user is deactivated or loses admin rights, so older tokens stop working.
    token_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: `human`, or `service` for a service account (no password; API keys only).
    kind: Mapped[str] = mapped_column(String(16), default=USER_KIND_HUMAN, server_default="human")
    #: A service account's name; NULL for people.
    display_name: Mapped[str | None] = mapped_column(String(SERVICE_ACCOUNT_NAME_MAX_LENGTH))
    #: A service account's permissions, space-separated names, fixed at creation; NULL for people.
    permissions: Mapped[str | None] = mapped_column(String(API_KEY_PERMISSIONS_MAX_LENGTH))
    create_time: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    update_time: Mapped[datetime] = mapped_column(
        UTCDateTime, default=_same_as_create_time, onupdate=utcnow
    )

    tasks: Mapped[list[Task]] = relationship(
        back_populates="owner",
        cascade="all, delete-orphan",
        passive_deletes=True,
        foreign_keys="Task.owner_id",
    )


class TaskListRole(enum.IntEnum):
    """A member's role on a task list; stored as this number (the proto's TaskListRole)."""

    VIEWER = 1
    EDITOR = 2
    OWNER = 3


#: Longest task list title, after trimming.
TASK_LIST_TITLE_MAX_LENGTH = 100
#: Longest task list description.
TASK_LIST_DESCRIPTION_MAX_LENGTH = 2_000


class TaskList(Base):
    """A list of tasks its members share; every task is in exactly one.

    `owner_id` is the list's primary owner (its longest-standing OWNER member), copied onto each
    of its tasks' `owner_id` so that owner-scoped reads keep their indexes. Every user has one
    personal list (`personal`), at most one: a partial unique index holds that. Deleted with its
    primary owner (the services hand a shared list to the next owner first).
    """

    __tablename__ = "task_lists"
    __table_args__ = (
        Index("ix_task_lists_owner_id", "owner_id"),
        Index("ix_task_lists_purge_time", "purge_time"),
        Index(
            "ux_task_lists_personal_owner_id",
            "owner_id",
            unique=True,
            postgresql_where=text("personal"),
            sqlite_where=text("personal"),
        ),
        # CreateTaskList's idempotency keys (AIP-155), per creator; NULLs never collide.
        Index("ux_task_lists_creator_id_request_id", "creator_id", "request_id", unique=True),
        # Never reuse a purged list's id (SQLite would): clients and tasks name lists by id.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    owner_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("users.id", ondelete="CASCADE"))
    creator_id: Mapped[int] = mapped_column(BigIntId)
    request_id: Mapped[str | None] = mapped_column(String(REQUEST_ID_MAX_LENGTH))
    title: Mapped[str] = mapped_column(String(TASK_LIST_TITLE_MAX_LENGTH))
    description: Mapped[str] = mapped_column(Text, default="")
    personal: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    version: Mapped[int] = mapped_column(Integer, default=1)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    update_time: Mapped[datetime] = mapped_column(
        UTCDateTime, default=_same_as_create_time, onupdate=utcnow
    )
    delete_time: Mapped[datetime | None] = mapped_column(UTCDateTime)
    purge_time: Mapped[datetime | None] = mapped_column(UTCDateTime)


class TaskListMember(Base):
    """One user's role on one list. Removed with the list or the user.

    The (user_id, task_list_id) index is the one every access check seeks: a read of tasks joins
    the caller's memberships in the same statement.
    """

    __tablename__ = "task_list_members"
    __table_args__ = (
        Index("ix_task_list_members_user_id_task_list_id", "user_id", "task_list_id"),
    )

    task_list_id: Mapped[int] = mapped_column(
        BigIntId, ForeignKey("task_lists.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(
        BigIntId, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    role: Mapped[int] = mapped_column(SmallInteger)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Task(Base):
    """A piece of work owned by one user; deleted with its owner.

    Lists are ordered newest first by id (ids only grow), and filtered by owner and status, so the
    indexes lead with those columns and end with the id that keyset pagination seeks on. The other
    orderings (due time, priority, update time) have an index each by owner and by list, ending
    with the id their keyset pages break ties on: a member's page is read a page per list.
    """

    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_owner_id_id", "owner_id", "id"),
        Index("ix_tasks_owner_id_status_id", "owner_id", "status", "id"),
        Index("ix_tasks_status_id", "status", "id"),
        # The trash sweep seeks the tasks whose purge time has come.
        Index("ix_tasks_purge_time", "purge_time"),
        # A sibling list in manual order: an owner's top-level tasks, or a parent's subtasks.
        Index("ix_tasks_owner_id_parent_id_position", "owner_id", "parent_id", "position"),
        Index("ix_tasks_owner_id_due_time_id", "owner_id", "due_time", "id"),
        Index("ix_tasks_owner_id_priority_id", "owner_id", "priority", "id"),
        Index("ix_tasks_owner_id_update_time_id", "owner_id", "update_time", "id"),
        # A list's tasks, newest first or in another order, and its sibling lists in manual order.
        Index("ix_tasks_task_list_id_id", "task_list_id", "id"),
        Index("ix_tasks_task_list_id_due_time_id", "task_list_id", "due_time", "id"),
        Index("ix_tasks_task_list_id_priority_id", "task_list_id", "priority", "id"),
        Index("ix_tasks_task_list_id_update_time_id", "task_list_id", "update_time", "id"),
        Index("ix_tasks_task_list_id_parent_id_position", "task_list_id", "parent_id", "position"),
        Index("ix_tasks_assignee_id", "assignee_id"),
        # Never reuse a deleted task's id (SQLite would): etags and clients name tasks by id.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    owner_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("users.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(TITLE_MAX_LENGTH))
    description: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[TaskStatus] = mapped_column(
        Enum(
            TaskStatus,
            name="task_status",
            native_enum=False,
            create_constraint=True,
            length=16,
            values_callable=lambda members: [member.value for member in members],
        ),
        default=TaskStatus.TODO,
    )
    due_time: Mapped[datetime | None] = mapped_column(UTCDateTime)
    version: Mapped[int] = mapped_column(Integer, default=1)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    update_time: Mapped[datetime] = mapped_column(
        UTCDateTime, default=_same_as_create_time, onupdate=utcnow
    )
    priority: Mapped[int] = mapped_column(SmallInteger, default=0, server_default="0")
    # The labels as returned (trimmed, first spelling kept, sorted case-insensitively), so a read
    # needs no join; `task_labels` holds their keys for filtering.
    labels: Mapped[list[str]] = mapped_column(LabelList, default=list, server_default="[]")
    complete_time: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The trash (AIP-164): when the task was moved there, when it goes for good, and which task's
    # DeleteTask moved it (itself, or an ancestor trashed with its subtree): what UndeleteTask of
    # that task restores.
    delete_time: Mapped[datetime | None] = mapped_column(UTCDateTime)
    purge_time: Mapped[datetime | None] = mapped_column(UTCDateTime)
    trash_root_id: Mapped[int | None] = mapped_column(BigIntId)
    # Subtasks: the parent (NULL at the top level; purging a task purges its subtree), and the
    # manual order among siblings (smaller first; see services/task_tree.py).
    parent_id: Mapped[int | None] = mapped_column(
        BigIntId, ForeignKey("tasks.id", ondelete="CASCADE")
    )
    position: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # The list the task is in (purged with it), who created the task (no foreign key: the
    # record outlives its user), and the member it is assigned to (unassigned when that user is
    # deleted; the services unassign members who leave).
    task_list_id: Mapped[int] = mapped_column(
        BigIntId, ForeignKey("task_lists.id", ondelete="CASCADE")
    )
    creator_id: Mapped[int] = mapped_column(BigIntId)
    assignee_id: Mapped[int | None] = mapped_column(
        BigIntId, ForeignKey("users.id", ondelete="SET NULL")
    )

    owner: Mapped[User] = relationship(back_populates="tasks", foreign_keys=[owner_id])


class TaskLabel(Base):
    """One label of a task, by its case-folded key: what `labels:"home"` filters seek on.

    `owner_id` copies the task's (a task never changes owner), so a user's label filter seeks in
    that user's own keys, in id order, instead of in every user's.
    """

    __tablename__ = "task_labels"
    __table_args__ = (
        Index("ix_task_labels_key_task_id", "key", "task_id"),
        Index("ix_task_labels_owner_id_key_task_id", "owner_id", "key", "task_id"),
    )

    task_id: Mapped[int] = mapped_column(
        BigIntId, ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(LABEL_KEY_MAX_LENGTH), primary_key=True)
    owner_id: Mapped[int] = mapped_column(BigIntId)


class TaskCreateRequest(Base):
    """An idempotency key of CreateTask (AIP-155): which task a caller's `request_id` created.

    Keyed by the caller, so two users' keys never collide; removed with the task or the caller.
    """

    __tablename__ = "task_create_requests"

    user_id: Mapped[int] = mapped_column(
        BigIntId, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    request_id: Mapped[str] = mapped_column(String(REQUEST_ID_MAX_LENGTH), primary_key=True)
    task_id: Mapped[int] = mapped_column(
        BigIntId, ForeignKey("tasks.id", ondelete="CASCADE"), index=True
    )
    create_time: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TaskChangeType(enum.IntEnum):
    """What a committed change did to a task; stored as this number in `task_changes.type`."""

    CREATED = 1
    UPDATED = 2
    DELETED = 3  # moved to the trash
    UNDELETED = 4
    PURGED = 5
    # Not changes of a task: a user gained or lost access to a list (`task_changes.owner_id` is
    # the user, `task_list_id` the list, `task_id` 0), written by the `task_list_members`
    # triggers (migration 0014).
    ACCESS_GRANTED = 6
    ACCESS_REVOKED = 7
    # Never stored: how a member's stream sees a task that moved to a list they may not see.
    HIDDEN = 8


class TaskRevision(Base):
    """The store's revision counter: one row, advanced by the `tasks` triggers.

    `revision` counts committed task changes, dense and in commit order (migration 0009: on
    SQLite the triggers bump it, on PostgreSQL `task_changes_assign()` numbers committed changes);
    `compacted_revision` is the newest revision whose history has been deleted: a watch may
    start at it or later.
    """

    __tablename__ = "task_revision"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    revision: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    compacted_revision: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class TaskChange(Base):
    """One committed change of one task, written by the `tasks` triggers (migration 0009).

    `before` and `after` are the row as JSON text (NULL for a created task's before and a purged
    one's after): what WatchTasks matches filters against and sends. Rows older than
    WATCH_RETENTION_HOURS are deleted by the compaction job. `seq` only orders the rows as they
    were written; `revision` is NULL on PostgreSQL until the change feed numbers the committed
    change, and only numbered changes are ever read.
    """

    __tablename__ = "task_changes"
    __table_args__ = (
        Index("ix_task_changes_create_time", "create_time"),
        Index("ux_task_changes_revision", "revision", unique=True),
        Index(
            "ix_task_changes_unnumbered",
            "seq",
            postgresql_where=text("revision IS NULL"),
            sqlite_where=text("revision IS NULL"),
        ),
    )

    seq: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    revision: Mapped[int | None] = mapped_column(BigInteger)
    task_id: Mapped[int] = mapped_column(BigIntId)
    owner_id: Mapped[int] = mapped_column(BigIntId)
    type: Mapped[int] = mapped_column(SmallInteger)
    #: For an access change, the list; NULL for a change of a task (its row says its list).
    task_list_id: Mapped[int | None] = mapped_column(BigIntId)
    before: Mapped[str | None] = mapped_column(Text)
    after: Mapped[str | None] = mapped_column(Text)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime)


#: Longest display name of an API key.
API_KEY_DISPLAY_NAME_MAX_LENGTH = 100
#: Length of the public, non-secret id part of API keys and refresh tokens (hex characters).
CREDENTIAL_LOOKUP_LENGTH = 16
#: Length of a stored keyed hash (HMAC-SHA256, hex).
CREDENTIAL_HASH_LENGTH = 64


class ApiKey(Base):
    """A long-lived credential a service uses to act as its user (`Bearer tsk_...`).

    Only a keyed hash of the secret is stored; `lookup` is the public id part of the key, which
    finds the row without comparing secrets in the database. Deleted with its user.
    """

    __tablename__ = "api_keys"
    __table_args__ = (
        Index("ix_api_keys_user_id_id", "user_id", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    user_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("users.id", ondelete="CASCADE"))
    display_name: Mapped[str] = mapped_column(String(API_KEY_DISPLAY_NAME_MAX_LENGTH))
    lookup: Mapped[str] = mapped_column(String(CREDENTIAL_LOOKUP_LENGTH), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(CREDENTIAL_HASH_LENGTH))
    create_time: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expire_time: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_use_time: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The permissions the key was limited to at creation, space-separated names (`tasks.read`);
    #: NULL: not limited (its user's role). Never changed afterwards: no key is widened.
    permissions: Mapped[str | None] = mapped_column(String(API_KEY_PERMISSIONS_MAX_LENGTH))


class RefreshToken(Base):
    """One refresh token of a family (a login's chain of rotations).

    A token is retired (`use_time`) when it is exchanged for the next one of its family; a family
    is revoked (`revoke_time` on every row) by Logout or by presenting a retired token again.
    `token_version` is the user's credential generation at login: a password change,
    deactivation or demotion bumps it, which ends every family issued before.
    """

    __tablename__ = "refresh_tokens"
    __table_args__ = (
        Index("ix_refresh_tokens_family", "family"),
        Index("ix_refresh_tokens_user_id", "user_id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    user_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("users.id", ondelete="CASCADE"))
    family: Mapped[str] = mapped_column(String(CREDENTIAL_LOOKUP_LENGTH))
    lookup: Mapped[str] = mapped_column(String(CREDENTIAL_LOOKUP_LENGTH), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(CREDENTIAL_HASH_LENGTH))
    token_version: Mapped[int] = mapped_column(Integer)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expire_time: Mapped[datetime] = mapped_column(UTCDateTime)
    use_time: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoke_time: Mapped[datetime | None] = mapped_column(UTCDateTime)


#: Longest throttle key ("account:" or "address:" and a digest or an address).
THROTTLE_KEY_MAX_LENGTH = 100


class ThrottleCounter(Base):
    """Attempts counted against one key (an account, a client address) in a fixed window.

    Shared by every replica through the database; updated by one atomic upsert per attempt.
    """

    __tablename__ = "throttle_counters"

    key: Mapped[str] = mapped_column(String(THROTTLE_KEY_MAX_LENGTH), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)
    count: Mapped[int] = mapped_column(Integer)


#: Longest audit event name.
AUDIT_EVENT_MAX_LENGTH = 40
#: Longest audit outcome.
AUDIT_OUTCOME_MAX_LENGTH = 20
#: Longest method path an audit event names (`/taskservice.v1.UserService/DeleteUser`).
AUDIT_METHOD_MAX_LENGTH = 200
#: Longest permission name an audit event names (`tasks.write_all`).
AUDIT_PERMISSION_MAX_LENGTH = 40


class AuditEvent(Base):
    """One security-relevant event: who did what to whom, how it ended, and in which request.

    No foreign keys: the trail outlives the users it names. Read newest first by id.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_actor_id_id", "actor_id", "id"),
        Index("ix_audit_events_target_user_id_id", "target_user_id", "id"),
        Index("ix_audit_events_event_id", "event", "id"),
        Index("ix_audit_events_create_time", "create_time"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    event: Mapped[str] = mapped_column(String(AUDIT_EVENT_MAX_LENGTH))
    actor_id: Mapped[int | None] = mapped_column(BigInteger)
    target_user_id: Mapped[int | None] = mapped_column(BigInteger)
    outcome: Mapped[str] = mapped_column(String(AUDIT_OUTCOME_MAX_LENGTH))
    request_id: Mapped[str | None] = mapped_column(String(REQUEST_ID_MAX_LENGTH))
    create_time: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: For a refused call: the method and the permission it lacked; NULL for other events.
    method: Mapped[str | None] = mapped_column(String(AUDIT_METHOD_MAX_LENGTH))
    permission: Mapped[str | None] = mapped_column(String(AUDIT_PERMISSION_MAX_LENGTH))
