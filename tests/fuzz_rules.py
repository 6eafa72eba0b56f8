"""The fuzz's vocabulary: rows as the model knows them, expectations, and the documented limits.

Limits and rules are restated from the proto comments (not imported from the server), so that the
fuzz checks the server against its contract rather than against itself. Where a rule is defined
by a library rather than a number (what a valid email is), the model asks the same function the
server uses.
"""

from __future__ import annotations

import importlib
import pkgutil
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

import taskservice.v1
from taskservice.services.validation import normalize_email
from taskservice.v1 import permissions_pb2, user_pb2

OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED
NOT_FOUND = grpc.StatusCode.NOT_FOUND
EXISTS = grpc.StatusCode.ALREADY_EXISTS
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
ABORTED = grpc.StatusCode.ABORTED
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
OUT_OF_RANGE = grpc.StatusCode.OUT_OF_RANGE

# Limits, as the proto comments state them.
TITLE_MAX = 200
DESCRIPTION_MAX = 10_000
REQUEST_ID_MAX = 128
EMAIL_MAX = 254
PASSWORD_MIN_CHARS = 8
PASSWORD_MAX_BYTES = 72
LABEL_MAX = 50
LABELS_MAX = 20
MAX_DEPTH = 5
BATCH_MAX = 100
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
#: "pages also end before about 1 MiB of tasks": a response may pass it by one task at most.
MAX_PAGE_BYTES = 1024 * 1024
FILTER_MAX_LENGTH = 2000
ORDER_FIELDS = ("create_time", "update_time", "due_time", "priority", "title", "position")
TASK_FIELDS = frozenset({"title", "description", "status", "due_time", "priority", "labels"})
#: PatchTask may also name `parent_id` (Task.parent_id's comment; PatchTask's own omits it).
PATCH_FIELDS = TASK_FIELDS | {"parent_id", "assignee_id"}
#: TaskList's limits (task_list.proto).
LIST_TITLE_MAX = 100
LIST_DESCRIPTION_MAX = 2000
#: The title a personal list starts with.
PERSONAL_LIST_TITLE = "My Tasks"
USER_FIELDS = frozenset({"email", "is_active", "is_admin", "display_name", "permissions"})
#: Of those, the fields only a service account has (UpdateUser on a person: FAILED_PRECONDITION).
SERVICE_ACCOUNT_FIELDS = frozenset({"display_name", "permissions"})
#: Permission enum numbers a key or a service account may be given: every value but
#: PERMISSION_UNSPECIFIED and PERMISSION_PUBLIC (permissions.proto); anything else is refused.
GRANTABLE_PERMISSIONS = frozenset(
    value.number
    for value in permissions_pb2.Permission.DESCRIPTOR.values
    if value.name not in {"PERMISSION_UNSPECIFIED", "PERMISSION_PUBLIC"}
)
_P = permissions_pb2
#: What each role holds (security.md's table), as Permission numbers.
USER_ROLE = frozenset(
    {
        _P.PERMISSION_TASKS_READ,
        _P.PERMISSION_TASKS_WRITE,
        _P.PERMISSION_USERS_READ,
        _P.PERMISSION_ACCOUNT_MANAGE,
        _P.PERMISSION_API_KEYS_MANAGE,
    }
)
ADMIN_ROLE = GRANTABLE_PERMISSIONS
#: Every owner's tasks include one's own.
IMPLIED = {
    _P.PERMISSION_TASKS_READ_ALL: _P.PERMISSION_TASKS_READ,
    _P.PERMISSION_TASKS_WRITE_ALL: _P.PERMISSION_TASKS_WRITE,
}
#: Permissions only an admin's role holds: a key or service account holding the one its method
#: declares passes that method's admin check.
ADMINS_ALONE = ADMIN_ROLE - USER_ROLE
#: What the same call about every owner's resources needs (security.md: `tasks.read_all` is "the
#: same reads on every user's tasks", `tasks.write_all` "the same writes ... creating tasks for
#: another owner"; another user's keys are `users.manage`'s).
EVERY_OWNER = {
    _P.PERMISSION_TASKS_READ: _P.PERMISSION_TASKS_READ_ALL,
    _P.PERMISSION_TASKS_WRITE: _P.PERMISSION_TASKS_WRITE_ALL,
    _P.PERMISSION_API_KEYS_MANAGE: _P.PERMISSION_USERS_MANAGE,
}
#: Methods a key may never call, whatever it holds (they need a login: API_KEY_NOT_ALLOWED).
NEEDS_A_LOGIN = frozenset(
    f"/taskservice.v1.ApiKeyService/{name}"
    for name in ("CreateApiKey", "ListApiKeys", "DeleteApiKey")
)


