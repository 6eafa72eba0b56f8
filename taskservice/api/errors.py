"""gRPC's side of the one error mapping: statuses sent with rich details in trailers.

The mapping itself (domain error or unexpected exception -> google.rpc.Status with ErrorInfo and
BadRequest) is transport-neutral and lives in `taskservice.calls.errors`; here the interceptor
catches what escapes a unary handler or a server stream and sends that status as gRPC trailers.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import grpc
from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from grpc_status import rpc_status

from taskservice.api.handlers import (
    HandlerInterceptor,
    StreamBehavior,
    UnaryBehavior,
    wrap_unary_stream,
    wrap_unary_unary,
)
from taskservice.calls.context import REQUEST_ID_KEY, current_call
from taskservice.calls.errors import (
    database_unavailable,
    malformed_request,
    status_of,
)
from taskservice.calls.refusals import RefusalAudit

__all__ = ["ErrorInterceptor", "abort_with_status", "database_unavailable"]


async def abort_with_status(context: grpc.aio.ServicerContext, status: status_pb2.Status) -> None:
    """End the call with `status`, its details in the `grpc-status-details-bin` trailer.

    The call's request id is added again, since abort's trailers replace those set before.
    """
    grpc_status = rpc_status.to_status(status)
    trailers = tuple(grpc_status.trailing_metadata)
    if (call := current_call()) is not None:
        trailers += ((REQUEST_ID_KEY, call.request_id),)
    await context.abort(grpc_status.code, grpc_status.details, trailers)


class ErrorInterceptor(HandlerInterceptor):
    """Turns exceptions escaping a handler into statuses; installed outermost.

    It tells `on_database_error` when a call found the database unreachable, so health can
    re-probe at once. Deadlines need nothing here: when the caller's deadline passes (or the
    caller cancels), gRPC has already answered the caller and cancels the handler, which stops
    its database statement. A deadline of our own would race gRPC's: a status sent after gRPC
    has ended the call fails in its core and is logged at ERROR.
    """

    def __init__(
        self,
        on_database_error: Callable[[], None] = lambda: None,
        refusals: RefusalAudit | None = None,
    ) -> None:
        super().__init__()
        self._on_database_error = on_database_error
        self._refusals = refusals

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
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await self._abort(context, method, exc)
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
                async with contextlib.aclosing(inner(request, context)) as responses:
                    async for response in responses:
                        yield response
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await self._abort(context, method, exc)

        return behavior

    async def _abort(self, context: grpc.aio.ServicerContext, method: str, exc: Exception) -> None:
        """End the call with the status `taskservice.calls.errors` gives the exception."""
        status = status_of(exc, method, self._on_database_error)
        if self._refusals is not None:
            await self._refusals.after_call(method)
        await abort_with_status(context, status)


def _decode(raw: object, deserialize: Callable[[bytes], object] | None) -> object:
    if deserialize is None or not isinstance(raw, bytes):
        return raw
    try:
        return deserialize(raw)
    except DecodeError:
        raise malformed_request() from None
