"""The one mapping from domain errors to gRPC status codes with rich details (AIP-193).

Every error carries a `google.rpc.ErrorInfo` (stable `reason`, domain `taskservice`); validation
errors add one `google.rpc.BadRequest` naming every offending field, and throttling refusals a
`google.rpc.RetryInfo` saying how long to wait. Anything that is not a domain
error is a bug: it is logged once with its traceback and a request id, and the caller gets INTERNAL
with a generic message and that id, nothing more.
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable

import asyncpg
import grpc
import sqlalchemy.exc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from taskservice import errors
from taskservice.api.call_context import REQUEST_ID_KEY, current_call
from taskservice.api.handlers import (
    HandlerInterceptor,
    StreamBehavior,
    UnaryBehavior,
    wrap_unary_stream,
    wrap_unary_unary,
)

logger = logging.getLogger(__name__)

#: ErrorInfo.domain of every error this service raises.
ERROR_DOMAIN = "taskservice"

_CODES: dict[type[errors.DomainError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def status_code(error: errors.DomainError) -> grpc.StatusCode:
    """The gRPC code for a domain error (INTERNAL for an unmapped kind, which is a bug)."""
    for kind in type(error).__mro__:
        if kind in _CODES:
            return _CODES[kind]
    return grpc.StatusCode.INTERNAL


def rich_status(
    code: grpc.StatusCode, message: str, reason: str, metadata: dict[str, str] | None = None
) -> status_pb2.Status:
    """A google.rpc.Status carrying an ErrorInfo."""
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata or {})
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
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


async def abort_with_status(context: grpc.aio.ServicerContext, status: status_pb2.Status) -> None:
    """End the call with `status`, its details in the `grpc-status-details-bin` trailer.

    The call's request id is added again, since abort's trailers replace those set before.
    """
    grpc_status = rpc_status.to_status(status)
    trailers = tuple(grpc_status.trailing_metadata)
    if (call := current_call()) is not None:
        trailers += ((REQUEST_ID_KEY, call.request_id),)
    await context.abort(grpc_status.code, grpc_status.details, trailers)


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


#: Exceptions that mean "the database could not be reached or answered", not "a bug".
DATABASE_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,  # no pooled connection came free in time
    OSError,  # includes TimeoutError: connecting took longer than DB_CONNECT_TIMEOUT_SECONDS
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
)


#: SQLite's OperationalError also covers bugs ("no such table"): only these are transient.
SQLITE_TRANSIENT_MESSAGES = ("database is locked", "unable to open database", "disk I/O error")


# statement_timeout (DB_STATEMENT_TIMEOUT_SECONDS) or lock_timeout ended the statement.
_TIMED_OUT = (grpc.StatusCode.DEADLINE_EXCEEDED, "DATABASE_TIMEOUT", "the database took too long")
# Lost a race with a concurrent transaction: nothing was written; retrying is safe.
_CONFLICT = (grpc.StatusCode.ABORTED, "CONCURRENT_TRANSACTION", "concurrent change; retry")
#: PostgreSQL errors that are neither bugs nor outages, by SQLSTATE: what the caller gets.
_POSTGRES_STATES: dict[str, tuple[grpc.StatusCode, str, str]] = {
    "57014": _TIMED_OUT,  # query_canceled (by statement_timeout)
    "55P03": _TIMED_OUT,  # lock_not_available (lock_timeout)
    "40001": _CONFLICT,  # serialization_failure
    "40P01": _CONFLICT,  # deadlock_detected
}


def _postgres_state(exc: BaseException) -> tuple[grpc.StatusCode, str, str] | None:
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        return _POSTGRES_STATES.get(getattr(exc.orig, "sqlstate", None) or "")
    return None


def _database_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sqlalchemy.exc.OperationalError):
        if isinstance(exc.orig, sqlite3.Error):
            return any(message in str(exc.orig) for message in SQLITE_TRANSIENT_MESSAGES)
        return True
    return isinstance(exc, DATABASE_UNAVAILABLE_ERRORS)


class ErrorInterceptor(HandlerInterceptor):
    """Turns exceptions escaping a unary handler into statuses; installed outermost.

    It tells `on_database_error` when a call found the database unreachable, so health can
    re-probe at once. Deadlines need nothing here: when the caller's deadline passes (or the
    caller cancels), gRPC has already answered the caller and cancels the handler, which stops
    its database statement. A deadline of our own would race gRPC's: a status sent after gRPC
    has ended the call fails in its core and is logged at ERROR.
    """

    def __init__(self, on_database_error: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self._on_database_error = on_database_error

    def intercept_handler(
        self, handler: grpc.RpcMethodHandler, method: str
    ) -> grpc.RpcMethodHandler:
        """Wrap the method's handler so its exceptions become statuses."""
        # Decode the request here rather than in gRPC, where a malformed message (invalid
        # UTF-8 in a string field, say) would end the call UNKNOWN before any interceptor ran.
        deserialize = handler.request_deserializer
        if handler.unary_stream is not None:
            wrapped = wrap_unary_stream(
                handler, lambda inner: self._mapping_stream_errors(inner, method, deserialize)
            )
        elif handler.unary_unary is not None:
            wrapped = wrap_unary_unary(
                handler, lambda inner: self._mapping_errors(inner, method, deserialize)
            )
        else:
            return handler
        return wrapped._replace(request_deserializer=None)  # type: ignore[attr-defined]

    def _mapping_errors(
        self,
        inner: UnaryBehavior,
        method: str,
        deserialize: Callable[[bytes], object] | None,
    ) -> UnaryBehavior:
        async def behavior(raw: object, context: grpc.aio.ServicerContext) -> object:
            try:
                request = _decode(raw, deserialize)
                return await inner(request, context)
            except errors.DomainError as error:
                await abort_with_status(context, to_status(error))
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await self._unexpected(context, method, exc)
            return None  # not reached: abort raises

        return behavior

    def _mapping_stream_errors(
        self,
        inner: StreamBehavior,
        method: str,
        deserialize: Callable[[bytes], object] | None,
    ) -> StreamBehavior:
        """The same mapping for a server stream, which may fail after it has sent responses.

        Cancellation (the client went away) is never caught: grpc.aio leaks the call's batch when
        a server-streaming handler swallows it.
        """

        async def behavior(raw: object, context: grpc.aio.ServicerContext) -> AsyncIterator[object]:
            try:
                request = _decode(raw, deserialize)
                async for response in inner(request, context):
                    yield response
            except errors.DomainError as error:
                await abort_with_status(context, to_status(error))
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await self._unexpected(context, method, exc)

        return behavior

    async def _unexpected(
        self, context: grpc.aio.ServicerContext, method: str, exc: Exception
    ) -> None:
        """The status for an exception no layer expected.

        UNAVAILABLE when the database could not be reached; DEADLINE_EXCEEDED or ABORTED for a
        statement PostgreSQL timed out or aborted; otherwise a bug: INTERNAL.
        """
        if (known := _postgres_state(exc)) is not None:
            code, reason, message = known
            logger.warning("%s: %s (%s)", method, reason, type(exc).__name__)
            await abort_with_status(context, rich_status(code, message, reason))
        if not _database_unavailable(exc):
            await _internal_error(context, method)
        self._on_database_error()
        logger.warning("%s: database unavailable: %s", method, type(exc).__name__)
        await abort_with_status(context, to_status(database_unavailable()))


def _decode(raw: object, deserialize: Callable[[bytes], object] | None) -> object:
    if deserialize is None or not isinstance(raw, bytes):
        return raw
    try:
        return deserialize(raw)
    except DecodeError:
        raise errors.InvalidArgument.field(
            "request", "not a valid protobuf message (malformed, or a string is not UTF-8)"
        ) from None


def database_unavailable() -> errors.Unavailable:
    """The error callers get while the database cannot be reached; they may retry."""
    return errors.Unavailable(
        "DATABASE_UNAVAILABLE", "the database is unavailable; retry with backoff"
    )


async def _internal_error(context: grpc.aio.ServicerContext, method: str) -> None:
    """Log the bug once with its traceback and an id; tell the caller only the id."""
    call = current_call()
    request_id = call.request_id if call is not None else uuid.uuid4().hex
    logger.exception("unhandled error in %s (request id %s)", method, request_id)
    await abort_with_status(
        context,
        rich_status(
            grpc.StatusCode.INTERNAL,
            f"internal error (request id {request_id})",
            "INTERNAL",
            {"request_id": request_id},
        ),
    )