def declared_permissions() -> dict[str, int]:
    """Each RPC's `(taskservice.v1.requires)` option, read from the generated descriptors."""
    declared = {}
    for info in pkgutil.iter_modules(taskservice.v1.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"taskservice.v1.{info.name}")
            for service in module.DESCRIPTOR.services_by_name.values():
                for method in service.methods:
                    number = method.GetOptions().Extensions[_P.requires]
                    declared[f"/{service.full_name}/{method.name}"] = number
    return declared


def holds(role_or_granted: Iterable[int], scope: Iterable[int]) -> frozenset[int]:
    """What a credential may do: its user's role (or a service account's permissions).

    Cut down to its key's `scope` when that is not empty; each side is widened by what it
    implies first.
    """

    def widened(numbers: Iterable[int]) -> frozenset[int]:
        given = frozenset(numbers)
        return given | {IMPLIED[n] for n in given if n in IMPLIED}

    held = widened(role_or_granted)
    scope = tuple(scope)
    return held & widened(scope) if scope else held


USER_KIND_HUMAN = user_pb2.USER_KIND_HUMAN
USER_KIND_SERVICE = user_pb2.USER_KIND_SERVICE
#: A service account's display name: 1 to 100 characters after trimming, no NUL.
SERVICE_ACCOUNT_NAME_MAX = 100
STATUSES = frozenset({1, 2, 3})  # TODO, IN_PROGRESS, DONE; 0 is UNSPECIFIED
PRIORITIES = frozenset({0, 1, 2, 3, 4})  # 0: no priority
TODO, DONE = 1, 3
#: The range a google.protobuf.Timestamp may hold (0001-01-01 to 9999-12-31, UTC).
TIMESTAMP_MIN_SECONDS = -62_135_596_800
TIMESTAMP_MAX_SECONDS = 253_402_300_799

Pair = tuple[int, int]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class UserRow:
    """A user as the last OK answer about it left it, with the password the model set."""

    id: int
    email: str
    is_active: bool
    is_admin: bool
    #: None for a service account: it has no password, and no sign-in path accepts one.
    password: str | None
    create_time: Pair
    #: Credential generation: bumped on every change that revokes the user's tokens.
    version: int = 0
    #: User.kind: USER_KIND_HUMAN (1) or USER_KIND_SERVICE (2).
    kind: int = 1
    #: A service account's name and permissions (enum numbers, in the enum's order); people: none.
    display_name: str = ""
    permissions: tuple[int, ...] = ()
    #: As a caller: sees every list without acting in it as an admin would (a key holding
    #: `tasks.read_all` calling a method that writes): told what it lacks, never NOT_FOUND.
    sees_every_list: bool = False


