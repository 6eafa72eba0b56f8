"""Conversions between protobuf messages and the plain values services use."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from taskservice.calls.authorization import PERMISSION_NUMBERS
from taskservice.db.models import USER_KIND_HUMAN, USER_KIND_SERVICE, TaskPriority, TaskStatus
from taskservice.db.records import TaskRecord, UserRecord
from taskservice.errors import FieldViolation
from taskservice.security.tokens import IssuedToken
from taskservice.services.task_tree import encode_position
from taskservice.services.tasks import TaskValues, etag
from taskservice.v1 import task_pb2, user_pb2

_STATUS_TO_PROTO = {
    TaskStatus.TODO: task_pb2.TASK_STATUS_TODO,
    TaskStatus.IN_PROGRESS: task_pb2.TASK_STATUS_IN_PROGRESS,
    TaskStatus.DONE: task_pb2.TASK_STATUS_DONE,
}
_STATUS_FROM_PROTO = {number: status for status, number in _STATUS_TO_PROTO.items()}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(value: datetime) -> Timestamp:
    """An aware datetime as a protobuf Timestamp."""
    return Timestamp(**time_fields(value))


def time_fields(value: datetime) -> dict[str, int]:
    """An aware datetime as a Timestamp's fields, which message constructors accept as is.

    Computed from the difference to the epoch: Timestamp.FromDatetime goes through a time tuple
    and was the costliest part of rendering a page of tasks (by profile). Passing the fields
    rather than a Timestamp also saves building one only to copy it into its message.
    """
    delta = value - _EPOCH
    return {"seconds": delta.days * 86_400 + delta.seconds, "nanos": delta.microseconds * 1_000}


def user_to_proto(user: UserRecord) -> user_pb2.User:
    """The public view of a user: never the password hash or token version."""
    return user_pb2.User(
        id=user.id,
        email=user.email,
        is_active=user.is_active,
        is_admin=user.is_admin,
        create_time=timestamp(user.create_time),
        update_time=timestamp(user.update_time),
        kind=USER_KINDS.get(user.kind, user_pb2.USER_KIND_UNSPECIFIED),
        display_name=user.display_name or "",
        permissions=permission_numbers(user.permissions),
    )


#: `User.kind` as stored, and as the API spells it.
USER_KINDS = {
    USER_KIND_HUMAN: user_pb2.USER_KIND_HUMAN,
    USER_KIND_SERVICE: user_pb2.USER_KIND_SERVICE,
}


def permission_numbers(stored: str | None) -> list[int]:
    """A stored list of permission names as Permission enum numbers, in the enum's order."""
    names = (stored or "").split()
    return sorted(PERMISSION_NUMBERS[name] for name in names if name in PERMISSION_NUMBERS)


def token_fields(token: IssuedToken) -> dict[str, object]:
    """The access-token fields shared by Register, Login and ChangePassword responses."""
    return {
        "access_token": token.access_token,
        "token_type": token.token_type,
        "expires_in": token.expires_in,
    }


def status_from_proto(number: int, field: str) -> tuple[TaskStatus | None, FieldViolation | None]:
    """A proto TaskStatus as the domain's (None for UNSPECIFIED), or why the number is unknown."""
    if number == task_pb2.TASK_STATUS_UNSPECIFIED:
        return None, None
    if number not in _STATUS_FROM_PROTO:
        return None, FieldViolation(field, f"unknown status {number}")
    return _STATUS_FROM_PROTO[number], None


def priority_from_proto(number: int, field: str) -> tuple[TaskPriority, FieldViolation | None]:
    """A proto TaskPriority as the domain's (the same numbers), or why the number is unknown."""
    try:
        return TaskPriority(number), None
    except ValueError:
        return TaskPriority.UNSPECIFIED, FieldViolation(field, f"unknown priority {number}")


def task_values(task: task_pb2.Task, fields: frozenset[str] | None = None) -> TaskValues:
    """The writable fields of a Task message: all of them, or only those named in `fields`.

    A patch converts only the fields its mask names: a value it does not change (an unknown
    status or priority number, an out-of-range due time) is ignored, not refused. What cannot be
    converted travels in `TaskValues.violations`, for the service to report with every other
    bad field.
    """

    def wanted(name: str) -> bool:
        return fields is None or name in fields

    violations: list[FieldViolation | None] = []
    status, priority = None, TaskPriority.UNSPECIFIED
    if wanted("status"):
        status, bad_status = status_from_proto(task.status, "task.status")
        violations.append(bad_status)
    if wanted("priority"):
        priority, bad_priority = priority_from_proto(task.priority, "task.priority")
        violations.append(bad_priority)
    due_time = None
    if wanted("due_time") and task.HasField("due_time"):
        try:
            due_time = task.due_time.ToDatetime(tzinfo=UTC)
        except (ValueError, OverflowError):
            violations.append(FieldViolation("task.due_time", "not a representable time"))
    return TaskValues(
        title=task.title,
        description=task.description,
        status=status,
        due_time=due_time,
        priority=priority,
        labels=tuple(task.labels),
        parent_id=task.parent_id,
        task_list_id=task.task_list_id,
        assignee_id=task.assignee_id,
        violations=tuple(v for v in violations if v is not None),
    )


def task_to_proto(task: TaskRecord) -> task_pb2.Task:
    """A task as clients see it, with its etag."""
    return task_pb2.Task(**task_fields(task))


def task_fields(task: TaskRecord) -> dict[str, Any]:
    """A task's message fields, times as Timestamp field dicts (no Timestamp built and copied)."""
    fields: dict[str, Any] = {
        "id": task.id,
        "title": task.title,
        "description": task.description,
        "status": _STATUS_TO_PROTO[task.status],
        "owner_id": task.owner_id,
        "create_time": time_fields(task.create_time),
        "update_time": time_fields(task.update_time),
        "etag": etag(task),
        "priority": task.priority,
        "labels": task.labels,
        "parent_id": task.parent_id or 0,
        "position": encode_position(task.position),
        "task_list_id": task.task_list_id,
        "creator_id": task.creator_id,
        "assignee_id": task.assignee_id or 0,
    }
    if task.due_time is not None:
        fields["due_time"] = time_fields(task.due_time)
    if task.complete_time is not None:
        fields["complete_time"] = time_fields(task.complete_time)
    if task.delete_time is not None:
        fields["delete_time"] = time_fields(task.delete_time)
    if task.purge_time is not None:
        fields["purge_time"] = time_fields(task.purge_time)
    return fields
