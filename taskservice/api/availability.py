"""Fail fast while the database is down.

Calls are refused with UNAVAILABLE instead of each waiting for a connection that will not come.
Health and reflection stay answerable.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from taskservice.api.authentication import PUBLIC_SERVICE_PREFIXES
from taskservice.api.errors import database_unavailable
from taskservice.api.handlers import UnaryBehavior, wrap_unary_unary
from taskservice.api.health import HealthMonitor


class AvailabilityInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls that need the database while health says it is down."""

    def __init__(self, monitor: HealthMonitor) -> None:
        self._monitor = monitor

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """Gate every unary method outside health and reflection on database readiness."""
        handler = await continuation(handler_call_details)
        if (
            handler is None
            or handler.unary_unary is None
            or handler_call_details.method.startswith(PUBLIC_SERVICE_PREFIXES)
        ):
            return handler
        return wrap_unary_unary(handler, self._gated)

    def _gated(self, inner: UnaryBehavior) -> UnaryBehavior:
        async def behavior(request: object, context: grpc.aio.ServicerContext) -> object:
            if not self._monitor.ready:
                raise database_unavailable()
            return await inner(request, context)

        return behavior
