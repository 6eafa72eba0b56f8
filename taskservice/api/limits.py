"""MAX_CONCURRENT_RPCS on the gRPC edge: unary calls only (see `taskservice.calls.limits`).

grpc.aio's own `maximum_concurrent_rpcs` is not used: it counts server streams too, so idle
WatchTasks streams would use up the room meant for unary calls.
"""

from __future__ import annotations

import grpc

from taskservice.api.errors import abort_with_status
from taskservice.api.handlers import HandlerInterceptor, UnaryBehavior, wrap_unary_unary
from taskservice.calls.errors import to_status
from taskservice.calls.limits import UnaryCallLimit
from taskservice.errors import ResourceExhausted


class UnaryCallLimitInterceptor(HandlerInterceptor):
    """Refuses a unary call at once while MAX_CONCURRENT_RPCS unary calls are in progress.

    Installed right inside the access log, so a refusal is logged and measured like any call
    but costs nothing else: its request is not even decoded.
    """

    def __init__(self, limit: UnaryCallLimit) -> None:
        super().__init__()
        self._limit = limit

    def intercept_handler(
        self, handler: grpc.RpcMethodHandler, method: str
    ) -> grpc.RpcMethodHandler:
        """Count unary calls; streams pass through uncounted."""
        if handler.unary_unary is None:
            return handler
        return wrap_unary_unary(handler, self._limited)

    def _limited(self, inner: UnaryBehavior) -> UnaryBehavior:
        limit = self._limit

        async def behavior(request: object, context: grpc.aio.ServicerContext) -> object:
            try:
                limit.enter()
            except ResourceExhausted as refusal:
                await abort_with_status(context, to_status(refusal))
            try:
                return await inner(request, context)
            finally:
                limit.leave()

        return behavior
