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

import grpc

from taskservice.api.call_context import REQUEST_ID_KEY, begin_call
from taskservice.api.handlers import HandlerInterceptor, UnaryBehavior, wrap_unary_unary
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
    service, _, name = method.rpartition("/")
    service = service.lstrip("/")
    labels = ("unary", service, name)
    started_total = metrics.started.labels(*labels)
    handling_seconds = metrics.handling_seconds.labels(*labels)

    async def behavior(request: object, context: grpc.aio.ServicerContext) -> object:
        info = begin_call(_caller_request_id(context))
        started_total.inc()
        context.set_trailing_metadata(((REQUEST_ID_KEY, info.request_id),))
        started = time.perf_counter()
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
            seconds = time.perf_counter() - started
            metrics.handled.labels(*labels, code.name).inc()
            handling_seconds.observe(seconds)
            access_logger.info(
                "%s %s",
                method,
                code.name,
                extra={
                    "grpc_service": service,
                    "grpc_method": name,
                    "grpc_code": code.name,
                    "duration_ms": round(seconds * 1000, 3),
                    "peer": context.peer(),
                    "user_id": info.user_id,
                    "request_id": info.request_id,
                },
            )

    return behavior
