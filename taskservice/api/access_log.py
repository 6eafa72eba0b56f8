"""One structured log line and one set of metrics per call, and the request id returned.

Outermost interceptor: it gives each call a request id (the caller's `x-request-id` when sane,
else a new one), returns it in trailing metadata, and, when the call ends, has
`taskservice.calls.observe` log it and record the metrics (protocol `grpc`). Server streams are
observed too: one line when the stream ends. When the server traces, the W3C trace headers in
the call's metadata go to the observation, which continues the caller's trace.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
from opentelemetry.trace import Tracer

from taskservice.api.handlers import (
    HandlerInterceptor,
    StreamBehavior,
    UnaryBehavior,
    wrap_unary_stream,
    wrap_unary_unary,
)
from taskservice.api.metrics import ServerMetrics
from taskservice.calls.context import REQUEST_ID_KEY
from taskservice.calls.observe import MethodObserver, Observation
from taskservice.tracing.provider import PROPAGATION_KEYS


class AccessLogInterceptor(HandlerInterceptor):
    """Request ids, the access log, the per-call metrics and (if tracing) the server span."""

    def __init__(
        self,
        metrics: ServerMetrics,
        tracer: Tracer | None = None,
        server_address: str | None = None,
    ) -> None:
        super().__init__()
        self._metrics = metrics
        self._tracer = tracer
        self._server_address = server_address

    def _observer(self, method: str, call_type: str) -> MethodObserver:
        return MethodObserver(
            self._metrics, method, call_type, "grpc", self._tracer, self._server_address
        )

    def intercept_handler(
        self, handler: grpc.RpcMethodHandler, method: str
    ) -> grpc.RpcMethodHandler:
        """Wrap unary calls and server streams (one line when the stream ends).

        Bidirectional streams (reflection) are not access-logged.
        """
        if handler.unary_stream is not None:
            observer = self._observer(method, "server_stream")
            return wrap_unary_stream(handler, lambda inner: _observed_stream(inner, observer))
        if handler.unary_unary is None:
            return handler
        observer = self._observer(method, "unary")
        return wrap_unary_unary(handler, lambda inner: _observed(inner, observer))


def _caller_request_id(context: grpc.aio.ServicerContext) -> str | None:
    for entry in context.invocation_metadata() or ():
        if entry.key == REQUEST_ID_KEY and isinstance(entry.value, str):
            return entry.value
    return None


def _trace_headers(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {
        entry.key: entry.value
        for entry in context.invocation_metadata() or ()
        if entry.key in PROPAGATION_KEYS and isinstance(entry.value, str)
    }


class _Call:
    """One gRPC call being observed: its observation, peer and, once known, its status code."""

    __slots__ = ("code", "context", "observation", "peer")

    def __init__(self, observer: MethodObserver, context: grpc.aio.ServicerContext) -> None:
        self.context = context
        # Read now: a stream abandoned by gRPC (cancelled while it was sending) is finalized
        # later, when its call is gone and asking the context would crash in gRPC's core.
        self.peer = context.peer()
        self.observation: Observation = observer.begin(
            _caller_request_id(context), _trace_headers(context) if observer.traced else None
        )
        context.set_trailing_metadata(((REQUEST_ID_KEY, self.observation.info.request_id),))
        self.code = grpc.StatusCode.OK

    def failed(self, error: BaseException) -> None:
        """Record the code a call ending with `error` ends with (it is re-raised)."""
        if isinstance(error, GeneratorExit):  # finalized after gRPC dropped it: the call is gone
            self.code = grpc.StatusCode.CANCELLED
        elif isinstance(error, asyncio.CancelledError):
            remaining = self.context.time_remaining()
            expired = remaining is not None and remaining <= 0
            self.code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
        else:
            self.code = self.context.code() or grpc.StatusCode.UNKNOWN  # type: ignore[attr-defined]


def _observed(inner: UnaryBehavior, observer: MethodObserver) -> UnaryBehavior:
    async def behavior(request: object, context: grpc.aio.ServicerContext) -> object:
        call = _Call(observer, context)
        try:
            return await inner(request, context)
        except BaseException as error:
            call.failed(error)
            raise
        finally:
            observer.end(call.observation, call.code.name, call.peer)

    return behavior


def _observed_stream(inner: StreamBehavior, observer: MethodObserver) -> StreamBehavior:
    async def behavior(request: object, context: grpc.aio.ServicerContext) -> AsyncIterator[object]:
        call = _Call(observer, context)
        try:
            async with contextlib.aclosing(inner(request, context)) as responses:
                async for response in responses:
                    yield response
        except BaseException as error:  # CancelledError included: recorded, then re-raised
            call.failed(error)
            raise
        finally:
            observer.end(call.observation, call.code.name, call.peer)

    return behavior
