"""Wrapping gRPC method handlers, which interceptors do to run code around a call."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

#: A unary-unary behaviour: (request, context) -> response.
UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def wrap_unary_unary(
    handler: grpc.RpcMethodHandler, wrap: Callable[[UnaryBehavior], UnaryBehavior]
) -> grpc.RpcMethodHandler:
    """The same handler with its unary-unary behaviour replaced by `wrap(behaviour)`."""
    return handler._replace(unary_unary=wrap(handler.unary_unary))  # type: ignore[attr-defined]


def replace_behavior(handler: grpc.RpcMethodHandler, behavior: Callable[..., Any]) -> Any:
    """The same handler shape (so (de)serialisers still fit) with every behaviour replaced."""
    return handler._replace(  # type: ignore[attr-defined]
        unary_unary=behavior if handler.unary_unary else None,
        unary_stream=behavior if handler.unary_stream else None,
        stream_unary=behavior if handler.stream_unary else None,
        stream_stream=behavior if handler.stream_stream else None,
    )


class HandlerInterceptor(grpc.aio.ServerInterceptor):
    """An interceptor that rewrites the method handler of each call that has one.

    Subclasses implement `intercept_handler`; unknown methods (no handler) pass through.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """Resolve the handler further in, then let the subclass rewrite it."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return self.intercept_handler(handler, handler_call_details.method, handler_call_details)

    def intercept_handler(
        self, handler: grpc.RpcMethodHandler, method: str, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        """The handler to use for `method` instead of `handler`."""
        raise NotImplementedError
