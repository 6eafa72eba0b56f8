"""The audit trail: every security-relevant event as a row admins can list and one log line.

A row is written in the same transaction as the change it records (`record`), so the trail never
shows a change that was rolled back nor misses one that committed; its log line is written once
that transaction has committed. Refusals that change nothing (throttled logins and registrations)
are not stored: they get the log line alone (`log_event`). Calls refused for a permission their
credential lacks are stored on their own (`record_permission_missing`), at most once per caller,
method and permission in a window (see `taskservice.calls.refusals`). Neither ever carries a
secret: only event names, user ids, an outcome, the request id, and for refusals the method and
permission.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, event, select
from sqlalchemy.ext.asyncio import AsyncSession

from taskservice.db.engine import Database
from taskservice.db.models import AuditEvent
from taskservice.services.clock import Clock
from taskservice.services.filtering import Field, Kind, Op, Schema, canonical, parse, to_sql
from taskservice.services.pagination import PageTokens, page_size, page_size_violation
from taskservice.services.principal import Principal
from taskservice.services.validation import Violations

audit_logger = logging.getLogger("taskservice.audit")

LOGIN_SUCCEEDED = "login_succeeded"
LOGIN_FAILED = "login_failed"
LOGIN_THROTTLED = "login_throttled"
REGISTRATION_THROTTLED = "registration_throttled"
USER_REGISTERED = "user_registered"
PASSWORD_CHANGED = "password_changed"  # noqa: S105 - event names
PASSWORD_CHANGE_FAILED = "password_change_failed"  # noqa: S105
PASSWORD_CHANGE_THROTTLED = "password_change_throttled"  # noqa: S105
REFRESH_TOKEN_REUSED = "refresh_token_reused"  # noqa: S105
LOGGED_OUT = "logged_out"
API_KEY_CREATED = "api_key_created"
API_KEY_REVOKED = "api_key_revoked"
USER_ROLE_CHANGED = "user_role_changed"
USER_DEACTIVATED = "user_deactivated"
USER_ACTIVATED = "user_activated"
USER_DELETED = "user_deleted"
TASK_ADMIN_ACTION = "task_admin_action"
PERMISSION_MISSING = "permission_missing"

SUCCESS = "success"
FAILURE = "failure"
DENIED = "denied"

#: What ListAuditEvents' filter may name.
AUDIT_FILTER_SCHEMA = Schema(
    Field("actor_id", Kind.INT, presence=True),
    Field("target_user_id", Kind.INT, presence=True),
    Field("event", Kind.STRING, operators=frozenset({Op.EQ, Op.NE, Op.HAS})),
    Field("create_time", Kind.TIMESTAMP),
)
_FILTER_COLUMNS = {
    "actor_id": AuditEvent.actor_id,
    "target_user_id": AuditEvent.target_user_id,
    "event": AuditEvent.event,
    "create_time": AuditEvent.create_time,
}


@dataclass(frozen=True)
class AuditPage:
    """One page of events, newest first, and the token for the next (empty on the last)."""

    events: list[AuditEvent]
    next_page_token: str


class AuditTrail:
    """Writes audit events and lists them for admins."""

    def __init__(
        self,
        database: Database,
        page_tokens: PageTokens,
        clock: Clock,
        request_id: Callable[[], str | None] = lambda: None,
        retention: timedelta = timedelta(days=365),
    ) -> None:
        self._db = database
        self._page_tokens = page_tokens
        self._clock = clock
        self._request_id = request_id
        self._retention = retention

    async def purge_expired(self) -> int:
        """Delete the events older than the retention (AUDIT_RETENTION_DAYS); returns how many.

        Run by every server's sweep, so the table stays bounded without a cron job.
        """
        cutoff = self._clock() - self._retention
        async with self._db.write() as session:
            result = await session.execute(
                delete(AuditEvent)
                .where(AuditEvent.create_time < cutoff)
                .execution_options(synchronize_session=False)
            )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def request_id(self) -> str | None:
        """The request id of the call in progress, if any."""
        return self._request_id()

    def record(
        self,
        session: AsyncSession,
        name: str,
        *,
        actor_id: int | None,
        target_user_id: int | None,
        outcome: str = SUCCESS,
        method: str | None = None,
        permission: str | None = None,
    ) -> None:
        """Add an event to `session`'s transaction; its log line follows the commit."""
        row = AuditEvent(
            event=name,
            actor_id=actor_id,
            target_user_id=target_user_id,
            outcome=outcome,
            request_id=self.request_id(),
            create_time=self._clock(),
            method=method,
            permission=permission,
        )
        session.add(row)
        event.listen(session.sync_session, "after_commit", lambda _s: _log(row), once=True)

    async def record_permission_missing(self, actor_id: int, method: str, permission: str) -> None:
        """Store one call refused for lacking `permission` (in a transaction of its own)."""
        async with self._db.write() as session:
            self.record(
                session,
                PERMISSION_MISSING,
                actor_id=actor_id,
                target_user_id=None,
                outcome=DENIED,
                method=method,
                permission=permission,
            )

    async def list_events(
        self, caller: Principal, filter_text: str, requested_size: int, token: str
    ) -> AuditPage:
        """Events newest first (by id), filtered, in keyset pages (the method needs audit.read)."""
        problems = Violations()
        problems.add(page_size_violation(requested_size))
        parsed = problems.check(lambda: parse(filter_text, AUDIT_FILTER_SCHEMA))
        scope = {"list": "audit_events", "filter": canonical(parsed) if parsed else ""}
        after = problems.check(lambda: self._page_tokens.open(token, scope))
        if parsed is None or problems.found:
            raise problems.error()
        size = page_size(requested_size)
        query = (
            select(AuditEvent)
            .where(to_sql(parsed, _FILTER_COLUMNS))
            .order_by(AuditEvent.id.desc())
            .limit(size + 1)
        )
        if after is not None:
            query = query.where(AuditEvent.id < after)
        async with self._db.read() as session:
            rows = list((await session.scalars(query)).all())
        return AuditPage(*self._page_tokens.page(rows, size, scope, key=lambda row: row.id))


def _log(row: AuditEvent) -> None:
    log_event(
        row.event,
        actor_id=row.actor_id,
        target_user_id=row.target_user_id,
        outcome=row.outcome,
        request_id=row.request_id,
        method=row.method,
        permission=row.permission,
    )


def log_event(
    name: str,
    *,
    actor_id: int | None,
    target_user_id: int | None,
    outcome: str,
    request_id: str | None,
    method: str | None = None,
    permission: str | None = None,
) -> None:
    """One structured audit log line (also for events that are not stored)."""
    extra: dict[str, object] = {
        "event": name,
        "actor_id": actor_id,
        "target_user_id": target_user_id,
        "outcome": outcome,
        "request_id": request_id,
    }
    if permission is not None:
        extra.update(grpc_method=method, permission=permission)
    audit_logger.info("%s %s", name, outcome, extra=extra)
