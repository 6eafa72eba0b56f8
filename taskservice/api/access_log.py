"""One structured log line and one set of metrics per call, and the request id returned.

Outermost interceptor: it gives each call a request id (the caller's `x-request-id` when sane,
else a new one), returns it in trailing metadata, and, when the call ends, logs method, status
code, duration, peer, user id and request id and records the gRPC server metrics. It logs no
request or response content, so no password, token or hash can reach the log through it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc

from taskservice.api.call_context import REQUEST_ID_KEY, begin_call
from taskservice.api.handlers import (
    HandlerInterceptor,
    StreamBehavior,
    UnaryBehavior,
    wrap_unary_stream,
    wrap_unary_unary,
)
from taskservice.api.metrics import ServerMetrics

access_logger = logging.getLogger("taskservice.access")


class AccessLogInterceptor(HandlerInterceptor):
    """Request ids, the access log and the per-call metrics."""

    def __init__(self, metrics: ServerMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def intercept_handler(
        self, handler: grpc.RpcMethodHandler, method: str
    ) -> grpc.RpcMethodHandler:
        """Wrap unary calls and server streams (one line when the stream ends).

        Bidirectional streams (reflection) are not access-logged.
        """
        if handler.unary_stream is not None:
            return wrap_unary_stream(
                handler, lambda inner: _observed_stream(inner, method, self._metrics)
            )
        if handler.unary_unary is None:
            return handler
        return wrap_unary_unary(handler, lambda inner: _observed(inner, method, self._metrics))


def _caller_request_id(context: grpc.aio.ServicerContext) -> str | None:
    for entry in context.invocation_metadata() or ():
        if entry.key == REQUEST_ID_KEY and isinstance(entry.value, str):
            return entry.value
    return None


class _Method:
    """What the access log needs of one method, resolved once (label lookups cost per call)."""

    def __init__(self, method: str, kind: str, metrics: ServerMetrics) -> None:
        service, _, name = method.rpartition("/")
        self.method, self.service, self.name = method, service.lstrip("/"), name
        self.labels = (kind, self.service, name)
        self.handled = metrics.handled
        self.started_total = metrics.started.labels(*self.labels)
        self.handling_seconds = metrics.handling_seconds.labels(*self.labels)


class _Observation:
    """One call being observed: its request id, metrics and, at the end, its log line."""

    def __init__(self, method: _Method, context: grpc.aio.ServicerContext) -> None:
        self.m = method
        self.context = context
        # Read now: a stream abandoned by gRPC (cancelled while it was sending) is finalized
        # later, when its call is gone and asking the context would crash in gRPC's core.
        self.peer = context.peer()
        self.info = begin_call(_caller_request_id(context))
        method.started_total.inc()
        context.set_trailing_metadata(((REQUEST_ID_KEY, self.info.request_id),))
        self.started = time.perf_counter()
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

    def finish(self) -> None:
        """Count the call and write its one log line."""
        seconds = time.perf_counter() - self.started
        self.m.handled.labels(*self.m.labels, self.code.name).inc()
        self.m.handling_seconds.observe(seconds)
        access_logger.info(
            "%s %s",
            self.m.method,
            self.code.name,
            extra={
                "grpc_service": self.m.service,
                "grpc_method": self.m.name,
                "grpc_code": self.code.name,
                "duration_ms": round(seconds * 1000, 3),
                "peer": self.peer,
                "user_id": self.info.user_id,
                "request_id": self.info.request_id,
            },
        )


def _observed(inner: UnaryBehavior, method: str, metrics: ServerMetrics) -> UnaryBehavior:
    resolved = _Method(method, "unary", metrics)

    async def behavior(request: object, context: grpc.aio.ServicerContext) -> object:
        call = _Observation(resolved, context)
        try:
            return await inner(request, context)
        except BaseException as error:
            call.failed(error)
            raise
        finally:
            call.finish()

    return behavior


def _observed_stream(inner: StreamBehavior, method: str, metrics: ServerMetrics) -> StreamBehavior:
    resolved = _Method(method, "server_stream", metrics)

    async def behavior(request: object, context: grpc.aio.ServicerContext) -> AsyncIterator[object]:
        call = _Observation(resolved, context)
        try:
            async for response in inner(request, context):
                yield response
        except BaseException as error:  # CancelledError included: recorded, then re-raised
            call.failed(error)
            raise
        finally:
            call.finish()

    return behavior