@dataclass
class TaskRow:
    """A task as the last OK answer about it (or a checked side effect) left it."""

    id: int
    owner_id: int
    title: str
    description: str
    status: int
    due_time: Pair | None
    priority: int
    labels: list[str]
    parent_id: int
    etag: str
    position: str
    create_time: Pair
    update_time: Pair
    complete_time: Pair | None
    delete_time: Pair | None = None
    purge_time: Pair | None = None
    #: The task whose DeleteTask trashed this one (itself, or an ancestor), while in the trash.
    trash_root: int | None = None
    etags: list[str] = field(default_factory=list)
    #: Its list (learned from the answer that created it), its creator, its assignee (0: none).
    task_list_id: int = 0
    creator_id: int = 0
    assignee_id: int = 0
    #: Every list it has been in (WatchTasks may deliver its changes to their members).
    past_lists: set[int] = field(default_factory=set)
    #: Every owner it has had (a list handed on, or a move, changes it).
    past_owners: set[int] = field(default_factory=set)

    @property
    def deleted(self) -> bool:
        """In the trash."""
        return self.delete_time is not None

    def wire(self) -> tuple[object, ...]:
        """Every field a Task message carries, comparable with `wire_task`."""
        return (
            self.id,
            self.owner_id,
            self.title,
            self.description,
            self.status,
            self.due_time,
            self.priority,
            tuple(self.labels),
            self.parent_id,
            self.etag,
            self.position,
            self.create_time,
            self.update_time,
            self.complete_time,
            self.delete_time,
            self.purge_time,
            self.task_list_id,
            self.creator_id,
            self.assignee_id,
        )


def wire_task(message: Message) -> tuple[object, ...]:
    """A Task message's fields in `TaskRow.wire` order (unset times as None)."""
    m = message

    def time(name: str) -> Pair | None:
        return pair(getattr(m, name)) if m.HasField(name) else None

    return (
        m.id,  # type: ignore[attr-defined]
        m.owner_id,  # type: ignore[attr-defined]
        m.title,  # type: ignore[attr-defined]
        m.description,  # type: ignore[attr-defined]
        m.status,  # type: ignore[attr-defined]
        time("due_time"),
        m.priority,  # type: ignore[attr-defined]
        tuple(m.labels),  # type: ignore[attr-defined]
        m.parent_id,  # type: ignore[attr-defined]
        m.etag,  # type: ignore[attr-defined]
        m.position,  # type: ignore[attr-defined]
        time("create_time"),
        time("update_time"),
        time("complete_time"),
        time("delete_time"),
        time("purge_time"),
        m.task_list_id,  # type: ignore[attr-defined]
        m.creator_id,  # type: ignore[attr-defined]
        m.assignee_id,  # type: ignore[attr-defined]
    )


TASK_WIRE_FIELDS = (
    "id",
    "owner_id",
    "title",
    "description",
    "status",
    "due_time",
    "priority",
    "labels",
    "parent_id",
    "etag",
    "position",
    "create_time",
    "update_time",
    "complete_time",
    "delete_time",
    "purge_time",
    "task_list_id",
    "creator_id",
    "assignee_id",
)


@dataclass(frozen=True)
class Credential:
    """What a call sends as `authorization`: a real token, nothing, or something bad."""

    name: str
    metadata: tuple[tuple[str, str], ...] = ()
    #: The user a real token was issued for, and the generation it was issued at.
    user_id: int | None = None
    version: int = 0
    #: For an API key: its id (it works while the key exists and its user is active).
    key_id: int | None = None

    @property
    def anonymous(self) -> bool:
        """No authorization entry at all."""
        return not self.metadata


@dataclass(frozen=True)
class IssuedPage:
    """A next_page_token the server handed out, and what it is valid for."""

    token: str
    scope: tuple[object, ...]
    #: Where the next page starts: the sort key of the last row of the page it came with.
    after: object


@dataclass(frozen=True)
class Resync:
    """Tasks an OK answer changed as a side effect, to read back from the database.

    The fields in `absorb` may have changed (the model learns them); every other field must be
    as the model has it, and those in `expect` must have the values given. `then` runs after,
    to check what the new values must satisfy together.
    """

    task_ids: tuple[int, ...]
    absorb: frozenset[str]
    expect: dict[str, object] = field(default_factory=dict)
    then: Callable[[], None] | None = None


