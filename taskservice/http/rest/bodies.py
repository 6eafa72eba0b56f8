"""The original API's bodies: what its clients send, what they read back, and its 422 shape.

Request bodies are validated by pydantic, as FastAPI validates them, so a malformed body is
answered with the very `{"detail": [{"loc", "msg", "type"}]}` items the original's clients
already render. Only the shape is checked here (types, required fields, the status names):
every business rule (email syntax, password strength, title length) stays in the services,
whose field violations `calls` reports in the same 422 shape. Responses are built through the
response models, which is also how `/openapi.json` describes them: the document cannot drift
from what is sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from taskservice.db.models import TaskStatus
from taskservice.db.records import TaskRecord, UserRecord
from taskservice.security.tokens import IssuedToken

#: `token_type` as the original spells it (OAuth 2's scheme name is case-insensitive).
TOKEN_TYPE = "bearer"  # noqa: S105 - a scheme name, not a secret


class RegisterBody(BaseModel):
    """POST /api/v1/auth/register. `is_active` is accepted and ignored: accounts start active."""

    email: str
    password: str
    is_active: bool | None = True
    is_admin: bool | None = False


class LoginForm(BaseModel):
    """POST /api/v1/auth/login: OAuth 2's password form (RFC 6749 4.3), `username` the email."""

    grant_type: str | None = Field(default=None, pattern="^password$")
    username: str
    password: str
    scope: str = ""
    client_id: str | None = None
    client_secret: str | None = None


class TaskCreateBody(BaseModel):
    """POST /api/v1/tasks/."""

    title: str
    description: str | None = None
    status: TaskStatus | None = TaskStatus.TODO


class TaskUpdateBody(BaseModel):
    """PUT and PATCH /api/v1/tasks/{task_id}: both change only the fields sent, as originally."""

    title: str | None = None
    description: str | None = None
    status: TaskStatus | None = None


class UserUpdateBody(BaseModel):
    """PATCH /api/v1/users/{user_id}: the fields sent (null: unchanged)."""

    email: str | None = None
    is_active: bool | None = None
    is_admin: bool | None = None


class UserOut(BaseModel):
    """A user as the original shows one (never a password hash)."""

    email: str
    is_active: bool
    is_admin: bool
    id: int


class TaskOut(BaseModel):
    """A task with its owner, as the original shows one. `description` is null when empty."""

    title: str
    description: str | None
    status: TaskStatus
    id: int
    owner_id: int
    created_at: datetime
    owner: UserOut


class TokenOut(BaseModel):
    """What register and login return: a bearer access token and who it is for."""

    access_token: str
    token_type: Literal["bearer"] = TOKEN_TYPE
    user_id: int
    is_admin: bool


class MessageOut(BaseModel):
    """What a DELETE returns."""

    message: str


class HealthOut(BaseModel):
    """GET /health, as the original answers it."""

    status: str
    service: str


class HTTPError(BaseModel):
    """Every error but a validation error: `{"detail": "message"}`."""

    detail: str


class ValidationItem(BaseModel):
    """One invalid part of a request: where (`loc`), what is wrong (`msg`), and its kind."""

    model_config = ConfigDict(title="ValidationError")

    loc: list[str | int]
    msg: str
    type: str


class HTTPValidationError(BaseModel):
    """422: every invalid part of the request."""

    detail: list[ValidationItem]


def user_out(user: UserRecord) -> dict[str, Any]:
    """A user's JSON."""
    return UserOut(
        email=user.email, is_active=user.is_active, is_admin=user.is_admin, id=user.id
    ).model_dump(mode="json")


class Owner(Protocol):
    """What a task's JSON shows of its owner: a user record, or the authenticated caller."""

    id: int
    email: str
    is_active: bool
    is_admin: bool


def task_out(task: TaskRecord, owner: Owner) -> dict[str, Any]:
    """A task's JSON, its owner embedded."""
    return TaskOut(
        title=task.title,
        description=task.description or None,
        status=task.status,
        id=task.id,
        owner_id=task.owner_id,
        created_at=_aware(task.create_time),
        owner=UserOut(
            email=owner.email, is_active=owner.is_active, is_admin=owner.is_admin, id=owner.id
        ),
    ).model_dump(mode="json")


def token_out(token: IssuedToken, user: UserRecord) -> dict[str, Any]:
    """Register's and login's JSON."""
    return TokenOut(
        access_token=token.access_token, user_id=user.id, is_admin=user.is_admin
    ).model_dump(mode="json")


def _aware(value: datetime) -> datetime:
    """Times are stored in UTC; a driver that drops the zone (SQLite) gets it back here."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


class RequestInvalid(Exception):
    """A request FastAPI would refuse with 422: `items` are its `detail` list."""

    def __init__(self, items: Sequence[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{item['loc']}: {item['msg']}" for item in items))
        self.items = list(items)


def invalid(loc: Sequence[str | int], msg: str, kind: str) -> RequestInvalid:
    """A RequestInvalid with a single item."""
    return RequestInvalid([{"type": kind, "loc": list(loc), "msg": msg}])


def from_validation_error(error: ValidationError, prefix: Sequence[str]) -> RequestInvalid:
    """Pydantic's errors as FastAPI lists them, under `prefix` (`["body"]`, `["query"]`).

    The input is never echoed (FastAPI does): a register or login body holds a password.
    """
    return RequestInvalid(
        [
            {"type": item["type"], "loc": [*prefix, *item["loc"]], "msg": item["msg"]}
            for item in error.errors(include_url=False, include_input=False)
        ]
    )
