"""One structured log line and one set of metrics per call, and the request id returned.

Outermost interceptor: it gives each call a request id (the caller's `x-request-id` when sane,
else a new one), returns it in trailing metadata, and, when the call ends, has
`taskservice.calls.observe` log it and record the metrics (protocol `grpc`).
"""

from __future__ import annotations

import asyncio

import grpc

from taskservice.api.handlers import HandlerInterceptor, UnaryBehavior, wrap_unary_unary
from taskservice.api.metrics import ServerMetrics
from taskservice.calls.context import REQUEST_ID_KEY
from taskservice.calls.observe import MethodObserver


class AccessLogInterceptor(HandlerInterceptor):
    """Request ids, the access log and the per-call metrics."""

    def __init__(self, metrics: ServerMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def intercept_handler(
        self, handler: grpc.RpcMethodHandler, method: str
    ) -> grpc.RpcMethodHandler:
        """Wrap unary calls; streams (health Watch, reflection) are not access-logged."""
        if handler.unary_unary is None:
            return handler
        return wrap_unary_unary(handler, lambda inner: _observed(inner, method, self._metrics))


def _caller_request_id(context: grpc.aio.ServicerContext) -> str | None:
    for entry in context.invocation_metadata() or ():
        if entry.key == REQUEST_ID_KEY and isinstance(entry.value, str):
            return entry.value
    return None


def _observed(inner: UnaryBehavior, method: str, metrics: ServerMetrics) -> UnaryBehavior:
    observer = MethodObserver(metrics, method, "unary", "grpc")

    async def behavior(request: object, context: grpc.aio.ServicerContext) -> object:
        observation = observer.begin(_caller_request_id(context))
        context.set_trailing_metadata(((REQUEST_ID_KEY, observation.info.request_id),))
        code = grpc.StatusCode.OK
        try:
            return await inner(request, context)
        except asyncio.CancelledError:
            remaining = context.time_remaining()
            expired = remaining is not None and remaining <= 0
            code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            raise
        except BaseException:
            code = context.code() or grpc.StatusCode.UNKNOWN  # type: ignore[attr-defined]
            raise
        finally:
            observer.end(observation, code.name, context.peer())

    return behavior