@dataclass
class Expect:
    """The answers a request may get, and a check for an OK answer.

    INVALID_ARGUMENT must name every field in `bad_fields` (API conventions: one BadRequest
    listing every bad field) and may also name those in `may_name`, but no other.
    """

    codes: frozenset[grpc.StatusCode]
    reasons: list[str]
    bad_fields: frozenset[str] = frozenset()
    may_name: frozenset[str] = frozenset()
    on_ok: Callable[[Message], Resync | None] | None = None
    #: NOT_FOUND would be for a task (or list) that is missing or the caller may not see: the two
    #: must read alike ("task" or "list"; None when NOT_FOUND may be for something else too).
    hidden: str | None = None
    #: Text a NOT_FOUND message must hold (BatchGetTasks names the first id it could not return).
    not_found_names: str | None = None


class ContractViolation(AssertionError):
    """An OK answer that disagrees with the request, the model or the proto comments."""


class Conditions:
    """Collects the documented error conditions that apply to one request.

    Checks a server makes only after reading rows (a parent of another owner) are `late`: they
    are reported only when the request has no other bad field, so they are required only then.
    """

    def __init__(self) -> None:
        self.codes: set[grpc.StatusCode] = set()
        self.fields: set[str] = set()
        self.maybe: set[str] = set()
        self.reasons: list[str] = []
        self.hidden: set[str] = set()
        self.not_found_names: str | None = None
        #: Codes that may answer although the contract does not require them (OK stays allowed).
        self.perhaps_codes: set[grpc.StatusCode] = set()

    def perhaps(self, code: grpc.StatusCode, reason: str, bad_field: str | None = None) -> None:
        """An answer the contract leaves open: `code` (naming `bad_field`) or what else applies."""
        self.perhaps_codes.add(code)
        self.reasons.append(f"(perhaps {code.name}: {reason})")
        if bad_field is not None:
            self.maybe.add(bad_field)

    def add(
        self,
        code: grpc.StatusCode,
        reason: str,
        bad_field: str | None = None,
        *,
        late: bool = False,
    ) -> None:
        """One condition holds: `code` is an acceptable answer."""
        if late and code == INVALID and INVALID in self.codes:
            self.may_name(bad_field or "", reason)
            return
        self.codes.add(code)
        self.reasons.append(f"{code.name}: {reason}")
        if bad_field is not None:
            self.fields.add(bad_field)

    def may_name(self, bad_field: str, reason: str) -> None:
        """A field the server may or may not find bad, as it checks another bad field first."""
        self.maybe.add(bad_field)
        self.reasons.append(f"(maybe {bad_field}: {reason})")

    def task_not_found(self, what: str = "task") -> None:
        """NOT_FOUND for a task that is missing or the caller may not see, told apart by nothing."""
        self.add(NOT_FOUND, f"no such {what}, or another user's")
        self.hidden.add("task")

    def list_not_found(self, list_id: int) -> None:
        """NOT_FOUND for a list that is missing or the caller may not see, told apart by nothing."""
        self.add(NOT_FOUND, f"no task list {list_id} the caller may see")
        self.hidden.add("list")

    def expect(self, on_ok: Callable[[Message], Resync | None]) -> Expect:
        """OK (checked by `on_ok`) when nothing applies, else one of the collected codes."""
        if not self.codes:
            return Expect(
                frozenset({OK} | self.perhaps_codes),
                ["OK: no documented error applies", *self.reasons],
                may_name=frozenset(self.maybe),
                on_ok=on_ok,
            )
        return Expect(
            frozenset(self.codes | self.perhaps_codes),
            self.reasons,
            frozenset(self.fields),
            frozenset(self.maybe),
            hidden=next(iter(self.hidden)) if len(self.hidden) == 1 else None,
            not_found_names=self.not_found_names,
        )


def only(code: grpc.StatusCode, reason: str) -> Expect:
    """Exactly one answer is right (the credentials or the size decide before anything else)."""
    return Expect(frozenset({code}), [f"{code.name}: {reason}"])


