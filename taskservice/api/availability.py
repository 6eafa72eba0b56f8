"""Fail fast while the database is down.

Calls are refused with UNAVAILABLE instead of each waiting for a connection that will not come.
Health and reflection stay answerable.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from taskservice.api.handlers import (
    HandlerInterceptor,
    StreamBehavior,
    UnaryBehavior,
    wrap_unary_stream,
    wrap_unary_unary,
)
from taskservice.api.health import HealthMonitor
from taskservice.calls.authentication import PUBLIC_SERVICE_PREFIXES
from taskservice.calls.errors import database_unavailable


class AvailabilityInterceptor(HandlerInterceptor):
    """Refuses calls that need the database while health says it is down."""

    def __init__(self, monitor: HealthMonitor) -> None:
        super().__init__()
        self._monitor = monitor

    def intercept_handler(
        self, handler: grpc.RpcMethodHandler, method: str
    ) -> grpc.RpcMethodHandler:
        """Gate every unary method and server stream outside health and reflection.

        A stream is gated when it starts; once running, it fails on its own if the database goes.
        """
        if method.startswith(PUBLIC_SERVICE_PREFIXES):
            return handler
        if handler.unary_stream is not None:
            return wrap_unary_stream(handler, self._gated_stream)
        if handler.unary_unary is None:
            return handler
        return wrap_unary_unary(handler, self._gated)

    def _gated_stream(self, inner: StreamBehavior) -> StreamBehavior:
        async def behavior(
            request: object, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[object]:
            if not self._monitor.ready:
                raise database_unavailable()
            async with contextlib.aclosing(inner(request, context)) as responses:
                async for response in responses:
                    yield response

        return behavior

    def _gated(self, inner: UnaryBehavior) -> UnaryBehavior:
        async def behavior(request: object, context: grpc.aio.ServicerContext) -> object:
            if not self._monitor.ready:
                raise database_unavailable()
            return await inner(request, context)

        return behavior
