"""The one mapping from exceptions to statuses with rich details (AIP-193), for every edge.

Every error carries a `google.rpc.ErrorInfo` (stable `reason`, domain `taskservice`); validation
errors add one `google.rpc.BadRequest` naming every offending field, and throttling refusals a
`google.rpc.RetryInfo` saying how long to wait. The result is a plain
`google.rpc.Status`, which each edge sends its own way (gRPC trailers, a Connect error body,
gRPC-Web trailers). Anything that is not a domain error, a database outage or a database timeout
is a bug: it is logged once with its traceback and a request id, and the caller gets INTERNAL
with a generic message and that id, nothing more.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from taskservice import errors
from taskservice.calls.context import current_call
from taskservice.db import outages

#: The reason of a refusal for a permission the call's credential lacks (audited).
PERMISSION_MISSING = "PERMISSION_MISSING"

logger = logging.getLogger("taskservice.api.errors")

#: ErrorInfo.domain of every error this service raises.
ERROR_DOMAIN = "taskservice"

#: google.rpc.Code of each kind of domain error.
_CODES: dict[type[errors.DomainError], int] = {
    errors.InvalidArgument: code_pb2.INVALID_ARGUMENT,
    errors.Unauthenticated: code_pb2.UNAUTHENTICATED,
    errors.PermissionDenied: code_pb2.PERMISSION_DENIED,
    errors.NotFound: code_pb2.NOT_FOUND,
    errors.AlreadyExists: code_pb2.ALREADY_EXISTS,
    errors.FailedPrecondition: code_pb2.FAILED_PRECONDITION,
    errors.Aborted: code_pb2.ABORTED,
    errors.Unavailable: code_pb2.UNAVAILABLE,
    errors.OutOfRange: code_pb2.OUT_OF_RANGE,
    errors.ResourceExhausted: code_pb2.RESOURCE_EXHAUSTED,
}


def status_code(error: errors.DomainError) -> int:
    """The google.rpc.Code for a domain error (INTERNAL for an unmapped kind, which is a bug)."""
    for kind in type(error).__mro__:
        if kind in _CODES:
            return _CODES[kind]
    return code_pb2.INTERNAL


def rich_status(
    code: int, message: str, reason: str, metadata: dict[str, str] | None = None
) -> status_pb2.Status:
    """A google.rpc.Status carrying an ErrorInfo."""
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata or {})
    status = status_pb2.Status(code=code, message=message)
    status.details.append(_pack(info))
    return status


def to_status(error: errors.DomainError) -> status_pb2.Status:
    """The full rich status of a domain error."""
    status = rich_status(status_code(error), error.message, error.reason, error.metadata)
    if isinstance(error, errors.InvalidArgument):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=violation.field, description=violation.description
                )
                for violation in error.violations
            ]
        )
        status.details.append(_pack(bad_request))
    if isinstance(error, errors.ResourceExhausted) and error.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromTimedelta(error.retry_after)
        status.details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


# statement_timeout (DB_STATEMENT_TIMEOUT_SECONDS) or lock_timeout ended the statement.
_TIMED_OUT = (code_pb2.DEADLINE_EXCEEDED, "DATABASE_TIMEOUT", "the database took too long")
# Lost a race with a concurrent transaction: nothing was written; retrying is safe.
_CONFLICT = (code_pb2.ABORTED, "CONCURRENT_TRANSACTION", "concurrent change; retry")
#: PostgreSQL errors that are neither bugs nor outages, by SQLSTATE: what the caller gets.
_POSTGRES_STATES: dict[str, tuple[int, str, str]] = {
    "57014": _TIMED_OUT,  # query_canceled (by statement_timeout)
    "55P03": _TIMED_OUT,  # lock_not_available (lock_timeout)
    "40001": _CONFLICT,  # serialization_failure
    "40P01": _CONFLICT,  # deadlock_detected
}


def _postgres_state(exc: BaseException) -> tuple[int, str, str] | None:
    state = outages.sqlstate(exc)
    return None if state is None else _POSTGRES_STATES.get(state)


def database_unavailable() -> errors.Unavailable:
    """The error callers get while the database cannot be reached; they may retry."""
    return errors.Unavailable(
        "DATABASE_UNAVAILABLE", "the database is unavailable; retry with backoff"
    )


def status_of(
    exc: Exception, method: str, on_database_error: Callable[[], None]
) -> status_pb2.Status:
    """The status any exception escaping a handler maps to, on every edge.

    A domain error's own status; anything else as `unexpected_status` says.
    """
    if isinstance(exc, errors.DomainError):
        note_refusal(exc)
        return to_status(exc)
    return unexpected_status(exc, method, on_database_error)


def note_refusal(exc: errors.DomainError) -> None:
    """Note on the call a refusal that names a permission, for the metric and the audit trail."""
    if (
        isinstance(exc, errors.PermissionDenied)
        and "permission" in exc.metadata
        and (call := current_call()) is not None
    ):
        call.denied_permission = exc.metadata["permission"]
        call.permission_missing = exc.reason == PERMISSION_MISSING


def unexpected_status(
    exc: Exception, method: str, on_database_error: Callable[[], None]
) -> status_pb2.Status:
    """The status for an exception no layer expected (its traceback is logged with a bug).

    UNAVAILABLE when the database could not be reached (and `on_database_error` is told, so
    health can re-probe at once); DEADLINE_EXCEEDED or ABORTED for a statement PostgreSQL timed
    out or aborted; otherwise a bug: INTERNAL.
    """
    if (known := _postgres_state(exc)) is not None:
        code, reason, message = known
        logger.warning("%s: %s (%s)", method, reason, type(exc).__name__)
        return rich_status(code, message, reason)
    if not outages.is_outage(exc):
        return internal_status(method, exc)
    on_database_error()
    logger.warning("%s: database unavailable: %s", method, outages.describe(exc))
    return to_status(database_unavailable())


def internal_status(method: str, exc: BaseException) -> status_pb2.Status:
    """Log the bug once, with its traceback and an id; tell the caller only the id."""
    call = current_call()
    request_id = call.request_id if call is not None else uuid.uuid4().hex
    logger.error("unhandled error in %s (request id %s)", method, request_id, exc_info=exc)
    return rich_status(
        code_pb2.INTERNAL,
        f"internal error (request id {request_id})",
        "INTERNAL",
        {"request_id": request_id},
    )


def malformed_request(
    description: str = "not a valid protobuf message (malformed, or a string is not UTF-8)",
) -> errors.InvalidArgument:
    """The error for a request body that does not decode as the method's message."""
    return errors.InvalidArgument.field("request", description)