def check(condition: object, message: str) -> None:
    """Fail the run with `message` when an OK answer breaks the contract."""
    if not condition:
        raise ContractViolation(message)


def pair(value: Timestamp) -> Pair:
    """A Timestamp as comparable (seconds, nanos)."""
    return (value.seconds, value.nanos)


def to_datetime(value: Pair) -> datetime:
    """A (seconds, nanos) pair as an aware UTC datetime (microseconds kept)."""
    return _EPOCH + timedelta(seconds=value[0], microseconds=value[1] // 1000)


def timestamp_problem(value: Timestamp) -> str | None:
    """Why a Timestamp is not a valid google.protobuf.Timestamp, or None."""
    if not TIMESTAMP_MIN_SECONDS <= value.seconds <= TIMESTAMP_MAX_SECONDS:
        return f"seconds {value.seconds} outside the Timestamp range"
    if not 0 <= value.nanos <= 999_999_999:
        return f"nanos {value.nanos} outside 0..999999999"
    return None


def stored_time(value: Timestamp) -> Pair:
    """A valid Timestamp as stored: the server keeps microseconds (an undocumented precision)."""
    return (value.seconds, value.nanos - value.nanos % 1000)


def email_or_none(raw: str) -> str | None:
    """The normalised address, or None when the server's own rule finds it invalid."""
    try:
        return normalize_email(raw)
    except ValueError:
        return None


def password_problem(password: str) -> str | None:
    """Why a new password is refused (proto: 8 characters to 72 UTF-8 bytes; no NUL)."""
    if "\x00" in password:
        return "contains NUL"
    if len(password) < PASSWORD_MIN_CHARS:
        return "shorter than 8 characters"
    if len(password.encode()) > PASSWORD_MAX_BYTES:
        return "longer than 72 bytes"
    return None


def effective_page_size(requested: int) -> int:
    """0 means 50; above 1000 means 1000."""
    return DEFAULT_PAGE_SIZE if requested == 0 else min(requested, MAX_PAGE_SIZE)


def label_problems(
    labels: Iterable[str], field_name: str
) -> tuple[list[str], list[tuple[str, str]]]:
    """Task.labels' comment: the labels as stored, and (field, why) for each one refused.

    Each is 1 to 50 characters after trimming with no control character (C0, DEL or C1); labels
    equal after Unicode case folding are one, the first spelling kept; at most 20 after merging;
    returned sorted by their case folding.
    """
    kept: dict[str, str] = {}
    problems: list[tuple[str, str]] = []
    for index, raw in enumerate(labels):
        label = raw.strip()
        if not 1 <= len(label) <= LABEL_MAX:
            problems.append((f"{field_name}[{index}]", f"{len(label)} characters after trimming"))
        elif any(unicodedata.category(c) == "Cc" for c in label):
            problems.append((f"{field_name}[{index}]", "a control character"))
        else:
            kept.setdefault(label.casefold(), label)
    if len(kept) > LABELS_MAX:
        problems.append((field_name, f"{len(kept)} labels after merging"))
    return [kept[key] for key in sorted(kept)], problems


def permission_problems(
    numbers: Iterable[int], conditions: Conditions, field: str = "permissions"
) -> tuple[int, ...]:
    """The permissions a request's list names, in the enum's order; each bad entry is INVALID.

    An entry is bad when it is not a grantable permission (UNSPECIFIED, PUBLIC or a number the
    enum lacks), or repeats an earlier one; the violation names `permissions[i]`.
    """
    seen: set[int] = set()
    for index, number in enumerate(numbers):
        if number not in GRANTABLE_PERMISSIONS:
            conditions.add(INVALID, f"{number} is not a permission", f"{field}[{index}]")
        elif number in seen:
            conditions.add(INVALID, f"{number} repeated", f"{field}[{index}]")
        else:
            seen.add(number)
    return tuple(sorted(seen))
